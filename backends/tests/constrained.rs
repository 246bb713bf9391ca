//! Constrained decoding on the real default model: outputs under a JSON
//! Schema, `json_object` and a regex are always valid, batched and
//! sampled too, and a grammar that does not compile is refused before
//! anything is queued.

mod common;

use backends::engine::{spawn_engine, EngineConfig, EngineHandle};
use common::collect;
use protocol::{
    ChatMessage, FinishReason, GenerateError, GenerateRequest, OutputConstraint, SamplingParams,
};
use serde_json::Value;

fn engine() -> EngineHandle {
    spawn_engine(
        &inferno_cluster_tests::test_model(),
        &EngineConfig::default(),
    )
    .expect("model loads")
    .0
}

fn constrained(
    h: &EngineHandle,
    ask: &str,
    constraint: OutputConstraint,
    sampling: SamplingParams,
) -> GenerateRequest {
    GenerateRequest {
        prompt_tokens: h
            .frontend()
            .chat_prompt(&[ChatMessage::new("user", ask)], None)
            .expect("chat prompt"),
        max_tokens: Some(256),
        sampling,
        constraint: Some(constraint),
        ..GenerateRequest::default()
    }
}

const PERSON_SCHEMA: &str = r#"{
  "type": "object",
  "properties": {
    "name": {"type": "string", "minLength": 1, "maxLength": 24},
    "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "role": {"enum": ["engineer", "artist", "doctor"]},
    "tags": {"type": "array", "items": {"type": "string", "maxLength": 12},
             "minItems": 1, "maxItems": 3}
  },
  "required": ["name", "age", "role", "tags"],
  "additionalProperties": false
}"#;

/// Checks a person by hand against [`PERSON_SCHEMA`].
fn assert_person(text: &str) {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    let o = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {text}"));
    let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["age", "name", "role", "tags"], "{text}");
    let name = o["name"].as_str().expect("name is a string");
    assert!((1..=24).contains(&name.chars().count()), "{text}");
    let age = o["age"].as_i64().expect("age is an integer");
    assert!((0..=150).contains(&age), "{text}");
    let role = o["role"].as_str().expect("role is a string");
    assert!(["engineer", "artist", "doctor"].contains(&role), "{text}");
    let tags = o["tags"].as_array().expect("tags is an array");
    assert!((1..=3).contains(&tags.len()), "{text}");
    assert!(
        tags.iter()
            .all(|t| t.as_str().is_some_and(|s| s.chars().count() <= 12)),
        "{text}"
    );
}

#[test]
fn json_schema_outputs_validate_greedy_and_sampled_in_one_batch() {
    let h = engine();
    let schema = OutputConstraint::JsonSchema(PERSON_SCHEMA.into());
    let ask = "Invent a person and describe them as JSON.";
    let mut streams = vec![h
        .submit(constrained(
            &h,
            ask,
            schema.clone(),
            SamplingParams::greedy(),
        ))
        .expect("admitted")];
    for seed in 0..4 {
        let sampling = SamplingParams {
            temperature: 1.0,
            seed: Some(seed),
            ..SamplingParams::default()
        };
        streams.push(
            h.submit(constrained(&h, ask, schema.clone(), sampling))
                .expect("admitted"),
        );
    }
    for rx in streams {
        let out = collect(rx);
        assert_eq!(out.error, None);
        assert_eq!(out.finish, Some(FinishReason::Stop), "{:?}", out.text);
        assert_person(&out.text);
    }
}

#[test]
fn json_object_gives_an_object() {
    let h = engine();
    let out = collect(
        h.submit(constrained(
            &h,
            "List three fruits.",
            OutputConstraint::JsonObject,
            SamplingParams::greedy(),
        ))
        .expect("admitted"),
    );
    assert_eq!(out.finish, Some(FinishReason::Stop), "{:?}", out.text);
    let v: Value = serde_json::from_str(&out.text).expect("valid JSON");
    assert!(v.is_object(), "{}", out.text);
    // Compact separators, no free whitespace between values.
    assert!(!out.text.contains('\n'), "{:?}", out.text);
}

#[test]
fn regex_output_matches_whole_and_ends_there() {
    let h = engine();
    let out = collect(
        h.submit(constrained(
            &h,
            "Give me a phone number.",
            OutputConstraint::Regex("[0-9]{3}-[0-9]{4}".into()),
            SamplingParams::default(),
        ))
        .expect("admitted"),
    );
    assert_eq!(out.finish, Some(FinishReason::Stop));
    let t = out.text.as_bytes();
    assert_eq!(t.len(), 8, "{:?}", out.text);
    assert!(t[..3].iter().chain(&t[4..]).all(u8::is_ascii_digit) && t[3] == b'-');
}

