//! `POST /tokenize` and `POST /detokenize`, in the shapes of llama-server
//! (`content`, answered with `tokens`) and vLLM (`prompt` or `messages`,
//! answered with `count`, `max_model_len` and `tokens`; `prompt` back from
//! `/detokenize`). The tokens are the ones a generation request with the
//! same prompt is given, counted on a replica with the model's own
//! tokenizer and chat template.

use protocol::{Prompt, TokenizeOutput, TokenizeRequest};
use serde::Deserialize;
use serde_json::{json, Value};

use super::backend::{InferenceBackend, ModelEntry};
use super::errors::ApiError;
use super::request::ChatMessageIn;
use super::validate::chat_message;

/// Body of `POST /tokenize`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TokenizeBody {
    /// The model; may be left out when the cluster serves exactly one.
    pub model: Option<String>,
    /// Text to tokenize (vLLM).
    pub prompt: Option<String>,
    /// Text to tokenize (llama-server).
    pub content: Option<String>,
    /// A conversation, tokenized as rendered by the chat template with the
    /// assistant turn opened (vLLM).
    pub messages: Option<Vec<ChatMessageIn>>,
    /// vLLM's switch for the tokenizer's own special tokens; only `true`
    /// (what generation does) is served.
    pub add_special_tokens: Option<bool>,
    /// llama-server's name for the same switch.
    pub add_special: Option<bool>,
    /// llama-server's per-token pieces (not served).
    pub with_pieces: Option<bool>,
}

/// Body of `POST /detokenize`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct DetokenizeBody {
    /// The model; may be left out when the cluster serves exactly one.
    pub model: Option<String>,
    /// The token ids.
    pub tokens: Option<Vec<u32>>,
}

/// The served model a body names, or the only one when it names none.
fn model_of(named: Option<String>, models: &[ModelEntry]) -> Result<&ModelEntry, ApiError> {
    match named {
        Some(m) => models
            .iter()
            .find(|e| e.id == m)
            .ok_or_else(|| ApiError::model_not_found(&m)),
        None => match models {
            [only] => Ok(only),
            _ => Err(ApiError::invalid(
                "You must provide a model parameter.",
                Some("model"),
            )),
        },
    }
}

/// Answers `POST /tokenize`.
pub(crate) async fn tokenize<B: InferenceBackend>(
    backend: &B,
    body: TokenizeBody,
) -> Result<Value, ApiError> {
    for (param, value) in [
        ("add_special_tokens", body.add_special_tokens),
        ("add_special", body.add_special),
    ] {
        if value == Some(false) {
            return Err(ApiError::invalid(
                format!("'{param}: false' is not supported: tokens are counted as generation sees them."),
                Some(param),
            ));
        }
    }
    if body.with_pieces == Some(true) {
        return Err(ApiError::invalid(
            "'with_pieces' is not supported.",
            Some("with_pieces"),
        ));
    }
    let prompt = match (body.prompt.or(body.content), body.messages) {
        (Some(text), None) => Prompt::Text(text),
        (None, Some(messages)) if !messages.is_empty() => Prompt::Chat(
            messages
                .into_iter()
                .enumerate()
                .map(|(i, m)| chat_message(i, m))
                .collect::<Result<_, _>>()?,
        ),
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "Give either 'prompt' (or 'content') or 'messages', not both.",
                Some("messages"),
            ))
        }
        (None, _) => {
            return Err(ApiError::invalid(
                "Missing required parameter: 'prompt', 'content' or 'messages'.",
                Some("prompt"),
            ))
        }
    };
    let models = backend.models();
    let entry = model_of(body.model, &models)?;
    let req = TokenizeRequest::Encode {
        model: entry.id.clone(),
        prompt,
        tools: None,
    };
    match backend.tokenize(req).await? {
        TokenizeOutput::Tokens(ids) => Ok(json!({
            "count": ids.len(),
            "max_model_len": entry.card.as_ref().map(|c| c.context_length),
            "tokens": ids,
        })),
        TokenizeOutput::Text(_) => Err(ApiError::unavailable(
            "The replica answered a tokenize request with text.",
        )),
    }
}

/// Answers `POST /detokenize`.
pub(crate) async fn detokenize<B: InferenceBackend>(
    backend: &B,
    body: DetokenizeBody,
) -> Result<Value, ApiError> {
    let Some(tokens) = body.tokens else {
        return Err(ApiError::invalid(
            "Missing required parameter: 'tokens'.",
            Some("tokens"),
        ));
    };
    let models = backend.models();
    let entry = model_of(body.model, &models)?;
    let req = TokenizeRequest::Decode {
        model: entry.id.clone(),
        tokens,
    };
    match backend.tokenize(req).await? {
        TokenizeOutput::Text(text) => Ok(json!({ "prompt": text, "content": text })),
        TokenizeOutput::Tokens(_) => Err(ApiError::unavailable(
            "The replica answered a detokenize request with tokens.",
        )),
    }
}
