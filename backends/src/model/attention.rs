//! Causal self-attention over the paged KV cache, tiled: a tile is a run of
//! up to [`TILE`] consecutive tokens of one sequence (a prompt chunk, or the
//! one token it decodes), and each KV block its tokens attend to is widened
//! from f16 once for the whole tile and every head that shares it (GQA).
//! A block's keys are stored transposed, so the scores of its 16 keys
//! accumulate in 16 independent lanes over the head dimension; values are
//! added lane by lane over the head dimension, key after key. On CPUs with
//! AVX2 both loops are written with AVX intrinsics (the compiler left them
//! scalar for some head counts), doing the plain loops' arithmetic in the
//! same order; softmax uses a branch-free exponential that vectorizes.
//! Tiles are split across the compute pool by cost.
//!
//! Every token's arithmetic is the same whatever its tile, the batch, the
//! thread count, where its blocks lie or the CPU path: results depend on
//! none of them.

use half::slice::HalfFloatSliceExt;

use crate::kernels::{detect_path, ComputePool, CpuPath};
use crate::scheduler::BlockId;

use super::kv::BLOCK;
use super::{BatchItem, KvPool, ModelConfig};

/// Query tokens per tile.
const TILE: usize = 16;

/// One token of the step: which sequence's block table it reads and its position.
#[derive(Debug, Clone, Copy)]
pub(super) struct TokenSlot {
    /// Index of the token's sequence in the step's items.
    pub seq: usize,
    /// Position of the token; it attends to positions `0..=pos`.
    pub pos: usize,
}

/// Consecutive tokens (rows `first..first + len` of the step) of one
/// sequence at consecutive positions.
#[derive(Debug, Clone, Copy)]
struct Tile {
    first: usize,
    len: usize,
    /// Query-key pairs, the unit of work.
    cost: usize,
}

/// Pointer to a buffer whose disjoint parts are written by different threads.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: each pool part writes only the rows of `att` of its own tiles and
// its own slice of the scratch buffer (see `attend`), so no element is
// written by two threads.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The pointer; a method so closures capture the whole `Sync` wrapper.
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// Which layer attention runs for, and its sliding window if it has one.
#[derive(Debug, Clone, Copy)]
pub(super) struct AttendLayer {
    /// The layer (selects its part of the KV pool).
    pub layer: usize,
    /// A sliding-window layer attends to the last `window` positions
    /// (itself included); a global one to all of them.
    pub window: Option<usize>,
}

/// Cuts the step's tokens into tiles.
fn tiles(tokens: &[TokenSlot]) -> Vec<Tile> {
    let mut out: Vec<Tile> = Vec::new();
    for (row, t) in tokens.iter().enumerate() {
        let extends = out.last().is_some_and(|tile| {
            let prev = tokens[tile.first + tile.len - 1];
            tile.len < TILE && prev.seq == t.seq && prev.pos + 1 == t.pos
        });
        match out.last_mut() {
            Some(tile) if extends => {
                tile.len += 1;
                tile.cost += t.pos + 1;
            }
            _ => out.push(Tile {
                first: row,
                len: 1,
                cost: t.pos + 1,
            }),
        }
    }
    out
}

/// Floats of scratch one tile needs when its last token attends to `longest` positions.
fn tile_scratch(cfg: &ModelConfig, longest: usize) -> usize {
    TILE * cfg.n_head * longest + BLOCK * cfg.kv_dim()
}

