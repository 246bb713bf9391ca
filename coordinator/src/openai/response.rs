//! OpenAI response bodies and streaming chunks.

use serde::Serialize;
use serde_json::Value;

/// `usage` of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct UsageOut {
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
    /// Their sum.
    pub total_tokens: u32,
}

impl From<protocol::Usage> for UsageOut {
    fn from(u: protocol::Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens.saturating_add(u.completion_tokens),
        }
    }
}

/// A chat completion (`chat.completion`) or one of its stream chunks
/// (`chat.completion.chunk`).
#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletionOut {
    /// `chatcmpl-...`, the same for every chunk of a stream.
    pub id: String,
    /// `chat.completion` or `chat.completion.chunk`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model name.
    pub model: String,
    /// The choices (one, or none in the final usage chunk).
    pub choices: Vec<ChatChoiceOut>,
    /// Absent (`None`), `null` (`Some(None)`) or the usage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<UsageOut>>,
}

/// One choice of a chat completion or chunk.
#[derive(Debug, Clone, Serialize)]
pub struct ChatChoiceOut {
    /// The choice's position, 0..n.
    pub index: u32,
    /// The whole answer (non-streaming).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<MessageOut>,
    /// The new part of the answer (streaming).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta: Option<DeltaOut>,
    /// The tokens' log-probabilities when asked for, `null` otherwise.
    pub logprobs: Option<Value>,
    /// `stop`, `length`, `tool_calls`, or `null` while streaming.
    pub finish_reason: Option<&'static str>,
}

/// The assistant's message.
#[derive(Debug, Clone, Serialize)]
pub struct MessageOut {
    /// `assistant`.
    pub role: &'static str,
    /// The generated text; `null` when the answer is only tool calls.
    pub content: Option<String>,
    /// The calls the model made, absent when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallOut>,
}

/// One tool call of an answer.
#[derive(Debug, Clone, Serialize)]
pub struct ToolCallOut {
    /// `call_...`.
    pub id: String,
    /// `function`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The function and its arguments.
    pub function: FunctionCallOut,
}

/// The function half of [`ToolCallOut`].
#[derive(Debug, Clone, Serialize)]
pub struct FunctionCallOut {
    /// The function called.
    pub name: String,
    /// Its arguments, JSON text.
    pub arguments: String,
}

/// A piece of a tool call in a streaming delta: the first piece of a call
/// has its id, type and name; later pieces extend its arguments.
#[derive(Debug, Clone, Serialize)]
pub struct ToolCallDeltaOut {
    /// Which call of the answer (from 0).
    pub index: u32,
    /// `call_...`, in the call's first piece.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `function`, in the call's first piece.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    /// The name (first piece) and the next piece of the arguments.
    pub function: FunctionDeltaOut,
}

/// The function half of [`ToolCallDeltaOut`].
#[derive(Debug, Clone, Serialize)]
pub struct FunctionDeltaOut {
    /// The function called, in the call's first piece.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The next piece of the arguments (JSON text).
    pub arguments: String,
}

/// A streaming delta.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeltaOut {
    /// `assistant`, in the first chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// New text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// New pieces of tool calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDeltaOut>>,
}

/// A text completion (`text_completion`), whole or as a stream chunk.
#[derive(Debug, Clone, Serialize)]
pub struct TextCompletionOut {
    /// `cmpl-...`.
    pub id: String,
    /// `text_completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model name.
    pub model: String,
    /// The choices (one, or none in the final usage chunk).
    pub choices: Vec<TextChoiceOut>,
    /// Absent (`None`), `null` (`Some(None)`) or the usage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<UsageOut>>,
}

/// One choice of a text completion.
#[derive(Debug, Clone, Serialize)]
pub struct TextChoiceOut {
    /// The choice's position, 0..n.
    pub index: u32,
    /// The generated text (or its new part while streaming).
    pub text: String,
    /// The tokens' log-probabilities when asked for, `null` otherwise.
    pub logprobs: Option<Value>,
    /// `stop`, `length`, or `null` while streaming.
    pub finish_reason: Option<&'static str>,
}
