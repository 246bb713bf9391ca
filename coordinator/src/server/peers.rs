//! QUIC transport between coordinators: the client side ([`Peers`], one
//! cached connection per peer, and per-peer raft sender tasks) and the
//! server side ([`serve_peers`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protobuf::Message as PbMessage;
use protocol::quic::{self, QuicError};
use quinn::{Connection, Endpoint};
use tokio::sync::{mpsc, oneshot};

use super::raft_loop::{Feedback, LoopRequest};
use super::wire::{PeerRequest, PeerResponse, WriteReply, MAX_PEER_FRAME_BYTES};
use crate::raft::{Message, MessageType, SnapshotStatus};

/// Capacity of each per-peer outbound raft message queue.
pub const PEER_QUEUE: usize = 1024;
/// Most raft messages sent in one frame.
const MAX_BATCH: usize = 256;

/// Client side of the coordinator-to-coordinator transport.
#[derive(Debug)]
pub struct Peers {
    endpoint: Endpoint,
    addrs: HashMap<u64, (SocketAddr, String)>,
    conns: Mutex<HashMap<u64, Connection>>,
    connect_timeout: Duration,
}

impl Peers {
    /// A transport reaching `addrs` (id → (address, member name)) from
    /// `endpoint`.
    pub fn new(
        endpoint: Endpoint,
        addrs: HashMap<u64, (SocketAddr, String)>,
        connect_timeout: Duration,
    ) -> Self {
        Peers {
            endpoint,
            addrs,
            conns: Mutex::new(HashMap::new()),
            connect_timeout,
        }
    }

    fn cached(&self, id: u64) -> Option<Connection> {
        let conns = self.conns.lock().ok()?;
        conns
            .get(&id)
            .filter(|c| c.close_reason().is_none())
            .cloned()
    }

    fn forget(&self, id: u64) {
        if let Ok(mut conns) = self.conns.lock() {
            conns.remove(&id);
        }
    }

    async fn conn(&self, id: u64) -> Result<Connection, String> {
        if let Some(c) = self.cached(id) {
            return Ok(c);
        }
        let (addr, name) = self
            .addrs
            .get(&id)
            .ok_or_else(|| format!("unknown peer {id}"))?;
        let c = quic::connect(&self.endpoint, *addr, name, self.connect_timeout)
            .await
            .map_err(|e| format!("connect to {name} ({addr}): {e}"))?;
        if let Ok(mut conns) = self.conns.lock() {
            conns.insert(id, c.clone());
        }
        Ok(c)
    }

