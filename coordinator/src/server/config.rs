//! The coordinator process configuration (TOML; see
//! `configs/coordinator-1.toml`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::ServerError;
use crate::auth::AuthMode;
use crate::state::audit::{AuditRetention, MAX_AUDIT_ENTRIES};

/// One other coordinator of the raft group.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Its raft id (non-zero, unique).
    pub id: u64,
    /// The QUIC address its raft listener is reachable at.
    pub raft_addr: SocketAddr,
    /// The member name in its certificate (TLS server name).
    pub name: String,
}

/// The coordinator configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// This coordinator's raft id (non-zero, unique in the group).
    pub id: u64,
    /// Directory of the durable raft log and snapshots.
    pub data_dir: PathBuf,
    /// QUIC listen address for raft messages and forwarded writes.
    pub raft_addr: SocketAddr,
    /// HTTP listen address of the admin API.
    pub http_addr: SocketAddr,
    /// Directory holding `ca.pem`, `NAME.pem` and `NAME-key.pem`.
    pub certs_dir: PathBuf,
    /// This coordinator's member name (its certificate's name).
    pub name: String,
    /// The other coordinators (not including this one).
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
    /// Start as a new member of a running group: wait to be added (admin
    /// call `POST /admin/v1/members`) instead of bootstrapping a group with
    /// `peers`. Ignored once the data directory holds raft state.
    #[serde(default)]
    pub join: bool,
    /// Raft tick interval in milliseconds.
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u64,
    /// Election timeout in ticks.
    #[serde(default = "default_election_ticks")]
    pub election_ticks: usize,
    /// Leader heartbeat interval in ticks.
    #[serde(default = "default_heartbeat_ticks")]
    pub heartbeat_ticks: usize,
    /// How long a client write or read may wait (commit, apply, forward)
    /// before failing with 503, in milliseconds.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// A worker node silent for this long (milliseconds) is marked down
    /// and its replicas are placed elsewhere.
    #[serde(default = "default_node_down_after_ms")]
    pub node_down_after_ms: u64,
    /// KV-cache memory the placement planner reserves per replica on top
    /// of the weights, in MiB (match the nodes' `[engine] kv_budget_mib`).
    #[serde(default = "default_kv_budget_mib")]
    pub kv_budget_mib: u64,
    /// Inference requests this coordinator routes at once; more get 429.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Route each request to the replica whose KV cache already holds its
    /// prompt's prefix (weighed against load); `false`: power of two
    /// choices over outstanding requests only.
    #[serde(default = "default_cache_aware_routing")]
    pub cache_aware_routing: bool,
    /// Where the datasets are (`inferno fl data`), for the central
    /// evaluation of federated jobs on their test sets; without it, jobs
    /// report only the nodes' own evaluation.
    #[serde(default)]
    pub fl_data_dir: Option<PathBuf>,
    /// `on` (the default): every HTTP route but `/health` needs an API key;
    /// `off`: none does (local experiments only; warned at every start).
    #[serde(default)]
    pub auth: AuthMode,
    /// Serve `/metrics` without a key (for a scraper on a trusted network).
    #[serde(default)]
    pub metrics_public: bool,
    /// Serve the admin API (`/admin/*`) on its own listener at this
    /// address (e.g. `127.0.0.1:9080`, reachable only from this machine)
    /// and no longer on `http_addr`, which then serves the inference API
    /// only. Unset: both on `http_addr`. Keys are checked on both.
    #[serde(default)]
    pub admin_http: Option<SocketAddr>,
    /// Create the cluster's first admin key (tenant `default`) from
    /// `admin_key_file`, making that file with a new key if it is missing.
    /// Set on one coordinator of a new cluster; the key is created once in
    /// the cluster's life (later attempts are refused by the state).
    #[serde(default)]
    pub bootstrap: bool,
    /// Where the bootstrap admin key is (default `DATA_DIR/admin.key`).
    #[serde(default)]
    pub admin_key_file: Option<PathBuf>,
    /// The audit trail: aggregation window and retention.
    #[serde(default)]
    pub audit: AuditConfig,
}

/// The `[audit]` section.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Authentication failures and quota rejections are counted per
    /// source over windows of this many seconds (1 to 3600), one record
    /// per source and window.
    #[serde(default = "default_audit_window_secs")]
    pub window_secs: u64,
    /// Most entries kept (1 to 10,000); older ones are dropped, leaving a
    /// checkpoint the rest still verifies from.
    #[serde(default = "default_audit_max_entries")]
    pub max_entries: u32,
    /// Entries older than this many days are dropped (0: kept until
    /// `max_entries` pushes them out).
    #[serde(default = "default_audit_max_age_days")]
    pub max_age_days: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            window_secs: default_audit_window_secs(),
            max_entries: default_audit_max_entries(),
            max_age_days: default_audit_max_age_days(),
        }
    }
}

impl AuditConfig {
    /// The retention every audit batch this coordinator proposes carries.
    pub fn retention(&self) -> AuditRetention {
        AuditRetention {
            max_entries: self.max_entries,
            max_age_secs: (self.max_age_days > 0).then(|| self.max_age_days.saturating_mul(86_400)),
        }
    }
}

