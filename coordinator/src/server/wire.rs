//! Frames exchanged between coordinators over QUIC (bincode envelopes,
//! one request and one response per stream).

use serde::{Deserialize, Serialize};

use super::raft_loop::MemberChange;
use crate::state::{ApplyError, ApplyOutcome, Op};

/// Largest coordinator-to-coordinator frame (raft batches, snapshots).
pub const MAX_PEER_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// A request from one coordinator to another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerRequest {
    /// A batch of raft messages, each protobuf-encoded.
    Raft {
        /// The sender's raft id (must match its certificate).
        from: u64,
        /// Encoded `raft::eraftpb::Message`s, in order.
        msgs: Vec<Vec<u8>>,
    },
    /// A client write forwarded to the leader.
    Forward {
        /// The change to propose.
        op: Op,
    },
    /// A membership change forwarded to the leader.
    Membership {
        /// The change.
        change: MemberChange,
    },
    /// Store a checkpoint blob (before its hash is committed).
    PutBlob {
        /// Its SHA-256, checked on arrival.
        hash: String,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// Fetch a checkpoint blob.
    GetBlob {
        /// Its SHA-256.
        hash: String,
    },
    /// Keep a stored Responses API answer (replicated to a majority).
    PutResponse {
        /// The response id (`resp_...`).
        id: String,
        /// The opaque record.
        record: Vec<u8>,
        /// When it expires (Unix seconds; the receiver caps it at its TTL).
        expires_at: u64,
    },
    /// Fetch a stored response; answered with [`PeerResponse::Blob`].
    GetResponse {
        /// The response id.
        id: String,
    },
    /// Forget a stored response.
    DeleteResponse {
        /// The response id.
        id: String,
    },
    /// The hash of one entry of the receiver's audit chain (to compare
    /// chains across coordinators).
    AuditHash {
        /// The entry's sequence number.
        seq: u64,
    },
}

/// The answer to a [`PeerRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerResponse {
    /// Raft messages were accepted for stepping.
    Ack,
    /// The outcome of a forwarded write.
    Write(WriteReply),
    /// A blob, if this coordinator has it.
    Blob(Option<Vec<u8>>),
    /// The answer to [`PeerRequest::AuditHash`].
    AuditHash {
        /// The sequence number of the receiver's last audit entry.
        head_seq: u64,
        /// The hash of the asked entry, if the receiver holds it.
        hash: Option<String>,
    },
    /// The request was refused (unknown sender, bad message).
    Refused(String),
}

/// The outcome of a client write.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum WriteReply {
    /// The command was committed and applied.
    Applied(ApplyOutcome),
    /// The command was committed but the state machine refused it.
    Rejected {
        /// HTTP status to report (400, 404 or 409).
        status: u16,
        /// The [`ApplyError`] message.
        message: String,
    },
    /// This node is not the leader; `leader` is the one it knows of
    /// (0 if none).
    NotLeader {
        /// The known leader's id, 0 if none.
        leader: u64,
    },
    /// The write could not be completed (timeout, no quorum, shutdown);
    /// its outcome may be unknown.
    Unavailable {
        /// Why.
        message: String,
    },
}

impl WriteReply {
    /// Maps an apply result to a reply.
    pub fn from_apply(result: Result<ApplyOutcome, ApplyError>) -> Self {
        match result {
            Ok(o) => WriteReply::Applied(o),
            Err(e) => WriteReply::Rejected {
                status: apply_error_status(&e),
                message: e.to_string(),
            },
        }
    }
}

/// The HTTP status matching an [`ApplyError`]: 404 for unknown entities,
/// 409 for conflicts, 400 otherwise.
pub fn apply_error_status(e: &ApplyError) -> u16 {
    use ApplyError as E;
    match e {
        E::UnknownCoordinator(_)
        | E::UnknownNode(_)
        | E::UnknownModel(_)
        | E::UnknownTenant(_)
        | E::UnknownFlJob(_)
        | E::ApiKeyNotFound(_)
        | E::PlacementNotFound { .. } => 404,
        E::CoordinatorExists(_)
        | E::CoordinatorAddrInUse { .. }
        | E::DuplicatePlacement { .. }
        | E::TenantExists(_)
        | E::ApiKeyExists
        | E::AlreadyBootstrapped
        | E::FlJobExists(_)
        | E::FlJobFinished { .. }
        | E::InvalidPlacementTransition { .. }
        | E::InvalidFlJobTransition { .. }
        | E::LastCoordinator(_)
        | E::LimitReached { .. }
        | E::NameInUse(..) => 409,
        E::StateFull { .. } => 507,
        _ => 400,
    }
}
