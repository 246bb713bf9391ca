//! Text-generation requests and the events streamed back for them.

use serde::{Deserialize, Serialize};

/// One message of a chat conversation, as the chat template sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The message text.
    pub content: String,
    /// The function calls an assistant message made.
    #[serde(default)]
    pub tool_calls: Vec<ToolCall>,
    /// The call a `tool` message answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    /// A message with the given role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

/// One function call of an assistant message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call's id (`call_...`), which the `tool` message answering it names.
    pub id: String,
    /// The function's name.
    pub name: String,
    /// The arguments, as JSON text.
    pub arguments: String,
}

/// How the next token is chosen from the model's logits.
///
/// Defaults follow llama.cpp's server: temperature 0.8, top-k 40, top-p 0.95,
/// min-p 0.05, no penalties, a random seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy (always the most likely token).
    pub temperature: f32,
    /// Keep only the k most likely tokens; 0 disables the filter.
    pub top_k: u32,
    /// Keep the smallest set of tokens whose probability mass reaches p; 1 disables.
    pub top_p: f32,
    /// Drop tokens whose probability is below `min_p` times the top token's; 0 disables.
    pub min_p: f32,
    /// Divide positive logits (multiply negative ones) of tokens already seen
    /// in the last `penalty_last_n` tokens of prompt and output; 1 disables.
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token already generated (OpenAI semantics).
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time it was already generated.
    pub frequency_penalty: f32,
    /// How many recent tokens the repetition penalty looks at.
    pub penalty_last_n: u32,
    /// Seed of the random generator: the same seed and request give the same output.
    /// `None` picks a fresh seed per request.
    pub seed: Option<u64>,
    /// Added to the logits of these tokens before anything else (OpenAI's
    /// `logit_bias`, each within ±[`MAX_LOGIT_BIAS`]; -100 bans a token,
    /// 100 all but forces it); at most [`MAX_LOGIT_BIAS_TOKENS`] tokens.
    pub logit_bias: Vec<(u32, f32)>,
}

/// The largest bias `logit_bias` may add or subtract.
pub const MAX_LOGIT_BIAS: f32 = 100.0;

/// The most tokens one request may bias.
pub const MAX_LOGIT_BIAS_TOKENS: usize = 1024;

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: 64,
            seed: None,
            logit_bias: Vec::new(),
        }
    }
}

impl SamplingParams {
    /// Greedy decoding: the most likely token at every step.
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }
}

/// A request to generate text from an already tokenized prompt.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    /// The prompt's token ids (already rendered through the chat template if any).
    pub prompt_tokens: Vec<u32>,
    /// Most tokens to generate; `None` generates until an end-of-sequence
    /// token, a stop string or the end of the model's context.
    pub max_tokens: Option<u32>,
    /// How to pick tokens.
    pub sampling: SamplingParams,
    /// Strings that end generation; the matched stop string is not emitted.
    pub stop: Vec<String>,
    /// Keep generating past the end-of-sequence token (benchmarks use this).
    pub ignore_eos: bool,
    /// Prefix-cache salt: requests with different salts never share KV
    /// cache blocks (tenants, API keys).
    pub cache_salt: String,
    /// The prompt's text spans (see [`crate::prefix`]) with the prompt
    /// tokens each covers, so that the node can report which prefixes it
    /// holds. Empty when the request did not come through a coordinator.
    pub prefix_spans: Vec<PrefixSpan>,
    /// Scheduling class: waiting interactive requests are admitted before
    /// batch ones, and batch sequences are preempted first.
    pub priority: Priority,
    /// The form the output must take; `None` leaves it free.
    pub constraint: Option<OutputConstraint>,
    /// Log-probabilities to report: `None` reports none, `Some(k)` reports
    /// each generated token's and its `k` most likely alternatives' (`k`
    /// at most [`MAX_TOP_LOGPROBS`]; nodes clamp larger values).
    pub logprobs: Option<u8>,
}

/// Most alternatives a request may ask log-probabilities of per token
/// (OpenAI's `top_logprobs` bound).
pub const MAX_TOP_LOGPROBS: u8 = 20;

