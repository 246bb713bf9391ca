//! Weight formats: the ggml block layouts we accept, and the interleaved
//! "tile" layout every kernel reads.
//!
//! A [`QuantMatrix`] stores its rows in tiles of [`TILE`] (16) consecutive
//! output rows. Within a tile, each ggml block (32 or 256 weights along `k`)
//! of the 16 rows is repacked so that one 64-byte vector holds four
//! consecutive `k` values for each of the 16 rows (row `r` in bytes
//! `4r..4r + 4`). One `vpdpbusd` of that vector against four broadcast
//! activation bytes then yields 16 row partial sums at once, and an AVX2
//! kernel uses the first or second 32 bytes as an 8-row half tile. Weights are
//! stored as *unsigned* integers (ggml's 4-bit and 6-bit codes already are;
//! Q8_0 is offset by +128), and the kernels subtract the offset times the
//! activation block sum. Per-row scales stay `f16` (16 of them per block) so a
//! tile block is exactly as large as the 16 ggml blocks it came from (Q4_K
//! gains 4 bytes per row for unpacked 6-bit scales).
//!
//! Rows past `out_dim` in the last tile are zero (scale 0) and never written
//! out.

use half::f16;

use super::KernelError;

/// Output rows interleaved in one tile; partitions are multiples of this.
pub(crate) const TILE: usize = 16;
/// Elements in a ggml Q4_0 / Q4_1 / Q8_0 block.
pub(crate) const QK: usize = 32;
/// Elements in a ggml K-quant super-block.
pub(crate) const QK_K: usize = 256;

/// Tile-block bytes for Q4_0: 4 nibble vectors + 16 f16 scales.
pub(crate) const Q4_0_TB: usize = 4 * 64 + 32;
/// Tile-block bytes for Q4_1: 4 nibble vectors + 16 f16 scales + 16 f16 mins.
pub(crate) const Q4_1_TB: usize = 4 * 64 + 64;
/// Tile-block bytes for Q5_1: 4 vectors of low nibbles (as Q4_1), one
/// vector of fifth bits, 16 f16 scales + 16 f16 mins: as large as the 16
/// ggml blocks.
pub(crate) const Q5_1_TB: usize = 4 * 64 + 64 + 64;
/// Offset of the fifth-bit vector in a Q5_1 tile block: bit `q` of byte
/// `4r + i` is the high bit of row `r`'s code `4q + i`.
pub(crate) const Q5_1_H: usize = 256;
/// Offset of the 16 f16 scales in a Q5_1 tile block (the mins follow).
pub(crate) const Q5_1_D: usize = 320;
/// Tile-block bytes for Q8_0: 8 byte vectors (value + 128) + 16 f16 scales.
pub(crate) const Q8_0_TB: usize = 8 * 64 + 32;
/// Tile-block bytes for Q4_K: 32 nibble vectors, 8x16 scales, 4x16 min
/// pairs, 16 f16 `d` and 16 f16 `dmin`.
pub(crate) const Q4K_TB: usize = 32 * 64 + 128 + 128 + 64;
/// Offset of the per-sub-block scales (`[s][row]`, u8) in a Q4_K tile block.
pub(crate) const Q4K_SC: usize = 2048;
/// Offset of the min pairs (`[pair][row][2]`, u8) in a Q4_K tile block.
pub(crate) const Q4K_MIN: usize = 2176;
/// Offset of the 16 f16 `d` values in a Q4_K tile block (`dmin` follows).
pub(crate) const Q4K_D: usize = 2304;
/// Tile-block bytes for Q5_K: the Q4_K layout of low nibbles, 8 fifth-bit
/// vectors (one per 32-value sub-block), scales, min pairs, `d` and `dmin`.
pub(crate) const Q5K_TB: usize = 32 * 64 + 8 * 64 + 128 + 128 + 64;
/// Offset of the fifth-bit vectors in a Q5_K tile block: in vector `s`,
/// bit `q` of byte `4r + i` is the high bit of row `r`'s code `32s + 4q + i`.
pub(crate) const Q5K_H: usize = 2048;
/// Offset of the per-sub-block scales in a Q5_K tile block.
pub(crate) const Q5K_SC: usize = 2560;
/// Offset of the min pairs in a Q5_K tile block.
pub(crate) const Q5K_MIN: usize = 2688;
/// Offset of the 16 f16 `d` values in a Q5_K tile block (`dmin` follows).
pub(crate) const Q5K_D: usize = 2816;
/// Tile-block bytes for Q6_K: 32 low-nibble vectors, 16 high-bit vectors,
/// 16x16 i8 scales and 16 f16 `d`.
pub(crate) const Q6K_TB: usize = 48 * 64 + 256 + 32;
/// Offset of the high-bit vectors in a Q6_K tile block.
pub(crate) const Q6K_H: usize = 2048;
/// Offset of the scales (`[s][row]`, i8) in a Q6_K tile block.
pub(crate) const Q6K_SC: usize = 3072;
/// Offset of the 16 f16 `d` values in a Q6_K tile block.
pub(crate) const Q6K_D: usize = 3328;

