//! AVX-512 kernels (F + BW + VL, with a VNNI `vpdpbusd` variant).
//!
//! One zmm covers a whole 16-row tile: lane `r` is output row `r`. For each
//! block the (expanded) weight vectors are loaded once and multiplied against
//! every activation row of the register tile (up to 8 rows), with the four
//! activation bytes of each `k` quartet broadcast to all lanes. Per block, the
//! exact i32 dot products are converted to f32 and accumulated with FMA; the
//! per-lane operation sequence is independent of the row tile, so results do
//! not depend on the batch composition.
//!
//! Everything below is `#[inline(always)]` into the two `#[target_feature]`
//! entry points, which the dispatcher only calls after runtime detection.

// The AVX-512 intrinsics and target features used here are stable since
// Rust 1.89, so this module needs a 1.89+ toolchain.
// Row-tile loops index several parallel arrays (accumulators, weights,
// scales) by the same lane or row; iterator chains would obscure that.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::ops::Range;

use super::formats::{
    QuantMatrix, WeightType, Q4K_D, Q4K_MIN, Q4K_SC, Q4K_TB, Q4_0_TB, Q4_1_TB, Q5K_D, Q5K_H,
    Q5K_MIN, Q5K_SC, Q5K_TB, Q5_1_D, Q5_1_H, Q5_1_TB, Q6K_D, Q6K_H, Q6K_SC, Q6K_TB, Q8_0_TB, QK,
    QK_K, TILE,
};
use super::matmul::{prefetch_ahead, OutPtr};
use super::quantize::{ActView, QuantizedActivations};

/// Block-32 format selectors for [`tile_q32`].
const F_Q4_0: u8 = 0;
const F_Q4_1: u8 = 1;
const F_Q8_0: u8 = 2;
const F_Q5_1: u8 = 3;

/// Computes output tiles `tiles` with AVX-512 F/BW/VL (no VNNI).
///
/// # Safety
/// The CPU must support avx512f, avx512bw, avx512vl, avx2, fma and f16c;
/// otherwise as [`super::dot_scalar::run`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(crate) unsafe fn run(
    w: &QuantMatrix,
    a: &QuantizedActivations,
    tiles: Range<usize>,
    out: OutPtr,
) {
    // SAFETY: forwarded.
    unsafe { run_impl::<false>(w, a, tiles, out) }
}

/// Computes output tiles `tiles` with AVX-512 F/BW/VL and VNNI.
///
/// # Safety
/// As [`run`], and the CPU must also support avx512vnni.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn run_vnni(
    w: &QuantMatrix,
    a: &QuantizedActivations,
    tiles: Range<usize>,
    out: OutPtr,
) {
    // SAFETY: forwarded.
    unsafe { run_impl::<true>(w, a, tiles, out) }
}

