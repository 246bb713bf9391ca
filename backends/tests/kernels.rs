//! Integration tests for `backends::kernels` through the public API: every
//! weight type on every CPU path available here against candle's
//! dequantization, the real SmolLM2 tensors, thread and batch invariance.
//!
//! The model tests read `INFERNO_TEST_MODEL` or
//! `~/.inferno/models/SmolLM2-135M-Instruct.Q4_1.gguf` and fail (not skip)
//! when it is missing.
//!
//! `cargo test -p inferno-backends --release --test kernels -- --ignored --nocapture bench`
//! prints the kernel benchmark table.

use backends::kernels::{
    available_paths, matmul, matmul_on, matmul_q_on, quantize_activations, resolve_path,
    ComputePool, CpuPath, QuantMatrix, QuantizedActivations, WeightType,
};
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

fn ggml(t: WeightType) -> GgmlDType {
    match t {
        WeightType::Q4_0 => GgmlDType::Q4_0,
        WeightType::Q4_1 => GgmlDType::Q4_1,
        WeightType::Q5_1 => GgmlDType::Q5_1,
        WeightType::Q8_0 => GgmlDType::Q8_0,
        WeightType::Q4K => GgmlDType::Q4K,
        WeightType::Q5K => GgmlDType::Q5K,
        WeightType::Q6K => GgmlDType::Q6K,
        WeightType::F32 => GgmlDType::F32,
    }
}

/// Random normal-ish weights quantized by candle, with candle's
/// dequantization of them.
fn random_qtensor(t: WeightType, out: usize, k: usize, seed: u64) -> (QTensor, Vec<f32>) {
    let mut r = Lcg(seed);
    let v: Vec<f32> = (0..out * k)
        .map(|i| (r.next() + r.next() + r.next()) * 0.05 + 0.01 * ((i / k) % 5) as f32)
        .collect();
    let src = Tensor::from_vec(v, (out, k), &Device::Cpu).unwrap();
    let qt = QTensor::quantize(&src, ggml(t)).unwrap();
    let deq = dequantize(&qt);
    (qt, deq)
}