/// Writes `att[t]`, the attention output of token `t` (all heads), for every token.
#[allow(clippy::too_many_arguments)]
pub(super) fn attend(
    pool: &ComputePool,
    cfg: &ModelConfig,
    at: AttendLayer,
    kv: &KvPool,
    items: &[BatchItem<'_>],
    tokens: &[TokenSlot],
    q: &[f32],
    att: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let d = cfg.q_dim();
    let tiles = tiles(tokens);
    let longest = tokens.iter().map(|t| t.pos + 1).max().unwrap_or(0);
    let total: usize = tiles.iter().map(|t| t.cost).sum();
    // Waking another thread costs a few microseconds; only split real work.
    let parts = pool
        .threads()
        .min(tiles.len())
        .min(total * cfg.n_head / 4096 + 1)
        .max(1);
    let per_scratch = tile_scratch(cfg, longest);
    if scratch.len() < parts * per_scratch {
        scratch.resize(parts * per_scratch, 0.0);
    }
    // Contiguous runs of tiles of about equal cost, one per part.
    let mut bounds = vec![0; parts + 1];
    let (mut acc, mut part) = (0, 1);
    for (i, t) in tiles.iter().enumerate() {
        acc += t.cost;
        while part < parts && acc * parts >= total * part {
            bounds[part] = i + 1;
            part += 1;
        }
    }
    bounds[parts] = tiles.len();
    let avx2 = matches!(detect_path(), CpuPath::Avx2 | CpuPath::Avx512);
    let att_out = SharedOut(att.as_mut_ptr());
    let scratch_out = SharedOut(scratch.as_mut_ptr());
    let run_part = |part: usize| {
        // SAFETY: part `part` owns the `part * per_scratch ..` slice of
        // `scratch` and the `att` rows of its tiles; both outlive `run`.
        let sc = unsafe {
            std::slice::from_raw_parts_mut(scratch_out.at(part * per_scratch), per_scratch)
        };
        for tile in &tiles[bounds[part]..bounds[part + 1]] {
            let rows = tile.first..tile.first + tile.len;
            let out =
                unsafe { std::slice::from_raw_parts_mut(att_out.at(tile.first * d), tile.len * d) };
            let job = TileJob {
                cfg,
                kv,
                layer: at.layer,
                window: at.window,
                table: items[tokens[tile.first].seq].blocks,
                tokens: &tokens[rows.clone()],
                q: &q[rows.start * d..rows.end * d],
                out,
                scratch: sc,
            };
            run_tile(job, avx2);
        }
    };
    if parts == 1 {
        run_part(0);
    } else {
        pool.run(parts, &run_part);
    }
}

/// One tile's inputs and outputs.
struct TileJob<'a> {
    cfg: &'a ModelConfig,
    kv: &'a KvPool,
    layer: usize,
    /// The layer's sliding window, if any.
    window: Option<usize>,
    /// The sequence's block table.
    table: &'a [BlockId],
    /// The tile's tokens (consecutive positions).
    tokens: &'a [TokenSlot],
    /// Their queries, `q_dim` floats each.
    q: &'a [f32],
    /// Their outputs, `q_dim` floats each.
    out: &'a mut [f32],
    scratch: &'a mut [f32],
}

fn run_tile(job: TileJob<'_>, avx2: bool) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: `avx2` is set only when the CPU path detected AVX2 (and
        // FMA, F16C) support.
        unsafe { tile_avx2(job) };
        return;
    }
    let _ = avx2;
    tile::<false>(job);
}

/// [`tile`] compiled for AVX2, so its lane loops use 256-bit vectors.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_avx2(job: TileJob<'_>) {
    tile::<true>(job);
}

