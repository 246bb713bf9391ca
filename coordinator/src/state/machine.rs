//! The replicated cluster state and its deterministic `apply` function.
//!
//! [`ClusterState::apply`] is the only way the state changes. It is a pure
//! function of the current state and the command: no clocks, no randomness,
//! and every collection is a `BTreeMap`/`BTreeSet`, so two coordinators that
//! apply the same log hold byte-identical state (see
//! [`snapshot`](super::snapshot())). A command that fails validation changes
//! nothing except [`applied_index`](ClusterState::applied_index): the entry
//! is committed, so every replica must agree it was consumed.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::audit::AuditLog;
use super::budget::{self, STATE_BUDGET_BYTES};
use super::commands::{
    decode, Command, DecodeError, FlJobStatus, KeyLimits, KeyScope, NodeStatus, Op, PlacementState,
    TenantSettings, COMMAND_VERSION, MAX_REASON_LEN,
};

/// Longest accepted name or id (models, nodes, tenants, jobs), in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// The tenant [`Op::Bootstrap`] creates.
pub const DEFAULT_TENANT: &str = "default";

/// A coordinator (raft member).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinatorInfo {
    /// Member name (the name in its certificate; the TLS server name).
    pub name: String,
    /// Address (host:port) other coordinators reach it at.
    pub addr: String,
}

/// A worker node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Address (host:port) the node is reachable at.
    pub addr: String,
    /// CPU cores available for inference.
    pub cores: u32,
    /// Memory available for models and their KV caches, in bytes.
    pub memory_bytes: u64,
    /// Models this node can serve; empty means any model.
    pub servable_models: BTreeSet<String>,
    /// Whether the node is up.
    pub status: NodeStatus,
}

impl NodeInfo {
    /// Whether this node is allowed to host `model`.
    pub fn can_serve(&self, model: &str) -> bool {
        self.servable_models.is_empty() || self.servable_models.contains(model)
    }
}

/// A registered model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Where nodes fetch the weights from.
    pub source: String,
    /// Weight format, e.g. `gguf`.
    pub format: String,
    /// Size of the weights in bytes.
    pub size_bytes: u64,
    /// How many replicas the cluster should run.
    pub desired_replicas: u32,
    /// Starts at 1; bumped whenever the artifact (source, format or size)
    /// changes on re-registration.
    pub version: u64,
}

/// One replica of a model on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Lifecycle state of the replica.
    pub state: PlacementState,
    /// The model version the replica was (last) asked to load.
    pub model_version: u64,
}

/// One committed round of a federated-learning job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlRound {
    /// Round number (from 1).
    pub round: u64,
    /// Lower-case hex SHA-256 of the aggregated checkpoint.
    pub checkpoint_hash: String,
    /// Aggregated metrics of the round.
    pub metrics: BTreeMap<String, f64>,
}

/// A federated-learning job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlJob {
    /// The tenant that submitted it.
    pub tenant: String,
    /// The job spec as submitted (TOML or JSON text).
    pub spec: String,
    /// Current status.
    pub status: FlJobStatus,
    /// Committed rounds, in order.
    pub rounds: Vec<FlRound>,
    /// Why it failed, once [`FlJobStatus::Failed`].
    pub failure: Option<String>,
    /// The log index it was created at (the oldest finished jobs are
    /// forgotten first).
    pub created_index: u64,
}

impl FlJob {
    /// The number of the last committed round, 0 if none.
    pub fn last_round(&self) -> u64 {
        self.rounds.last().map_or(0, |r| r.round)
    }
}

/// What a successfully applied (or skipped) command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyOutcome {
    /// The index was not above [`ClusterState::applied_index`]; the command
    /// was ignored (replayed entry).
    AlreadyApplied {
        /// The applied index at the time.
        applied_index: u64,
    },
    /// The state changed.
    Applied,
    /// The command was valid but the state already matched it.
    Unchanged,
    /// A model was registered or re-registered.
    ModelRegistered {
        /// The model's version after the command.
        version: u64,
    },
    /// A model was unregistered together with its placements.
    ModelUnregistered {
        /// Nodes whose replica of the model was removed, sorted.
        removed_placements: Vec<String>,
    },
}

