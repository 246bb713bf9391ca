//! Property-based fuzzing (proptest; cargo-fuzz needs a nightly compiler)
//! of the OpenAI request parser and validation: arbitrary bytes, arbitrary
//! JSON, and valid requests with arbitrary values in every field must give
//! a 400-class error or a valid request, never a panic. Responses API
//! bodies go through their translation into chat requests too.

use proptest::prelude::*;
use serde_json::{json, Value};

use super::request::{ChatCompletionRequest, CompletionRequest};
use super::responses::{self, translate::ResponsesBody};
use super::validate::{chat, completion, parse_body};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 1000,
        ..ProptestConfig::default()
    }
}

/// Any JSON value, a few levels deep.
pub(crate) fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(".{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The fields of the chat, completion and Responses request types.
const FIELDS: &[&str] = &[
    "model",
    "messages",
    "prompt",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "stop",
    "seed",
    "logit_bias",
    "stream",
    "stream_options",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "ignore_eos",
    "cache_salt",
    "n",
    "logprobs",
    "top_logprobs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "tool_calls",
    "tool_call_id",
    "response_format",
    "input",
    "instructions",
    "text",
    "previous_response_id",
    "metadata",
    "max_output_tokens",
];

fn check(body: &[u8]) {
    if let Ok(req) = parse_body::<ChatCompletionRequest>(body) {
        let _ = chat(req);
    }
    if let Ok(req) = parse_body::<CompletionRequest>(body) {
        let _ = completion(req);
    }
    if let Ok(mut req) = parse_body::<ResponsesBody>(body) {
        if let Ok(messages) = responses::translate::messages(req.input.take(), Vec::new()) {
            if let Ok(chat_body) = responses::translate::chat_body(&req, messages) {
                if let Ok(req) =
                    parse_body::<ChatCompletionRequest>(chat_body.to_string().as_bytes())
                {
                    let _ = chat(req);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check(&bytes);
    }

    #[test]
    fn arbitrary_json_never_panics(v in json_value()) {
        check(v.to_string().as_bytes());
    }

    /// A valid request with one field set to anything.
    #[test]
    fn any_value_in_any_field_never_panics(field in 0..FIELDS.len(), v in json_value()) {
        for mut base in [
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
            json!({"model": "m", "prompt": "hi"}),
            json!({"model": "m", "input": [{"role": "user", "content": "hi"}]}),
        ] {
            base[FIELDS[field]] = v.clone();
            check(base.to_string().as_bytes());
        }
    }

    /// Messages with arbitrary roles, contents and content parts.
    #[test]
    fn any_message_never_panics(role in json_value(), content in json_value(), extra in json_value()) {
        let body = json!({"model": "m", "messages": [
            {"role": role, "content": content},
            {"role": "user", "content": [{"type": "text", "text": extra}]},
        ]});
        check(body.to_string().as_bytes());
    }
}
