//! Recording the audit trail (the chain itself is replicated state, see
//! [`crate::state::audit`]).
//!
//! - [`layer`]: the axum middleware that turns admin writes,
//!   authentication failures and quota rejections into records.
//! - [`buffer`]: pure aggregation and bounding of those records before
//!   they are committed.
//!
//! `crate::server::audit_sink` commits the buffered records through raft
//! and `crate::server::audit_api` serves them.

pub mod buffer;
pub mod layer;

pub use buffer::AuditBuffer;
pub use layer::{observe, AuditSink};
