//! Turns OpenAI request bodies into [`InferenceRequest`]s, with 400
//! messages that name the offending parameter.

use protocol::{ChatMessage, InferenceRequest, Prompt, SamplingParams, ToolCall};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::errors::ApiError;
use super::extra_params::{self, Route};
use super::request::{
    ChatCompletionRequest, ChatMessageIn, CompletionRequest, GenerationParams, MessageContent,
    PromptIn, StopIn, ToolCallIn,
};
use super::tools::{self, ToolPlan};

/// Most stop strings one request may carry.
const MAX_STOP_STRINGS: usize = 16;

/// Longest `cache_salt`, in bytes.
const MAX_CACHE_SALT_BYTES: usize = 256;

/// Most tool calls one assistant message may carry.
const MAX_CALLS_PER_MESSAGE: usize = 128;

/// Longest tool call id, in bytes.
const MAX_CALL_ID_BYTES: usize = 256;

/// A validated request and how to answer it.
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    /// What to send to a replica.
    pub request: InferenceRequest,
    /// Answer with server-sent events.
    pub stream: bool,
    /// Streaming: end with a chunk that carries the usage.
    pub include_usage: bool,
    /// The tools offered, checked; their grammar and definitions are added
    /// once the model's tool format is known.
    pub tools: Option<ToolPlan>,
    /// How many choices to generate for the prompt (`n`, 1..=[`MAX_CHOICES`]).
    pub n: u8,
}

/// Most choices one request may ask for (`n`).
pub const MAX_CHOICES: u8 = 16;

/// Parses a JSON body into `T`; malformed JSON and wrong types are 400s
/// naming the field when it can be found.
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::invalid(
            format!("We could not parse the JSON body of your request: {e}"),
            None,
        )
    })?;
    parse_value(&value)
}

/// Deserializes a JSON value into `T`, as [`parse_body`] does.
pub fn parse_value<T: DeserializeOwned>(value: &Value) -> Result<T, ApiError> {
    let Some(object) = value.as_object() else {
        return Err(ApiError::invalid(
            "The request body must be a JSON object.",
            None,
        ));
    };
    T::deserialize(value).map_err(|e| match bad_param::<T>(object) {
        Some(param) => {
            let detail = expectation(&param).map_or_else(|| e.to_string(), str::to_string);
            ApiError::invalid(
                format!("Invalid type or value for '{param}': {detail}."),
                Some(&param),
            )
        }
        None => ApiError::invalid(format!("Invalid request body: {e}."), None),
    })
}

/// The first top-level field that fails to deserialize on its own.
fn bad_param<T: DeserializeOwned>(object: &Map<String, Value>) -> Option<String> {
    object.iter().find_map(|(key, value)| {
        let mut single = Map::new();
        single.insert(key.clone(), value.clone());
        T::deserialize(&Value::Object(single))
            .is_err()
            .then(|| key.clone())
    })
}

/// What a field that serde describes poorly (untagged enums) should be.
fn expectation(param: &str) -> Option<&'static str> {
    match param {
        "stop" => Some("expected a string or an array of strings"),
        "prompt" => Some("expected a string or an array of one string"),
        "messages" => Some(
            "expected an array of messages, each with a string 'role' and a 'content' \
             that is a string or an array of text parts",
        ),
        _ => None,
    }
}

/// Validates a chat completion request.
pub fn chat(mut req: ChatCompletionRequest) -> Result<Validated, ApiError> {
    let model = model(req.model)?;
    extra_params::check(Route::Chat, &req.extra)?;
    let plan = tools::spec::parse(
        req.params.tools.take(),
        req.params.tool_choice.take(),
        req.params.parallel_tool_calls.take(),
    )?;
    let Some(messages) = req.messages else {
        return Err(ApiError::invalid(
            "Missing required parameter: 'messages'.",
            Some("messages"),
        ));
    };
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "'messages' must contain at least one message.",
            Some("messages"),
        ));
    }
    let messages = messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| chat_message(i, m))
        .collect::<Result<Vec<_>, _>>()?;
    let constrained = req.params.response_format.is_some()
        || req.params.grammar.is_some()
        || req.params.regex.is_some();
    if plan.is_some() && constrained {
        return Err(ApiError::invalid(
            "'tools' cannot be combined with 'response_format', 'grammar' or 'regex': \
             tool calls have their own grammar. Use tool_choice \"none\" to constrain text.",
            Some("tools"),
        ));
    }
    let logprobs =
        super::logprobs::chat_param(req.params.logprobs.take(), req.params.top_logprobs.take())?;
    let mut v = finish(model, Prompt::Chat(messages), req.params)?;
    v.tools = plan;
    v.request.logprobs = logprobs;
    Ok(v)
}

