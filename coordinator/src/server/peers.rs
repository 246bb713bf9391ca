//! QUIC transport between coordinators: the client side ([`Peers`], one
//! cached connection per peer, and per-peer raft sender tasks) and the
//! server side ([`serve_peers`]), which also answers worker nodes'
//! heartbeats.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use protobuf::Message as PbMessage;
use protocol::quic::{self, QuicError};
use protocol::tls::CertRole;
use protocol::{NodeRequest, NodeResponse, MAX_NODE_FRAME_BYTES};
use quinn::{Connection, Endpoint};
use tokio::sync::{mpsc, oneshot, watch};

use super::nodes::{assignment, NodeRegistry};
use super::raft_loop::{Feedback, LocalView, LoopRequest, MemberChange, Transport};
use super::wire::{PeerRequest, PeerResponse, WriteReply, MAX_PEER_FRAME_BYTES};
use crate::raft::{Message, MessageType, SnapshotStatus};
use crate::state::ClusterState;

/// Capacity of each per-peer outbound raft message queue.
pub const PEER_QUEUE: usize = 1024;
/// Most raft messages sent in one frame.
const MAX_BATCH: usize = 256;

/// Client side of the coordinator-to-coordinator transport.
#[derive(Debug)]
pub struct Peers {
    endpoint: Endpoint,
    addrs: Mutex<HashMap<u64, (SocketAddr, String)>>,
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
            addrs: Mutex::new(addrs),
            conns: Mutex::new(HashMap::new()),
            connect_timeout,
        }
    }

    /// The address and member name of peer `id`, if known.
    pub fn address(&self, id: u64) -> Option<(SocketAddr, String)> {
        let addrs = self.addrs.lock().unwrap_or_else(|p| p.into_inner());
        addrs.get(&id).cloned()
    }

    /// Records (or changes) the address of peer `id`.
    pub fn set_address(&self, id: u64, addr: SocketAddr, name: String) {
        let mut addrs = self.addrs.lock().unwrap_or_else(|p| p.into_inner());
        if addrs.get(&id) != Some(&(addr, name.clone())) {
            addrs.insert(id, (addr, name));
            drop(addrs);
            self.forget(id);
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
            .address(id)
            .ok_or_else(|| format!("unknown peer {id}"))?;
        let c = quic::connect(
            &self.endpoint,
            addr,
            &name,
            CertRole::Coordinator,
            self.connect_timeout,
        )
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

    /// Sends a write to every peer in `peer_ids` at once; how many of the
    /// coordinators (this one, which already holds it, and the peers that
    /// acknowledged) hold it now.
    pub async fn replicate(
        &self,
        peer_ids: &[u64],
        req: &PeerRequest,
        timeout: Duration,
    ) -> Holders {
        let sends = peer_ids.iter().map(|&id| self.request(id, req, timeout));
        let acks = futures_util::future::join_all(sends)
            .await
            .into_iter()
            .filter(|r| matches!(r, Ok(PeerResponse::Ack)))
            .count();
        Holders {
            holders: acks + 1,
            members: peer_ids.len() + 1,
        }
    }
}

/// How many coordinators hold a replicated record, of how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holders {
    /// Coordinators holding it, this one included.
    pub holders: usize,
    /// Coordinators in the cluster.
    pub members: usize,
}

