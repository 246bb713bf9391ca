//! A Responses API request turned into the chat completion request it
//! asks for, so that it is validated, templated, constrained and routed
//! exactly like one.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::openai::errors::ApiError;

/// Body of `POST /v1/responses`, before validation.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ResponsesBody {
    /// Model name.
    pub model: Option<String>,
    /// A string (one user message) or a list of input items.
    pub input: Option<Value>,
    /// A system message put first (not carried to later responses).
    pub instructions: Option<String>,
    /// Function tools, in the Responses API's flat form.
    pub tools: Option<Vec<Value>>,
    /// `auto`, `none`, `required` or `{"type":"function","name":...}`.
    pub tool_choice: Option<Value>,
    /// Whether the model may make several calls at once.
    pub parallel_tool_calls: Option<bool>,
    /// `{"format": {...}}`: text, json_object or json_schema.
    pub text: Option<Value>,
    /// Most tokens to generate.
    pub max_output_tokens: Option<i64>,
    /// Softmax temperature.
    pub temperature: Option<f32>,
    /// Nucleus mass.
    pub top_p: Option<f32>,
    /// Sampler seed (extension).
    pub seed: Option<i64>,
    /// Stream the answer as Responses events.
    pub stream: Option<bool>,
    /// Keep the answer for `GET` and `previous_response_id` (default true).
    pub store: Option<bool>,
    /// The stored response this one continues.
    pub previous_response_id: Option<String>,
    /// Up to 16 string pairs echoed back.
    pub metadata: Option<Value>,
    /// Run in the background (not supported).
    pub background: Option<bool>,
    /// Every other field, for [`extra_params`](crate::openai::extra_params).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Most metadata pairs, and the longest key and value.
const MAX_METADATA: (usize, usize, usize) = (16, 64, 512);

/// The chat messages of `input` (after `history`, the stored conversation
/// it continues), in chat completions' JSON form.
pub fn messages(input: Option<Value>, history: Vec<Value>) -> Result<Vec<Value>, ApiError> {
    let mut out = history;
    match input {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid(
                "Missing required parameter: 'input'.",
                Some("input"),
            ))
        }
        Some(Value::String(text)) => out.push(json!({"role": "user", "content": text})),
        Some(Value::Array(items)) => {
            for (i, item) in items.into_iter().enumerate() {
                input_item(i, item, &mut out)?;
            }
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "'input' must be a string or an array of input items.",
                Some("input"),
            ))
        }
    }
    Ok(out)
}

fn input_item(i: usize, item: Value, out: &mut Vec<Value>) -> Result<(), ApiError> {
    let at = format!("input[{i}]");
    let Value::Object(item) = item else {
        return Err(ApiError::invalid(
            format!("'{at}' must be an object."),
            Some(&at),
        ));
    };
    let kind = item
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message");
    let field = |name: &str| -> Result<String, ApiError> {
        match item.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err(ApiError::invalid(
                format!("'{at}.{name}' must be a string."),
                Some(&format!("{at}.{name}")),
            )),
        }
    };
    match kind {
        "message" => {
            let role = field("role")?;
            let content = match item.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => content_parts(&at, parts)?,
                _ => {
                    return Err(ApiError::invalid(
                        format!("'{at}.content' must be a string or an array of content parts."),
                        Some(&format!("{at}.content")),
                    ))
                }
            };
            out.push(json!({"role": role, "content": content}));
        }
        "function_call" => {
            let call = json!({"id": field("call_id")?, "type": "function",
                "function": {"name": field("name")?, "arguments": field("arguments")?}});
            // Calls made together are one assistant message.
            let joined = out.last_mut().and_then(|last| {
                let calls = last.get_mut("tool_calls")?.as_array_mut()?;
                calls.push(call.clone());
                Some(())
            });
            if joined.is_none() {
                out.push(json!({"role": "assistant", "content": null, "tool_calls": [call]}));
            }
        }
        "function_call_output" => {
            let output = match item.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => field("output")?,
            };
            out.push(json!({"role": "tool", "tool_call_id": field("call_id")?, "content": output}));
        }
        other => {
            return Err(ApiError::invalid(
                format!("Input items of type '{other}' are not supported by this server."),
                Some(&format!("{at}.type")),
            ))
        }
    }
    Ok(())
}

