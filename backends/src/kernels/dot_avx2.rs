//! AVX2 + FMA + F16C kernels.
//!
//! A ymm holds half a tile (8 output rows: the first or second 32 bytes of
//! each 64-byte tile vector). Integer dot products use `vpmaddubsw`
//! (unsigned weight codes × signed activations) with i16 partial sums that
//! cannot overflow, then `vpmaddwd` by ones; Q8_0 uses the sign trick
//! (`|w|` × `sign(x, w)`) since its +128-offset bytes would saturate. Float
//! accumulation is the same per-lane sequence as the AVX-512 kernels.

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

const F_Q4_0: u8 = 0;
const F_Q4_1: u8 = 1;
const F_Q8_0: u8 = 2;
const F_Q5_1: u8 = 3;

/// Computes output tiles `tiles` with AVX2.
///
/// # Safety
/// The CPU must support avx2, fma and f16c; otherwise as
/// [`super::dot_scalar::run`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn run(
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
        for h in 0..2 {
            if t * TILE + 8 * h >= out.out_dim() {
                break; // padding rows only
            }
            let mut row0 = 0;
            while row0 < rows {
                let left = rows - row0;
                // SAFETY (all calls): `tile` is a whole tile of `w`, `av`
                // views activations matching `w` with `row0 + rt <= rows`,
                // and the caller owns tile `t` of `out`.
                let rt = match w.dtype() {
                    WeightType::Q4_0 | WeightType::Q4_1 | WeightType::Q5_1 | WeightType::Q8_0 => {
                        macro_rules! q32 {
                            ($f:expr) => {
                                if left >= 4 {
                                    unsafe { tile_q32::<$f, 4>(tile, h, nb, av, row0, out, t) };
                                    4
                                } else if left >= 2 {
                                    unsafe { tile_q32::<$f, 2>(tile, h, nb, av, row0, out, t) };
                                    2
                                } else {
                                    unsafe { tile_q32::<$f, 1>(tile, h, nb, av, row0, out, t) };
                                    1
                                }
                            };
                        }
                        match w.dtype() {
                            WeightType::Q4_0 => q32!(F_Q4_0),
                            WeightType::Q4_1 => q32!(F_Q4_1),
                            WeightType::Q5_1 => q32!(F_Q5_1),
                            _ => q32!(F_Q8_0),
                        }
                    }
                    WeightType::Q4K | WeightType::Q5K => {
                        macro_rules! qk {
                            ($five:expr) => {
                                if left >= 2 {
                                    unsafe { tile_q4k::<2, $five>(tile, h, nb, av, row0, out, t) };
                                    2
                                } else {
                                    unsafe { tile_q4k::<1, $five>(tile, h, nb, av, row0, out, t) };
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
                        if left >= 2 {
                            unsafe { tile_q6k::<2>(tile, h, nb, av, row0, out, t) };
                            2
                        } else {
                            unsafe { tile_q6k::<1>(tile, h, nb, av, row0, out, t) };
                            1
                        }
                    }
                    WeightType::F32 => {
                        if left >= 2 {
                            unsafe { tile_f32::<2>(tile, h, av, row0, out, t) };
                            2
                        } else {
                            unsafe { tile_f32::<1>(tile, h, av, row0, out, t) };
                            1
                        }
                    }
                };
                row0 += rt;
            }
        }
    }
}

/// Broadcasts activation quartet `q` of `x` to all lanes.
#[inline(always)]
unsafe fn bcast(x: *const i8, q: usize) -> __m256i {
    // SAFETY: the caller passes a pointer with at least `4q + 4` readable bytes.
    _mm256_set1_epi32(unsafe { std::ptr::read_unaligned(x.cast::<i32>().add(q)) })
}

#[inline(always)]
unsafe fn load(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 32 readable bytes.
    unsafe { _mm256_loadu_si256(p.cast()) }
}

/// 8 f16 values at `p` as f32.
#[inline(always)]
unsafe fn load_f16(p: *const u8) -> __m256 {
    // SAFETY: the caller guarantees 16 readable bytes.
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(p.cast()) })
}

/// Stores half `h` of tile `t` of output row `row`.
#[inline(always)]
unsafe fn store(out: OutPtr, row: usize, t: usize, h: usize, v: __m256) {
    let mut tmp = [0f32; 8];
    // SAFETY: `tmp` holds 8 floats; `store_half` writes the valid lanes of a
    // half the caller owns.
    unsafe {
        if out.full(t) {
            _mm256_storeu_ps(out.at(row, t).add(8 * h), v);
        } else {
            _mm256_storeu_ps(tmp.as_mut_ptr(), v);
            out.store_half(row, t, h, &tmp);
        }
    }
}