/// `logit_bias`: an object from token ids (decimal strings) to biases
/// within ±100, as OpenAI takes it. Ids past the model's vocabulary are
/// refused by the node.
fn logit_bias(value: Option<Value>) -> Result<Vec<(u32, f32)>, ApiError> {
    let bad = |why: String| {
        ApiError::invalid(format!("Invalid 'logit_bias': {why}."), Some("logit_bias"))
    };
    let map = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(map)) => map,
        Some(_) => return Err(bad("expected an object from token ids to numbers".into())),
    };
    if map.len() > protocol::MAX_LOGIT_BIAS_TOKENS {
        return Err(bad(format!(
            "at most {} tokens may be biased",
            protocol::MAX_LOGIT_BIAS_TOKENS
        )));
    }
    map.iter()
        .map(|(key, v)| {
            let token: u32 = key
                .parse()
                .map_err(|_| bad(format!("key {key:?} is not a token id")))?;
            let bias = v
                .as_f64()
                .filter(|b| b.abs() <= f64::from(protocol::MAX_LOGIT_BIAS))
                .ok_or_else(|| {
                    bad(format!(
                        "the bias of token {token} must be a number from -100 to 100"
                    ))
                })?;
            Ok((token, bias as f32))
        })
        .collect()
}

/// Validates a text completion request.
pub fn completion(mut req: CompletionRequest) -> Result<Validated, ApiError> {
    let model = model(req.model)?;
    extra_params::check(Route::Completions, &req.extra)?;
    let logprobs = super::logprobs::completion_param(
        req.params.logprobs.take(),
        req.params.top_logprobs.take(),
    )?;
    for (param, given) in [
        ("tools", req.params.tools.is_some()),
        ("tool_choice", req.params.tool_choice.is_some()),
        (
            "parallel_tool_calls",
            req.params.parallel_tool_calls.is_some(),
        ),
    ] {
        if given {
            return Err(ApiError::invalid(
                format!("'{param}' is only supported by /v1/chat/completions."),
                Some(param),
            ));
        }
    }
    let prompt = match req.prompt {
        None => {
            return Err(ApiError::invalid(
                "Missing required parameter: 'prompt'.",
                Some("prompt"),
            ))
        }
        Some(PromptIn::Text(text)) => text,
        Some(PromptIn::Array(items)) => match <[Value; 1]>::try_from(items) {
            Ok([Value::String(text)]) => text,
            _ => {
                return Err(ApiError::invalid(
                    "'prompt' must be a string or an array of exactly one string; batched \
                     and token-id prompts are not supported.",
                    Some("prompt"),
                ))
            }
        },
    };
    let mut v = finish(model, Prompt::Text(prompt), req.params)?;
    v.request.allow_special_tokens = req.allow_special_tokens.unwrap_or(false);
    v.request.logprobs = logprobs;
    Ok(v)
}

fn model(model: Option<String>) -> Result<String, ApiError> {
    match model {
        Some(m) if !m.trim().is_empty() => Ok(m),
        _ => Err(ApiError::invalid(
            "You must provide a model parameter.",
            Some("model"),
        )),
    }
}

