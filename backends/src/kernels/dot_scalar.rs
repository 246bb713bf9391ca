//! Portable kernels over the tile layout. They compute the same integer dot
//! products as the SIMD kernels (so they double as an executable
//! specification of the layout) but round the float accumulation differently
//! (separate multiply and add instead of FMA).

// Row-tile loops index several parallel arrays (accumulators, weights,
// scales) by the same lane or row; iterator chains would obscure that.
#![allow(clippy::needless_range_loop)]

use std::ops::Range;

use super::formats::{
    read_f16, unpack_q4, unpack_q4k, unpack_q5_1, unpack_q5k, unpack_q6k, unpack_q8, QuantMatrix,
    WeightType, Q4K_D, Q4K_MIN, Q4K_SC, Q5K_D, Q5K_MIN, Q5K_SC, Q5_1_D, Q6K_D, Q6K_SC, QK, QK_K,
    TILE,
};
use super::matmul::OutPtr;
use super::quantize::QuantizedActivations;

/// Activation rows processed against one tile block before moving on.
const RT: usize = 4;

/// Computes output tiles `tiles` of `w · xᵀ` for every activation row.
///
/// # Safety
/// `out` must be valid for writes of `a.rows * w.out_dim()` floats, no one
/// else may access the columns of `tiles` during the call, and `a` must have
/// been quantized for `w`'s family with `a.in_dim == w.in_dim()`.
pub(crate) unsafe fn run(
    w: &QuantMatrix,
    a: &QuantizedActivations,
    tiles: Range<usize>,
    out: OutPtr,
) {
    let dtype = w.dtype();
    if dtype == WeightType::F32 {
        // SAFETY: forwarded from this function's contract.
        return unsafe { run_f32(w, a, tiles, out) };
    }
    let nb = w.blocks();
    let tb = dtype.tile_block_bytes();
    let in_dim = w.in_dim();
    for t in tiles {
        let tile = w.tile(t);
        let mut row0 = 0;
        while row0 < a.rows {
            let rt = RT.min(a.rows - row0);
            let mut acc = [[0f32; TILE]; RT];
            let mut accm = [[0f32; TILE]; RT];
            for b in 0..nb {
                let blk = &tile[b * tb..][..tb];
                for r in 0..TILE {
                    match dtype {
                        WeightType::Q4_0
                        | WeightType::Q4_1
                        | WeightType::Q5_1
                        | WeightType::Q8_0 => {
                            let (dot, dw, mw): ([i32; RT], f32, f32) = match dtype {
                                WeightType::Q8_0 => {
                                    let wv = unpack_q8(blk, r);
                                    (
                                        dots(rt, |i| {
                                            let x = &a.qs[(row0 + i) * in_dim + b * QK..][..QK];
                                            wv.iter()
                                                .zip(x)
                                                .map(|(&w, &x)| i32::from(w) * i32::from(x))
                                                .sum()
                                        }),
                                        read_f16(blk, 512 + 2 * r),
                                        0.0,
                                    )
                                }
                                _ => {
                                    let (u, dofs) = if dtype == WeightType::Q5_1 {
                                        (unpack_q5_1(blk, r), Q5_1_D)
                                    } else {
                                        (unpack_q4(blk, r), 256)
                                    };
                                    let q4_0 = dtype == WeightType::Q4_0;
                                    (
                                        dots(rt, |i| {
                                            let row = row0 + i;
                                            let x = &a.qs[row * in_dim + b * QK..][..QK];
                                            let s: i32 = u
                                                .iter()
                                                .zip(x)
                                                .map(|(&u, &x)| i32::from(u) * i32::from(x))
                                                .sum();
                                            if q4_0 {
                                                s - 8 * a.sums[row * nb + b]
                                            } else {
                                                s
                                            }
                                        }),
                                        read_f16(blk, dofs + 2 * r),
                                        if q4_0 {
                                            0.0
                                        } else {
                                            read_f16(blk, dofs + 32 + 2 * r)
                                        },
                                    )
                                }
                            };
                            for i in 0..rt {
                                let row = row0 + i;
                                let dx = a.d[row * nb + b];
                                acc[i][r] += dot[i] as f32 * (dw * dx);
                                if matches!(dtype, WeightType::Q4_1 | WeightType::Q5_1) {
                                    accm[i][r] += mw * a.ds[row * nb + b];
                                }
                            }
                        }
                        WeightType::Q4K | WeightType::Q5K => {
                            let (u, sc_at, min_at, d_at) = if dtype == WeightType::Q4K {
                                (unpack_q4k(blk, r), Q4K_SC, Q4K_MIN, Q4K_D)
                            } else {
                                (unpack_q5k(blk, r), Q5K_SC, Q5K_MIN, Q5K_D)
                            };
                            let d = read_f16(blk, d_at + 2 * r);
                            let dmin = read_f16(blk, d_at + 32 + 2 * r);
                            for i in 0..rt {
                                let row = row0 + i;
                                let x = &a.qs[row * in_dim + b * QK_K..][..QK_K];
                                let sums = &a.sums[(row * nb + b) * 16..][..16];
                                let (mut itot, mut mtot) = (0i32, 0i32);
                                for s in 0..8 {
                                    let dot: i32 = u[s * 32..][..32]
                                        .iter()
                                        .zip(&x[s * 32..][..32])
                                        .map(|(&u, &x)| i32::from(u) * i32::from(x))
                                        .sum();
                                    itot += i32::from(blk[sc_at + s * 16 + r]) * dot;
                                    let m = i32::from(blk[min_at + (s / 2) * 32 + r * 2 + s % 2]);
                                    mtot += m * (sums[2 * s] + sums[2 * s + 1]);
                                }
                                let dx = a.d[row * nb + b];
                                acc[i][r] += itot as f32 * (d * dx);
                                accm[i][r] += mtot as f32 * (dmin * dx);
                            }
                        }
                        WeightType::Q6K => {
                            let u = unpack_q6k(blk, r);
                            let d = read_f16(blk, Q6K_D + 2 * r);
                            for i in 0..rt {
                                let row = row0 + i;
                                let x = &a.qs[row * in_dim + b * QK_K..][..QK_K];
                                let sums = &a.sums[(row * nb + b) * 16..][..16];
                                let mut itot = 0i32;
                                for s in 0..16 {
                                    let dot: i32 = u[s * 16..][..16]
                                        .iter()
                                        .zip(&x[s * 16..][..16])
                                        .map(|(&u, &x)| i32::from(u) * i32::from(x))
                                        .sum();
                                    let sc = i32::from(blk[Q6K_SC + s * 16 + r] as i8);
                                    itot += sc * (dot - 32 * sums[s]);
                                }
                                acc[i][r] += itot as f32 * (d * a.d[row * nb + b]);
                            }
                        }
                        WeightType::F32 => unreachable!("F32 has its own loop"),
                    }
                }
            }
            for i in 0..rt {
                let mut vals = [0f32; TILE];
                for r in 0..TILE {
                    vals[r] = match dtype {
                        WeightType::Q4_1 | WeightType::Q5_1 => acc[i][r] + accm[i][r],
                        WeightType::Q4K | WeightType::Q5K => acc[i][r] - accm[i][r],
                        _ => acc[i][r],
                    };
                }
                // SAFETY: forwarded from this function's contract.
                unsafe { out.store(row0 + i, t, &vals) };
            }
            row0 += rt;
        }
    }
}

