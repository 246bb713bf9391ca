//! Activation quantization: each row of `x` is quantized once per matmul to
//! signed 8-bit values (-127..=127) with one f32 scale per block.
//!
//! * Q4_0 / Q4_1 / Q5_1 / Q8_0 weights use 32-wide blocks (like ggml's Q8_0/Q8_1):
//!   scale `d`, the integer sum of the 32 values, and `d * sum` (the min term of
//!   Q4_1 and Q5_1).
//! * Q4_K / Q5_K / Q6_K weights use 256-wide super-blocks (like ggml's Q8_K): scale
//!   `d`, the integer sums of each 16 values, and the sums of each 32 values
//!   packed as i16 pairs for `vpmaddwd`.
//! * F32 weights keep the activations as they are.
//!
//! The SIMD and scalar quantizers produce identical bytes (same division,
//! same multiply, round-half-to-even), so the CPU path never changes which
//! integers the kernels see.

use super::formats::{WeightType, QK, QK_K};
use super::Isa;

/// How a [`QuantizedActivations`] is laid out; which weight types it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// 32-wide Q8 blocks (Q4_0, Q4_1, Q5_1, Q8_0 weights).
    Block32,
    /// 256-wide Q8 super-blocks (Q4_K, Q5_K, Q6_K weights).
    Super256,
    /// Unquantized f32 (F32 weights).
    Float,
}

impl Family {
    /// The activation family a weight type multiplies against.
    pub(crate) fn of(t: WeightType) -> Self {
        match t {
            WeightType::Q4_0 | WeightType::Q4_1 | WeightType::Q5_1 | WeightType::Q8_0 => {
                Self::Block32
            }
            WeightType::Q4K | WeightType::Q5K | WeightType::Q6K => Self::Super256,
            WeightType::F32 => Self::Float,
        }
    }
}

/// Activations (`rows` rows of `in_dim` values) quantized for one weight
/// family, reusable across every matrix of that family with the same input
/// (q/k/v, gate/up). Buffers are kept between calls to avoid reallocating.
#[derive(Debug, Clone)]
pub struct QuantizedActivations {
    pub(crate) family: Family,
    pub(crate) rows: usize,
    pub(crate) in_dim: usize,
    /// `rows * in_dim` quantized values, row-major.
    pub(crate) qs: Vec<i8>,
    /// One scale per block per row.
    pub(crate) d: Vec<f32>,
    /// Block32: the integer sum of each block. Super256: the sum of each 16
    /// values (16 per super-block).
    pub(crate) sums: Vec<i32>,
    /// Block32: `d * sum` per block.
    pub(crate) ds: Vec<f32>,
    /// Super256: per super-block, 4 words each holding the i16 sums of two
    /// consecutive 32-value sub-blocks (low half first).
    pub(crate) pairs: Vec<i32>,
    /// Float: the activations themselves.
    pub(crate) xf: Vec<f32>,
}

impl Default for QuantizedActivations {
    fn default() -> Self {
        Self::new()
    }
}

impl QuantizedActivations {
    /// Empty buffers; fill with [`quantize_activations`].
    pub fn new() -> Self {
        Self {
            family: Family::Block32,
            rows: 0,
            in_dim: 0,
            qs: Vec::new(),
            d: Vec::new(),
            sums: Vec::new(),
            ds: Vec::new(),
            pairs: Vec::new(),
            xf: Vec::new(),
        }
    }

    /// Rows held.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Values per row.
    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// Whether these activations can feed a matrix of type `t`.
    pub fn serves(&self, t: WeightType) -> bool {
        self.family == Family::of(t)
    }

    /// Writes row `row` back as f32 (`q * d`), i.e. exactly the values the
    /// kernels multiply; for tests and diagnostics.
    ///
    /// # Panics
    /// If `row >= rows` or `out` is shorter than `in_dim`.
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        assert!(row < self.rows, "row {row} out of {}", self.rows);
        let out = &mut out[..self.in_dim];
        let block = match self.family {
            Family::Float => {
                out.copy_from_slice(&self.xf[row * self.in_dim..][..self.in_dim]);
                return;
            }
            Family::Block32 => QK,
            Family::Super256 => QK_K,
        };
        let nb = self.in_dim / block;
        let qs = &self.qs[row * self.in_dim..][..self.in_dim];
        for (b, (o, q)) in out
            .chunks_exact_mut(block)
            .zip(qs.chunks_exact(block))
            .enumerate()
        {
            let d = self.d[row * nb + b];
            for (o, &q) in o.iter_mut().zip(q) {
                *o = f32::from(q) * d;
            }
        }
    }
}

