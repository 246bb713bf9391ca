//! The coordinator's replicated state machine: pure, deterministic code
//! with no I/O.
//!
//! - [`audit`]: the audit trail's hash chain and retention.
//! - [`budget`]: how big the state may grow, and what each entry costs.
//! - [`commands`]: the log entries ([`Command`], [`Op`]) and their encoding.
//! - [`machine`]: [`ClusterState`] and its `apply` function.
//! - [`snapshot`](mod@snapshot): checksummed snapshots of the state.
//! - [`placement`]: the leader's replica-placement planner.

pub mod audit;
pub mod budget;
pub mod commands;
pub mod machine;
pub mod placement;
pub mod snapshot;

pub use commands::{
    decode, encode, Command, DecodeError, EncodeError, FlJobStatus, KeyLimits, KeyScope,
    NodeStatus, Op, PlacementState, TenantSettings, COMMAND_VERSION,
};
pub use machine::{ApiKey, ApplyError, ApplyOutcome, ClusterState, DEFAULT_TENANT, MAX_API_KEYS};
pub use placement::{plan, Plan, PlannerConfig, Shortfall};
pub use snapshot::{restore, snapshot, SnapshotError};

#[cfg(test)]
mod tests;
