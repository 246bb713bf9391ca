//! The node configuration file (`configs/node.toml`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use backends::engine::EngineConfig;
use serde::Deserialize;

/// A node's configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Engine limits applied to every model.
    #[serde(default)]
    pub engine: EngineSection,
    /// How ONNX models (`.onnx` files) are served.
    #[serde(default)]
    pub onnx: OnnxSection,
    /// Cluster membership of `inferno node` (required by that command only).
    #[serde(default)]
    pub node: Option<NodeSection>,
}

/// The `[onnx]` table; absent fields take the defaults.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OnnxSection {
    /// ONNX Runtime's shared library; default: where `inferno pull
    /// onnxruntime` puts it in the models directory (pulled if missing
    /// when a model needs it).
    pub runtime: Option<PathBuf>,
    /// Intra-op threads of each ONNX session (default: the engine's).
    pub threads: Option<usize>,
    /// Most rows one run of a model takes (Triton's `max_batch_size`).
    pub max_batch_size: usize,
    /// Longest a request waits for others to join its batch, in µs.
    pub max_queue_delay_us: u64,
    /// Requests that may wait per model; more are refused (429).
    pub max_queue: usize,
}

impl Default for OnnxSection {
    fn default() -> Self {
        let d = backends::onnx::BatchPolicy::default();
        OnnxSection {
            runtime: None,
            threads: None,
            max_batch_size: d.max_batch_size,
            max_queue_delay_us: u64::try_from(d.max_queue_delay.as_micros()).unwrap_or(u64::MAX),
            max_queue: d.max_queue,
        }
    }
}

impl OnnxSection {
    /// The batching policy, checked to be within sane bounds.
    pub fn batch_policy(&self) -> anyhow::Result<backends::onnx::BatchPolicy> {
        anyhow::ensure!(
            (1..=65_536).contains(&self.max_batch_size),
            "[onnx] max_batch_size must be from 1 to 65536, not {}",
            self.max_batch_size
        );
        anyhow::ensure!(
            self.max_queue_delay_us <= 1_000_000,
            "[onnx] max_queue_delay_us must be at most 1000000 (1 s), not {}",
            self.max_queue_delay_us
        );
        anyhow::ensure!(
            (1..=65_536).contains(&self.max_queue),
            "[onnx] max_queue must be from 1 to 65536, not {}",
            self.max_queue
        );
        Ok(backends::onnx::BatchPolicy {
            max_batch_size: self.max_batch_size,
            max_queue_delay: std::time::Duration::from_micros(self.max_queue_delay_us),
            max_queue: self.max_queue,
        })
    }
}

/// The `[node]` table: how `inferno node` joins a cluster.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Member name in the node's certificate; also its node id. Required.
    pub name: String,
    /// Directory holding `ca.pem`, `NAME.pem` and `NAME-key.pem`.
    #[serde(default = "default_certs_dir")]
    pub certs_dir: PathBuf,
    /// QUIC listen address for inference streams.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Address coordinators dial (host:port); default: the listen address.
    #[serde(default)]
    pub advertise_addr: Option<String>,
    /// Memory announced for models and KV caches, in MiB; default: the
    /// machine's physical memory.
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Cores announced for inference; default: available parallelism.
    #[serde(default)]
    pub cores: Option<u32>,
    /// Interval between heartbeats to each coordinator, in milliseconds.
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// Where model names (not paths) in `models` are pulled to; default:
    /// `INFERNO_MODELS_DIR` or `~/.inferno/models`.
    #[serde(default)]
    pub models_dir: Option<PathBuf>,
    /// The coordinators to send heartbeats to.
    #[serde(default)]
    pub coordinators: Vec<CoordinatorEntry>,
    /// Model files this node can serve when assigned.
    #[serde(default)]
    pub models: Vec<ModelEntry>,
    /// Federated learning: the client index (data shard) this node trains
    /// as; absent, the node takes no part in federated jobs.
    #[serde(default)]
    pub fl_client: Option<u32>,
    /// Where the datasets are (`inferno fl data` puts them there);
    /// default `INFERNO_DATA_DIR` or `~/.inferno/data`.
    #[serde(default)]
    pub fl_data_dir: Option<PathBuf>,
    /// Fault injection for robustness tests: send garbage updates.
    #[serde(default)]
    pub fl_byzantine: bool,
}

/// One `[[node.coordinators]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorEntry {
    /// Member name in the coordinator's certificate.
    pub name: String,
    /// Its QUIC address (`raft_addr` in its configuration), host:port.
    pub addr: String,
}

