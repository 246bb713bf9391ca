//! Inferno coordinator: Raft-replicated cluster state over QUIC, placement,
//! and the OpenAI-compatible HTTP API.
//!
//! What exists today is the replicated state machine in [`state`]: the log
//! commands and their encoding, the deterministic [`state::ClusterState`]
//! with its `apply` function, checksummed snapshots, and the pure placement
//! planner the leader will run. It does no I/O.
//!
//! Not implemented yet (the [control-plane] and [data-plane] issues): the
//! raft driver that feeds committed entries to the state machine, the QUIC
//! transport between coordinators and nodes, and the HTTP API.

#![warn(missing_docs)]

pub mod state;