/// `init + Σ_q w[q] · x[quartet q]` over 8 quartets, weights below 16.
#[inline(always)]
unsafe fn dot8_u4(w: &[__m256i; 8], x: *const i8, init: __m256i) -> __m256i {
    // SAFETY: `x` has 32 readable bytes (caller).
    unsafe {
        let mut s = _mm256_maddubs_epi16(w[0], bcast(x, 0));
        for q in 1..8 {
            s = _mm256_add_epi16(s, _mm256_maddubs_epi16(w[q], bcast(x, q)));
        }
        _mm256_add_epi32(init, _mm256_madd_epi16(s, _mm256_set1_epi16(1)))
    }
}

/// Bit `q` of each byte of `h` moved to bit 4 (the fifth bit of a 5-bit
/// code), the other bits cleared.
#[inline(always)]
unsafe fn fifth_bits(h: __m256i, q: usize) -> __m256i {
    let down = _mm256_srl_epi16(h, _mm_cvtsi64_si128(q as i64));
    _mm256_and_si256(_mm256_slli_epi16::<4>(down), _mm256_set1_epi8(0x10))
}

/// `init + Σ_q w[q] · x[quartet q]` over 8 quartets of 5-bit codes, with
/// i16 partial sums taken four quartets at a time (4 · 2 · 31 · 127 < 32768).
#[inline(always)]
unsafe fn dot8_u5(w: &[__m256i; 8], x: *const i8, init: __m256i) -> __m256i {
    // SAFETY: `x` has 32 readable bytes (caller).
    unsafe {
        let lo = [w[0], w[1], w[2], w[3]];
        let hi = [w[4], w[5], w[6], w[7]];
        dot4_u6(&hi, x.add(16), dot4_u6(&lo, x, init))
    }
}

/// `init + Σ_q w[q] · x[quartet q]` over 4 quartets, weights below 64.
#[inline(always)]
unsafe fn dot4_u6(w: &[__m256i; 4], x: *const i8, init: __m256i) -> __m256i {
    // SAFETY: `x` has 16 readable bytes (caller).
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let s01 = _mm256_add_epi16(
            _mm256_maddubs_epi16(w[0], bcast(x, 0)),
            _mm256_maddubs_epi16(w[1], bcast(x, 1)),
        );
        let s23 = _mm256_add_epi16(
            _mm256_maddubs_epi16(w[2], bcast(x, 2)),
            _mm256_maddubs_epi16(w[3], bcast(x, 3)),
        );
        _mm256_add_epi32(
            init,
            _mm256_add_epi32(_mm256_madd_epi16(s01, ones), _mm256_madd_epi16(s23, ones)),
        )
    }
}

/// Q4_0 / Q4_1 / Q8_0: half `h` of one tile against `RT` rows from `row0`.
#[inline(always)]
unsafe fn tile_q32<const F: u8, const RT: usize>(
    tile: *const u8,
    h: usize,
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
    let m4 = _mm256_set1_epi8(0x0F);
    let zero = _mm256_setzero_si256();
    let mut acc = [_mm256_setzero_ps(); RT];
    let mut accm = [_mm256_setzero_ps(); RT];
    // SAFETY (whole body): block `b < nb` spans `tb` bytes from
    // `tile + b tb`; activation block `b` of rows `row0..row0 + RT` is inside
    // `a`'s buffers (caller contract).
    unsafe {
        for b in 0..nb {
            let p = tile.add(b * tb);
            prefetch_ahead(p, tb);
            let mut wv = [zero; 8];
            if F == F_Q8_0 {
                // Signed weights for the sign trick.
                for (q, w) in wv.iter_mut().enumerate() {
                    *w = _mm256_xor_si256(load(p.add(64 * q + 32 * h)), _mm256_set1_epi8(i8::MIN));
                }
            } else {
                for q in 0..4 {
                    let v = load(p.add(64 * q + 32 * h));
                    wv[q] = _mm256_and_si256(v, m4);
                    wv[q + 4] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
                }
                if F == F_Q5_1 {
                    let hv = load(p.add(Q5_1_H + 32 * h));
                    for (q, w) in wv.iter_mut().enumerate() {
                        *w = _mm256_or_si256(*w, fifth_bits(hv, q));
                    }
                }
            }
            let dw = load_f16(p.add(dofs + 16 * h));
            let mw = if with_min {
                load_f16(p.add(dofs + 32 + 16 * h))
            } else {
                _mm256_setzero_ps()
            };
            let mut aw = [zero; 8];
            if F == F_Q8_0 {
                for q in 0..8 {
                    aw[q] = _mm256_abs_epi8(wv[q]);
                }
            }
            for r in 0..RT {
                let row = row0 + r;
                let x = a.qs.add(row * a.in_dim + b * QK);
                let blk = row * a.nb + b;
                let isum = match F {
                    F_Q8_0 => {
                        let ones = _mm256_set1_epi16(1);
                        let mut c = zero;
                        for q in 0..8 {
                            let xs = _mm256_sign_epi8(bcast(x, q), wv[q]);
                            c = _mm256_add_epi32(
                                c,
                                _mm256_madd_epi16(_mm256_maddubs_epi16(aw[q], xs), ones),
                            );
                        }
                        c
                    }
                    F_Q4_0 => dot8_u4(&wv, x, _mm256_set1_epi32(-8 * *a.sums.add(blk))),
                    F_Q5_1 => dot8_u5(&wv, x, zero),
                    _ => dot8_u4(&wv, x, zero),
                };
                let dx = _mm256_set1_ps(*a.d.add(blk));
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dw, dx), acc[r]);
                if with_min {
                    accm[r] = _mm256_fmadd_ps(mw, _mm256_set1_ps(*a.ds.add(blk)), accm[r]);
                }
            }
        }
        for r in 0..RT {
            let v = if with_min {
                _mm256_add_ps(acc[r], accm[r])
            } else {
                acc[r]
            };
            store(out, row0 + r, t, h, v);
        }
    }
}