/// Attention of a tile's tokens: scores block by block, softmax, then
/// values block by block. `F16C`: widen f16 with the F16C instructions
/// (only inside [`tile_avx2`]).
#[inline(always)]
fn tile<const F16C: bool>(job: TileJob<'_>) {
    let TileJob {
        cfg,
        kv,
        layer,
        window,
        table,
        tokens,
        q,
        out,
        scratch,
    } = job;
    let (d, hd, kvd) = (cfg.q_dim(), cfg.head_dim, cfg.kv_dim());
    // The first position each token sees (its window's start); the tile's
    // first token sees the earliest.
    let lo = |t: &TokenSlot| window.map_or(0, |w| (t.pos + 1).saturating_sub(w));
    let tile_lo = lo(&tokens[0]);
    let (n_head, n_kv) = (cfg.n_head, cfg.n_kv_head);
    let group = n_head / n_kv;
    let scale = 1.0 / (hd as f32).sqrt();
    let n_pos = tokens[tokens.len() - 1].pos + 1;
    let (scores, block_f32) = scratch.split_at_mut(tokens.len() * n_head * n_pos);
    let block_f32 = &mut block_f32[..BLOCK * kvd];
    let n_blocks = n_pos.div_ceil(BLOCK);
    let score_row = |i: usize, h: usize| (i * n_head + h) * n_pos;

    for (b, &block) in table.iter().enumerate().take(n_blocks) {
        let base = b * BLOCK;
        let nk = BLOCK.min(n_pos - base);
        if base + nk <= tile_lo {
            continue;
        }
        // `[kv_dim][slot]`: head g's keys are rows g * hd .. (g + 1) * hd.
        widen::<F16C>(kv.block_keys(layer, block), block_f32);
        for g in 0..n_kv {
            let kt = &block_f32[g * hd * BLOCK..(g + 1) * hd * BLOCK];
            for (i, t) in tokens.iter().enumerate() {
                if t.pos < base {
                    continue;
                }
                let valid = nk.min(t.pos + 1 - base);
                let q_at = |h: usize| &q[i * d + h * hd..i * d + (h + 1) * hd];
                let mut h = g * group;
                while h < (g + 1) * group {
                    // Heads of one group read the same keys: up to 4 at a time.
                    let n = ((g + 1) * group - h).min(4);
                    let lanes: [[f32; BLOCK]; 4] = match n {
                        4 => qk::<4, F16C>([q_at(h), q_at(h + 1), q_at(h + 2), q_at(h + 3)], kt),
                        3 => pad(qk::<3, F16C>([q_at(h), q_at(h + 1), q_at(h + 2)], kt)),
                        2 => pad(qk::<2, F16C>([q_at(h), q_at(h + 1)], kt)),
                        _ => pad(qk::<1, F16C>([q_at(h)], kt)),
                    };
                    for (k, lane) in lanes.iter().enumerate().take(n) {
                        let row = score_row(i, h + k) + base;
                        if let Ok(full) =
                            <&mut [f32; BLOCK]>::try_from(&mut scores[row..row + valid])
                        {
                            // A whole block: a fixed-length loop, vectorized.
                            for (s, l) in full.iter_mut().zip(lane) {
                                *s = l * scale;
                            }
                            continue;
                        }
                        for (s, l) in scores[row..row + valid].iter_mut().zip(lane) {
                            *s = l * scale;
                        }
                    }
                    h += n;
                }
            }
        }
    }
    for (i, t) in tokens.iter().enumerate() {
        for h in 0..n_head {
            let row = score_row(i, h);
            softmax(&mut scores[row + lo(t)..row + t.pos + 1]);
        }
    }
    out.fill(0.0);
    for (b, &block) in table.iter().enumerate().take(n_blocks) {
        let base = b * BLOCK;
        let nk = BLOCK.min(n_pos - base);
        if base + nk <= tile_lo {
            continue;
        }
        let values = &mut block_f32[..nk * kvd];
        widen::<F16C>(&kv.block_values(layer, block)[..nk * kvd], values);
        for (i, t) in tokens.iter().enumerate() {
            let (from, to) = (lo(t).max(base), (t.pos + 1).min(base + nk));
            if from >= to {
                continue;
            }
            for h in 0..n_head {
                let g = h / group;
                let row = score_row(i, h);
                let o = &mut out[i * d + h * hd..i * d + (h + 1) * hd];
                add_values::<F16C>(
                    o,
                    &scores[row + from..row + to],
                    &values[(from - base) * kvd + g * hd..],
                    kvd,
                );
            }
        }
    }
}