/// A ggml weight type the kernels can multiply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightType {
    /// 32-weight blocks of 4-bit codes with one f16 scale (`w = d * (q - 8)`).
    Q4_0,
    /// 32-weight blocks of 4-bit codes with an f16 scale and min (`w = d * q + m`).
    Q4_1,
    /// 32-weight blocks of 5-bit codes with an f16 scale and min (`w = d * q + m`).
    Q5_1,
    /// 32-weight blocks of signed bytes with one f16 scale.
    Q8_0,
    /// 256-weight super-blocks of 4-bit codes with 6-bit sub-block scales and mins.
    Q4K,
    /// 256-weight super-blocks of 5-bit codes with 6-bit sub-block scales and mins.
    Q5K,
    /// 256-weight super-blocks of 6-bit codes with 8-bit sub-block scales.
    Q6K,
    /// Plain `f32` weights.
    F32,
}

impl WeightType {
    /// Weights per ggml block.
    pub fn block_elems(self) -> usize {
        match self {
            Self::Q4_0 | Self::Q4_1 | Self::Q5_1 | Self::Q8_0 => QK,
            Self::Q4K | Self::Q5K | Self::Q6K => QK_K,
            Self::F32 => 1,
        }
    }

    /// Bytes per ggml block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
            Self::F32 => 4,
        }
    }

    /// Short lowercase name (`q4_0`, `q4_k`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1",
            Self::Q5_1 => "q5_1",
            Self::Q8_0 => "q8_0",
            Self::Q4K => "q4_k",
            Self::Q5K => "q5_k",
            Self::Q6K => "q6_k",
            Self::F32 => "f32",
        }
    }

    /// Bytes one tile (16 rows) occupies per block along `k` once repacked.
    pub(crate) fn tile_block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => Q4_0_TB,
            Self::Q4_1 => Q4_1_TB,
            Self::Q5_1 => Q5_1_TB,
            Self::Q8_0 => Q8_0_TB,
            Self::Q4K => Q4K_TB,
            Self::Q5K => Q5K_TB,
            Self::Q6K => Q6K_TB,
            Self::F32 => TILE * 4,
        }
    }
}

impl std::fmt::Display for WeightType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One cache line; the repacked buffer is a vector of these so tiles start
/// 64-byte aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A weight matrix (`out_dim` rows of `in_dim` weights, as stored in GGUF)
/// repacked into the kernels' interleaved 16-row tile layout.
pub struct QuantMatrix {
    dtype: WeightType,
    out_dim: usize,
    in_dim: usize,
    tiles: usize,
    tile_bytes: usize,
    lines: Vec<Line>,
}

impl std::fmt::Debug for QuantMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuantMatrix")
            .field("dtype", &self.dtype)
            .field("out_dim", &self.out_dim)
            .field("in_dim", &self.in_dim)
            .finish()
    }
}

/// Bytes of a ggml Q5_0 block: f16 scale, 32 high bits, 16 bytes of low nibbles.
const Q5_0_BLOCK: usize = 22;

