//! The OpenAI-compatible HTTP API that every coordinator serves.
//!
//! [`router`] builds an axum [`Router`](axum::Router) over any
//! [`InferenceBackend`] (the coordinator's request router, or a fake in
//! tests):
//!
//! - `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/chat/completions`,
//!   `POST /v1/completions` (streaming as server-sent events or whole);
//! - `POST /tokenize`, `POST /detokenize`;
//! - `GET /health`, `GET /ready` (a round trip to a replica) and
//!   `GET /metrics` (Prometheus, from a [`Metrics`] registry).
//!
//! Errors are OpenAI error objects ([`ApiError`]). A failure before the
//! first token is an HTTP status; after it, an error event ends the stream.
//! Dropping a response (the client went away) drops the generation's event
//! receiver, which cancels the request at the node.
//!
//! Tests: `coordinator/tests/openai_api.rs`.

mod backend;
mod chunks;
mod collect;
mod constraint;
mod dispatch;
mod errors;
mod extra_params;
mod handlers;
mod logprobs;
mod metrics;
mod request;
mod response;
pub mod responses;
mod stream;
mod tokenize;
mod tools;
mod tracker;
mod validate;

#[cfg(test)]
pub(crate) mod fuzz_tests;

pub use backend::{InferenceBackend, ModelEntry, RouteError, Routed};
pub(crate) use dispatch::unix_now;
pub use errors::ApiError;
pub use handlers::{health, no_such_route, router, router_with_config, ApiConfig};
pub use metrics::Metrics;