/// `out += Σ_j w[j] · v_j` where `v_j = values[j * stride..][..out.len()]`.
/// 32 output lanes at a time stay in registers across the keys; each
/// element still adds key after key, as a plain loop would. `AVX`: with
/// AVX intrinsics (only inside [`tile_avx2`]), the same products and sums
/// in the same order, so the same bits.
#[inline(always)]
fn add_values<const AVX: bool>(out: &mut [f32], w: &[f32], values: &[f32], stride: usize) {
    #[cfg(target_arch = "x86_64")]
    if AVX {
        // SAFETY: `AVX` is true only inside `tile_avx2`, which runs on CPUs
        // with AVX2.
        unsafe { add_values_avx(out, w, values, stride) };
        return;
    }
    let mut at = 0;
    let mut wide = out.chunks_exact_mut(32);
    for o in &mut wide {
        let mut acc = [0.0f32; 32];
        acc.copy_from_slice(o);
        for (j, &wj) in w.iter().enumerate() {
            let v = &values[j * stride + at..j * stride + at + 32];
            for (a, &x) in acc.iter_mut().zip(v) {
                *a += wj * x;
            }
        }
        o.copy_from_slice(&acc);
        at += 32;
    }
    for (k, o) in wide.into_remainder().iter_mut().enumerate() {
        for (j, &wj) in w.iter().enumerate() {
            *o += wj * values[j * stride + at + k];
        }
    }
}

/// [`add_values`] with the 32 lanes in four AVX registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn add_values_avx(out: &mut [f32], w: &[f32], values: &[f32], stride: usize) {
    use std::arch::x86_64::{
        _mm256_add_ps, _mm256_loadu_ps, _mm256_mul_ps, _mm256_set1_ps, _mm256_storeu_ps,
    };
    let n = out.len();
    let mut at = 0;
    while at + 32 <= n {
        let o = out.as_mut_ptr().add(at);
        let mut acc = [
            _mm256_loadu_ps(o),
            _mm256_loadu_ps(o.add(8)),
            _mm256_loadu_ps(o.add(16)),
            _mm256_loadu_ps(o.add(24)),
        ];
        for (j, &wj) in w.iter().enumerate() {
            let v = &values[j * stride + at..j * stride + at + 32];
            let wv = _mm256_set1_ps(wj);
            for (k, a) in acc.iter_mut().enumerate() {
                *a = _mm256_add_ps(
                    *a,
                    _mm256_mul_ps(wv, _mm256_loadu_ps(v.as_ptr().add(8 * k))),
                );
            }
        }
        for (k, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(o.add(8 * k), *a);
        }
        at += 32;
    }
    for k in at..n {
        for (j, &wj) in w.iter().enumerate() {
            out[k] += wj * values[j * stride + k];
        }
    }
}

