//! The KServe / Triton open inference protocol (v2) over HTTP, for the ONNX
//! models the nodes serve: server and model health, model metadata, and
//! `infer` with JSON tensors or the binary tensor data extension. The
//! official `tritonclient[http]` package speaks it unchanged.
//!
//! - [`tensors`]: the request and response bodies (pure).
//! - [`handlers`]: the routes, over a [`TensorBackend`].

pub mod handlers;
pub mod tensors;

#[cfg(test)]
mod fuzz_tests;

use std::future::Future;

use protocol::{NamedTensor, Signature, TensorInferRequest};

use crate::openai::RouteError;

pub use handlers::router;

/// One registered ONNX model as the routes see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnnxModelEntry {
    /// Its name.
    pub name: String,
    /// Replicas ready to serve it.
    pub ready_replicas: usize,
    /// Its declared inputs and outputs, once a node has reported them.
    pub signature: Option<Signature>,
}

/// What the v2 routes need from the cluster: the coordinator's router
/// implements it.
pub trait TensorBackend: Send + Sync + 'static {
    /// The registered ONNX model `name`, if there is one.
    fn onnx_model(&self, name: &str) -> Option<OnnxModelEntry>;

    /// Runs a model on a ready replica; dropping the future cancels the
    /// request at the node.
    fn infer(
        &self,
        req: TensorInferRequest,
    ) -> impl Future<Output = Result<Vec<NamedTensor>, RouteError>> + Send;
}
