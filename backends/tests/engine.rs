//! The batched engine on the real default model: batch invariance, seeded
//! sampling, stop strings, admission limits and cancellation.

mod common;

use std::time::{Duration, Instant};

use backends::engine::{spawn_engine, EngineConfig, EngineHandle};
use common::{collect, Outcome};
use protocol::{
    ChatMessage, FinishReason, GenerateError, GenerateEvent, GenerateRequest, Priority,
    SamplingParams,
};

fn engine(cfg: EngineConfig) -> EngineHandle {
    spawn_engine(&inferno_cluster_tests::test_model(), &cfg)
        .expect("model loads")
        .0
}

fn request(prompt_tokens: Vec<u32>, max_tokens: u32, sampling: SamplingParams) -> GenerateRequest {
    GenerateRequest {
        prompt_tokens,
        max_tokens: Some(max_tokens),
        sampling,
        ..GenerateRequest::default()
    }
}

/// A request without `max_tokens`: it runs to end of turn or the context end.
fn open_request(prompt_tokens: Vec<u32>) -> GenerateRequest {
    GenerateRequest {
        prompt_tokens,
        max_tokens: None,
        sampling: SamplingParams::greedy(),
        ..GenerateRequest::default()
    }
}

fn chat(h: &EngineHandle, text: &str) -> Vec<u32> {
    h.frontend()
        .chat_prompt(&[ChatMessage::new("user", text)], None)
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
fn greedy_tokens_are_their_steps_most_likely_with_consistent_logprobs() {
    let h = engine(EngineConfig::default());
    let prompt = h
        .frontend()
        .encode("Monday, Tuesday, Wednesday, Thursday,")
        .unwrap();
    let mut req = request(prompt, 8, SamplingParams::greedy());
    req.logprobs = Some(5);
    let out = collect(h.submit(req).unwrap());
    assert_eq!(out.finish, Some(FinishReason::Length));
    assert_eq!(out.logprobs.len(), out.tokens.len(), "one entry per token");
    let mut bytes = Vec::new();
    for (lp, &token) in out.logprobs.iter().zip(&out.tokens) {
        assert_eq!(lp.top.len(), 5);
        // Greedy: the sampled token is the most likely one.
        assert_eq!(lp.top[0].token_id, token);
        assert_eq!(lp.top[0].logprob, lp.logprob);
        assert_eq!(lp.top[0].bytes, lp.bytes);
        assert!(lp.logprob <= 0.0 && lp.logprob.is_finite());
        assert!(lp.top.windows(2).all(|w| w[0].logprob >= w[1].logprob));
        let mass: f32 = lp.top.iter().map(|t| t.logprob.exp()).sum();
        assert!(mass <= 1.0 + 1e-4, "top-5 mass {mass}");
        bytes.extend_from_slice(&lp.bytes);
    }
    assert_eq!(String::from_utf8_lossy(&bytes), out.text);
    // " Friday" is next, and the model is sure of it.
    assert!(out.logprobs[0].logprob > -0.7, "{:?}", out.logprobs[0]);
}

#[test]
fn logprobs_are_not_sent_unless_asked_for() {
    let h = engine(EngineConfig::default());
    let prompt = h.frontend().encode("One, two,").unwrap();
    let out = collect(
        h.submit(request(prompt, 4, SamplingParams::greedy()))
            .unwrap(),
    );
    assert_eq!(out.tokens.len(), 4);
    assert!(out.logprobs.is_empty());
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
fn logit_bias_bans_the_greedy_token_and_names_ids_outside_the_vocabulary() {
    let h = engine(EngineConfig::default());
    let prompt = chat(&h, "Name a colour.");
    let run = |logit_bias: Vec<(u32, f32)>| {
        let sampling = SamplingParams {
            logit_bias,
            ..SamplingParams::greedy()
        };
        h.submit(request(prompt.clone(), 4, sampling))
    };
    let plain = collect(run(Vec::new()).expect("admitted")).tokens;
    let banned = collect(run(vec![(plain[0], -100.0)]).expect("admitted")).tokens;
    assert_ne!(
        banned[0], plain[0],
        "a token biased by -100 is never the greedy pick"
    );
    let vocab = h.frontend().config.vocab_size as u32;
    match run(vec![(vocab, 1.0)]) {
        Err(GenerateError::InvalidRequest(m)) => assert!(m.contains("logit_bias"), "{m}"),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
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

/// With the one running slot busy, an interactive request that arrives
/// after two batch ones runs first; the batch ones keep their order.
#[test]
fn interactive_requests_overtake_waiting_batch_ones() {
    let h = engine(EngineConfig {
        max_running: 1,
        ..EngineConfig::default()
    });
    let short = |priority| GenerateRequest {
        ignore_eos: true,
        priority,
        ..request(vec![100, 200, 300], 8, SamplingParams::greedy())
    };
    let mut first = h
        .submit(GenerateRequest {
            ignore_eos: true,
            ..request(vec![1, 2, 3], 48, SamplingParams::greedy())
        })
        .unwrap();
    assert!(matches!(
        first.blocking_recv(),
        Some(GenerateEvent::Token { .. })
    ));
    let first = std::thread::spawn(move || collect(first).finish);
    let b1 = h.submit(short(Priority::Batch)).unwrap();
    let b2 = h.submit(short(Priority::Batch)).unwrap();
    let i1 = h.submit(short(Priority::Interactive)).unwrap();
    // Each collected on its own thread, noting when it finished.
    let finished = |rx| {
        std::thread::spawn(move || {
            let out = collect(rx);
            (out.finish, Instant::now())
        })
    };
    let (b1, b2, i1) = (finished(b1), finished(b2), finished(i1));
    let done = |t: std::thread::JoinHandle<(Option<FinishReason>, Instant)>| {
        let (finish, at) = t.join().expect("collector");
        assert_eq!(finish, Some(FinishReason::Length));
        at
    };
    let (b1, b2, i1) = (done(b1), done(b2), done(i1));
    assert!(
        i1 < b1,
        "the interactive request finished after a batch one"
    );
    assert!(b1 < b2, "batch requests out of order");
    assert_eq!(first.join().expect("collector"), Some(FinishReason::Length));
}

/// `ctx_size` caps the sequence length served below the model's: an
/// open-ended request stops there with `length`, and one whose prompt plus
/// `max_tokens` exceeds it is refused, naming the served length.
#[test]
fn ctx_size_caps_every_sequence() {
    let h = engine(EngineConfig {
        ctx_size: Some(64),
        ..EngineConfig::default()
    });
    let prompt = vec![100, 200, 300, 400, 500, 600, 700, 800, 900, 1000];
    let mut open = open_request(prompt.clone());
    open.ignore_eos = true;
    let out = collect(h.submit(open).unwrap());
    assert_eq!(out.finish, Some(FinishReason::Length), "{:?}", out.error);
    assert_eq!(out.tokens.len(), 64 - prompt.len());
    match h.submit(request(prompt, 60, SamplingParams::greedy())) {
        Err(GenerateError::InvalidRequest(msg)) => {
            assert!(msg.contains("context length of 64"), "{msg}")
        }
        other => panic!("expected invalid request, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn too_long_request_gets_a_clear_error() {
    let h = engine(EngineConfig::default());
    let ctx = h.context_length();
    assert!(ctx <= h.frontend().config.context_length);
    match h.submit(request(vec![100; 10], ctx as u32, SamplingParams::greedy())) {
        Err(GenerateError::InvalidRequest(msg)) => assert!(msg.contains("context length"), "{msg}"),
        other => panic!("expected invalid request, got {:?}", other.map(|_| ())),
    }
    assert!(matches!(
        h.submit(request(vec![], 4, SamplingParams::greedy())),
        Err(GenerateError::InvalidRequest(_))
    ));
    match h.submit(open_request(vec![100; ctx])) {
        Err(GenerateError::InvalidRequest(msg)) => assert!(msg.contains("no room"), "{msg}"),
        other => panic!("expected invalid request, got {:?}", other.map(|_| ())),
    }
    // A prompt longer than the whole KV pool could ever hold.
    let tiny = engine(EngineConfig {
        kv_budget_bytes: 1 << 20,
        ..EngineConfig::default()
    });
    match tiny.submit(open_request(vec![100; 200])) {
        Err(GenerateError::InvalidRequest(msg)) => assert!(msg.contains("KV"), "{msg}"),
        other => panic!("expected invalid request, got {:?}", other.map(|_| ())),
    }
}

/// A request waiting for a slot hears a keep-alive once its stream has
/// been silent for `KEEPALIVE_AFTER`, so that timeouts downstream can tell
/// it from a dead node; a running one, streaming tokens, never does.
#[test]
fn waiting_request_gets_keepalives_running_one_does_not() {
    let h = engine(EngineConfig {
        max_running: 1,
        ..EngineConfig::default()
    });
    let mut r = request(vec![100, 200, 300], 6000, SamplingParams::greedy());
    r.ignore_eos = true;
    let mut running = h.submit(r).unwrap();
    assert!(matches!(
        running.blocking_recv(),
        Some(GenerateEvent::Token { .. })
    ));
    let t = Instant::now();
    let prompt = h.frontend().encode("Monday, Tuesday,").unwrap();
    let mut waiting = h
        .submit(request(prompt, 4, SamplingParams::greedy()))
        .unwrap();
    assert_eq!(waiting.blocking_recv(), Some(GenerateEvent::KeepAlive));
    let after = t.elapsed();
    assert!(
        after >= protocol::KEEPALIVE_AFTER - Duration::from_millis(100)
            && after < protocol::KEEPALIVE_AFTER * 3,
        "first keep-alive after {after:?}"
    );
    let mut streamed = 0;
    while let Ok(ev) = running.try_recv() {
        assert!(matches!(ev, GenerateEvent::Token { .. }), "{ev:?}");
        streamed += 1;
    }
    assert!(streamed > 0, "the running request kept streaming");
    drop(running);
    let out = collect(waiting);
    assert_eq!(out.finish, Some(FinishReason::Length), "{:?}", out.error);
    assert!(!out.text.is_empty());
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
    wait_all_blocks_free(&h);
}

fn load(h: &EngineHandle, what: &std::sync::atomic::AtomicUsize) -> usize {
    let _ = h;
    what.load(std::sync::atomic::Ordering::Acquire)
}

fn counter(what: &std::sync::atomic::AtomicU64) -> u64 {
    what.load(std::sync::atomic::Ordering::Acquire)
}

fn wait_all_blocks_free(h: &EngineHandle) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while load(h, &h.stats().kv_used_blocks) != 0 || load(h, &h.stats().kv_used_bytes) != 0 {
        assert!(
            Instant::now() < deadline,
            "KV blocks still held after every request ended"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

const QUESTIONS: [&str; 16] = [
    "Say hello.",
    "What is 2 + 2?",
    "Name a colour.",
    "Count from one to three.",
    "Give me one word that rhymes with cat.",
    "How many legs does a spider have?",
    "Name a fruit that is yellow.",
    "Name a vegetable.",
    "What is 3 + 5?",
    "What is the opposite of hot?",
    "Name a day of the week.",
    "Name a musical instrument.",
    "How many days are in a week?",
    "Name a planet.",
    "What colour is the sky on a clear day?",
    "What is frozen water called?",
];

/// Sixteen chat requests without `max_tokens` on a KV pool far too small
/// to hold them all: every stream still completes, preemptions happen,
/// and each greedy answer is exactly what the request gets alone.
#[test]
fn requests_without_max_tokens_all_finish_under_preemption_with_solo_texts() {
    let cfg = EngineConfig {
        // 24 blocks of 16 positions: about 380 positions for 16 sequences.
        kv_budget_bytes: 24 * 16 * 23_040,
        max_running: 16,
        max_waiting: 32,
        max_step_tokens: 64,
        ..EngineConfig::default()
    };
    let h = engine(cfg);
    let solo: Vec<Outcome> = QUESTIONS
        .iter()
        .map(|q| collect(h.submit(open_request(chat(&h, q))).unwrap()))
        .collect();
    assert_eq!(
        counter(&h.stats().preemptions),
        0,
        "one request at a time fits"
    );
    // Answers end at end of turn, or (one that loops) when they fill the pool.
    for (q, out) in QUESTIONS.iter().zip(&solo) {
        assert!(out.finish.is_some(), "{q}: {:?}", out.error);
    }
    // A fresh engine, so the prefix cache of the solo runs does not help.
    let h = engine(EngineConfig {
        kv_budget_bytes: 24 * 16 * 23_040,
        max_running: 16,
        max_waiting: 32,
        max_step_tokens: 64,
        ..EngineConfig::default()
    });
    let streams: Vec<_> = QUESTIONS
        .iter()
        .map(|q| h.submit(open_request(chat(&h, q))).unwrap())
        .collect();
    let together: Vec<Outcome> = streams.into_iter().map(collect).collect();
    assert!(
        counter(&h.stats().preemptions) > 0,
        "the pool was meant to run out"
    );
    for ((q, a), b) in QUESTIONS.iter().zip(&solo).zip(&together) {
        assert_eq!(b.error, None, "{q}");
        assert_eq!(b.finish, a.finish, "{q}");
        assert_eq!(
            b.tokens, a.tokens,
            "{q}: solo {:?}, together {:?}",
            a.text, b.text
        );
        assert_eq!(b.text, a.text, "{q}");
    }
    wait_all_blocks_free(&h);
}

/// A request that shares a long system prompt with an earlier one reuses
/// its cached blocks, and greedy output is the same as on a cold cache.
#[test]
fn prefix_cache_hit_gives_the_cold_answer_and_salts_keep_caches_apart() {
    let system = "You are a meticulous assistant for a shipping company. ".repeat(20);
    let ask = |h: &EngineHandle, q: &str, salt: &str| {
        let prompt = h
            .frontend()
            .chat_prompt(
                &[
                    ChatMessage::new("system", system.clone()),
                    ChatMessage::new("user", q),
                ],
                None,
            )
            .unwrap();
        let mut r = request(prompt, 24, SamplingParams::greedy());
        r.cache_salt = salt.into();
        collect(h.submit(r).unwrap())
    };
    let cold_engine = engine(EngineConfig::default());
    let cold = ask(&cold_engine, "Which day do parcels ship?", "");
    drop(cold_engine);

    let h = engine(EngineConfig::default());
    let first = ask(&h, "Where is my order?", "");
    let queried = counter(&h.stats().prefix_queried_tokens);
    assert_eq!(counter(&h.stats().prefix_hit_tokens), 0);
    let warm = ask(&h, "Which day do parcels ship?", "");
    let hit = counter(&h.stats().prefix_hit_tokens);
    // The system prompt is over 200 tokens; all its full blocks are reused.
    assert!(hit >= 192, "only {hit} tokens came from the cache");
    assert!(counter(&h.stats().prefix_queried_tokens) > queried);
    assert_eq!(
        warm.tokens, cold.tokens,
        "warm {:?} cold {:?}",
        warm.text, cold.text
    );
    assert!(!first.tokens.is_empty());
    // Another salt never sees those blocks.
    ask(&h, "Which day do parcels ship?", "tenant-b");
    assert_eq!(counter(&h.stats().prefix_hit_tokens), hit);
    wait_all_blocks_free(&h);
    assert!(load(&h, &h.stats().kv_cached_blocks) > 0);
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
