//! The coordinator process: the raft loop ([`raft_loop`]), the QUIC
//! transport between coordinators ([`peers`], [`wire`]) and the admin HTTP
//! API ([`admin`]), wired together by [`run`].

pub mod admin;
pub mod audit_api;
pub mod audit_sink;
pub mod bootstrap;
pub mod certs_api;
pub mod choice;
pub mod config;
pub mod controller;
pub mod http_guard;
pub mod http_serve;
pub mod keys;
pub mod nodes;
pub mod peers;
pub mod raft_loop;
pub mod responses_store;
pub mod router;
pub mod tenants;
pub mod wire;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use protocol::quic::{self, QuicError};
use protocol::tls::{MemberIdentity, TlsError};
use thiserror::Error;
use tokio::sync::{mpsc, watch};

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

/// Largest HTTP request body read (the routes cap theirs lower or equal).
const MAX_HTTP_BODY_BYTES: usize = 4 << 20;

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
    // One slot behind both endpoints: SIGHUP reloads the certificate into
    // it (rotation without a restart).
    let slot = protocol::tls::IdentitySlot::new(&identity)?;
    let server = quic::server_endpoint_with(cfg.raft_addr, slot.clone(), &ca)?;
    let client = quic::client_endpoint_with(slot.clone(), &ca)?;
    let timeout = cfg.request_timeout();

    // A member joining a running group starts with no voters and waits
    // for the leader to add it (and send it a snapshot).
    let voters = if cfg.join { Vec::new() } else { cfg.voters() };
    let mut raft_cfg = RaftNodeConfig::new(cfg.id, voters);
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

    let admin_http = match cfg.admin_http {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Listen { addr, source })?,
        ),
        None => None,
    };

    let addrs: HashMap<u64, _> = cfg
        .peers
        .iter()
        .map(|p| (p.id, (p.raft_addr, p.name.clone())))
        .collect();
    let names: HashMap<String, u64> = cfg.peers.iter().map(|p| (p.name.clone(), p.id)).collect();

    let (inbound_tx, inbound_rx) = mpsc::channel(raft_loop::QUEUE);
    let (req_tx, req_rx) = mpsc::channel(raft_loop::QUEUE);
    let (fb_tx, fb_rx) = mpsc::channel(raft_loop::QUEUE);
    let mut tasks = vec![tokio::spawn(protocol::rotation::reload_on_sighup(
        slot,
        cfg.certs_dir.clone(),
        cfg.name.clone(),
    ))];
    // Raft traffic uses a short timeout: a slow peer must not hold its
    // queue for a whole client timeout.
    let raft_send_timeout =
        (cfg.tick_interval() * cfg.election_ticks as u32).max(Duration::from_millis(500));
    let peers = Arc::new(peers::Peers::new(client.clone(), addrs, raft_send_timeout));
    let names = Arc::new(RwLock::new(names));
    let transport = peers::PeerTransport::new(
        cfg.id,
        peers.clone(),
        names.clone(),
        cfg.peers.iter().map(|p| p.id).collect(),
        fb_tx,
        raft_send_timeout,
    );
    let (view_tx, view_rx) = watch::channel(raft_loop::LocalView::default());
    let registry = Arc::new(nodes::NodeRegistry::new());
    let blobs = Arc::new(crate::fl::BlobStore::new(cfg.data_dir.join("blobs")));
    let responses = Arc::new(responses_store::ReplicatedResponses::new(
        crate::openai::responses::StoreLimits::default(),
        peers.clone(),
        cfg.peers.iter().map(|p| p.id).collect(),
        timeout,
    ));
    tasks.push(tokio::spawn(peers::serve_peers(
        server.clone(),
        peers::PeerServices {
            names,
            inbound: inbound_tx,
            requests: req_tx.clone(),
            registry: registry.clone(),
            view: view_rx.clone(),
            timeout,
            blobs: blobs.clone(),
            responses: responses.clone(),
        },
    )));
    let control = controller::ControlConfig {
        node_down_after: cfg.node_down_after(),
        planner: crate::state::PlannerConfig {
            kv_budget_bytes: cfg.kv_budget_mib.saturating_mul(1 << 20),
        },
        ..controller::ControlConfig::default()
    };
    let members = std::iter::once((cfg.id, (cfg.name.clone(), cfg.raft_addr.to_string())))
        .chain(
            cfg.peers
                .iter()
                .map(|p| (p.id, (p.name.clone(), p.raft_addr.to_string()))),
        )
        .collect();
    tasks.push(tokio::spawn(controller::run(
        view_rx.clone(),
        registry.clone(),
        req_tx.clone(),
        control,
        members,
        timeout,
    )));
    let router = Arc::new(router::Router::new(
        client.clone(),
        view_rx.clone(),
        registry.clone(),
        router::RouterConfig {
            max_in_flight: cfg.max_in_flight,
            node_stale_after: (cfg.node_down_after() * 2 / 3).max(Duration::from_millis(500)),
            cache_aware: cfg.cache_aware_routing,
            ..router::RouterConfig::default()
        },
    ));
    tasks.push(tokio::spawn(crate::fl::driver::run(Arc::new(
        crate::fl::FlContext::new(
            req_tx.clone(),
            view_rx.clone(),
            registry.clone(),
            router.clone(),
            peers.clone(),
            cfg.peers.iter().map(|p| p.id).collect(),
            blobs.clone(),
            cfg.fl_data_dir.clone(),
            cfg.data_dir.join("models"),
            timeout,
        ),
    ))));
    let voters_view = view_rx.clone();
    let auth = Arc::new(crate::auth::AuthLayerState {
        mode: cfg.auth,
        metrics_public: cfg.metrics_public,
        view: view_rx.clone(),
    });
    let admin = Arc::new(admin::Admin {
        id: cfg.id,
        requests: req_tx,
        peers,
        timeout,
        registry,
        view: view_rx,
        blobs,
    });
    if cfg.auth == crate::auth::AuthMode::Off {
        tracing::warn!(
            "auth = \"off\": every HTTP route of this coordinator is open to anyone who can \
             reach {}; use it for local experiments only",
            cfg.http_addr
        );
    }
    let (audit_sink, audit_rx) = crate::audit::AuditSink::new();
    tasks.push(tokio::spawn(audit_sink::run(
        audit_sink.clone(),
        audit_rx,
        admin.clone(),
        cfg.audit,
    )));
    if cfg.bootstrap {
        let path = cfg.admin_key_path();
        let secret = bootstrap::load_or_create(&path)?;
        tracing::info!(file = %path.display(), "bootstrap admin key");
        tasks.push(tokio::spawn(bootstrap::register(admin.clone(), secret)));
    }
    let metrics = Arc::new(crate::openai::Metrics::new());
    let voters = voters_view;
    let quota = Arc::new(crate::quota::QuotaLayerState::new(
        Arc::new(move || voters.borrow().voters.len().max(1)),
        metrics.tenants().clone(),
    ));
    // Layers run outermost last-added first: the key is checked, then its
    // limits, before a body is read; the audit layer sees every answer.
    let guarded = |routes: axum::Router| {
        routes
            .method_not_allowed_fallback(http_guard::method_not_allowed)
            .layer(axum::middleware::from_fn_with_state(
                MAX_HTTP_BODY_BYTES,
                http_guard::guard_body,
            ))
            .layer(axum::middleware::from_fn_with_state(
                quota.clone(),
                crate::quota::enforce,
            ))
            .layer(axum::middleware::from_fn_with_state(
                auth.clone(),
                crate::auth::require_key,
            ))
            .layer(axum::middleware::from_fn_with_state(
                audit_sink.clone(),
                crate::audit::observe,
            ))
    };
    let inference = inference_routes(router, responses, metrics);
    let app = match admin_http {
        None => guarded(admin::router(admin).merge(inference)),
        Some(listener) => {
            // The admin API on its own listener (with /health for probes);
            // the public one no longer knows /admin at all.
            let admin_app = guarded(
                admin::router(admin)
                    .route("/health", axum::routing::get(crate::openai::health))
                    .fallback(crate::openai::no_such_route),
            );
            tasks.push(tokio::spawn(async move {
                let _never = http_serve::serve(listener, admin_app).await;
            }));
            guarded(inference)
        }
    };
    tasks.push(tokio::spawn(async move {
        let _never = http_serve::serve(http, app).await;
    }));

    let raft = raft_loop::RaftLoop::new(
        node,
        Box::new(transport),
        cfg.tick_interval(),
        timeout,
        view_tx,
    );
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