/// Q4_K, or Q5_K when `FIVE` (the same layout plus fifth-bit vectors):
/// half `h` of one tile against `RT` rows from `row0`.
#[inline(always)]
unsafe fn tile_q4k<const RT: usize, const FIVE: bool>(
    tile: *const u8,
    h: usize,
    nsb: usize,
    a: ActView,
    row0: usize,
    out: OutPtr,
    t: usize,
) {
    let m4 = _mm256_set1_epi8(0x0F);
    let zero = _mm256_setzero_si256();
    let mut acc = [_mm256_setzero_ps(); RT];
    let mut accm = [_mm256_setzero_ps(); RT];
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
                    let v = load(p.add((j * 8 + q) * 64 + 32 * h));
                    *w = if s % 2 == 1 {
                        _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4)
                    } else {
                        _mm256_and_si256(v, m4)
                    };
                }
                if FIVE {
                    let hv = load(p.add(Q5K_H + s * 64 + 32 * h));
                    for (q, w) in wv.iter_mut().enumerate() {
                        *w = _mm256_or_si256(*w, fifth_bits(hv, q));
                    }
                }
                let sc =
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(sc_at + s * 16 + 8 * h).cast()));
                for (r, it) in itot.iter_mut().enumerate() {
                    let x = a.qs.add((row0 + r) * a.in_dim + sb * QK_K + s * 32);
                    let dot = if FIVE {
                        dot8_u5(&wv, x, zero)
                    } else {
                        dot8_u4(&wv, x, zero)
                    };
                    *it = _mm256_add_epi32(*it, _mm256_mullo_epi32(dot, sc));
                }
            }
            let d = load_f16(p.add(d_at + 16 * h));
            let dmin = load_f16(p.add(d_at + 32 + 16 * h));
            let mut mp = [zero; 4];
            for (pp, m) in mp.iter_mut().enumerate() {
                *m = _mm256_cvtepu8_epi16(_mm_loadu_si128(p.add(min_at + pp * 32 + 16 * h).cast()));
            }
            for r in 0..RT {
                let blk = (row0 + r) * a.nb + sb;
                let pr = a.pairs.add(blk * 4);
                let mut mt = _mm256_madd_epi16(mp[0], _mm256_set1_epi32(*pr));
                for (pp, m) in mp.iter().enumerate().skip(1) {
                    mt =
                        _mm256_add_epi32(mt, _mm256_madd_epi16(*m, _mm256_set1_epi32(*pr.add(pp))));
                }
                let dx = _mm256_set1_ps(*a.d.add(blk));
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(itot[r]), _mm256_mul_ps(d, dx), acc[r]);
                accm[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(mt), _mm256_mul_ps(dmin, dx), accm[r]);
            }
        }
        for r in 0..RT {
            store(out, row0 + r, t, h, _mm256_sub_ps(acc[r], accm[r]));
        }
    }
}