/// Widens f16 to f32 (`dst.len() == src.len()`).
#[inline(always)]
fn widen<const F16C: bool>(src: &[half::f16], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if F16C {
        // SAFETY: `F16C` is true only inside `tile_avx2`, which runs on
        // CPUs with F16C and AVX.
        unsafe { widen_f16c(src, dst) };
        return;
    }
    src.convert_to_f32_slice(dst);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn widen_f16c(src: &[half::f16], dst: &mut [f32]) {
    use std::arch::x86_64::{__m128i, _mm256_cvtph_ps, _mm256_storeu_ps, _mm_loadu_si128};
    let n = src.len().min(dst.len());
    let (s, d) = (src.as_ptr() as *const u16, dst.as_mut_ptr());
    let mut i = 0;
    while i + 8 <= n {
        _mm256_storeu_ps(
            d.add(i),
            _mm256_cvtph_ps(_mm_loadu_si128(s.add(i) as *const __m128i)),
        );
        i += 8;
    }
    while i < n {
        *d.add(i) = src[i].to_f32();
        i += 1;
    }
}

fn pad<const H: usize>(lanes: [[f32; BLOCK]; H]) -> [[f32; BLOCK]; 4] {
    let mut out = [[0.0; BLOCK]; 4];
    out[..H].copy_from_slice(&lanes);
    out
}

/// [`qk_block`], with AVX intrinsics when `AVX` (only inside
/// [`tile_avx2`]): the same products and sums in the same order, so the
/// same bits. (The compiler left the plain loop scalar for 3 heads, the
/// group size of SmolLM2, and attention was two thirds of a long prefill.)
#[inline(always)]
fn qk<const H: usize, const AVX: bool>(q: [&[f32]; H], kt: &[f32]) -> [[f32; BLOCK]; H] {
    #[cfg(target_arch = "x86_64")]
    if AVX {
        // SAFETY: `AVX` is true only inside `tile_avx2`, which runs on CPUs
        // with AVX2.
        return unsafe { qk_block_avx::<H>(q, kt) };
    }
    qk_block::<H>(q, kt)
}

/// [`qk_block`] with each head's 16 lanes in two AVX registers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn qk_block_avx<const H: usize>(q: [&[f32]; H], kt: &[f32]) -> [[f32; BLOCK]; H] {
    use std::arch::x86_64::{
        _mm256_add_ps, _mm256_loadu_ps, _mm256_mul_ps, _mm256_set1_ps, _mm256_setzero_ps,
        _mm256_storeu_ps,
    };
    let mut lo = [_mm256_setzero_ps(); H];
    let mut hi = [_mm256_setzero_ps(); H];
    for (dim, k) in kt.chunks_exact(BLOCK).enumerate() {
        let k0 = _mm256_loadu_ps(k.as_ptr());
        let k1 = _mm256_loadu_ps(k.as_ptr().add(8));
        for h in 0..H {
            let qd = _mm256_set1_ps(q[h][dim]);
            lo[h] = _mm256_add_ps(lo[h], _mm256_mul_ps(qd, k0));
            hi[h] = _mm256_add_ps(hi[h], _mm256_mul_ps(qd, k1));
        }
    }
    let mut out = [[0.0f32; BLOCK]; H];
    for h in 0..H {
        _mm256_storeu_ps(out[h].as_mut_ptr(), lo[h]);
        _mm256_storeu_ps(out[h].as_mut_ptr().add(8), hi[h]);
    }
    out
}

/// `q_h · k` for `H` query heads and the 16 keys of a transposed block
/// (`kt[dim][key]`), one lane per key, accumulated over the head dimension.
#[inline(always)]
fn qk_block<const H: usize>(q: [&[f32]; H], kt: &[f32]) -> [[f32; BLOCK]; H] {
    let mut acc = [[0.0f32; BLOCK]; H];
    for (dim, k) in kt.chunks_exact(BLOCK).enumerate() {
        for (a, qh) in acc.iter_mut().zip(&q) {
            let qd = qh[dim];
            for (x, &kj) in a.iter_mut().zip(k) {
                *x += qd * kj;
            }
        }
    }
    acc
}

/// Normalizes scores into weights. The exponentials are [`exp_neg`],
/// plain arithmetic that vectorizes (a call to libm's `expf` per score was
/// a fifth of a long prefill) and gives the same bits on every CPU path.
#[inline(always)]
fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for v in x.iter_mut() {
        *v = exp_neg(*v - max);
    }
    let mut sum = 0.0;
    for v in x.iter() {
        sum += *v;
    }
    for v in x.iter_mut() {
        *v /= sum;
    }
}

