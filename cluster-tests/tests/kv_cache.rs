//! The paged KV cache through `inferno up` (3 coordinators, 2 node
//! processes): requests that share a long system prompt reuse its KV
//! blocks wherever they enter the cluster, and many clients that set no
//! `max_tokens` all run at once and give every block back when they leave;
//! the `n` choices of one request prefill its prompt once.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use inferno_cluster_tests::local_up::LocalUp;
use inferno_cluster_tests::{http, metric_sum, test_model_name, wait_until};
use serde_json::{json, Value};

const STARTUP: Duration = Duration::from_secs(240);
const T: Duration = Duration::from_secs(120);

fn metrics(api: SocketAddr, key: Option<&str>) -> String {
    http::request(api, key, "GET", "/metrics", None, T)
        .map(|r| r.body)
        .unwrap_or_default()
}

/// Prompt tokens served from the prefix cache since `before` (the
/// cluster's total), once the metrics show at least `at_least` of them
/// (node heartbeats carry them; waits up to 10 s for `what`).
fn wait_for_hits(up: &LocalUp, before: f64, at_least: f64, what: &str) -> f64 {
    wait_until(what, Duration::from_secs(10), || {
        let h = metric_sum(
            &metrics(up.api, up.key()),
            "inferno_prefix_cache_hit_tokens_total",
        ) - before;
        (h >= at_least).then_some(h)
    })
}

/// About 1,100 tokens of plain English.
fn long_system_prompt() -> String {
    let words = [
        "the",
        "ship",
        "leaves",
        "port",
        "at",
        "dawn",
        "and",
        "every",
        "parcel",
        "must",
        "be",
        "labelled",
        "with",
        "its",
        "weight",
        "destination",
        "and",
        "sender",
    ];
    let mut text = String::from("You are the dispatch assistant of a harbour. House rules:");
    for i in 0..1100 {
        text.push(' ');
        text.push_str(words[i % words.len()]);
        if i % 18 == 17 {
            text.push('.');
        }
    }
    text
}

/// Sends a one-token chat request and returns how long the answer took.
fn ask(api: SocketAddr, key: Option<&str>, model: &str, system: &str, user: &str) -> Duration {
    let body = json!({"model": model, "max_tokens": 1, "temperature": 0,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]});
    let t = Instant::now();
    let r = http::request(
        api,
        key,
        "POST",
        "/v1/chat/completions",
        Some(&body.to_string()),
        T,
    )
    .expect("chat request");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.json()["usage"]["prompt_tokens"].as_u64().unwrap_or(0) > 1000,
        "{}",
        r.body
    );
    t.elapsed()
}

/// Opens a streaming chat request without `max_tokens` and waits for its first bytes.
fn open_stream(api: SocketAddr, key: Option<&str>, model: &str, i: usize) -> TcpStream {
    let body: Value = json!({"model": model, "stream": true, "ignore_eos": true,
        "messages": [{"role": "user", "content": format!("Tell story number {i} about a lighthouse.")}]});
    let mut conn = http::send(
        api,
        key,
        "POST",
        "/v1/chat/completions",
        Some(&body.to_string()),
        T,
    )
    .expect("open stream");
    let mut buf = [0u8; 512];
    let n = conn.read(&mut buf).expect("first bytes");
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "stream {i} did not start: {head}"
    );
    conn
}

#[test]
fn shared_prefixes_are_reused_across_coordinators_and_open_ended_streams_all_run() {
    let up = LocalUp::start(2, 2, &[], STARTUP);
    let model = test_model_name();
    let apis = up.coordinator_apis();

    // The same 1,100-token system prompt twice, through two coordinators:
    // the second request goes where the prefix is and only prefills its
    // own question.
    let system = long_system_prompt();
    let hits_before = metric_sum(
        &metrics(up.api, up.key()),
        "inferno_prefix_cache_hit_tokens_total",
    );
    let cold = ask(
        apis[0],
        up.key(),
        &model,
        &system,
        "Which pier is for parcels?",
    );
    // Let the node's heartbeat tell the coordinators what it now holds.
    std::thread::sleep(Duration::from_secs(2));
    eprintln!(
        "heartbeats before the warm request: {}",
        up.cluster()
            .map(|c| c["heartbeats"].to_string())
            .unwrap_or_default()
    );
    let warm = ask(
        apis[1],
        up.key(),
        &model,
        &system,
        "When does the ship leave?",
    );
    let hits = wait_for_hits(&up, hits_before, 900.0, "the prefix-cache hits");
    eprintln!("cold {cold:?}, warm {warm:?}, {hits} prompt tokens from the cache");
    assert!(warm * 3 < cold, "warm request took {warm:?}, cold {cold:?}");

    // Twelve clients that set no max_tokens all run at once.
    let started = Instant::now();
    let streams: Vec<TcpStream> = (0..12)
        .map(|i| open_stream(apis[i % 3], up.key(), &model, i))
        .collect();
    wait_until(
        "12 sequences running",
        Duration::from_secs(10).saturating_sub(started.elapsed()),
        || {
            (metric_sum(&metrics(up.api, up.key()), "inferno_running_sequences") == 12.0)
                .then_some(())
        },
    );
    eprintln!("12 running {:?} after the first request", started.elapsed());
    let m = metrics(up.api, up.key());
    assert!(metric_sum(&m, "inferno_kv_cache_usage_ratio") > 0.0, "{m}");
    assert_eq!(metric_sum(&m, "inferno_preemptions_total"), 0.0, "{m}");

    // They leave: every block they held is given back; cached prefixes stay.
    drop(streams);
    wait_until("every block given back", Duration::from_secs(10), || {
        let m = metrics(up.api, up.key());
        (metric_sum(&m, "inferno_running_sequences") == 0.0
            && metric_sum(&m, "inferno_kv_cache_usage_ratio") == 0.0)
            .then_some(())
    });
    assert!(metric_sum(&metrics(up.api, up.key()), "inferno_kv_cache_cached_blocks") > 0.0);

    // Four choices of one new prompt (`n`) prefill it once: the other
    // three run on the same node and take its blocks from the cache.
    let hits_before = metric_sum(
        &metrics(up.api, up.key()),
        "inferno_prefix_cache_hit_tokens_total",
    );
    let system = format!("Harbour two. {}", long_system_prompt());
    let body = json!({"model": model, "max_tokens": 3, "n": 4, "seed": 5,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": "Hi"}]});
    let r = http::request(
        apis[2],
        up.key(),
        "POST",
        "/v1/chat/completions",
        Some(&body.to_string()),
        T,
    )
    .expect("n=4 request");
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["choices"].as_array().map(Vec::len), Some(4), "{v}");
    let prompt = v["usage"]["prompt_tokens"].as_f64().unwrap_or(0.0);
    assert!(prompt > 1000.0, "{v}");
    let hits = wait_for_hits(
        &up,
        hits_before,
        3.0 * (prompt - 32.0),
        "three choices' prompts from the cache",
    );
    eprintln!("n=4 over a {prompt}-token prompt: {hits} prompt tokens from the cache");
}
