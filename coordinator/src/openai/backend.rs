//! The seam between the HTTP layer and the cluster: what a coordinator's
//! router must provide so that [`router`](super::router) can serve the
//! OpenAI API.

use std::future::Future;

use protocol::{GenerateEvent, InferenceRequest};
use tokio::sync::mpsc;

/// A model that can be requested right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEntry {
    /// The model name (the OpenAI `model` field).
    pub id: String,
    /// Replicas of it that are ready to serve.
    pub ready_replicas: u32,
    /// What its file says about it, if a node has reported it.
    pub card: Option<protocol::ModelCard>,
}

/// A request that a replica accepted.
#[derive(Debug)]
pub struct Routed {
    /// Id of the node serving the request (a metrics label).
    pub node: String,
    /// The generation's events; it ends with one `Finished` or `Failed`.
    /// Dropping it cancels the request at the node.
    pub events: mpsc::Receiver<GenerateEvent>,
}

/// Why a request could not be routed to a replica.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No such model is registered in the cluster (HTTP 404).
    #[error("unknown model: {0}")]
    UnknownModel(String),
    /// The model is registered but no replica of it is ready (HTTP 503).
    #[error("no ready replica: {0}")]
    NoReplica(String),
    /// Every replica is saturated; try again later (HTTP 429 with Retry-After).
    #[error("overloaded, retry after {retry_after_s} s")]
    Overloaded {
        /// Seconds the client should wait before retrying.
        retry_after_s: u32,
    },
    /// The request can never be served as asked (HTTP 400).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The cluster cannot serve right now (no leader, node unreachable; HTTP 503).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A replica did not answer in time (HTTP 504).
    #[error("timed out: {0}")]
    Timeout(String),
}

/// What the OpenAI HTTP layer needs from the cluster. The coordinator's
/// router implements it; tests use a scripted fake.
pub trait InferenceBackend: Send + Sync + 'static {
    /// Models that can be requested right now (registered in the cluster).
    fn models(&self) -> Vec<ModelEntry>;

    /// Routes one request to a replica, to the node `prefer` names when it
    /// has a ready one (so that the choices of one prompt share its cached
    /// KV blocks); resolves once a replica accepted it. Dropping the
    /// returned receiver must cancel the request at the node.
    fn generate(
        &self,
        req: InferenceRequest,
        prefer: Option<String>,
    ) -> impl Future<Output = Result<Routed, RouteError>> + Send;

    /// A real round trip to a replica (e.g. a one-token generation), for
    /// `GET /ready`.
    fn ready(&self) -> impl Future<Output = Result<(), RouteError>> + Send;

    /// Tokenizes or detokenizes with the model's tokenizer, on a replica.
    fn tokenize(
        &self,
        req: protocol::TokenizeRequest,
    ) -> impl Future<Output = Result<protocol::TokenizeOutput, RouteError>> + Send;

    /// Stores a Responses API answer (an opaque record) where losing any
    /// one coordinator does not lose it.
    fn save_response(
        &self,
        id: String,
        record: Vec<u8>,
    ) -> impl Future<Output = Result<(), RouteError>> + Send;

    /// A stored answer, or `None` if there is none (never stored, expired
    /// or deleted).
    fn load_response(
        &self,
        id: String,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, RouteError>> + Send;

    /// Deletes a stored answer; whether there was one.
    fn delete_response(&self, id: String) -> impl Future<Output = Result<bool, RouteError>> + Send;
}