/// Rewrites ggml Q5_0 blocks (`w = d * (q - 16)`, `q` of 5 bits) as Q5_1
/// blocks (`w = d * q + m`) with the same scale, codes and `m = -16 d`:
/// exactly the same weight values (`-16 d` is exact in f16, and so are both
/// products in f32; only a zero's sign may differ), two bytes more per 32
/// weights, multiplied by the Q5_1 kernels on every path.
pub fn q5_0_as_q5_1(data: &[u8]) -> Result<Vec<u8>, KernelError> {
    if !data.len().is_multiple_of(Q5_0_BLOCK) {
        return Err(KernelError::UnsupportedType(format!(
            "q5_0 data of {} bytes is not a whole number of blocks",
            data.len()
        )));
    }
    let mut out = Vec::with_capacity(data.len() / Q5_0_BLOCK * 24);
    for b in data.chunks_exact(Q5_0_BLOCK) {
        let d = f16::from_le_bytes([b[0], b[1]]);
        let m = -(d * f16::from_f32(16.0));
        if m.is_infinite() && d.is_finite() {
            return Err(KernelError::UnsupportedType(format!(
                "q5_0 scale {d} is too large to rewrite exactly"
            )));
        }
        out.extend_from_slice(&b[..2]);
        out.extend_from_slice(&m.to_le_bytes());
        out.extend_from_slice(&b[2..22]);
    }
    Ok(out)
}

impl QuantMatrix {
    /// Repacks raw ggml data (`out_dim` rows of `in_dim / block_elems`
    /// blocks each, row-major, little-endian) of type `dtype`.
    ///
    /// Fails when `in_dim` is not a multiple of the block size, a dimension is
    /// zero, or `data` is not exactly the expected size.
    pub fn from_ggml(
        dtype: WeightType,
        out_dim: usize,
        in_dim: usize,
        data: &[u8],
    ) -> Result<Self, KernelError> {
        let be = dtype.block_elems();
        if out_dim == 0 || in_dim == 0 || !in_dim.is_multiple_of(be) {
            return Err(KernelError::Shape {
                dtype,
                out_dim,
                in_dim,
                block: be,
            });
        }
        let nb = in_dim / be;
        let row_bytes = nb * dtype.block_bytes();
        let expected = out_dim.checked_mul(row_bytes).ok_or(KernelError::Shape {
            dtype,
            out_dim,
            in_dim,
            block: be,
        })?;
        if data.len() != expected {
            return Err(KernelError::DataSize {
                dtype,
                expected,
                actual: data.len(),
            });
        }
        let tiles = out_dim.div_ceil(TILE);
        let tb = dtype.tile_block_bytes();
        let tile_bytes = nb * tb;
        let mut m = Self {
            dtype,
            out_dim,
            in_dim,
            tiles,
            tile_bytes,
            lines: vec![Line([0; 64]); (tiles * tile_bytes).div_ceil(64)],
        };
        let buf = m.bytes_mut();
        for t in 0..tiles {
            for b in 0..nb {
                let dst = &mut buf[t * tile_bytes + b * tb..][..tb];
                for r in 0..TILE {
                    let row = t * TILE + r;
                    if row >= out_dim {
                        break;
                    }
                    let src =
                        &data[row * row_bytes + b * dtype.block_bytes()..][..dtype.block_bytes()];
                    pack_block(dtype, src, dst, r);
                }
            }
        }
        Ok(m)
    }

    /// Repacks raw GGUF tensor data of ggml type `dtype`: Q4_0, Q4_1, Q5_1,
    /// Q8_0, Q4_K, Q5_K, Q6_K and F32 are taken as they are, and Q5_0 is
    /// rewritten losslessly as Q5_1. Other types are rejected with
    /// [`KernelError::UnsupportedType`].
    pub fn from_gguf(
        dtype: candle_core::quantized::GgmlDType,
        out_dim: usize,
        in_dim: usize,
        data: &[u8],
    ) -> Result<Self, KernelError> {
        use candle_core::quantized::GgmlDType as G;
        let wt = match dtype {
            G::Q4_0 => WeightType::Q4_0,
            G::Q4_1 => WeightType::Q4_1,
            G::Q5_1 => WeightType::Q5_1,
            G::Q8_0 => WeightType::Q8_0,
            G::Q5_0 => {
                let bytes = q5_0_as_q5_1(data)?;
                return Self::from_ggml(WeightType::Q5_1, out_dim, in_dim, &bytes);
            }
            G::Q4K => WeightType::Q4K,
            G::Q5K => WeightType::Q5K,
            G::Q6K => WeightType::Q6K,
            G::F32 => WeightType::F32,
            other => {
                return Err(KernelError::UnsupportedType(format!(
                    "{other:?} (supported: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, F32)"
                )))
            }
        };
        Self::from_ggml(wt, out_dim, in_dim, data)
    }

