//! The paged key/value cache of one model replica: a pool of fixed-size
//! blocks, stored as f16 (half the memory of f32, as llama.cpp does by
//! default). Which sequence owns which block is the scheduler's business
//! ([`BlockPool`](crate::scheduler::BlockPool)); a sequence reaches its
//! positions through its block table.
//!
//! The pool is allocated zeroed once, so the operating system commits
//! memory only for blocks actually written.

use half::f16;
use half::slice::{HalfBitsSliceExt, HalfFloatSliceExt};

use super::LlamaConfig;
use crate::scheduler::BlockId;

/// Keys and values of every layer for `num_blocks` blocks of `block_size` positions.
pub struct KvPool {
    block_size: usize,
    num_blocks: usize,
    kv_dim: usize,
    /// f16 bits, `[layer][block][slot][kv_dim]` (integers, so that the
    /// allocation is zeroed by the OS rather than written element by element).
    k: Vec<u16>,
    /// f16 bits, `[layer][block][slot][kv_dim]`.
    v: Vec<u16>,
}

impl KvPool {
    /// A pool of `num_blocks` blocks of `block_size` positions for `cfg`'s layers.
    pub fn new(cfg: &LlamaConfig, block_size: usize, num_blocks: usize) -> Self {
        let len = cfg.n_layer * num_blocks * block_size * cfg.kv_dim();
        Self {
            block_size,
            num_blocks,
            kv_dim: cfg.kv_dim(),
            k: vec![0; len],
            v: vec![0; len],
        }
    }

    /// All keys.
    pub(super) fn keys(&self) -> &[f16] {
        self.k.reinterpret_cast()
    }

    /// All values.
    pub(super) fn values(&self) -> &[f16] {
        self.v.reinterpret_cast()
    }

    /// Positions per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks in the pool.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
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
        let off = self.offset(layer, block, slot);
        let n = self.kv_dim;
        self.k.reinterpret_cast_mut::<f16>()[off..off + n].convert_from_f32_slice(k);
        self.v.reinterpret_cast_mut::<f16>()[off..off + n].convert_from_f32_slice(v);
    }

    /// Index of `(layer, block, slot)`'s first value in `k` and `v`; the
    /// slots of one block follow each other.
    pub(super) fn offset(&self, layer: usize, block: BlockId, slot: usize) -> usize {
        ((layer * self.num_blocks + block as usize) * self.block_size + slot) * self.kv_dim
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> LlamaConfig {
        LlamaConfig {
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
        let mut c = KvPool::new(&cfg(), 4, 3);
        c.write(1, 2, 3, &[0.5, -1.25, 3.0, 1e-3], &[7.0, 8.0, 9.0, 10.0]);
        let off = c.offset(1, 2, 3);
        let k: Vec<f32> = c.keys()[off..off + 4].iter().map(|x| x.to_f32()).collect();
        assert_eq!(&k[..3], &[0.5, -1.25, 3.0]);
        assert!((k[3] - 1e-3).abs() < 1e-6);
        assert_eq!(c.values()[off + 3].to_f32(), 10.0);
        assert!(c.keys()[..off].iter().all(|x| x.to_f32() == 0.0));
        assert_eq!(off + 4, c.keys().len());
        assert_eq!(cfg().kv_bytes_per_token(), 2 * 2 * 4 * 2);
    }
}