/// One `[[node.models]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// Model name as registered in the cluster.
    pub name: String,
    /// GGUF or ONNX file, or the name of a model `inferno pull` knows
    /// (pulled if missing).
    pub path: String,
}

fn default_certs_dir() -> PathBuf {
    PathBuf::from("certs")
}

fn default_listen() -> String {
    "127.0.0.1:7200".into()
}

fn default_heartbeat_ms() -> u64 {
    500
}

/// Physical memory from `/proc/meminfo`, in bytes, if it can be read.
pub fn physical_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo_total(&text)
}

fn parse_meminfo_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The `[engine]` table; absent fields take the defaults.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSection {
    /// Sequences decoded together at most.
    pub max_running: usize,
    /// Requests that may wait; more are refused as overloaded.
    pub max_waiting: usize,
    /// Tokens per engine step.
    pub max_step_tokens: usize,
    /// Prompt tokens per step while other sequences decode.
    pub prefill_tokens_while_decoding: usize,
    /// KV cache pool per model, in MiB.
    pub kv_budget_mib: usize,
    /// Compute threads per model (default: all cores).
    pub threads: Option<usize>,
    /// Longest sequence served, prompt plus generated tokens (default: the
    /// KV pool's share per running sequence, at least 2048, at most the
    /// model's context length).
    pub ctx_size: Option<usize>,
}

impl Default for EngineSection {
    fn default() -> Self {
        let d = EngineConfig::default();
        Self {
            max_running: d.max_running,
            max_waiting: d.max_waiting,
            max_step_tokens: d.max_step_tokens,
            prefill_tokens_while_decoding: d.prefill_tokens_while_decoding,
            kv_budget_mib: d.kv_budget_bytes >> 20,
            threads: None,
            ctx_size: None,
        }
    }
}

impl EngineSection {
    /// The engine configuration these settings describe.
    pub fn to_engine_config(&self) -> EngineConfig {
        EngineConfig {
            max_running: self.max_running,
            max_waiting: self.max_waiting,
            max_step_tokens: self.max_step_tokens,
            prefill_tokens_while_decoding: self.prefill_tokens_while_decoding,
            kv_budget_bytes: self.kv_budget_mib.saturating_mul(1 << 20),
            threads: self
                .threads
                .unwrap_or_else(|| EngineConfig::default().threads)
                .max(1),
            ctx_size: self.ctx_size,
        }
    }
}

impl NodeConfig {
    /// Reads a config file, or the defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_node_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/node.toml");
        let cfg = NodeConfig::load(Some(&path)).unwrap();
        assert_eq!(cfg.engine.to_engine_config().kv_budget_bytes, 512 << 20);
    }

    #[test]
    fn shipped_cluster_node_configs_parse() {
        for i in 1..=3 {
            let path =
                Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../configs/node-{i}.toml"));
            let cfg = NodeConfig::load(Some(&path)).unwrap();
            let node = cfg.node.expect("[node] table");
            assert_eq!(node.name, format!("node-{i}"));
            assert_eq!(node.coordinators.len(), 3);
            assert_eq!(node.coordinators[0].addr, "127.0.0.1:7101");
            assert_eq!(node.models.len(), 1);
            assert_eq!(node.heartbeat_ms, 500);
        }
    }

    #[test]
    fn node_table_defaults() {
        let cfg: NodeConfig = toml::from_str("[node]\nname = \"n\"\n").unwrap();
        let n = cfg.node.unwrap();
        assert_eq!(n.certs_dir, PathBuf::from("certs"));
        assert_eq!(n.listen, "127.0.0.1:7200");
        assert_eq!(n.heartbeat_ms, 500);
        assert!(n.coordinators.is_empty() && n.models.is_empty());
        assert!(toml::from_str::<NodeConfig>("[node]\nlisten = \"x\"\n").is_err());
        let err = toml::from_str::<NodeConfig>("[node]\nname = \"n\"\nport = 1\n").unwrap_err();
        assert!(err.to_string().contains("port"), "{err}");
    }

    #[test]
    fn meminfo_total_is_parsed() {
        let text = "MemTotal:       16318480 kB\nMemFree:         1 kB\n";
        assert_eq!(parse_meminfo_total(text), Some(16318480 * 1024));
        assert_eq!(parse_meminfo_total("nothing"), None);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<NodeConfig>("[engine]\nmax_runing = 3\n").unwrap_err();
        assert!(err.to_string().contains("max_runing"), "{err}");
    }
}