/// The OpenAI-compatible routes, served by `router`, with `/metrics`
/// gauges refreshed from the node heartbeats.
fn inference_routes(
    router: Arc<router::Router>,
    responses: Arc<responses_store::ReplicatedResponses>,
    metrics: Arc<crate::openai::Metrics>,
) -> axum::Router {
    tokio::spawn(refresh_gauges(router.clone(), metrics.clone()));
    let backend = Arc::new(router::RouterBackend { router, responses });
    crate::openai::router(backend.clone(), metrics.clone())
        .merge(crate::v2::router(backend, metrics))
}

/// Copies the routing queue depth and the nodes' running and waiting
/// sequences and KV cache figures into the metrics, every second, until
/// the router is gone.
async fn refresh_gauges(router: Arc<router::Router>, metrics: Arc<crate::openai::Metrics>) {
    let router = Arc::downgrade(&router);
    let mut known: std::collections::BTreeSet<String> = Default::default();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(router) = router.upgrade() else {
            return;
        };
        metrics.set_queue_depth(i64::try_from(router.in_flight()).unwrap_or(i64::MAX));
        let mut seen = std::collections::BTreeSet::new();
        for (hb, _) in router.nodes() {
            let running: u32 = hb.replicas.iter().map(|r| r.running).sum();
            let waiting: u32 = hb.replicas.iter().map(|r| r.waiting).sum();
            metrics.set_node_sequences(&hb.node_id, running.into(), waiting.into());
            for r in &hb.replicas {
                if let Some(kv) = &r.kv {
                    metrics.set_node_kv(&r.model, &hb.node_id, kv);
                }
            }
            seen.insert(hb.node_id.clone());
        }
        for gone in known.difference(&seen) {
            metrics.forget_node(gone);
        }
        known = seen;
    }
}
