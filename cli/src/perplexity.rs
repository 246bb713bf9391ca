//! `inferno perplexity`: the perplexity of a text file under a model,
//! computed as llama.cpp's `llama-perplexity` computes it (same chunks,
//! same scored halves), so the two can be compared number for number.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use backends::gguf::GgufFile;
use backends::model::Transformer;
use backends::tokenizer::GgufTokenizer;
use clap::Args;

/// Arguments of `inferno perplexity`.
#[derive(Args, Debug)]
pub struct PerplexityArgs {
    /// A GGUF file, or a catalog name (see `inferno pull --list`).
    #[arg(long, default_value = crate::models::DEFAULT_MODEL)]
    pub model: String,
    /// The text to score.
    #[arg(long)]
    pub file: PathBuf,
    /// Tokens per chunk (llama-perplexity's `-c`).
    #[arg(long, default_value_t = 512)]
    pub ctx: usize,
    /// Score at most this many chunks (llama-perplexity's `--chunks`).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub chunks: Option<u32>,
    /// Compute threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where models are kept.
    #[arg(long, env = "INFERNO_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `inferno perplexity`.
pub async fn run(a: PerplexityArgs) -> anyhow::Result<()> {
    let dir = a
        .models_dir
        .clone()
        .unwrap_or_else(crate::default_models_dir);
    let path = crate::models::resolve(&a.model, &dir).await?;
    tokio::task::spawn_blocking(move || score(&a, &path))
        .await
        .context("perplexity task failed")?
}

fn score(a: &PerplexityArgs, path: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("cannot read {} as UTF-8 text", a.file.display()))?;
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let file = GgufFile::open(path)?;
    let tokenizer = GgufTokenizer::from_gguf(&file.content)?;
    let model = Transformer::load(&file, threads)
        .with_context(|| format!("cannot load {}", path.display()))?;
    drop(file);
    let tokens = tokenizer.encode(&text)?;
    let bos = tokenizer.add_bos().then(|| tokenizer.bos_id()).flatten();
    if !a.json {
        eprintln!(
            "{}: {} tokens, ctx {}, {} chunk(s), {threads} thread(s)",
            a.file.display(),
            tokens.len(),
            a.ctx,
            (tokens.len() / a.ctx.max(1)).min(a.chunks.map_or(usize::MAX, |c| c as usize))
        );
    }
    let started = Instant::now();
    let json = a.json;
    let result = backends::perplexity::perplexity(
        &model,
        &tokens,
        bos,
        a.ctx,
        a.chunks.map(|c| c as usize),
        |i, p| {
            if !json {
                eprint!("[{}]{p:.4},", i + 1);
                let _ = std::io::stderr().flush();
            }
        },
    )?;
    let secs = started.elapsed().as_secs_f64();
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "model": path.display().to_string(),
                "file": a.file.display().to_string(),
                "ctx": a.ctx,
                "tokens": tokens.len(),
                "chunks": result.chunks,
                "scored_tokens": result.scored_tokens,
                "ppl": result.ppl,
                "ppl_error": result.ppl_error,
                "seconds": secs,
            })
        );
    } else {
        eprintln!();
        println!(
            "Final estimate: PPL = {:.4} +/- {:.5} ({} tokens scored in {:.1} s)",
            result.ppl, result.ppl_error, result.scored_tokens, secs
        );
    }
    Ok(())
}