    /// Repacks a candle `QTensor` of shape `(out_dim, in_dim)`: the types
    /// of [`Self::from_gguf`], plus F16 and BF16 widened to F32.
    pub fn from_qtensor(t: &candle_core::quantized::QTensor) -> Result<Self, KernelError> {
        use candle_core::quantized::GgmlDType as G;
        let (out_dim, in_dim) = t.shape().dims2()?;
        if matches!(t.dtype(), G::F16 | G::BF16) {
            let v = t
                .dequantize(&candle_core::Device::Cpu)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            return Self::from_ggml(WeightType::F32, out_dim, in_dim, &bytes);
        }
        Self::from_gguf(t.dtype(), out_dim, in_dim, &t.data()?)
    }

    /// Output dimension (rows of the stored matrix).
    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// Input dimension `k` (columns of the stored matrix).
    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// The weight type.
    pub fn dtype(&self) -> WeightType {
        self.dtype
    }

    /// Bytes the weights occupy in ggml form (what one matmul must stream).
    pub fn ggml_bytes(&self) -> usize {
        self.out_dim * self.in_dim / self.dtype.block_elems() * self.dtype.block_bytes()
    }

    /// Dequantizes stored row `row` (e.g. one token's embedding) into
    /// `out[..in_dim]`, exactly as ggml would.
    ///
    /// # Panics
    /// If `row >= out_dim` or `out` is shorter than `in_dim`.
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        assert!(row < self.out_dim, "row {row} out of {}", self.out_dim);
        let out = &mut out[..self.in_dim];
        let (t, r) = (row / TILE, row % TILE);
        let tb = self.dtype.tile_block_bytes();
        let tile = self.tile(t);
        match self.dtype {
            WeightType::F32 => {
                for (k, o) in out.iter_mut().enumerate() {
                    *o = read_f32(tile, k * 64 + r * 4);
                }
            }
            WeightType::Q4_0 | WeightType::Q4_1 | WeightType::Q8_0 => {
                for (b, o) in out.chunks_exact_mut(QK).enumerate() {
                    let blk = &tile[b * tb..][..tb];
                    match self.dtype {
                        WeightType::Q4_0 => {
                            let u = unpack_q4(blk, r);
                            let d = read_f16(blk, 256 + 2 * r);
                            for (o, &u) in o.iter_mut().zip(&u) {
                                *o = d * (i32::from(u) - 8) as f32;
                            }
                        }
                        WeightType::Q4_1 => {
                            let u = unpack_q4(blk, r);
                            let d = read_f16(blk, 256 + 2 * r);
                            let m = read_f16(blk, 288 + 2 * r);
                            for (o, &u) in o.iter_mut().zip(&u) {
                                *o = f32::from(u) * d + m;
                            }
                        }
                        _ => {
                            let w = unpack_q8(blk, r);
                            let d = read_f16(blk, 512 + 2 * r);
                            for (o, &w) in o.iter_mut().zip(&w) {
                                *o = d * f32::from(w);
                            }
                        }
                    }
                }
            }
            WeightType::Q5_1 => {
                for (b, o) in out.chunks_exact_mut(QK).enumerate() {
                    let blk = &tile[b * tb..][..tb];
                    let u = unpack_q5_1(blk, r);
                    let d = read_f16(blk, Q5_1_D + 2 * r);
                    let m = read_f16(blk, Q5_1_D + 32 + 2 * r);
                    for (o, &u) in o.iter_mut().zip(&u) {
                        *o = f32::from(u) * d + m;
                    }
                }
            }
            WeightType::Q4K | WeightType::Q5K => {
                let (sc_at, min_at, d_at) = if self.dtype == WeightType::Q4K {
                    (Q4K_SC, Q4K_MIN, Q4K_D)
                } else {
                    (Q5K_SC, Q5K_MIN, Q5K_D)
                };
                for (b, o) in out.chunks_exact_mut(QK_K).enumerate() {
                    let blk = &tile[b * tb..][..tb];
                    let u = if self.dtype == WeightType::Q4K {
                        unpack_q4k(blk, r)
                    } else {
                        unpack_q5k(blk, r)
                    };
                    let d = read_f16(blk, d_at + 2 * r);
                    let dmin = read_f16(blk, d_at + 32 + 2 * r);
                    for (s, o) in o.chunks_exact_mut(32).enumerate() {
                        let sc = f32::from(blk[sc_at + s * 16 + r]);
                        let m = f32::from(blk[min_at + (s / 2) * 32 + r * 2 + s % 2]);
                        let (d1, m1) = (d * sc, dmin * m);
                        for (i, o) in o.iter_mut().enumerate() {
                            *o = d1 * f32::from(u[s * 32 + i]) - m1;
                        }
                    }
                }
            }
            WeightType::Q6K => {
                for (b, o) in out.chunks_exact_mut(QK_K).enumerate() {
                    let blk = &tile[b * tb..][..tb];
                    let u = unpack_q6k(blk, r);
                    let d = read_f16(blk, Q6K_D + 2 * r);
                    for (e, o) in o.iter_mut().enumerate() {
                        let sc = f32::from(blk[Q6K_SC + (e / 16) * 16 + r] as i8);
                        *o = d * sc * (i32::from(u[e]) - 32) as f32;
                    }
                }
            }
        }
    }

    /// Number of 16-row tiles.
    pub(crate) fn tiles(&self) -> usize {
        self.tiles
    }

    /// Blocks along `k` (32-wide, 256-wide, or `in_dim` for F32).
    pub(crate) fn blocks(&self) -> usize {
        self.in_dim / self.dtype.block_elems()
    }

    /// The repacked bytes of tile `t`.
    pub(crate) fn tile(&self, t: usize) -> &[u8] {
        &self.bytes()[t * self.tile_bytes..][..self.tile_bytes]
    }

    /// All repacked bytes.
    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `Line` is `repr(C)` around `[u8; 64]` with no padding (its
        // size equals its alignment, 64), so `lines` is `64 * len` initialised
        // bytes, borrowed immutably for `&self`'s lifetime.
        unsafe {
            std::slice::from_raw_parts(self.lines.as_ptr().cast::<u8>(), self.lines.len() * 64)
        }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, with the unique borrow of `self.lines`.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.lines.as_mut_ptr().cast::<u8>(),
                self.lines.len() * 64,
            )
        }
    }
}

