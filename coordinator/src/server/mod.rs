//! The coordinator process: the raft loop ([`raft_loop`]), the QUIC
//! transport between coordinators ([`peers`], [`wire`]) and the admin HTTP
//! API ([`http`]), wired together by [`run`].

pub mod config;
pub mod http;
pub mod peers;
pub mod raft_loop;
pub mod wire;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use protocol::quic::{self, QuicError};
use protocol::tls::{MemberIdentity, TlsError};
use thiserror::Error;
use tokio::sync::mpsc;

pub use config::{CoordinatorConfig, PeerConfig};

use crate::raft::{NodeError, RaftNode, RaftNodeConfig};

/// Why the coordinator could not start or stopped.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The configuration file is unreadable or invalid.
    #[error("configuration {path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The certificates could not be loaded.
    #[error("cannot load the certificates")]
    Tls(#[from] TlsError),
    /// A QUIC endpoint could not be created.
    #[error("cannot start QUIC")]
    Quic(#[from] QuicError),
    /// The raft node failed (storage).
    #[error("raft node failed")]
    Node(#[from] NodeError),
    /// The HTTP listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The raft loop task died.
    #[error("raft loop task failed: {0}")]
    Task(String),
}

/// Runs a coordinator until `shutdown` completes or the raft loop fails.
///
/// The raft loop does its fsyncs on a runtime worker thread; a
/// multi-threaded runtime keeps the network tasks responsive meanwhile.
pub async fn run(
    cfg: CoordinatorConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let identity = MemberIdentity::load(&cfg.certs_dir, &cfg.name)?;
    let ca = identity.ca_cert_der()?;
    let server = quic::server_endpoint(cfg.raft_addr, &identity, &ca)?;
    let client = quic::client_endpoint(&identity, &ca)?;
    let timeout = cfg.request_timeout();

    let mut raft_cfg = RaftNodeConfig::new(cfg.id, cfg.voters());
    raft_cfg.tick_interval = cfg.tick_interval();
    raft_cfg.election_tick = cfg.election_ticks;
    raft_cfg.heartbeat_tick = cfg.heartbeat_ticks;
    let node = RaftNode::open(raft_cfg, &cfg.data_dir)?;

    let http = tokio::net::TcpListener::bind(cfg.http_addr)
        .await
        .map_err(|source| ServerError::Listen {
            addr: cfg.http_addr,
            source,
        })?;

    let addrs: HashMap<u64, _> = cfg
        .peers
        .iter()
        .map(|p| (p.id, (p.raft_addr, p.name.clone())))
        .collect();
    let names: HashMap<String, u64> = cfg.peers.iter().map(|p| (p.name.clone(), p.id)).collect();

    let (inbound_tx, inbound_rx) = mpsc::channel(raft_loop::QUEUE);
    let (req_tx, req_rx) = mpsc::channel(raft_loop::QUEUE);
    let (fb_tx, fb_rx) = mpsc::channel(raft_loop::QUEUE);
    let mut tasks = Vec::new();
    let mut outbound = HashMap::new();
    // Raft traffic uses a short timeout: a slow peer must not hold its
    // queue for a whole client timeout.
    let raft_send_timeout =
        (cfg.tick_interval() * cfg.election_ticks as u32).max(Duration::from_millis(500));
    let peers = Arc::new(peers::Peers::new(client.clone(), addrs, raft_send_timeout));
    for p in &cfg.peers {
        let (tx, rx) = mpsc::channel(peers::PEER_QUEUE);
        outbound.insert(p.id, tx);
        tasks.push(tokio::spawn(peers::peer_sender(
            cfg.id,
            p.id,
            peers.clone(),
            rx,
            fb_tx.clone(),
            raft_send_timeout,
        )));
    }
    tasks.push(tokio::spawn(peers::serve_peers(
        server.clone(),
        Arc::new(names),
        inbound_tx,
        req_tx.clone(),
        timeout,
    )));
    let app = Arc::new(http::App {
        requests: req_tx,
        peers,
        timeout,
    });
    tasks.push(tokio::spawn(http::serve_http(http, app)));

    let raft = raft_loop::RaftLoop::new(node, outbound, cfg.tick_interval(), timeout);
    let mut raft_task = tokio::spawn(raft.run(inbound_rx, req_rx, fb_rx));
    tracing::info!(
        id = cfg.id,
        raft = %cfg.raft_addr,
        http = %cfg.http_addr,
        "coordinator started"
    );

    let result = tokio::select! {
        _ = shutdown => Ok(()),
        r = &mut raft_task => match r {
            Ok(Ok(())) => Err(ServerError::Task("raft loop stopped".into())),
            Ok(Err(e)) => Err(e.into()),
            Err(e) => Err(ServerError::Task(e.to_string())),
        },
    };
    for t in &tasks {
        t.abort();
    }
    raft_task.abort();
    server.close(quic::CLOSE_NORMAL, b"shutdown");
    client.close(quic::CLOSE_NORMAL, b"shutdown");
    result
}