/// Evaluates `f` for the first `rt` rows of a row tile.
#[inline]
fn dots(rt: usize, f: impl Fn(usize) -> i32) -> [i32; RT] {
    let mut d = [0; RT];
    for (i, d) in d.iter_mut().enumerate().take(rt) {
        *d = f(i);
    }
    d
}

/// F32 weights: four partial sums per output by `k mod 4`, folded as
/// `(p0 + p1) + (p2 + p3)`, the same association as the SIMD kernels.
///
/// # Safety
/// As for [`run`].
unsafe fn run_f32(w: &QuantMatrix, a: &QuantizedActivations, tiles: Range<usize>, out: OutPtr) {
    let k = w.in_dim();
    for t in tiles {
        let tile = w.tile(t);
        for row in 0..a.rows {
            let x = &a.xf[row * k..][..k];
            let mut vals = [0f32; TILE];
            for (r, v) in vals.iter_mut().enumerate() {
                let mut p = [0f32; 4];
                for (kk, &x) in x.iter().enumerate() {
                    let o = kk * 64 + r * 4;
                    let wv = f32::from_le_bytes([tile[o], tile[o + 1], tile[o + 2], tile[o + 3]]);
                    p[kk % 4] += wv * x;
                }
                *v = (p[0] + p[1]) + (p[2] + p[3]);
            }
            // SAFETY: forwarded from this function's contract.
            unsafe { out.store(row, t, &vals) };
        }
    }
}
