//! Unit tests: every weight type on every instruction set available here
//! (including AVX-512 without VNNI when the CPU has AVX-512), against
//! candle's dequantization.

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{Device, Tensor};

use super::bench::random_ggml;
use super::formats::{QuantMatrix, WeightType, TILE};
use super::matmul::{matmul_isa, matmul_q_isa, run_tiles, OutPtr};
use super::quantize::{quantize_with, QuantizedActivations};
use super::*;

const ALL_TYPES: [WeightType; 8] = [
    WeightType::Q4_0,
    WeightType::Q4_1,
    WeightType::Q5_1,
    WeightType::Q8_0,
    WeightType::Q4K,
    WeightType::Q5K,
    WeightType::Q6K,
    WeightType::F32,
];

/// Every instruction set this CPU runs, including AVX-512 without VNNI.
fn isas() -> Vec<Isa> {
    let f = features();
    let mut v = vec![Isa::Scalar];
    if f.avx2 {
        v.push(Isa::Avx2);
    }
    if f.avx512 {
        v.push(Isa::Avx512);
    }
    if f.vnni {
        v.push(Isa::Avx512Vnni);
    }
    v
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

/// A random matrix and candle's dequantization of it (row-major f32).
/// `raw` fills the ggml blocks with random bytes (every bit pattern);
/// otherwise random values are quantized by candle.
fn case(t: WeightType, out: usize, k: usize, seed: u64, raw: bool) -> (QuantMatrix, Vec<f32>) {
    let bytes = if raw || t == WeightType::F32 {
        random_ggml(t, out, k, seed)
    } else {
        let mut r = Lcg(seed);
        let v: Vec<f32> = (0..out * k)
            .map(|i| r.next() + 0.3 * ((i / k) % 3) as f32)
            .collect();
        let src = Tensor::from_vec(v, (out, k), &Device::Cpu).unwrap();
        QTensor::quantize(&src, ggml(t))
            .unwrap()
            .data()
            .unwrap()
            .into_owned()
    };
    let storage =
        QStorage::from_data(std::borrow::Cow::Borrowed(&bytes), &Device::Cpu, ggml(t)).unwrap();
    let qt = QTensor::new(storage, (out, k)).unwrap();
    let deq = dequantized(&qt);
    let m = QuantMatrix::from_ggml(t, out, k, &bytes).unwrap();
    let m2 = QuantMatrix::from_qtensor(&qt).unwrap();
    assert_eq!(m.bytes(), m2.bytes());
    (m, deq)
}

/// candle's dequantization of `qt`, row-major.
fn dequantized(qt: &QTensor) -> Vec<f32> {
    qt.dequantize(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn activations(rows: usize, k: usize, seed: u64) -> Vec<f32> {
    let mut r = Lcg(seed);
    (0..rows * k)
        .map(|i| r.next() * (1.0 + (i % 7) as f32))
        .collect()
}

/// `Σ_k w[c][k] x[r][k]` and `Σ_k |w x|` in f64.
fn reference(w: &[f32], out: usize, k: usize, x: &[f32], rows: usize) -> (Vec<f64>, Vec<f64>) {
    let mut y = vec![0.0; rows * out];
    let mut a = vec![0.0; rows * out];
    for r in 0..rows {
        for c in 0..out {
            let (mut s, mut sa) = (0.0f64, 0.0f64);
            for i in 0..k {
                let p = f64::from(w[c * k + i]) * f64::from(x[r * k + i]);
                s += p;
                sa += p.abs();
            }
            y[r * out + c] = s;
            a[r * out + c] = sa;
        }
    }
    (y, a)
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

/// Bound on the per-row relative L2 error against the unquantized-activation
/// reference. This is the noise of 8-bit activations (observed: 0.6-1.0 %
/// for 32-wide blocks, up to 1.6 % for 256-wide super-blocks, with
/// activations whose magnitude varies 7x within a block); the kernels
/// themselves are checked far tighter against the emulated reference.
fn l2_bound(t: WeightType) -> f64 {
    match t {
        WeightType::F32 => 1e-5,
        WeightType::Q4K | WeightType::Q5K | WeightType::Q6K => 3e-2,
        _ => 2e-2,
    }
}

#[test]
fn dequantize_row_matches_candle_exactly() {
    for t in ALL_TYPES {
        let k = t.block_elems().max(32) * 2;
        let k = if k < 256 { 64 } else { k };
        for raw in [false, true] {
            let (m, deq) = case(t, 37, k, 11, raw);
            let mut row = vec![0.0; k];
            for r in 0..37 {
                m.dequantize_row(r, &mut row);
                for (i, (&a, &b)) in row.iter().zip(&deq[r * k..]).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "{t} raw={raw} row {r} col {i}: {a} vs {b}"
                    );
                }
            }
        }
    }
}

/// Q5_0 is rewritten as Q5_1 (`m = -16 d`): the same weight values (a zero
/// weight may change sign), so the same products.
#[test]
fn q5_0_is_rewritten_exactly() {
    let (out, k) = (37, 576);
    let mut r = Lcg(21);
    let v: Vec<f32> = (0..out * k).map(|_| r.next()).collect();
    let src = Tensor::from_vec(v, (out, k), &Device::Cpu).unwrap();
    let qt = QTensor::quantize(&src, GgmlDType::Q5_0).unwrap();
    let deq = dequantized(&qt);
    let m = QuantMatrix::from_qtensor(&qt).unwrap();
    assert_eq!(m.dtype(), WeightType::Q5_1);
    assert_eq!(
        m.bytes(),
        QuantMatrix::from_gguf(GgmlDType::Q5_0, out, k, &qt.data().unwrap())
            .unwrap()
            .bytes()
    );
    let mut row = vec![0.0; k];
    for i in 0..out {
        m.dequantize_row(i, &mut row);
        // Equal values; only the sign of a zero weight may differ.
        assert_eq!(row, deq[i * k..(i + 1) * k], "row {i}");
    }
    // A scale whose -16 d overflows f16 cannot be rewritten: refused.
    let mut huge = qt.data().unwrap().into_owned();
    huge[..2].copy_from_slice(&half::f16::from_f32(8192.0).to_le_bytes());
    assert!(QuantMatrix::from_gguf(GgmlDType::Q5_0, out, k, &huge).is_err());
}

#[test]
fn every_type_and_isa_matches_reference() {
    let out = 40; // 2.5 tiles: exercises the padded last tile
    for t in ALL_TYPES {
        let ks: &[usize] = match t {
            WeightType::Q4K | WeightType::Q5K | WeightType::Q6K => &[256, 512, 1536],
            _ => &[576, 1536],
        };
        for &k in ks {
            for raw in [false, true] {
                let (m, deq) = case(t, out, k, k as u64 + raw as u64, raw);
                let rows = 17;
                let x = activations(rows, k, 5);
                let (y_ref, _) = reference(&deq, out, k, &x, rows);
                for isa in isas() {
                    let mut qa = QuantizedActivations::new();
                    quantize_with(isa, &x, rows, k, t, &mut qa);
                    let mut xd = vec![0.0; rows * k];
                    for r in 0..rows {
                        qa.dequantize_row(r, &mut xd[r * k..]);
                    }
                    // What the kernels compute, up to f32 rounding.
                    let (y_emu, y_abs) = reference(&deq, out, k, &xd, rows);
                    for batch in [1, 3, 8, 17] {
                        let pool = ComputePool::new(1);
                        let mut y = vec![f32::NAN; batch * out];
                        matmul_isa(isa, &pool, &m, &x, batch, &mut y);
                        for i in 0..batch * out {
                            let err = (f64::from(y[i]) - y_emu[i]).abs();
                            assert!(
                                err <= 1e-5 * y_abs[i] + 1e-30,
                                "{t} k={k} raw={raw} {isa:?} batch {batch} out {i}: {} vs {} (abs {})",
                                y[i],
                                y_emu[i],
                                y_abs[i]
                            );
                        }
                        let e = rel_l2(&y, &y_ref[..batch * out], out);
                        if std::env::var("KERNEL_TEST_VERBOSE").is_ok() && isa == Isa::Scalar {
                            eprintln!("{t} k={k} raw={raw} batch {batch}: rel L2 {e:.5}");
                        }
                        assert!(
                            e < l2_bound(t),
                            "{t} k={k} raw={raw} {isa:?} batch {batch}: rel L2 error {e}"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn batch_rows_are_bit_identical_to_single_rows() {
    let (out, rows) = (48, 17);
    for t in ALL_TYPES {
        let k = if t.block_elems() == 256 { 512 } else { 576 };
        let (m, _) = case(t, out, k, 3, true);
        let x = activations(rows, k, 9);
        let pool = ComputePool::new(1);
        for isa in isas() {
            let mut all = vec![0.0; rows * out];
            matmul_isa(isa, &pool, &m, &x, rows, &mut all);
            for r in 0..rows {
                let mut one = vec![0.0; out];
                matmul_isa(isa, &pool, &m, &x[r * k..(r + 1) * k], 1, &mut one);
                assert_eq!(
                    bits(&one),
                    bits(&all[r * out..(r + 1) * out]),
                    "{t} {isa:?} row {r}"
                );
            }
            let mut three = vec![0.0; 3 * out];
            matmul_isa(isa, &pool, &m, &x, 3, &mut three);
            assert_eq!(
                bits(&three),
                bits(&all[..3 * out]),
                "{t} {isa:?} first 3 rows"
            );
        }
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

#[test]
fn partitions_and_threads_do_not_change_results() {
    for t in ALL_TYPES {
        let k = if t.block_elems() == 256 { 512 } else { 576 };
        // Large enough that the pool really splits it.
        let out = 1000;
        let (m, _) = case(t, out, k, 4, true);
        for rows in [1, 5] {
            let x = activations(rows, k, 2);
            for isa in isas() {
                let mut qa = QuantizedActivations::new();
                quantize_with(isa, &x, rows, k, t, &mut qa);
                let mut base = vec![0.0; rows * out];
                matmul_q_isa(isa, &ComputePool::new(1), &m, &qa, &mut base);
                for threads in [2, 3] {
                    let pool = ComputePool::new(threads);
                    let mut y = vec![0.0; rows * out];
                    matmul_q_isa(isa, &pool, &m, &qa, &mut y);
                    assert_eq!(
                        bits(&y),
                        bits(&base),
                        "{t} {isa:?} rows {rows} threads {threads}"
                    );
                }
                // Arbitrary tile splits, run directly.
                let tiles = m.tiles();
                let mut y = vec![0.0; rows * out];
                for range in [0..1, 1..7, 7..tiles - 1, tiles - 1..tiles] {
                    let o = OutPtr::new(&mut y, out, rows);
                    // SAFETY: `o` covers `y`; sequential calls; `qa` matches `m`.
                    unsafe { run_tiles(isa, &m, &qa, range, o) };
                }
                assert_eq!(
                    bits(&y),
                    bits(&base),
                    "{t} {isa:?} rows {rows} manual split"
                );
            }
        }
    }
}

#[test]
fn isas_agree_with_scalar() {
    let (out, rows) = (64, 8);
    for t in ALL_TYPES {
        let k = 1536;
        let (m, _) = case(t, out, k, 8, false);
        let x = activations(rows, k, 1);
        let pool = ComputePool::new(1);
        let mut base = vec![0.0; rows * out];
        matmul_isa(Isa::Scalar, &pool, &m, &x, rows, &mut base);
        for isa in isas() {
            let mut y = vec![0.0; rows * out];
            matmul_isa(isa, &pool, &m, &x, rows, &mut y);
            for r in 0..rows {
                let row = &base[r * out..(r + 1) * out];
                let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
                for c in 0..out {
                    let d = (y[r * out + c] - row[c]).abs();
                    assert!(
                        d <= 1e-5 * norm,
                        "{t} {isa:?} [{r}][{c}]: {} vs {}",
                        y[r * out + c],
                        row[c]
                    );
                }
            }
        }
    }
}

#[test]
fn shared_quantized_activations_serve_the_whole_family() {
    let k = 576;
    let x = activations(2, k, 4);
    let mut qa = QuantizedActivations::new();
    quantize_activations(&x, 2, k, WeightType::Q8_0, &mut qa);
    assert!(qa.serves(WeightType::Q4_0) && qa.serves(WeightType::Q4_1));
    assert!(!qa.serves(WeightType::Q4K) && !qa.serves(WeightType::F32));
    let pool = ComputePool::new(2);
    for t in [WeightType::Q4_0, WeightType::Q4_1, WeightType::Q8_0] {
        let (m, _) = case(t, 32, k, 1, false);
        let mut a = vec![0.0; 64];
        let mut b = vec![0.0; 64];
        matmul_q(&pool, &m, &qa, &mut a);
        matmul(&pool, &m, &x, 2, &mut b);
        assert_eq!(bits(&a), bits(&b), "{t}");
    }
}

#[test]
fn rejects_bad_shapes_and_sizes() {
    assert!(matches!(
        QuantMatrix::from_ggml(WeightType::Q4_1, 4, 48, &[0; 4 * 30]),
        Err(KernelError::Shape { .. })
    ));
    assert!(matches!(
        QuantMatrix::from_ggml(WeightType::Q4K, 4, 576, &[0; 4 * 144 * 2]),
        Err(KernelError::Shape { .. })
    ));
    assert!(matches!(
        QuantMatrix::from_ggml(WeightType::Q8_0, 4, 64, &[0; 4 * 68 - 1]),
        Err(KernelError::DataSize {
            expected: 272,
            actual: 271,
            ..
        })
    ));
    assert!(QuantMatrix::from_ggml(WeightType::Q8_0, 0, 64, &[]).is_err());
}

#[test]
fn kernel_override_resolution() {
    let all = |_: CpuPath| true;
    let none_simd = |p: CpuPath| p == CpuPath::Scalar;
    assert_eq!(
        resolve_path(None, CpuPath::Avx512, all),
        (CpuPath::Avx512, None)
    );
    assert_eq!(
        resolve_path(Some(""), CpuPath::Avx2, all),
        (CpuPath::Avx2, None)
    );
    assert_eq!(
        resolve_path(Some("scalar"), CpuPath::Avx512, all),
        (CpuPath::Scalar, None)
    );
    assert_eq!(
        resolve_path(Some(" AVX2 "), CpuPath::Avx512, all),
        (CpuPath::Avx2, None)
    );
    let (p, w) = resolve_path(Some("avx512"), CpuPath::Scalar, none_simd);
    assert_eq!(p, CpuPath::Scalar);
    assert!(w.unwrap().contains("not supported"));
    let (p, w) = resolve_path(Some("neon"), CpuPath::Avx2, all);
    assert_eq!(p, CpuPath::Avx2);
    assert!(w.unwrap().contains("expected scalar, avx2 or avx512"));
    assert!(CpuPath::Scalar.is_supported());
    assert!(available_paths().contains(&best_path()));
    assert_eq!(TILE, 16);
}
