//! A llama-architecture transformer whose forward pass runs a whole batch of
//! sequences at once (continuous batching).
//!
//! Every projection and MLP matmul runs once over the tokens of all sequences
//! in the step; attention runs per sequence over its own [`KvCache`], which is
//! allocated once for the sequence's whole budget and written in place.

use std::path::Path;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

use crate::gguf::{GgufError, GgufFile};

/// Why the model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file was refused.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// A tensor operation failed.
    #[error("tensor operation failed: {}", crate::gguf::brief(.0))]
    Candle(#[from] candle_core::Error),
    /// The batch asked for something the model cannot do.
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
}

/// Hyper-parameters of a llama-family model, read from GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Transformer blocks.
    pub n_layer: usize,
    /// Hidden size.
    pub n_embd: usize,
    /// MLP inner size.
    pub n_ff: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (grouped-query attention when fewer than `n_head`).
    pub n_kv_head: usize,
    /// Size of one head.
    pub head_dim: usize,
    /// RoPE frequency base.
    pub rope_base: f32,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// Longest sequence the model was trained for.
    pub context_length: usize,
    /// Vocabulary size (rows of the embedding table).
    pub vocab_size: usize,
}

impl LlamaConfig {
    /// Reads the configuration of a `llama` GGUF file.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, GgufError> {
        let arch = file.architecture()?;
        if arch != "llama" {
            return Err(GgufError::UnsupportedArchitecture {
                path: file.path().to_path_buf(),
                arch: arch.to_string(),
            });
        }
        let key = |k: &str| format!("llama.{k}");
        let n_embd = file.usize(&key("embedding_length"))?;
        let n_head = file.usize(&key("attention.head_count"))?;
        let n_kv_head = file
            .usize(&key("attention.head_count_kv"))
            .unwrap_or(n_head);
        let bad = |k: &str| GgufError::Metadata {
            path: file.path().to_path_buf(),
            key: key(k),
        };
        if n_head == 0 || n_kv_head == 0 || n_embd % n_head != 0 || n_head % n_kv_head != 0 {
            return Err(bad("attention.head_count"));
        }
        let head_dim = n_embd / n_head;
        if head_dim % 2 != 0 {
            return Err(bad("embedding_length"));
        }
        let vocab_size = match file.content.tensor_infos.get("token_embd.weight") {
            Some(info) => info.shape.dims().first().copied().unwrap_or(0),
            None => {
                return Err(GgufError::Tensor {
                    path: file.path().to_path_buf(),
                    name: "token_embd.weight".into(),
                    reason: "missing".into(),
                })
            }
        };
        Ok(Self {
            n_layer: file.usize(&key("block_count"))?,
            n_embd,
            n_ff: file.usize(&key("feed_forward_length"))?,
            n_head,
            n_kv_head,
            head_dim,
            rope_base: file.f32(&key("rope.freq_base")).unwrap_or(10_000.0),
            rms_eps: file
                .f32(&key("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-5),
            context_length: file.usize(&key("context_length"))?,
            vocab_size,
        })
    }

    /// Width of one token's keys (or values) in one layer.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_head * self.head_dim
    }

    /// Bytes of KV cache one token occupies across all layers.
    pub fn kv_bytes_per_token(&self) -> usize {
        self.n_layer * 2 * self.kv_dim() * std::mem::size_of::<f32>()
    }
}

/// A quantized weight matrix `out x in`, applied to row-major activations.
pub struct Linear {
    weight: QMatMul,
    in_dim: usize,
    out_dim: usize,
}

impl Linear {
    fn new(t: QTensor) -> Result<Self, ModelError> {
        let (out_dim, in_dim) = t.shape().dims2()?;
        Ok(Self {
            weight: QMatMul::from_qtensor(t)?,
            in_dim,
            out_dim,
        })
    }

    /// `out[r] = W · x[r]` for `rows` rows of `x`.
    fn forward(&self, x: &[f32], rows: usize, out: &mut [f32]) -> Result<(), ModelError> {
        let input =
            Tensor::from_slice(&x[..rows * self.in_dim], (rows, self.in_dim), &Device::Cpu)?;
        let y = self
            .weight
            .forward(&input)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        out[..rows * self.out_dim].copy_from_slice(&y);
        Ok(())
    }
}

