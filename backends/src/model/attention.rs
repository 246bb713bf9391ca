//! Causal self-attention of each token over its own sequence's KV cache,
//! split by tokens across the compute pool. Every token's arithmetic is the
//! same whatever the split, so results do not depend on batch or thread count.

use crate::kernels::ComputePool;

use super::ops::dot;
use super::{KvCache, LlamaConfig};

/// One token of the step: which sequence's cache it reads and its position.
#[derive(Debug, Clone, Copy)]
pub(super) struct TokenSlot {
    /// Index of the sequence's cache in the `caches` slice.
    pub cache: usize,
    /// Position of the token; it attends to positions `0..=pos`.
    pub pos: usize,
}

/// Pointer to a buffer whose disjoint parts are written by different threads.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: each pool part writes only its own rows of `att` and its own slice
// of `scores` (see `attend`), so no element is written by two threads.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The pointer; a method so closures capture the whole `Sync` wrapper.
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// Writes `att[t]`, the attention output of token `t` (all heads), for every token.
#[allow(clippy::too_many_arguments)]
pub(super) fn attend(
    pool: &ComputePool,
    cfg: &LlamaConfig,
    layer: usize,
    caches: &[&KvCache],
    tokens: &[TokenSlot],
    q: &[f32],
    att: &mut [f32],
    scores: &mut Vec<f32>,
) {
    let d = cfg.n_embd;
    let longest = tokens.iter().map(|t| t.pos + 1).max().unwrap_or(0);
    let work: usize = tokens.iter().map(|t| t.pos + 1).sum::<usize>() * cfg.n_head;
    // Waking another thread costs a few microseconds; only split real work.
    let parts = pool.threads().min(tokens.len()).min(work / 4096 + 1).max(1);
    if scores.len() < parts * longest {
        scores.resize(parts * longest, 0.0);
    }
    let att_out = SharedOut(att.as_mut_ptr());
    let scores_out = SharedOut(scores.as_mut_ptr());
    let per_part = tokens.len().div_ceil(parts);
    let run_part = |part: usize| {
        let first = part * per_part;
        let last = (first + per_part).min(tokens.len());
        // SAFETY: part `part` owns rows `first..last` of `att` and the
        // `part * longest ..` slice of `scores`; both buffers outlive `run`.
        let sc = unsafe { std::slice::from_raw_parts_mut(scores_out.at(part * longest), longest) };
        for (t, slot) in tokens.iter().enumerate().take(last).skip(first) {
            let out = unsafe { std::slice::from_raw_parts_mut(att_out.at(t * d), d) };
            token_attention(
                cfg,
                layer,
                caches[slot.cache],
                slot.pos,
                &q[t * d..(t + 1) * d],
                out,
                sc,
            );
        }
    };
    if parts == 1 {
        run_part(0);
    } else {
        pool.run(parts, &run_part);
    }
}

fn token_attention(
    cfg: &LlamaConfig,
    layer: usize,
    cache: &KvCache,
    pos: usize,
    q: &[f32],
    out: &mut [f32],
    scores: &mut [f32],
) {
    let (hd, kv) = (cfg.head_dim, cfg.kv_dim());
    let group = cfg.n_head / cfg.n_kv_head;
    let scale = 1.0 / (hd as f32).sqrt();
    let base = cache.offset(layer, 0);
    let n_pos = pos + 1;
    for h in 0..cfg.n_head {
        let g = h / group;
        let qh = &q[h * hd..(h + 1) * hd];
        let scores = &mut scores[..n_pos];
        let mut max = f32::NEG_INFINITY;
        for (p, sc) in scores.iter_mut().enumerate() {
            let k = &cache.k[base + p * kv + g * hd..base + p * kv + (g + 1) * hd];
            *sc = dot(qh, k) * scale;
            max = max.max(*sc);
        }
        let mut sum = 0.0;
        for sc in scores.iter_mut() {
            *sc = (*sc - max).exp();
            sum += *sc;
        }
        let oh = &mut out[h * hd..(h + 1) * hd];
        oh.fill(0.0);
        for (p, sc) in scores.iter().enumerate() {
            let w = sc / sum;
            let v = &cache.v[base + p * kv + g * hd..base + p * kv + (g + 1) * hd];
            for (o, x) in oh.iter_mut().zip(v) {
                *o += w * x;
            }
        }
    }
}
