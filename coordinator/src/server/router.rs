//! Routing inference requests straight to ready replicas over QUIC.
//!
//! Any coordinator routes without a raft write: it reads the locally
//! applied placements and the node heartbeats it hears, picks a replica
//! (by expected prefix-cache overlap against load, see [`choice`], falling
//! back to power of two choices over its own outstanding requests per
//! node), and streams the request and its events over one QUIC stream. A
//! node that fails before the first token (connection refused, stream
//! reset, silent for too long) gets the request retried once on another
//! replica.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use protocol::quic::{self, STREAM_ERROR_BAD_FRAME};
use protocol::tls::CertRole;
use protocol::{
    frame, GenerateError, GenerateEvent, InferenceRequest, NodeHeartbeat, NodeStreamRequest,
    TensorInferRequest, TokenizeOutput, TokenizeRequest, MAX_NODE_FRAME_BYTES,
};
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use tokio::sync::{mpsc, watch};

use super::choice::{self, Candidate};
use super::nodes::NodeRegistry;
use super::raft_loop::LocalView;
use crate::openai::{InferenceBackend, ModelEntry, RouteError, Routed};
use crate::state::{NodeStatus, PlacementState};

/// The format of the language models nodes serve (the OpenAI routes).
const LLM_FORMAT: &str = "gguf";

/// The format of the ONNX models nodes serve (the v2 routes). Other
/// registered models (federated results) are catalog entries only.
pub const ONNX_FORMAT: &str = "onnx";

/// Capacity of the event channel of one routed request.
const EVENT_QUEUE: usize = 64;

/// Limits and timeouts of routing.
#[derive(Debug, Clone, Copy)]
pub struct RouterConfig {
    /// Requests this coordinator routes at once; one more is refused
    /// (429) until one finishes.
    pub max_in_flight: usize,
    /// A node whose last heartbeat is older than this is not chosen, and
    /// a request waiting on it is failed over.
    pub node_stale_after: Duration,
    /// Longest wait for the next event of a stream (or the first).
    pub event_timeout: Duration,
    /// Time allowed to connect to a node and send the request.
    pub connect_timeout: Duration,
    /// Prefer the replica whose KV cache already holds the request's
    /// prefix (weighed against load); off: power of two choices only.
    pub cache_aware: bool,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            max_in_flight: 256,
            node_stale_after: Duration::from_millis(2000),
            event_timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(2),
            cache_aware: true,
        }
    }
}

/// Routes requests to replicas; cheap to share (`Arc`).
#[derive(Debug)]
pub struct Router {
    endpoint: Endpoint,
    view: watch::Receiver<LocalView>,
    registry: Arc<NodeRegistry>,
    cfg: RouterConfig,
    conns: Mutex<HashMap<String, Connection>>,
    outstanding: Mutex<HashMap<String, usize>>,
    in_flight: Arc<AtomicUsize>,
}

/// Counts one request against this coordinator and one node until dropped.
struct Slot {
    router: Arc<Router>,
    node: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.router.in_flight.fetch_sub(1, Ordering::AcqRel);
        let mut out = self.router.outstanding();
        if let Some(n) = out.get_mut(&self.node) {
            *n = n.saturating_sub(1);
        }
    }
}

