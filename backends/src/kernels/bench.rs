//! A small self-contained kernel benchmark (no criterion): times [`matmul`]
//! (activation quantization included) at the default model's shapes.
//!
//! Each case is measured twice: *streamed*, cycling through enough copies of
//! the matrix to touch [`STREAM_BYTES`] of weights, so batch-1 numbers
//! reflect streaming weights from memory as decode does (the whole model is
//! ~98 MB); and *hot*, one matrix that stays in cache (kernel throughput).

use std::time::{Duration, Instant};

use serde::Serialize;

use super::formats::{QuantMatrix, WeightType};
use super::matmul::matmul_on;
use super::pool::ComputePool;
use super::{detect_path, CpuPath};

/// Bytes of weights each measurement cycles through.
const STREAM_BYTES: usize = 128 << 20;
/// Time budget per measurement (after warm-up).
const BUDGET: Duration = Duration::from_millis(150);

/// One measurement.
#[derive(Debug, Clone, Serialize)]
pub struct KernelReport {
    /// Weight type (`q4_1`, ...).
    pub dtype: String,
    /// CPU path (`avx512`, ...).
    pub path: String,
    /// Matrix rows.
    pub out_dim: usize,
    /// Matrix columns (`k`).
    pub in_dim: usize,
    /// Activation rows per call.
    pub batch: usize,
    /// Pool threads.
    pub threads: usize,
    /// `2 · out · in · batch` per second, in 1e9.
    pub gflops: f64,
    /// ggml-sized weight bytes per second, in 1e9.
    pub weight_gb_per_s: f64,
    /// Mean wall time of one call.
    pub micros_per_call: f64,
    /// Weight bytes cycled through (MB): ≥ 128 when streamed, one matrix
    /// when hot.
    pub working_set_mb: f64,
}

/// The benchmarked (type, out_dim, in_dim) cases: the SmolLM2-135M shapes
/// (q/o 576x576, gate/up 1536x576, down 576x1536, Q8_0 output head
/// 49152x576); K-quants need `k % 256 == 0`, so 576-wide inputs become 512.
pub fn bench_cases() -> Vec<(WeightType, usize, usize)> {
    let mut v = Vec::new();
    for t in [
        WeightType::Q4_0,
        WeightType::Q4_1,
        WeightType::Q5_1,
        WeightType::Q8_0,
    ] {
        v.extend([(t, 576, 576), (t, 1536, 576), (t, 576, 1536)]);
    }
    v.push((WeightType::Q8_0, 49152, 576));
    for t in [WeightType::Q4K, WeightType::Q5K, WeightType::Q6K] {
        v.extend([(t, 576, 512), (t, 1536, 512), (t, 576, 1536)]);
    }
    v
}

/// Benchmarks every case of [`bench_cases`] on [`detect_path`] with a pool of
/// `threads`, at each batch size, for up to `iters` calls each (fewer when a
/// measurement exceeds its time budget). Each case and batch yields two
/// reports: streamed (working set ≥ 128 MB) then hot (one matrix).
pub fn bench_kernels(threads: usize, batch_sizes: &[usize], iters: usize) -> Vec<KernelReport> {
    bench_kernels_on(detect_path(), threads, batch_sizes, iters)
}

/// [`bench_kernels`] on a given path (which must be supported here; an
/// unsupported path yields no reports).
pub fn bench_kernels_on(
    path: CpuPath,
    threads: usize,
    batch_sizes: &[usize],
    iters: usize,
) -> Vec<KernelReport> {
    let mut reports = Vec::new();
    if !path.is_supported() {
        return reports;
    }
    let pool = ComputePool::new(threads);
    for (i, (t, out, k)) in bench_cases().into_iter().enumerate() {
        let raw = random_ggml(t, out, k, 1 + i as u64);
        let Ok(first) = QuantMatrix::from_ggml(t, out, k, &raw) else {
            continue;
        };
        let copies = (STREAM_BYTES / first.ggml_bytes().max(1)).max(1);
        let mut ring = vec![first];
        for _ in 1..copies {
            if let Ok(m) = QuantMatrix::from_ggml(t, out, k, &raw) {
                ring.push(m);
            }
        }
        for &batch in batch_sizes {
            let x: Vec<f32> = (0..batch * k)
                .map(|j| ((j * 7919) % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            let mut y = vec![0.0f32; batch * out];
            for ring in [&ring[..], &ring[..1]] {
                for m in ring.iter().take(2) {
                    matmul_on(path, &pool, m, &x, batch, &mut y);
                }
                let start = Instant::now();
                let mut calls = 0usize;
                while calls < iters.max(1) {
                    matmul_on(path, &pool, &ring[calls % ring.len()], &x, batch, &mut y);
                    calls += 1;
                    if start.elapsed() > BUDGET {
                        break;
                    }
                }
                let secs = start.elapsed().as_secs_f64() / calls as f64;
                std::hint::black_box(&y);
                let bytes = ring[0].ggml_bytes();
                reports.push(KernelReport {
                    dtype: t.name().to_string(),
                    path: path.name().to_string(),
                    out_dim: out,
                    in_dim: k,
                    batch,
                    threads: pool.threads(),
                    gflops: 2.0 * (out * k * batch) as f64 / secs / 1e9,
                    weight_gb_per_s: bytes as f64 / secs / 1e9,
                    micros_per_call: secs * 1e6,
                    working_set_mb: (bytes * ring.len()) as f64 / 1e6,
                });
                if ring.len() == 1 {
                    break; // a single copy is already the hot case
                }
            }
        }
    }
    reports
}

/// Random but valid ggml data for an `out x k` matrix of type `t`: random
/// bytes everywhere (every code and 6-bit scale pattern) with the f16 scale
/// fields set to small finite values.
pub(crate) fn random_ggml(t: WeightType, out: usize, k: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let n = out * k / t.block_elems() * t.block_bytes();
    let mut v: Vec<u8> = (0..n).map(|_| next() as u8).collect();
    for b in v.chunks_exact_mut(t.block_bytes()) {
        let mut f16_at = |b: &mut [u8], off: usize, lo: f32, hi: f32| {
            let u = (next() >> 11) as f32 / (1u64 << 53) as f32;
            b[off..off + 2].copy_from_slice(&half::f16::from_f32(lo + (hi - lo) * u).to_le_bytes());
        };
        match t {
            WeightType::Q4_0 | WeightType::Q8_0 => f16_at(b, 0, 1e-3, 2e-2),
            WeightType::Q4_1 | WeightType::Q5_1 => {
                f16_at(b, 0, 1e-3, 2e-2);
                f16_at(b, 2, -0.15, 0.0);
            }
            WeightType::Q4K | WeightType::Q5K => {
                f16_at(b, 0, 1e-4, 1e-3);
                f16_at(b, 2, 1e-4, 1e-3);
            }
            WeightType::Q6K => f16_at(b, 208, 1e-4, 1e-3),
            WeightType::F32 => {
                let u = (next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                b.copy_from_slice(&u.to_le_bytes());
            }
        }
    }
    v
}
