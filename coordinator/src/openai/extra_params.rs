//! Request fields that no typed body names: each is accepted because it
//! cannot change the answer (`user`, `prompt_cache_key`, ...), or refused
//! with a 400 that names it, as OpenAI refuses them. Nothing a client asks
//! for is dropped in silence. A `null` value is always accepted: clients
//! serialize unset options as `null`.

use serde_json::{Map, Value};

use super::errors::ApiError;

/// The route a body was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/completions`.
    Completions,
    /// `POST /v1/responses`.
    Responses,
}

/// Checks the fields of a body that its typed form did not take.
pub fn check(route: Route, extra: &Map<String, Value>) -> Result<(), ApiError> {
    for (key, value) in extra {
        if !value.is_null() {
            field(route, key, value)?;
        }
    }
    Ok(())
}

/// One field: `Ok` when accepting it honours what it asks.
fn field(route: Route, key: &str, value: &Value) -> Result<(), ApiError> {
    use Route::{Chat, Completions, Responses};
    let refuse = |why: &str| Err(ApiError::invalid(format!("'{key}' {why}"), Some(key)));
    match (route, key) {
        // Identify the end user or group requests for caching: they cannot
        // change an answer, and the prefix cache works without the hint.
        (_, "user" | "safety_identifier" | "prompt_cache_key") => {
            if value.is_string() {
                Ok(())
            } else {
                refuse("must be a string.")
            }
        }
        (_, "service_tier") => match value.as_str() {
            Some("auto" | "default") => Ok(()),
            _ => refuse("may only be \"auto\" or \"default\" on this server."),
        },
        // llama.cpp's switch for its prompt cache; ours is always on and
        // never changes an answer.
        (Chat | Completions, "cache_prompt") => match value {
            Value::Bool(_) => Ok(()),
            _ => refuse("must be a boolean."),
        },
        (Chat, "metadata") => match value {
            Value::Object(_) => Ok(()),
            _ => refuse("must be an object of string pairs."),
        },
        (Chat, "store") => match value {
            Value::Bool(false) => Ok(()),
            _ => refuse(
                "is not supported on chat completions here: use /v1/responses to store answers.",
            ),
        },
        (Chat, "modalities") => match value.as_array().map(Vec::as_slice) {
            Some([only]) if only == "text" => Ok(()),
            _ => refuse("may only be [\"text\"] on this server."),
        },
        (Chat, "functions" | "function_call") => {
            refuse("is deprecated and not supported: use 'tools' and 'tool_choice'.")
        }
        (Completions, "echo") => match value {
            Value::Bool(false) => Ok(()),
            _ => refuse("is not supported by this server."),
        },
        (Completions, "suffix") => match value.as_str() {
            Some("") => Ok(()),
            _ => refuse("is not supported by this server."),
        },
        (Completions, "best_of") => match value.as_i64() {
            Some(1) => Ok(()),
            _ => refuse("is not supported by this server (use 'n')."),
        },
        // The models served here do not reason, so there are no reasoning
        // items whose encrypted content could be asked for.
        (Responses, "reasoning") => reasoning(value),
        (Responses, "include") => include(value),
        (Responses, "truncation") => match value.as_str() {
            Some("disabled") => Ok(()),
            _ => refuse(
                "may only be \"disabled\" on this server: an input longer than the model's \
                 context is refused, never cut.",
            ),
        },
        (Responses, "top_logprobs") => match value.as_i64() {
            Some(0) => Ok(()),
            _ => refuse("is not supported on /v1/responses here: use /v1/chat/completions."),
        },
        (Responses, "stream_options") => match value {
            Value::Object(_) => Ok(()),
            _ => refuse("must be an object."),
        },
        (
            Chat,
            "audio" | "prediction" | "web_search_options" | "reasoning_effort" | "verbosity",
        )
        | (Responses, "prompt" | "conversation" | "max_tool_calls") => {
            refuse("is not supported by this server.")
        }
        _ => Err(ApiError::invalid(
            format!("Unrecognized request argument supplied: {key}"),
            Some(key),
        )),
    }
}

