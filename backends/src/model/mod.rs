//! A decoder-only transformer (llama, qwen2, gemma3: see [`ARCHITECTURES`]) whose forward pass runs a whole batch of
//! sequences at once (continuous batching), on our own quantized kernels.
//!
//! Every projection and MLP matmul runs once over the tokens of all sequences
//! in the step (weights are read once per step, whatever the batch); attention
//! runs per sequence over its positions in the paged [`KvPool`], reached
//! through the sequence's block table.

mod attention;
mod config;
mod kv;
mod ops;

use std::path::Path;

pub use config::{
    supported_architectures, Activation, Architecture, ModelConfig, RopeLayout, SlidingWindow,
    ARCHITECTURES,
};
pub use kv::KvPool;

use crate::gguf::{GgufError, GgufFile};
use crate::kernels::{
    matmul, matmul_q, quantize_activations, ComputePool, KernelError, QuantMatrix,
    QuantizedActivations,
};
use crate::scheduler::BlockId;
use attention::{attend, AttendLayer, TokenSlot};
use ops::{add_in_place, add_row_bias, gated_activation, rms_norm, rms_norm_in_place, rope};

/// Why the model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file was refused.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// A weight matrix cannot be used by the kernels.
    #[error("tensor {name}: {source}")]
    Weight {
        /// Tensor name.
        name: String,
        /// Why.
        source: KernelError,
    },
    /// The batch asked for something the model cannot do.
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
}

