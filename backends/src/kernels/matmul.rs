//! Matmul entry points: quantize the activations once, split the output tiles
//! across the pool, and run the kernel for the chosen CPU path.
//!
//! Every kernel is weight-stationary: for each 16-row weight tile it loops
//! over all activation rows (in register tiles of up to 8 rows) before moving
//! to the next tile, so each weight byte comes from memory once per call
//! whatever the batch size. The per-output arithmetic (block order, rounding)
//! does not depend on the row tile, the batch size or the partitioning, so
//! results are bit-identical across batch sizes and thread counts.

use std::cell::RefCell;
use std::ops::Range;

use super::formats::{QuantMatrix, TILE};
use super::pool::ComputePool;
use super::quantize::{quantize_with, QuantizedActivations};
use super::{detect_isa, dot_scalar, CpuPath, Isa};

/// Output pointer shared by the partitions of one matmul. Each partition
/// writes a disjoint set of output columns (whole tiles).
#[derive(Clone, Copy)]
pub(crate) struct OutPtr {
    ptr: *mut f32,
    out_dim: usize,
    rows: usize,
}

// SAFETY: `OutPtr` is only created by `matmul_q_isa` from a `&mut [f32]` that
// outlives the call, and the partitions write disjoint tiles.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Points at `out`, which must hold `rows * out_dim` values; the caller
    /// keeps `out` mutably borrowed while the pointer is in use.
    pub(crate) fn new(out: &mut [f32], out_dim: usize, rows: usize) -> Self {
        assert!(
            out.len() >= rows * out_dim,
            "out holds {} values, need {rows} x {out_dim}",
            out.len()
        );
        Self {
            ptr: out.as_mut_ptr(),
            out_dim,
            rows,
        }
    }

    /// Output columns per row.
    #[inline(always)]
    pub(crate) fn out_dim(self) -> usize {
        self.out_dim
    }

    /// Writes the valid lanes of half `h` (columns `16 t + 8 h ..+ 8`) of
    /// output row `row`; lanes past `out_dim` are dropped.
    ///
    /// # Safety
    /// `row < rows`, `16 t < out_dim`, and the caller owns tile `t`'s columns.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    #[inline(always)]
    pub(crate) unsafe fn store_half(self, row: usize, t: usize, h: usize, vals: &[f32; 8]) {
        let c0 = t * TILE + 8 * h;
        if c0 >= self.out_dim {
            return;
        }
        let n = 8.min(self.out_dim - c0);
        // SAFETY: `n` lanes from column `c0` stay inside row `row`.
        unsafe {
            std::ptr::copy_nonoverlapping(vals.as_ptr(), self.ptr.add(row * self.out_dim + c0), n)
        };
    }

    /// Whether tile `t` has all 16 columns inside `out_dim`.
    #[inline(always)]
    pub(crate) fn full(self, t: usize) -> bool {
        (t + 1) * TILE <= self.out_dim
    }

    /// Pointer to `out[row][16 t]`.
    ///
    /// # Safety
    /// `row < rows` and `16 t < out_dim`.
    #[inline(always)]
    pub(crate) unsafe fn at(self, row: usize, t: usize) -> *mut f32 {
        debug_assert!(row < self.rows && t * TILE < self.out_dim);
        // SAFETY: in bounds of the `rows * out_dim` buffer per the contract.
        unsafe { self.ptr.add(row * self.out_dim + t * TILE) }
    }

    /// Writes the valid lanes of tile `t` of output row `row`.
    ///
    /// # Safety
    /// `row < rows`, `16 t < out_dim`, and the caller owns tile `t`'s columns.
    #[inline(always)]
    pub(crate) unsafe fn store(self, row: usize, t: usize, vals: &[f32; TILE]) {
        let n = TILE.min(self.out_dim - t * TILE);
        // SAFETY: `n` lanes from `at(row, t)` stay inside row `row`.
        unsafe { std::ptr::copy_nonoverlapping(vals.as_ptr(), self.at(row, t), n) };
    }
}

thread_local! {
    static SCRATCH: RefCell<QuantizedActivations> = RefCell::new(QuantizedActivations::new());
}

/// `out[r * out_dim + c] = Σ_k x[r * in_dim + k] · W[c][k]` for `r < rows`,
/// on the best CPU path ([`super::detect_path`]). The activations are
/// quantized once (into a per-thread scratch buffer).
///
/// # Panics
/// If `x` is shorter than `rows * in_dim` or `out` than `rows * out_dim`.
pub fn matmul(pool: &ComputePool, w: &QuantMatrix, x: &[f32], rows: usize, out: &mut [f32]) {
    matmul_isa(detect_isa(), pool, w, x, rows, out);
}

/// [`matmul`] on a given CPU path.
///
/// # Panics
/// As [`matmul`], and if `path` is not supported by this CPU.
pub fn matmul_on(
    path: CpuPath,
    pool: &ComputePool,
    w: &QuantMatrix,
    x: &[f32],
    rows: usize,
    out: &mut [f32],
) {
    assert!(
        path.is_supported(),
        "CPU path {path:?} is not supported here"
    );
    matmul_isa(path.isa(), pool, w, x, rows, out);
}

/// [`matmul`] on an explicit instruction set.
pub(crate) fn matmul_isa(
    isa: Isa,
    pool: &ComputePool,
    w: &QuantMatrix,
    x: &[f32],
    rows: usize,
    out: &mut [f32],
) {
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut q) => {
            quantize_with(isa, x, rows, w.in_dim(), w.dtype(), &mut q);
            matmul_q_isa(isa, pool, w, &q, out);
        }
        Err(_) => {
            let mut q = QuantizedActivations::new();
            quantize_with(isa, x, rows, w.in_dim(), w.dtype(), &mut q);
            matmul_q_isa(isa, pool, w, &q, out);
        }
    });
}