fn dequantize(qt: &QTensor) -> Vec<f32> {
    qt.dequantize(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

/// Activations like a transformer's: mostly small, a few larger channels.
fn activations(rows: usize, k: usize, seed: u64) -> Vec<f32> {
    let mut r = Lcg(seed);
    (0..rows * k)
        .map(|i| r.next() * if i % 97 == 0 { 8.0 } else { 1.0 })
        .collect()
}

/// `x · Wᵀ` in f64.
fn reference(w: &[f32], out: usize, k: usize, x: &[f32], rows: usize) -> Vec<f64> {
    let mut y = vec![0.0; rows * out];
    for r in 0..rows {
        let xr = &x[r * k..(r + 1) * k];
        for c in 0..out {
            y[r * out + c] = w[c * k..(c + 1) * k]
                .iter()
                .zip(xr)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
        }
    }
    y
}

/// Largest per-row `‖y - ref‖₂ / ‖ref‖₂`.
fn rel_l2(y: &[f32], reference: &[f64], out: usize) -> f64 {
    y.chunks(out)
        .zip(reference.chunks(out))
        .map(|(y, r)| {
            let num: f64 = y
                .iter()
                .zip(r)
                .map(|(&a, &b)| (f64::from(a) - b).powi(2))
                .sum();
            let den: f64 = r.iter().map(|b| b * b).sum();
            (num / den.max(1e-30)).sqrt()
        })
        .fold(0.0, f64::max)
}

/// Error bound relative to the output row's L2 norm. Activations are
/// quantized to 8 bits per 32 values (per 256 for K-quants); with the
/// outlier channels of [`activations`] that costs 0.6-1.5 % (2-3 % for
/// 256-wide blocks) of the row norm, the same as stock candle (checked
/// separately by [`check_error`]); F32 weights only see f32 rounding.
fn bound(t: WeightType) -> f64 {
    match t {
        WeightType::F32 => 1e-5,
        WeightType::Q4K | WeightType::Q5K | WeightType::Q6K => 4e-2,
        _ => 2e-2,
    }
}

/// Asserts that `y` is within [`bound`] of the exact result and no worse than
/// stock candle's quantized matmul (by more than 5 %) on the same inputs.
fn check_error(
    what: &str,
    t: WeightType,
    qt: &QTensor,
    x: &[f32],
    y: &[f32],
    y_ref: &[f64],
    out: usize,
) {
    let batch = y.len() / out;
    let e = rel_l2(y, &y_ref[..batch * out], out);
    let ec = rel_l2(&candle_matmul(qt, x, batch), &y_ref[..batch * out], out);
    if std::env::var("KERNEL_TEST_VERBOSE").is_ok() {
        eprintln!("{what} batch {batch}: ours {e:.5} candle {ec:.5}");
    }
    assert!(e < bound(t), "{what} batch {batch}: rel error {e}");
    assert!(
        e <= 1.05 * ec + 1e-4,
        "{what} batch {batch}: rel error {e}, candle {ec}"
    );
}

/// Stock candle's output for the same inputs (its CPU matmul also quantizes
/// the activations to 8 bits), as a yardstick for the error.
fn candle_matmul(qt: &QTensor, x: &[f32], rows: usize) -> Vec<f32> {
    let (_, k) = qt.shape().dims2().unwrap();
    let copy = QTensor::new(
        candle_core::quantized::QStorage::from_data(qt.data().unwrap(), &Device::Cpu, qt.dtype())
            .unwrap(),
        qt.shape().clone(),
    )
    .unwrap();
    let mm = candle_core::quantized::QMatMul::from_qtensor(copy).unwrap();
    let xt = Tensor::from_slice(&x[..rows * k], (rows, k), &Device::Cpu).unwrap();
    candle_core::Module::forward(&mm, &xt)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

#[test]
fn every_type_and_path_matches_candle_reference() {
    let types = [
        WeightType::Q4_0,
        WeightType::Q4_1,
        WeightType::Q5_1,
        WeightType::Q8_0,
        WeightType::Q4K,
        WeightType::Q5K,
        WeightType::Q6K,
        WeightType::F32,
    ];
    let out = 200; // not a multiple of 16
    let pool = ComputePool::new(1);
    for t in types {
        let ks: &[usize] = match t {
            WeightType::Q4K | WeightType::Q5K | WeightType::Q6K => &[256, 512, 1536],
            _ => &[576, 1536],
        };
        for &k in ks {
            let (qt, deq) = random_qtensor(t, out, k, k as u64);
            let m = QuantMatrix::from_qtensor(&qt).unwrap();
            assert_eq!((m.out_dim(), m.in_dim(), m.dtype()), (out, k, t));
            let x = activations(17, k, 3);
            let y_ref = reference(&deq, out, k, &x, 17);
            let mut per_path: Vec<(CpuPath, Vec<f32>)> = Vec::new();
            for path in available_paths() {
                for batch in [1, 3, 8, 17] {
                    let mut y = vec![f32::NAN; batch * out];
                    matmul_on(path, &pool, &m, &x, batch, &mut y);
                    check_error(&format!("{t} k={k} {path}"), t, &qt, &x, &y, &y_ref, out);
                    if batch == 17 {
                        per_path.push((path, y));
                    }
                }
            }
            // Paths agree closely with each other (same integers, different
            // float rounding).
            let (_, base) = &per_path[0];
            for (path, y) in &per_path[1..] {
                let e = rel_l2(
                    y,
                    &base.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
                    out,
                );
                assert!(e < 1e-5, "{t} k={k}: {path} vs scalar differ by {e}");
            }
        }
    }
}

#[test]
fn threads_and_batch_position_do_not_change_results() {
    let (out, k, rows) = (1536, 576, 9);
    for t in [
        WeightType::Q4_1,
        WeightType::Q5_1,
        WeightType::Q8_0,
        WeightType::Q4_0,
    ] {
        let (qt, _) = random_qtensor(t, out, k, 77);
        let m = QuantMatrix::from_qtensor(&qt).unwrap();
        let x = activations(rows, k, 5);
        for path in available_paths() {
            let mut base = vec![0.0; rows * out];
            matmul_on(path, &ComputePool::new(1), &m, &x, rows, &mut base);
            for threads in [2, 3] {
                let mut y = vec![0.0; rows * out];
                matmul_on(path, &ComputePool::new(threads), &m, &x, rows, &mut y);
                assert_eq!(bits(&y), bits(&base), "{t} {path}: {threads} threads");
            }
            let pool = ComputePool::new(2);
            for r in 0..rows {
                let mut one = vec![0.0; out];
                matmul_on(path, &pool, &m, &x[r * k..(r + 1) * k], 1, &mut one);
                assert_eq!(
                    bits(&one),
                    bits(&base[r * out..(r + 1) * out]),
                    "{t} {path}: row {r} alone"
                );
            }
        }
    }
}

#[test]
fn pre_quantized_activations_match_plain_matmul() {
    let k = 576;
    let x = activations(4, k, 8);
    let pool = ComputePool::new(2);
    let mut xq = QuantizedActivations::new();
    quantize_activations(&x, 4, k, WeightType::Q4_1, &mut xq);
    assert_eq!((xq.rows(), xq.in_dim()), (4, k));
    for path in available_paths() {
        for (t, out) in [
            (WeightType::Q4_1, 576),
            (WeightType::Q4_1, 192),
            (WeightType::Q8_0, 64),
        ] {
            let (qt, _) = random_qtensor(t, out, k, out as u64);
            let m = QuantMatrix::from_qtensor(&qt).unwrap();
            let mut a = vec![0.0; 4 * out];
            let mut b = vec![0.0; 4 * out];
            matmul_q_on(path, &pool, &m, &xq, &mut a);
            matmul_on(path, &pool, &m, &x, 4, &mut b);
            assert_eq!(bits(&a), bits(&b), "{t} {path}");
        }
    }
    // The default entry points use the detected path.
    let (qt, _) = random_qtensor(WeightType::Q4_1, 64, k, 1);
    let m = QuantMatrix::from_qtensor(&qt).unwrap();
    let mut y = vec![0.0; 4 * 64];
    matmul(&pool, &m, &x, 4, &mut y);
    assert!(y.iter().all(|v| v.is_finite()));
}

#[test]
fn inferno_kernel_override_is_parsed_without_touching_env() {
    let only_scalar = |p: CpuPath| p == CpuPath::Scalar;
    assert_eq!(
        resolve_path(Some("scalar"), CpuPath::Avx512, |_| true).0,
        CpuPath::Scalar
    );
    assert_eq!(
        resolve_path(Some("avx2"), CpuPath::Avx512, |_| true).0,
        CpuPath::Avx2
    );
    assert_eq!(
        resolve_path(Some("AVX512"), CpuPath::Avx2, |_| true).0,
        CpuPath::Avx512
    );
    assert_eq!(
        resolve_path(None, CpuPath::Avx2, |_| true),
        (CpuPath::Avx2, None)
    );
    let (p, warn) = resolve_path(Some("avx512"), CpuPath::Scalar, only_scalar);
    assert_eq!(p, CpuPath::Scalar);
    assert!(warn.is_some());
    let (p, warn) = resolve_path(Some("sse9"), CpuPath::Avx2, |_| true);
    assert_eq!(p, CpuPath::Avx2);
    assert!(warn.is_some());
    for p in CpuPath::ALL {
        assert_eq!(CpuPath::parse(p.name()), Some(p));
    }
}

#[test]
fn real_model_tensors_match_candle() {
    let path = inferno_cluster_tests::test_model();
    let mut file = std::fs::File::open(&path).unwrap_or_else(|e| {
        panic!(
            "model file {} is needed for this test ({e}); set INFERNO_TEST_MODEL or run `inferno pull` for SmolLM2-135M-Instruct Q4_1",
            path.display()
        )
    });
    let content = gguf_file::Content::read(&mut file).unwrap();
    let paths = available_paths();
    for (name, batches) in [
        ("blk.0.attn_q.weight", &[1usize, 3, 8, 17][..]),
        ("blk.0.ffn_down.weight", &[1, 3, 8, 17][..]),
        ("token_embd.weight", &[1, 3][..]),
    ] {
        let qt = content.tensor(&mut file, name, &Device::Cpu).unwrap();
        let m = QuantMatrix::from_qtensor(&qt).unwrap();
        let (out, k) = (m.out_dim(), m.in_dim());
        let deq = dequantize(&qt);
        assert_eq!(deq.len(), out * k);
        // Embedding lookup: dequantize_row is exactly candle's dequantization.
        let mut row = vec![0.0; k];
        let step = if out > 4096 { 97 } else { 1 };
        for r in (0..out).step_by(step).chain([out - 1]) {
            m.dequantize_row(r, &mut row);
            assert_eq!(bits(&row), bits(&deq[r * k..(r + 1) * k]), "{name} row {r}");
        }
        let max_batch = *batches.iter().max().unwrap();
        let x = activations(max_batch, k, 21);
        let y_ref = reference(&deq, out, k, &x, max_batch);
        let pool1 = ComputePool::new(1);
        for &path in &paths {
            let mut full = vec![0.0; max_batch * out];
            matmul_on(path, &pool1, &m, &x, max_batch, &mut full);
            for &batch in batches {
                let mut y = vec![0.0; batch * out];
                matmul_on(path, &pool1, &m, &x, batch, &mut y);
                check_error(
                    &format!("{name} {path}"),
                    m.dtype(),
                    &qt,
                    &x,
                    &y,
                    &y_ref,
                    out,
                );
                assert_eq!(
                    bits(&y),
                    bits(&full[..batch * out]),
                    "{name} {path} batch {batch} prefix"
                );
            }
            for threads in [2, 3] {
                let mut y = vec![0.0; max_batch * out];
                matmul_on(path, &ComputePool::new(threads), &m, &x, max_batch, &mut y);
                assert_eq!(bits(&y), bits(&full), "{name} {path}: {threads} threads");
            }
            eprintln!(
                "{name} ({} {out}x{k}) {path}: rel error {:.2e}",
                m.dtype(),
                rel_l2(&full, &y_ref, out)
            );
        }
    }
}

#[test]
#[ignore = "benchmark; run with --ignored --nocapture"]
fn bench() {
    let mut all = Vec::new();
    for path in available_paths() {
        // The scalar fallback is slow; batch 128 would take minutes.
        let batches: &[usize] = if path == CpuPath::Scalar {
            &[1, 8]
        } else {
            &[1, 4, 8, 128]
        };
        for threads in [1, 2] {
            all.extend(backends::kernels::bench_kernels_on(
                path, threads, batches, 200,
            ));
        }
    }
    println!("| dtype | out x in | path | threads | batch | streamed µs | streamed GB/s | hot µs | hot GB/s | hot GFLOP/s |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for pair in all.chunks(2) {
        let (s, h) = (&pair[0], pair.get(1).unwrap_or(&pair[0]));
        println!(
            "| {} | {}x{} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} |",
            s.dtype,
            s.out_dim,
            s.in_dim,
            s.path,
            s.threads,
            s.batch,
            s.micros_per_call,
            s.weight_gb_per_s,
            h.micros_per_call,
            h.weight_gb_per_s,
            h.gflops
        );
    }
    if let Ok(p) = std::env::var("KERNEL_BENCH_JSON") {
        std::fs::write(p, serde_json::to_string_pretty(&all).unwrap()).unwrap();
    }
}
