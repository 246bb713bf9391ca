//! `inferno`: run and use an Inferno cluster from the command line.

mod admin_api;
mod api_key;
mod audit;
mod bench;
mod bench_control_plane;
mod bench_fl;
mod bench_kernels;
mod bench_onnx;
mod bench_prefix;
mod certs;
mod chat;
mod config;
mod coordinator;
mod fl;
mod generate;
mod http_client;
mod keys;
mod local_cluster;
mod models;
mod node_cmd;
mod perplexity;
mod pull;
mod scratch;
mod signals;
mod status;
mod tenants;
mod up;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

/// Distributed LLM inference and federated learning.
#[derive(Parser)]
#[command(name = "inferno", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a GGUF model on this machine, streaming to stdout.
    Generate(generate::GenerateArgs),
    /// Fetch a model into the models directory and print its path.
    Pull(pull::PullArgs),
    /// Perplexity of a text file under a model, computed as llama-perplexity does.
    Perplexity(perplexity::PerplexityArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Cluster certificates for mutual TLS: create the CA, issue member certificates.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Run a coordinator (raft-replicated cluster state and the admin API).
    Coordinator(coordinator::CoordinatorArgs),
    /// Run a worker node that joins the coordinators and serves the models they assign.
    Node(node_cmd::NodeArgs),
    /// Start a local cluster (coordinators and nodes as processes), deploy the model, serve the OpenAI API.
    Up(up::UpArgs),
    /// Chat with a model served by a cluster (streaming).
    Chat(chat::ChatArgs),
    /// Show the cluster: leader, members, nodes and their load, models and replicas.
    Status(status::StatusArgs),
    /// Federated learning: datasets, partitions, jobs (start, status, stop).
    #[command(subcommand)]
    Fl(fl::FlCommand),
    /// API keys of a cluster: create, list, revoke (needs an admin key).
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Tenants of a cluster: limits shared by their keys, scheduling class (needs an admin key).
    #[command(subcommand)]
    Tenants(tenants::TenantsCommand),
    /// The audit trail: admin writes, refused keys, quota rejections; --verify checks its hash chain.
    Audit(audit::AuditArgs),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Engine throughput and latency at several concurrency levels.
    Engine(bench::EngineBenchArgs),
    /// Quantized matmul kernels: GFLOP/s and bandwidth per type and batch size.
    Kernels(bench_kernels::KernelBenchArgs),
    /// Coordinator group on loopback: commit latency, throughput, failover, linearizability.
    ControlPlane(bench_control_plane::ControlPlaneBenchArgs),
    /// Federated learning on a throwaway local cluster: accuracy and time per round.
    Fl(bench_fl::FlBenchArgs),
    /// Shared-prefix chat traffic against any OpenAI-compatible server: cold and warm TTFT, prefix-cache hits.
    Prefix(bench_prefix::PrefixBenchArgs),
    /// An ONNX model through the KServe v2 API: latency and throughput at several concurrencies.
    Onnx(bench_onnx::OnnxBenchArgs),
}

/// Options shared by commands that compute on this machine.
#[derive(Args, Clone, Debug)]
pub struct ComputeArgs {
    /// Compute threads for model math (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Node configuration file (engine limits); see configs/node.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl ComputeArgs {
    /// The engine configuration: the config file (or defaults), with `--threads` applied.
    pub fn engine_config(&self) -> anyhow::Result<backends::engine::EngineConfig> {
        let mut cfg = config::NodeConfig::load(self.config.as_deref())?
            .engine
            .to_engine_config();
        if let Some(n) = self.threads {
            cfg.threads = n.max(1);
        }
        Ok(cfg)
    }
}

/// Where models live unless `--models-dir` says otherwise: `~/.inferno/models`.
pub fn default_models_dir() -> PathBuf {
    std::env::var_os("INFERNO_MODELS_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".inferno/models")))
        .unwrap_or_else(|| PathBuf::from(".inferno/models"))
}

/// Where datasets live unless told otherwise: `INFERNO_DATA_DIR` or
/// `~/.inferno/data`.
pub fn default_data_dir() -> PathBuf {
    backends::fl::default_data_dir()
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // candle (federated training and evaluation) sizes its matmul threads
    // from rayon's pool; on small shared machines one thread per process is
    // several times faster than threads fighting over cores. Set before any
    // thread exists; an explicit setting wins.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("INFERNO_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        match cli.command {
            Command::Generate(a) => generate::run(a).await,
            Command::Pull(a) => pull::run(a).await,
            Command::Perplexity(a) => perplexity::run(a).await,
            Command::Certs(c) => tokio::task::spawn_blocking(move || certs::run(c)).await?,
            Command::Coordinator(a) => coordinator::run(a).await,
            Command::Node(a) => node_cmd::run(a).await,
            Command::Up(a) => up::run(a).await,
            Command::Chat(a) => tokio::task::spawn_blocking(move || chat::run(a)).await?,
            Command::Status(a) => tokio::task::spawn_blocking(move || status::run(a)).await?,
            Command::Bench(BenchCommand::Engine(a)) => bench::run_engine(a).await,
            Command::Bench(BenchCommand::Kernels(a)) => {
                tokio::task::spawn_blocking(move || bench_kernels::run(a)).await?
            }
            Command::Fl(c) => tokio::task::spawn_blocking(move || fl::run(c)).await?,
            Command::Keys(c) => tokio::task::spawn_blocking(move || keys::run(c)).await?,
            Command::Tenants(c) => tokio::task::spawn_blocking(move || tenants::run(c)).await?,
            Command::Audit(a) => tokio::task::spawn_blocking(move || audit::run(a)).await?,
            Command::Bench(BenchCommand::Fl(a)) => {
                tokio::task::spawn_blocking(move || bench_fl::run(a)).await?
            }
            Command::Bench(BenchCommand::Prefix(a)) => {
                tokio::task::spawn_blocking(move || bench_prefix::run(a)).await?
            }
            Command::Bench(BenchCommand::Onnx(a)) => {
                tokio::task::spawn_blocking(move || bench_onnx::run(a)).await?
            }
            Command::Bench(BenchCommand::ControlPlane(a)) => {
                tokio::task::spawn_blocking(move || bench_control_plane::run(a)).await?
            }
        }
    })
}
