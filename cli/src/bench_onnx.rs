//! `inferno bench onnx`: end-to-end latency and throughput of an ONNX model
//! through a coordinator's KServe v2 API (Inferno, or any v2 server such as
//! Triton), at several client concurrencies. Each client loops single
//! `infer` requests of `--rows` rows with binary tensors, as `tritonclient`
//! sends them; the anchor is onnxruntime's Python session on the same file
//! (`scripts/bench-onnx-ort.py`, run by `scripts/bench-onnx.sh`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};

use crate::bench_prefix::percentile;

/// Arguments of `inferno bench onnx`.
#[derive(Args, Debug)]
pub struct OnnxBenchArgs {
    /// Base URL of the server (`http://HOST:PORT`).
    #[arg(long)]
    pub url: String,
    /// The ONNX model to call.
    #[arg(long)]
    pub model: String,
    /// Client concurrencies to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub concurrency: Vec<usize>,
    /// Requests per concurrency level (after 8 warm-up requests).
    #[arg(long, default_value_t = 256)]
    pub requests: usize,
    /// Rows (first dimension) of each request.
    #[arg(long, default_value_t = 1)]
    pub rows: usize,
    #[command(flatten)]
    pub key: crate::api_key::ApiKeyArgs,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// One concurrency level's figures.
#[derive(Debug, Serialize)]
struct Level {
    concurrency: usize,
    requests: usize,
    errors: usize,
    latency_ms_p50: f64,
    latency_ms_p99: f64,
    requests_per_s: f64,
    rows_per_s: f64,
}

/// The benchmark's figures.
#[derive(Debug, Serialize)]
struct Report {
    model: String,
    rows_per_request: usize,
    levels: Vec<Level>,
}

/// A prepared request body: the JSON header and the binary tensors.
struct Body {
    bytes: Vec<u8>,
    header_len: usize,
}

/// Builds one request from the model's metadata: random FP32 inputs
/// (zeros of other types), free dimensions `rows` (first) and 8 (others).
fn body(meta: &Value, rows: usize) -> anyhow::Result<Body> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut inputs = Vec::new();
    let mut blobs: Vec<u8> = Vec::new();
    let list = meta["inputs"]
        .as_array()
        .context("the model metadata lists no inputs")?;
    for input in list {
        let name = input["name"].as_str().context("an input without a name")?;
        let datatype = input["datatype"].as_str().unwrap_or("FP32");
        let dims = input["shape"]
            .as_array()
            .context("an input without a shape")?;
        let shape: Vec<i64> = dims
            .iter()
            .enumerate()
            .map(|(k, d)| match d.as_i64() {
                Some(d) if d >= 0 => d,
                _ if k == 0 => rows as i64,
                _ => 8,
            })
            .collect();
        let count = shape.iter().product::<i64>().max(0) as usize;
        let size = match datatype {
            "FP32" | "INT32" => 4,
            "FP64" | "INT64" => 8,
            "UINT8" | "BOOL" => 1,
            other => {
                anyhow::bail!("input {name} has datatype {other}, which the bench cannot make")
            }
        };
        let before = blobs.len();
        if datatype == "FP32" {
            for _ in 0..count {
                blobs.extend_from_slice(&rng.gen_range(-1.0f32..1.0).to_le_bytes());
            }
        } else {
            blobs.resize(before + count * size, 0);
        }
        inputs.push(json!({
            "name": name,
            "datatype": datatype,
            "shape": shape,
            "parameters": {"binary_data_size": blobs.len() - before},
        }));
    }
    let head = json!({"inputs": inputs, "parameters": {"binary_data_output": true}}).to_string();
    let header_len = head.len();
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&blobs);
    Ok(Body { bytes, header_len })
}

fn agent(key: Option<String>) -> ureq::Agent {
    crate::api_key::with_key(
        ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout_read(Duration::from_secs(60))
            // One kept-alive connection per client thread.
            .max_idle_connections_per_host(256),
        key,
    )
    .build()
}

