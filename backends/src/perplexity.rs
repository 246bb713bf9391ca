//! Perplexity of a text, computed the way llama.cpp's `llama-perplexity`
//! computes it, so the two can be compared number for number: the tokens
//! are cut into chunks of `ctx`; each chunk is run from an empty cache
//! (its first token replaced by BOS when the model adds one); and only the
//! second half of each chunk is scored, each position by the negative log
//! likelihood of the token that follows it.

use crate::model::{BatchItem, ModelError, Scratch, Transformer};
use crate::scheduler::BlockId;

/// Tokens run per forward pass (bounds the logits buffer: rows x vocabulary).
const BATCH: usize = 128;

/// Why perplexity could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum PerplexityError {
    /// The text is too short for even one chunk of two halves.
    #[error("the text has {tokens} tokens; perplexity at ctx {ctx} needs at least {}", 2 * ctx)]
    TooShort {
        /// Tokens in the text.
        tokens: usize,
        /// The chunk size asked for.
        ctx: usize,
    },
    /// The chunk size is unusable.
    #[error("ctx must be between 16 and the model's context length {max}, got {ctx}")]
    BadContext {
        /// The chunk size asked for.
        ctx: usize,
        /// The model's context length.
        max: usize,
    },
    /// `max_chunks` was zero.
    #[error("at least one chunk must be scored")]
    NoChunks,
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// The result of a perplexity run.
#[derive(Debug, Clone, PartialEq)]
pub struct Perplexity {
    /// Chunks scored.
    pub chunks: usize,
    /// Tokens scored in all (`chunks * (ctx - 1 - ctx / 2)`).
    pub scored_tokens: usize,
    /// The final estimate, `exp(mean negative log likelihood)`.
    pub ppl: f64,
    /// Its standard error, as llama-perplexity prints it after `+/-`.
    pub ppl_error: f64,
}

/// Computes the perplexity of `tokens` (the whole text, tokenized with BOS
/// if the model adds one) at chunk size `ctx`, over at most `max_chunks`
/// chunks; `on_chunk(i, running_ppl)` is called after each chunk.
pub fn perplexity(
    model: &Transformer,
    tokens: &[u32],
    bos: Option<u32>,
    ctx: usize,
    max_chunks: Option<usize>,
    mut on_chunk: impl FnMut(usize, f64),
) -> Result<Perplexity, PerplexityError> {
    let cfg = model.config();
    if !(16..=cfg.context_length).contains(&ctx) {
        return Err(PerplexityError::BadContext {
            ctx,
            max: cfg.context_length,
        });
    }
    if tokens.len() < 2 * ctx {
        return Err(PerplexityError::TooShort {
            tokens: tokens.len(),
            ctx,
        });
    }
    let chunks = (tokens.len() / ctx).min(max_chunks.unwrap_or(usize::MAX));
    if chunks == 0 {
        return Err(PerplexityError::NoChunks);
    }
    let mut kv = model.kv_pool(ctx.div_ceil(16) * 16 * cfg.kv_bytes_per_token());
    let blocks: Vec<BlockId> = (0..kv.num_blocks() as BlockId).collect();
    let mut scratch = Scratch::default();
    let mut logits = Vec::new();
    let vocab = cfg.vocab_size;
    let first = ctx / 2;
    let (mut nll, mut nll2, mut count) = (0.0f64, 0.0f64, 0usize);
    for chunk in 0..chunks {
        let mut toks = tokens[chunk * ctx..(chunk + 1) * ctx].to_vec();
        if let Some(b) = bos {
            toks[0] = b;
        }
        let mut start = 0;
        while start < ctx {
            let end = (start + BATCH).min(ctx);
            let item = BatchItem {
                tokens: &toks[start..end],
                start_pos: start,
                blocks: &blocks,
                want_logits: false,
            };
            if end <= first {
                model.forward(&[item], &mut kv, &mut scratch, &mut logits)?;
                start = end;
                continue;
            }
            model.forward_all_logits(&item, &mut kv, &mut scratch, &mut logits)?;
            // Position j predicts the token at j + 1 (of the original text:
            // a replaced first token is never a target).
            for j in start.max(first)..end.min(ctx - 1) {
                let row = &logits[(j - start) * vocab..(j - start + 1) * vocab];
                let target = tokens[chunk * ctx + j + 1] as usize;
                let v = -log_softmax_at(row, target);
                nll += v;
                nll2 += v * v;
                count += 1;
            }
            start = end;
        }
        on_chunk(chunk, (nll / count as f64).exp());
    }
    let mean = nll / count as f64;
    let ppl = mean.exp();
    let var = nll2 / count as f64 - mean * mean;
    let ppl_error = if var > 0.0 && count > 1 {
        (var / (count - 1) as f64).sqrt() * ppl
    } else {
        0.0
    };
    Ok(Perplexity {
        chunks,
        scored_tokens: count,
        ppl,
        ppl_error,
    })
}

/// `log softmax(row)[i]`, accumulated in f64.
fn log_softmax_at(row: &[f32], i: usize) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = row.iter().map(|&l| f64::from(l - max).exp()).sum();
    f64::from(row[i] - max) - sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_of_uniform_logits_is_minus_log_n() {
        let row = vec![0.5f32; 8];
        assert!((log_softmax_at(&row, 3) + (8f64).ln()).abs() < 1e-12);
    }

    #[test]
    fn log_softmax_is_shift_invariant_and_prefers_the_largest() {
        let a = [1.0f32, 2.0, 3.0];
        let b = [101.0f32, 102.0, 103.0];
        for i in 0..3 {
            assert!((log_softmax_at(&a, i) - log_softmax_at(&b, i)).abs() < 1e-5);
        }
        assert!(log_softmax_at(&a, 2) > log_softmax_at(&a, 0));
    }
}
