//! The task that owns the [`RaftNode`]: ticks it, steps inbound messages,
//! runs the Ready cycle, hands outbound messages to the per-peer senders,
//! and answers client proposals and linearizable reads.

use std::collections::HashMap;
use std::time::Duration;

use raft::Storage;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::wire::WriteReply;
use crate::raft::{Message, NodeError, ProposalId, RaftNode, SnapshotStatus};
use crate::state::{self, ApplyError, ApplyOutcome, ClusterState, Command, Op};

/// Capacity of the client request and inbound message queues.
pub const QUEUE: usize = 1024;

/// A request from a client-facing task to the raft loop.
#[derive(Debug)]
pub enum LoopRequest {
    /// Propose `op` (leader only); answered once applied or on timeout.
    Propose {
        /// The change.
        op: Op,
        /// Where the outcome goes.
        reply: oneshot::Sender<WriteReply>,
    },
    /// A linearizable read of the state (ReadIndex).
    Read {
        /// Where the state goes, or why it could not be read.
        reply: oneshot::Sender<Result<ReadView, String>>,
    },
}

/// Delivery feedback from the per-peer senders.
#[derive(Debug, Clone, Copy)]
pub enum Feedback {
    /// A message to this peer could not be delivered.
    Unreachable(u64),
    /// A snapshot sent to this peer was (or was not) delivered.
    Snapshot(u64, SnapshotStatus),
}

/// The state as read at a linearizable read point.
#[derive(Debug, Clone)]
pub struct ReadView {
    /// The leader this node knows of (0 if none).
    pub leader_id: u64,
    /// Current term.
    pub term: u64,
    /// Commit index.
    pub commit_index: u64,
    /// Applied index.
    pub applied_index: u64,
    /// Raft voters.
    pub voters: Vec<u64>,
    /// The applied state.
    pub state: ClusterState,
}

type Deadline = Instant;
/// Where a read's answer goes.
type ReadReply = oneshot::Sender<Result<ReadView, String>>;

/// The raft loop: create with [`RaftLoop::new`], then `run`.
pub struct RaftLoop {
    node: RaftNode,
    outbound: HashMap<u64, mpsc::Sender<Message>>,
    timeout: Duration,
    tick: Duration,
    /// Pending proposals: reply, deadline, and the lowest log index the
    /// entry can have (guards against a [`ProposalId`] reused after a
    /// restart matching an entry of the previous incarnation).
    proposals: HashMap<ProposalId, (oneshot::Sender<WriteReply>, Deadline, u64)>,
    reads: HashMap<Vec<u8>, (ReadReply, Deadline)>,
    awaiting_apply: Vec<(u64, ReadReply, Deadline)>,
    next_read: u64,
}

impl std::fmt::Debug for RaftLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftLoop")
            .field("node", &self.node)
            .finish()
    }
}

impl RaftLoop {
    /// A loop for `node` sending to the per-peer queues `outbound`,
    /// failing client requests after `timeout`.
    pub fn new(
        node: RaftNode,
        outbound: HashMap<u64, mpsc::Sender<Message>>,
        tick: Duration,
        timeout: Duration,
    ) -> Self {
        RaftLoop {
            node,
            outbound,
            timeout,
            tick,
            proposals: HashMap::new(),
            reads: HashMap::new(),
            awaiting_apply: Vec::new(),
            next_read: 1,
        }
    }