/// Like [`matmul`] with activations already quantized by
/// [`super::quantize_activations`] (for any type of `w`'s family), so that
/// matrices sharing an input quantize it once. Writes
/// `out[..xq.rows() * out_dim]`.
///
/// # Panics
/// If `xq` was quantized for another family or width, or `out` is too short.
pub fn matmul_q(pool: &ComputePool, w: &QuantMatrix, xq: &QuantizedActivations, out: &mut [f32]) {
    matmul_q_isa(detect_isa(), pool, w, xq, out);
}

/// [`matmul_q`] on a given CPU path.
///
/// # Panics
/// As [`matmul_q`], and if `path` is not supported by this CPU.
pub fn matmul_q_on(
    path: CpuPath,
    pool: &ComputePool,
    w: &QuantMatrix,
    xq: &QuantizedActivations,
    out: &mut [f32],
) {
    assert!(
        path.is_supported(),
        "CPU path {path:?} is not supported here"
    );
    matmul_q_isa(path.isa(), pool, w, xq, out);
}

/// How far ahead of the current tile block (in bytes of the repacked matrix)
/// the SIMD kernels issue software prefetches. The hardware prefetcher alone
/// left one thread streaming Q4_1 weights at ~10 GB/s on the development VM;
/// prefetching 8-16 KB ahead gave ~1.3-1.8x at batch 1-8 (12 KB chosen).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) const PREFETCH_AHEAD: usize = 12 * 1024;

/// Prefetches (into L1) the cache lines `PREFETCH_AHEAD` bytes past the
/// `len`-byte block at `p`. Prefetches never fault, and the addresses are
/// computed with wrapping arithmetic, so running past the matrix is harmless.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn prefetch_ahead(p: *const u8, len: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    let mut o = 0;
    while o < len {
        // SAFETY: `prefetcht0` is part of baseline x86_64 (SSE) and has no
        // architectural effect; it cannot fault on any address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH_AHEAD + o).cast()) };
        o += 64;
    }
}

/// Prefetches the first `PREFETCH_AHEAD` bytes of a tile range that starts
/// at `p` and spans `len` bytes, so a matmul does not start on demand misses
/// before the in-loop prefetches (which run `PREFETCH_AHEAD` ahead) take over.
#[cfg(target_arch = "x86_64")]
#[inline]
fn prefetch_start(p: *const u8, len: usize) {
    prefetch_ahead(p.wrapping_sub(PREFETCH_AHEAD), len.min(PREFETCH_AHEAD));
}

/// Minimum weight bytes per partition before another thread is worth waking.
const MIN_BYTES_PER_PART: usize = 64 * 1024;

/// How many partitions to split `w` into for `rows` activation rows.
pub(crate) fn partitions(threads: usize, w: &QuantMatrix, rows: usize) -> usize {
    let work = w.ggml_bytes().saturating_mul(rows.min(8));
    threads
        .min(w.tiles())
        .min((work / MIN_BYTES_PER_PART).max(1))
}

/// [`matmul_q`] on an explicit instruction set.
pub(crate) fn matmul_q_isa(
    isa: Isa,
    pool: &ComputePool,
    w: &QuantMatrix,
    xq: &QuantizedActivations,
    out: &mut [f32],
) {
    assert!(
        xq.serves(w.dtype()),
        "activations were quantized for another weight family than {}",
        w.dtype()
    );
    assert_eq!(xq.in_dim, w.in_dim(), "activation width != matrix in_dim");
    let rows = xq.rows;
    let n = rows * w.out_dim();
    assert!(out.len() >= n, "out holds {} values, need {n}", out.len());
    if rows == 0 {
        return;
    }
    let optr = OutPtr::new(out, w.out_dim(), rows);
    let tiles = w.tiles();
    let parts = partitions(pool.threads(), w, rows);
    if parts <= 1 {
        // SAFETY: `optr` covers `out[..n]`, which we borrow mutably; one
        // partition owns every tile; `xq` matches `w` (checked above).
        unsafe { run_tiles(isa, w, xq, 0..tiles, optr) };
    } else {
        pool.run(parts, &|p| {
            let range = p * tiles / parts..(p + 1) * tiles / parts;
            // SAFETY: as above; the tile ranges of different parts are disjoint
            // and `pool.run` returns only after every part has finished.
            unsafe { run_tiles(isa, w, xq, range, optr) };
        });
    }
}

/// Runs the kernel for `isa` over `tiles`.
///
/// # Safety
/// `out` must be valid for `a.rows * w.out_dim()` floats with the columns of
/// `tiles` not accessed by anyone else during the call; `a` must match `w`
/// (family and `in_dim`); `isa` must be supported by this CPU.
pub(crate) unsafe fn run_tiles(
    isa: Isa,
    w: &QuantMatrix,
    a: &QuantizedActivations,
    tiles: Range<usize>,
    out: OutPtr,
) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar && !tiles.is_empty() {
        let tb = w.tile(tiles.start).len();
        prefetch_start(w.tile(tiles.start).as_ptr(), tb * tiles.len());
    }
    // SAFETY (all arms): forwarded from this function's contract.
    match isa {
        Isa::Scalar => unsafe { dot_scalar::run(w, a, tiles, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { super::dot_avx2::run(w, a, tiles, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { super::dot_avx512::run(w, a, tiles, out) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => unsafe { super::dot_avx512::run_vnni(w, a, tiles, out) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => unsafe { dot_scalar::run(w, a, tiles, out) },
    }
}
