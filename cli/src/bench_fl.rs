//! `inferno bench fl`: a federated-learning run on a throwaway local
//! cluster: three coordinators and one node per client as processes on
//! loopback, one job built from the flags, one JSON line per finished round
//! and a summary line; everything is stopped at the end.

use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use backends::fl::{
    DatasetKind, InitSpec, JobSpec, ModelSpec, PartitionSpec, Sampling, SplitKind, Strategy,
    TrainConfig,
};
use clap::Args;
use protocol::tls::ClusterCa;
use serde_json::{json, Value};

use crate::fl::{api, data, SplitArg};
use crate::local_cluster::{LocalCoordinators, LocalCoordinatorsSpec};

/// Arguments of `inferno bench fl`.
#[derive(Args, Debug)]
pub struct FlBenchArgs {
    /// mnist or fashion-mnist (fetched into the data directory if missing).
    #[arg(long, value_parser = data::parse_dataset, default_value = "mnist")]
    pub dataset: DatasetKind,
    /// How the training pool is split over the clients.
    #[arg(long, value_enum, default_value = "iid")]
    pub split: SplitArg,
    /// A partition file (the anchor's JSON format) instead of a computed split.
    #[arg(long)]
    pub partitions: Option<PathBuf>,
    /// Initial global model (raw little-endian f32 or .safetensors); default:
    /// the model's own seeded initialisation.
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Rounds to run.
    #[arg(long, default_value_t = 30)]
    pub rounds: u64,
    /// Clients, one node process each.
    #[arg(long, default_value_t = 10)]
    pub clients: usize,
    /// Dirichlet concentration (with --split dirichlet and no --partitions).
    #[arg(long, default_value_t = 0.5)]
    pub alpha: f64,
    /// Train on at most this many rows of each client's shard (quick runs).
    #[arg(long)]
    pub max_rows_per_client: Option<usize>,
    /// Seed of the split, the initial model and the clients' shuffling.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Compute threads of each node.
    #[arg(long, default_value_t = 1)]
    pub threads_per_node: usize,
    /// Seconds a round waits for updates.
    #[arg(long, default_value_t = 120)]
    pub round_timeout_s: u64,
    /// Where datasets are kept (default: INFERNO_DATA_DIR or ~/.inferno/data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Keep the cluster directory (configs, logs) instead of removing it.
    #[arg(long)]
    pub keep_dir: bool,
    /// Quiet: no download progress bar and no cluster messages on stderr
    /// (stdout carries the JSON lines either way).
    #[arg(long)]
    pub json: bool,
}

/// How long the cluster gets to elect a leader and register the nodes.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// The node processes; SIGTERMed (then SIGKILLed) on drop, before the
/// coordinators (dropped after them).
struct Cluster {
    nodes: Vec<Child>,
    coordinators: LocalCoordinators,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        crate::up::terminate(self.nodes.iter_mut());
        self.coordinators.terminate_all();
    }
}

/// The job the flags describe: the anchor's MLP and client training, FedAvg,
/// every client in every round. Files the flags name are copied into
/// `data_dir` (the FL data directory of every process of the cluster),
/// since a job may name files only there.
pub fn job_spec(a: &FlBenchArgs, id: &str, data_dir: &Path) -> anyhow::Result<JobSpec> {
    let staged = |p: &Path| stage_file(p, data_dir, id);
    let spec = JobSpec {
        id: id.to_string(),
        dataset: a.dataset,
        model: ModelSpec::Mlp {
            layers: vec![784, 200, 10],
        },
        init: InitSpec {
            seed: a.seed,
            file: a.init.as_deref().map(staged).transpose()?,
        },
        rounds: a.rounds,
        strategy: Strategy::FedAvg,
        train: TrainConfig {
            seed: a.seed,
            threads: a.threads_per_node.max(1),
            ..TrainConfig::default()
        },
        sampling: Sampling {
            fraction: 1.0,
            min_clients: a.clients.max(1),
        },
        round_timeout_s: a.round_timeout_s,
        partition: PartitionSpec {
            split: SplitKind::from(a.split),
            clients: a.clients,
            file: a.partitions.as_deref().map(staged).transpose()?,
            alpha: a.alpha,
            seed: a.seed,
            max_rows_per_client: None,
        },
        holdout_fraction: 0.0,
        dp: None,
    };
    spec.validate().context("the flags make an invalid job")?;
    Ok(spec)
}

/// Copies `p` to `data_dir/job-files/JOB/NAME` and returns that path
/// relative to `data_dir`.
fn stage_file(p: &Path, data_dir: &Path, job: &str) -> anyhow::Result<PathBuf> {
    let name = p
        .file_name()
        .with_context(|| format!("{} names no file", p.display()))?;
    let rel = Path::new("job-files").join(job).join(name);
    let dest = data_dir.join(&rel);
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::copy(p, &dest)
        .with_context(|| format!("cannot copy {} to {}", p.display(), dest.display()))?;
    Ok(rel)
}

