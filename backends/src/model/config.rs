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

/// What distinguishes one decoder-only architecture from another, as data.
#[derive(Debug, PartialEq)]
pub struct Architecture {
    /// `general.architecture` in the GGUF file (also the metadata key prefix).
    pub name: &'static str,
    /// RoPE pairing.
    pub rope: RopeLayout,
    /// Q, K and V projections carry biases (`blk.N.attn_{q,k,v}.bias`).
    pub qkv_bias: bool,
    /// RoPE base when the file does not say.
    pub default_rope_base: f32,
}

/// The architectures this build runs.
pub const ARCHITECTURES: &[Architecture] = &[
    Architecture {
        name: "llama",
        rope: RopeLayout::Adjacent,
        qkv_bias: false,
        default_rope_base: 10_000.0,
    },
    Architecture {
        name: "qwen2",
        rope: RopeLayout::Halves,
        qkv_bias: true,
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
            arch,
            n_layer: file.usize(&key("block_count"))?,
            n_embd,
            n_ff: file.usize(&key("feed_forward_length"))?,
            n_head,
            n_kv_head,
            head_dim,
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

    /// Width of one token's keys (or values) in one layer.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_head * self.head_dim
    }

    /// Bytes of KV cache one token occupies across all layers.
    pub fn kv_bytes_per_token(&self) -> usize {
        self.n_layer * 2 * self.kv_dim() * std::mem::size_of::<half::f16>()
    }
}