/// `e^x` for `x <= 0` (softmax's shifted scores), within 2 ulp of the
/// exact value over f32's normal range and 0 below it (-87.3). Cephes'
/// `expf`: `x = n ln 2 + r` with `|r| <= ln 2 / 2`, a degree-5
/// polynomial for `(e^r - 1 - r) / r^2`, and `2^n` written into the
/// exponent bits. No branches, so loops over it vectorize.
#[inline(always)]
fn exp_neg(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // n is in [-126, 0] (a NaN score stays NaN, as with libm).
    let x = x.clamp(-87.0, 0.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * (r * r) + r + 1.0;
    // 2^n, a normal f32: adding 2^23 leaves the integer n + 127 in the low
    // mantissa bits, which become the exponent field (no float-to-int
    // conversion, which would not vectorize).
    let biased = (n + (8_388_608.0 + 127.0))
        .to_bits()
        .wrapping_sub(0x4B00_0000);
    e * f32::from_bits(biased << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(seq: usize, pos: usize) -> TokenSlot {
        TokenSlot { seq, pos }
    }

    /// The AVX score and value loops give the same bits as the plain ones
    /// (same products, same order of sums), for every head count.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx_loops_give_the_plain_loops_bits() {
        assert!(
            std::arch::is_x86_feature_detected!("avx2"),
            "this test checks the AVX2 path, which every machine of this project has"
        );
        let mut seed = 12345u32;
        let mut rnd = || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1 << 24) as f32 - 0.5
        };
        let hd = 64;
        let kt: Vec<f32> = (0..hd * BLOCK).map(|_| rnd()).collect();
        let qs: Vec<Vec<f32>> = (0..4).map(|_| (0..hd).map(|_| rnd()).collect()).collect();
        let q = |h: usize| qs[h].as_slice();
        let bits = |rows: &[[f32; BLOCK]]| -> Vec<u32> {
            rows.iter().flatten().map(|x| x.to_bits()).collect()
        };
        // SAFETY: AVX2 is present (asserted above).
        unsafe {
            assert_eq!(
                bits(&qk_block_avx::<1>([q(0)], &kt)),
                bits(&qk_block::<1>([q(0)], &kt))
            );
            assert_eq!(
                bits(&qk_block_avx::<3>([q(0), q(1), q(2)], &kt)),
                bits(&qk_block::<3>([q(0), q(1), q(2)], &kt))
            );
            assert_eq!(
                bits(&qk_block_avx::<4>([q(0), q(1), q(2), q(3)], &kt)),
                bits(&qk_block::<4>([q(0), q(1), q(2), q(3)], &kt))
            );
        }
        // 80 lanes: two 32-lane chunks and a remainder; 11 keys, stride 96.
        let (n, keys, stride) = (80, 11, 96);
        let values: Vec<f32> = (0..keys * stride).map(|_| rnd()).collect();
        let w: Vec<f32> = (0..keys).map(|_| rnd()).collect();
        let start: Vec<f32> = (0..n).map(|_| rnd()).collect();
        let (mut plain, mut avx) = (start.clone(), start);
        add_values::<false>(&mut plain, &w, &values, stride);
        // SAFETY: AVX2 is present.
        unsafe { add_values_avx(&mut avx, &w, &values, stride) };
        let b = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(b(&avx), b(&plain));
    }

    /// The softmax exponential stays within 2 ulp of libm's over the
    /// range softmax feeds it, and is 0 (not garbage) far below it.
    #[test]
    fn exp_neg_is_within_two_ulp_of_libm() {
        let mut worst = 0u32;
        for i in 0..=870_000 {
            let x = -(i as f32) * 1e-4;
            let (a, b) = (exp_neg(x), x.exp());
            worst = worst.max(a.to_bits().abs_diff(b.to_bits()));
        }
        assert!(worst <= 2, "{worst} ulp");
        assert_eq!(exp_neg(0.0), 1.0);
        assert!(exp_neg(-1e30) >= 0.0 && exp_neg(-1e30) < 1e-37);
        assert!(exp_neg(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn tiles_are_runs_of_one_sequence_at_consecutive_positions() {
        let mut tokens = vec![slot(0, 7), slot(1, 3)];
        tokens.extend((0..20).map(|p| slot(2, p)));
        tokens.push(slot(3, 9));
        let t = tiles(&tokens);
        let shape: Vec<(usize, usize)> = t.iter().map(|t| (t.first, t.len)).collect();
        assert_eq!(shape, vec![(0, 1), (1, 1), (2, 16), (18, 4), (22, 1)]);
        assert_eq!(t[3].cost, 17 + 18 + 19 + 20);
    }
}
