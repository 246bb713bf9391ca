//! What a coordinator sends a node to run one inference, and the node's
//! control messages (registration, heartbeats) to the coordinators.
//!
//! The node owns the tokenizer and chat template of its models, so a
//! request carries text or chat messages, never token ids; the node renders
//! and tokenizes it and answers with [`GenerateEvent`](crate::GenerateEvent)s.
//!
//! An inference stream: the coordinator opens a bidirectional QUIC stream
//! to the node and writes one [`InferenceRequest`] frame; the node answers
//! with `GenerateEvent` frames, the last one `Finished` or `Failed`, then
//! finishes the stream. A coordinator that resets or stops the stream (its
//! client went away) cancels the sequence at the node.

use serde::{Deserialize, Serialize};

use crate::generate::{ChatMessage, OutputConstraint, Priority, SamplingParams};

/// The input of an inference request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Prompt {
    /// Raw text, tokenized as is (OpenAI `/v1/completions`).
    Text(String),
    /// A conversation rendered through the model's chat template, with the
    /// assistant turn opened (OpenAI `/v1/chat/completions`).
    Chat(Vec<ChatMessage>),
}

/// One inference request routed to a replica of `model`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferenceRequest {
    /// The model name as registered in the cluster.
    pub model: String,
    /// What to continue.
    pub prompt: Prompt,
    /// Most tokens to generate; `None` means up to the end of the context.
    pub max_tokens: Option<u32>,
    /// How to pick tokens.
    pub sampling: SamplingParams,
    /// Strings that end generation (not emitted).
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens.
    pub ignore_eos: bool,
    /// Prefix-cache salt: requests with different salts never share KV
    /// cache blocks. Set by the coordinator from the API key and the
    /// request's `cache_salt`.
    pub cache_salt: String,
    /// Parse special-token text in a raw text prompt as special tokens
    /// (`<|im_end|>` becomes the control token). Off, all of the prompt is
    /// text. Chat prompts ignore it: only the template's markup is special.
    pub allow_special_tokens: bool,
    /// Scheduling class at the node (the tenant's).
    pub priority: Priority,
    /// The form the output must take (`response_format`, `grammar`, tool calls).
    pub constraint: Option<OutputConstraint>,
    /// The function tools offered to the model, as the JSON array of
    /// OpenAI tool definitions the chat template receives as `tools`;
    /// `None` offers none.
    pub tools: Option<String>,
    /// Log-probabilities to report (see [`crate::GenerateRequest::logprobs`]).
    pub logprobs: Option<u8>,
}

/// The state of one model replica on a node, as the node reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaState {
    /// Weights are being loaded.
    Loading,
    /// Serving requests.
    Ready,
    /// Loading or serving failed for good (restart budget spent).
    Failed,
}

/// A node's report of one loaded (or loading) model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaReport {
    /// Model name.
    pub model: String,
    /// Its state.
    pub state: ReplicaState,
    /// Sequences being generated.
    pub running: u32,
    /// Requests admitted and waiting for a slot.
    pub waiting: u32,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Its KV cache and prefix cache (absent while loading).
    pub kv: Option<KvCacheReport>,
}

/// A replica's paged KV cache, as reported in heartbeats.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvCacheReport {
    /// Blocks in its pool.
    pub total_blocks: u32,
    /// Blocks held by running sequences.
    pub used_blocks: u32,
    /// Blocks keeping a cached prefix (held or not).
    pub cached_blocks: u32,
    /// Prompt tokens looked up in the prefix cache since the replica started.
    pub queried_tokens: u64,
    /// Of those, tokens served from the cache.
    pub hit_tokens: u64,
    /// Sequences preempted to free blocks since the replica started.
    pub preemptions: u64,
    /// Hashes of prompt text spans ([`crate::prefix`]) whose KV blocks the
    /// replica still holds, most recent first, at most
    /// [`MAX_REPORTED_SPANS`](crate::prefix::MAX_REPORTED_SPANS).
    pub prefix_spans: Vec<u64>,
}

/// A model file a node can serve, as it announces it on registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServableModel {
    /// Model name (the OpenAI `model` field).
    pub name: String,
    /// Size of the weights, in bytes.
    pub size_bytes: u64,
    /// What the file's header says about the model; `None` when the node
    /// could not read it (the model still loads, or fails, when assigned).
    pub card: Option<ModelCard>,
    /// For an ONNX model, its declared inputs and outputs (what the v2
    /// metadata route reports); `None` for other models, or when the node
    /// could not read it.
    pub signature: Option<crate::tensor::Signature>,
}