/// The token embedding table, kept quantized when it is Q8_0 (rows are
/// dequantized on lookup) and dequantized once otherwise.
enum Embedding {
    Q8_0 { data: Vec<u8>, dim: usize },
    F32 { data: Vec<f32>, dim: usize },
}

const Q8_0_BLOCK: usize = 32;
const Q8_0_BYTES: usize = 34;

impl Embedding {
    fn new(t: &QTensor) -> Result<Self, ModelError> {
        let (_, dim) = t.shape().dims2()?;
        if t.dtype() == GgmlDType::Q8_0 && dim % Q8_0_BLOCK == 0 {
            Ok(Self::Q8_0 {
                data: t.data()?.into_owned(),
                dim,
            })
        } else {
            let data = t
                .dequantize(&Device::Cpu)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            Ok(Self::F32 { data, dim })
        }
    }

    fn lookup(&self, token: u32, out: &mut [f32]) {
        match self {
            Self::Q8_0 { data, dim } => {
                let row_bytes = dim / Q8_0_BLOCK * Q8_0_BYTES;
                let row = &data[token as usize * row_bytes..(token as usize + 1) * row_bytes];
                for (block, dst) in row
                    .chunks_exact(Q8_0_BYTES)
                    .zip(out.chunks_exact_mut(Q8_0_BLOCK))
                {
                    let d = half::f16::from_le_bytes([block[0], block[1]]).to_f32();
                    for (o, q) in dst.iter_mut().zip(&block[2..]) {
                        *o = d * f32::from(*q as i8);
                    }
                }
            }
            Self::F32 { data, dim } => {
                let start = token as usize * dim;
                out.copy_from_slice(&data[start..start + dim]);
            }
        }
    }
}

struct Block {
    attn_norm: Vec<f32>,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    ffn_norm: Vec<f32>,
    w_gate: Linear,
    w_up: Linear,
    w_down: Linear,
}

/// One sequence's keys and values for every layer, sized once for the
/// sequence's whole token budget and written in place as it grows.
pub struct KvCache {
    capacity: usize,
    kv_dim: usize,
    /// `[layer][position][kv_dim]`.
    k: Vec<f32>,
    /// `[layer][position][kv_dim]`.
    v: Vec<f32>,
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

    fn offset(&self, layer: usize, pos: usize) -> usize {
        (layer * self.capacity + pos) * self.kv_dim
    }
}

/// One sequence's share of a batched forward pass.
pub struct BatchItem<'a> {
    /// The tokens to process (a prompt chunk, or the one token just sampled).
    pub tokens: &'a [u32],
    /// Position of `tokens[0]` in the sequence.
    pub start_pos: usize,
    /// The sequence's cache; positions `0..start_pos` must already be filled.
    pub cache: &'a mut KvCache,
    /// Whether to compute logits for the last token.
    pub want_logits: bool,
}

/// Buffers reused from step to step, so a forward pass allocates nothing once warm.
#[derive(Default)]
pub struct Scratch {
    x: Vec<f32>,
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    tmp: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    scores: Vec<f32>,
    last: Vec<f32>,
}

fn ensure(buf: &mut Vec<f32>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
}

/// A loaded llama-family model.
pub struct LlamaModel {
    cfg: LlamaConfig,
    embedding: Embedding,
    blocks: Vec<Block>,
    norm: Vec<f32>,
    output: Linear,
    /// `[position][head_dim / 2]` cosines and sines for RoPE.
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
}

