//! The node service: a node process that joins a cluster of coordinators.
//!
//! - [`inference`]: a QUIC server (mutual TLS) on which the coordinators'
//!   router opens one bidirectional stream per inference request.
//! - [`heartbeat`]: every `heartbeat_interval`, a [`protocol::NodeHeartbeat`]
//!   to every configured coordinator, concurrently.
//! - [`reconcile`]: the coordinators' replies say which models to run; the
//!   node loads and unloads models to match.
//!
//! ```no_run
//! # async fn example(cfg: node::service::ServiceConfig) -> Result<(), node::service::ServiceError> {
//! let service = node::service::NodeService::start(cfg).await?;
//! // ... serve until asked to stop ...
//! service.shutdown().await;
//! # Ok(())
//! # }
//! ```

pub mod heartbeat;
pub mod inference;
pub mod reconcile;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use backends::engine::EngineConfig;
use protocol::quic::{self, QuicError};
use protocol::tls::{MemberIdentity, TlsError};
use protocol::ServableModel;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use crate::fl_worker::FlConfig;
use crate::fl_worker::FlShared;
pub use heartbeat::CoordinatorAddr;

use crate::node::{Node, NodeError};
use crate::onnx_worker::{is_onnx_file, OnnxSettings};
use crate::restart::RestartBudget;

/// Default interval between heartbeats.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);

/// How long shutdown waits for the service's tasks.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Heartbeat replies buffered for the reconciler.
const REPLY_QUEUE: usize = 64;

/// A model file this node can serve when a coordinator assigns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServableFile {
    /// Model name (as registered in the cluster).
    pub name: String,
    /// GGUF file.
    pub path: PathBuf,
}

