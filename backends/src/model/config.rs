//! What a model is: its architecture's description (which tensors, biases,
//! RoPE layout) and its hyper-parameters, read from GGUF metadata. The
//! forward pass reads these instead of branching on architecture names.

use crate::gguf::{GgufError, GgufFile};

/// How RoPE pairs the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeLayout {
    /// Adjacent pairs `(2i, 2i + 1)` (ggml's "normal" mode; llama GGUF files
    /// permute their Q/K weights for it).
    Adjacent,
    /// Halves: `(i, i + head_dim / 2)` (ggml's NeoX mode: qwen2, gemma).
    Halves,
}

/// The gate activation of the gated MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `silu(gate) * up` (llama, qwen2).
    SwiGlu,
    /// `gelu_tanh(gate) * up` (gemma).
    GeGlu,
}

/// Layers that attend to a sliding window of recent positions, interleaved
/// with layers that attend to everything.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlidingWindow {
    /// Every `period`-th layer (the last of each period) is global; the others slide.
    pub period: usize,
    /// RoPE base of the sliding layers (the global ones use the file's).
    pub rope_base: f32,
}

/// What distinguishes one decoder-only architecture from another, as data.
#[derive(Debug, PartialEq)]
pub struct Architecture {
    /// `general.architecture` in the GGUF file (also the metadata key prefix).
    pub name: &'static str,
    /// RoPE pairing.
    pub rope: RopeLayout,
    /// Q, K and V projections carry biases (`blk.N.attn_{q,k,v}.bias`).
    pub qkv_bias: bool,
    /// Per-head RMSNorm of queries and keys before RoPE (`attn_{q,k}_norm`).
    pub qk_norm: bool,
    /// RMSNorm of the attention and MLP outputs before their residual adds
    /// (`post_attention_norm`, `post_ffw_norm`).
    pub post_norms: bool,
    /// The MLP's gate activation.
    pub activation: Activation,
    /// Token embeddings are multiplied by `sqrt(n_embd)`.
    pub scale_embeddings: bool,
    /// Sliding-window attention layers, if any (the window size is read
    /// from `attention.sliding_window`).
    pub sliding_window: Option<SlidingWindow>,
    /// RoPE base when the file does not say.
    pub default_rope_base: f32,
}

/// The architectures this build runs.
pub const ARCHITECTURES: &[Architecture] = &[
    Architecture {
        name: "llama",
        rope: RopeLayout::Adjacent,
        qkv_bias: false,
        qk_norm: false,
        post_norms: false,
        activation: Activation::SwiGlu,
        scale_embeddings: false,
        sliding_window: None,
        default_rope_base: 10_000.0,
    },
    Architecture {
        name: "qwen2",
        rope: RopeLayout::Halves,
        qkv_bias: true,
        qk_norm: false,
        post_norms: false,
        activation: Activation::SwiGlu,
        scale_embeddings: false,
        sliding_window: None,
        default_rope_base: 1_000_000.0,
    },
    Architecture {
        name: "gemma3",
        rope: RopeLayout::Halves,
        qkv_bias: false,
        qk_norm: true,
        post_norms: true,
        activation: Activation::GeGlu,
        scale_embeddings: true,
        sliding_window: Some(SlidingWindow {
            period: 6,
            rope_base: 10_000.0,
        }),
        default_rope_base: 1_000_000.0,
    },
];

/// The names of [`ARCHITECTURES`], for error messages.
pub fn supported_architectures() -> String {
    ARCHITECTURES
        .iter()
        .map(|a| a.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Hyper-parameters of a decoder-only transformer, read from GGUF metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The architecture's description.
    pub arch: &'static Architecture,
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
    /// Size of one head (queries and keys alike).
    pub head_dim: usize,
    /// Positions a sliding-window layer attends to (itself included), when
    /// the architecture has such layers.
    pub window: Option<usize>,
    /// RoPE frequency base.
    pub rope_base: f32,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// Longest sequence the model was trained for.
    pub context_length: usize,
    /// Vocabulary size (rows of the embedding table).
    pub vocab_size: usize,
}

impl ModelConfig {
    /// Reads the configuration of a GGUF file of one of the [`ARCHITECTURES`].
    pub fn from_gguf(file: &GgufFile) -> Result<Self, GgufError> {
        let name = file.architecture()?;
        let Some(arch) = ARCHITECTURES.iter().find(|a| a.name == name) else {
            return Err(GgufError::UnsupportedArchitecture {
                path: file.path().to_path_buf(),
                arch: name.to_string(),
                supported: supported_architectures(),
            });
        };
        let key = |k: &str| format!("{}.{k}", arch.name);
        let n_embd = file.usize(&key("embedding_length"))?;
        let n_head = file.usize(&key("attention.head_count"))?;
        let n_kv_head = file
            .usize(&key("attention.head_count_kv"))
            .unwrap_or(n_head);
        let bad = |k: &str| GgufError::Metadata {
            path: file.path().to_path_buf(),
            key: key(k),
        };
        if n_head == 0 || n_kv_head == 0 || n_head % n_kv_head != 0 {
            return Err(bad("attention.head_count"));
        }
        let head_dim = match file.usize(&key("attention.key_length")) {
            Ok(k) => k,
            Err(_) if n_embd % n_head == 0 => n_embd / n_head,
            Err(_) => return Err(bad("attention.head_count")),
        };
        if head_dim == 0 || head_dim % 2 != 0 || head_dim > 1024 {
            return Err(bad("attention.key_length"));
        }
        if let Ok(v) = file.usize(&key("attention.value_length")) {
            if v != head_dim {
                return Err(bad("attention.value_length"));
            }
        }
        let window = match arch.sliding_window {
            Some(_) => {
                let w = file.usize(&key("attention.sliding_window"))?;
                if w == 0 {
                    return Err(bad("attention.sliding_window"));
                }
                Some(w)
            }
            None => None,
        };
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
            arch,
            n_layer: file.usize(&key("block_count"))?,
            n_embd,
            n_ff: file.usize(&key("feed_forward_length"))?,
            n_head,
            n_kv_head,
            head_dim,
            window,
            rope_base: file
                .f32(&key("rope.freq_base"))
                .unwrap_or(arch.default_rope_base),
            rms_eps: file
                .f32(&key("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-5),
            context_length: file.usize(&key("context_length"))?,
            vocab_size,
        })
    }

    /// Width of one token's queries (all heads) in one layer.
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// The window of layer `layer` if it is a sliding-window layer.
    pub fn layer_window(&self, layer: usize) -> Option<usize> {
        let sw = self.arch.sliding_window?;
        (!(layer + 1).is_multiple_of(sw.period)).then_some(self.window?)
    }

    /// The RoPE base of layer `layer`.
    pub fn layer_rope_base(&self, layer: usize) -> f32 {
        match self.arch.sliding_window {
            Some(sw) if self.layer_window(layer).is_some() => sw.rope_base,
            _ => self.rope_base,
        }
    }

    /// Width of one token's keys (or values) in one layer.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_head * self.head_dim
    }

    /// Bytes of KV cache one token occupies across all layers.
    pub fn kv_bytes_per_token(&self) -> usize {
        self.n_layer * 2 * self.kv_dim() * std::mem::size_of::<half::f16>()
    }
}