impl Holders {
    /// Whether the holders are a majority, so that any other majority
    /// (every quorum that can answer a read) contains one of them.
    pub fn is_majority(self) -> bool {
        self.holders * 2 > self.members
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

/// What the QUIC server side needs to answer coordinators and nodes.
#[derive(Debug, Clone)]
pub struct PeerServices {
    /// Coordinator member name → raft id (grows as members are added).
    pub names: Arc<RwLock<HashMap<String, u64>>>,
    /// Raft messages to the local raft loop.
    pub inbound: mpsc::Sender<Message>,
    /// Client requests to the local raft loop (forwarded writes).
    pub requests: mpsc::Sender<LoopRequest>,
    /// Node heartbeats.
    pub registry: Arc<NodeRegistry>,
    /// The locally applied state (for node assignments).
    pub view: watch::Receiver<LocalView>,
    /// Request timeout.
    pub timeout: Duration,
    /// Checkpoint blobs.
    pub blobs: Arc<crate::fl::BlobStore>,
    /// Stored Responses API answers.
    pub responses: Arc<super::responses_store::ReplicatedResponses>,
}

/// Accepts connections on `endpoint` until it is closed: coordinators
/// (named in `names`) speak [`PeerRequest`]s, every other member of the
/// cluster CA is a worker node speaking [`NodeRequest`]s.
pub async fn serve_peers(endpoint: Endpoint, services: PeerServices) {
    loop {
        match quic::accept_connection(&endpoint, services.timeout).await {
            Ok(Some(conn)) => {
                tokio::spawn(serve_conn(conn, services.clone()));
            }
            Ok(None) => break,
            Err(e) => tracing::debug!("peer connection failed: {e}"),
        }
    }
}

async fn serve_conn(conn: Connection, services: PeerServices) {
    let Some(name) = quic::peer_name(&conn) else {
        conn.close(quic::CLOSE_NORMAL, b"no member name in the certificate");
        return;
    };
    let peer_id = services
        .names
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&name)
        .copied();
    // The certificate's role says what the peer may speak: a coordinator
    // certificate of a member, raft and peer requests; a node certificate,
    // heartbeats under its own name (even if a coordinator was recorded
    // under that name).
    let peer_id = match traffic_for(quic::peer_role(&conn), peer_id) {
        Ok(p) => p,
        Err(reason) => {
            tracing::warn!(peer = %name, remote = %conn.remote_address(), "connection refused: {reason}");
            conn.close(quic::CLOSE_NORMAL, reason.as_bytes());
            return;
        }
    };
    let fingerprint = quic::peer_fingerprint(&conn).unwrap_or_default();
    if services.view.borrow().state.is_revoked(&fingerprint) {
        tracing::warn!(peer = %name, remote = %conn.remote_address(), "connection refused: its certificate is revoked");
        conn.close(quic::CLOSE_NORMAL, b"certificate revoked");
        return;
    }
    if let Err(e) = quic::accept_hello(&conn, services.timeout).await {
        tracing::warn!(peer = %name, remote = %conn.remote_address(), "connection refused: {e}");
        return;
    }
    tokio::spawn(close_when_revoked(
        conn.clone(),
        fingerprint.clone(),
        name.clone(),
        peer_id.is_none().then(|| services.registry.clone()),
        services.view.clone(),
    ));
    loop {
        match quic::accept_stream(&conn, quic::IDLE_TIMEOUT * 2).await {
            Ok(Some((send, recv))) => {
                let services = services.clone();
                let name = name.clone();
                let fingerprint = fingerprint.clone();
                tokio::spawn(async move {
                    let timeout = services.timeout + Duration::from_secs(1);
                    let r = match peer_id {
                        Some(peer_id) => {
                            quic::serve_stream(
                                send,
                                recv,
                                MAX_PEER_FRAME_BYTES,
                                timeout,
                                |req: PeerRequest| handle(peer_id, req, services),
                            )
                            .await
                        }
                        None => {
                            quic::serve_stream(
                                send,
                                recv,
                                MAX_NODE_FRAME_BYTES,
                                timeout,
                                |req: NodeRequest| async move {
                                    handle_node(&name, &fingerprint, req, &services)
                                },
                            )
                            .await
                        }
                    };
                    if let Err(e) = r {
                        tracing::debug!("peer stream: {e}");
                    }
                });
            }
            Ok(None) => break,
            Err(QuicError::Timeout(_)) => continue,
            Err(e) => {
                tracing::debug!("peer connection from {name} ended: {e}");
                break;
            }
        }
    }
}

/// Closes `conn` as soon as the applied state revokes its certificate
/// (and forgets the node's heartbeat, so nothing is routed to it); ends
/// with the connection.
async fn close_when_revoked(
    conn: Connection,
    fingerprint: String,
    name: String,
    registry: Option<Arc<NodeRegistry>>,
    mut view: watch::Receiver<LocalView>,
) {
    loop {
        tokio::select! {
            _ = conn.closed() => return,
            changed = view.changed() => {
                if changed.is_err() {
                    return;
                }
                if view.borrow_and_update().state.is_revoked(&fingerprint) {
                    tracing::warn!(peer = %name, "certificate revoked: closing its connection");
                    if let Some(registry) = &registry {
                        registry.remove(&name);
                    }
                    conn.close(quic::CLOSE_NORMAL, b"certificate revoked");
                    return;
                }
            }
        }
    }
}

/// What a connection may carry, from its certificate's role and whether
/// its name is a coordinator member's: `Some(id)` peer traffic of member
/// `id`, `None` node traffic, `Err` the reason it is refused.
fn traffic_for(role: Option<CertRole>, member: Option<u64>) -> Result<Option<u64>, String> {
    match (role, member) {
        (Some(CertRole::Coordinator), Some(id)) => Ok(Some(id)),
        (Some(CertRole::Coordinator), None) => {
            Err("a coordinator certificate whose name is not a member".into())
        }
        (Some(CertRole::Node), _) => Ok(None),
        (None, _) => Err("a certificate with no role (issue it with --role)".into()),
    }
}

/// Answers a node: records its heartbeat and tells it what to run.
fn handle_node(
    name: &str,
    fingerprint: &str,
    req: NodeRequest,
    services: &PeerServices,
) -> NodeResponse {
    match req {
        NodeRequest::Heartbeat(hb) => {
            if services.view.borrow().state.is_revoked(fingerprint) {
                services.registry.remove(name);
                return NodeResponse::Refused("this node's certificate is revoked".into());
            }
            if hb.node_id != name {
                return NodeResponse::Refused(format!(
                    "node id {:?} is not the certificate's name {name:?}",
                    hb.node_id
                ));
            }
            if !services.registry.record(hb, fingerprint) {
                return NodeResponse::Refused("too many nodes".into());
            }
            let view = services.view.borrow();
            NodeResponse::Heartbeat(assignment(&view.state, name, view.is_leader))
        }
        NodeRequest::Leaving { node_id } => {
            if node_id != name {
                return NodeResponse::Refused(format!(
                    "node id {node_id:?} is not the certificate's name {name:?}"
                ));
            }
            tracing::info!(node = %name, "node leaving");
            services.registry.remove(name);
            NodeResponse::Ack
        }
    }
}

async fn handle(peer_id: u64, req: PeerRequest, services: PeerServices) -> PeerResponse {
    let PeerServices {
        inbound,
        requests,
        timeout,
        ..
    } = services.clone();
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
        PeerRequest::Membership { change } => {
            PeerResponse::Write(submit_membership(&requests, change, timeout).await)
        }
        PeerRequest::PutBlob { hash, bytes } => {
            let store = services.blobs.clone();
            let stored =
                tokio::task::spawn_blocking(move || store.put_checked(&hash, &bytes)).await;
            match stored {
                Ok(Ok(())) => PeerResponse::Ack,
                Ok(Err(e)) => PeerResponse::Refused(format!("cannot store the blob: {e}")),
                Err(e) => PeerResponse::Refused(format!("blob task failed: {e}")),
            }
        }
        PeerRequest::GetBlob { hash } => PeerResponse::Blob(services.blobs.get(&hash)),
        PeerRequest::PutResponse {
            id,
            record,
            expires_at,
        } => match services.responses.put_local(&id, record, expires_at) {
            Ok(()) => PeerResponse::Ack,
            Err(e) => PeerResponse::Refused(e.to_string()),
        },
        PeerRequest::GetResponse { id } => {
            PeerResponse::Blob(services.responses.get_local(&id).map(|(r, _)| r))
        }
        PeerRequest::DeleteResponse { id } => {
            services.responses.delete_local(&id);
            PeerResponse::Ack
        }
        PeerRequest::AuditHash { seq } => {
            let view = services.view.borrow();
            let audit = view.state.audit();
            PeerResponse::AuditHash {
                head_seq: audit.head().seq,
                hash: audit.hash_at(seq).map(str::to_string),
            }
        }
    }
}

