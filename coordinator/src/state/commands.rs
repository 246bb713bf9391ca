//! Commands: the entries of the replicated log.
//!
//! Every change to the cluster state is a [`Command`] proposed to raft by
//! the leader and applied, in log order, by every coordinator's
//! [`ClusterState`](super::ClusterState). Commands carry a format
//! [`version`](Command::version) so that a coordinator running older code
//! refuses (deterministically, as a failed no-op) an entry it does not
//! understand instead of misreading it.
//!
//! The wire format is bincode 2 (standard configuration, varint integers)
//! with a hard size limit of [`MAX_COMMAND_BYTES`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::audit::{AuditRecord, AuditRetention};

/// The command format version this code writes and understands.
pub const COMMAND_VERSION: u32 = 5;

/// Largest encoded command accepted by [`encode`] and [`decode`] (1 MiB).
pub const MAX_COMMAND_BYTES: usize = 1 << 20;

/// One entry of the replicated log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Format version of this command; see [`COMMAND_VERSION`].
    pub version: u32,
    /// The change to apply.
    pub op: Op,
}

impl Command {
    /// Wraps `op` in a command of the current [`COMMAND_VERSION`].
    pub fn new(op: Op) -> Self {
        Self {
            version: COMMAND_VERSION,
            op,
        }
    }
}

impl From<Op> for Command {
    fn from(op: Op) -> Self {
        Self::new(op)
    }
}

/// Whether a worker node is reachable and may host replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum NodeStatus {
    /// The node is alive and may host replicas.
    Up,
    /// The node is unreachable; its replicas must be re-placed elsewhere.
    Down,
}

/// The limits of an API key, each `None` when unlimited. They hold for the
/// whole cluster: each coordinator enforces its share (see
/// `crate::quota`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyLimits {
    /// Requests per minute.
    pub rpm: Option<u32>,
    /// Tokens (prompt + completion) per minute.
    pub tpm: Option<u32>,
    /// Requests in flight at once.
    pub max_concurrent: Option<u32>,
}

impl KeyLimits {
    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.rpm.is_some() || self.tpm.is_some() || self.max_concurrent.is_some()
    }
}

/// A tenant's own limits, shared by all of its keys (each key may have
/// tighter ones), and its scheduling class at the nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantSettings {
    /// Requests, tokens per minute and requests in flight for the whole
    /// tenant, across coordinators.
    pub limits: KeyLimits,
    /// Whether its requests wait behind other tenants' interactive ones.
    pub priority: protocol::Priority,
}

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyScope {
    /// The inference API (`/v1/*`, `/ready`, `/metrics`).
    Inference,
    /// Everything, the admin API (`/admin/*`) included.
    Admin,
}

/// Lifecycle of one replica of a model on one node.
///
/// Allowed transitions (enforced by the state machine): a new replica starts
/// in `Loading`; `Loading -> Ready`, `Loading -> Failed`, `Ready -> Failed`,
/// and `Failed -> Loading` (retry in place). Setting `Ready` on a `Ready`
/// replica or `Failed` on a `Failed` one is an accepted no-op.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PlacementState {
    /// The node has been told to load the model and has not confirmed yet.
    Loading,
    /// The replica is loaded and serving.
    Ready,
    /// Loading or serving failed; the replica does not count as healthy.
    Failed,
}

/// Lifecycle of a federated-learning job.
///
/// Allowed transitions: `Pending -> Running | Failed | Cancelled`,
/// `Running -> Paused | Completed | Failed | Cancelled`,
/// `Paused -> Running | Failed | Cancelled`. `Completed`, `Failed` and
/// `Cancelled` are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum FlJobStatus {
    /// Created, not started.
    Pending,
    /// Rounds are being run.
    Running,
    /// Temporarily stopped; may resume.
    Paused,
    /// Finished successfully (terminal).
    Completed,
    /// Finished with an error (terminal).
    Failed,
    /// Stopped by an operator (terminal).
    Cancelled,
}

impl FlJobStatus {
    /// Whether no further transition or round commit is allowed.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// Whether the transition `self -> to` is allowed (`to != self`).
    pub fn can_become(self, to: Self) -> bool {
        use FlJobStatus::*;
        matches!(
            (self, to),
            (Pending, Running | Failed | Cancelled)
                | (Running, Paused | Completed | Failed | Cancelled)
                | (Paused, Running | Failed | Cancelled)
        )
    }
}