/// The text of a message's content parts (`input_text`, `output_text`).
fn content_parts(at: &str, parts: &[Value]) -> Result<String, ApiError> {
    let mut text = String::new();
    for (j, part) in parts.iter().enumerate() {
        let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
        match (kind, part.get("text").and_then(Value::as_str)) {
            ("input_text" | "output_text" | "text", Some(t)) => text.push_str(t),
            _ => {
                return Err(ApiError::invalid(
                    format!(
                        "Only text content parts are supported (got type '{kind}' at {at}.content[{j}])."
                    ),
                    Some(&format!("{at}.content[{j}].type")),
                ))
            }
        }
    }
    Ok(text)
}

/// The chat completion request body that `body` asks for (with
/// `messages` already built), refusing what this server does not serve.
pub fn chat_body(body: &ResponsesBody, messages: Vec<Value>) -> Result<Value, ApiError> {
    if body.background == Some(true) {
        return Err(ApiError::invalid(
            "'background' responses are not supported by this server.",
            Some("background"),
        ));
    }
    metadata(body.metadata.as_ref())?;
    let mut chat = Map::new();
    chat.insert("model".into(), json!(body.model));
    chat.insert("messages".into(), Value::Array(messages));
    if let Some(tools) = &body.tools {
        let tools = tools
            .iter()
            .enumerate()
            .map(|(i, t)| function_tool(i, t))
            .collect::<Result<Vec<_>, _>>()?;
        if !tools.is_empty() {
            chat.insert("tools".into(), Value::Array(tools));
        }
    }
    if let Some(choice) = &body.tool_choice {
        let choice = match choice {
            Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
                json!({"type": "function", "function": {"name": o.get("name")}})
            }
            other => other.clone(),
        };
        chat.insert("tool_choice".into(), choice);
    }
    if let Some(p) = body.parallel_tool_calls {
        chat.insert("parallel_tool_calls".into(), json!(p));
    }
    if let Some(text) = &body.text {
        text_options(text)?;
        if let Some(rf) = text
            .get("format")
            .map(response_format)
            .transpose()?
            .flatten()
        {
            chat.insert("response_format".into(), rf);
        }
    }
    if let Some(m) = body.max_output_tokens {
        chat.insert("max_completion_tokens".into(), json!(m));
    }
    for (name, v) in [("temperature", body.temperature), ("top_p", body.top_p)] {
        if let Some(v) = v {
            chat.insert(name.into(), json!(v));
        }
    }
    if let Some(seed) = body.seed {
        chat.insert("seed".into(), json!(seed));
    }
    Ok(Value::Object(chat))
}

/// A Responses function tool (`{"type":"function","name",...}`) in chat's
/// nested form.
fn function_tool(i: usize, tool: &Value) -> Result<Value, ApiError> {
    let kind = tool.get("type").and_then(Value::as_str).unwrap_or("");
    if kind != "function" {
        return Err(ApiError::invalid(
            format!("Only function tools are supported by this server (tools[{i}] is '{kind}')."),
            Some(&format!("tools[{i}].type")),
        ));
    }
    let mut function = Map::new();
    for key in ["name", "description", "parameters", "strict"] {
        if let Some(v) = tool.get(key) {
            function.insert(key.into(), v.clone());
        }
    }
    Ok(json!({"type": "function", "function": function}))
}

/// `text`'s fields besides `format`: only the default verbosity can be
/// honoured (the model's answer is as long as it is).
fn text_options(text: &Value) -> Result<(), ApiError> {
    let Some(object) = text.as_object() else {
        return Err(ApiError::invalid("'text' must be an object.", Some("text")));
    };
    for (key, value) in object {
        let ok = match key.as_str() {
            "format" => true,
            "verbosity" => value.is_null() || value == "medium",
            _ => value.is_null(),
        };
        if !ok {
            let param = format!("text.{key}");
            return Err(ApiError::invalid(
                format!("'{param}' is not supported by this server."),
                Some(&param),
            ));
        }
    }
    Ok(())
}

