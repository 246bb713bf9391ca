//! Dot products and scaled additions against f16 vectors (the KV cache's
//! element type), converting in registers rather than through a buffer.
//! One [`F16Kernels`] is resolved per attention call for the path
//! [`detect_isa`](super::detect_isa) picked.

use half::f16;

use super::Isa;

/// `a · b` with `b` in f16.
pub type DotF16 = fn(&[f32], &[f16]) -> f32;
/// `y += w * x` with `x` in f16.
pub type AxpyF16 = fn(&mut [f32], f32, &[f16]);

/// The f16 vector kernels of one CPU path.
#[derive(Clone, Copy)]
pub struct F16Kernels {
    /// `a · b`, `b` in f16 (lengths must match).
    pub dot: DotF16,
    /// `y += w * x`, `x` in f16 (lengths must match).
    pub axpy: AxpyF16,
}

impl F16Kernels {
    /// The kernels of the process's CPU path.
    pub fn detect() -> Self {
        Self::for_isa(super::detect_isa())
    }

    pub(crate) fn for_isa(isa: Isa) -> Self {
        match isa {
            Isa::Scalar => Self {
                dot: dot_scalar,
                axpy: axpy_scalar,
            },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx512 | Isa::Avx512Vnni => Self {
                dot: avx2::dot,
                axpy: avx2::axpy,
            },
            #[cfg(not(target_arch = "x86_64"))]
            _ => Self {
                dot: dot_scalar,
                axpy: axpy_scalar,
            },
        }
    }
}

fn dot_scalar(a: &[f32], b: &[f16]) -> f32 {
    let mut acc = [0.0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y.to_f32())
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i].to_f32();
        }
    }
    acc.iter().sum::<f32>() + tail
}

fn axpy_scalar(y: &mut [f32], w: f32, x: &[f16]) {
    for (o, v) in y.iter_mut().zip(x) {
        *o += w * v.to_f32();
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use half::f16;

    /// Safe entry: only selected when the CPU has AVX2, FMA and F16C.
    pub(super) fn dot(a: &[f32], b: &[f16]) -> f32 {
        assert_eq!(a.len(), b.len());
        // SAFETY: `F16Kernels::for_isa` picks this only on CPUs with
        // AVX2 + FMA + F16C; lengths are checked above.
        unsafe { dot_impl(a, b) }
    }

    /// Safe entry: only selected when the CPU has AVX2, FMA and F16C.
    pub(super) fn axpy(y: &mut [f32], w: f32, x: &[f16]) {
        assert_eq!(y.len(), x.len());
        // SAFETY: as for `dot`.
        unsafe { axpy_impl(y, w, x) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_impl(a: &[f32], b: &[f16]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr() as *const u16);
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            let b0 = _mm256_cvtph_ps(_mm_loadu_si128(pb.add(i) as *const __m128i));
            let b1 = _mm256_cvtph_ps(_mm_loadu_si128(pb.add(i + 8) as *const __m128i));
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), b0, acc0);
            acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i + 8)), b1, acc1);
            i += 16;
        }
        if i + 8 <= n {
            let b0 = _mm256_cvtph_ps(_mm_loadu_si128(pb.add(i) as *const __m128i));
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), b0, acc0);
            i += 8;
        }
        let acc = _mm256_add_ps(acc0, acc1);
        let hi = _mm256_extractf128_ps(acc, 1);
        let s = _mm_add_ps(_mm256_castps256_ps128(acc), hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        let mut total = _mm_cvtss_f32(s);
        while i < n {
            total += *pa.add(i) * f16::from_bits(*pb.add(i)).to_f32();
            i += 1;
        }
        total
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn axpy_impl(y: &mut [f32], w: f32, x: &[f16]) {
        let n = y.len();
        let (py, px) = (y.as_mut_ptr(), x.as_ptr() as *const u16);
        let wv = _mm256_set1_ps(w);
        let mut i = 0;
        while i + 8 <= n {
            let xv = _mm256_cvtph_ps(_mm_loadu_si128(px.add(i) as *const __m128i));
            let yv = _mm256_loadu_ps(py.add(i));
            _mm256_storeu_ps(py.add(i), _mm256_fmadd_ps(wv, xv, yv));
            i += 8;
        }
        while i < n {
            *py.add(i) += w * f16::from_bits(*px.add(i)).to_f32();
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::CpuPath;

    fn data(n: usize) -> (Vec<f32>, Vec<f16>) {
        let a = (0..n).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.25).collect();
        let b = (0..n)
            .map(|i| f16::from_f32(((i * 5 % 11) as f32 - 5.0) * 0.125))
            .collect();
        (a, b)
    }

    #[test]
    fn every_path_agrees_with_plain_arithmetic() {
        for path in crate::kernels::available_paths() {
            let k = F16Kernels::for_isa(path.isa());
            for n in [0, 1, 7, 8, 9, 16, 31, 64, 100] {
                let (a, b) = data(n);
                let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y.to_f32()).sum();
                let got = (k.dot)(&a, &b);
                assert!(
                    (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "{path:?} n={n}: {got} vs {want}"
                );
                let mut y = a.clone();
                (k.axpy)(&mut y, 0.5, &b);
                for i in 0..n {
                    assert!(
                        (y[i] - (a[i] + 0.5 * b[i].to_f32())).abs() < 1e-6,
                        "{path:?} n={n} i={i}"
                    );
                }
            }
        }
        assert!(CpuPath::Scalar.is_supported());
    }
}