/// Raw pointers into a [`QuantizedActivations`] for the SIMD kernels.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[derive(Clone, Copy)]
pub(crate) struct ActView {
    /// Quantized values, `in_dim` per row.
    pub qs: *const i8,
    /// Scales, `nb` per row.
    pub d: *const f32,
    /// Block sums (Block32: `nb` per row; Super256: `16 nb` per row).
    pub sums: *const i32,
    /// Block32: `d * sum`, `nb` per row.
    pub ds: *const f32,
    /// Super256: packed 32-sums, `4 nb` per row.
    pub pairs: *const i32,
    /// Float: the values, `in_dim` per row.
    pub xf: *const f32,
    /// Values per row.
    pub in_dim: usize,
    /// Blocks per row (32- or 256-wide; unused for Float).
    pub nb: usize,
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
impl ActView {
    /// Views `a`; valid while `a` is borrowed and not modified.
    pub(crate) fn new(a: &QuantizedActivations) -> Self {
        let block = match a.family {
            Family::Block32 => QK,
            Family::Super256 => QK_K,
            Family::Float => 1,
        };
        Self {
            qs: a.qs.as_ptr(),
            d: a.d.as_ptr(),
            sums: a.sums.as_ptr(),
            ds: a.ds.as_ptr(),
            pairs: a.pairs.as_ptr(),
            xf: a.xf.as_ptr(),
            in_dim: a.in_dim,
            nb: a.in_dim / block,
        }
    }
}

/// Quantizes `rows` rows of `x` (`in_dim` values each, row-major) for
/// multiplication by matrices of type `for_type` (any type of the same family
/// can then use them), reusing `into`'s buffers.
///
/// # Panics
/// If `x` is shorter than `rows * in_dim`, or `in_dim` is not a multiple of the
/// block size (32 for Q4_0/Q4_1/Q8_0, 256 for Q4_K/Q6_K).
pub fn quantize_activations(
    x: &[f32],
    rows: usize,
    in_dim: usize,
    for_type: WeightType,
    into: &mut QuantizedActivations,
) {
    quantize_with(super::detect_isa(), x, rows, in_dim, for_type, into);
}

/// [`quantize_activations`] on a given instruction set.
pub(crate) fn quantize_with(
    isa: Isa,
    x: &[f32],
    rows: usize,
    in_dim: usize,
    for_type: WeightType,
    into: &mut QuantizedActivations,
) {
    let family = Family::of(for_type);
    assert!(
        x.len() >= rows * in_dim,
        "x holds {} values, need {rows} x {in_dim}",
        x.len()
    );
    let x = &x[..rows * in_dim];
    into.family = family;
    into.rows = rows;
    into.in_dim = in_dim;
    let block = match family {
        Family::Float => {
            into.xf.clear();
            into.xf.extend_from_slice(x);
            return;
        }
        Family::Block32 => QK,
        Family::Super256 => QK_K,
    };
    assert!(
        in_dim.is_multiple_of(block),
        "in_dim {in_dim} is not a multiple of the {block}-wide activation block"
    );
    let nb = rows * in_dim / block;
    into.qs.resize(rows * in_dim, 0);
    into.d.resize(nb, 0.0);
    match family {
        Family::Block32 => {
            into.sums.resize(nb, 0);
            into.ds.resize(nb, 0.0);
            for (b, (xb, qb)) in x
                .chunks_exact(QK)
                .zip(into.qs.chunks_exact_mut(QK))
                .enumerate()
            {
                let (d, sum) = quantize_block(isa, xb, qb);
                into.d[b] = d;
                into.sums[b] = sum;
                into.ds[b] = d * sum as f32;
            }
        }
        Family::Super256 => {
            into.sums.resize(nb * 16, 0);
            into.pairs.resize(nb * 4, 0);
            for (b, (xb, qb)) in x
                .chunks_exact(QK_K)
                .zip(into.qs.chunks_exact_mut(QK_K))
                .enumerate()
            {
                let (d, _) = quantize_block(isa, xb, qb);
                into.d[b] = d;
                let sums = &mut into.sums[b * 16..][..16];
                for (s, q) in sums.iter_mut().zip(qb.chunks_exact(16)) {
                    *s = q.iter().map(|&v| i32::from(v)).sum();
                }
                for p in 0..4 {
                    let lo = sums[4 * p] + sums[4 * p + 1];
                    let hi = sums[4 * p + 2] + sums[4 * p + 3];
                    // |lo|, |hi| <= 32 * 127, so both fit an i16.
                    into.pairs[b * 4 + p] =
                        i32::from(lo as i16 as u16) | (i32::from(hi as i16 as u16) << 16);
                }
            }
        }
        Family::Float => unreachable!(),
    }
}

/// Quantizes one block (any multiple of 8 values) to `q`, returning the
/// scale and the integer sum.
#[inline]
fn quantize_block(isa: Isa, x: &[f32], q: &mut [i8]) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // SAFETY: every non-scalar `Isa` is only constructed after runtime
        // detection of avx2 + fma + f16c (see `Isa::supported`).
        return unsafe { quantize_block_avx2(x, q) };
    }
    let _ = isa;
    quantize_block_scalar(x, q)
}

/// Portable block quantizer; the reference the SIMD version must match.
pub(crate) fn quantize_block_scalar(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0i32;
    for (q, &v) in q.iter_mut().zip(x) {
        let r = ((v * id).round_ties_even() as i32).clamp(-127, 127);
        *q = r as i8;
        sum += r;
    }
    (d, sum)
}