impl Router {
    /// A router dialling nodes from `endpoint` (the coordinator's client
    /// endpoint, with its member certificate).
    pub fn new(
        endpoint: Endpoint,
        view: watch::Receiver<LocalView>,
        registry: Arc<NodeRegistry>,
        cfg: RouterConfig,
    ) -> Self {
        Router {
            endpoint,
            view,
            registry,
            cfg,
            conns: Mutex::new(HashMap::new()),
            outstanding: Mutex::new(HashMap::new()),
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn outstanding(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        self.outstanding.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn conns(&self) -> MutexGuard<'_, HashMap<String, Connection>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests being routed by this coordinator now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// The registered models of `format`, by name.
    fn names_of_format(&self, format: &str) -> Vec<String> {
        self.view
            .borrow()
            .state
            .models()
            .iter()
            .filter(|(_, m)| m.format == format)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The registered models and how many replicas of each are ready.
    pub fn model_entries(&self) -> Vec<ModelEntry> {
        self.names_of_format(LLM_FORMAT)
            .into_iter()
            .map(|id| {
                let ready = self.replicas(&id, LLM_FORMAT).map_or(0, |r| r.len());
                ModelEntry {
                    ready_replicas: u32::try_from(ready).unwrap_or(u32::MAX),
                    card: self.registry.card(&id),
                    id,
                }
            })
            .collect()
    }

    /// A real round trip: a one-token greedy generation on a ready replica
    /// of the first model that has one.
    pub async fn round_trip(self: &Arc<Self>) -> Result<(), RouteError> {
        let model = self
            .model_entries()
            .into_iter()
            .find(|m| m.ready_replicas > 0)
            .ok_or_else(|| RouteError::NoReplica("no model has a ready replica".into()))?;
        let req = InferenceRequest {
            model: model.id,
            prompt: protocol::Prompt::Text("Hello".into()),
            allow_special_tokens: false,
            priority: Default::default(),
            constraint: None,
            tools: None,
            logprobs: None,
            max_tokens: Some(1),
            sampling: protocol::SamplingParams::greedy(),
            stop: Vec::new(),
            ignore_eos: true,
            cache_salt: String::new(),
        };
        let mut routed = self.generate(req, None).await?;
        loop {
            match routed.events.recv().await {
                Some(GenerateEvent::Finished { .. }) => return Ok(()),
                Some(GenerateEvent::Failed(e)) => {
                    return Err(RouteError::Unavailable(e.to_string()))
                }
                Some(GenerateEvent::Token { .. } | GenerateEvent::KeepAlive) => {}
                None => return Err(RouteError::Unavailable("the replica went away".into())),
            }
        }
    }

    /// The latest heartbeats, for metrics and status.
    pub fn nodes(&self) -> Vec<(Arc<NodeHeartbeat>, Duration)> {
        self.registry
            .snapshot()
            .into_values()
            .map(|s| (s.heartbeat, s.age))
            .collect()
    }

    /// The registered ONNX model `name`: its ready replicas and the
    /// signature the nodes report (`None` until one has); `None` when no
    /// ONNX model has that name.
    pub fn onnx_model(&self, name: &str) -> Option<(usize, Option<protocol::Signature>)> {
        let onnx = self
            .view
            .borrow()
            .state
            .model(name)
            .is_some_and(|m| m.format == ONNX_FORMAT);
        onnx.then(|| {
            let ready = self.replicas(name, ONNX_FORMAT).map_or(0, |r| r.len());
            (ready, self.registry.signature(name))
        })
    }

    /// Counts a request against this coordinator's in-flight limit (429
    /// past it) until the returned slot is dropped; the slot names no node
    /// until one is chosen.
    fn admit(self: &Arc<Self>) -> Result<Slot, RouteError> {
        let taken = self.in_flight.fetch_add(1, Ordering::AcqRel);
        if taken >= self.cfg.max_in_flight {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return Err(RouteError::Overloaded { retry_after_s: 1 });
        }
        Ok(Slot {
            router: self.clone(),
            node: String::new(),
        })
    }

    /// Ready replicas of `model`, which must be of `format`, with the
    /// prefixes they hold, or why there is none.
    fn replicas(&self, model: &str, format: &str) -> Result<Vec<Candidate>, RouteError> {
        let view = self.view.borrow();
        let state = &view.state;
        match state.model(model) {
            None => return Err(RouteError::UnknownModel(model.to_string())),
            Some(m) if m.format != format => {
                let what = match m.format.as_str() {
                    LLM_FORMAT => "a language model (use /v1/chat/completions or /v1/completions)",
                    ONNX_FORMAT => "an ONNX model (use /v2/models/NAME/infer)",
                    _ => "a stored artifact (e.g. a federated job's result), not a model the nodes serve",
                };
                return Err(RouteError::Invalid(format!("model {model} is {what}")));
            }
            Some(_) => {}
        }
        let ready: Vec<Candidate> = state
            .placements_of(model)
            .filter(|(_, p)| p.state == PlacementState::Ready)
            .filter_map(|(node, _)| {
                let info = state.node(node)?;
                let seen = self.registry.get(node)?;
                (info.status == NodeStatus::Up
                    && seen.age < self.cfg.node_stale_after
                    && seen.serves(model))
                .then(|| Candidate {
                    node: node.clone(),
                    addr: info.addr.clone(),
                    prefixes: seen.prefixes.get(model).cloned(),
                    kv_fill: seen.kv_fill(model),
                })
            })
            .collect();
        if ready.is_empty() {
            return Err(RouteError::NoReplica(model.to_string()));
        }
        Ok(ready)
    }

    /// Picks a replica for a request whose prompt has text spans `spans`.
    fn choose(&self, candidates: Vec<Candidate>, spans: &[u64]) -> Option<Candidate> {
        let out = self.outstanding();
        let load = |c: &Candidate| out.get(&c.node).copied().unwrap_or(0);
        let spans = if self.cfg.cache_aware { spans } else { &[] };
        let pick = choice::pick(&candidates, spans, load, &mut rand::thread_rng());
        drop(out);
        pick.and_then(|i| candidates.into_iter().nth(i))
    }

    /// Routes `req` to a ready replica (first to `prefer`, when it is one)
    /// and returns its event stream once the node has answered with a
    /// first event. A node that fails before that is dropped and the
    /// request tried once more on another replica.
    pub async fn generate(
        self: &Arc<Self>,
        req: InferenceRequest,
        prefer: Option<String>,
    ) -> Result<Routed, RouteError> {
        let mut slot = self.admit()?;
        let mut tried: Vec<String> = Vec::new();
        let mut errors = Vec::new();
        let spans = if self.cfg.cache_aware {
            protocol::prefix::span_hashes(&req.prompt, &req.cache_salt)
        } else {
            Vec::new()
        };
        for _attempt in 0..2 {
            let candidates: Vec<_> = match self.replicas(&req.model, LLM_FORMAT) {
                Ok(c) => c.into_iter().filter(|c| !tried.contains(&c.node)).collect(),
                Err(e) if errors.is_empty() => return Err(e),
                Err(_) => break,
            };
            let preferred = prefer
                .as_ref()
                .and_then(|p| candidates.iter().position(|c| &c.node == p));
            let pick = match preferred {
                Some(i) => candidates.into_iter().nth(i),
                None => self.choose(candidates, &spans),
            };
            let Some(Candidate { node, addr, .. }) = pick else {
                break;
            };
            tried.push(node.clone());
            *self.outstanding().entry(node.clone()).or_insert(0) += 1;
            slot.node = node.clone();
            match self.open(&node, &addr, &req).await {
                Ok((send, mut recv, first)) => {
                    if let GenerateEvent::Failed(GenerateError::Unavailable(m)) = &first {
                        // The replica is restarting or unloading: try another.
                        errors.push(format!("{node}: {m}"));
                        let _ = recv.stop(STREAM_ERROR_BAD_FRAME);
                        self.release_node(&mut slot);
                        continue;
                    }
                    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
                    let router = self.clone();
                    let node_id = node.clone();
                    let terminal = first.is_terminal();
                    let _ = tx.try_send(first);
                    if !terminal {
                        tokio::spawn(async move {
                            router.pump(&node_id, send, recv, tx).await;
                            drop(slot);
                        });
                    }
                    return Ok(Routed { node, events: rx });
                }
                Err(e) => {
                    tracing::warn!(node = %node, "routing failed before the first event: {e}");
                    self.forget(&node);
                    errors.push(format!("{node}: {e}"));
                    self.release_node(&mut slot);
                }
            }
        }
        Err(RouteError::Unavailable(format!(
            "replicas failed: {}",
            errors.join("; ")
        )))
    }

    /// Tokenizes or detokenizes on a ready replica of the request's model
    /// (the coordinator has no tokenizer); a replica that cannot answer is
    /// dropped and the next one tried.
    pub async fn tokenize(&self, req: TokenizeRequest) -> Result<TokenizeOutput, RouteError> {
        let mut errors = Vec::new();
        for Candidate { node, addr, .. } in
            self.replicas(req.model(), LLM_FORMAT)?.into_iter().take(2)
        {
            let first = NodeStreamRequest::Tokenize(req.clone());
            match self.one_answer(&node, &addr, &first).await {
                Ok(answer) => match answered(answer) {
                    Err(RouteError::Unavailable(m)) => errors.push(format!("{node}: {m}")),
                    done => return done,
                },
                Err(e) => {
                    self.forget(&node);
                    errors.push(format!("{node}: {e}"));
                }
            }
        }
        Err(RouteError::Unavailable(format!(
            "replicas failed: {}",
            errors.join("; ")
        )))
    }

    /// Runs an ONNX model on a ready replica, chosen by power of two
    /// choices over this coordinator's outstanding requests; a replica
    /// that cannot answer (down, restarting) is dropped and another tried.
    pub async fn infer(
        self: &Arc<Self>,
        req: TensorInferRequest,
    ) -> Result<Vec<protocol::NamedTensor>, RouteError> {
        let mut slot = self.admit()?;
        let model = req.model.clone();
        let first = NodeStreamRequest::Infer(req);
        let mut tried: Vec<String> = Vec::new();
        let mut errors = Vec::new();
        for _attempt in 0..2 {
            let candidates: Vec<_> = match self.replicas(&model, ONNX_FORMAT) {
                Ok(c) => c.into_iter().filter(|c| !tried.contains(&c.node)).collect(),
                Err(e) if errors.is_empty() => return Err(e),
                Err(_) => break,
            };
            let Some(Candidate { node, addr, .. }) = self.choose(candidates, &[]) else {
                break;
            };
            tried.push(node.clone());
            *self.outstanding().entry(node.clone()).or_insert(0) += 1;
            slot.node = node.clone();
            match self.one_answer(&node, &addr, &first).await {
                Ok(answer) => match answered(answer) {
                    Err(RouteError::Unavailable(m)) => errors.push(format!("{node}: {m}")),
                    done => return done,
                },
                Err(e) => {
                    tracing::warn!(node = %node, "ONNX inference failed: {e}");
                    self.forget(&node);
                    errors.push(format!("{node}: {e}"));
                }
            }
            self.release_node(&mut slot);
        }
        Err(RouteError::Unavailable(format!(
            "replicas failed: {}",
            errors.join("; ")
        )))
    }

    /// Sends `first` on a new stream to `node` and reads its one answer
    /// frame; a node that goes silent (stale heartbeats) fails it early.
    async fn one_answer<T: serde::de::DeserializeOwned>(
        &self,
        node: &str,
        addr: &str,
        first: &NodeStreamRequest,
    ) -> Result<Result<T, GenerateError>, String> {
        let (mut send, mut recv) = self.send_first(node, addr, first).await?;
        let _ = send.finish();
        let stale = self.cfg.node_stale_after;
        let read = frame::read_frame(&mut recv, MAX_NODE_FRAME_BYTES, self.cfg.event_timeout);
        tokio::select! {
            r = read => r.map_err(|e| e.to_string()),
            _ = self.registry.went_silent(node, stale, stale / 4) => {
                Err(format!("node {node} stopped sending heartbeats"))
            }
        }
    }

    fn release_node(&self, slot: &mut Slot) {
        let mut out = self.outstanding();
        if let Some(n) = out.get_mut(&slot.node) {
            *n = n.saturating_sub(1);
        }
        slot.node.clear();
    }

    fn forget(&self, node: &str) {
        self.conns().remove(node);
    }

    async fn connection(&self, node: &str, addr: &str) -> Result<Connection, String> {
        if let Some(c) = self
            .conns()
            .get(node)
            .filter(|c| c.close_reason().is_none())
        {
            return Ok(c.clone());
        }
        let sock: SocketAddr = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| format!("cannot resolve {addr}: {e}"))?
            .next()
            .ok_or_else(|| format!("{addr} resolves to nothing"))?;
        let c = quic::connect(
            &self.endpoint,
            sock,
            node,
            CertRole::Node,
            self.cfg.connect_timeout,
        )
        .await
        .map_err(|e| e.to_string())?;
        self.conns().insert(node.to_string(), c.clone());
        Ok(c)
    }

    /// Opens a bidirectional stream to `node` (at the address the state
    /// records), for exchanges other than inference (federated rounds).
    pub async fn open_stream(&self, node: &str) -> Result<(SendStream, RecvStream), String> {
        let addr = self
            .view
            .borrow()
            .state
            .node(node)
            .map(|n| n.addr.clone())
            .ok_or_else(|| format!("unknown node {node}"))?;
        let conn = self.connection(node, &addr).await?;
        match tokio::time::timeout(self.cfg.connect_timeout, conn.open_bi()).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => {
                self.forget(node);
                Err(e.to_string())
            }
            Err(_) => {
                self.forget(node);
                Err("timed out opening a stream".into())
            }
        }
    }

    /// Opens a stream, sends the request and waits for the first event.
    async fn open(
        &self,
        node: &str,
        addr: &str,
        req: &InferenceRequest,
    ) -> Result<(SendStream, RecvStream, GenerateEvent), String> {
        let first = NodeStreamRequest::Inference(req.clone());
        let (send, mut recv) = self.send_first(node, addr, &first).await?;
        let first = self.next_event(node, &mut recv).await?;
        Ok((send, recv, first))
    }

    /// Opens a stream to `node` and sends its first frame.
    async fn send_first(
        &self,
        node: &str,
        addr: &str,
        first: &NodeStreamRequest,
    ) -> Result<(SendStream, RecvStream), String> {
        let conn = self.connection(node, addr).await?;
        let (mut send, recv) = tokio::time::timeout(self.cfg.connect_timeout, conn.open_bi())
            .await
            .map_err(|_| "timed out opening a stream".to_string())?
            .map_err(|e| e.to_string())?;
        frame::write_frame(
            &mut send,
            first,
            MAX_NODE_FRAME_BYTES,
            self.cfg.connect_timeout,
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok((send, recv))
    }

    /// The next event from `node`, failing if the node goes silent
    /// (stale heartbeats) or the stream breaks.
    async fn next_event(&self, node: &str, recv: &mut RecvStream) -> Result<GenerateEvent, String> {
        let stale = self.cfg.node_stale_after;
        let read = frame::read_frame::<_, GenerateEvent>(
            recv,
            MAX_NODE_FRAME_BYTES,
            self.cfg.event_timeout,
        );
        tokio::select! {
            r = read => r.map_err(|e| e.to_string()),
            _ = self.registry.went_silent(node, stale, stale / 4) => {
                Err(format!("node {node} stopped sending heartbeats"))
            }
        }
    }

    /// Forwards events until the terminal one; stops the node stream at
    /// once if the receiver goes away (the client disconnected).
    async fn pump(
        &self,
        node: &str,
        mut send: SendStream,
        mut recv: RecvStream,
        tx: mpsc::Sender<GenerateEvent>,
    ) {
        loop {
            let next = tokio::select! {
                _ = tx.closed() => {
                    let _ = send.reset(STREAM_ERROR_BAD_FRAME);
                    let _ = recv.stop(STREAM_ERROR_BAD_FRAME);
                    return;
                }
                e = self.next_event(node, &mut recv) => e,
            };
            let event = match next {
                Ok(e) => e,
                Err(e) => {
                    self.forget(node);
                    GenerateEvent::Failed(GenerateError::Unavailable(format!(
                        "node {node} failed mid-stream: {e}"
                    )))
                }
            };
            let terminal = event.is_terminal();
            if tx.send(event).await.is_err() {
                let _ = send.reset(STREAM_ERROR_BAD_FRAME);
                let _ = recv.stop(STREAM_ERROR_BAD_FRAME);
                return;
            }
            if terminal {
                let _ = send.finish();
                return;
            }
        }
    }
}

/// A node's one-frame answer as the API's result: a node that is
/// restarting or unloading the model (`Unavailable`) is for the caller to
/// retry elsewhere.
fn answered<T>(answer: Result<T, GenerateError>) -> Result<T, RouteError> {
    answer.map_err(|e| match e {
        GenerateError::Unavailable(m) => RouteError::Unavailable(m),
        GenerateError::InvalidRequest(m) => RouteError::Invalid(m),
        GenerateError::UnknownModel(m) => RouteError::UnknownModel(m),
        GenerateError::Overloaded(_) => RouteError::Overloaded { retry_after_s: 1 },
    })
}

/// The OpenAI layer's view of the cluster: the [`Router`] and the
/// replicated store of Responses API answers.
#[derive(Debug, Clone)]
pub struct RouterBackend {
    /// Routes requests to replicas.
    pub router: Arc<Router>,
    /// Stored responses.
    pub responses: Arc<super::responses_store::ReplicatedResponses>,
}

impl crate::v2::TensorBackend for RouterBackend {
    fn onnx_model(&self, name: &str) -> Option<crate::v2::OnnxModelEntry> {
        let (ready_replicas, signature) = self.router.onnx_model(name)?;
        Some(crate::v2::OnnxModelEntry {
            name: name.to_string(),
            ready_replicas,
            signature,
        })
    }

    fn infer(
        &self,
        req: TensorInferRequest,
    ) -> impl std::future::Future<Output = Result<Vec<protocol::NamedTensor>, RouteError>> + Send
    {
        let router = self.router.clone();
        async move { router.infer(req).await }
    }
}

impl InferenceBackend for RouterBackend {
    fn models(&self) -> Vec<ModelEntry> {
        self.router.model_entries()
    }

    fn generate(
        &self,
        req: InferenceRequest,
        prefer: Option<String>,
    ) -> impl std::future::Future<Output = Result<Routed, RouteError>> + Send {
        let router = self.router.clone();
        async move { router.generate(req, prefer).await }
    }

    fn ready(&self) -> impl std::future::Future<Output = Result<(), RouteError>> + Send {
        let router = self.router.clone();
        async move { router.round_trip().await }
    }

    fn tokenize(
        &self,
        req: TokenizeRequest,
    ) -> impl std::future::Future<Output = Result<TokenizeOutput, RouteError>> + Send {
        let router = self.router.clone();
        async move { router.tokenize(req).await }
    }

    fn save_response(
        &self,
        id: String,
        record: Vec<u8>,
    ) -> impl std::future::Future<Output = Result<(), RouteError>> + Send {
        let store = self.responses.clone();
        async move { store.save(&id, record).await }
    }

    fn load_response(
        &self,
        id: String,
    ) -> impl std::future::Future<Output = Result<Option<Vec<u8>>, RouteError>> + Send {
        let store = self.responses.clone();
        async move { store.load(&id).await }
    }

    fn delete_response(
        &self,
        id: String,
    ) -> impl std::future::Future<Output = Result<bool, RouteError>> + Send {
        let store = self.responses.clone();
        async move { store.delete(&id).await }
    }
}
