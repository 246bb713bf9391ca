//! Per-sequence key/value cache.

use super::LlamaConfig;

/// One sequence's keys and values for every layer, sized once for the
/// sequence's whole token budget and written in place as it grows.
pub struct KvCache {
    capacity: usize,
    kv_dim: usize,
    /// `[layer][position][kv_dim]`.
    pub(super) k: Vec<f32>,
    /// `[layer][position][kv_dim]`.
    pub(super) v: Vec<f32>,
}

impl KvCache {
    /// A cache for up to `capacity` positions.
    pub fn new(cfg: &LlamaConfig, capacity: usize) -> Self {
        let len = cfg.n_layer * capacity * cfg.kv_dim();
        Self {
            capacity,
            kv_dim: cfg.kv_dim(),
            k: vec![0.0; len],
            v: vec![0.0; len],
        }
    }

    /// Positions this cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Index of `(layer, pos)`'s first value in `k` and `v`.
    pub(super) fn offset(&self, layer: usize, pos: usize) -> usize {
        (layer * self.capacity + pos) * self.kv_dim
    }
}
