//! `inferno generate`: one completion from a local model, streamed to stdout.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use node::{ModelSpec, Node, RestartBudget};
use protocol::{ChatMessage, GenerateEvent, GenerateRequest, SamplingParams};

use crate::ComputeArgs;

/// Arguments of `inferno generate`.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// A GGUF file, or the name of a pulled model.
    #[arg(long, default_value = crate::models::DEFAULT_MODEL)]
    pub model: String,
    /// The prompt.
    #[arg(long)]
    pub prompt: String,
    /// Send the prompt as one user message through the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: u32,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f32,
    /// Top-k filter (0 = off).
    #[arg(long, default_value_t = 40)]
    pub top_k: u32,
    /// Top-p (nucleus) filter.
    #[arg(long, default_value_t = 0.95)]
    pub top_p: f32,
    /// Min-p filter.
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    /// Repetition penalty (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repeat_penalty: f32,
    /// Random seed; the same seed and prompt give the same text.
    #[arg(long)]
    pub seed: Option<u64>,
    /// A stop string (repeatable); it is not printed.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Keep generating past the end-of-sequence token.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Where pulled models are kept.
    #[arg(long, env = "INFERNO_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    #[command(flatten)]
    pub compute: ComputeArgs,
}

/// Runs `inferno generate`.
pub async fn run(a: GenerateArgs) -> anyhow::Result<()> {
    let dir = a
        .models_dir
        .clone()
        .unwrap_or_else(crate::default_models_dir);
    let path = crate::models::resolve(&a.model, &dir).await?;
    let name = crate::models::model_name(&a.model);
    let spec = ModelSpec {
        name: name.clone(),
        path: path.clone(),
        engine: a.compute.engine_config()?,
    };
    let node = Node::start(vec![spec], RestartBudget::default()).await?;
    let result = generate(&node, &name, &a).await;
    node.shutdown().await;
    result.with_context(|| format!("generation with {} failed", path.display()))
}

async fn generate(node: &Node, name: &str, a: &GenerateArgs) -> anyhow::Result<()> {
    node.wait_ready(name, Duration::from_secs(60)).await?;
    let frontend = node.frontend(name).await?;
    let prompt_tokens = if a.chat {
        frontend.chat_prompt(&[ChatMessage::new("user", a.prompt.clone())], None)?
    } else {
        frontend.encode(&a.prompt)?
    };
    let request = GenerateRequest {
        prompt_tokens,
        max_tokens: Some(a.max_tokens),
        sampling: SamplingParams {
            temperature: a.temperature,
            top_k: a.top_k,
            top_p: a.top_p,
            min_p: a.min_p,
            repetition_penalty: a.repeat_penalty,
            seed: a.seed,
            ..SamplingParams::default()
        },
        stop: a.stop.clone(),
        ignore_eos: a.ignore_eos,
        ..GenerateRequest::default()
    };
    let started = Instant::now();
    let mut first_token = None;
    let mut events = node.generate(name, request).await?;
    let mut out = std::io::stdout().lock();
    while let Some(ev) = events.recv().await {
        match ev {
            GenerateEvent::Token { text, .. } => {
                first_token.get_or_insert_with(Instant::now);
                out.write_all(text.as_bytes())?;
                out.flush()?;
            }
            GenerateEvent::KeepAlive => {}
            GenerateEvent::Finished { reason, usage } => {
                writeln!(out)?;
                let total = started.elapsed().as_secs_f64();
                let ttft = first_token.map_or(total, |t| (t - started).as_secs_f64());
                let decode =
                    (usage.completion_tokens.saturating_sub(1)) as f64 / (total - ttft).max(1e-9);
                eprintln!(
                    "[{} prompt tokens, {} generated, finish: {}, first token {:.0} ms, {:.1} tok/s]",
                    usage.prompt_tokens,
                    usage.completion_tokens,
                    reason.as_str(),
                    ttft * 1e3,
                    decode
                );
                return Ok(());
            }
            GenerateEvent::Failed(e) => anyhow::bail!(e),
        }
    }
    anyhow::bail!("the engine ended the stream without finishing")
}
