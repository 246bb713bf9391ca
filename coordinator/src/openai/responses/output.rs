//! Response objects: what a finished (or starting) response says, in the
//! Responses API's shape.

use protocol::FinishReason;
use serde_json::{json, Value};

use super::translate::ResponsesBody;
use crate::openai::dispatch::{response_id, unix_now};

/// A function call the model made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Call {
    /// The call id (`call_...`), which `function_call_output` answers.
    pub call_id: String,
    /// The function.
    pub name: String,
    /// Its arguments, JSON text.
    pub arguments: String,
}

impl Call {
    /// The output item id of this call.
    pub(crate) fn item_id(&self) -> String {
        format!("fc_{}", self.call_id.trim_start_matches("call_"))
    }
}

/// What the model answered.
#[derive(Debug, Clone, Default)]
pub(crate) struct Outcome {
    /// Its text (outside tool calls).
    pub text: String,
    /// Its function calls.
    pub calls: Vec<Call>,
    /// Why it ended (`None`: still running).
    pub reason: Option<FinishReason>,
    /// Prompt and generated tokens.
    pub usage: protocol::Usage,
}

impl Outcome {
    /// The outcome in a whole chat completion body.
    pub(crate) fn from_chat(chat: &Value) -> Self {
        let choice = &chat["choices"][0];
        let message = &choice["message"];
        let calls = message["tool_calls"]
            .as_array()
            .map(|calls| {
                calls
                    .iter()
                    .map(|c| Call {
                        call_id: c["id"].as_str().unwrap_or_default().to_string(),
                        name: c["function"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        arguments: c["function"]["arguments"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let reason = match choice["finish_reason"].as_str() {
            Some("length") => FinishReason::Length,
            Some("tool_calls") => FinishReason::ToolCalls,
            _ => FinishReason::Stop,
        };
        let tokens = |k: &str| {
            chat["usage"][k]
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0)
        };
        Self {
            text: message["content"].as_str().unwrap_or_default().to_string(),
            calls,
            reason: Some(reason),
            usage: protocol::Usage {
                prompt_tokens: tokens("prompt_tokens"),
                completion_tokens: tokens("completion_tokens"),
            },
        }
    }

    /// The answer as the chat message a later turn is given.
    pub(crate) fn assistant_message(&self) -> Value {
        if self.calls.is_empty() {
            return json!({"role": "assistant", "content": self.text});
        }
        let calls: Vec<Value> = self
            .calls
            .iter()
            .map(|c| {
                json!({"id": c.call_id, "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments}})
            })
            .collect();
        let content = (!self.text.is_empty()).then(|| self.text.clone());
        json!({"role": "assistant", "content": content, "tool_calls": calls})
    }

    /// The output items: the message (if there is text, or nothing else),
    /// then one per call.
    pub(crate) fn items(&self, message_id: &str, done: bool) -> Vec<Value> {
        let status = if done { "completed" } else { "in_progress" };
        let mut items = Vec::new();
        if !self.text.is_empty() || self.calls.is_empty() {
            items.push(message_item(message_id, &self.text, status));
        }
        for c in &self.calls {
            items.push(call_item(c, status));
        }
        items
    }
}

/// A message output item holding `text`.
pub(crate) fn message_item(id: &str, text: &str, status: &str) -> Value {
    let content: Vec<Value> = if status == "completed" || !text.is_empty() {
        vec![text_part(text)]
    } else {
        Vec::new()
    };
    json!({"type": "message", "id": id, "status": status, "role": "assistant", "content": content})
}

/// An `output_text` content part.
pub(crate) fn text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": []})
}

/// A function call output item.
pub(crate) fn call_item(c: &Call, status: &str) -> Value {
    json!({"type": "function_call", "id": c.item_id(), "call_id": c.call_id,
        "name": c.name, "arguments": c.arguments, "status": status})
}

/// The parts of a response object fixed when the request arrives.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    id: String,
    message_id: String,
    created_at: u64,
    model: String,
    echo: Value,
}

impl Pending {
    /// The response to `body`, for `model`.
    pub(crate) fn new(body: &ResponsesBody, model: String) -> Self {
        let format = body
            .text
            .as_ref()
            .and_then(|t| t.get("format"))
            .cloned()
            .unwrap_or_else(|| json!({"type": "text"}));
        Self {
            id: response_id("resp_"),
            message_id: response_id("msg_"),
            created_at: unix_now(),
            model,
            echo: json!({
                "instructions": body.instructions,
                "previous_response_id": body.previous_response_id,
                "tools": body.tools.clone().unwrap_or_default(),
                "tool_choice": body.tool_choice.clone().unwrap_or_else(|| json!("auto")),
                "parallel_tool_calls": body.parallel_tool_calls.unwrap_or(true),
                "temperature": body.temperature,
                "top_p": body.top_p,
                "max_output_tokens": body.max_output_tokens,
                "text": {"format": format},
                "metadata": body.metadata.clone().unwrap_or_else(|| json!({})),
            }),
        }
    }

    /// The response id.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The id of the message output item.
    pub(crate) fn message_id(&self) -> &str {
        &self.message_id
    }

    /// The response object of `outcome` (in progress while it has no reason).
    pub(crate) fn object(&self, outcome: &Outcome, store: bool) -> Value {
        let (status, incomplete) = match outcome.reason {
            None => ("in_progress", Value::Null),
            Some(FinishReason::Length) => ("incomplete", json!({"reason": "max_output_tokens"})),
            Some(_) => ("completed", Value::Null),
        };
        let done = outcome.reason.is_some();
        let usage = if done {
            let u = outcome.usage;
            json!({
                "input_tokens": u.prompt_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": u.completion_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": u.prompt_tokens + u.completion_tokens,
            })
        } else {
            Value::Null
        };
        let output = if done {
            outcome.items(&self.message_id, true)
        } else {
            Vec::new()
        };
        let mut object = json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": null,
            "incomplete_details": incomplete,
            "model": self.model,
            "output": output,
            "usage": usage,
            "store": store,
        });
        if let (Some(o), Some(echo)) = (object.as_object_mut(), self.echo.as_object()) {
            for (k, v) in echo {
                o.insert(k.clone(), v.clone());
            }
        }
        object
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(message: Value, reason: &str) -> Value {
        json!({"choices": [{"index": 0, "message": message, "finish_reason": reason}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3}})
    }

    #[test]
    fn a_text_answer_is_one_message_item() {
        let o = Outcome::from_chat(&chat(json!({"role": "assistant", "content": "Hi"}), "stop"));
        let body = ResponsesBody::default();
        let object = Pending::new(&body, "m".into()).object(&o, true);
        assert_eq!(object["status"], "completed");
        assert_eq!(object["output"][0]["type"], "message");
        assert_eq!(object["output"][0]["content"][0]["text"], "Hi");
        assert_eq!(object["usage"]["total_tokens"], 10);
        assert!(object["id"].as_str().is_some_and(super::super::valid_id));
        assert_eq!(
            o.assistant_message(),
            json!({"role": "assistant", "content": "Hi"})
        );
    }

    #[test]
    fn calls_are_function_call_items_and_length_is_incomplete() {
        let message = json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_abc", "type": "function", "function": {"name": "w", "arguments": "{}"}}]});
        let o = Outcome::from_chat(&chat(message, "tool_calls"));
        let object = Pending::new(&ResponsesBody::default(), "m".into()).object(&o, false);
        let items = object["output"].as_array().unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["type"], "function_call");
        assert_eq!(items[0]["id"], "fc_abc");
        assert_eq!(items[0]["call_id"], "call_abc");
        assert_eq!(o.assistant_message()["tool_calls"][0]["id"], "call_abc");
        let cut = Outcome::from_chat(&chat(json!({"content": "long"}), "length"));
        let object = Pending::new(&ResponsesBody::default(), "m".into()).object(&cut, false);
        assert_eq!(object["status"], "incomplete");
        assert_eq!(object["incomplete_details"]["reason"], "max_output_tokens");
    }
}