/// Reads a little-endian f16 at `off` as f32.
#[inline]
pub(crate) fn read_f16(b: &[u8], off: usize) -> f32 {
    f16::from_le_bytes([b[off], b[off + 1]]).to_f32()
}

#[inline]
fn read_f32(b: &[u8], off: usize) -> f32 {
    f32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// ggml's 6-bit scale/min extraction for Q4_K (`get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Writes row `r` of a tile block from one ggml block `src`.
fn pack_block(dtype: WeightType, src: &[u8], dst: &mut [u8], r: usize) {
    match dtype {
        WeightType::Q4_0 | WeightType::Q4_1 => {
            let qs_off = if dtype == WeightType::Q4_0 { 2 } else { 4 };
            let qs = &src[qs_off..qs_off + 16];
            for q in 0..4 {
                dst[q * 64 + r * 4..][..4].copy_from_slice(&qs[4 * q..4 * q + 4]);
            }
            dst[256 + 2 * r..][..2].copy_from_slice(&src[0..2]);
            if dtype == WeightType::Q4_1 {
                dst[288 + 2 * r..][..2].copy_from_slice(&src[2..4]);
            }
        }
        WeightType::Q5_1 => {
            let qh = u32::from_le_bytes([src[4], src[5], src[6], src[7]]);
            let qs = &src[8..24];
            for q in 0..4 {
                dst[q * 64 + r * 4..][..4].copy_from_slice(&qs[4 * q..4 * q + 4]);
            }
            for i in 0..4 {
                // Code 4q + i is quartet q's lane i; its fifth bit is qh bit 4q + i.
                dst[Q5_1_H + r * 4 + i] = (0..8)
                    .map(|q| (((qh >> (4 * q + i)) & 1) as u8) << q)
                    .fold(0, |a, b| a | b);
            }
            dst[Q5_1_D + 2 * r..][..2].copy_from_slice(&src[0..2]);
            dst[Q5_1_D + 32 + 2 * r..][..2].copy_from_slice(&src[2..4]);
        }
        WeightType::Q8_0 => {
            let qs = &src[2..34];
            for q in 0..8 {
                for i in 0..4 {
                    dst[q * 64 + r * 4 + i] = qs[4 * q + i] ^ 0x80;
                }
            }
            dst[512 + 2 * r..][..2].copy_from_slice(&src[0..2]);
        }
        WeightType::Q4K => {
            let scales = &src[4..16];
            let qs = &src[16..144];
            for j in 0..4 {
                for q in 0..8 {
                    dst[(j * 8 + q) * 64 + r * 4..][..4]
                        .copy_from_slice(&qs[32 * j + 4 * q..32 * j + 4 * q + 4]);
                }
            }
            for s in 0..8 {
                let (sc, m) = scale_min_k4(s, scales);
                dst[Q4K_SC + s * 16 + r] = sc;
                dst[Q4K_MIN + (s / 2) * 32 + r * 2 + s % 2] = m;
            }
            dst[Q4K_D + 2 * r..][..2].copy_from_slice(&src[0..2]);
            dst[Q4K_D + 32 + 2 * r..][..2].copy_from_slice(&src[2..4]);
        }
        WeightType::Q5K => {
            let scales = &src[4..16];
            let (qh, qs) = (&src[16..48], &src[48..176]);
            for j in 0..4 {
                for q in 0..8 {
                    dst[(j * 8 + q) * 64 + r * 4..][..4]
                        .copy_from_slice(&qs[32 * j + 4 * q..32 * j + 4 * q + 4]);
                }
            }
            // Element l of sub-block s has its fifth bit in qh[l], bit s.
            for s in 0..8 {
                for i in 0..4 {
                    dst[Q5K_H + s * 64 + r * 4 + i] = (0..8)
                        .map(|q| ((qh[4 * q + i] >> s) & 1) << q)
                        .fold(0, |a, b| a | b);
                }
            }
            for s in 0..8 {
                let (sc, m) = scale_min_k4(s, scales);
                dst[Q5K_SC + s * 16 + r] = sc;
                dst[Q5K_MIN + (s / 2) * 32 + r * 2 + s % 2] = m;
            }
            dst[Q5K_D + 2 * r..][..2].copy_from_slice(&src[0..2]);
            dst[Q5K_D + 32 + 2 * r..][..2].copy_from_slice(&src[2..4]);
        }
        WeightType::Q6K => {
            let (ql, qh) = (&src[0..128], &src[128..192]);
            let mut u = [0u8; QK_K];
            for half in 0..2 {
                let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
                let u = &mut u[128 * half..];
                for l in 0..32 {
                    u[l] = (ql[l] & 0xF) | ((qh[l] & 3) << 4);
                    u[l + 32] = (ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4);
                    u[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                    u[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                }
            }
            for q in 0..32 {
                for i in 0..4 {
                    let e = 4 * q + i;
                    dst[q * 64 + r * 4 + i] = (u[e] & 0xF) | ((u[128 + e] & 0xF) << 4);
                }
            }
            for q in 0..16 {
                for i in 0..4 {
                    let e = 4 * q + i;
                    dst[Q6K_H + q * 64 + r * 4 + i] = (u[e] >> 4)
                        | ((u[64 + e] >> 4) << 2)
                        | ((u[128 + e] >> 4) << 4)
                        | ((u[192 + e] >> 4) << 6);
                }
            }
            for s in 0..16 {
                dst[Q6K_SC + s * 16 + r] = src[192 + s];
            }
            dst[Q6K_D + 2 * r..][..2].copy_from_slice(&src[208..210]);
        }
        WeightType::F32 => {
            // One "block" is one k; the tile stores `[k][row]`.
            dst[r * 4..r * 4 + 4].copy_from_slice(&src[0..4]);
        }
    }
}

/// Row `r`'s 32 unsigned 4-bit codes of a Q4_0/Q4_1 tile block, in k order.
#[inline]
pub(crate) fn unpack_q4(blk: &[u8], r: usize) -> [u8; QK] {
    let mut u = [0u8; QK];
    for q in 0..4 {
        for i in 0..4 {
            let v = blk[q * 64 + r * 4 + i];
            u[4 * q + i] = v & 0xF;
            u[16 + 4 * q + i] = v >> 4;
        }
    }
    u
}

/// Row `r`'s 32 unsigned 5-bit codes of a Q5_1 tile block, in k order.
#[inline]
pub(crate) fn unpack_q5_1(blk: &[u8], r: usize) -> [u8; QK] {
    let mut u = unpack_q4(blk, r);
    for (k, u) in u.iter_mut().enumerate() {
        let (q, i) = (k / 4, k % 4);
        *u |= ((blk[Q5_1_H + r * 4 + i] >> q) & 1) << 4;
    }
    u
}

/// Row `r`'s 32 signed weights of a Q8_0 tile block, in k order.
#[inline]
pub(crate) fn unpack_q8(blk: &[u8], r: usize) -> [i8; QK] {
    let mut w = [0i8; QK];
    for q in 0..8 {
        for i in 0..4 {
            w[4 * q + i] = (blk[q * 64 + r * 4 + i] ^ 0x80) as i8;
        }
    }
    w
}

/// Row `r`'s 256 unsigned 4-bit codes of a Q4_K tile block, in k order.
#[inline]
pub(crate) fn unpack_q4k(blk: &[u8], r: usize) -> [u8; QK_K] {
    let mut u = [0u8; QK_K];
    for j in 0..4 {
        for q in 0..8 {
            for i in 0..4 {
                let v = blk[(j * 8 + q) * 64 + r * 4 + i];
                u[64 * j + 4 * q + i] = v & 0xF;
                u[64 * j + 32 + 4 * q + i] = v >> 4;
            }
        }
    }
    u
}

/// Row `r`'s 256 unsigned 5-bit codes of a Q5_K tile block, in k order.
#[inline]
pub(crate) fn unpack_q5k(blk: &[u8], r: usize) -> [u8; QK_K] {
    let mut u = unpack_q4k(blk, r);
    for (k, u) in u.iter_mut().enumerate() {
        let (s, q, i) = (k / 32, (k % 32) / 4, k % 4);
        *u |= ((blk[Q5K_H + s * 64 + r * 4 + i] >> q) & 1) << 4;
    }
    u
}

/// Row `r`'s 256 unsigned 6-bit codes (`q + 32`) of a Q6_K tile block.
#[inline]
pub(crate) fn unpack_q6k(blk: &[u8], r: usize) -> [u8; QK_K] {
    let mut u = [0u8; QK_K];
    for q in 0..16 {
        for i in 0..4 {
            let e = 4 * q + i;
            let l0 = blk[q * 64 + r * 4 + i];
            let l1 = blk[(q + 16) * 64 + r * 4 + i];
            let h = blk[Q6K_H + q * 64 + r * 4 + i];
            u[e] = (l0 & 0xF) | ((h & 3) << 4);
            u[64 + e] = (l1 & 0xF) | (((h >> 2) & 3) << 4);
            u[128 + e] = (l0 >> 4) | (((h >> 4) & 3) << 4);
            u[192 + e] = (l1 >> 4) | (((h >> 6) & 3) << 4);
        }
    }
    u
}