/// `text.format` as chat's `response_format` (`None` for plain text).
fn response_format(format: &Value) -> Result<Option<Value>, ApiError> {
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut schema = Map::new();
            for key in ["name", "schema", "strict", "description"] {
                if let Some(v) = format.get(key) {
                    schema.insert(key.into(), v.clone());
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        _ => Err(ApiError::invalid(
            "'text.format.type' must be 'text', 'json_object' or 'json_schema'.",
            Some("text.format.type"),
        )),
    }
}

/// `metadata`: at most 16 string pairs, keys up to 64 and values up to
/// 512 characters (OpenAI's bounds).
fn metadata(m: Option<&Value>) -> Result<(), ApiError> {
    let bad = || {
        Err(ApiError::invalid(
            format!(
                "'metadata' must be an object of at most {} string values, keys up to {} and \
                 values up to {} characters.",
                MAX_METADATA.0, MAX_METADATA.1, MAX_METADATA.2
            ),
            Some("metadata"),
        ))
    };
    match m {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Object(o)) if o.len() <= MAX_METADATA.0 => {
            for (k, v) in o {
                match v.as_str() {
                    Some(v)
                        if k.chars().count() <= MAX_METADATA.1
                            && v.chars().count() <= MAX_METADATA.2 => {}
                    _ => return bad(),
                }
            }
            Ok(())
        }
        Some(_) => bad(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_items_become_chat_messages() {
        let input = json!([
            {"role": "user", "content": "Weather in Paris?"},
            {"type": "function_call", "call_id": "call_1", "name": "w", "arguments": "{}"},
            {"type": "function_call", "call_id": "call_2", "name": "w", "arguments": "{\"a\":1}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Thanks"}]},
        ]);
        let history = vec![json!({"role": "user", "content": "Hi"})];
        let m = messages(Some(input), history).unwrap();
        assert_eq!(m.len(), 5, "{m:?}");
        assert_eq!(m[0]["content"], "Hi");
        assert_eq!(m[2]["tool_calls"].as_array().unwrap().len(), 2);
        assert_eq!(
            m[3],
            json!({"role": "tool", "tool_call_id": "call_1", "content": "sunny"})
        );
        assert_eq!(m[4]["content"], "Thanks");
        let m = messages(Some(json!("Hello")), Vec::new()).unwrap();
        assert_eq!(m, [json!({"role": "user", "content": "Hello"})]);
    }

    #[test]
    fn unsupported_inputs_name_the_field() {
        for (input, param) in [
            (json!(null), "input"),
            (json!(5), "input"),
            (json!([{"type": "reasoning"}]), "input[0].type"),
            (
                json!([{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]),
                "input[0].content[0].type",
            ),
            (
                json!([{"type": "function_call", "name": "w"}]),
                "input[0].call_id",
            ),
            (json!(["x"]), "input[0]"),
        ] {
            let e = messages(Some(input), Vec::new()).unwrap_err();
            assert_eq!(e.param(), Some(param), "{}", e.message());
        }
    }

    #[test]
    fn options_map_to_chat_parameters() {
        let body: ResponsesBody = serde_json::from_value(json!({
            "model": "m", "input": "x", "max_output_tokens": 20, "temperature": 0.5,
            "tools": [{"type": "function", "name": "w", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "w"},
            "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}, "strict": true}},
        }))
        .unwrap();
        let chat = chat_body(&body, Vec::new()).unwrap();
        assert_eq!(chat["max_completion_tokens"], 20);
        assert_eq!(chat["tools"][0]["function"]["name"], "w");
        assert_eq!(chat["tool_choice"]["function"]["name"], "w");
        assert_eq!(chat["response_format"]["json_schema"]["name"], "s");
        for (extra, param) in [
            (json!({"background": true}), "background"),
            (json!({"tools": [{"type": "web_search"}]}), "tools[0].type"),
            (
                json!({"text": {"format": {"type": "xml"}}}),
                "text.format.type",
            ),
            (json!({"metadata": {"k": 1}}), "metadata"),
        ] {
            let body: ResponsesBody = serde_json::from_value(extra).unwrap();
            let e = chat_body(&body, Vec::new()).unwrap_err();
            assert_eq!(e.param(), Some(param), "{}", e.message());
        }
    }
}
