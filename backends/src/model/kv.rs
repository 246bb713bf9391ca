//! The paged key/value cache of one model replica: a pool of fixed-size
//! blocks of [`BLOCK`] positions, stored as f16 (half the memory of f32, as
//! llama.cpp does by default). Which sequence owns which block is the
//! scheduler's business ([`BlockPool`](crate::scheduler::BlockPool)); a
//! sequence reaches its positions through its block table.
//!
//! Within a block, keys are stored transposed (`[kv_dim][slot]`: the 16
//! positions of one key dimension are contiguous) so that attention scores
//! a block's 16 keys in 16 vector lanes without a transpose; values are
//! stored by position (`[slot][kv_dim]`). The pool is allocated zeroed by
//! the operating system, which commits memory only for blocks written.

use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

use super::ModelConfig;
use crate::scheduler::BlockId;

/// Token positions per block.
pub const BLOCK: usize = 16;

/// Keys and values of every layer for `num_blocks` blocks of [`BLOCK`] positions.
pub struct KvPool {
    num_blocks: usize,
    kv_dim: usize,
    /// f16 bits, `[layer][block][kv_dim][slot]` (integers, so that the
    /// allocation is zeroed by the OS rather than written element by element).
    k: Vec<u16>,
    /// f16 bits, `[layer][block][slot][kv_dim]`.
    v: Vec<u16>,
}

impl KvPool {
    /// A pool of `num_blocks` blocks for `cfg`'s layers.
    pub fn new(cfg: &ModelConfig, num_blocks: usize) -> Self {
        let len = cfg.n_layer * num_blocks * BLOCK * cfg.kv_dim();
        Self {
            num_blocks,
            kv_dim: cfg.kv_dim(),
            k: vec![0; len],
            v: vec![0; len],
        }
    }

    /// Positions per block.
    pub fn block_size(&self) -> usize {
        BLOCK
    }

    /// Blocks in the pool.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// The keys of one block of one layer, `[kv_dim][slot]`.
    pub(super) fn block_keys(&self, layer: usize, block: BlockId) -> &[f16] {
        let base = self.base(layer, block);
        self.k[base..base + BLOCK * self.kv_dim].reinterpret_cast()
    }

    /// The values of one block of one layer, `[slot][kv_dim]`.
    pub(super) fn block_values(&self, layer: usize, block: BlockId) -> &[f16] {
        let base = self.base(layer, block);
        self.v[base..base + BLOCK * self.kv_dim].reinterpret_cast()
    }

    /// Stores one position's keys and values (converted to f16) in `block` at `slot`.
    pub(super) fn write(
        &mut self,
        layer: usize,
        block: BlockId,
        slot: usize,
        k: &[f32],
        v: &[f32],
    ) {
        let base = self.base(layer, block);
        let n = self.kv_dim;
        let keys = &mut self.k[base..base + BLOCK * n];
        for (e, &x) in k.iter().enumerate().take(n) {
            keys[e * BLOCK + slot] = f16::from_f32(x).to_bits();
        }
        let at = base + slot * n;
        self.v.reinterpret_cast_mut::<f16>()[at..at + n].convert_from_f32_slice(&v[..n]);
    }

    /// Index of `(layer, block)`'s first element in `k` and `v`.
    fn base(&self, layer: usize, block: BlockId) -> usize {
        (layer * self.num_blocks + block as usize) * BLOCK * self.kv_dim
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ModelConfig {
        ModelConfig {
            arch: &crate::model::ARCHITECTURES[0],
            window: None,
            n_layer: 2,
            n_embd: 8,
            n_ff: 16,
            n_head: 2,
            n_kv_head: 1,
            head_dim: 4,
            rope_base: 10_000.0,
            rms_eps: 1e-5,
            context_length: 16,
            vocab_size: 10,
        }
    }

    #[test]
    fn written_positions_read_back_at_f16_precision_without_touching_others() {
        let mut c = KvPool::new(&cfg(), 3);
        c.write(1, 2, 3, &[0.5, -1.25, 3.0, 1e-3], &[7.0, 8.0, 9.0, 10.0]);
        let keys = c.block_keys(1, 2);
        // Transposed: dimension e of slot 3 is at e * BLOCK + 3.
        let k: Vec<f32> = (0..4).map(|e| keys[e * BLOCK + 3].to_f32()).collect();
        assert_eq!(&k[..3], &[0.5, -1.25, 3.0]);
        assert!((k[3] - 1e-3).abs() < 1e-6);
        let values = c.block_values(1, 2);
        assert_eq!(values[3 * 4 + 3].to_f32(), 10.0);
        let written = [3, BLOCK + 3, 2 * BLOCK + 3, 3 * BLOCK + 3];
        for (i, x) in keys.iter().enumerate() {
            assert_eq!(x.to_f32() != 0.0, written.contains(&i), "key element {i}");
        }
        assert!(c.block_keys(1, 1).iter().all(|x| x.to_f32() == 0.0));
        assert!(c.block_values(0, 2).iter().all(|x| x.to_f32() == 0.0));
        assert_eq!(cfg().kv_bytes_per_token(), 2 * 2 * 4 * 2);
    }
}