    /// Runs until every input channel is closed or storage fails.
    pub async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Message>,
        mut requests: mpsc::Receiver<LoopRequest>,
        mut feedback: mpsc::Receiver<Feedback>,
    ) -> Result<(), NodeError> {
        let mut ticker = tokio::time::interval(self.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    self.node.tick();
                    self.expire();
                }
                m = inbound.recv() => match m {
                    Some(m) => {
                        if let Err(e) = self.node.step(m) {
                            tracing::debug!("raft step: {e}");
                        }
                    }
                    None => return Ok(()),
                },
                r = requests.recv() => match r {
                    Some(r) => self.on_request(r),
                    None => return Ok(()),
                },
                f = feedback.recv() => match f {
                    Some(Feedback::Unreachable(id)) => self.node.report_unreachable(id),
                    Some(Feedback::Snapshot(id, s)) => self.node.report_snapshot(id, s),
                    None => return Ok(()),
                },
            }
            self.ready()?;
        }
    }

    fn on_request(&mut self, r: LoopRequest) {
        let deadline = Instant::now() + self.timeout;
        match r {
            LoopRequest::Propose { op, reply } => {
                if !self.node.is_leader() {
                    let _ = reply.send(WriteReply::NotLeader {
                        leader: self.node.leader_id(),
                    });
                    return;
                }
                let bytes = match state::encode(&Command::new(op)) {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = reply.send(WriteReply::Rejected {
                            status: 400,
                            message: e.to_string(),
                        });
                        return;
                    }
                };
                // Every entry is persisted by the Ready cycle that follows
                // the event that created it, so the new entry goes after
                // the stored last index.
                let min_index = match self.node.storage().last_index() {
                    Ok(i) => i + 1,
                    Err(e) => {
                        let _ = reply.send(WriteReply::Unavailable {
                            message: format!("raft storage: {e}"),
                        });
                        return;
                    }
                };
                match self.node.propose(bytes) {
                    Ok(pid) => {
                        self.proposals.insert(pid, (reply, deadline, min_index));
                    }
                    Err(e) => {
                        let _ = reply.send(WriteReply::Unavailable {
                            message: format!("proposal refused: {e}"),
                        });
                    }
                }
            }
            LoopRequest::Read { reply } => {
                if self.node.leader_id() == 0 {
                    let _ = reply.send(Err("no leader known".into()));
                    return;
                }
                let ctx = self.next_read.to_le_bytes().to_vec();
                self.next_read += 1;
                self.node.read_index(ctx.clone());
                self.reads.insert(ctx, (reply, deadline));
            }
        }
    }

    fn ready(&mut self) -> Result<(), NodeError> {
        let out = self.node.on_ready()?;
        for m in out.messages_to_send {
            let to = m.to;
            match self.outbound.get(&to) {
                Some(q) => {
                    if q.try_send(m).is_err() {
                        self.node.report_unreachable(to);
                    }
                }
                None => tracing::debug!("raft message to unknown peer {to}"),
            }
        }
        if !out.proposals_applied.is_empty() {
            let results: HashMap<u64, &Result<ApplyOutcome, ApplyError>> =
                out.applied.iter().map(|(i, r)| (*i, r)).collect();
            for (pid, index) in out.proposals_applied {
                if self.proposals.get(&pid).is_some_and(|p| index < p.2) {
                    // An entry of a previous incarnation with the same id.
                    continue;
                }
                if let Some((reply, _, _)) = self.proposals.remove(&pid) {
                    let r = match results.get(&index) {
                        Some(r) => WriteReply::from_apply((*r).clone()),
                        None => WriteReply::Unavailable {
                            message: "applied, outcome unknown".into(),
                        },
                    };
                    let _ = reply.send(r);
                }
            }
        }
        for rs in out.read_states {
            if let Some((reply, deadline)) = self.reads.remove(&rs.request_ctx) {
                self.awaiting_apply.push((rs.index, reply, deadline));
            }
        }
        if !self.awaiting_apply.is_empty() {
            let applied = self.node.applied_index();
            let (ready, waiting): (Vec<_>, Vec<_>) = self
                .awaiting_apply
                .drain(..)
                .partition(|(i, _, _)| *i <= applied);
            self.awaiting_apply = waiting;
            for (_, reply, _) in ready {
                let _ = reply.send(Ok(self.view()));
            }
        }
        Ok(())
    }

    fn view(&self) -> ReadView {
        ReadView {
            leader_id: self.node.leader_id(),
            term: self.node.term(),
            commit_index: self.node.commit_index(),
            applied_index: self.node.applied_index(),
            voters: self.node.voters(),
            state: self.node.state().clone(),
        }
    }

    fn expire(&mut self) {
        let now = Instant::now();
        self.proposals
            .retain(|_, (reply, d, _)| *d > now && !reply.is_closed());
        self.reads
            .retain(|_, (reply, d)| *d > now && !reply.is_closed());
        self.awaiting_apply
            .retain(|(_, reply, d)| *d > now && !reply.is_closed());
    }
}