#[inline(always)]
unsafe fn run_impl<const VNNI: bool>(
    w: &QuantMatrix,
    a: &QuantizedActivations,
    tiles: Range<usize>,
    out: OutPtr,
) {
    let av = ActView::new(a);
    let rows = a.rows;
    let nb = w.blocks();
    for t in tiles {
        let tile = w.tile(t).as_ptr();
        let mut row0 = 0;
        while row0 < rows {
            let left = rows - row0;
            // SAFETY (all calls): `tile` is a whole tile of `w`, `av` views
            // activations matching `w` with `row0 + rt <= rows`, and the
            // caller owns tile `t` of `out`.
            let rt = match w.dtype() {
                WeightType::Q4_0 | WeightType::Q4_1 | WeightType::Q5_1 | WeightType::Q8_0 => {
                    let f = match w.dtype() {
                        WeightType::Q4_0 => F_Q4_0,
                        WeightType::Q4_1 => F_Q4_1,
                        WeightType::Q5_1 => F_Q5_1,
                        _ => F_Q8_0,
                    };
                    macro_rules! q32 {
                        ($f:expr) => {
                            if left >= 8 {
                                unsafe { tile_q32::<$f, 8, VNNI>(tile, nb, av, row0, out, t) };
                                8
                            } else if left >= 4 {
                                unsafe { tile_q32::<$f, 4, VNNI>(tile, nb, av, row0, out, t) };
                                4
                            } else if left >= 2 {
                                unsafe { tile_q32::<$f, 2, VNNI>(tile, nb, av, row0, out, t) };
                                2
                            } else {
                                unsafe { tile_q32::<$f, 1, VNNI>(tile, nb, av, row0, out, t) };
                                1
                            }
                        };
                    }
                    match f {
                        F_Q4_0 => q32!(F_Q4_0),
                        F_Q4_1 => q32!(F_Q4_1),
                        F_Q5_1 => q32!(F_Q5_1),
                        _ => q32!(F_Q8_0),
                    }
                }
                WeightType::Q4K | WeightType::Q5K => {
                    macro_rules! qk {
                        ($five:expr) => {
                            if left >= 4 {
                                unsafe { tile_q4k::<4, VNNI, $five>(tile, nb, av, row0, out, t) };
                                4
                            } else if left >= 2 {
                                unsafe { tile_q4k::<2, VNNI, $five>(tile, nb, av, row0, out, t) };
                                2
                            } else {
                                unsafe { tile_q4k::<1, VNNI, $five>(tile, nb, av, row0, out, t) };
                                1
                            }
                        };
                    }
                    if w.dtype() == WeightType::Q5K {
                        qk!(true)
                    } else {
                        qk!(false)
                    }
                }
                WeightType::Q6K => {
                    if left >= 4 {
                        unsafe { tile_q6k::<4, VNNI>(tile, nb, av, row0, out, t) };
                        4
                    } else if left >= 2 {
                        unsafe { tile_q6k::<2, VNNI>(tile, nb, av, row0, out, t) };
                        2
                    } else {
                        unsafe { tile_q6k::<1, VNNI>(tile, nb, av, row0, out, t) };
                        1
                    }
                }
                WeightType::F32 => {
                    if left >= 4 {
                        unsafe { tile_f32::<4>(tile, av, row0, out, t) };
                        4
                    } else {
                        unsafe { tile_f32::<1>(tile, av, row0, out, t) };
                        1
                    }
                }
            };
            row0 += rt;
        }
    }
}

/// Broadcasts activation quartet `q` (bytes `4q..4q + 4`) of `x` to all lanes.
#[inline(always)]
unsafe fn bcast(x: *const i8, q: usize) -> __m512i {
    // SAFETY: the caller passes a pointer with at least `4q + 4` readable bytes.
    _mm512_set1_epi32(unsafe { std::ptr::read_unaligned(x.cast::<i32>().add(q)) })
}

#[inline(always)]
unsafe fn load(p: *const u8) -> __m512i {
    // SAFETY: the caller guarantees 64 readable bytes.
    unsafe { _mm512_loadu_si512(p.cast()) }
}

/// 16 f16 values at `p` as f32.
#[inline(always)]
unsafe fn load_f16(p: *const u8) -> __m512 {
    // SAFETY: the caller guarantees 32 readable bytes.
    _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(p.cast()) })
}

/// Stores lane `r` of `v` to output column `16 t + r` of row `row`.
#[inline(always)]
unsafe fn store(out: OutPtr, row: usize, t: usize, v: __m512) {
    if out.full(t) {
        // SAFETY: the whole tile is inside the row; the caller owns it.
        unsafe { _mm512_storeu_ps(out.at(row, t), v) };
    } else {
        let mut tmp = [0f32; TILE];
        // SAFETY: `tmp` has 16 floats; `store` writes the valid lanes only.
        unsafe {
            _mm512_storeu_ps(tmp.as_mut_ptr(), v);
            out.store(row, t, &tmp);
        }
    }
}

/// `init + Σ_q w[q] · x[quartet q]` over 8 quartets of 4-bit codes.
///
/// With VNNI the high-nibble vectors may hold the codes times 16 (the byte
/// masked with 0xF0, saving a shift per vector): `HI_X16` says `w[4..8]` are
/// scaled so, and their exact sum is shifted back. Without VNNI, i16 partial
/// sums cannot overflow (8 · 2 · 15 · 127 < 32768).
#[inline(always)]
unsafe fn dot8_u4<const VNNI: bool, const HI_X16: bool>(
    w: &[__m512i; 8],
    x: *const i8,
    init: __m512i,
) -> __m512i {
    // SAFETY: `x` has 32 readable bytes (caller).
    unsafe {
        if VNNI {
            let mut c0 = init;
            let mut c1 = _mm512_setzero_si512();
            for q in 0..4 {
                c0 = _mm512_dpbusd_epi32(c0, w[q], bcast(x, q));
                c1 = _mm512_dpbusd_epi32(c1, w[q + 4], bcast(x, q + 4));
            }
            if HI_X16 {
                _mm512_add_epi32(c0, _mm512_srai_epi32::<4>(c1))
            } else {
                _mm512_add_epi32(c0, c1)
            }
        } else {
            let mut s = _mm512_maddubs_epi16(w[0], bcast(x, 0));
            for q in 1..8 {
                s = _mm512_add_epi16(s, _mm512_maddubs_epi16(w[q], bcast(x, q)));
            }
            _mm512_add_epi32(init, _mm512_madd_epi16(s, _mm512_set1_epi16(1)))
        }
    }
}