#[test]
fn grammars_that_do_not_compile_are_refused_before_queuing() {
    let h = engine();
    let bad = [
        OutputConstraint::JsonSchema("{\"type\": \"frobnicate\"}".into()),
        OutputConstraint::JsonSchema("not json".into()),
        OutputConstraint::Regex("([0-9]".into()),
        OutputConstraint::Lark("start: undefined_rule".into()),
    ];
    for constraint in bad {
        let kind = constraint.kind();
        match h.submit(constrained(&h, "Hi", constraint, SamplingParams::greedy())) {
            Err(GenerateError::InvalidRequest(m)) => {
                assert!(m.contains(kind), "{kind}: {m}")
            }
            Err(other) => panic!("{kind}: {other}"),
            Ok(_) => panic!("{kind}: accepted"),
        }
    }
    assert_eq!(
        h.stats().waiting.load(std::sync::atomic::Ordering::Acquire),
        0
    );
}

#[test]
fn constrained_outputs_survive_preemption_unchanged() {
    // 16 blocks of 16 positions for 8 sequences of ~40 prompt tokens that
    // each grow past 100: some are preempted and recomputed.
    let cfg = EngineConfig {
        kv_budget_bytes: 16 * 16 * 23_040,
        max_running: 8,
        max_step_tokens: 64,
        ..EngineConfig::default()
    };
    let schema = OutputConstraint::JsonSchema(PERSON_SCHEMA.into());
    let asks: Vec<String> = (0..8)
        .map(|i| format!("Invent person number {i} and describe them as JSON."))
        .collect();
    let h = spawn_engine(&inferno_cluster_tests::test_model(), &cfg)
        .expect("model loads")
        .0;
    let solo: Vec<String> = asks
        .iter()
        .map(|a| {
            let out = collect(
                h.submit(constrained(&h, a, schema.clone(), SamplingParams::greedy()))
                    .expect("admitted"),
            );
            out.text
        })
        .collect();
    let h = spawn_engine(&inferno_cluster_tests::test_model(), &cfg)
        .expect("model loads")
        .0;
    let streams: Vec<_> = asks
        .iter()
        .map(|a| {
            h.submit(constrained(&h, a, schema.clone(), SamplingParams::greedy()))
                .expect("admitted")
        })
        .collect();
    let together: Vec<String> = streams.into_iter().map(|rx| collect(rx).text).collect();
    assert!(
        h.stats()
            .preemptions
            .load(std::sync::atomic::Ordering::Acquire)
            > 0,
        "the pool was meant to run out"
    );
    for (alone, batched) in solo.iter().zip(&together) {
        assert_person(batched);
        assert_eq!(alone, batched);
    }
}

#[test]
fn tokens_the_grammar_forces_are_appended_without_a_step_each() {
    use std::sync::atomic::Ordering;
    // Long keys and a one-value enum: most of the output is forced.
    let schema = r#"{
      "type": "object",
      "properties": {
        "the_name_of_the_person_described": {"type": "string", "maxLength": 12},
        "their_favourite_colour_in_english": {"enum": ["a shade of deep ocean blue"]},
        "how_many_years_old_they_are_today": {"type": "integer", "minimum": 0, "maximum": 99}
      },
      "required": ["the_name_of_the_person_described",
                   "their_favourite_colour_in_english",
                   "how_many_years_old_they_are_today"],
      "additionalProperties": false
    }"#;
    let h = engine();
    let mut req = constrained(
        &h,
        "Describe a person as JSON.",
        OutputConstraint::JsonSchema(schema.into()),
        SamplingParams::greedy(),
    );
    req.logprobs = Some(1);
    let before = h.stats().steps.load(Ordering::Relaxed);
    let out = collect(h.submit(req).expect("admitted"));
    let steps = h.stats().steps.load(Ordering::Relaxed) - before;
    assert_eq!(out.error, None);
    assert_eq!(out.finish, Some(FinishReason::Stop), "{:?}", out.text);
    let v: Value = serde_json::from_str(&out.text).unwrap_or_else(|e| panic!("{e}: {}", out.text));
    assert_eq!(
        v["their_favourite_colour_in_english"],
        "a shade of deep ocean blue"
    );
    assert!(
        v["how_many_years_old_they_are_today"].is_u64(),
        "{}",
        out.text
    );
    // The prompt takes a step or two; each sampled token one more.
    assert!(
        (steps as usize) * 2 < out.tokens.len(),
        "{steps} steps for {} tokens: {}",
        out.tokens.len(),
        out.text
    );
    // Every token has its log-probability, forced ones 0 (probability 1).
    assert_eq!(out.logprobs.len(), out.tokens.len());
    let forced = out.logprobs.iter().filter(|l| l.logprob == 0.0).count();
    assert!(
        forced * 2 > out.tokens.len(),
        "{forced} of {}",
        out.tokens.len()
    );
    // Forced text is what the model's tokenizer makes of it.
    let tokenizer = &h.frontend().tokenizer;
    assert_eq!(tokenizer.decode(&out.tokens).expect("decodes"), out.text);
}