/// Sends one request; its latency, or why it failed.
fn one(agent: &ureq::Agent, url: &str, body: &Body) -> Result<Duration, String> {
    let start = Instant::now();
    let resp = agent
        .post(url)
        .set("Content-Type", "application/octet-stream")
        .set(
            "Inference-Header-Content-Length",
            &body.header_len.to_string(),
        )
        .send_bytes(&body.bytes);
    match resp {
        Ok(r) => {
            let mut sink = Vec::new();
            std::io::Read::read_to_end(&mut r.into_reader(), &mut sink)
                .map_err(|e| e.to_string())?;
            Ok(start.elapsed())
        }
        Err(ureq::Error::Status(code, r)) => {
            Err(format!("{code}: {}", r.into_string().unwrap_or_default()))
        }
        Err(e) => Err(e.to_string()),
    }
}

fn level(agent: &ureq::Agent, url: &str, body: &Body, clients: usize, requests: usize) -> Level {
    let next = AtomicUsize::new(0);
    let latencies: Mutex<Vec<f64>> = Mutex::new(Vec::with_capacity(requests));
    let errors: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..clients {
            s.spawn(|| {
                while next.fetch_add(1, Ordering::Relaxed) < requests {
                    match one(agent, url, body) {
                        Ok(d) => {
                            if let Ok(mut l) = latencies.lock() {
                                l.push(d.as_secs_f64() * 1000.0);
                            }
                        }
                        Err(e) => {
                            if let Ok(mut l) = errors.lock() {
                                l.push(e);
                            }
                        }
                    }
                }
            });
        }
    });
    let wall = start.elapsed().as_secs_f64();
    let latencies = latencies.into_inner().unwrap_or_default();
    let errors = errors.into_inner().unwrap_or_default();
    if let Some(e) = errors.first() {
        eprintln!("{} requests failed, the first with {e}", errors.len());
    }
    let ok = latencies.len();
    Level {
        concurrency: clients,
        requests: ok,
        errors: errors.len(),
        latency_ms_p50: percentile(&latencies, 50.0),
        latency_ms_p99: percentile(&latencies, 99.0),
        requests_per_s: ok as f64 / wall,
        rows_per_s: 0.0,
    }
}

/// Runs the benchmark.
pub fn run(a: OnnxBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.rows >= 1, "--rows must be at least 1");
    anyhow::ensure!(
        a.concurrency.iter().all(|&c| c >= 1),
        "every --concurrency must be at least 1"
    );
    let base = a.url.trim_end_matches('/').to_string();
    let agent = agent(a.key.resolve()?);
    let meta: Value = agent
        .get(&format!("{base}/v2/models/{}", a.model))
        .call()
        .with_context(|| format!("cannot read the metadata of {} at {base}", a.model))?
        .into_json()
        .context("the model metadata is not JSON")?;
    let body = body(&meta, a.rows)?;
    let url = format!("{base}/v2/models/{}/infer", a.model);
    for _ in 0..8 {
        one(&agent, &url, &body).map_err(|e| anyhow::anyhow!("warm-up request failed: {e}"))?;
    }
    let mut levels = Vec::new();
    for &c in &a.concurrency {
        let mut l = level(&agent, &url, &body, c, a.requests);
        l.rows_per_s = l.requests_per_s * a.rows as f64;
        levels.push(l);
    }
    let report = Report {
        model: a.model,
        rows_per_request: a.rows,
        levels,
    };
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{:>11} {:>9} {:>7} {:>10} {:>10} {:>10} {:>10}",
            "concurrency", "requests", "errors", "p50 ms", "p99 ms", "req/s", "rows/s"
        );
        for l in &report.levels {
            println!(
                "{:>11} {:>9} {:>7} {:>10.3} {:>10.3} {:>10.1} {:>10.1}",
                l.concurrency,
                l.requests,
                l.errors,
                l.latency_ms_p50,
                l.latency_ms_p99,
                l.requests_per_s,
                l.rows_per_s
            );
        }
    }
    Ok(())
}