    /// Sends one request to peer `id` and waits (at most `timeout`) for
    /// its answer; a failed connection is dropped and re-made next time.
    pub async fn request(
        &self,
        id: u64,
        req: &PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, String> {
        let conn = self.conn(id).await?;
        match quic::request::<PeerRequest, PeerResponse>(&conn, req, MAX_PEER_FRAME_BYTES, timeout)
            .await
        {
            Ok(r) => Ok(r),
            Err(e) => {
                self.forget(id);
                Err(e.to_string())
            }
        }
    }
}

/// Runs the raft sender of peer `to`: batches queued messages into one
/// frame, reconnects with backoff, and reports failures to the raft loop.
pub async fn peer_sender(
    from: u64,
    to: u64,
    peers: Arc<Peers>,
    mut rx: mpsc::Receiver<Message>,
    feedback: mpsc::Sender<Feedback>,
    timeout: Duration,
) {
    let mut backoff = Duration::from_millis(50);
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let snapshot = batch
            .iter()
            .any(|m| m.get_msg_type() == MessageType::MsgSnapshot);
        let mut msgs = Vec::with_capacity(batch.len());
        for m in &batch {
            match m.write_to_bytes() {
                Ok(b) => msgs.push(b),
                Err(e) => tracing::warn!("cannot encode raft message: {e}"),
            }
        }
        let req = PeerRequest::Raft { from, msgs };
        let ok = matches!(
            peers.request(to, &req, timeout).await,
            Ok(PeerResponse::Ack)
        );
        if snapshot {
            let status = if ok {
                SnapshotStatus::Finish
            } else {
                SnapshotStatus::Failure
            };
            let _ = feedback.try_send(Feedback::Snapshot(to, status));
        }
        if ok {
            backoff = Duration::from_millis(50);
        } else {
            let _ = feedback.try_send(Feedback::Unreachable(to));
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }
}

/// Accepts coordinator connections on `endpoint` until it is closed.
/// Only members named in `names` (member name → raft id) are served.
pub async fn serve_peers(
    endpoint: Endpoint,
    names: Arc<HashMap<String, u64>>,
    inbound: mpsc::Sender<Message>,
    requests: mpsc::Sender<LoopRequest>,
    timeout: Duration,
) {
    loop {
        match quic::accept_connection(&endpoint, timeout).await {
            Ok(Some(conn)) => {
                tokio::spawn(serve_conn(
                    conn,
                    names.clone(),
                    inbound.clone(),
                    requests.clone(),
                    timeout,
                ));
            }
            Ok(None) => break,
            Err(e) => tracing::debug!("peer connection failed: {e}"),
        }
    }
}

async fn serve_conn(
    conn: Connection,
    names: Arc<HashMap<String, u64>>,
    inbound: mpsc::Sender<Message>,
    requests: mpsc::Sender<LoopRequest>,
    timeout: Duration,
) {
    let Some(peer_id) = quic::peer_name(&conn).and_then(|n| names.get(&n).copied()) else {
        conn.close(quic::CLOSE_NORMAL, b"not a coordinator of this group");
        return;
    };
    loop {
        match quic::accept_stream(&conn, quic::IDLE_TIMEOUT * 2).await {
            Ok(Some((send, recv))) => {
                let inbound = inbound.clone();
                let requests = requests.clone();
                tokio::spawn(async move {
                    let r = quic::serve_stream(
                        send,
                        recv,
                        MAX_PEER_FRAME_BYTES,
                        timeout + Duration::from_secs(1),
                        |req: PeerRequest| handle(peer_id, req, inbound, requests, timeout),
                    )
                    .await;
                    if let Err(e) = r {
                        tracing::debug!("peer stream from {peer_id}: {e}");
                    }
                });
            }
            Ok(None) => break,
            Err(QuicError::Timeout(_)) => continue,
            Err(e) => {
                tracing::debug!("peer connection from {peer_id} ended: {e}");
                break;
            }
        }
    }
}

async fn handle(
    peer_id: u64,
    req: PeerRequest,
    inbound: mpsc::Sender<Message>,
    requests: mpsc::Sender<LoopRequest>,
    timeout: Duration,
) -> PeerResponse {
    match req {
        PeerRequest::Raft { from, msgs } => {
            if from != peer_id {
                return PeerResponse::Refused(format!("sender {from} is not {peer_id}"));
            }
            for bytes in msgs {
                let msg = match Message::parse_from_bytes(&bytes) {
                    Ok(m) => m,
                    Err(e) => return PeerResponse::Refused(format!("bad raft message: {e}")),
                };
                if msg.from != peer_id {
                    return PeerResponse::Refused("raft message from another member".into());
                }
                // Never block on a full queue: raft retransmits.
                if inbound.try_send(msg).is_err() {
                    tracing::debug!("raft inbound queue full; dropping a message");
                }
            }
            PeerResponse::Ack
        }
        PeerRequest::Forward { op } => {
            PeerResponse::Write(submit_write(&requests, op, timeout).await)
        }
    }
}

/// Hands a write to the local raft loop and waits for its outcome, at
/// most `timeout`.
pub async fn submit_write(
    requests: &mpsc::Sender<LoopRequest>,
    op: crate::state::Op,
    timeout: Duration,
) -> WriteReply {
    let (tx, rx) = oneshot::channel();
    let unavailable = |m: &str| WriteReply::Unavailable {
        message: m.to_string(),
    };
    let fut = async {
        if requests
            .send(LoopRequest::Propose { op, reply: tx })
            .await
            .is_err()
        {
            return unavailable("the raft loop has stopped");
        }
        rx.await
            .unwrap_or_else(|_| unavailable("the raft loop dropped the request"))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| unavailable("timed out waiting for the write to commit"))
}