/// The high nibbles of `v`: times 16 in place with VNNI (see [`dot8_u4`]),
/// shifted down without.
#[inline(always)]
unsafe fn high_nibbles<const VNNI: bool>(v: __m512i) -> __m512i {
    if VNNI {
        _mm512_and_si512(v, _mm512_set1_epi8(0xF0u8 as i8))
    } else {
        _mm512_and_si512(_mm512_srli_epi16::<4>(v), _mm512_set1_epi8(0x0F))
    }
}

/// Bit `q` of each byte of `h` moved to bit 4 (the fifth bit of a 5-bit
/// code), the other bits cleared.
#[inline(always)]
unsafe fn fifth_bits(h: __m512i, q: usize) -> __m512i {
    let down = _mm512_srl_epi16(h, _mm_cvtsi64_si128(q as i64));
    _mm512_and_si512(_mm512_slli_epi16::<4>(down), _mm512_set1_epi8(0x10))
}

/// `init + Σ_q w[q] · x[quartet q]` over 8 quartets of 5-bit codes. Without
/// VNNI the i16 partial sums are taken four quartets at a time, which cannot
/// overflow (4 · 2 · 31 · 127 < 32768).
#[inline(always)]
unsafe fn dot8_u5<const VNNI: bool>(w: &[__m512i; 8], x: *const i8, init: __m512i) -> __m512i {
    // SAFETY: `x` has 32 readable bytes (caller).
    unsafe {
        if VNNI {
            dot8_u4::<true, false>(w, x, init)
        } else {
            let lo = [w[0], w[1], w[2], w[3]];
            let hi = [w[4], w[5], w[6], w[7]];
            dot4_u6::<false>(&hi, x.add(16), dot4_u6::<false>(&lo, x, init))
        }
    }
}

/// `init + Σ_q w[q] · x[quartet q]` over 4 quartets with weights below 64
/// (pairs of i16 partial sums: 2 · 2 · 63 · 127 < 32768).
#[inline(always)]
unsafe fn dot4_u6<const VNNI: bool>(w: &[__m512i; 4], x: *const i8, init: __m512i) -> __m512i {
    // SAFETY: `x` has 16 readable bytes (caller).
    unsafe {
        if VNNI {
            let mut c0 = _mm512_dpbusd_epi32(init, w[0], bcast(x, 0));
            let mut c1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w[1], bcast(x, 1));
            c0 = _mm512_dpbusd_epi32(c0, w[2], bcast(x, 2));
            c1 = _mm512_dpbusd_epi32(c1, w[3], bcast(x, 3));
            _mm512_add_epi32(c0, c1)
        } else {
            let ones = _mm512_set1_epi16(1);
            let s01 = _mm512_add_epi16(
                _mm512_maddubs_epi16(w[0], bcast(x, 0)),
                _mm512_maddubs_epi16(w[1], bcast(x, 1)),
            );
            let s23 = _mm512_add_epi16(
                _mm512_maddubs_epi16(w[2], bcast(x, 2)),
                _mm512_maddubs_epi16(w[3], bcast(x, 3)),
            );
            let c = _mm512_add_epi32(_mm512_madd_epi16(s01, ones), _mm512_madd_epi16(s23, ones));
            _mm512_add_epi32(init, c)
        }
    }
}

