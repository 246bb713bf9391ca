//! An Inferno node: one process per machine serving models through a
//! supervised actor tree.
//!
//! ```text
//! NodeSupervisor
//! ├── BatchScheduler "model-a"   admission: validates, refuses when full, routes to the live worker
//! │   └── (engine handle) ──► ModelWorker "model-a"   owns the weights; computes on its own thread
//! └── BatchScheduler "model-b" …
//! ```
//!
//! A worker whose engine thread panics fails its in-flight requests with an
//! error and is restarted by the supervisor, within a restart budget; other
//! models keep serving throughout.

pub mod node;
pub mod restart;
pub mod scheduler;
pub mod supervisor;
pub mod worker;

pub use node::{ModelSpec, ModelState, ModelStatus, Node, NodeError};
pub use restart::RestartBudget;
