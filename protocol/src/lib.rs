//! Wire types shared by Inferno nodes, coordinators and clients.
//!
//! Everything that crosses a process boundary is defined here, so that the
//! node, the coordinator and the CLI agree on one vocabulary. The framing,
//! handshake and transport (QUIC with mutual TLS) are added by the
//! control-plane work; the types below are what travels inside those frames.

pub mod generate;

pub use generate::{
    ChatMessage, FinishReason, GenerateError, GenerateEvent, GenerateRequest, SamplingParams, Usage,
};