/// Q4_0 / Q4_1 / Q8_0: one tile against `RT` activation rows from `row0`.
#[inline(always)]
unsafe fn tile_q32<const F: u8, const RT: usize, const VNNI: bool>(
    tile: *const u8,
    nb: usize,
    a: ActView,
    row0: usize,
    out: OutPtr,
    t: usize,
) {
    let tb = match F {
        F_Q4_0 => Q4_0_TB,
        F_Q4_1 => Q4_1_TB,
        F_Q5_1 => Q5_1_TB,
        _ => Q8_0_TB,
    };
    let dofs = match F {
        F_Q8_0 => 512,
        F_Q5_1 => Q5_1_D,
        _ => 256,
    };
    let with_min = F == F_Q4_1 || F == F_Q5_1;
    let m4 = _mm512_set1_epi8(0x0F);
    let zero = _mm512_setzero_si512();
    let mut acc = [_mm512_setzero_ps(); RT];
    let mut accm = [_mm512_setzero_ps(); RT];
    // SAFETY (whole body): block `b < nb` of the tile spans `tb` bytes from
    // `tile + b tb`; activation block `b` of row `row0 + r` (r < RT) is
    // inside `a`'s buffers (caller contract).
    unsafe {
        for b in 0..nb {
            let p = tile.add(b * tb);
            prefetch_ahead(p, tb);
            let mut wv = [zero; 8];
            if F == F_Q8_0 {
                for (q, w) in wv.iter_mut().enumerate() {
                    *w = load(p.add(64 * q));
                }
            } else if F == F_Q5_1 {
                let hv = load(p.add(Q5_1_H));
                for q in 0..4 {
                    let v = load(p.add(64 * q));
                    wv[q] = _mm512_or_si512(_mm512_and_si512(v, m4), fifth_bits(hv, q));
                    wv[q + 4] = _mm512_or_si512(high_nibbles::<false>(v), fifth_bits(hv, q + 4));
                }
            } else {
                for q in 0..4 {
                    let v = load(p.add(64 * q));
                    wv[q] = _mm512_and_si512(v, m4);
                    wv[q + 4] = high_nibbles::<VNNI>(v);
                }
            }
            let dw = load_f16(p.add(dofs));
            let mw = if with_min {
                load_f16(p.add(dofs + 32))
            } else {
                _mm512_setzero_ps()
            };
            // Without VNNI, Q8_0 multiplies |w| by x with w's sign (maddubs
            // would saturate on the +128-offset bytes).
            let mut aw = [zero; 8];
            let mut neg = [0u64; 8];
            if F == F_Q8_0 && !VNNI {
                for q in 0..8 {
                    let s = _mm512_xor_si512(wv[q], _mm512_set1_epi8(i8::MIN));
                    aw[q] = _mm512_abs_epi8(s);
                    neg[q] = _mm512_movepi8_mask(s);
                }
            }
            for r in 0..RT {
                let row = row0 + r;
                let x = a.qs.add(row * a.in_dim + b * QK);
                let blk = row * a.nb + b;
                let sum = *a.sums.add(blk);
                let isum = if F == F_Q8_0 && !VNNI {
                    let mut c = zero;
                    for q in 0..8 {
                        let xb = bcast(x, q);
                        let xs = _mm512_mask_sub_epi8(xb, neg[q], zero, xb);
                        c = _mm512_add_epi32(
                            c,
                            _mm512_madd_epi16(
                                _mm512_maddubs_epi16(aw[q], xs),
                                _mm512_set1_epi16(1),
                            ),
                        );
                    }
                    c
                } else {
                    // Unsigned codes: subtract the offset times the block sum.
                    let init = match F {
                        F_Q4_0 => _mm512_set1_epi32(-8 * sum),
                        F_Q8_0 => _mm512_set1_epi32(-128 * sum),
                        _ => zero,
                    };
                    if F == F_Q8_0 {
                        let mut c0 = init;
                        let mut c1 = zero;
                        for q in 0..4 {
                            c0 = _mm512_dpbusd_epi32(c0, wv[q], bcast(x, q));
                            c1 = _mm512_dpbusd_epi32(c1, wv[q + 4], bcast(x, q + 4));
                        }
                        _mm512_add_epi32(c0, c1)
                    } else if F == F_Q5_1 {
                        dot8_u5::<VNNI>(&wv, x, init)
                    } else {
                        dot8_u4::<VNNI, true>(&wv, x, init)
                    }
                };
                let dx = _mm512_set1_ps(*a.d.add(blk));
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(dw, dx), acc[r]);
                if with_min {
                    accm[r] = _mm512_fmadd_ps(mw, _mm512_set1_ps(*a.ds.add(blk)), accm[r]);
                }
            }
        }
        for r in 0..RT {
            let v = if with_min {
                _mm512_add_ps(acc[r], accm[r])
            } else {
                acc[r]
            };
            store(out, row0 + r, t, v);
        }
    }
}

