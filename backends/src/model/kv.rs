//! Per-sequence key/value cache, stored as f16 (half the memory of f32, as
//! llama.cpp does by default).

use half::f16;

use super::LlamaConfig;

/// One sequence's keys and values for every layer, sized once for the
/// sequence's whole token budget and written in place as it grows.
pub struct KvCache {
    capacity: usize,
    kv_dim: usize,
    /// `[layer][position][kv_dim]`.
    pub(super) k: Vec<f16>,
    /// `[layer][position][kv_dim]`.
    pub(super) v: Vec<f16>,
}

impl KvCache {
    /// A cache for up to `capacity` positions.
    pub fn new(cfg: &LlamaConfig, capacity: usize) -> Self {
        let len = cfg.n_layer * capacity * cfg.kv_dim();
        Self {
            capacity,
            kv_dim: cfg.kv_dim(),
            k: vec![f16::ZERO; len],
            v: vec![f16::ZERO; len],
        }
    }

    /// Positions this cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Stores one position's keys and values (converted to f16).
    pub(super) fn write(&mut self, layer: usize, pos: usize, k: &[f32], v: &[f32]) {
        use half::slice::HalfFloatSliceExt;
        let off = self.offset(layer, pos);
        self.k[off..off + self.kv_dim].convert_from_f32_slice(k);
        self.v[off..off + self.kv_dim].convert_from_f32_slice(v);
    }

    /// Index of `(layer, pos)`'s first value in `k` and `v`.
    pub(super) fn offset(&self, layer: usize, pos: usize) -> usize {
        (layer * self.capacity + pos) * self.kv_dim
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
        let mut c = KvCache::new(&cfg(), 3);
        c.write(1, 2, &[0.5, -1.25, 3.0, 1e-3], &[7.0, 8.0, 9.0, 10.0]);
        let off = c.offset(1, 2);
        let k: Vec<f32> = c.k[off..off + 4].iter().map(|x| x.to_f32()).collect();
        assert_eq!(&k[..3], &[0.5, -1.25, 3.0]);
        assert!((k[3] - 1e-3).abs() < 1e-6);
        assert_eq!(c.v[off + 3].to_f32(), 10.0);
        assert!(c.k[..off].iter().all(|x| x.to_f32() == 0.0));
        assert_eq!(cfg().kv_bytes_per_token(), 2 * 2 * 4 * 2);
    }
}