/// Why a command was refused. The entry is still consumed: the applied
/// index advances and nothing else changes.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ApplyError {
    /// The command has a format version this code does not understand.
    #[error("unsupported command version {version} (this coordinator understands {supported})")]
    UnsupportedVersion {
        /// Version of the command.
        version: u32,
        /// The version this code understands.
        supported: u32,
    },
    /// The log entry could not be decoded.
    #[error("undecodable log entry: {0}")]
    Undecodable(DecodeError),
    /// A field has an invalid value.
    #[error("invalid {field}: {reason}")]
    InvalidField {
        /// Name of the field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A coordinator with this id already exists.
    #[error("coordinator {0} already exists")]
    CoordinatorExists(u64),
    /// Another coordinator already uses this address.
    #[error("address {addr} is already used by coordinator {id}")]
    CoordinatorAddrInUse {
        /// The address.
        addr: String,
        /// The coordinator using it.
        id: u64,
    },
    /// No coordinator with this id.
    #[error("unknown coordinator {0}")]
    UnknownCoordinator(u64),
    /// The last coordinator cannot be removed.
    #[error("cannot remove the last coordinator {0}")]
    LastCoordinator(u64),
    /// No node with this id.
    #[error("unknown node {0}")]
    UnknownNode(String),
    /// No model with this name.
    #[error("unknown model {0}")]
    UnknownModel(String),
    /// The node does not list the model as servable.
    #[error("node {node} cannot serve model {model}")]
    NodeCannotServe {
        /// Model name.
        model: String,
        /// Node id.
        node: String,
    },
    /// The node is down and cannot take a loading or ready replica.
    #[error("node {0} is down")]
    NodeDown(String),
    /// The node already holds a replica of the model.
    #[error("node {node} already holds a replica of model {model}")]
    DuplicatePlacement {
        /// Model name.
        model: String,
        /// Node id.
        node: String,
    },
    /// The node holds no replica of the model.
    #[error("node {node} holds no replica of model {model}")]
    PlacementNotFound {
        /// Model name.
        model: String,
        /// Node id.
        node: String,
    },
    /// The replica cannot go from its current state to the requested one.
    #[error("replica of {model} on {node} cannot go from {from:?} to {to:?}")]
    InvalidPlacementTransition {
        /// Model name.
        model: String,
        /// Node id.
        node: String,
        /// Current state.
        from: PlacementState,
        /// Requested state.
        to: PlacementState,
    },
    /// A tenant with this name already exists.
    #[error("tenant {0} already exists")]
    TenantExists(String),
    /// No tenant with this name.
    #[error("unknown tenant {0}")]
    UnknownTenant(String),
    /// The key hash is already registered (to this or another tenant).
    #[error("API key already registered")]
    ApiKeyExists,
    /// The tenant has no such key.
    #[error("tenant {0} has no such API key")]
    ApiKeyNotFound(String),
    /// The cluster's first admin key was created already.
    #[error("the cluster was bootstrapped already")]
    AlreadyBootstrapped,
    /// A job with this id already exists.
    #[error("federated-learning job {0} already exists")]
    FlJobExists(String),
    /// No job with this id.
    #[error("unknown federated-learning job {0}")]
    UnknownFlJob(String),
    /// The job is in a terminal status.
    #[error("federated-learning job {job} is finished ({status:?})")]
    FlJobFinished {
        /// Job id.
        job: String,
        /// Its terminal status.
        status: FlJobStatus,
    },
    /// The job status cannot change as requested.
    #[error("federated-learning job {job} cannot go from {from:?} to {to:?}")]
    InvalidFlJobTransition {
        /// Job id.
        job: String,
        /// Current status.
        from: FlJobStatus,
        /// Requested status.
        to: FlJobStatus,
    },
    /// A round was committed while the job was not running or paused.
    #[error("federated-learning job {job} is {status:?}; rounds cannot be committed")]
    FlJobNotRunning {
        /// Job id.
        job: String,
        /// Its status.
        status: FlJobStatus,
    },
    /// The command would grow the state past its budget (see
    /// [`super::budget`]).
    #[error(
        "the cluster state would grow past its budget of {budget} bytes (it holds about {used}); \
         unregister models, revoke keys or let finished federated jobs age out"
    )]
    StateFull {
        /// Bytes held now (estimate).
        used: u64,
        /// The budget.
        budget: u64,
    },
    /// A coordinator and a node may not share a member name (the name in
    /// their certificates).
    #[error("the name {0} is already used by a {1}")]
    NameInUse(String, &'static str),
    /// A per-tenant or per-record count limit was reached.
    #[error("{what}: the limit is {limit}")]
    LimitReached {
        /// What is counted.
        what: String,
        /// The limit.
        limit: usize,
    },
    /// A round was committed out of order.
    #[error("federated-learning job {job} expected round {expected}, got {got}")]
    UnexpectedFlRound {
        /// Job id.
        job: String,
        /// The next round number.
        expected: u64,
        /// The committed round number.
        got: u64,
    },
}

/// Most API keys a cluster holds (keeps the state and its snapshot small).
pub const MAX_API_KEYS: usize = 10_000;