/// Q4_K, or Q5_K when `FIVE` (the same layout plus fifth-bit vectors): one
/// tile against `RT` activation rows from `row0`.
#[inline(always)]
unsafe fn tile_q4k<const RT: usize, const VNNI: bool, const FIVE: bool>(
    tile: *const u8,
    nsb: usize,
    a: ActView,
    row0: usize,
    out: OutPtr,
    t: usize,
) {
    let m4 = _mm512_set1_epi8(0x0F);
    let zero = _mm512_setzero_si512();
    let mut acc = [_mm512_setzero_ps(); RT];
    let mut accm = [_mm512_setzero_ps(); RT];
    let (tb, sc_at, min_at, d_at) = if FIVE {
        (Q5K_TB, Q5K_SC, Q5K_MIN, Q5K_D)
    } else {
        (Q4K_TB, Q4K_SC, Q4K_MIN, Q4K_D)
    };
    // SAFETY (whole body): as in `tile_q32`, with `tb`-byte blocks.
    unsafe {
        for sb in 0..nsb {
            let p = tile.add(sb * tb);
            let mut itot = [zero; RT];
            for s in 0..8 {
                // Spread over the sub-blocks: a burst of ~40 prefetches
                // per super-block overflows the miss buffers.
                prefetch_ahead(p.add(s * tb / 8), tb / 8);
                let j = s / 2;
                let mut wv = [zero; 8];
                for (q, w) in wv.iter_mut().enumerate() {
                    let v = load(p.add((j * 8 + q) * 64));
                    *w = if s % 2 == 1 && FIVE {
                        high_nibbles::<false>(v)
                    } else if s % 2 == 1 {
                        high_nibbles::<VNNI>(v)
                    } else {
                        _mm512_and_si512(v, m4)
                    };
                }
                if FIVE {
                    let hv = load(p.add(Q5K_H + s * 64));
                    for (q, w) in wv.iter_mut().enumerate() {
                        *w = _mm512_or_si512(*w, fifth_bits(hv, q));
                    }
                }
                let sc = _mm512_cvtepu8_epi32(_mm_loadu_si128(p.add(sc_at + s * 16).cast()));
                for (r, it) in itot.iter_mut().enumerate() {
                    let x = a.qs.add((row0 + r) * a.in_dim + sb * QK_K + s * 32);
                    let isum = if FIVE {
                        dot8_u5::<VNNI>(&wv, x, zero)
                    } else if VNNI && s % 2 == 1 {
                        // exact: codes were x16
                        _mm512_srai_epi32::<4>(dot8_u4::<VNNI, false>(&wv, x, zero))
                    } else {
                        dot8_u4::<VNNI, false>(&wv, x, zero)
                    };
                    *it = _mm512_add_epi32(*it, _mm512_mullo_epi32(isum, sc));
                }
            }
            let d = load_f16(p.add(d_at));
            let dmin = load_f16(p.add(d_at + 32));
            let mut mp = [zero; 4];
            for (pp, m) in mp.iter_mut().enumerate() {
                *m = _mm512_cvtepu8_epi16(_mm256_loadu_si256(p.add(min_at + pp * 32).cast()));
            }
            for r in 0..RT {
                let blk = (row0 + r) * a.nb + sb;
                let pr = a.pairs.add(blk * 4);
                let mut mt = _mm512_madd_epi16(mp[0], _mm512_set1_epi32(*pr));
                for (pp, m) in mp.iter().enumerate().skip(1) {
                    mt =
                        _mm512_add_epi32(mt, _mm512_madd_epi16(*m, _mm512_set1_epi32(*pr.add(pp))));
                }
                let dx = _mm512_set1_ps(*a.d.add(blk));
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(itot[r]), _mm512_mul_ps(d, dx), acc[r]);
                accm[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(mt), _mm512_mul_ps(dmin, dx), accm[r]);
            }
        }
        for r in 0..RT {
            store(out, row0 + r, t, _mm512_sub_ps(acc[r], accm[r]));
        }
    }
}

