//! The batched engine on the real default model: batch invariance, seeded
//! sampling, stop strings, admission limits and cancellation.

use std::time::{Duration, Instant};

use backends::engine::{spawn_engine, EngineConfig, EngineHandle};
use protocol::{
    ChatMessage, FinishReason, GenerateError, GenerateEvent, GenerateRequest, SamplingParams,
};
use tokio::sync::mpsc::Receiver;

fn engine(cfg: EngineConfig) -> EngineHandle {
    spawn_engine(&inferno_cluster_tests::test_model(), &cfg)
        .expect("model loads")
        .0
}

fn request(prompt_tokens: Vec<u32>, max_tokens: u32, sampling: SamplingParams) -> GenerateRequest {
    GenerateRequest {
        prompt_tokens,
        max_tokens,
        sampling,
        stop: Vec::new(),
        ignore_eos: false,
    }
}

#[derive(Debug, Default)]
struct Outcome {
    text: String,
    tokens: Vec<u32>,
    finish: Option<FinishReason>,
    error: Option<GenerateError>,
}

fn collect(mut rx: Receiver<GenerateEvent>) -> Outcome {
    let mut out = Outcome::default();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        match rx.blocking_recv() {
            Some(GenerateEvent::Token { text, token_ids }) => {
                out.text.push_str(&text);
                out.tokens.extend(token_ids);
            }
            Some(GenerateEvent::Finished { reason, .. }) => {
                out.finish = Some(reason);
                return out;
            }
            Some(GenerateEvent::Failed(e)) => {
                out.error = Some(e);
                return out;
            }
            None => panic!("stream closed without a final event"),
        }
    }
    panic!("generation did not finish in time");
}

fn chat(h: &EngineHandle, text: &str) -> Vec<u32> {
    h.frontend()
        .chat_prompt(&[ChatMessage::new("user", text)])
        .unwrap()
}

#[test]
fn greedy_completion_is_sensible() {
    let h = engine(EngineConfig::default());
    let prompt = h
        .frontend()
        .encode("Monday, Tuesday, Wednesday, Thursday,")
        .unwrap();
    let out = collect(
        h.submit(request(prompt, 6, SamplingParams::greedy()))
            .unwrap(),
    );
    assert!(
        out.text.trim_start().starts_with("Friday"),
        "got {:?}",
        out.text
    );
    assert_eq!(out.finish, Some(FinishReason::Length));
}

#[test]
fn chat_answer_ends_at_end_of_turn() {
    let h = engine(EngineConfig::default());
    let prompt = chat(&h, "Say hello.");
    let out = collect(
        h.submit(request(prompt, 64, SamplingParams::greedy()))
            .unwrap(),
    );
    assert_eq!(out.finish, Some(FinishReason::Stop), "text: {:?}", out.text);
    assert!(!out.text.contains("<|im_end|>"));
    assert!(
        out.text.to_lowercase().contains("hello"),
        "got {:?}",
        out.text
    );
}

#[test]
fn greedy_output_is_identical_alone_and_batched() {
    let prompts = [
        "Write a haiku about the sea.",
        "List three colours of the rainbow.",
        "Explain what a CPU does in two sentences, and then give an example of a program that uses one heavily.",
    ];
    let alone_engine = engine(EngineConfig::default());
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            let r = request(chat(&alone_engine, p), 24, SamplingParams::greedy());
            collect(alone_engine.submit(r).unwrap()).tokens
        })
        .collect();
    drop(alone_engine);

    // Small steps force prompt chunks to be mixed with other sequences' decode steps.
    let batched = engine(EngineConfig {
        max_step_tokens: 16,
        ..EngineConfig::default()
    });
    let first = batched
        .submit(request(
            chat(&batched, prompts[0]),
            24,
            SamplingParams::greedy(),
        ))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let rest: Vec<_> = prompts[1..]
        .iter()
        .map(|p| {
            batched
                .submit(request(chat(&batched, p), 24, SamplingParams::greedy()))
                .unwrap()
        })
        .collect();
    let mut together = vec![collect(first).tokens];
    together.extend(rest.into_iter().map(|rx| collect(rx).tokens));
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a, b, "prompt {i} differs when batched");
        assert!(!a.is_empty());
    }
}

#[test]
fn greedy_output_does_not_depend_on_thread_count() {
    let run = |threads| {
        let h = engine(EngineConfig {
            threads,
            ..EngineConfig::default()
        });
        let prompt = chat(&h, "Name three planets of the solar system.");
        collect(
            h.submit(request(prompt, 24, SamplingParams::greedy()))
                .unwrap(),
        )
        .tokens
    };
    assert_eq!(run(1), run(2));
}