/// AVX2 block quantizer, bit-identical to [`quantize_block_scalar`].
///
/// # Safety
/// The CPU must support AVX2; `x.len() == q.len()` must be a multiple of 8.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_block_avx2(x: &[f32], q: &mut [i8]) -> (f32, i32) {
    use std::arch::x86_64::*;
    debug_assert!(x.len() == q.len() && x.len().is_multiple_of(8));
    let n = x.len() / 8;
    let px = x.as_ptr();
    let sign = _mm256_set1_ps(-0.0);
    let mut vmax = _mm256_setzero_ps();
    for i in 0..n {
        let v = _mm256_loadu_ps(px.add(8 * i));
        vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(sign, v));
    }
    let m4 = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
    let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    let m1 = _mm_max_ss(m2, _mm_shuffle_ps(m2, m2, 1));
    let amax = _mm_cvtss_f32(m1);
    let d = amax / 127.0;
    let id = if amax != 0.0 { 1.0 / d } else { 0.0 };
    let vid = _mm256_set1_ps(id);
    let (lo, hi) = (_mm256_set1_epi32(-127), _mm256_set1_epi32(127));
    let mut vsum = _mm256_setzero_si256();
    let pq = q.as_mut_ptr();
    for i in 0..n {
        let v = _mm256_mul_ps(_mm256_loadu_ps(px.add(8 * i)), vid);
        // Default MXCSR rounding is round-half-to-even, like `round_ties_even`.
        let r = _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(v), lo), hi);
        vsum = _mm256_add_epi32(vsum, r);
        let w = _mm256_packs_epi32(r, r); // [r0..3 r0..3 | r4..7 r4..7] as i16
        let b = _mm256_packs_epi16(w, w); // bytes 0..4 and 16..20 hold the values
        let lo4 = _mm256_cvtsi256_si32(b) as u32;
        let hi4 = _mm256_extract_epi32(b, 4) as u32;
        let bytes = (u64::from(hi4) << 32) | u64::from(lo4);
        std::ptr::write_unaligned(pq.add(8 * i).cast::<u64>(), bytes.to_le());
    }
    let s4 = _mm_add_epi32(
        _mm256_castsi256_si128(vsum),
        _mm256_extracti128_si256(vsum, 1),
    );
    let s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
    let s1 = _mm_add_epi32(s2, _mm_shuffle_epi32(s2, 1));
    (d, _mm_cvtsi128_si32(s1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    #[test]
    fn simd_quantizer_matches_scalar_bit_for_bit() {
        let mut seed = 7;
        for scale in [1e-3f32, 1.0, 37.5, 1e4] {
            let mut x: Vec<f32> = (0..QK_K).map(|_| lcg(&mut seed) * scale).collect();
            x[3] = 0.5 * scale; // exact ties after scaling are rare; add some structure
            x[10] = 0.0;
            for block in [QK, QK_K] {
                for xb in x.chunks_exact(block) {
                    let mut a = vec![0i8; block];
                    let mut b = vec![0i8; block];
                    let ra = quantize_block_scalar(xb, &mut a);
                    let rb = quantize_block(crate::kernels::detect_isa(), xb, &mut b);
                    assert_eq!(ra.0.to_bits(), rb.0.to_bits());
                    assert_eq!(ra.1, rb.1);
                    assert_eq!(a, b);
                }
            }
        }
        let zeros = [0.0f32; QK];
        let mut q = [1i8; QK];
        assert_eq!(
            quantize_block(crate::kernels::detect_isa(), &zeros, &mut q),
            (0.0, 0)
        );
        assert_eq!(q, [0; QK]);
    }

    #[test]
    fn super_block_sums_and_pairs() {
        let mut seed = 3;
        let x: Vec<f32> = (0..2 * QK_K).map(|_| lcg(&mut seed)).collect();
        let mut qa = QuantizedActivations::new();
        quantize_with(Isa::Scalar, &x, 1, 2 * QK_K, WeightType::Q4K, &mut qa);
        for b in 0..2 {
            for s in 0..16 {
                let want: i32 = qa.qs[b * QK_K + s * 16..][..16]
                    .iter()
                    .map(|&v| i32::from(v))
                    .sum();
                assert_eq!(qa.sums[b * 16 + s], want);
            }
            for p in 0..4 {
                let w = qa.pairs[b * 4 + p];
                let lo = i32::from(w as i16);
                let hi = w >> 16;
                assert_eq!(lo, qa.sums[b * 16 + 4 * p] + qa.sums[b * 16 + 4 * p + 1]);
                assert_eq!(
                    hi,
                    qa.sums[b * 16 + 4 * p + 2] + qa.sums[b * 16 + 4 * p + 3]
                );
            }
        }
        let mut back = vec![0.0; 2 * QK_K];
        qa.dequantize_row(0, &mut back);
        for (a, b) in x.iter().zip(&back) {
            assert!((a - b).abs() <= qa.d[0].max(qa.d[1]) * 0.5 + 1e-7);
        }
    }
}