/// `reasoning`: only an empty request for it (no effort) is honoured.
fn reasoning(value: &Value) -> Result<(), ApiError> {
    let Some(object) = value.as_object() else {
        return Err(ApiError::invalid(
            "'reasoning' must be an object.",
            Some("reasoning"),
        ));
    };
    for (key, v) in object {
        let harmless = v.is_null() || (key == "effort" && v == "none");
        if !harmless {
            let param = format!("reasoning.{key}");
            return Err(ApiError::invalid(
                format!("Unsupported parameter: '{param}' is not supported with the models served here."),
                Some(&param),
            ));
        }
    }
    Ok(())
}

/// `include`: a list of extra output data, of which only the (always
/// empty) encrypted reasoning content can be given.
fn include(value: &Value) -> Result<(), ApiError> {
    let Some(items) = value.as_array() else {
        return Err(ApiError::invalid(
            "'include' must be an array of strings.",
            Some("include"),
        ));
    };
    for (i, item) in items.iter().enumerate() {
        if item.as_str() != Some("reasoning.encrypted_content") {
            let param = format!("include[{i}]");
            return Err(ApiError::invalid(
                format!("'{param}' asks for {item}, which this server does not produce."),
                Some(&param),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn run(route: Route, body: Value) -> Result<(), Option<String>> {
        let Value::Object(extra) = body else {
            panic!("test bodies are objects")
        };
        check(route, &extra).map_err(|e| e.param().map(str::to_string))
    }

    #[test]
    fn harmless_fields_and_nulls_are_accepted() {
        let ok = json!({
            "user": "u1", "prompt_cache_key": "k", "service_tier": "auto",
            "metadata": {"a": "b"}, "store": false,
            "modalities": ["text"], "audio": null, "cache_prompt": true,
        });
        assert_eq!(run(Route::Chat, ok), Ok(()));
        let ok = json!({
            "reasoning": {"effort": null, "summary": null},
            "include": ["reasoning.encrypted_content"], "truncation": "disabled",
            "safety_identifier": "s", "top_logprobs": 0, "stream_options": {},
        });
        assert_eq!(run(Route::Responses, ok), Ok(()));
        let ok = json!({"echo": false, "suffix": "", "best_of": 1});
        assert_eq!(run(Route::Completions, ok), Ok(()));
    }

    #[test]
    fn fields_asking_for_what_is_not_done_are_refused_by_name() {
        for (route, body, param) in [
            (Route::Chat, json!({"store": true}), "store"),
            (Route::Chat, json!({"functions": []}), "functions"),
            (
                Route::Chat,
                json!({"modalities": ["text", "audio"]}),
                "modalities",
            ),
            (
                Route::Chat,
                json!({"reasoning_effort": "low"}),
                "reasoning_effort",
            ),
            (Route::Chat, json!({"user": 5}), "user"),
            (
                Route::Chat,
                json!({"service_tier": "priority"}),
                "service_tier",
            ),
            (Route::Chat, json!({"frobnicate": 1}), "frobnicate"),
            (Route::Completions, json!({"echo": true}), "echo"),
            (Route::Completions, json!({"best_of": 3}), "best_of"),
            (Route::Completions, json!({"metadata": {}}), "metadata"),
            (
                Route::Responses,
                json!({"reasoning": {"effort": "high"}}),
                "reasoning.effort",
            ),
            (
                Route::Responses,
                json!({"include": ["message.output_text.logprobs"]}),
                "include[0]",
            ),
            (
                Route::Responses,
                json!({"truncation": "auto"}),
                "truncation",
            ),
            (
                Route::Responses,
                json!({"conversation": "conv_1"}),
                "conversation",
            ),
            (Route::Responses, json!({"logit_bias": {}}), "logit_bias"),
        ] {
            assert_eq!(run(route, body.clone()), Err(Some(param.into())), "{body}");
        }
    }
}