/// Hands a membership change to the local raft loop and waits for its
/// outcome, at most `timeout`.
pub async fn submit_membership(
    requests: &mpsc::Sender<LoopRequest>,
    change: MemberChange,
    timeout: Duration,
) -> WriteReply {
    submit(
        requests,
        |reply| LoopRequest::ChangeMembership { change, reply },
        timeout,
        "timed out waiting for the membership change",
    )
    .await
}

/// Sends the request `build` makes to the raft loop and waits (at most
/// `timeout`) for the reply it carries.
async fn submit(
    requests: &mpsc::Sender<LoopRequest>,
    build: impl FnOnce(oneshot::Sender<WriteReply>) -> LoopRequest,
    timeout: Duration,
    timed_out: &str,
) -> WriteReply {
    let (tx, rx) = oneshot::channel();
    let unavailable = |m: &str| WriteReply::Unavailable {
        message: m.to_string(),
    };
    let fut = async {
        if requests.send(build(tx)).await.is_err() {
            return unavailable("the raft loop has stopped");
        }
        rx.await
            .unwrap_or_else(|_| unavailable("the raft loop dropped the request"))
    };
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| unavailable(timed_out))
}

/// The raft loop's [`Transport`]: one queue and sender task per peer,
/// created for the configured peers and for members added at runtime
/// (their addresses come from the replicated coordinator records), and
/// dropped for members that were removed.
pub struct PeerTransport {
    self_id: u64,
    peers: Arc<Peers>,
    names: Arc<RwLock<HashMap<String, u64>>>,
    outbound: HashMap<u64, mpsc::Sender<Message>>,
    configured: BTreeSet<u64>,
    feedback: mpsc::Sender<Feedback>,
    send_timeout: Duration,
}

