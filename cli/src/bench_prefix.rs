//! `inferno bench prefix`: how much a server gains from prompts that share
//! long prefixes (chat apps, agents and RAG send the same system prompt
//! again and again). Drives any OpenAI-compatible server (Inferno or
//! llama-server) with streaming chat requests that share one of K long
//! system prompts plus short distinct user turns, and reports time to
//! first token on a cold cache (the first request of each prompt, sent one
//! at a time) and warm (the rest, from `--concurrency` clients), the
//! aggregate decode rate of the warm phase, and, when the server exposes
//! Inferno's metrics, the prefix-cache hit ratio across its nodes.

use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use serde_json::{json, Value};

/// Arguments of `inferno bench prefix`.
#[derive(Args, Debug)]
pub struct PrefixBenchArgs {
    /// Base URL of an OpenAI-compatible server (with or without `/v1`).
    #[arg(long)]
    pub url: String,
    /// Model to ask for (default: the first one the server lists).
    #[arg(long)]
    pub model: Option<String>,
    /// Approximate length of each shared system prompt, in tokens.
    #[arg(long, default_value_t = 1000)]
    pub system_tokens: usize,
    /// Distinct system prompts.
    #[arg(long, default_value_t = 4)]
    pub prefixes: usize,
    /// Warm requests (after one cold request per system prompt).
    #[arg(long, default_value_t = 64)]
    pub requests: usize,
    /// Clients sending warm requests at once.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Tokens generated per request (end-of-sequence is ignored).
    #[arg(long, default_value_t = 32)]
    pub max_tokens: u32,
    #[command(flatten)]
    pub key: crate::api_key::ApiKeyArgs,
    /// Seed of the prompt text.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// What one request measured.
#[derive(Debug, Clone)]
struct Sample {
    ttft: Duration,
    completion_tokens: usize,
    prompt_tokens: Option<u64>,
}

/// The benchmark's figures.
#[derive(Debug, Serialize)]
struct Report {
    model: String,
    prefixes: usize,
    system_tokens_target: usize,
    prompt_tokens_mean: Option<f64>,
    cold_requests: usize,
    warm_requests: usize,
    concurrency: usize,
    max_tokens: u32,
    errors: usize,
    cold_ttft_ms_p50: f64,
    cold_ttft_ms_p99: f64,
    warm_ttft_ms_p50: f64,
    warm_ttft_ms_p99: f64,
    /// Warm TTFT p50 over cold TTFT p50.
    warm_over_cold_ttft: f64,
    /// Completion tokens of the warm phase over its wall time.
    warm_tokens_per_s: f64,
    /// Prefix-cache hit tokens over looked-up prompt tokens in the warm
    /// phase, summed over the nodes (Inferno only).
    prefix_hit_ratio_warm: Option<f64>,
    /// The same over both phases.
    prefix_hit_ratio_all: Option<f64>,
}

/// Common English words: about one token each for BPE vocabularies.
const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "you",
    "that",
    "it",
    "he",
    "was",
    "for",
    "on",
    "are",
    "as",
    "with",
    "his",
    "they",
    "at",
    "be",
    "this",
    "have",
    "from",
    "or",
    "one",
    "had",
    "by",
    "word",
    "but",
    "not",
    "what",
    "all",
    "were",
    "we",
    "when",
    "your",
    "can",
    "said",
    "there",
    "use",
    "an",
    "each",
    "which",
    "she",
    "do",
    "how",
    "their",
    "if",
    "will",
    "up",
    "other",
    "about",
    "out",
    "many",
    "then",
    "them",
    "these",
    "so",
    "some",
    "her",
    "would",
    "make",
    "like",
    "him",
    "into",
    "time",
    "has",
    "look",
    "two",
    "more",
    "write",
    "go",
    "see",
    "number",
    "no",
    "way",
    "could",
    "people",
    "my",
    "than",
    "first",
    "water",
    "been",
    "call",
    "who",
    "oil",
    "its",
    "now",
    "find",
    "long",
    "down",
    "day",
    "did",
    "get",
    "come",
    "made",
    "may",
    "part",
    "over",
    "new",
    "sound",
    "take",
    "only",
    "little",
    "work",
    "know",
    "place",
    "year",
    "live",
    "me",
    "back",
    "give",
    "most",
    "very",
    "after",
    "thing",
    "our",
    "just",
    "name",
    "good",
    "sentence",
    "man",
    "think",
    "say",
    "great",
    "where",
    "help",
    "through",
    "much",
    "before",
    "line",
    "right",
    "too",
    "mean",
    "old",
    "any",
    "same",
    "tell",
    "boy",
    "follow",
    "came",
    "want",
    "show",
    "also",
    "around",
    "form",
    "three",
    "small",
    "set",
    "put",
    "end",
    "does",
    "another",
    "well",
    "large",
    "must",
    "big",
    "even",
    "such",
    "because",
    "turn",
    "here",
    "why",
    "ask",
    "went",
    "men",
    "read",
    "need",
    "land",
    "different",
    "home",
    "us",
    "move",
    "try",
    "kind",
    "hand",
    "picture",
    "again",
    "change",
    "off",
    "play",
    "spell",
    "air",
    "away",
    "animal",
    "house",
    "point",
    "page",
    "letter",
    "mother",
    "answer",
    "found",
    "study",
];