/// A change to the cluster state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// Records a coordinator (raft member) and its address.
    AddCoordinator {
        /// Raft node id of the coordinator.
        id: u64,
        /// Its member name (the name in its certificate).
        name: String,
        /// Address (host:port) other coordinators reach it at.
        addr: String,
    },
    /// Forgets a coordinator. The last coordinator cannot be removed.
    RemoveCoordinator {
        /// Raft node id of the coordinator.
        id: u64,
    },
    /// Registers a worker node, or updates it if already known (a node that
    /// restarts re-registers); the node is marked [`NodeStatus::Up`].
    RegisterNode {
        /// Unique node id.
        id: String,
        /// Address (host:port) the node is reachable at.
        addr: String,
        /// CPU cores available for inference.
        cores: u32,
        /// Memory available for models and their KV caches, in bytes.
        memory_bytes: u64,
        /// Names of the models this node can serve; empty means any model.
        servable_models: Vec<String>,
    },
    /// Marks a node up or down.
    SetNodeStatus {
        /// Node id.
        id: String,
        /// New status.
        status: NodeStatus,
    },
    /// Registers a model, or updates its spec. Changing the artifact
    /// (`source`, `format` or `size_bytes`) bumps the model's version.
    RegisterModel {
        /// Unique model name (as used in the OpenAI API `model` field).
        name: String,
        /// Where nodes fetch the weights from (URL, hub id or path).
        source: String,
        /// Weight format, e.g. `gguf` or `safetensors`.
        format: String,
        /// Size of the weights in bytes.
        size_bytes: u64,
        /// How many replicas the cluster should run.
        desired_replicas: u32,
    },
    /// Forgets a model and all of its placements.
    UnregisterModel {
        /// Model name.
        name: String,
    },
    /// Changes how many replicas of a model the cluster should run.
    ScaleModel {
        /// Model name.
        name: String,
        /// New desired replica count.
        desired_replicas: u32,
    },
    /// Creates a replica of a model on a node, or changes its state; see
    /// [`PlacementState`] for the allowed transitions.
    SetPlacement {
        /// Model name.
        model: String,
        /// Node id.
        node: String,
        /// New state of the replica.
        state: PlacementState,
    },
    /// Removes the replica of a model from a node.
    RemovePlacement {
        /// Model name.
        model: String,
        /// Node id.
        node: String,
    },
    /// Creates a tenant.
    CreateTenant {
        /// Unique tenant name.
        name: String,
    },
    /// Adds an API key to a tenant.
    AddApiKey {
        /// Tenant name.
        tenant: String,
        /// Lower-case hex SHA-256 of the key (64 characters). The raw key
        /// is never replicated.
        key_hash: String,
        /// The key's public id (shown in lists and the audit trail).
        id: String,
        /// What the key may do.
        scope: KeyScope,
        /// When the key was made, Unix seconds (set by the proposer).
        created_at_unix: u64,
        /// When the key stops working, Unix seconds; `None`: never.
        expires_at_unix: Option<u64>,
        /// Its rate and concurrency limits.
        limits: KeyLimits,
    },
    /// Creates tenant `default` and its first admin key, once in the life
    /// of a cluster (refused afterwards, so that a restarted bootstrap
    /// coordinator cannot bring back a revoked key).
    Bootstrap {
        /// Lower-case hex SHA-256 of the admin key.
        key_hash: String,
        /// The key's public id.
        id: String,
        /// Unix seconds.
        created_at_unix: u64,
    },
    /// Revokes an API key of a tenant.
    RevokeApiKey {
        /// Tenant name.
        tenant: String,
        /// Lower-case hex SHA-256 of the key.
        key_hash: String,
    },
    /// Creates a federated-learning job in [`FlJobStatus::Pending`].
    CreateFlJob {
        /// Unique job id.
        id: String,
        /// The tenant that submitted it (the only one, with the operator's
        /// tenant `default`, that sees it).
        tenant: String,
        /// The job spec as submitted (TOML or JSON text), stored verbatim.
        spec: String,
    },
    /// Records that a round of a federated-learning job was aggregated.
    /// Rounds are numbered from 1 and must be committed in order.
    FlRoundCommitted {
        /// Job id.
        job: String,
        /// Round number; must be the previous round plus one.
        round: u64,
        /// Lower-case hex SHA-256 of the aggregated checkpoint.
        checkpoint_hash: String,
        /// Aggregated metrics of the round (name -> value).
        metrics: BTreeMap<String, f64>,
    },
    /// Changes the status of a federated-learning job; see [`FlJobStatus`].
    SetFlJobStatus {
        /// Job id.
        job: String,
        /// New status.
        status: FlJobStatus,
        /// Why, for [`FlJobStatus::Failed`] (at most
        /// [`MAX_REASON_LEN`] bytes).
        reason: Option<String>,
    },
    /// Revokes a member certificate: every connection presenting it is
    /// refused and closed, and a node of that name is marked down.
    RevokeCert {
        /// Lower-case hex SHA-256 of the certificate's DER encoding.
        fingerprint: String,
        /// The member name in the certificate (for the operator).
        name: String,
        /// When, Unix seconds (set by the proposer).
        revoked_at_unix: u64,
    },
    /// Sets a tenant's limits and scheduling class, creating the tenant if
    /// it is new.
    SetTenant {
        /// Tenant name.
        name: String,
        /// Its limits and class.
        settings: TenantSettings,
    },
    /// Appends records to the audit chain, then drops what `retention`
    /// no longer keeps (see [`super::audit`]).
    RecordAudit {
        /// The events, oldest first (1 to
        /// [`MAX_AUDIT_BATCH`](super::audit::MAX_AUDIT_BATCH)).
        records: Vec<AuditRecord>,
        /// How much of the chain to keep.
        retention: AuditRetention,
        /// The proposer's clock, Unix seconds (the age cut-off).
        now_unix: u64,
    },
}