pub(crate) fn chat_message(index: usize, m: ChatMessageIn) -> Result<ChatMessage, ApiError> {
    let param = format!("messages[{index}]");
    let role = match m.role.as_str() {
        "system" | "developer" => "system",
        "user" => "user",
        "assistant" => "assistant",
        "tool" => "tool",
        other => {
            return Err(ApiError::invalid(
                format!(
                    "Unsupported role '{other}' in {param}; expected system, developer, \
                     user, assistant or tool."
                ),
                Some(&format!("{param}.role")),
            ))
        }
    };
    let content = match m.content {
        None => String::new(),
        Some(MessageContent::Text(text)) => text,
        Some(MessageContent::Parts(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for part in parts {
                match (part.kind.as_str(), part.text) {
                    ("text", Some(text)) => texts.push(text),
                    (kind, _) => {
                        return Err(ApiError::invalid(
                            format!(
                                "Unsupported content part of type '{kind}' in {param}; only \
                                 text parts with a 'text' field are supported."
                            ),
                            Some(&format!("{param}.content")),
                        ))
                    }
                }
            }
            texts.join("\n")
        }
    };
    let mut message = ChatMessage::new(role, content);
    message.tool_calls = tool_calls(&param, role, m.tool_calls)?;
    message.tool_call_id = tool_call_id(&param, role, m.tool_call_id)?;
    Ok(message)
}

/// The calls of an assistant message: only assistants make them, each a
/// function call whose arguments are a JSON object.
fn tool_calls(
    param: &str,
    role: &str,
    calls: Option<Vec<ToolCallIn>>,
) -> Result<Vec<ToolCall>, ApiError> {
    let calls = calls.unwrap_or_default();
    if calls.is_empty() {
        return Ok(Vec::new());
    }
    let at = |what: &str| format!("{param}.tool_calls{what}");
    if role != "assistant" {
        return Err(ApiError::invalid(
            format!("Only assistant messages may carry 'tool_calls' ({param} is {role})."),
            Some(&at("")),
        ));
    }
    if calls.len() > MAX_CALLS_PER_MESSAGE {
        return Err(ApiError::invalid(
            format!("A message may carry at most {MAX_CALLS_PER_MESSAGE} tool calls."),
            Some(&at("")),
        ));
    }
    calls
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            if c.kind.as_deref().is_some_and(|k| k != "function") {
                return Err(ApiError::invalid(
                    format!("Only 'function' tool calls are supported in {param}."),
                    Some(&at(&format!("[{i}].type"))),
                ));
            }
            if c.id.len() > MAX_CALL_ID_BYTES {
                return Err(ApiError::invalid(
                    format!("A tool call id may be at most {MAX_CALL_ID_BYTES} bytes long."),
                    Some(&at(&format!("[{i}].id"))),
                ));
            }
            let arguments_ok =
                serde_json::from_str::<Value>(&c.function.arguments).is_ok_and(|v| v.is_object());
            if !arguments_ok {
                return Err(ApiError::invalid(
                    format!(
                        "The arguments of {param}'s tool call {i} must be a JSON object, \
                         encoded as a string."
                    ),
                    Some(&at(&format!("[{i}].function.arguments"))),
                ));
            }
            Ok(ToolCall {
                id: c.id,
                name: c.function.name,
                arguments: c.function.arguments,
            })
        })
        .collect()
}

/// The id of the call a `tool` message answers: required there, refused
/// elsewhere.
fn tool_call_id(param: &str, role: &str, id: Option<String>) -> Result<Option<String>, ApiError> {
    let at = format!("{param}.tool_call_id");
    match (role, id) {
        ("tool", None) => Err(ApiError::invalid(
            format!("A tool message needs the 'tool_call_id' of the call it answers ({param})."),
            Some(&at),
        )),
        ("tool", Some(id)) if id.len() > MAX_CALL_ID_BYTES => Err(ApiError::invalid(
            format!("A tool call id may be at most {MAX_CALL_ID_BYTES} bytes long."),
            Some(&at),
        )),
        ("tool", Some(id)) => Ok(Some(id)),
        (_, None) => Ok(None),
        (_, Some(_)) => Err(ApiError::invalid(
            format!("Only tool messages may carry 'tool_call_id' ({param} is {role})."),
            Some(&at),
        )),
    }
}