/// How likely the model found one generated token, and its most likely
/// alternatives at that step.
///
/// Log-probabilities are natural logarithms of the distribution the
/// sampler drew from before its filters: the model's logits after the
/// repetition, presence and frequency penalties and the grammar's mask,
/// at temperature 1 (as vLLM's and OpenAI's: they do not change with
/// `temperature`, `top_k` or `top_p`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    /// The token's bytes (a piece of UTF-8, possibly partial).
    pub bytes: Vec<u8>,
    /// The token's log-probability.
    pub logprob: f32,
    /// The most likely tokens at this step, most likely first (ties by id).
    pub top: Vec<TopLogprob>,
}

/// One of the most likely tokens at a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    /// The token's id.
    pub token_id: u32,
    /// The token's bytes.
    pub bytes: Vec<u8>,
    /// Its log-probability.
    pub logprob: f32,
}

/// A grammar the generated text must follow: only tokens that keep the
/// output valid are sampled, and generation ends when it is complete.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OutputConstraint {
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    /// A JSON value valid under this JSON Schema (the schema's JSON text).
    JsonSchema(String),
    /// Text matching this regular expression, whole.
    Regex(String),
    /// Text of this Lark grammar (llguidance's dialect).
    Lark(String),
}

impl OutputConstraint {
    /// What kind of constraint this is, as error messages name it.
    pub fn kind(&self) -> &'static str {
        match self {
            OutputConstraint::JsonObject => "json_object",
            OutputConstraint::JsonSchema(_) => "json_schema",
            OutputConstraint::Regex(_) => "regex",
            OutputConstraint::Lark(_) => "grammar",
        }
    }
}

/// A request's scheduling class (its tenant's, set by the coordinator).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Someone is waiting for the answer: served first.
    #[default]
    Interactive,
    /// Throughput work (evals, bulk jobs): served when no interactive
    /// request waits, and preempted first.
    Batch,
}

impl Priority {
    /// The name used in configuration, the admin API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Interactive => "interactive",
            Priority::Batch => "batch",
        }
    }
}

/// One text span of a prompt and how far into its tokens it reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixSpan {
    /// The span's chained hash ([`crate::prefix::span_hashes`]).
    pub hash: u64,
    /// Prompt tokens covered by the text up to the end of this span (an estimate).
    pub tokens: u32,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model produced its end-of-sequence token or a stop string matched.
    Stop,
    /// `max_tokens` was reached.
    Length,
    /// The model called tools (set by the coordinator once it parsed
    /// calls out of the text; nodes never send it).
    ToolCalls,
}

impl FinishReason {
    /// The OpenAI spelling of this reason.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ToolCalls => "tool_calls",
        }
    }
}

/// Token counts of one finished request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: u32,
    /// Tokens generated.
    pub completion_tokens: u32,
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum GenerateError {
    /// The waiting queue is full; try again later (HTTP 429/503).
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// The request can never be served as asked (HTTP 400).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The model is not loaded here (HTTP 404).
    #[error("unknown model: {0}")]
    UnknownModel(String),
    /// The model worker crashed or is restarting; the request was not completed (HTTP 503).
    #[error("model unavailable: {0}")]
    Unavailable(String),
}

/// One event of a generation stream. A stream ends with exactly one
/// `Finished` or `Failed` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GenerateEvent {
    /// New text (never a partial UTF-8 character) and the ids of the tokens it came from.
    Token {
        /// Decoded text of these tokens; may be empty while a stop string or a
        /// multi-byte character is held back.
        text: String,
        /// Token ids generated since the previous event.
        token_ids: Vec<u32>,
        /// One entry per token of `token_ids` when the request asked for
        /// log-probabilities; empty otherwise.
        logprobs: Vec<TokenLogprob>,
    },
    /// Generation ended normally.
    Finished {
        /// Why it ended.
        reason: FinishReason,
        /// Token counts.
        usage: Usage,
    },
    /// Generation failed; no further events follow.
    Failed(GenerateError),
    /// No news: the request is still held (queued, preempted, or in a long
    /// prefill). Sent once a stream has been silent for [`KEEPALIVE_AFTER`],
    /// so that a peer's silence timeout catches dead nodes, not busy ones.
    /// Carries no text; consumers skip it.
    KeepAlive,
}

/// Silence after which a node sends [`GenerateEvent::KeepAlive`] on a
/// stream. Timeouts on event streams must be several times longer.
pub const KEEPALIVE_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

impl GenerateEvent {
    /// Whether this event ends its stream (`Finished` or `Failed`).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            GenerateEvent::Finished { .. } | GenerateEvent::Failed(_)
        )
    }
}