/// System prompt `k`: a distinct opening, then seeded common words.
fn system_prompt(k: usize, tokens: usize, seed: u64) -> String {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(1_000_003) + k as u64);
    let mut text = format!("You are assistant number {k} of the benchmark. Follow these notes:");
    for i in 0..tokens.saturating_sub(16) {
        text.push(' ');
        text.push_str(WORDS.choose(&mut rng).copied().unwrap_or("the"));
        if i % 12 == 11 {
            text.push('.');
        }
    }
    text
}

fn agent(key: Option<String>) -> ureq::Agent {
    crate::api_key::with_key(
        ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout_read(Duration::from_secs(300)),
        key,
    )
    .build()
}

/// Runs the benchmark.
pub fn run(a: PrefixBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.prefixes >= 1, "--prefixes must be at least 1");
    anyhow::ensure!(a.concurrency >= 1, "--concurrency must be at least 1");
    let base = a
        .url
        .trim_end_matches('/')
        .trim_end_matches("/v1")
        .to_string();
    let agent = agent(a.key.resolve()?);
    let model = match &a.model {
        Some(m) => m.clone(),
        None => crate::chat::first_model(&agent, &base)?,
    };
    let systems: Vec<String> = (0..a.prefixes)
        .map(|k| system_prompt(k, a.system_tokens, a.seed))
        .collect();
    let body = |k: usize, i: usize| {
        json!({
            "model": model,
            "messages": [
                {"role": "system", "content": systems[k]},
                {"role": "user", "content": format!("Request {i}: list three words that rhyme with word {}.", i % 97)},
            ],
            "max_tokens": a.max_tokens,
            "temperature": 0,
            "ignore_eos": true,
            "stream": true,
            "stream_options": {"include_usage": true},
        })
    };
    // A cluster that just became ready may not have its first heartbeat in
    // /metrics yet: give it a few seconds before deciding it has no counters.
    let mut before = cache_counters(&agent, &base);
    for _ in 0..12 {
        if before.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
        before = cache_counters(&agent, &base);
    }
    let mut cold = Vec::new();
    let mut errors = 0;
    for k in 0..a.prefixes {
        match stream_one(&agent, &base, &body(k, k)) {
            Ok(s) => cold.push(s),
            Err(e) => {
                errors += 1;
                eprintln!("cold request {k} failed: {e:#}");
            }
        }
    }
    let mid = after_metrics_refresh(&agent, &base, before.is_some());
    let next = AtomicUsize::new(0);
    let warm = Mutex::new(Vec::new());
    let warm_errors = AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..a.concurrency {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= a.requests {
                    return;
                }
                match stream_one(&agent, &base, &body(i % a.prefixes, a.prefixes + i)) {
                    Ok(s) => warm.lock().unwrap_or_else(|p| p.into_inner()).push(s),
                    Err(e) => {
                        warm_errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!("warm request {i} failed: {e:#}");
                    }
                }
            });
        }
    });
    let warm_wall = start.elapsed();
    let warm = warm.into_inner().unwrap_or_else(|p| p.into_inner());
    errors += warm_errors.load(Ordering::Relaxed);
    let end = after_metrics_refresh(&agent, &base, before.is_some());
    anyhow::ensure!(
        !cold.is_empty() && !warm.is_empty(),
        "too many requests failed ({errors})"
    );
    let ratio = |from: Option<(u64, u64)>, to: Option<(u64, u64)>| match (from, to) {
        (Some((q0, h0)), Some((q1, h1))) if q1 > q0 => Some((h1 - h0) as f64 / (q1 - q0) as f64),
        _ => None,
    };
    let ms = |v: Vec<Duration>| -> Vec<f64> { v.iter().map(|d| d.as_secs_f64() * 1e3).collect() };
    let cold_ttft = ms(cold.iter().map(|s| s.ttft).collect());
    let warm_ttft = ms(warm.iter().map(|s| s.ttft).collect());
    let prompts: Vec<u64> = cold
        .iter()
        .chain(&warm)
        .filter_map(|s| s.prompt_tokens)
        .collect();
    let warm_tokens: usize = warm.iter().map(|s| s.completion_tokens).sum();
    let report = Report {
        model,
        prefixes: a.prefixes,
        system_tokens_target: a.system_tokens,
        prompt_tokens_mean: (!prompts.is_empty())
            .then(|| prompts.iter().sum::<u64>() as f64 / prompts.len() as f64),
        cold_requests: cold.len(),
        warm_requests: warm.len(),
        concurrency: a.concurrency,
        max_tokens: a.max_tokens,
        errors,
        cold_ttft_ms_p50: percentile(&cold_ttft, 50.0),
        cold_ttft_ms_p99: percentile(&cold_ttft, 99.0),
        warm_ttft_ms_p50: percentile(&warm_ttft, 50.0),
        warm_ttft_ms_p99: percentile(&warm_ttft, 99.0),
        warm_over_cold_ttft: percentile(&warm_ttft, 50.0) / percentile(&cold_ttft, 50.0).max(1e-9),
        warm_tokens_per_s: warm_tokens as f64 / warm_wall.as_secs_f64().max(1e-9),
        prefix_hit_ratio_warm: ratio(mid, end),
        prefix_hit_ratio_all: ratio(before, end),
    };
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn print_table(r: &Report) {
    let opt = |v: Option<f64>| v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.3}"));
    println!(
        "model {}: {} system prompts of ~{} tokens (mean prompt {} tokens), {} cold + {} warm requests at concurrency {}, {} tokens each, {} errors",
        r.model,
        r.prefixes,
        r.system_tokens_target,
        r.prompt_tokens_mean.map_or_else(|| "n/a".into(), |v| format!("{v:.0}")),
        r.cold_requests,
        r.warm_requests,
        r.concurrency,
        r.max_tokens,
        r.errors
    );
    println!(
        "cold TTFT p50 / p99   {:>9.1} / {:.1} ms",
        r.cold_ttft_ms_p50, r.cold_ttft_ms_p99
    );
    println!(
        "warm TTFT p50 / p99   {:>9.1} / {:.1} ms  ({:.3}x cold)",
        r.warm_ttft_ms_p50, r.warm_ttft_ms_p99, r.warm_over_cold_ttft
    );
    println!(
        "warm decode           {:>9.1} tokens/s",
        r.warm_tokens_per_s
    );
    println!(
        "prefix-cache hit ratio warm {} / overall {}",
        opt(r.prefix_hit_ratio_warm),
        opt(r.prefix_hit_ratio_all)
    );
}

