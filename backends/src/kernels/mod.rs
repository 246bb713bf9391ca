//! Quantized CPU matmul kernels for ggml weight formats.
//!
//! * [`QuantMatrix`] repacks a GGUF weight matrix (Q4_0, Q4_1, Q8_0, Q4_K,
//!   Q6_K or F32) into 16-row interleaved tiles (see `formats`).
//! * [`quantize_activations`] quantizes each activation row once to 8 bits
//!   ([`QuantizedActivations`]), shared by every matrix with the same input.
//! * [`matmul`] / [`matmul_q`] multiply, weight-stationary (each weight tile
//!   is applied to every activation row before the next tile is read), split
//!   across a persistent [`ComputePool`].
//! * Kernels exist for scalar code, AVX2 + FMA, and AVX-512 (F + BW + VL,
//!   using VNNI `vpdpbusd` where present), chosen at run time
//!   ([`detect_path`]); the binary is not built for a specific CPU.
//!
//! Results are bit-identical across batch sizes, row positions in a batch and
//! thread counts for a given path; paths agree up to float rounding.
//!
//! ```
//! use backends::kernels::{
//!     matmul, matmul_q, quantize_activations, ComputePool, QuantMatrix, QuantizedActivations,
//!     WeightType,
//! };
//! // A 32 x 64 Q8_0 matrix: per row, 2 blocks of (f16 scale, 32 x i8).
//! let mut raw = Vec::new();
//! for r in 0..32 {
//!     for _ in 0..2 {
//!         raw.extend_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
//!         raw.extend((0..32).map(|i| ((i + r) % 7) as u8));
//!     }
//! }
//! let w = QuantMatrix::from_ggml(WeightType::Q8_0, 32, 64, &raw)?;
//! let pool = ComputePool::new(2);
//! let x = vec![0.5f32; 3 * 64]; // 3 activation rows
//! let mut y = vec![0.0f32; 3 * 32];
//! matmul(&pool, &w, &x, 3, &mut y);
//!
//! // Matrices sharing an input (q/k/v, gate/up) quantize it once:
//! let mut xq = QuantizedActivations::new();
//! quantize_activations(&x, 3, 64, w.dtype(), &mut xq);
//! let mut y2 = vec![0.0f32; 3 * 32];
//! matmul_q(&pool, &w, &xq, &mut y2);
//! assert_eq!(y, y2);
//!
//! // Embedding lookup from the same (tied) table:
//! let mut row = vec![0.0f32; 64];
//! w.dequantize_row(5, &mut row);
//! # Ok::<(), backends::kernels::KernelError>(())
//! ```

mod bench;
mod dot_scalar;
mod formats;
mod matmul;
mod pool;
mod quantize;

#[cfg(target_arch = "x86_64")]
mod dot_avx2;
#[cfg(target_arch = "x86_64")]
mod dot_avx512;

use std::sync::OnceLock;

pub use bench::{bench_cases, bench_kernels, bench_kernels_on, KernelReport};
pub use formats::{q5_0_as_q5_1, QuantMatrix, WeightType};
pub use matmul::{matmul, matmul_on, matmul_q, matmul_q_on};
pub use pool::ComputePool;
pub use quantize::{quantize_activations, QuantizedActivations};

/// Errors building a [`QuantMatrix`].
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The ggml type has no kernel.
    #[error("unsupported weight type {0}")]
    UnsupportedType(String),
    /// The dimensions do not fit the block size.
    #[error("{dtype} matrix {out_dim}x{in_dim}: in_dim must be a non-zero multiple of {block}")]
    Shape {
        /// Weight type.
        dtype: WeightType,
        /// Rows.
        out_dim: usize,
        /// Columns.
        in_dim: usize,
        /// Block size along `in_dim`.
        block: usize,
    },
    /// The raw data is not the size the shape implies.
    #[error("{dtype} data is {actual} bytes, expected {expected}")]
    DataSize {
        /// Weight type.
        dtype: WeightType,
        /// Bytes the shape needs.
        expected: usize,
        /// Bytes given.
        actual: usize,
    },
    /// Reading the candle tensor failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// A family of kernels, by instruction set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CpuPath {
    /// Portable Rust.
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX-512 F + BW + VL (plus VNNI when the CPU has it).
    Avx512,
}

impl CpuPath {
    /// Every path, slowest first.
    pub const ALL: [CpuPath; 3] = [CpuPath::Scalar, CpuPath::Avx2, CpuPath::Avx512];

