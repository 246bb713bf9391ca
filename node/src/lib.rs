//! An Inferno node: one process per machine serving models through a
//! supervised actor tree.
//!
//! ```text
//! NodeSupervisor
//! ├── BatchScheduler "model-a"   admission: validates, refuses when full, routes to the live worker
//! │   └── (engine handle) ──► ModelWorker "model-a"   owns the weights; computes on its own thread
//! ├── BatchScheduler "model-b" …
//! ├── OnnxWorker "classifier"    an ONNX model's session and its dynamic-batching thread
//! └── FlWorker "job-1"           trains a federated job's rounds on this node's data
//! ```
//!
//! A worker whose engine thread panics fails its in-flight requests with an
//! error and is restarted by the supervisor, within a restart budget; other
//! models keep serving throughout.
//!
//! [`service`] runs a node inside a cluster: a QUIC server for inference
//! streams, heartbeats to the coordinators, and loading/unloading models as
//! they assign them.

pub mod fl_worker;
pub mod node;
pub mod onnx_worker;
pub mod restart;
pub mod scheduler;
pub mod service;
pub mod supervisor;
pub mod worker;

pub use fl_worker::{FlConfig, FlShared};
pub use node::{ModelSpec, ModelState, ModelStatus, Node, NodeError};
pub use onnx_worker::{OnnxSettings, OnnxSpec};
pub use restart::RestartBudget;