/// Longest failure reason of a federated job, in bytes.
pub const MAX_REASON_LEN: usize = 1024;

/// Why a command could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    /// The encoded command would exceed [`MAX_COMMAND_BYTES`], so every
    /// replica would refuse it; it must not be proposed.
    #[error("encoded command is {size} bytes, more than the limit of {limit}")]
    TooLarge {
        /// Encoded size in bytes.
        size: usize,
        /// The limit, [`MAX_COMMAND_BYTES`].
        limit: usize,
    },
    /// The serializer failed.
    #[error("cannot encode command: {0}")]
    Bincode(String),
}

/// Why bytes could not be decoded into a command.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The input is larger than [`MAX_COMMAND_BYTES`].
    #[error("encoded command is {size} bytes, more than the limit of {limit}")]
    TooLarge {
        /// Input size in bytes.
        size: usize,
        /// The limit, [`MAX_COMMAND_BYTES`].
        limit: usize,
    },
    /// The command was written by a format version this code does not know.
    #[error("unsupported command version {version} (this coordinator understands {supported})")]
    UnsupportedVersion {
        /// Version found in the input.
        version: u32,
        /// The version this code understands, [`COMMAND_VERSION`].
        supported: u32,
    },
    /// The input is not a valid command.
    #[error("malformed command: {0}")]
    Malformed(String),
    /// Bytes were left over after the command.
    #[error("{0} trailing bytes after the command")]
    TrailingBytes(usize),
}

fn config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_COMMAND_BYTES>,
> {
    bincode::config::standard().with_limit::<MAX_COMMAND_BYTES>()
}

/// Encodes a command for the replicated log.
///
/// Fails only if the encoding is larger than [`MAX_COMMAND_BYTES`] (or the
/// serializer reports an error, which the types here never cause).
pub fn encode(cmd: &Command) -> Result<Vec<u8>, EncodeError> {
    let bytes = bincode::serde::encode_to_vec(cmd, config())
        .map_err(|e| EncodeError::Bincode(e.to_string()))?;
    if bytes.len() > MAX_COMMAND_BYTES {
        return Err(EncodeError::TooLarge {
            size: bytes.len(),
            limit: MAX_COMMAND_BYTES,
        });
    }
    Ok(bytes)
}