/// Everything the node service needs.
#[derive(Debug)]
pub struct ServiceConfig {
    /// The node's certificate; its name is the node id.
    pub identity: MemberIdentity,
    /// QUIC listen address for inference streams.
    pub listen: SocketAddr,
    /// Address coordinators should dial (host:port); `None`: the bound
    /// listen address.
    pub advertise_addr: Option<String>,
    /// CPU cores announced for inference.
    pub cores: u32,
    /// Memory announced for models and KV caches, in bytes.
    pub memory_bytes: u64,
    /// Interval between heartbeats.
    pub heartbeat_interval: Duration,
    /// Coordinators to send heartbeats to.
    pub coordinators: Vec<CoordinatorAddr>,
    /// Model files this node can serve.
    pub models: Vec<ServableFile>,
    /// Engine limits applied to every loaded model.
    pub engine: EngineConfig,
    /// How ONNX models (`.onnx` files) are served.
    pub onnx: OnnxSettings,
    /// Restart budget of each model's worker.
    pub restart_budget: RestartBudget,
    /// Federated learning: client index and data directory.
    pub fl: FlConfig,
    /// Where the certificate is reloaded from on SIGHUP (rotation without
    /// a restart); `None`: never.
    pub certs_dir: Option<std::path::PathBuf>,
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The identity or CA certificate is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The QUIC endpoints could not be created.
    #[error(transparent)]
    Quic(#[from] QuicError),
    /// A model file cannot be read.
    #[error("model {name}: cannot read {path}: {source}")]
    ModelFile {
        /// Model name.
        name: String,
        /// Its file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// Two servable models share a name.
    #[error("model {0} is listed twice")]
    DuplicateModel(String),
    /// The actor tree did not start.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The listen socket has no address.
    #[error("cannot read the bound address: {0}")]
    LocalAddr(std::io::Error),
}

/// The declared inputs and outputs of an ONNX model file, read with a
/// session that is dropped at once (the coordinators report them); `None`
/// (and a warning) when the file or the runtime cannot be loaded.
fn onnx_signature(
    name: &str,
    path: &std::path::Path,
    settings: &OnnxSettings,
) -> Option<protocol::Signature> {
    match backends::onnx::OnnxModel::load(&settings.runtime, path, 1) {
        Ok(model) => Some(model.signature().clone()),
        Err(e) => {
            tracing::warn!(model = %name, "could not read the ONNX model's signature: {e}");
            None
        }
    }
}

/// A running node service. Dropping it without [`NodeService::shutdown`]
/// leaves its tasks running until the runtime ends.
pub struct NodeService {
    node: Arc<Node>,
    local_addr: SocketAddr,
    server: quinn::Endpoint,
    client: quinn::Endpoint,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    rotation: Option<JoinHandle<()>>,
}

impl NodeService {
    /// Starts the node with no model loaded, binds the QUIC server, and
    /// starts heartbeating to the coordinators; models are loaded when a
    /// coordinator assigns them.
    pub async fn start(cfg: ServiceConfig) -> Result<NodeService, ServiceError> {
        let mut servable = Vec::with_capacity(cfg.models.len());
        let mut files = HashMap::with_capacity(cfg.models.len());
        for m in &cfg.models {
            let meta = std::fs::metadata(&m.path).map_err(|source| ServiceError::ModelFile {
                name: m.name.clone(),
                path: m.path.clone(),
                source,
            })?;
            if files.insert(m.name.clone(), m.path.clone()).is_some() {
                return Err(ServiceError::DuplicateModel(m.name.clone()));
            }
            let (card, signature) = if is_onnx_file(&m.path) {
                (None, onnx_signature(&m.name, &m.path, &cfg.onnx))
            } else {
                match backends::card::read(&m.path) {
                    Ok(card) => (Some(card), None),
                    Err(e) => {
                        tracing::warn!(model = %m.name, "could not read the model's header: {e}");
                        (None, None)
                    }
                }
            };
            servable.push(ServableModel {
                name: m.name.clone(),
                size_bytes: meta.len(),
                card,
                signature,
            });
        }
        let ca = cfg.identity.ca_cert_der()?;
        let slot = protocol::tls::IdentitySlot::new(&cfg.identity)?;
        let server = quic::server_endpoint_with(cfg.listen, slot.clone(), &ca)?;
        let local_addr = server.local_addr().map_err(ServiceError::LocalAddr)?;
        let client = match quic::client_endpoint_with(slot.clone(), &ca) {
            Ok(c) => c,
            Err(e) => {
                server.close(quic::CLOSE_NORMAL, b"startup failed");
                return Err(e.into());
            }
        };
        let node = match Node::start(Vec::new(), cfg.restart_budget.clone()).await {
            Ok(n) => Arc::new(n),
            Err(e) => {
                server.close(quic::CLOSE_NORMAL, b"startup failed");
                client.close(quic::CLOSE_NORMAL, b"startup failed");
                return Err(e.into());
            }
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        let kv_budget = cfg.engine.kv_budget_bytes;
        let info = heartbeat::HeartbeatInfo {
            node_id: cfg.identity.name().to_string(),
            addr: cfg
                .advertise_addr
                .clone()
                .unwrap_or_else(|| local_addr.to_string()),
            cores: cfg.cores,
            memory_bytes: cfg.memory_bytes,
            servable,
            kv_budget_bytes: kv_budget as u64,
            fl_client: cfg.fl.client,
        };
        let fl = Arc::new(FlShared::new(cfg.fl.clone()));
        let interval = cfg.heartbeat_interval.max(Duration::from_millis(10));
        let (beats_tx, beats_rx) = watch::channel(None);
        let (replies_tx, replies_rx) = mpsc::channel(REPLY_QUEUE);
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(inference::serve(
            server.clone(),
            node.clone(),
            fl,
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(heartbeat::source(
            node.clone(),
            info,
            interval,
            beats_tx,
            shutdown_rx.clone(),
        )));
        for c in cfg.coordinators {
            tasks.push(tokio::spawn(heartbeat::link(
                client.clone(),
                c,
                interval,
                beats_rx.clone(),
                replies_tx.clone(),
                shutdown_rx.clone(),
            )));
        }
        drop(replies_tx);
        tasks.push(tokio::spawn(reconcile::run(
            node.clone(),
            files,
            cfg.engine,
            cfg.onnx,
            replies_rx,
            shutdown_rx,
        )));
        let rotation = cfg.certs_dir.map(|dir| {
            tokio::spawn(protocol::rotation::reload_on_sighup(
                slot,
                dir,
                cfg.identity.name().to_string(),
            ))
        });
        tracing::info!(node = %cfg.identity.name(), addr = %local_addr, "node service started");
        Ok(NodeService {
            node,
            local_addr,
            server,
            client,
            shutdown,
            tasks,
            rotation,
        })
    }

    /// The address the QUIC server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The node (load, status, generate) behind the service.
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// Stops heartbeats and reconciliation, cancels in-flight streams,
    /// closes the endpoints and stops every model; every wait is bounded.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        if let Some(r) = &self.rotation {
            r.abort();
        }
        self.server.close(quic::CLOSE_NORMAL, b"node stopping");
        for t in self.tasks {
            if tokio::time::timeout(SHUTDOWN_TIMEOUT, t).await.is_err() {
                tracing::warn!("a node service task did not stop in time");
            }
        }
        self.client.close(quic::CLOSE_NORMAL, b"node stopping");
        let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, self.server.wait_idle()).await;
        self.node.stop().await;
    }
}
