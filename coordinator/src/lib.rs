//! Inferno coordinator: Raft-replicated cluster state over QUIC, placement,
//! and the OpenAI-compatible HTTP API.
//!
//! Not implemented yet: this crate is built by the [control-plane] and
//! [data-plane] issues. It exists so the workspace has its final shape.