/// Decodes a command written by [`encode`].
///
/// The version is read first: a command of another version is refused with
/// [`DecodeError::UnsupportedVersion`] without trying to read its body.
pub fn decode(bytes: &[u8]) -> Result<Command, DecodeError> {
    if bytes.len() > MAX_COMMAND_BYTES {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            limit: MAX_COMMAND_BYTES,
        });
    }
    let (version, _): (u32, usize) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if version != COMMAND_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            version,
            supported: COMMAND_VERSION,
        });
    }
    let (cmd, used): (Command, usize) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if used != bytes.len() {
        return Err(DecodeError::TrailingBytes(bytes.len() - used));
    }
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_ops() -> Vec<Op> {
        let mut metrics = BTreeMap::new();
        metrics.insert("loss".to_string(), 0.25);
        vec![
            Op::AddCoordinator {
                id: 1,
                name: "coordinator-1".into(),
                addr: "10.0.0.1:7000".into(),
            },
            Op::RemoveCoordinator { id: 1 },
            Op::RegisterNode {
                id: "n1".into(),
                addr: "10.0.0.2:7100".into(),
                cores: 8,
                memory_bytes: 1 << 34,
                servable_models: vec!["m".into()],
            },
            Op::SetNodeStatus {
                id: "n1".into(),
                status: NodeStatus::Down,
            },
            Op::RegisterModel {
                name: "m".into(),
                source: "hf://x/y".into(),
                format: "gguf".into(),
                size_bytes: 123,
                desired_replicas: 2,
            },
            Op::UnregisterModel { name: "m".into() },
            Op::ScaleModel {
                name: "m".into(),
                desired_replicas: 3,
            },
            Op::SetPlacement {
                model: "m".into(),
                node: "n1".into(),
                state: PlacementState::Ready,
            },
            Op::RemovePlacement {
                model: "m".into(),
                node: "n1".into(),
            },
            Op::CreateTenant { name: "t".into() },
            Op::AddApiKey {
                tenant: "t".into(),
                key_hash: "ab".repeat(32),
                id: "k1".into(),
                scope: KeyScope::Inference,
                created_at_unix: 1,
                expires_at_unix: Some(2),
                limits: KeyLimits {
                    rpm: Some(60),
                    tpm: None,
                    max_concurrent: Some(2),
                },
            },
            Op::Bootstrap {
                key_hash: "cd".repeat(32),
                id: "k0".into(),
                created_at_unix: 1,
            },
            Op::RevokeApiKey {
                tenant: "t".into(),
                key_hash: "ab".repeat(32),
            },
            Op::CreateFlJob {
                id: "j".into(),
                tenant: "t".into(),
                spec: "rounds = 3".into(),
            },
            Op::FlRoundCommitted {
                job: "j".into(),
                round: 1,
                checkpoint_hash: "cd".repeat(32),
                metrics,
            },
            Op::SetFlJobStatus {
                job: "j".into(),
                status: FlJobStatus::Running,
                reason: None,
            },
            Op::RevokeCert {
                fingerprint: "ef".repeat(32),
                name: "node-2".into(),
                revoked_at_unix: 5,
            },
            Op::RecordAudit {
                records: vec![AuditRecord {
                    time_unix: 60,
                    kind: super::super::audit::AuditKind::AuthFailure,
                    key_id: None,
                    tenant: None,
                    client: "10.0.0.9".into(),
                    method: "GET".into(),
                    route: "/admin/v1/cluster".into(),
                    status: 401,
                    count: 12,
                }],
                retention: AuditRetention::default(),
                now_unix: 61,
            },
        ]
    }

    #[test]
    fn every_op_round_trips() {
        for op in sample_ops() {
            let cmd = Command::new(op);
            let bytes = encode(&cmd).unwrap();
            assert_eq!(decode(&bytes).unwrap(), cmd);
        }
    }

    #[test]
    fn unknown_version_refused_at_decode() {
        let cmd = Command {
            version: COMMAND_VERSION + 1,
            op: Op::CreateTenant { name: "t".into() },
        };
        let bytes = encode(&cmd).unwrap();
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::UnsupportedVersion {
                version: COMMAND_VERSION + 1,
                supported: COMMAND_VERSION
            })
        );
    }

    #[test]
    fn garbage_and_trailing_bytes_refused() {
        assert!(matches!(decode(&[]), Err(DecodeError::Malformed(_))));
        assert!(matches!(
            decode(&[COMMAND_VERSION as u8, 200, 200, 200]),
            Err(DecodeError::Malformed(_))
        ));
        let mut bytes = encode(&Command::new(Op::CreateTenant { name: "t".into() })).unwrap();
        bytes.push(0);
        assert_eq!(decode(&bytes), Err(DecodeError::TrailingBytes(1)));
    }

    #[test]
    fn oversized_commands_refused() {
        let cmd = Command::new(Op::CreateFlJob {
            id: "j".into(),
            tenant: "t".into(),
            spec: "x".repeat(MAX_COMMAND_BYTES),
        });
        assert!(matches!(encode(&cmd), Err(EncodeError::TooLarge { .. })));
        let big = vec![0u8; MAX_COMMAND_BYTES + 1];
        assert!(matches!(decode(&big), Err(DecodeError::TooLarge { .. })));
    }

    #[test]
    fn fl_status_transitions() {
        use FlJobStatus::*;
        assert!(Pending.can_become(Running));
        assert!(Running.can_become(Paused));
        assert!(Paused.can_become(Running));
        assert!(!Pending.can_become(Completed));
        assert!(!Completed.can_become(Running));
        assert!(Cancelled.is_terminal() && !Paused.is_terminal());
    }
}
