//! OpenAI request bodies as clients send them, before validation. Every
//! field is optional here so that [`validate`](super::validate) can name
//! what is missing; fields they do not name are kept in `extra`.

use serde::Deserialize;
use serde_json::{Map, Value};

/// Body of `POST /v1/chat/completions`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ChatCompletionRequest {
    /// Model name.
    pub model: Option<String>,
    /// The conversation.
    pub messages: Option<Vec<ChatMessageIn>>,
    /// Sampling and output options.
    #[serde(flatten)]
    pub params: GenerationParams,
    /// Every other field, for [`extra_params`](super::extra_params).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Body of `POST /v1/completions`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct CompletionRequest {
    /// Model name.
    pub model: Option<String>,
    /// The text to continue.
    pub prompt: Option<PromptIn>,
    /// Extension: parse special-token text in `prompt` as special tokens
    /// (admin keys only; by default all of the prompt is text).
    pub allow_special_tokens: Option<bool>,
    /// Sampling and output options.
    #[serde(flatten)]
    pub params: GenerationParams,
    /// Every other field, for [`extra_params`](super::extra_params).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Options shared by chat and text completions, including the extensions
/// that vLLM and llama.cpp accept.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct GenerationParams {
    /// Softmax temperature, 0..=2.
    pub temperature: Option<f32>,
    /// Nucleus sampling mass, (0, 1].
    pub top_p: Option<f32>,
    /// Most tokens to generate (deprecated spelling for chat).
    pub max_tokens: Option<i64>,
    /// Most tokens to generate.
    pub max_completion_tokens: Option<i64>,
    /// Strings that end generation.
    pub stop: Option<StopIn>,
    /// Seed of the sampler.
    pub seed: Option<i64>,
    /// OpenAI presence penalty, -2..=2.
    pub presence_penalty: Option<f32>,
    /// OpenAI frequency penalty, -2..=2.
    pub frequency_penalty: Option<f32>,
    /// Stream the answer as server-sent events.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Number of choices, 1..=16.
    pub n: Option<i64>,
    /// Keep generating past end-of-sequence (vLLM extension).
    pub ignore_eos: Option<bool>,
    /// Top-k filter; 0 or -1 disables (vLLM/llama.cpp extension).
    pub top_k: Option<i64>,
    /// Min-p filter, 0..=1 (vLLM/llama.cpp extension).
    pub min_p: Option<f32>,
    /// Repetition penalty, > 0, 1 disables (vLLM/llama.cpp extension).
    pub repetition_penalty: Option<f32>,
    /// Prefix-cache salt: requests with different salts never share cached
    /// KV blocks (vLLM extension).
    pub cache_salt: Option<String>,
    /// The output format: `{"type":"text"}`, `{"type":"json_object"}` or
    /// `{"type":"json_schema","json_schema":{...}}`.
    pub response_format: Option<Value>,
    /// Extension: a Lark grammar (llguidance's dialect) the output follows.
    pub grammar: Option<String>,
    /// Extension: a regular expression the whole output matches.
    pub regex: Option<String>,
    /// Function tools the model may call (chat only).
    pub tools: Option<Vec<Value>>,
    /// `"none"`, `"auto"`, `"required"` or `{"type":"function","function":{"name":...}}`.
    pub tool_choice: Option<Value>,
    /// Whether the model may make several calls in one answer (default true).
    pub parallel_tool_calls: Option<bool>,
    /// Token log-probabilities: a boolean on chat, the number of
    /// alternatives per token (0..=20) on completions.
    pub logprobs: Option<Value>,
    /// Alternatives per token on chat, 0..=20 (needs `logprobs: true`).
    pub top_logprobs: Option<Value>,
    /// Token id (as a string) to a bias of -100..=100 added to its logit.
    pub logit_bias: Option<Value>,
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct StreamOptions {
    /// Send a final chunk with empty `choices` and the usage.
    pub include_usage: Option<bool>,
}

/// One message of a chat request.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessageIn {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text; `null` for assistant messages that only made tool calls.
    #[serde(default)]
    pub content: Option<MessageContent>,
    /// The calls an assistant message made.
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCallIn>>,
    /// The call a `tool` message answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

/// A call an earlier assistant message made, as the client sends it back.
#[derive(Debug, Clone, Deserialize)]
pub struct ToolCallIn {
    /// The call's id.
    pub id: String,
    /// `function`.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// The function and its arguments.
    pub function: FunctionCallIn,
}

/// The function half of [`ToolCallIn`].
#[derive(Debug, Clone, Deserialize)]
pub struct FunctionCallIn {
    /// The function called.
    pub name: String,
    /// Its arguments, JSON text.
    pub arguments: String,
}

/// A message's content: a string or an array of content parts.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    /// Plain text.
    Text(String),
    /// Content parts; only `{"type":"text","text":...}` is supported.
    Parts(Vec<ContentPart>),
}

/// One content part.
#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    /// The part's type (`text`, `image_url`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    #[serde(default)]
    pub text: Option<String>,
}

/// `stop`: one string or an array of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StopIn {
    /// One stop string.
    One(String),
    /// Several stop strings.
    Many(Vec<String>),
}

/// `prompt`: a string, or an array (only one string is supported).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptIn {
    /// One prompt.
    Text(String),
    /// An array of prompts or of token ids.
    Array(Vec<Value>),
}
