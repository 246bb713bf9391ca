//! Hyper-parameters of a llama-family model, read from GGUF metadata.

use crate::gguf::{GgufError, GgufFile};

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
        self.n_layer * 2 * self.kv_dim() * std::mem::size_of::<half::f16>()
    }
}