#[test]
fn same_seed_same_text_and_other_seed_differs() {
    let h = engine(EngineConfig::default());
    let prompt = chat(&h, "Tell me a short story about a dragon.");
    let sampling = |seed| SamplingParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        seed: Some(seed),
        ..SamplingParams::default()
    };
    let run = |seed| {
        collect(
            h.submit(request(prompt.clone(), 32, sampling(seed)))
                .unwrap(),
        )
        .tokens
    };
    let a = run(42);
    assert_eq!(a, run(42));
    assert_ne!(a, run(43));
}

#[test]
fn stop_string_ends_generation_and_is_not_emitted() {
    let h = engine(EngineConfig::default());
    let prompt = h
        .frontend()
        .encode("January, February, March, April,")
        .unwrap();
    let full = collect(
        h.submit(request(prompt.clone(), 12, SamplingParams::greedy()))
            .unwrap(),
    );
    let cut = full
        .text
        .find("June")
        .expect("greedy continuation names June");
    let mut req = request(prompt, 12, SamplingParams::greedy());
    req.stop = vec!["June".into()];
    let stopped = collect(h.submit(req).unwrap());
    assert_eq!(stopped.text, full.text[..cut]);
    assert_eq!(stopped.finish, Some(FinishReason::Stop));
}

#[test]
fn full_queue_is_refused_at_once() {
    let h = engine(EngineConfig {
        max_running: 1,
        max_waiting: 1,
        ..EngineConfig::default()
    });
    let long = || {
        let mut r = request(vec![100, 200, 300], 400, SamplingParams::greedy());
        r.ignore_eos = true;
        r
    };
    let mut running = h.submit(long()).unwrap();
    assert!(matches!(
        running.blocking_recv(),
        Some(GenerateEvent::Token { .. })
    ));
    let _waiting = h.submit(long()).unwrap();
    let t = Instant::now();
    match h.submit(long()) {
        Err(GenerateError::Overloaded(_)) => {}
        other => panic!("expected overloaded, got {:?}", other.map(|_| ())),
    }
    assert!(t.elapsed() < Duration::from_millis(100));
}

#[test]
fn too_long_request_gets_a_clear_error() {
    let h = engine(EngineConfig::default());
    let ctx = h.frontend().config.context_length;
    match h.submit(request(vec![100; 10], ctx as u32, SamplingParams::greedy())) {
        Err(GenerateError::InvalidRequest(msg)) => assert!(msg.contains("context length"), "{msg}"),
        other => panic!("expected invalid request, got {:?}", other.map(|_| ())),
    }
    assert!(matches!(
        h.submit(request(vec![], 4, SamplingParams::greedy())),
        Err(GenerateError::InvalidRequest(_))
    ));
}

#[test]
fn cancelled_request_frees_its_slot() {
    let h = engine(EngineConfig {
        max_running: 1,
        ..EngineConfig::default()
    });
    let mut r = request(vec![100, 200, 300], 2000, SamplingParams::greedy());
    r.ignore_eos = true;
    let mut rx = h.submit(r).unwrap();
    assert!(matches!(
        rx.blocking_recv(),
        Some(GenerateEvent::Token { .. })
    ));
    assert_eq!(
        h.stats().running.load(std::sync::atomic::Ordering::Acquire),
        1
    );
    drop(rx);
    // The only slot is taken until the cancellation is noticed; this request needs it.
    let prompt = h.frontend().encode("Monday, Tuesday,").unwrap();
    let t = Instant::now();
    let out = collect(
        h.submit(request(prompt, 4, SamplingParams::greedy()))
            .unwrap(),
    );
    assert_eq!(out.finish, Some(FinishReason::Length));
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "slot was not freed promptly"
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while h
        .stats()
        .kv_used_bytes
        .load(std::sync::atomic::Ordering::Acquire)
        != 0
    {
        assert!(
            Instant::now() < deadline,
            "KV memory still reserved after every request ended"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn abort_fails_every_request_and_refuses_new_ones() {
    let h = engine(EngineConfig {
        max_running: 1,
        ..EngineConfig::default()
    });
    let mut long = request(vec![100, 200, 300], 2000, SamplingParams::greedy());
    long.ignore_eos = true;
    let mut running = h.submit(long.clone()).unwrap();
    let waiting = h.submit(long).unwrap();
    assert!(matches!(
        running.blocking_recv(),
        Some(GenerateEvent::Token { .. })
    ));
    assert!(h.abort());
    for (what, rx) in [("running", running), ("waiting", waiting)] {
        let out = collect(rx);
        assert!(
            matches!(out.error, Some(GenerateError::Unavailable(_))),
            "{what} request after abort: {:?}",
            out.error
        );
    }
    // The engine is gone: new work is refused, never left hanging.
    match h.submit(request(vec![100], 4, SamplingParams::greedy())) {
        Err(GenerateError::Unavailable(_)) => {}
        Ok(rx) => assert!(matches!(
            collect(rx).error,
            Some(GenerateError::Unavailable(_))
        )),
        Err(e) => panic!("unexpected error {e}"),
    }
}
