//! ONNX models through ONNX Runtime (the `ort` crate, with the runtime
//! library loaded at run time): a model's declared signature and the check
//! of requests against it, and a worker thread that runs requests in
//! dynamic batches.
//!
//! - [`signature`]: the check of a request against the declared inputs.
//! - [`batcher`]: the pure batching policy (delay, batch size, queue bound).
//! - [`proto`]: writing ONNX model files (a subset of the protobuf schema).
//! - [`stack`]: stacking requests into one batch and splitting its outputs.
//! - [`runtime`]: the process's one ONNX Runtime environment.
//! - [`session`]: a loaded model.
//! - [`server`]: the worker thread that batches and runs requests.

pub mod batcher;
pub mod proto;
pub mod runtime;
pub mod server;
pub mod session;
pub mod signature;
pub mod stack;

pub use batcher::{BatchPolicy, Refused};
pub use server::OnnxServer;
pub use session::OnnxModel;
pub use signature::{check_inputs, InputError};

/// What can go wrong serving an ONNX model.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OnnxError {
    /// The ONNX Runtime library could not be loaded or started.
    #[error("ONNX Runtime is unavailable: {0}")]
    Runtime(String),
    /// The model file could not be loaded.
    #[error("cannot load the ONNX model {path}: {reason}")]
    Load {
        /// The file.
        path: String,
        /// ONNX Runtime's reason.
        reason: String,
    },
    /// The request's tensors do not fit the model (a 400 naming the input).
    #[error(transparent)]
    Input(#[from] InputError),
    /// The request was not queued (a 429 when the queue is full).
    #[error(transparent)]
    Refused(#[from] Refused),
    /// The batched requests could not be stacked, or the outputs split.
    #[error(transparent)]
    Stack(#[from] stack::StackError),
    /// ONNX Runtime failed to run the model.
    #[error("the model failed: {0}")]
    Run(String),
    /// The worker has stopped.
    #[error("the model's worker has stopped")]
    Stopped,
}