/// An API key as the cluster knows it: never the secret, only its hash
/// (the key of [`ClusterState::api_keys`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    /// Public id.
    pub id: String,
    /// The tenant it belongs to.
    pub tenant: String,
    /// What it may do.
    pub scope: KeyScope,
    /// Unix seconds.
    pub created_at_unix: u64,
    /// Unix seconds after which it is refused; `None`: never.
    pub expires_at_unix: Option<u64>,
    /// Its rate and concurrency limits.
    pub limits: KeyLimits,
}

impl ApiKey {
    /// Whether the key is still valid at `now_unix`.
    pub fn live_at(&self, now_unix: u64) -> bool {
        self.expires_at_unix.is_none_or(|t| now_unix < t)
    }
}

/// A revoked member certificate (the key of
/// [`ClusterState::revoked_certs`] is its fingerprint).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedCert {
    /// The member name in it.
    pub name: String,
    /// When it was revoked, Unix seconds.
    pub revoked_at_unix: u64,
}

/// Most revoked certificates the cluster remembers.
pub const MAX_REVOKED_CERTS: usize = 10_000;

/// The state replicated by raft across coordinators.
///
/// Serializes (serde) to JSON for the admin API and to bincode for
/// snapshots. All maps are ordered, so iteration and serialization are
/// deterministic.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    coordinators: BTreeMap<u64, CoordinatorInfo>,
    nodes: BTreeMap<String, NodeInfo>,
    models: BTreeMap<String, ModelInfo>,
    /// model -> node -> replica.
    placements: BTreeMap<String, BTreeMap<String, Placement>>,
    /// Tenant name -> its limits and class.
    tenants: BTreeMap<String, TenantSettings>,
    /// key hash -> key.
    api_keys: BTreeMap<String, ApiKey>,
    /// Whether [`Op::Bootstrap`] has run.
    bootstrapped: bool,
    fl_jobs: BTreeMap<String, FlJob>,
    /// Certificate fingerprint -> revocation.
    revoked_certs: BTreeMap<String, RevokedCert>,
    audit: AuditLog,
    /// Estimated encoded size of everything above but the audit trail,
    /// kept up to date by every change (see [`super::budget`]).
    approx_bytes: u64,
    applied_index: u64,
}

fn check_name(field: &'static str, value: &str) -> Result<(), ApplyError> {
    if value.is_empty() {
        return Err(ApplyError::InvalidField {
            field,
            reason: "must not be empty".into(),
        });
    }
    if value.len() > MAX_NAME_LEN {
        return Err(ApplyError::InvalidField {
            field,
            reason: format!("longer than {MAX_NAME_LEN} bytes"),
        });
    }
    Ok(())
}

fn check_sha256_hex(field: &'static str, value: &str) -> Result<(), ApplyError> {
    let ok = value.len() == 64
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApplyError::InvalidField {
            field,
            reason: "must be a lower-case hex SHA-256 (64 characters)".into(),
        })
    }
}

impl ClusterState {
    /// An empty state at applied index 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Index of the last log entry consumed (applied or refused).
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Coordinators by raft id.
    pub fn coordinators(&self) -> &BTreeMap<u64, CoordinatorInfo> {
        &self.coordinators
    }

    /// Worker nodes by id.
    pub fn nodes(&self) -> &BTreeMap<String, NodeInfo> {
        &self.nodes
    }

    /// One worker node.
    pub fn node(&self, id: &str) -> Option<&NodeInfo> {
        self.nodes.get(id)
    }

    /// Registered models by name.
    pub fn models(&self) -> &BTreeMap<String, ModelInfo> {
        &self.models
    }

    /// One registered model.
    pub fn model(&self, name: &str) -> Option<&ModelInfo> {
        self.models.get(name)
    }

    /// All replicas: model -> node -> replica.
    pub fn placements(&self) -> &BTreeMap<String, BTreeMap<String, Placement>> {
        &self.placements
    }

    /// Replicas of one model: node -> replica (empty if none).
    pub fn placements_of(&self, model: &str) -> impl Iterator<Item = (&String, &Placement)> {
        self.placements.get(model).into_iter().flatten()
    }

    /// The replica of `model` on `node`, if any.
    pub fn placement(&self, model: &str, node: &str) -> Option<&Placement> {
        self.placements.get(model).and_then(|m| m.get(node))
    }

