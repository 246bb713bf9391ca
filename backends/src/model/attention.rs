//! Causal self-attention of each token over its own sequence's positions
//! in the paged KV cache (read through the sequence's block table), split
//! by tokens across the compute pool. Every token's arithmetic is the same
//! whatever the split or the blocks, so results do not depend on batch,
//! thread count or where a sequence's blocks lie.

use crate::kernels::{ComputePool, F16Kernels};
use crate::scheduler::BlockId;

use super::{BatchItem, KvPool, LlamaConfig};

/// One token of the step: which sequence's block table it reads and its position.
#[derive(Debug, Clone, Copy)]
pub(super) struct TokenSlot {
    /// Index of the token's sequence in the step's items.
    pub seq: usize,
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

/// Where one sequence's keys and values of one layer are.
#[derive(Clone, Copy)]
struct Positions<'a> {
    kv: &'a KvPool,
    layer: usize,
    table: &'a [BlockId],
}

/// Scratch floats one pool part needs for tokens attending to up to `longest` positions.
fn part_scratch(cfg: &LlamaConfig, longest: usize) -> usize {
    cfg.n_head * longest
}

/// Writes `att[t]`, the attention output of token `t` (all heads), for every token.
#[allow(clippy::too_many_arguments)]
pub(super) fn attend(
    pool: &ComputePool,
    cfg: &LlamaConfig,
    layer: usize,
    kv: &KvPool,
    items: &[BatchItem<'_>],
    tokens: &[TokenSlot],
    q: &[f32],
    att: &mut [f32],
    scratch: &mut Vec<f32>,
) {
    let d = cfg.n_embd;
    let longest = tokens.iter().map(|t| t.pos + 1).max().unwrap_or(0);
    let work: usize = tokens.iter().map(|t| t.pos + 1).sum::<usize>() * cfg.n_head;
    // Waking another thread costs a few microseconds; only split real work.
    let parts = pool.threads().min(tokens.len()).min(work / 4096 + 1).max(1);
    let per_scratch = part_scratch(cfg, longest);
    let f16k = F16Kernels::detect();
    if scratch.len() < parts * per_scratch {
        scratch.resize(parts * per_scratch, 0.0);
    }
    let att_out = SharedOut(att.as_mut_ptr());
    let scratch_out = SharedOut(scratch.as_mut_ptr());
    let per_part = tokens.len().div_ceil(parts);
    let run_part = |part: usize| {
        let first = part * per_part;
        let last = (first + per_part).min(tokens.len());
        // SAFETY: part `part` owns rows `first..last` of `att` and the
        // `part * per_scratch ..` slice of `scratch`; both outlive `run`.
        let sc = unsafe {
            std::slice::from_raw_parts_mut(scratch_out.at(part * per_scratch), per_scratch)
        };
        for (t, slot) in tokens.iter().enumerate().take(last).skip(first) {
            let out = unsafe { std::slice::from_raw_parts_mut(att_out.at(t * d), d) };
            let positions = Positions {
                kv,
                layer,
                table: items[slot.seq].blocks,
            };
            token_attention(
                cfg,
                f16k,
                &positions,
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

/// Attention of one token (all heads) over positions `0..=pos`, block by
/// block, reading the f16 keys and values in place.
fn token_attention(
    cfg: &LlamaConfig,
    f16k: F16Kernels,
    positions: &Positions<'_>,
    pos: usize,
    q: &[f32],
    out: &mut [f32],
    scores: &mut [f32],
) {
    let (hd, kvd, n_head) = (cfg.head_dim, cfg.kv_dim(), cfg.n_head);
    let group = n_head / cfg.n_kv_head;
    let scale = 1.0 / (hd as f32).sqrt();
    let n_pos = pos + 1;
    let Positions { kv, layer, table } = *positions;
    let (keys, values) = (kv.keys(), kv.values());
    let bs = kv.block_size();
    let scores = &mut scores[..n_head * n_pos];
    for (b, &block) in table.iter().enumerate().take(n_pos.div_ceil(bs)) {
        let first = b * bs;
        let base = kv.offset(layer, block, 0);
        for s in 0..bs.min(n_pos - first) {
            let row = &keys[base + s * kvd..base + (s + 1) * kvd];
            for h in 0..n_head {
                let g = h / group;
                scores[h * n_pos + first + s] =
                    (f16k.dot)(&q[h * hd..(h + 1) * hd], &row[g * hd..(g + 1) * hd]) * scale;
            }
        }
    }
    for sc in scores.chunks_exact_mut(n_pos) {
        let max = sc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for v in sc.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        for v in sc.iter_mut() {
            *v /= sum;
        }
    }
    out.fill(0.0);
    for (b, &block) in table.iter().enumerate().take(n_pos.div_ceil(bs)) {
        let first = b * bs;
        let base = kv.offset(layer, block, 0);
        for s in 0..bs.min(n_pos - first) {
            let row = &values[base + s * kvd..base + (s + 1) * kvd];
            for h in 0..n_head {
                let g = h / group;
                let w = scores[h * n_pos + first + s];
                (f16k.axpy)(
                    &mut out[h * hd..(h + 1) * hd],
                    w,
                    &row[g * hd..(g + 1) * hd],
                );
            }
        }
    }
}
