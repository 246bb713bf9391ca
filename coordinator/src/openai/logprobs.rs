//! `logprobs` and `top_logprobs`: their validation, and the two response
//! shapes they take (chat's `content` list, the completions API's legacy
//! parallel lists).

use protocol::{TokenLogprob, MAX_TOP_LOGPROBS};
use serde_json::{json, Map, Value};

use super::errors::ApiError;

/// The lowest log-probability reported: OpenAI's stand-in for "never"
/// (JSON has no negative infinity).
const FLOOR: f32 = -9999.0;

/// Chat's `logprobs` (a boolean) and `top_logprobs` (0..=20, only with
/// `logprobs: true`): how many alternatives to report per token, or `None`.
pub(crate) fn chat_param(
    logprobs: Option<Value>,
    top: Option<Value>,
) -> Result<Option<u8>, ApiError> {
    let on = match logprobs {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(other) => {
            return Err(ApiError::invalid(
                format!("'logprobs' must be a boolean on chat completions, got {other}."),
                Some("logprobs"),
            ))
        }
    };
    let top = match top {
        None | Some(Value::Null) => None,
        Some(v) => Some(count("top_logprobs", &v)?),
    };
    match (on, top) {
        (true, top) => Ok(Some(top.unwrap_or(0))),
        (false, None) => Ok(None),
        (false, Some(_)) => Err(ApiError::invalid(
            "'top_logprobs' needs 'logprobs': true.",
            Some("top_logprobs"),
        )),
    }
}

/// The completions API's `logprobs`: the number of alternatives per token
/// (0..=20), or `None`. `top_logprobs` belongs to chat and is refused here.
pub(crate) fn completion_param(
    logprobs: Option<Value>,
    top: Option<Value>,
) -> Result<Option<u8>, ApiError> {
    if top.is_some_and(|t| !t.is_null()) {
        return Err(ApiError::invalid(
            "'top_logprobs' is a chat completions parameter; /v1/completions takes the \
             number of alternatives in 'logprobs'.",
            Some("top_logprobs"),
        ));
    }
    match logprobs {
        None | Some(Value::Null) => Ok(None),
        Some(v) => count("logprobs", &v).map(Some),
    }
}

/// An integer in `0..=MAX_TOP_LOGPROBS`.
fn count(param: &str, v: &Value) -> Result<u8, ApiError> {
    v.as_u64()
        .and_then(|n| u8::try_from(n).ok())
        .filter(|&n| n <= MAX_TOP_LOGPROBS)
        .ok_or_else(|| {
            ApiError::invalid(
                format!("'{param}' must be an integer from 0 to {MAX_TOP_LOGPROBS}, got {v}."),
                Some(param),
            )
        })
}

/// A token's text as OpenAI shows it: its bytes as UTF-8, with a byte
/// sequence that is not whole UTF-8 replaced by U+FFFD (`bytes` is exact).
fn token_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn floor(lp: f32) -> f32 {
    if lp.is_nan() {
        FLOOR
    } else {
        lp.max(FLOOR)
    }
}

/// Chat's `logprobs` object: `{"content": [...], "refusal": null}`.
pub(crate) fn chat(tokens: &[TokenLogprob]) -> Value {
    let content: Vec<Value> = tokens
        .iter()
        .map(|t| {
            let top: Vec<Value> = t
                .top
                .iter()
                .map(|a| {
                    json!({
                        "token": token_text(&a.bytes),
                        "logprob": floor(a.logprob),
                        "bytes": a.bytes,
                    })
                })
                .collect();
            json!({
                "token": token_text(&t.bytes),
                "logprob": floor(t.logprob),
                "bytes": t.bytes,
                "top_logprobs": top,
            })
        })
        .collect();
    json!({ "content": content, "refusal": null })
}