/// A model's description, read from its file's header by the node that
/// serves it (the coordinator has no model files): what `/v1/models`
/// reports, and what the API checks requests against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelCard {
    /// The architecture (`general.architecture`: `llama`, `qwen2`, `gemma3`).
    pub architecture: String,
    /// Context length in tokens (`max_model_len`).
    pub context_length: u32,
    /// The weights' dominant quantization (`Q4_K_M`, `Q5_0`, `F16`, ...).
    pub quantization: String,
    /// Parameter count.
    pub parameters: u64,
    /// Size of the file, in bytes.
    pub size_bytes: u64,
    /// Whether the file ships a chat template (`/v1/chat/completions`).
    pub chat_template: bool,
    /// How its chat template offers tools and how the model calls them;
    /// `None` when the template has no tool support.
    pub tool_format: Option<ToolFormat>,
}

/// How a model family writes function calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolFormat {
    /// Hermes-style calls (Qwen2.5, Hermes, many fine-tunes): each call is
    /// `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`.
    Hermes,
}

/// A node's registration and heartbeat, sent to every coordinator.
///
/// Heartbeats are not raft writes: each coordinator keeps the latest one
/// per node in memory for routing; the leader turns silence and replica
/// state changes into raft writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeHeartbeat {
    /// Unique node id (its certificate name).
    pub node_id: String,
    /// Address (host:port) coordinators open inference streams to.
    pub addr: String,
    /// CPU cores available for inference.
    pub cores: u32,
    /// Memory available for models and their KV caches, in bytes.
    pub memory_bytes: u64,
    /// Free KV-cache memory over all loaded models, in bytes.
    pub free_kv_bytes: u64,
    /// The models this node has files for.
    pub servable: Vec<ServableModel>,
    /// The models it has loaded or is loading.
    pub replicas: Vec<ReplicaReport>,
    /// The federated-learning client index (data shard) this node trains
    /// as, if it takes part in federated jobs.
    pub fl_client: Option<u32>,
}

/// A coordinator's answer to a heartbeat: what the node should run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// The models placed on this node (load those missing, unload others).
    /// `None` when the answering coordinator does not know yet (not
    /// registered, or no leader): the node keeps what it has.
    pub assigned: Option<Vec<String>>,
    /// Whether the answering coordinator is the raft leader (its view of
    /// the placements is the most recent one; prefer it when answers
    /// differ).
    pub from_leader: bool,
}

/// Largest frame on a node connection (requests carry whole prompts).
pub const MAX_NODE_FRAME_BYTES: usize = 4 * 1024 * 1024;

/// The first frame of a stream a coordinator opens to a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum NodeStreamRequest {
    /// Generate: answered with `GenerateEvent` frames.
    Inference(InferenceRequest),
    /// Train one federated round: answered with one
    /// [`FlTrainResponse`](crate::fl::FlTrainResponse) frame.
    FlTrain(crate::fl::FlTrainRequest),
    /// Tokenize or detokenize with a model's tokenizer: answered with one
    /// `Result<TokenizeOutput, GenerateError>` frame.
    Tokenize(TokenizeRequest),
    /// Run an ONNX model on tensors: answered with one
    /// `Result<Vec<NamedTensor>, GenerateError>` frame (the outputs).
    Infer(TensorInferRequest),
}

/// One run of an ONNX model (the v2 protocol's `infer`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TensorInferRequest {
    /// The model name as registered in the cluster.
    pub model: String,
    /// Its inputs, by name.
    pub inputs: Vec<crate::tensor::NamedTensor>,
}

/// A tokenizer round trip (`/tokenize`, `/detokenize`): no generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TokenizeRequest {
    /// The prompt's tokens, exactly as a generation request with this
    /// prompt (and these tools, as JSON) would be given them.
    Encode {
        /// The model whose tokenizer and template to use.
        model: String,
        /// The text or conversation.
        prompt: Prompt,
        /// The tool definitions a chat prompt offers, if any.
        tools: Option<String>,
    },
    /// The text of these token ids.
    Decode {
        /// The model whose tokenizer to use.
        model: String,
        /// The ids.
        tokens: Vec<u32>,
    },
}

impl TokenizeRequest {
    /// The model it names.
    pub fn model(&self) -> &str {
        match self {
            TokenizeRequest::Encode { model, .. } | TokenizeRequest::Decode { model, .. } => model,
        }
    }
}

/// The answer to a [`TokenizeRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenizeOutput {
    /// The ids of an `Encode`.
    Tokens(Vec<u32>),
    /// The text of a `Decode`.
    Text(String),
}

/// A request from a node to a coordinator, one per QUIC stream
/// (answered with one [`NodeResponse`]). A coordinator tells nodes from
/// coordinators by the name in the peer's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeRequest {
    /// Registration and load report; see [`NodeHeartbeat`].
    Heartbeat(NodeHeartbeat),
    /// The node is shutting down: stop routing to it now rather than
    /// after its heartbeats time out.
    Leaving {
        /// The node's id (its certificate name).
        node_id: String,
    },
}

/// A coordinator's answer to a [`NodeRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeResponse {
    /// The answer to a heartbeat.
    Heartbeat(HeartbeatReply),
    /// The request was taken into account.
    Ack,
    /// The request was refused, with the reason.
    Refused(String),
}