/// Q6_K: one tile against `RT` activation rows from `row0`.
#[inline(always)]
unsafe fn tile_q6k<const RT: usize, const VNNI: bool>(
    tile: *const u8,
    nsb: usize,
    a: ActView,
    row0: usize,
    out: OutPtr,
    t: usize,
) {
    let m4 = _mm512_set1_epi8(0x0F);
    let m30 = _mm512_set1_epi8(0x30);
    let zero = _mm512_setzero_si512();
    let mut acc = [_mm512_setzero_ps(); RT];
    // SAFETY (whole body): as in `tile_q32`, with `Q6K_TB`-byte blocks.
    unsafe {
        for sb in 0..nsb {
            let p = tile.add(sb * Q6K_TB);
            let mut itot = [zero; RT];
            for sp in 0..4 {
                for ph in 0..2 {
                    // Spread over the 8 phases, as in `tile_q4k`.
                    prefetch_ahead(p.add((2 * sp + ph) * Q6K_TB / 8), Q6K_TB / 8);
                    // Phase 0: low nibbles of L_Q (sub-block sp) and high
                    // nibbles (sp + 8); phase 1: L_{Q+16} (sp + 4, sp + 12).
                    let mut wa = [zero; 4];
                    let mut wb = [zero; 4];
                    for qq in 0..4 {
                        let qi = 4 * sp + qq;
                        let l = load(p.add((qi + 16 * ph) * 64));
                        let h = load(p.add(Q6K_H + qi * 64));
                        let lo = _mm512_and_si512(l, m4);
                        let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(l), m4);
                        if ph == 0 {
                            wa[qq] = _mm512_or_si512(
                                lo,
                                _mm512_and_si512(_mm512_slli_epi16::<4>(h), m30),
                            );
                            wb[qq] = _mm512_or_si512(hi, _mm512_and_si512(h, m30));
                        } else {
                            wa[qq] = _mm512_or_si512(
                                lo,
                                _mm512_and_si512(_mm512_slli_epi16::<2>(h), m30),
                            );
                            wb[qq] = _mm512_or_si512(
                                hi,
                                _mm512_and_si512(_mm512_srli_epi16::<2>(h), m30),
                            );
                        }
                    }
                    let (sa, sbb) = (sp + 4 * ph, sp + 8 + 4 * ph);
                    let sca = _mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(Q6K_SC + sa * 16).cast()));
                    let scb =
                        _mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(Q6K_SC + sbb * 16).cast()));
                    for (r, it) in itot.iter_mut().enumerate() {
                        let row = row0 + r;
                        let base = a.qs.add(row * a.in_dim + sb * QK_K);
                        let sums = a.sums.add((row * a.nb + sb) * 16);
                        let ia = dot4_u6::<VNNI>(
                            &wa,
                            base.add(sa * 16),
                            _mm512_set1_epi32(-32 * *sums.add(sa)),
                        );
                        let ib = dot4_u6::<VNNI>(
                            &wb,
                            base.add(sbb * 16),
                            _mm512_set1_epi32(-32 * *sums.add(sbb)),
                        );
                        *it = _mm512_add_epi32(
                            *it,
                            _mm512_add_epi32(
                                _mm512_mullo_epi32(ia, sca),
                                _mm512_mullo_epi32(ib, scb),
                            ),
                        );
                    }
                }
            }
            let d = load_f16(p.add(Q6K_D));
            for r in 0..RT {
                let dx = _mm512_set1_ps(*a.d.add((row0 + r) * a.nb + sb));
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(itot[r]), _mm512_mul_ps(d, dx), acc[r]);
            }
        }
        for r in 0..RT {
            store(out, row0 + r, t, acc[r]);
        }
    }
}

/// F32: one tile (`[k][16]` floats) against `RT` rows, four partial sums by
/// `k mod 4` folded as `(p0 + p1) + (p2 + p3)`.
#[inline(always)]
unsafe fn tile_f32<const RT: usize>(
    tile: *const u8,
    a: ActView,
    row0: usize,
    out: OutPtr,
    t: usize,
) {
    let k = a.in_dim;
    let w = tile.cast::<f32>();
    let mut acc = [[_mm512_setzero_ps(); 4]; RT];
    // SAFETY: the tile holds `16 k` floats (64-byte aligned); rows
    // `row0..row0 + RT` of `a.xf` hold `k` floats each (caller contract).
    unsafe {
        let k4 = k / 4 * 4;
        for kk in (0..k4).step_by(4) {
            prefetch_ahead(w.add(kk * TILE).cast(), 4 * TILE * 4);
            for j in 0..4 {
                let wv = _mm512_loadu_ps(w.add((kk + j) * TILE));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm512_set1_ps(*a.xf.add((row0 + r) * k + kk + j));
                    acc[j] = _mm512_fmadd_ps(wv, x, acc[j]);
                }
            }
        }
        for kk in k4..k {
            let wv = _mm512_loadu_ps(w.add(kk * TILE));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_ps(*a.xf.add((row0 + r) * k + kk));
                acc[kk - k4] = _mm512_fmadd_ps(wv, x, acc[kk - k4]);
            }
        }
        for (r, p) in acc.iter().enumerate() {
            let v = _mm512_add_ps(_mm512_add_ps(p[0], p[1]), _mm512_add_ps(p[2], p[3]));
            store(out, row0 + r, t, v);
        }
    }
}
