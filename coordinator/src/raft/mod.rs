//! The coordinator's raft core: durable log storage ([`storage`]) and the
//! node wrapper that drives raft-rs's Ready cycle and applies committed
//! entries to the [`ClusterState`](crate::state::ClusterState) ([`node`]).
//!
//! Transport is not here: [`RaftNode::on_ready`] returns the messages to
//! send and the caller delivers them (over QUIC in production, over a
//! simulated network in `tests/raft_sim.rs`).

pub mod node;
pub mod storage;

pub use node::{NodeError, ProposalId, RaftNode, RaftNodeConfig, ReadyOutput};
pub use storage::{DurableStorage, StoreError};

/// raft-rs types callers need alongside [`RaftNode`].
pub use raft::eraftpb::{ConfChangeV2, Message, MessageType};
pub use raft::{ReadState, SnapshotStatus, StateRole};