/// The completions API's `logprobs` object: parallel `tokens`,
/// `token_logprobs`, `top_logprobs` (each a map from token text to
/// log-probability, holding the sampled token too, as vLLM's) and
/// `text_offset` (character offsets, counted from `offset`, the
/// characters of the text already streamed).
pub(crate) fn completion(tokens: &[TokenLogprob], offset: usize) -> Value {
    let mut at = offset;
    let mut texts = Vec::with_capacity(tokens.len());
    let mut lps = Vec::with_capacity(tokens.len());
    let mut tops = Vec::with_capacity(tokens.len());
    let mut offsets = Vec::with_capacity(tokens.len());
    for t in tokens {
        let text = token_text(&t.bytes);
        offsets.push(at);
        at += text.chars().count();
        let mut top = Map::new();
        for a in &t.top {
            top.entry(token_text(&a.bytes))
                .or_insert_with(|| json!(floor(a.logprob)));
        }
        top.entry(text.clone())
            .or_insert_with(|| json!(floor(t.logprob)));
        lps.push(floor(t.logprob));
        tops.push(Value::Object(top));
        texts.push(text);
    }
    json!({
        "tokens": texts,
        "token_logprobs": lps,
        "top_logprobs": tops,
        "text_offset": offsets,
    })
}

/// Characters the completions API's `text_offset` advances by for `tokens`.
pub(crate) fn completion_chars(tokens: &[TokenLogprob]) -> usize {
    tokens
        .iter()
        .map(|t| token_text(&t.bytes).chars().count())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::TopLogprob;

    fn tok(text: &str, lp: f32, top: &[(&str, f32)]) -> TokenLogprob {
        TokenLogprob {
            bytes: text.as_bytes().to_vec(),
            logprob: lp,
            top: top
                .iter()
                .enumerate()
                .map(|(i, &(t, l))| TopLogprob {
                    token_id: i as u32,
                    bytes: t.as_bytes().to_vec(),
                    logprob: l,
                })
                .collect(),
        }
    }

    #[test]
    fn chat_parameters_follow_openai() {
        assert_eq!(chat_param(None, None).unwrap(), None);
        assert_eq!(chat_param(Some(json!(false)), None).unwrap(), None);
        assert_eq!(chat_param(Some(json!(true)), None).unwrap(), Some(0));
        assert_eq!(
            chat_param(Some(json!(true)), Some(json!(20))).unwrap(),
            Some(20)
        );
        for (lp, top, param) in [
            (json!(true), json!(21), "top_logprobs"),
            (json!(true), json!(-1), "top_logprobs"),
            (json!(true), json!(2.5), "top_logprobs"),
            (json!(false), json!(3), "top_logprobs"),
            (json!(3), json!(null), "logprobs"),
        ] {
            let e = chat_param(Some(lp), Some(top)).unwrap_err();
            assert_eq!(e.param(), Some(param), "{}", e.message());
        }
    }

    #[test]
    fn completion_parameters_follow_openai() {
        assert_eq!(completion_param(None, None).unwrap(), None);
        assert_eq!(completion_param(Some(json!(0)), None).unwrap(), Some(0));
        assert_eq!(completion_param(Some(json!(5)), None).unwrap(), Some(5));
        assert!(completion_param(Some(json!(true)), None).is_err());
        assert!(completion_param(Some(json!(21)), None).is_err());
        let e = completion_param(Some(json!(1)), Some(json!(1))).unwrap_err();
        assert_eq!(e.param(), Some("top_logprobs"));
    }

    #[test]
    fn chat_shape_has_tokens_bytes_and_alternatives() {
        let v = chat(&[tok("Hi", -0.5, &[("Hi", -0.5), ("Yo", -1.0)])]);
        assert_eq!(v["refusal"], Value::Null);
        let c = &v["content"][0];
        assert_eq!(c["token"], "Hi");
        assert_eq!(c["bytes"], json!([72, 105]));
        assert_eq!(c["logprob"], -0.5);
        assert_eq!(c["top_logprobs"][1]["token"], "Yo");
    }

    #[test]
    fn impossible_tokens_get_the_floor_not_null() {
        let v = chat(&[tok("x", f32::NEG_INFINITY, &[])]);
        assert_eq!(v["content"][0]["logprob"], json!(FLOOR));
    }

    #[test]
    fn completion_shape_is_parallel_lists_with_offsets() {
        let tokens = [
            tok("Hé", -0.25, &[("Hé", -0.25)]),
            tok("llo", -1.0, &[("lo", -0.5)]),
        ];
        let v = completion(&tokens, 3);
        assert_eq!(v["tokens"], json!(["Hé", "llo"]));
        assert_eq!(v["token_logprobs"], json!([-0.25, -1.0]));
        assert_eq!(v["text_offset"], json!([3, 5]));
        // The sampled token is in its step's map even when not among the top.
        assert_eq!(v["top_logprobs"][1], json!({"lo": -0.5, "llo": -1.0}));
        assert_eq!(completion_chars(&tokens), 5);
    }
}