/// The JSON line printed for a finished round.
pub fn round_json(r: &Value) -> Value {
    let m = &r["metrics"];
    json!({
        "round": r["round"],
        "accuracy": m["accuracy"],
        "loss": m["loss"],
        "seconds": m["seconds"],
    })
}

/// The summary line.
pub fn summary_json(rounds: &[Value], wall_seconds: f64, clients: usize, split: &str) -> Value {
    let secs: Vec<f64> = rounds
        .iter()
        .filter_map(|r| r["metrics"]["seconds"].as_f64())
        .collect();
    let mean = if secs.is_empty() {
        Value::Null
    } else {
        json!(secs.iter().sum::<f64>() / secs.len() as f64)
    };
    json!({
        "rounds": rounds.len(),
        "final_accuracy": rounds.last().map_or(Value::Null, |r| r["metrics"]["accuracy"].clone()),
        "mean_round_seconds": mean,
        "wall_seconds": wall_seconds,
        "clients": clients,
        "split": split,
    })
}

/// Runs the benchmark (blocking).
pub fn run(a: FlBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.clients >= 1, "--clients must be at least 1");
    let started = Instant::now();
    let data_dir =
        crate::fl::absolute(&a.data_dir.clone().unwrap_or_else(crate::default_data_dir))?;
    data::ensure_dataset(a.dataset, &data_dir, !a.json)?;
    let id = format!("bench-fl-{}", std::process::id());
    let spec = job_spec(&a, &id, &data_dir)?;

    let dir = crate::scratch::unique_temp_dir("inferno-bench-fl");
    let result = bench(&a, &spec, &data_dir, &dir, started);
    if a.keep_dir || result.is_err() {
        eprintln!("cluster directory (configs, logs): {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn bench(
    a: &FlBenchArgs,
    spec: &JobSpec,
    data_dir: &Path,
    dir: &Path,
    started: Instant,
) -> anyhow::Result<()> {
    let log_filter = std::env::var("INFERNO_LOG").unwrap_or_else(|_| "info".into());
    let cspec = LocalCoordinatorsSpec {
        n: 3,
        tick_ms: 100,
        request_timeout_ms: 5000,
        extra_toml: vec![format!("fl_data_dir = {:?}", data_dir.display().to_string()); 3],
        log_filter: log_filter.clone(),
        ..LocalCoordinatorsSpec::default()
    };
    let mut coordinators = LocalCoordinators::create(dir, &cspec)?;
    let ca = ClusterCa::load(coordinators.ca_dir()).context("cannot load the cluster CA")?;
    let mut configs = Vec::with_capacity(a.clients);
    for i in 0..a.clients {
        let name = format!("node-{}", i + 1);
        ca.issue(&name, protocol::tls::CertRole::Node)
            .context("cannot issue a node certificate")?
            .save(coordinators.certs_dir(), true)
            .context("cannot save a node certificate")?;
        let text = node_config(&name, i, a.threads_per_node, data_dir, &coordinators);
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, text)
            .with_context(|| format!("cannot write {}", config.display()))?;
        configs.push((config, dir.join(format!("{name}.log"))));
    }
    coordinators.start_all()?;
    let mut cluster = Cluster {
        nodes: Vec::with_capacity(a.clients),
        coordinators,
    };
    let exe = std::env::current_exe().context("cannot find this executable")?;
    for (config, log) in &configs {
        let log = File::options()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let child = Command::new(&exe)
            .arg("node")
            .arg("--config")
            .arg(config)
            .env("INFERNO_LOG", &log_filter)
            .env("RAYON_NUM_THREADS", a.threads_per_node.max(1).to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        cluster.nodes.push(child);
    }
    if !a.json {
        eprintln!(
            "started 3 coordinators and {} nodes in {}",
            a.clients,
            dir.display()
        );
    }
    cluster.coordinators.wait_for_leader(READY_TIMEOUT)?;
    let http = cluster.coordinators.http_addr(0);
    let key = cluster.coordinators.admin_key().to_string();
    wait_for_nodes(http, &key, a.clients, READY_TIMEOUT)?;

    let body = serde_json::to_value(spec).context("cannot encode the job")?;
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match crate::http_client::request(
            http,
            Some(&key),
            "POST",
            "/admin/v1/fl/jobs",
            Some(&body),
            HTTP_TIMEOUT,
        ) {
            Ok((200..=202, _)) => break,
            Ok((status, v)) if status < 500 => anyhow::bail!(
                "the coordinator refused the job: HTTP {status}: {}",
                v["error"]["message"].as_str().unwrap_or("no message")
            ),
            other => {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "cannot submit the job: {other:?}"
                );
                std::thread::sleep(Duration::from_millis(250));
            }
        }
    }
    if !a.json {
        eprintln!("submitted job {}; {} rounds", spec.id, spec.rounds);
    }
    let api = api::FlApi::new(&format!("http://{http}"), Some(key.clone()));
    let timeout = Duration::from_secs(spec.rounds.saturating_mul(spec.round_timeout_s) + 300);
    let mut done = Vec::new();
    let status = crate::fl::follow(&api, &spec.id, timeout, |r| {
        println!("{}", round_json(r));
        done.push(r.clone());
    })?;
    println!(
        "{}",
        summary_json(
            &done,
            started.elapsed().as_secs_f64(),
            a.clients,
            a.split.name()
        )
    );
    drop(cluster);
    anyhow::ensure!(status == "Completed", "job {} ended {status}", spec.id);
    Ok(())
}