impl std::fmt::Debug for PeerTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTransport")
            .field("self_id", &self.self_id)
            .field("peers", &self.outbound.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl PeerTransport {
    /// A transport for member `self_id` with a sender for each of the
    /// `configured` peers (whose addresses `peers` already knows).
    pub fn new(
        self_id: u64,
        peers: Arc<Peers>,
        names: Arc<RwLock<HashMap<String, u64>>>,
        configured: BTreeSet<u64>,
        feedback: mpsc::Sender<Feedback>,
        send_timeout: Duration,
    ) -> Self {
        let mut t = PeerTransport {
            self_id,
            peers,
            names,
            outbound: HashMap::new(),
            configured: configured.clone(),
            feedback,
            send_timeout,
        };
        for id in configured {
            t.ensure(id);
        }
        t
    }

    fn ensure(&mut self, id: u64) {
        if id == self.self_id || self.outbound.contains_key(&id) {
            return;
        }
        if self.peers.address(id).is_none() {
            return;
        }
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        self.outbound.insert(id, tx);
        tokio::spawn(peer_sender(
            self.self_id,
            id,
            self.peers.clone(),
            rx,
            self.feedback.clone(),
            self.send_timeout,
        ));
    }
}

impl Transport for PeerTransport {
    fn send(&mut self, msg: Message) -> bool {
        match self.outbound.get(&msg.to) {
            Some(q) => q.try_send(msg).is_ok(),
            None => {
                tracing::debug!("raft message to unknown peer {}", msg.to);
                false
            }
        }
    }

    fn sync(&mut self, voters: &[u64], state: &ClusterState) {
        for (id, info) in state.coordinators() {
            // This member's own configuration wins for the peers it
            // names (their addresses may have changed since recorded).
            if *id == self.self_id || self.configured.contains(id) {
                self.ensure(*id);
                continue;
            }
            let Ok(addr) = info.addr.parse::<SocketAddr>() else {
                continue;
            };
            if self.peers.address(*id) != Some((addr, info.name.clone())) {
                self.peers.set_address(*id, addr, info.name.clone());
                let mut names = self.names.write().unwrap_or_else(|p| p.into_inner());
                names.insert(info.name.clone(), *id);
            }
            self.ensure(*id);
        }
        for id in voters {
            self.ensure(*id);
        }
        let keep = |id: &u64| {
            voters.contains(id)
                || self.configured.contains(id)
                || state.coordinators().contains_key(id)
        };
        let gone: Vec<u64> = self
            .outbound
            .keys()
            .copied()
            .filter(|id| !keep(id))
            .collect();
        for id in gone {
            // Dropping the queue ends its sender task.
            self.outbound.remove(&id);
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
    submit(
        requests,
        |reply| LoopRequest::Propose { op, reply },
        timeout,
        "timed out waiting for the write to commit",
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_safe_once_more_than_half_the_coordinators_hold_it() {
        let held = |holders, members| Holders { holders, members }.is_majority();
        assert!(held(1, 1));
        assert!(!held(1, 2) && held(2, 2));
        assert!(!held(1, 3) && held(2, 3));
        assert!(!held(2, 4) && held(3, 4));
        assert!(!held(2, 5) && held(3, 5));
    }

    #[test]
    fn the_certificate_role_decides_what_a_connection_may_carry() {
        use CertRole::{Coordinator, Node};
        assert_eq!(traffic_for(Some(Coordinator), Some(2)), Ok(Some(2)));
        assert!(traffic_for(Some(Coordinator), None).is_err());
        // A node whose name was (wrongly) recorded as a member still
        // heartbeats as a node and is not marked down.
        assert_eq!(traffic_for(Some(Node), Some(2)), Ok(None));
        assert_eq!(traffic_for(Some(Node), None), Ok(None));
        assert!(traffic_for(None, Some(2)).is_err());
        assert!(traffic_for(None, None).is_err());
    }
}