    /// Replicas hosted by one node: (model, replica), sorted by model.
    pub fn placements_on<'a>(
        &'a self,
        node: &'a str,
    ) -> impl Iterator<Item = (&'a String, &'a Placement)> + 'a {
        self.placements
            .iter()
            .filter_map(move |(model, nodes)| nodes.get(node).map(|p| (model, p)))
    }

    /// Tenants by name, with their limits and class.
    pub fn tenants(&self) -> &BTreeMap<String, TenantSettings> {
        &self.tenants
    }

    /// API keys by the hash of their secret.
    pub fn api_keys(&self) -> &BTreeMap<String, ApiKey> {
        &self.api_keys
    }

    /// The key whose secret has this hash, if any.
    pub fn api_key(&self, key_hash: &str) -> Option<&ApiKey> {
        self.api_keys.get(key_hash)
    }

    /// The tenant owning the API key with this hash, if any.
    pub fn tenant_for_key(&self, key_hash: &str) -> Option<&str> {
        self.api_keys.get(key_hash).map(|k| k.tenant.as_str())
    }

    /// The hash and key with public id `id`, if any.
    pub fn api_key_by_id(&self, id: &str) -> Option<(&String, &ApiKey)> {
        self.api_keys.iter().find(|(_, k)| k.id == id)
    }

    /// Whether the cluster's first admin key has been created.
    pub fn bootstrapped(&self) -> bool {
        self.bootstrapped
    }

    /// Key hashes of one tenant, sorted.
    pub fn keys_of<'a>(&'a self, tenant: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        self.api_keys
            .iter()
            .filter(move |(_, k)| k.tenant == tenant)
            .map(|(h, _)| h)
    }

    fn insert_key(&mut self, key_hash: &str, key: ApiKey) -> Result<(), ApplyError> {
        check_sha256_hex("key_hash", key_hash)?;
        check_name("key id", &key.id)?;
        if self.api_keys.contains_key(key_hash) || self.api_key_by_id(&key.id).is_some() {
            return Err(ApplyError::ApiKeyExists);
        }
        if self.api_keys.len() >= MAX_API_KEYS {
            return Err(ApplyError::InvalidField {
                field: "api keys",
                reason: format!("the cluster holds the most keys allowed, {MAX_API_KEYS}"),
            });
        }
        if self.keys_of(&key.tenant).count() >= budget::MAX_KEYS_PER_TENANT {
            return Err(ApplyError::LimitReached {
                what: format!("keys of tenant {}", key.tenant),
                limit: budget::MAX_KEYS_PER_TENANT,
            });
        }
        let add = budget::key_bytes(key_hash, &key);
        self.reserve(add, 0)?;
        self.api_keys.insert(key_hash.to_string(), key);
        Ok(())
    }

    /// Federated-learning jobs by id.
    pub fn fl_jobs(&self) -> &BTreeMap<String, FlJob> {
        &self.fl_jobs
    }

    /// One federated-learning job.
    pub fn fl_job(&self, id: &str) -> Option<&FlJob> {
        self.fl_jobs.get(id)
    }

    /// Revoked certificates by fingerprint.
    pub fn revoked_certs(&self) -> &BTreeMap<String, RevokedCert> {
        &self.revoked_certs
    }

    /// Whether the certificate with this fingerprint is revoked.
    pub fn is_revoked(&self, fingerprint: &str) -> bool {
        self.revoked_certs.contains_key(fingerprint)
    }

    /// The audit trail.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// Estimated encoded size of the state outside the audit trail, bytes.
    pub fn approx_bytes(&self) -> u64 {
        self.approx_bytes
    }

    /// Refuses a change that adds `add` bytes and frees `sub` if it would
    /// take a growing state past the budget.
    fn check_room(&self, add: u64, sub: u64) -> Result<(), ApplyError> {
        let after = self.approx_bytes.saturating_sub(sub).saturating_add(add);
        if add > sub && after > STATE_BUDGET_BYTES {
            return Err(ApplyError::StateFull {
                used: self.approx_bytes,
                budget: STATE_BUDGET_BYTES,
            });
        }
        Ok(())
    }

    /// [`check_room`](Self::check_room), then
    /// [`account`](Self::account): for a change made right after.
    fn reserve(&mut self, add: u64, sub: u64) -> Result<(), ApplyError> {
        self.check_room(add, sub)?;
        self.account(add, sub);
        Ok(())
    }

    /// Records a change of `add` bytes added and `sub` freed.
    fn account(&mut self, add: u64, sub: u64) {
        self.approx_bytes = self.approx_bytes.saturating_sub(sub).saturating_add(add);
    }

    /// Decodes and applies a raw log entry. An undecodable entry (including
    /// one of an unknown version) is consumed as a failed no-op.
    pub fn apply_entry(&mut self, index: u64, bytes: &[u8]) -> Result<ApplyOutcome, ApplyError> {
        if index <= self.applied_index {
            return Ok(ApplyOutcome::AlreadyApplied {
                applied_index: self.applied_index,
            });
        }
        match decode(bytes) {
            Ok(cmd) => self.apply(index, &cmd),
            Err(e) => {
                self.applied_index = index;
                Err(match e {
                    DecodeError::UnsupportedVersion { version, supported } => {
                        ApplyError::UnsupportedVersion { version, supported }
                    }
                    other => ApplyError::Undecodable(other),
                })
            }
        }
    }

    /// Applies the command at log `index`.
    ///
    /// An `index` not above [`applied_index`](Self::applied_index) is
    /// ignored ([`ApplyOutcome::AlreadyApplied`]). Otherwise the applied
    /// index becomes `index` whether or not the command is valid; an invalid
    /// command returns an [`ApplyError`] and changes nothing else.
    pub fn apply(&mut self, index: u64, cmd: &Command) -> Result<ApplyOutcome, ApplyError> {
        if index <= self.applied_index {
            return Ok(ApplyOutcome::AlreadyApplied {
                applied_index: self.applied_index,
            });
        }
        self.applied_index = index;
        if cmd.version != COMMAND_VERSION {
            return Err(ApplyError::UnsupportedVersion {
                version: cmd.version,
                supported: COMMAND_VERSION,
            });
        }
        self.apply_op(&cmd.op)
    }

    /// Validates then applies one op. Every check happens before the first
    /// mutation, so a refused op leaves the state untouched.
    fn apply_op(&mut self, op: &Op) -> Result<ApplyOutcome, ApplyError> {
        match op {
            Op::AddCoordinator { id, name, addr } => {
                check_name("name", name)?;
                check_name("addr", addr)?;
                if self.coordinators.contains_key(id) {
                    return Err(ApplyError::CoordinatorExists(*id));
                }
                if self.nodes.contains_key(name) {
                    return Err(ApplyError::NameInUse(name.clone(), "node"));
                }
                if let Some((other, _)) = self.coordinators.iter().find(|(_, c)| &c.addr == addr) {
                    return Err(ApplyError::CoordinatorAddrInUse {
                        addr: addr.clone(),
                        id: *other,
                    });
                }
                let info = CoordinatorInfo {
                    name: name.clone(),
                    addr: addr.clone(),
                };
                let add = budget::coordinator_bytes(&info);
                self.reserve(add, 0)?;
                self.coordinators.insert(*id, info);
                Ok(ApplyOutcome::Applied)
            }
            Op::RemoveCoordinator { id } => {
                if !self.coordinators.contains_key(id) {
                    return Err(ApplyError::UnknownCoordinator(*id));
                }
                if self.coordinators.len() == 1 {
                    return Err(ApplyError::LastCoordinator(*id));
                }
                if let Some(old) = self.coordinators.remove(id) {
                    self.account(0, budget::coordinator_bytes(&old));
                }
                Ok(ApplyOutcome::Applied)
            }
            Op::RegisterNode {
                id,
                addr,
                cores,
                memory_bytes,
                servable_models,
            } => {
                check_name("node id", id)?;
                check_name("addr", addr)?;
                if *cores == 0 {
                    return Err(ApplyError::InvalidField {
                        field: "cores",
                        reason: "must be at least 1".into(),
                    });
                }
                if *memory_bytes == 0 {
                    return Err(ApplyError::InvalidField {
                        field: "memory_bytes",
                        reason: "must be positive".into(),
                    });
                }
                for m in servable_models {
                    check_name("servable model", m)?;
                }
                if self.coordinators.values().any(|c| c.name == *id) {
                    return Err(ApplyError::NameInUse(id.clone(), "coordinator"));
                }
                let info = NodeInfo {
                    addr: addr.clone(),
                    cores: *cores,
                    memory_bytes: *memory_bytes,
                    servable_models: servable_models.iter().cloned().collect(),
                    status: NodeStatus::Up,
                };
                let add = budget::node_bytes(id, &info);
                let sub = self
                    .nodes
                    .get(id)
                    .map_or(0, |old| budget::node_bytes(id, old));
                self.reserve(add, sub)?;
                match self.nodes.insert(id.clone(), info.clone()) {
                    Some(old) if old == info => Ok(ApplyOutcome::Unchanged),
                    _ => Ok(ApplyOutcome::Applied),
                }
            }
            Op::SetNodeStatus { id, status } => {
                let node = self
                    .nodes
                    .get_mut(id)
                    .ok_or_else(|| ApplyError::UnknownNode(id.clone()))?;
                if node.status == *status {
                    return Ok(ApplyOutcome::Unchanged);
                }
                node.status = *status;
                Ok(ApplyOutcome::Applied)
            }
            Op::RegisterModel {
                name,
                source,
                format,
                size_bytes,
                desired_replicas,
            } => {
                check_name("model name", name)?;
                check_name("source", source)?;
                check_name("format", format)?;
                if *size_bytes == 0 {
                    return Err(ApplyError::InvalidField {
                        field: "size_bytes",
                        reason: "must be positive".into(),
                    });
                }
                let version = match self.models.get(name) {
                    None => 1,
                    Some(old) => {
                        let same_artifact = old.source == *source
                            && old.format == *format
                            && old.size_bytes == *size_bytes;
                        if same_artifact && old.desired_replicas == *desired_replicas {
                            return Ok(ApplyOutcome::Unchanged);
                        }
                        if same_artifact {
                            old.version
                        } else {
                            old.version.saturating_add(1)
                        }
                    }
                };
                let info = ModelInfo {
                    source: source.clone(),
                    format: format.clone(),
                    size_bytes: *size_bytes,
                    desired_replicas: *desired_replicas,
                    version,
                };
                let add = budget::model_bytes(name, &info);
                let sub = self
                    .models
                    .get(name)
                    .map_or(0, |old| budget::model_bytes(name, old));
                self.reserve(add, sub)?;
                self.models.insert(name.clone(), info);
                Ok(ApplyOutcome::ModelRegistered { version })
            }
            Op::UnregisterModel { name } => {
                let Some(old) = self.models.remove(name) else {
                    return Err(ApplyError::UnknownModel(name.clone()));
                };
                self.account(0, budget::model_bytes(name, &old));
                let removed_placements: Vec<String> = self
                    .placements
                    .remove(name)
                    .map(|nodes| nodes.into_keys().collect())
                    .unwrap_or_default();
                let freed: u64 = removed_placements
                    .iter()
                    .map(|n| budget::placement_bytes(name, n))
                    .sum();
                self.account(0, freed);
                Ok(ApplyOutcome::ModelUnregistered { removed_placements })
            }
            Op::ScaleModel {
                name,
                desired_replicas,
            } => {
                let model = self
                    .models
                    .get_mut(name)
                    .ok_or_else(|| ApplyError::UnknownModel(name.clone()))?;
                if model.desired_replicas == *desired_replicas {
                    return Ok(ApplyOutcome::Unchanged);
                }
                model.desired_replicas = *desired_replicas;
                Ok(ApplyOutcome::Applied)
            }
            Op::SetPlacement { model, node, state } => self.set_placement(model, node, *state),
            Op::RemovePlacement { model, node } => {
                let not_found = || ApplyError::PlacementNotFound {
                    model: model.clone(),
                    node: node.clone(),
                };
                let nodes = self.placements.get_mut(model).ok_or_else(not_found)?;
                nodes.remove(node).ok_or_else(not_found)?;
                if nodes.is_empty() {
                    self.placements.remove(model);
                }
                self.account(0, budget::placement_bytes(model, node));
                Ok(ApplyOutcome::Applied)
            }
            Op::CreateTenant { name } => {
                check_name("tenant name", name)?;
                if self.tenants.contains_key(name) {
                    return Err(ApplyError::TenantExists(name.clone()));
                }
                let add = budget::tenant_bytes(name);
                self.reserve(add, 0)?;
                self.tenants.insert(name.clone(), TenantSettings::default());
                Ok(ApplyOutcome::Applied)
            }
            Op::SetTenant { name, settings } => {
                check_name("tenant name", name)?;
                if !self.tenants.contains_key(name) {
                    self.reserve(budget::tenant_bytes(name), 0)?;
                }
                self.tenants.insert(name.clone(), *settings);
                Ok(ApplyOutcome::Applied)
            }
            Op::AddApiKey {
                tenant,
                key_hash,
                id,
                scope,
                created_at_unix,
                expires_at_unix,
                limits,
            } => {
                if !self.tenants.contains_key(tenant) {
                    return Err(ApplyError::UnknownTenant(tenant.clone()));
                }
                let key = ApiKey {
                    id: id.clone(),
                    tenant: tenant.clone(),
                    scope: *scope,
                    created_at_unix: *created_at_unix,
                    expires_at_unix: *expires_at_unix,
                    limits: *limits,
                };
                self.insert_key(key_hash, key)?;
                Ok(ApplyOutcome::Applied)
            }
            Op::Bootstrap {
                key_hash,
                id,
                created_at_unix,
            } => {
                if self.bootstrapped {
                    return Err(ApplyError::AlreadyBootstrapped);
                }
                let key = ApiKey {
                    id: id.clone(),
                    tenant: DEFAULT_TENANT.into(),
                    scope: KeyScope::Admin,
                    created_at_unix: *created_at_unix,
                    expires_at_unix: None,
                    limits: KeyLimits::default(),
                };
                self.insert_key(key_hash, key)?;
                if !self.tenants.contains_key(DEFAULT_TENANT) {
                    self.tenants
                        .insert(DEFAULT_TENANT.into(), TenantSettings::default());
                    self.account(budget::tenant_bytes(DEFAULT_TENANT), 0);
                }
                self.bootstrapped = true;
                Ok(ApplyOutcome::Applied)
            }
            Op::RevokeApiKey { tenant, key_hash } => {
                if !self.tenants.contains_key(tenant) {
                    return Err(ApplyError::UnknownTenant(tenant.clone()));
                }
                if self.tenant_for_key(key_hash) != Some(tenant.as_str()) {
                    return Err(ApplyError::ApiKeyNotFound(tenant.clone()));
                }
                if let Some(old) = self.api_keys.remove(key_hash) {
                    self.account(0, budget::key_bytes(key_hash, &old));
                }
                Ok(ApplyOutcome::Applied)
            }
            Op::CreateFlJob { id, tenant, spec } => {
                check_name("job id", id)?;
                check_name("tenant", tenant)?;
                if spec.trim().is_empty() {
                    return Err(ApplyError::InvalidField {
                        field: "spec",
                        reason: "must not be empty".into(),
                    });
                }
                if spec.len() > budget::MAX_FL_SPEC_BYTES {
                    return Err(ApplyError::InvalidField {
                        field: "spec",
                        reason: format!("longer than {} bytes", budget::MAX_FL_SPEC_BYTES),
                    });
                }
                if self.fl_jobs.contains_key(id) {
                    return Err(ApplyError::FlJobExists(id.clone()));
                }
                let active = self
                    .fl_jobs
                    .values()
                    .filter(|j| j.tenant == *tenant && !j.status.is_terminal())
                    .count();
                if active >= budget::MAX_ACTIVE_FL_JOBS_PER_TENANT {
                    return Err(ApplyError::LimitReached {
                        what: format!("unfinished federated jobs of tenant {tenant}"),
                        limit: budget::MAX_ACTIVE_FL_JOBS_PER_TENANT,
                    });
                }
                let job = FlJob {
                    tenant: tenant.clone(),
                    spec: spec.clone(),
                    status: FlJobStatus::Pending,
                    rounds: Vec::new(),
                    failure: None,
                    created_index: self.applied_index,
                };
                let add = budget::job_bytes(id, &job);
                // Finished jobs make room, oldest first, past the job count
                // or the byte budget.
                let mut finished: Vec<(u64, &String, u64)> = self
                    .fl_jobs
                    .iter()
                    .filter(|(_, j)| j.status.is_terminal())
                    .map(|(k, j)| (j.created_index, k, budget::job_bytes(k, j)))
                    .collect();
                finished.sort_unstable();
                let (mut count, mut freed) = (self.fl_jobs.len(), 0u64);
                let mut evict = Vec::new();
                for (_, k, bytes) in finished {
                    let over_count = count >= budget::MAX_FL_JOBS;
                    let over_bytes = self.check_room(add, freed).is_err();
                    if !(over_count || over_bytes) {
                        break;
                    }
                    evict.push(k.clone());
                    count -= 1;
                    freed += bytes;
                }
                if count >= budget::MAX_FL_JOBS {
                    return Err(ApplyError::LimitReached {
                        what: "unfinished federated jobs".into(),
                        limit: budget::MAX_FL_JOBS,
                    });
                }
                self.check_room(add, freed)?;
                for k in &evict {
                    self.fl_jobs.remove(k);
                }
                self.account(add, freed);
                self.fl_jobs.insert(id.clone(), job);
                Ok(ApplyOutcome::Applied)
            }
            Op::FlRoundCommitted {
                job,
                round,
                checkpoint_hash,
                metrics,
            } => {
                check_sha256_hex("checkpoint_hash", checkpoint_hash)?;
                budget::check_metrics(metrics.keys()).map_err(|reason| {
                    ApplyError::InvalidField {
                        field: "metrics",
                        reason,
                    }
                })?;
                if let Some((name, _)) = metrics.iter().find(|(_, v)| !v.is_finite()) {
                    return Err(ApplyError::InvalidField {
                        field: "metrics",
                        reason: format!("{name} is not a finite number"),
                    });
                }
                let new_round = FlRound {
                    round: *round,
                    checkpoint_hash: checkpoint_hash.clone(),
                    metrics: metrics.clone(),
                };
                let add = budget::round_bytes(&new_round);
                self.check_room(add, 0)?;
                let fl = self
                    .fl_jobs
                    .get_mut(job)
                    .ok_or_else(|| ApplyError::UnknownFlJob(job.clone()))?;
                if fl.status.is_terminal() {
                    return Err(ApplyError::FlJobFinished {
                        job: job.clone(),
                        status: fl.status,
                    });
                }
                if !matches!(fl.status, FlJobStatus::Running | FlJobStatus::Paused) {
                    return Err(ApplyError::FlJobNotRunning {
                        job: job.clone(),
                        status: fl.status,
                    });
                }
                let expected = fl.last_round().saturating_add(1);
                if *round != expected {
                    return Err(ApplyError::UnexpectedFlRound {
                        job: job.clone(),
                        expected,
                        got: *round,
                    });
                }
                fl.rounds.push(new_round);
                self.account(add, 0);
                Ok(ApplyOutcome::Applied)
            }
            Op::SetFlJobStatus {
                job,
                status,
                reason,
            } => {
                if reason.as_ref().is_some_and(|r| r.len() > MAX_REASON_LEN) {
                    return Err(ApplyError::InvalidField {
                        field: "reason",
                        reason: format!("longer than {MAX_REASON_LEN} bytes"),
                    });
                }
                let fl = self
                    .fl_jobs
                    .get_mut(job)
                    .ok_or_else(|| ApplyError::UnknownFlJob(job.clone()))?;
                if fl.status == *status {
                    return Ok(ApplyOutcome::Unchanged);
                }
                if fl.status.is_terminal() {
                    return Err(ApplyError::FlJobFinished {
                        job: job.clone(),
                        status: fl.status,
                    });
                }
                if !fl.status.can_become(*status) {
                    return Err(ApplyError::InvalidFlJobTransition {
                        job: job.clone(),
                        from: fl.status,
                        to: *status,
                    });
                }
                fl.status = *status;
                if *status == FlJobStatus::Failed {
                    fl.failure = reason.clone();
                    // At most MAX_REASON_LEN: within the margin the budget
                    // leaves below the snapshot frame.
                    self.account(budget::reason_bytes(reason.as_deref()), 0);
                }
                Ok(ApplyOutcome::Applied)
            }
            Op::RevokeCert {
                fingerprint,
                name,
                revoked_at_unix,
            } => {
                check_sha256_hex("fingerprint", fingerprint)?;
                check_name("name", name)?;
                if self.revoked_certs.contains_key(fingerprint) {
                    return Ok(ApplyOutcome::Unchanged);
                }
                if self.revoked_certs.len() >= MAX_REVOKED_CERTS {
                    return Err(ApplyError::LimitReached {
                        what: "revoked certificates".into(),
                        limit: MAX_REVOKED_CERTS,
                    });
                }
                let add = budget::revoked_bytes(fingerprint, name);
                self.reserve(add, 0)?;
                self.revoked_certs.insert(
                    fingerprint.clone(),
                    RevokedCert {
                        name: name.clone(),
                        revoked_at_unix: *revoked_at_unix,
                    },
                );
                if let Some(node) = self.nodes.get_mut(name) {
                    node.status = NodeStatus::Down;
                }
                Ok(ApplyOutcome::Applied)
            }
            Op::RecordAudit {
                records,
                retention,
                now_unix,
            } => {
                self.audit.append(records, *retention, *now_unix)?;
                Ok(ApplyOutcome::Applied)
            }
        }
    }

    fn set_placement(
        &mut self,
        model: &str,
        node: &str,
        state: PlacementState,
    ) -> Result<ApplyOutcome, ApplyError> {
        use PlacementState::*;
        let version = self
            .models
            .get(model)
            .ok_or_else(|| ApplyError::UnknownModel(model.to_string()))?
            .version;
        let info = self
            .nodes
            .get(node)
            .ok_or_else(|| ApplyError::UnknownNode(node.to_string()))?;
        if !info.can_serve(model) {
            return Err(ApplyError::NodeCannotServe {
                model: model.to_string(),
                node: node.to_string(),
            });
        }
        if info.status == NodeStatus::Down && state != Failed {
            return Err(ApplyError::NodeDown(node.to_string()));
        }
        let existing = self.placement(model, node).copied();
        let model_version = match (existing.map(|p| p.state), state) {
            // A new replica, or a retry in place of a failed one.
            (None | Some(Failed), Loading) => version,
            (Some(Loading | Ready), Loading) => {
                return Err(ApplyError::DuplicatePlacement {
                    model: model.to_string(),
                    node: node.to_string(),
                })
            }
            (None, Ready | Failed) => {
                return Err(ApplyError::PlacementNotFound {
                    model: model.to_string(),
                    node: node.to_string(),
                })
            }
            (Some(Ready), Ready) | (Some(Failed), Failed) => return Ok(ApplyOutcome::Unchanged),
            (Some(Failed), Ready) => {
                return Err(ApplyError::InvalidPlacementTransition {
                    model: model.to_string(),
                    node: node.to_string(),
                    from: Failed,
                    to: Ready,
                })
            }
            (Some(Loading), Ready | Failed) | (Some(Ready), Failed) => {
                existing.map_or(version, |p| p.model_version)
            }
        };
        let add = if existing.is_none() {
            budget::placement_bytes(model, node)
        } else {
            0
        };
        self.reserve(add, 0)?;
        self.placements
            .entry(model.to_string())
            .or_default()
            .insert(
                node.to_string(),
                Placement {
                    state,
                    model_version,
                },
            );
        Ok(ApplyOutcome::Applied)
    }
}
