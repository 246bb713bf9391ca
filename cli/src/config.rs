//! The node configuration file (`configs/node.toml`).

use std::path::Path;

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
    /// KV cache budget per model, in MiB.
    pub kv_budget_mib: usize,
    /// Compute threads per model (default: all cores).
    pub threads: Option<usize>,
}

impl Default for EngineSection {
    fn default() -> Self {
        let d = EngineConfig::default();
        Self {
            max_running: d.max_running,
            max_waiting: d.max_waiting,
            max_step_tokens: d.max_step_tokens,
            kv_budget_mib: d.kv_budget_bytes >> 20,
            threads: None,
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
            kv_budget_bytes: self.kv_budget_mib.saturating_mul(1 << 20),
            threads: self
                .threads
                .unwrap_or_else(|| EngineConfig::default().threads)
                .max(1),
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
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<NodeConfig>("[engine]\nmax_runing = 3\n").unwrap_err();
        assert!(err.to_string().contains("max_runing"), "{err}");
    }
}