    /// Lowercase name, as accepted by `INFERNO_KERNEL`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Scalar => "scalar",
            Self::Avx2 => "avx2",
            Self::Avx512 => "avx512",
        }
    }

    /// Parses `scalar`, `avx2` or `avx512` (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" => Some(Self::Scalar),
            "avx2" => Some(Self::Avx2),
            "avx512" => Some(Self::Avx512),
            _ => None,
        }
    }

    /// Whether this CPU can run the path.
    pub fn is_supported(self) -> bool {
        self.isa_if_supported().is_some()
    }

    /// The instruction set the path runs on here.
    ///
    /// # Panics
    /// If the path is not supported.
    pub(crate) fn isa(self) -> Isa {
        match self.isa_if_supported() {
            Some(i) => i,
            None => panic!("CPU path {self:?} is not supported here"),
        }
    }

    fn isa_if_supported(self) -> Option<Isa> {
        let f = features();
        match self {
            Self::Scalar => Some(Isa::Scalar),
            Self::Avx2 => f.avx2.then_some(Isa::Avx2),
            Self::Avx512 => match (f.avx512, f.vnni) {
                (true, true) => Some(Isa::Avx512Vnni),
                (true, false) => Some(Isa::Avx512),
                _ => None,
            },
        }
    }
}

impl std::fmt::Display for CpuPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The instruction set a kernel is compiled for (finer than [`CpuPath`]:
/// AVX-512 with and without VNNI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    Scalar,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx2,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx512,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx512Vnni,
}

#[derive(Debug, Clone, Copy)]
struct Features {
    avx2: bool,
    avx512: bool,
    vnni: bool,
}

fn features() -> Features {
    static F: OnceLock<Features> = OnceLock::new();
    *F.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c");
            let avx512 = avx2
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl");
            let vnni = avx512 && is_x86_feature_detected!("avx512vnni");
            Features { avx2, avx512, vnni }
        }
        #[cfg(not(target_arch = "x86_64"))]
        Features {
            avx2: false,
            avx512: false,
            vnni: false,
        }
    })
}

/// The fastest path this CPU supports, ignoring `INFERNO_KERNEL`.
pub fn best_path() -> CpuPath {
    let f = features();
    if f.avx512 {
        CpuPath::Avx512
    } else if f.avx2 {
        CpuPath::Avx2
    } else {
        CpuPath::Scalar
    }
}

/// Every path this CPU supports, slowest first.
pub fn available_paths() -> Vec<CpuPath> {
    CpuPath::ALL
        .into_iter()
        .filter(|p| p.is_supported())
        .collect()
}

/// Resolves an `INFERNO_KERNEL` value: `None` or empty picks `best`; a known
/// name that `supported` accepts is used; anything else falls back to `best`
/// with a warning message.
pub fn resolve_path(
    requested: Option<&str>,
    best: CpuPath,
    supported: impl Fn(CpuPath) -> bool,
) -> (CpuPath, Option<String>) {
    let Some(req) = requested.map(str::trim).filter(|s| !s.is_empty()) else {
        return (best, None);
    };
    match CpuPath::parse(req) {
        Some(p) if supported(p) => (p, None),
        Some(p) => (
            best,
            Some(format!(
                "INFERNO_KERNEL={req}: {p} is not supported by this CPU; using {best}"
            )),
        ),
        None => (
            best,
            Some(format!(
                "INFERNO_KERNEL={req}: expected scalar, avx2 or avx512; using {best}"
            )),
        ),
    }
}

/// The path used by [`matmul`] and [`matmul_q`]: the best one available, or
/// the one named by `INFERNO_KERNEL=scalar|avx2|avx512` (falling back, with a
/// warning, when the CPU lacks it). Decided once per process.
pub fn detect_path() -> CpuPath {
    static PATH: OnceLock<CpuPath> = OnceLock::new();
    *PATH.get_or_init(|| {
        let env = std::env::var("INFERNO_KERNEL").ok();
        let (path, warning) = resolve_path(env.as_deref(), best_path(), CpuPath::is_supported);
        if let Some(w) = warning {
            tracing::warn!("{w}");
        }
        path
    })
}

/// The instruction set of [`detect_path`].
pub(crate) fn detect_isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| detect_path().isa())
}

#[cfg(test)]
mod tests;
