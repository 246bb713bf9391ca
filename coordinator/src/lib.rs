//! Inferno coordinator: Raft-replicated cluster state over QUIC, placement,
//! and the OpenAI-compatible HTTP API.
//!
//! What exists today:
//! - [`state`]: the replicated state machine: the log commands and their
//!   encoding, the deterministic [`state::ClusterState`] with its `apply`
//!   function, checksummed snapshots, and the pure placement planner the
//!   leader will run. It does no I/O.
//! - [`raft`]: raft-rs driven through its Ready cycle over durable redb
//!   storage (fsync before acknowledging), applying committed entries to the
//!   state machine, with snapshots, log compaction, restart from disk and
//!   membership changes; tested in-process on a seeded simulated network.
//!
//! - [`audit`]: recording the audit trail (admin writes, refused keys,
//!   quota rejections) into the replicated hash chain.
//! - [`server`]: the coordinator process: the task owning the
//!   [`raft::RaftNode`], raft messages and forwarded writes over QUIC,
//!   ReadIndex reads, and the admin HTTP API.

#![warn(missing_docs)]

pub mod audit;
pub mod auth;
pub mod fl;
pub mod openai;
pub mod quota;
pub mod raft;
pub mod server;
pub mod state;
pub mod v2;