/// Reads a `rows x cols` weight matrix into the kernels' layout.
fn matrix(
    file: &GgufFile,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<QuantMatrix, ModelError> {
    let (dtype, bytes) = file.tensor_data(name, &[rows, cols])?;
    let m =
        QuantMatrix::from_gguf(dtype, rows, cols, bytes).map_err(|source| ModelError::Weight {
            name: name.to_string(),
            source,
        })?;
    file.release(name);
    Ok(m)
}

/// Per-row biases of the Q, K and V projections (architectures with `qkv_bias`).
struct QkvBias {
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

/// Per-head RMSNorm weights of queries and keys (architectures with `qk_norm`).
struct QkNorm {
    q: Vec<f32>,
    k: Vec<f32>,
}

/// RMSNorm weights of the attention and MLP outputs (architectures with `post_norms`).
struct PostNorms {
    attn: Vec<f32>,
    ffn: Vec<f32>,
}

struct Block {
    attn_norm: Vec<f32>,
    wq: QuantMatrix,
    wk: QuantMatrix,
    wv: QuantMatrix,
    bias: Option<QkvBias>,
    qk_norm: Option<QkNorm>,
    wo: QuantMatrix,
    post: Option<PostNorms>,
    ffn_norm: Vec<f32>,
    w_gate: QuantMatrix,
    w_up: QuantMatrix,
    w_down: QuantMatrix,
}

/// One sequence's share of a batched forward pass.
pub struct BatchItem<'a> {
    /// The tokens to process (a prompt chunk, or the one token just sampled).
    pub tokens: &'a [u32],
    /// Position of `tokens[0]` in the sequence.
    pub start_pos: usize,
    /// The sequence's block table: position `p` lives in block
    /// `blocks[p / block_size]`. Positions `0..start_pos` must already be
    /// written; the blocks for the new tokens must not be shared.
    pub blocks: &'a [BlockId],
    /// Whether to compute logits for the last token.
    pub want_logits: bool,
}

/// Buffers reused from step to step, so a forward pass allocates nothing once warm.
#[derive(Default)]
pub struct Scratch {
    x: Vec<f32>,
    xn: Vec<f32>,
    xq: QuantizedActivations,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    tmp: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    scores: Vec<f32>,
    last: Vec<f32>,
    slots: Vec<TokenSlot>,
    /// Per RoPE base: cosines and sines, `head_dim / 2` per token of the step.
    rope: Vec<(Vec<f32>, Vec<f32>)>,
}

fn ensure(buf: &mut Vec<f32>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
}

/// Matmuls of several matrices that read the same input quantize it once.
fn project(
    pool: &ComputePool,
    w: &QuantMatrix,
    x: &[f32],
    rows: usize,
    xq: &mut QuantizedActivations,
    fresh: &mut bool,
    out: &mut [f32],
) {
    if *fresh || !xq.serves(w.dtype()) {
        quantize_activations(x, rows, w.in_dim(), w.dtype(), xq);
        *fresh = false;
    }
    matmul_q(pool, w, xq, out);
}

/// A loaded decoder-only transformer.
pub struct Transformer {
    cfg: ModelConfig,
    pool: ComputePool,
    /// The token embedding table, kept quantized; rows are dequantized on lookup.
    embedding: QuantMatrix,
    blocks: Vec<Block>,
    norm: Vec<f32>,
    /// The output head, or `None` when it is tied to the embedding table.
    output: Option<QuantMatrix>,
    /// RoPE frequencies (`head_dim / 2` each): `[0]` for global layers,
    /// `[1]` for sliding-window layers when their base differs.
    rope_freqs: Vec<Vec<f32>>,
}

impl Transformer {
    /// Loads the weights of an opened GGUF file; matmuls run on `threads` threads.
    pub fn load(file: &GgufFile, threads: usize) -> Result<Self, ModelError> {
        let cfg = ModelConfig::from_gguf(file)?;
        let (d, qd, kv, ff, hd) = (
            cfg.n_embd,
            cfg.q_dim(),
            cfg.kv_dim(),
            cfg.n_ff,
            cfg.head_dim,
        );
        let embedding = matrix(file, "token_embd.weight", cfg.vocab_size, d)?;
        let output = if file.has_tensor("output.weight") {
            Some(matrix(file, "output.weight", cfg.vocab_size, d)?)
        } else {
            None
        };
        let mut blocks = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = |s: &str| format!("blk.{i}.{s}.weight");
            let bias = |s: &str| {
                file.vector(
                    &format!("blk.{i}.{s}.bias"),
                    if s == "attn_q" { qd } else { kv },
                )
            };
            let bias = if cfg.arch.qkv_bias {
                Some(QkvBias {
                    q: bias("attn_q")?,
                    k: bias("attn_k")?,
                    v: bias("attn_v")?,
                })
            } else {
                None
            };
            let qk_norm = if cfg.arch.qk_norm {
                Some(QkNorm {
                    q: file.vector(&p("attn_q_norm"), hd)?,
                    k: file.vector(&p("attn_k_norm"), hd)?,
                })
            } else {
                None
            };
            let post = if cfg.arch.post_norms {
                Some(PostNorms {
                    attn: file.vector(&p("post_attention_norm"), d)?,
                    ffn: file.vector(&p("post_ffw_norm"), d)?,
                })
            } else {
                None
            };
            blocks.push(Block {
                attn_norm: file.vector(&p("attn_norm"), d)?,
                wq: matrix(file, &p("attn_q"), qd, d)?,
                wk: matrix(file, &p("attn_k"), kv, d)?,
                wv: matrix(file, &p("attn_v"), kv, d)?,
                bias,
                qk_norm,
                wo: matrix(file, &p("attn_output"), d, qd)?,
                post,
                ffn_norm: file.vector(&p("ffn_norm"), d)?,
                w_gate: matrix(file, &p("ffn_gate"), ff, d)?,
                w_up: matrix(file, &p("ffn_up"), ff, d)?,
                w_down: matrix(file, &p("ffn_down"), d, ff)?,
            });
        }
        let norm = file.vector("output_norm.weight", d)?;
        let freqs = |base: f32| -> Vec<f32> {
            (0..hd / 2)
                .map(|i| 1.0 / base.powf(2.0 * i as f32 / hd as f32))
                .collect()
        };
        let mut rope_freqs = vec![freqs(cfg.rope_base)];
        if let Some(sw) = cfg.arch.sliding_window {
            rope_freqs.push(freqs(sw.rope_base));
        }
        Ok(Self {
            cfg,
            pool: ComputePool::new(threads.max(1)),
            embedding,
            blocks,
            norm,
            output,
            rope_freqs,
        })
    }

    /// Opens and loads a GGUF file in one go.
    pub fn from_path(path: &Path, threads: usize) -> Result<Self, ModelError> {
        Self::load(&GgufFile::open(path)?, threads)
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.cfg
    }

    /// Threads the matmuls run on.
    pub fn threads(&self) -> usize {
        self.pool.threads()
    }

    /// A KV pool for this model sized to `budget_bytes` (at least one block).
    pub fn kv_pool(&self, budget_bytes: usize) -> KvPool {
        let per_block = self.cfg.kv_bytes_per_token() * kv::BLOCK;
        KvPool::new(&self.cfg, (budget_bytes / per_block).max(1))
    }

    /// Runs the transformer blocks over all items, writing their keys and
    /// values into `pool_kv`; the final hidden states are left in `scratch.x`.
    fn layers(
        &self,
        items: &[BatchItem<'_>],
        pool_kv: &mut KvPool,
        scratch: &mut Scratch,
    ) -> Result<(), ModelError> {
        let cfg = &self.cfg;
        let (d, kvd, ff, hd) = (cfg.n_embd, cfg.kv_dim(), cfg.n_ff, cfg.head_dim);
        let pool = &self.pool;
        let s = scratch;
        s.slots.clear();
        let bs = pool_kv.block_size();
        for (i, item) in items.iter().enumerate() {
            let end = item.start_pos + item.tokens.len();
            let capacity = item.blocks.len() * bs;
            if item.tokens.is_empty() || end > capacity || end > cfg.context_length {
                return Err(ModelError::InvalidBatch(format!(
                    "{} tokens at position {} do not fit {} blocks of {bs}",
                    item.tokens.len(),
                    item.start_pos,
                    item.blocks.len()
                )));
            }
            if let Some(bad) = item
                .blocks
                .iter()
                .find(|b| **b as usize >= pool_kv.num_blocks())
            {
                return Err(ModelError::InvalidBatch(format!(
                    "block {bad} is outside the pool of {}",
                    pool_kv.num_blocks()
                )));
            }
            if let Some(bad) = item.tokens.iter().find(|t| **t as usize >= cfg.vocab_size) {
                return Err(ModelError::InvalidBatch(format!(
                    "token id {bad} is outside the vocabulary"
                )));
            }
            s.slots
                .extend((item.start_pos..end).map(|pos| TokenSlot { seq: i, pos }));
        }
        let t = s.slots.len();
        let qd = cfg.q_dim();
        for buf in [&mut s.x, &mut s.xn, &mut s.tmp] {
            ensure(buf, t * d);
        }
        ensure(&mut s.q, t * qd);
        ensure(&mut s.att, t * qd);
        ensure(&mut s.k, t * kvd);
        ensure(&mut s.v, t * kvd);
        ensure(&mut s.gate, t * ff);
        ensure(&mut s.up, t * ff);

        let mut row = 0;
        for item in items.iter() {
            for &tok in item.tokens {
                self.embedding
                    .dequantize_row(tok as usize, &mut s.x[row * d..(row + 1) * d]);
                row += 1;
            }
        }
        if cfg.arch.scale_embeddings {
            let scale = (d as f32).sqrt();
            s.x[..t * d].iter_mut().for_each(|v| *v *= scale);
        }

        // Cosines and sines of every token's position, per RoPE base.
        let half = hd / 2;
        s.rope.resize_with(self.rope_freqs.len(), Default::default);
        for (freqs, (cos, sin)) in self.rope_freqs.iter().zip(s.rope.iter_mut()) {
            cos.clear();
            sin.clear();
            for slot in &s.slots {
                for f in freqs {
                    let angle = slot.pos as f32 * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }

        for (layer, b) in self.blocks.iter().enumerate() {
            rms_norm(&s.x[..t * d], &b.attn_norm, cfg.rms_eps, &mut s.xn[..t * d]);
            let mut fresh = true;
            project(pool, &b.wq, &s.xn, t, &mut s.xq, &mut fresh, &mut s.q);
            project(pool, &b.wk, &s.xn, t, &mut s.xq, &mut fresh, &mut s.k);
            project(pool, &b.wv, &s.xn, t, &mut s.xq, &mut fresh, &mut s.v);
            if let Some(bias) = &b.bias {
                add_row_bias(&mut s.q[..t * qd], &bias.q);
                add_row_bias(&mut s.k[..t * kvd], &bias.k);
                add_row_bias(&mut s.v[..t * kvd], &bias.v);
            }
            if let Some(n) = &b.qk_norm {
                rms_norm_in_place(&mut s.q[..t * qd], &n.q, cfg.rms_eps);
                rms_norm_in_place(&mut s.k[..t * kvd], &n.k, cfg.rms_eps);
            }
            let window = cfg.layer_window(layer);
            let (cos_all, sin_all) = &s.rope[usize::from(window.is_some() && s.rope.len() > 1)];
            let layout = cfg.arch.rope;
            for (row, slot) in s.slots.iter().enumerate() {
                let (cos, sin) = (
                    &cos_all[row * half..(row + 1) * half],
                    &sin_all[row * half..(row + 1) * half],
                );
                rope(layout, &mut s.q[row * qd..(row + 1) * qd], hd, cos, sin);
                rope(layout, &mut s.k[row * kvd..(row + 1) * kvd], hd, cos, sin);
                pool_kv.write(
                    layer,
                    items[slot.seq].blocks[slot.pos / bs],
                    slot.pos % bs,
                    &s.k[row * kvd..(row + 1) * kvd],
                    &s.v[row * kvd..(row + 1) * kvd],
                );
            }
            attend(
                pool,
                cfg,
                AttendLayer { layer, window },
                pool_kv,
                items,
                &s.slots,
                &s.q,
                &mut s.att,
                &mut s.scores,
            );
            matmul(pool, &b.wo, &s.att, t, &mut s.tmp);
            if let Some(post) = &b.post {
                rms_norm_in_place(&mut s.tmp[..t * d], &post.attn, cfg.rms_eps);
            }
            add_in_place(&mut s.x[..t * d], &s.tmp[..t * d]);
            rms_norm(&s.x[..t * d], &b.ffn_norm, cfg.rms_eps, &mut s.xn[..t * d]);
            let mut fresh = true;
            project(
                pool,
                &b.w_gate,
                &s.xn,
                t,
                &mut s.xq,
                &mut fresh,
                &mut s.gate,
            );
            project(pool, &b.w_up, &s.xn, t, &mut s.xq, &mut fresh, &mut s.up);
            gated_activation(
                pool,
                cfg.arch.activation,
                &mut s.gate[..t * ff],
                &s.up[..t * ff],
            );
            matmul(pool, &b.w_down, &s.gate, t, &mut s.tmp);
            if let Some(post) = &b.post {
                rms_norm_in_place(&mut s.tmp[..t * d], &post.ffn, cfg.rms_eps);
            }
            add_in_place(&mut s.x[..t * d], &s.tmp[..t * d]);
        }

        Ok(())
    }

    /// Runs one step over all items, writing their keys and values into
    /// `kv`. Logits of the last token of every item with `want_logits` are
    /// written to `logits`, one `vocab_size` row per such item, in item order.
    pub fn forward(
        &self,
        items: &[BatchItem<'_>],
        pool_kv: &mut KvPool,
        scratch: &mut Scratch,
        logits: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        self.layers(items, pool_kv, scratch)?;
        let d = self.cfg.n_embd;
        let s = scratch;
        s.last.clear();
        let mut row = 0;
        for item in items.iter() {
            row += item.tokens.len();
            if item.want_logits {
                s.last.extend_from_slice(&s.x[(row - 1) * d..row * d]);
            }
        }
        self.head(s, logits);
        Ok(())
    }

    /// Runs one sequence's tokens and writes the logits of every one of
    /// them (`tokens.len()` rows of `vocab_size`), as perplexity needs.
    pub fn forward_all_logits(
        &self,
        item: &BatchItem<'_>,
        pool_kv: &mut KvPool,
        scratch: &mut Scratch,
        logits: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        self.layers(std::slice::from_ref(item), pool_kv, scratch)?;
        let rows = item.tokens.len() * self.cfg.n_embd;
        let s = scratch;
        s.last.clear();
        s.last.extend_from_slice(&s.x[..rows]);
        self.head(s, logits);
        Ok(())
    }

    /// Final norm and output head over the hidden states in `s.last`.
    fn head(&self, s: &mut Scratch, logits: &mut Vec<f32>) {
        let cfg = &self.cfg;
        let d = cfg.n_embd;
        let wanted = s.last.len() / d;
        logits.clear();
        if wanted == 0 {
            return;
        }
        ensure(&mut s.xn, wanted * d);
        rms_norm(&s.last, &self.norm, cfg.rms_eps, &mut s.xn[..wanted * d]);
        logits.resize(wanted * cfg.vocab_size, 0.0);
        let head = self.output.as_ref().unwrap_or(&self.embedding);
        matmul(&self.pool, head, &s.xn, wanted, logits);
    }
}
