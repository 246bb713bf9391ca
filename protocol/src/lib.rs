//! Wire types shared by Inferno nodes, coordinators and clients.
//!
//! Everything that crosses a process boundary is defined here, so that the
//! node, the coordinator and the CLI agree on one vocabulary.
//!
//! - [`frame`]: length-prefixed bincode frames with a size cap and timeouts.
//! - [`hex`]: lower-case hex text of hashes and fingerprints.
//! - [`handshake`]: the [`Hello`] version handshake at the start of every connection.
//! - [`tls`]: the cluster CA and member identities for mutual TLS.
//! - [`quic`]: QUIC endpoints (quinn) with mutual TLS, and request helpers.
//! - [`rotation`]: reloading a member certificate on SIGHUP.
//! - [`generate`]: the text-generation types that travel inside frames.
//! - [`fl`]: federated-learning rounds between the leader and nodes.
//! - [`inference`]: coordinator-to-node inference requests and the node's
//!   heartbeats.
//! - [`prefix`]: prompt prefixes as hashed text spans, for cache-aware routing.
//! - [`tensor`]: named tensors for ONNX models, with the v2 protocol's types.

pub mod fl;
pub mod frame;
pub mod generate;
pub mod handshake;
pub mod hex;
pub mod inference;
pub mod prefix;
pub mod quic;
pub mod rotation;
pub mod tensor;
pub mod tls;

pub use frame::{FrameError, MAX_FRAME_BYTES};
pub use handshake::{HandshakeError, Hello, PROTOCOL_VERSION};
pub use inference::{
    HeartbeatReply, InferenceRequest, KvCacheReport, ModelCard, NodeHeartbeat, NodeRequest,
    NodeResponse, NodeStreamRequest, Prompt, ReplicaReport, ReplicaState, ServableModel,
    TensorInferRequest, TokenizeOutput, TokenizeRequest, ToolFormat, MAX_NODE_FRAME_BYTES,
};
pub use quic::QuicError;
pub use tensor::{DType, NamedTensor, Signature, TensorData, TensorSpec, MAX_TENSOR_ELEMENTS};
pub use tls::{ClusterCa, MemberIdentity, TlsError};

pub use generate::{
    ChatMessage, FinishReason, GenerateError, GenerateEvent, GenerateRequest, OutputConstraint,
    PrefixSpan, Priority, SamplingParams, TokenLogprob, ToolCall, TopLogprob, Usage,
    KEEPALIVE_AFTER, MAX_LOGIT_BIAS, MAX_LOGIT_BIAS_TOKENS, MAX_TOP_LOGPROBS,
};