fn finish(model: String, prompt: Prompt, p: GenerationParams) -> Result<Validated, ApiError> {
    let n = match p.n {
        None => 1,
        Some(n) => match u8::try_from(n) {
            Ok(n) if (1..=MAX_CHOICES).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid(
                    format!("'n' must be an integer from 1 to {MAX_CHOICES}, got {n}."),
                    Some("n"),
                ))
            }
        },
    };
    let temperature = in_range("temperature", p.temperature, 1.0, 0.0, 2.0, false)?;
    let top_p = in_range("top_p", p.top_p, 1.0, 0.0, 1.0, true)?;
    let presence_penalty = in_range(
        "presence_penalty",
        p.presence_penalty,
        0.0,
        -2.0,
        2.0,
        false,
    )?;
    let frequency_penalty = in_range(
        "frequency_penalty",
        p.frequency_penalty,
        0.0,
        -2.0,
        2.0,
        false,
    )?;
    let min_p = in_range("min_p", p.min_p, 0.0, 0.0, 1.0, false)?;
    let repetition_penalty = match p.repetition_penalty {
        None => 1.0,
        Some(r) if r.is_finite() && r > 0.0 => r,
        Some(r) => {
            return Err(ApiError::invalid(
                format!("'repetition_penalty' must be greater than 0, got {r}."),
                Some("repetition_penalty"),
            ))
        }
    };
    let top_k = match p.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) => u32::try_from(k).map_err(|_| {
            ApiError::invalid(
                format!("'top_k' must be -1 (disabled) or a non-negative integer, got {k}."),
                Some("top_k"),
            )
        })?,
    };
    let (max_param, max_value) = match (p.max_completion_tokens, p.max_tokens) {
        (Some(m), _) => ("max_completion_tokens", Some(m)),
        (None, m) => ("max_tokens", m),
    };
    let max_tokens = match max_value {
        None => None,
        Some(m) => Some(u32::try_from(m).ok().filter(|&m| m >= 1).ok_or_else(|| {
            ApiError::invalid(
                format!("'{max_param}' must be an integer of at least 1, got {m}."),
                Some(max_param),
            )
        })?),
    };
    let stop = match p.stop {
        None => Vec::new(),
        Some(StopIn::One(s)) => vec![s],
        Some(StopIn::Many(v)) => v,
    };
    let stop: Vec<String> = stop.into_iter().filter(|s| !s.is_empty()).collect();
    if stop.len() > MAX_STOP_STRINGS {
        return Err(ApiError::invalid(
            format!("'stop' may contain at most {MAX_STOP_STRINGS} strings."),
            Some("stop"),
        ));
    }
    let sampling = SamplingParams {
        temperature,
        top_k,
        top_p,
        min_p,
        repetition_penalty,
        presence_penalty,
        frequency_penalty,
        // Reinterpreting the bits keeps negative seeds distinct and reproducible.
        seed: p.seed.map(|s| s as u64),
        logit_bias: logit_bias(p.logit_bias)?,
        ..SamplingParams::default()
    };
    let cache_salt = p.cache_salt.unwrap_or_default();
    if cache_salt.len() > MAX_CACHE_SALT_BYTES {
        return Err(ApiError::invalid(
            format!("'cache_salt' may be at most {MAX_CACHE_SALT_BYTES} bytes long."),
            Some("cache_salt"),
        ));
    }
    let constraint = super::constraint::parse(p.response_format, p.grammar, p.regex)?;
    let stream = p.stream.unwrap_or(false);
    let include_usage = stream
        && p.stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false);
    Ok(Validated {
        request: InferenceRequest {
            model,
            prompt,
            max_tokens,
            sampling,
            stop,
            ignore_eos: p.ignore_eos.unwrap_or(false),
            cache_salt,
            allow_special_tokens: false,
            priority: Default::default(),
            constraint,
            tools: None,
            logprobs: None,
        },
        stream,
        include_usage,
        tools: None,
        n,
    })
}

/// `value` (or `default`) if it lies in `min..=max` (`(min, max]` when
/// `exclusive_min`).
fn in_range(
    name: &str,
    value: Option<f32>,
    default: f32,
    min: f32,
    max: f32,
    exclusive_min: bool,
) -> Result<f32, ApiError> {
    let Some(v) = value else {
        return Ok(default);
    };
    let above_min = if exclusive_min { v > min } else { v >= min };
    if v.is_finite() && above_min && v <= max {
        Ok(v)
    } else {
        let open = if exclusive_min { "(" } else { "[" };
        Err(ApiError::invalid(
            format!("'{name}' must be in {open}{min}, {max}], got {v}."),
            Some(name),
        ))
    }
}

/// The prefix-cache salt of a request: the hash of its owner (its tenant,
/// or its API key when auth is off; so that different owners never share
/// cached blocks), then the request's own `cache_salt`.
pub fn salt_with_owner(owner: &str, requested: &str) -> String {
    use sha2::{Digest, Sha256};
    if owner.is_empty() {
        return requested.to_string();
    }
    let digest = Sha256::new()
        .chain_update(b"inferno-cache-salt\0")
        .chain_update(owner.as_bytes())
        .finalize();
    let hex = protocol::hex::lower_hex(&digest[..16]);
    format!("owner:{hex}/{requested}")
}