impl LlamaModel {
    /// Loads the weights of an opened GGUF file.
    pub fn load(file: &mut GgufFile) -> Result<Self, ModelError> {
        let cfg = LlamaConfig::from_gguf(file)?;
        let (d, kv, ff) = (cfg.n_embd, cfg.kv_dim(), cfg.n_ff);
        let embd = file.tensor("token_embd.weight", &[cfg.vocab_size, d])?;
        let embedding = Embedding::new(&embd)?;
        let output = if file.has_tensor("output.weight") {
            Linear::new(file.tensor("output.weight", &[cfg.vocab_size, d])?)?
        } else {
            Linear::new(embd)?
        };
        let vector = |file: &mut GgufFile, name: &str| -> Result<Vec<f32>, ModelError> {
            let t = file.tensor(name, &[d])?;
            Ok(t.dequantize(&Device::Cpu)?.to_vec1::<f32>()?)
        };
        let mut blocks = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = |s: &str| format!("blk.{i}.{s}.weight");
            blocks.push(Block {
                attn_norm: vector(file, &p("attn_norm"))?,
                wq: Linear::new(file.tensor(&p("attn_q"), &[d, d])?)?,
                wk: Linear::new(file.tensor(&p("attn_k"), &[kv, d])?)?,
                wv: Linear::new(file.tensor(&p("attn_v"), &[kv, d])?)?,
                wo: Linear::new(file.tensor(&p("attn_output"), &[d, d])?)?,
                ffn_norm: vector(file, &p("ffn_norm"))?,
                w_gate: Linear::new(file.tensor(&p("ffn_gate"), &[ff, d])?)?,
                w_up: Linear::new(file.tensor(&p("ffn_up"), &[ff, d])?)?,
                w_down: Linear::new(file.tensor(&p("ffn_down"), &[d, ff])?)?,
            });
        }
        let norm = vector(file, "output_norm.weight")?;
        let half = cfg.head_dim / 2;
        let mut rope_cos = Vec::with_capacity(cfg.context_length * half);
        let mut rope_sin = Vec::with_capacity(cfg.context_length * half);
        for pos in 0..cfg.context_length {
            for i in 0..half {
                let freq = 1.0 / cfg.rope_base.powf(2.0 * i as f32 / cfg.head_dim as f32);
                let angle = pos as f32 * freq;
                rope_cos.push(angle.cos());
                rope_sin.push(angle.sin());
            }
        }
        Ok(Self {
            cfg,
            embedding,
            blocks,
            norm,
            output,
            rope_cos,
            rope_sin,
        })
    }

    /// Opens and loads a GGUF file in one go.
    pub fn from_path(path: &Path) -> Result<Self, ModelError> {
        Self::load(&mut GgufFile::open(path)?)
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// Runs one step over all items. Logits of the last token of every item
    /// with `want_logits` are written to `logits`, one `vocab_size` row per such
    /// item, in item order.
    pub fn forward(
        &self,
        items: &mut [BatchItem<'_>],
        scratch: &mut Scratch,
        logits: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        let cfg = &self.cfg;
        let (d, kv, ff, hd) = (cfg.n_embd, cfg.kv_dim(), cfg.n_ff, cfg.head_dim);
        let mut n_tokens = 0;
        for item in items.iter() {
            let end = item.start_pos + item.tokens.len();
            if item.tokens.is_empty() || end > item.cache.capacity() || end > cfg.context_length {
                return Err(ModelError::InvalidBatch(format!(
                    "{} tokens at position {} do not fit a cache of {}",
                    item.tokens.len(),
                    item.start_pos,
                    item.cache.capacity()
                )));
            }
            if let Some(bad) = item.tokens.iter().find(|t| **t as usize >= cfg.vocab_size) {
                return Err(ModelError::InvalidBatch(format!(
                    "token id {bad} is outside the vocabulary"
                )));
            }
            n_tokens += item.tokens.len();
        }
        let t = n_tokens;
        let s = scratch;
        for buf in [&mut s.x, &mut s.xn, &mut s.q, &mut s.att, &mut s.tmp] {
            ensure(buf, t * d);
        }
        ensure(&mut s.k, t * kv);
        ensure(&mut s.v, t * kv);
        ensure(&mut s.gate, t * ff);
        ensure(&mut s.up, t * ff);
        ensure(&mut s.scores, cfg.context_length);

        let mut row = 0;
        for item in items.iter() {
            for &tok in item.tokens {
                self.embedding.lookup(tok, &mut s.x[row * d..(row + 1) * d]);
                row += 1;
            }
        }

        for (layer, b) in self.blocks.iter().enumerate() {
            rms_norm(&s.x[..t * d], &b.attn_norm, cfg.rms_eps, &mut s.xn[..t * d]);
            b.wq.forward(&s.xn, t, &mut s.q)?;
            b.wk.forward(&s.xn, t, &mut s.k)?;
            b.wv.forward(&s.xn, t, &mut s.v)?;
            let mut row = 0;
            for item in items.iter_mut() {
                for j in 0..item.tokens.len() {
                    let pos = item.start_pos + j;
                    self.rope(&mut s.q[row * d..(row + 1) * d], pos);
                    self.rope(&mut s.k[row * kv..(row + 1) * kv], pos);
                    let off = item.cache.offset(layer, pos);
                    item.cache.k[off..off + kv].copy_from_slice(&s.k[row * kv..(row + 1) * kv]);
                    item.cache.v[off..off + kv].copy_from_slice(&s.v[row * kv..(row + 1) * kv]);
                    row += 1;
                }
            }
            let group = cfg.n_head / cfg.n_kv_head;
            let scale = 1.0 / (hd as f32).sqrt();
            let mut row = 0;
            for item in items.iter() {
                let cache = &*item.cache;
                for j in 0..item.tokens.len() {
                    let n_pos = item.start_pos + j + 1;
                    let base = cache.offset(layer, 0);
                    for h in 0..cfg.n_head {
                        let g = h / group;
                        let q = &s.q[row * d + h * hd..row * d + (h + 1) * hd];
                        let scores = &mut s.scores[..n_pos];
                        let mut max = f32::NEG_INFINITY;
                        for (p, sc) in scores.iter_mut().enumerate() {
                            let k = &cache.k[base + p * kv + g * hd..base + p * kv + (g + 1) * hd];
                            *sc = dot(q, k) * scale;
                            max = max.max(*sc);
                        }
                        let mut sum = 0.0;
                        for sc in scores.iter_mut() {
                            *sc = (*sc - max).exp();
                            sum += *sc;
                        }
                        let out = &mut s.att[row * d + h * hd..row * d + (h + 1) * hd];
                        out.fill(0.0);
                        for (p, sc) in scores.iter().enumerate() {
                            let w = sc / sum;
                            let v = &cache.v[base + p * kv + g * hd..base + p * kv + (g + 1) * hd];
                            for (o, x) in out.iter_mut().zip(v) {
                                *o += w * x;
                            }
                        }
                    }
                    row += 1;
                }
            }
            b.wo.forward(&s.att, t, &mut s.tmp)?;
            add_in_place(&mut s.x[..t * d], &s.tmp[..t * d]);
            rms_norm(&s.x[..t * d], &b.ffn_norm, cfg.rms_eps, &mut s.xn[..t * d]);
            b.w_gate.forward(&s.xn, t, &mut s.gate)?;
            b.w_up.forward(&s.xn, t, &mut s.up)?;
            for (g, u) in s.gate[..t * ff].iter_mut().zip(&s.up[..t * ff]) {
                *g = silu(*g) * u;
            }
            b.w_down.forward(&s.gate, t, &mut s.tmp)?;
            add_in_place(&mut s.x[..t * d], &s.tmp[..t * d]);
        }

        let wanted = items.iter().filter(|i| i.want_logits).count();
        s.last.clear();
        let mut row = 0;
        for item in items.iter() {
            row += item.tokens.len();
            if item.want_logits {
                s.last.extend_from_slice(&s.x[(row - 1) * d..row * d]);
            }
        }
        if wanted == 0 {
            logits.clear();
            return Ok(());
        }
        ensure(&mut s.xn, wanted * d);
        rms_norm(&s.last, &self.norm, cfg.rms_eps, &mut s.xn[..wanted * d]);
        logits.resize(wanted * cfg.vocab_size, 0.0);
        self.output.forward(&s.xn, wanted, logits)?;
        Ok(())
    }

    /// Rotates adjacent pairs of every head in `x` (GGML's "normal" RoPE layout).
    fn rope(&self, x: &mut [f32], pos: usize) {
        let half = self.cfg.head_dim / 2;
        let cos = &self.rope_cos[pos * half..(pos + 1) * half];
        let sin = &self.rope_sin[pos * half..(pos + 1) * half];
        for head in x.chunks_exact_mut(self.cfg.head_dim) {
            for (i, pair) in head.chunks_exact_mut(2).enumerate() {
                let (a, b) = (pair[0], pair[1]);
                pair[0] = a * cos[i] - b * sin[i];
                pair[1] = a * sin[i] + b * cos[i];
            }
        }
    }
}

fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let d = w.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ms = dot(xr, xr) / d as f32;
        let scale = 1.0 / (ms + eps).sqrt();
        for ((o, a), g) in or.iter_mut().zip(xr).zip(w) {
            *o = a * scale * g;
        }
    }
}

fn add_in_place(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// Dot product with eight independent accumulators, so it vectorizes.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let ca = a.chunks_exact(8);
    let cb = b.chunks_exact(8);
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}