/// Nearest-rank percentile of unsorted values.
pub(crate) fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Sends one streaming chat request and times its first token.
fn stream_one(agent: &ureq::Agent, base: &str, body: &Value) -> anyhow::Result<Sample> {
    let url = format!("{base}/v1/chat/completions");
    let req = agent.post(&url);
    let sent = Instant::now();
    let resp = match req.send_json(body.clone()) {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            let v: Value = r.into_json().unwrap_or(Value::Null);
            anyhow::bail!(
                "HTTP {code}: {}",
                v["error"]["message"].as_str().unwrap_or("no message")
            );
        }
        Err(e) => return Err(e).with_context(|| format!("cannot reach {url}")),
    };
    let mut ttft = None;
    let mut chunks = 0;
    let mut usage = None;
    for line in BufReader::new(resp.into_reader()).lines() {
        let line = line.context("the stream broke")?;
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data.trim() == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(data).context("bad stream chunk")?;
        if let Some(msg) = chunk["error"]["message"].as_str() {
            anyhow::bail!("{msg}");
        }
        if chunk["usage"].is_object() {
            usage = Some(chunk["usage"].clone());
        }
        let has_text = chunk["choices"][0]["delta"]["content"]
            .as_str()
            .is_some_and(|t| !t.is_empty());
        if has_text {
            chunks += 1;
            ttft.get_or_insert_with(|| sent.elapsed());
        }
    }
    let ttft = ttft.context("the answer had no text")?;
    let completion = usage
        .as_ref()
        .and_then(|u| u["completion_tokens"].as_u64())
        .map_or(chunks, |n| n as usize);
    Ok(Sample {
        ttft,
        completion_tokens: completion,
        prompt_tokens: usage.as_ref().and_then(|u| u["prompt_tokens"].as_u64()),
    })
}

/// Waits for the coordinators' metrics to catch up with the nodes'
/// heartbeats, then reads the prefix-cache counters.
fn after_metrics_refresh(agent: &ureq::Agent, base: &str, has_metrics: bool) -> Option<(u64, u64)> {
    if !has_metrics {
        return None;
    }
    std::thread::sleep(Duration::from_millis(2500));
    cache_counters(agent, base)
}

/// Prompt tokens looked up and found in the prefix cache, summed over
/// every replica, from Inferno's `/metrics`; `None` from other servers.
fn cache_counters(agent: &ureq::Agent, base: &str) -> Option<(u64, u64)> {
    let req = agent.get(&format!("{base}/metrics"));
    let text = req.call().ok()?.into_string().ok()?;
    let sum = |name: &str| -> Option<u64> {
        let values: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        (!values.is_empty()).then(|| values.iter().sum::<f64>() as u64)
    };
    Some((
        sum("inferno_prefix_cache_queried_tokens_total")?,
        sum("inferno_prefix_cache_hit_tokens_total")?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[3.0, 1.0], 99.0), 3.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn system_prompts_are_distinct_long_and_reproducible() {
        let a = system_prompt(0, 1000, 1);
        assert_eq!(a, system_prompt(0, 1000, 1));
        assert_ne!(a, system_prompt(1, 1000, 1));
        let words = a.split_whitespace().count();
        assert!((950..1010).contains(&words), "{words} words");
    }
}