fn default_audit_window_secs() -> u64 {
    60
}
fn default_audit_max_entries() -> u32 {
    AuditRetention::default().max_entries
}
fn default_audit_max_age_days() -> u64 {
    30
}

fn default_node_down_after_ms() -> u64 {
    3000
}
fn default_kv_budget_mib() -> u64 {
    512
}
fn default_max_in_flight() -> usize {
    256
}
fn default_cache_aware_routing() -> bool {
    true
}

fn default_tick_ms() -> u64 {
    100
}
fn default_election_ticks() -> usize {
    10
}
fn default_heartbeat_ticks() -> usize {
    2
}
fn default_request_timeout_ms() -> u64 {
    5000
}

impl CoordinatorConfig {
    /// The bootstrap admin key file.
    pub fn admin_key_path(&self) -> PathBuf {
        self.admin_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("admin.key"))
    }

    /// Reads and validates a TOML configuration file.
    pub fn load(path: &Path) -> Result<Self, ServerError> {
        let text = std::fs::read_to_string(path).map_err(|e| ServerError::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::parse(&text).map_err(|reason| ServerError::Config {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Parses and validates TOML text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let cfg: CoordinatorConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), String> {
        if self.id == 0 {
            return Err("id must be non-zero".into());
        }
        let mut ids = vec![self.id];
        for p in &self.peers {
            if p.id == 0 || ids.contains(&p.id) {
                return Err(format!("peer id {} is zero or duplicated", p.id));
            }
            ids.push(p.id);
        }
        if self.tick_ms == 0
            || self.election_ticks <= self.heartbeat_ticks
            || self.heartbeat_ticks == 0
        {
            return Err("need tick_ms > 0 and election_ticks > heartbeat_ticks > 0".into());
        }
        if self.request_timeout_ms == 0 {
            return Err("request_timeout_ms must be non-zero".into());
        }
        if self.node_down_after_ms == 0 || self.max_in_flight == 0 {
            return Err("node_down_after_ms and max_in_flight must be non-zero".into());
        }
        if !(1..=3600).contains(&self.audit.window_secs) {
            return Err("audit.window_secs must be 1 to 3600".into());
        }
        if !(1..=MAX_AUDIT_ENTRIES).contains(&self.audit.max_entries) {
            return Err(format!(
                "audit.max_entries must be 1 to {MAX_AUDIT_ENTRIES}"
            ));
        }
        Ok(())
    }

    /// All voter ids (this node and its peers), sorted.
    pub fn voters(&self) -> Vec<u64> {
        let mut v: Vec<u64> = std::iter::once(self.id)
            .chain(self.peers.iter().map(|p| p.id))
            .collect();
        v.sort_unstable();
        v
    }

    /// The tick interval.
    pub fn tick_interval(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }

    /// How long a silent node stays up.
    pub fn node_down_after(&self) -> Duration {
        Duration::from_millis(self.node_down_after_ms)
    }

    /// The client request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
id = 2
data_dir = "data"
raft_addr = "127.0.0.1:7102"
http_addr = "127.0.0.1:8102"
certs_dir = "certs"
name = "coordinator-2"
[[peers]]
id = 1
raft_addr = "127.0.0.1:7101"
name = "coordinator-1"
"#;

    #[test]
    fn parses_with_defaults() {
        let cfg = CoordinatorConfig::parse(BASE).unwrap();
        assert_eq!(cfg.voters(), vec![1, 2]);
        assert_eq!(cfg.tick_interval(), Duration::from_millis(100));
        assert_eq!(cfg.election_ticks, 10);
        assert_eq!(cfg.heartbeat_ticks, 2);
        assert_eq!(cfg.request_timeout(), Duration::from_secs(5));
        assert_eq!(cfg.audit.window_secs, 60);
        assert_eq!(cfg.audit.retention(), AuditRetention::default());
    }

    #[test]
    fn rejects_bad_configs() {
        assert!(CoordinatorConfig::parse(&BASE.replace("id = 2", "id = 1")).is_err());
        assert!(CoordinatorConfig::parse(&BASE.replace("id = 2", "id = 0")).is_err());
        let bad_ticks = format!("heartbeat_ticks = 10\n{BASE}");
        assert!(CoordinatorConfig::parse(&bad_ticks).is_err());
        let unknown = format!("bogus = 1\n{BASE}");
        assert!(CoordinatorConfig::parse(&unknown).is_err());
        let huge_audit = format!("{BASE}[audit]\nmax_entries = 1000000\n");
        assert!(CoordinatorConfig::parse(&huge_audit).is_err());
        let no_window = format!("{BASE}[audit]\nwindow_secs = 0\n");
        assert!(CoordinatorConfig::parse(&no_window).is_err());
    }

    #[test]
    fn example_configs_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
        for i in 1..=3 {
            let path = root.join(format!("coordinator-{i}.toml"));
            let cfg = CoordinatorConfig::load(&path).unwrap();
            assert_eq!(cfg.id, i);
            assert_eq!(cfg.peers.len(), 2);
        }
    }
}
