//! Heartbeats to every coordinator.
//!
//! One task builds the heartbeat every interval and publishes it on a watch
//! channel; one task per coordinator sends the latest heartbeat over its own
//! cached connection, so a coordinator that is down or slow never delays the
//! others (it just skips beats while it backs off). Replies go to the
//! reconciler over a bounded channel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use protocol::quic;
use protocol::{
    NodeHeartbeat, NodeRequest, NodeResponse, ReplicaReport, ReplicaState, ServableModel,
    MAX_NODE_FRAME_BYTES,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::reconcile::Reply;
use crate::node::{ModelState, ModelStatus, Node};

/// How long one heartbeat exchange may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// How long connecting to a coordinator may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Longest wait between reconnection attempts to a coordinator that is down.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A coordinator to send heartbeats to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordinatorAddr {
    /// Member name in its certificate (TLS server name).
    pub name: String,
    /// Its QUIC address (the `raft_addr` of its configuration).
    pub addr: SocketAddr,
}

/// The fixed part of every heartbeat.
#[derive(Debug, Clone)]
pub(crate) struct HeartbeatInfo {
    pub node_id: String,
    pub addr: String,
    pub cores: u32,
    pub memory_bytes: u64,
    pub servable: Vec<ServableModel>,
    /// KV budget of each loaded model, in bytes.
    pub kv_budget_bytes: u64,
    /// Federated-learning client index, if any.
    pub fl_client: Option<u32>,
}

/// How a model's state is reported to coordinators.
pub fn replica_report(s: &ModelStatus) -> ReplicaReport {
    let (state, error) = match &s.state {
        ModelState::Loading | ModelState::Restarting => (ReplicaState::Loading, None),
        ModelState::Ready => (ReplicaState::Ready, None),
        ModelState::Failed(reason) => (ReplicaState::Failed, Some(reason.clone())),
    };
    ReplicaReport {
        model: s.name.clone(),
        state,
        running: u32::try_from(s.running).unwrap_or(u32::MAX),
        waiting: u32::try_from(s.waiting).unwrap_or(u32::MAX),
        error,
        kv: s.kv.clone(),
    }
}

/// The node's current heartbeat.
pub(crate) async fn build(node: &Node, info: &HeartbeatInfo) -> NodeHeartbeat {
    let status = node.status().await;
    let free_kv_bytes = status
        .iter()
        .map(|s| info.kv_budget_bytes.saturating_sub(s.kv_used_bytes as u64))
        .sum();
    NodeHeartbeat {
        node_id: info.node_id.clone(),
        addr: info.addr.clone(),
        cores: info.cores,
        memory_bytes: info.memory_bytes,
        free_kv_bytes,
        servable: info.servable.clone(),
        replicas: status.iter().map(replica_report).collect(),
        fl_client: info.fl_client,
    }
}

/// Publishes a fresh heartbeat every `interval` until shutdown.
pub(crate) async fn source(
    node: Arc<Node>,
    info: HeartbeatInfo,
    interval: Duration,
    beats: watch::Sender<Option<Arc<NodeHeartbeat>>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = ticker.tick() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        let hb = build(&node, &info).await;
        if beats.send(Some(Arc::new(hb))).is_err() {
            return;
        }
    }
}

/// Sends every new heartbeat to one coordinator, reconnecting with
/// exponential backoff after failures, until shutdown.
pub(crate) async fn link(
    endpoint: quinn::Endpoint,
    coordinator: CoordinatorAddr,
    interval: Duration,
    mut beats: watch::Receiver<Option<Arc<NodeHeartbeat>>>,
    replies: mpsc::Sender<Reply>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conn: Option<quinn::Connection> = None;
    let mut backoff = interval;
    let mut retry_at = Instant::now();
    let mut healthy = true;
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            changed = beats.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
        if *shutdown.borrow() {
            break;
        }
        if Instant::now() < retry_at {
            continue;
        }
        let Some(hb) = beats.borrow_and_update().clone() else {
            continue;
        };
        let outcome = exchange(&endpoint, &coordinator, &mut conn, &hb).await;
        match outcome {
            Ok(NodeResponse::Heartbeat(reply)) => {
                if !healthy {
                    tracing::info!(coordinator = %coordinator.name, "coordinator reachable again");
                }
                healthy = true;
                backoff = interval;
                let reply = Reply {
                    coordinator: coordinator.name.clone(),
                    reply,
                };
                // Bounded: if the reconciler is behind, this reply is stale anyway.
                let _ = replies.try_send(reply);
            }
            Ok(NodeResponse::Ack) => {}
            Ok(NodeResponse::Refused(reason)) => {
                if healthy {
                    tracing::warn!(coordinator = %coordinator.name, %reason, "heartbeat refused");
                }
                healthy = false;
            }
            Err(e) => {
                if healthy {
                    tracing::warn!(coordinator = %coordinator.name, addr = %coordinator.addr,
                        "heartbeat failed: {e}; retrying with backoff");
                } else {
                    tracing::debug!(coordinator = %coordinator.name, "heartbeat failed: {e}");
                }
                healthy = false;
                conn = None;
                retry_at = Instant::now() + backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    if let Some(c) = conn {
        // Best effort: tell the coordinator to stop routing here now.
        let leaving = beats.borrow().as_ref().map(|hb| NodeRequest::Leaving {
            node_id: hb.node_id.clone(),
        });
        if let Some(req) = leaving {
            let _ = quic::request::<NodeRequest, NodeResponse>(
                &c,
                &req,
                MAX_NODE_FRAME_BYTES,
                LEAVE_TIMEOUT,
            )
            .await;
        }
        c.close(quic::CLOSE_NORMAL, b"node stopping");
    }
}

/// How long a leaving node waits for each coordinator's acknowledgement.
const LEAVE_TIMEOUT: Duration = Duration::from_millis(500);

/// One heartbeat over the cached connection, connecting first if needed.
async fn exchange(
    endpoint: &quinn::Endpoint,
    coordinator: &CoordinatorAddr,
    conn: &mut Option<quinn::Connection>,
    hb: &NodeHeartbeat,
) -> Result<NodeResponse, quic::QuicError> {
    let c = match conn.as_ref().filter(|c| c.close_reason().is_none()) {
        Some(c) => c.clone(),
        None => {
            let c = quic::connect(
                endpoint,
                coordinator.addr,
                &coordinator.name,
                protocol::tls::CertRole::Coordinator,
                CONNECT_TIMEOUT,
            )
            .await?;
            *conn = Some(c.clone());
            c
        }
    };
    let req = NodeRequest::Heartbeat(hb.clone());
    quic::request::<NodeRequest, NodeResponse>(&c, &req, MAX_NODE_FRAME_BYTES, REQUEST_TIMEOUT)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: ModelState) -> ModelStatus {
        ModelStatus {
            name: "m".into(),
            state,
            restarts: 0,
            waiting: 2,
            running: 3,
            kv_used_bytes: 0,
            kv: None,
        }
    }

    #[test]
    fn model_states_map_to_replica_states() {
        let r = replica_report(&status(ModelState::Ready));
        assert_eq!((r.state, r.running, r.waiting), (ReplicaState::Ready, 3, 2));
        assert_eq!(
            replica_report(&status(ModelState::Restarting)).state,
            ReplicaState::Loading
        );
        assert_eq!(
            replica_report(&status(ModelState::Loading)).state,
            ReplicaState::Loading
        );
        let f = replica_report(&status(ModelState::Failed("boom".into())));
        assert_eq!(f.state, ReplicaState::Failed);
        assert_eq!(f.error.as_deref(), Some("boom"));
    }
}