/// Q6_K: half `h` of one tile against `RT` rows from `row0`.
#[inline(always)]
unsafe fn tile_q6k<const RT: usize>(
    tile: *const u8,
    h: usize,
    nsb: usize,
    a: ActView,
    row0: usize,
    out: OutPtr,
    t: usize,
) {
    let m4 = _mm256_set1_epi8(0x0F);
    let m30 = _mm256_set1_epi8(0x30);
    let zero = _mm256_setzero_si256();
    let mut acc = [_mm256_setzero_ps(); RT];
    // SAFETY (whole body): as in `tile_q32`, with `Q6K_TB`-byte blocks.
    unsafe {
        for sb in 0..nsb {
            let p = tile.add(sb * Q6K_TB);
            let mut itot = [zero; RT];
            for sp in 0..4 {
                for ph in 0..2 {
                    // Spread over the 8 phases, as in `tile_q4k`.
                    prefetch_ahead(p.add((2 * sp + ph) * Q6K_TB / 8), Q6K_TB / 8);
                    let mut wa = [zero; 4];
                    let mut wb = [zero; 4];
                    for qq in 0..4 {
                        let qi = 4 * sp + qq;
                        let l = load(p.add((qi + 16 * ph) * 64 + 32 * h));
                        let hb = load(p.add(Q6K_H + qi * 64 + 32 * h));
                        let lo = _mm256_and_si256(l, m4);
                        let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(l), m4);
                        if ph == 0 {
                            wa[qq] = _mm256_or_si256(
                                lo,
                                _mm256_and_si256(_mm256_slli_epi16::<4>(hb), m30),
                            );
                            wb[qq] = _mm256_or_si256(hi, _mm256_and_si256(hb, m30));
                        } else {
                            wa[qq] = _mm256_or_si256(
                                lo,
                                _mm256_and_si256(_mm256_slli_epi16::<2>(hb), m30),
                            );
                            wb[qq] = _mm256_or_si256(
                                hi,
                                _mm256_and_si256(_mm256_srli_epi16::<2>(hb), m30),
                            );
                        }
                    }
                    let (sa, sbb) = (sp + 4 * ph, sp + 8 + 4 * ph);
                    let sca = _mm256_cvtepi8_epi32(_mm_loadl_epi64(
                        p.add(Q6K_SC + sa * 16 + 8 * h).cast(),
                    ));
                    let scb = _mm256_cvtepi8_epi32(_mm_loadl_epi64(
                        p.add(Q6K_SC + sbb * 16 + 8 * h).cast(),
                    ));
                    for (r, it) in itot.iter_mut().enumerate() {
                        let row = row0 + r;
                        let base = a.qs.add(row * a.in_dim + sb * QK_K);
                        let sums = a.sums.add((row * a.nb + sb) * 16);
                        let ia = dot4_u6(
                            &wa,
                            base.add(sa * 16),
                            _mm256_set1_epi32(-32 * *sums.add(sa)),
                        );
                        let ib = dot4_u6(
                            &wb,
                            base.add(sbb * 16),
                            _mm256_set1_epi32(-32 * *sums.add(sbb)),
                        );
                        *it = _mm256_add_epi32(
                            *it,
                            _mm256_add_epi32(
                                _mm256_mullo_epi32(ia, sca),
                                _mm256_mullo_epi32(ib, scb),
                            ),
                        );
                    }
                }
            }
            let d = load_f16(p.add(Q6K_D + 16 * h));
            for r in 0..RT {
                let dx = _mm256_set1_ps(*a.d.add((row0 + r) * a.nb + sb));
                acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(itot[r]), _mm256_mul_ps(d, dx), acc[r]);
            }
        }
        for r in 0..RT {
            store(out, row0 + r, t, h, acc[r]);
        }
    }
}

/// F32: half `h` of one tile against `RT` rows, four partial sums by `k mod 4`.
#[inline(always)]
unsafe fn tile_f32<const RT: usize>(
    tile: *const u8,
    h: usize,
    a: ActView,
    row0: usize,
    out: OutPtr,
    t: usize,
) {
    let k = a.in_dim;
    let w = tile.cast::<f32>();
    let mut acc = [[_mm256_setzero_ps(); 4]; RT];
    // SAFETY: the tile holds `16 k` floats; rows `row0..row0 + RT` of `a.xf`
    // hold `k` floats each (caller contract).
    unsafe {
        let k4 = k / 4 * 4;
        for kk in (0..k4).step_by(4) {
            prefetch_ahead(w.add(kk * TILE).cast(), 4 * TILE * 4);
            for j in 0..4 {
                let wv = _mm256_loadu_ps(w.add((kk + j) * TILE + 8 * h));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm256_set1_ps(*a.xf.add((row0 + r) * k + kk + j));
                    acc[j] = _mm256_fmadd_ps(wv, x, acc[j]);
                }
            }
        }
        for kk in k4..k {
            let wv = _mm256_loadu_ps(w.add(kk * TILE + 8 * h));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm256_set1_ps(*a.xf.add((row0 + r) * k + kk));
                acc[kk - k4] = _mm256_fmadd_ps(wv, x, acc[kk - k4]);
            }
        }
        for (r, p) in acc.iter().enumerate() {
            let v = _mm256_add_ps(_mm256_add_ps(p[0], p[1]), _mm256_add_ps(p[2], p[3]));
            store(out, row0 + r, t, h, v);
        }
    }
}