/// A node's config: the cluster's certificates, every coordinator, no
/// models, training as client `client` on the data under `data_dir`.
fn node_config(
    name: &str,
    client: usize,
    threads: usize,
    data_dir: &Path,
    c: &LocalCoordinators,
) -> String {
    let mut text = format!(
        "[engine]\nthreads = {threads}\n\n[node]\nname = \"{name}\"\ncerts_dir = {certs:?}\n\
         listen = \"127.0.0.1:0\"\nfl_client = {client}\nfl_data_dir = {data:?}\n",
        threads = threads.max(1),
        certs = c.certs_dir().display().to_string(),
        data = data_dir.display().to_string(),
    );
    for i in 0..c.len() {
        let _ = write!(
            text,
            "\n[[node.coordinators]]\nname = \"coordinator-{}\"\naddr = \"{}\"\n",
            c.id(i),
            c.raft_addr(i)
        );
    }
    text
}

/// Waits until the coordinator lists at least `n` nodes.
fn wait_for_nodes(
    http: std::net::SocketAddr,
    key: &str,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok((200, v)) = crate::http_client::request(
            http,
            Some(key),
            "GET",
            "/admin/v1/cluster",
            None,
            HTTP_TIMEOUT,
        ) {
            let up = v["nodes"].as_object().map_or(0, |m| m.len());
            if up >= n {
                return Ok(());
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "fewer than {n} nodes registered within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: FlBenchArgs,
    }

    #[test]
    fn flags_make_a_valid_anchor_job_and_json_lines() {
        let cli = Cli::parse_from([
            "x",
            "--dataset",
            "fashion-mnist",
            "--split",
            "dirichlet",
            "--rounds",
            "3",
            "--clients",
            "4",
        ]);
        let data = tempfile::tempdir().unwrap();
        let spec = job_spec(&cli.a, "j", data.path()).unwrap();
        assert_eq!(spec.dataset, DatasetKind::FashionMnist);
        assert_eq!(spec.partition.split, SplitKind::Dirichlet);
        assert_eq!((spec.partition.clients, spec.sampling.min_clients), (4, 4));
        assert_eq!(JobSpec::from_json(&spec.to_json().unwrap()).unwrap(), spec);
        let cli = Cli::parse_from(["x", "--init", "/definitely/missing.bin"]);
        assert!(job_spec(&cli.a, "j", data.path()).is_err());
        let init = data.path().join("init.bin");
        std::fs::write(&init, [0u8; 8]).unwrap();
        let cli = Cli::parse_from(["x", "--init", init.to_str().unwrap()]);
        let spec = job_spec(&cli.a, "j", data.path()).unwrap();
        let staged = spec.init.file.unwrap();
        assert!(staged.is_relative());
        assert_eq!(std::fs::read(data.path().join(staged)).unwrap(), [0u8; 8]);

        let rounds: Vec<Value> = (1..=2)
            .map(|i| json!({"round": i, "metrics": {"accuracy": 0.9, "loss": 0.3, "seconds": f64::from(i)}}))
            .collect();
        assert_eq!(
            round_json(&rounds[0]),
            json!({"round": 1, "accuracy": 0.9, "loss": 0.3, "seconds": 1.0})
        );
        let s = summary_json(&rounds, 10.0, 4, "iid");
        assert_eq!(s["rounds"], 2);
        assert_eq!(s["mean_round_seconds"], 1.5);
        assert_eq!(s["final_accuracy"], 0.9);
    }

    #[test]
    fn node_configs_parse_with_the_fl_client_and_no_models() {
        let dir = tempfile::tempdir().unwrap();
        let c = LocalCoordinators::create(dir.path(), &LocalCoordinatorsSpec::default()).unwrap();
        let text = node_config("node-1", 3, 1, Path::new("/data"), &c);
        let path = dir.path().join("node.toml");
        std::fs::write(&path, &text).unwrap();
        let cfg = crate::config::NodeConfig::load(Some(&path)).unwrap();
        let node = cfg.node.unwrap();
        assert_eq!(node.fl_client, Some(3));
        assert_eq!(node.fl_data_dir.as_deref(), Some(Path::new("/data")));
        assert_eq!(node.coordinators.len(), 3);
        assert!(node.models.is_empty());
    }
}
