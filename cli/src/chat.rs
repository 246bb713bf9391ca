//! `inferno chat --url URL`: an interactive, streaming chat with a model
//! served by a cluster (any OpenAI-compatible server works).

use std::io::{BufRead, BufReader, Write};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde_json::{json, Value};

/// Arguments of `inferno chat`.
#[derive(Args, Debug)]
pub struct ChatArgs {
    /// Base URL of a coordinator, e.g. http://127.0.0.1:8080.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    #[command(flatten)]
    pub key: crate::api_key::ApiKeyArgs,
    /// Model name (default: the first one the server lists).
    #[arg(long)]
    pub model: Option<String>,
    /// A system prompt.
    #[arg(long)]
    pub system: Option<String>,
    /// Sampling temperature.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    /// Most tokens per answer.
    #[arg(long, default_value_t = 512)]
    pub max_tokens: u32,
}

fn agent(key: Option<String>) -> ureq::Agent {
    crate::api_key::with_key(
        ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout_read(Duration::from_secs(120)),
        key,
    )
    .build()
}

/// The first model listed at `GET {base}/v1/models`.
pub(crate) fn first_model(agent: &ureq::Agent, base: &str) -> anyhow::Result<String> {
    let url = format!("{base}/v1/models");
    let v: Value = agent
        .get(&url)
        .call()
        .with_context(|| format!("cannot list models at {url}"))?
        .into_json()
        .with_context(|| format!("{url} did not answer with JSON"))?;
    v["data"]
        .as_array()
        .and_then(|d| d.first())
        .and_then(|m| m["id"].as_str())
        .map(str::to_string)
        .with_context(|| format!("{url} lists no model"))
}

/// Runs the chat loop until end of input (Ctrl-D) or `/exit`.
pub fn run(args: ChatArgs) -> anyhow::Result<()> {
    let base = args.url.trim_end_matches('/').to_string();
    let agent = agent(args.key.resolve()?);
    let model = match args.model {
        Some(m) => m,
        None => first_model(&agent, &base)?,
    };
    let mut messages: Vec<Value> = Vec::new();
    if let Some(system) = &args.system {
        messages.push(json!({"role": "system", "content": system}));
    }
    eprintln!("chatting with {model} at {base} (/exit or Ctrl-D to quit, /reset to forget)");
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            eprintln!();
            return Ok(());
        }
        let line = line.trim();
        match line {
            "" => continue,
            "/exit" | "/quit" => return Ok(()),
            "/reset" => {
                messages.retain(|m| m["role"] == "system");
                continue;
            }
            _ => {}
        }
        messages.push(json!({"role": "user", "content": line}));
        let body = json!({
            "model": model,
            "messages": messages,
            "stream": true,
            "temperature": args.temperature,
            "max_tokens": args.max_tokens,
        });
        match stream_answer(&agent, &base, &body, &mut out) {
            Ok(answer) => messages.push(json!({"role": "assistant", "content": answer})),
            Err(e) => {
                messages.pop();
                eprintln!("\nerror: {e:#}");
            }
        }
    }
}

/// Sends one streaming request and prints the text as it arrives; returns
/// the whole answer.
fn stream_answer(
    agent: &ureq::Agent,
    base: &str,
    body: &Value,
    out: &mut impl Write,
) -> anyhow::Result<String> {
    let url = format!("{base}/v1/chat/completions");
    let resp = match agent.post(&url).send_json(body.clone()) {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            let v: Value = r.into_json().unwrap_or(Value::Null);
            let msg = v["error"]["message"].as_str().unwrap_or("no message");
            anyhow::bail!("HTTP {code}: {msg}");
        }
        Err(e) => return Err(e).with_context(|| format!("cannot reach {url}")),
    };
    let mut answer = String::new();
    for line in BufReader::new(resp.into_reader()).lines() {
        let line = line.context("the stream broke")?;
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            break;
        }
        let chunk: Value = serde_json::from_str(data).context("bad stream chunk")?;
        if let Some(msg) = chunk["error"]["message"].as_str() {
            anyhow::bail!("{msg}");
        }
        if let Some(text) = chunk["choices"][0]["delta"]["content"].as_str() {
            answer.push_str(text);
            write!(out, "{text}")?;
            out.flush()?;
        }
    }
    writeln!(out)?;
    Ok(answer)
}
