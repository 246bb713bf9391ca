//! The task that owns the [`RaftNode`]: ticks it, steps inbound messages,
//! runs the Ready cycle, hands outbound messages to the per-peer senders,
//! and answers client proposals and linearizable reads.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use raft::Storage;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::wire::WriteReply;
use crate::raft::{Message, NodeError, ProposalId, RaftNode, SnapshotStatus};
use crate::state::{self, ApplyError, ApplyOutcome, ClusterState, Command, Op};

/// Longest delay between a write being applied and routing and the
/// controller seeing it.
const PUBLISH_EVERY: Duration = Duration::from_millis(50);

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
    /// Adds or removes a voter (leader only); answered once the conf
    /// change is applied here.
    ChangeMembership {
        /// The change.
        change: MemberChange,
        /// Where the outcome goes.
        reply: oneshot::Sender<WriteReply>,
    },
    /// A linearizable read of the state (ReadIndex).
    Read {
        /// Where the state goes, or why it could not be read.
        reply: oneshot::Sender<Result<ReadView, String>>,
    },
}

/// A change to the raft membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MemberChange {
    /// Add this raft id as a learner; the leader promotes it to voter once
    /// it has caught up (see [`CATCH_UP_LAG`]), so a member that never
    /// answers never counts toward quorum.
    Add(u64),
    /// Remove this raft id (voter or learner).
    Remove(u64),
}

/// How many entries behind the commit index a learner may be and still be
/// promoted to voter.
pub const CATCH_UP_LAG: u64 = 16;

fn single_change(id: u64, kind: raft::eraftpb::ConfChangeType) -> raft::eraftpb::ConfChangeV2 {
    use raft::eraftpb::{ConfChangeSingle, ConfChangeV2};
    let mut single = ConfChangeSingle::default();
    single.set_change_type(kind);
    single.node_id = id;
    let mut cc = ConfChangeV2::default();
    cc.set_changes(vec![single].into());
    cc
}

impl MemberChange {
    fn done(self, voters: &[u64], learners: &[u64]) -> bool {
        match self {
            MemberChange::Add(id) => voters.contains(&id) || learners.contains(&id),
            MemberChange::Remove(id) => !voters.contains(&id) && !learners.contains(&id),
        }
    }

    fn to_conf_change(self) -> raft::eraftpb::ConfChangeV2 {
        use raft::eraftpb::ConfChangeType;
        match self {
            MemberChange::Add(id) => single_change(id, ConfChangeType::AddLearnerNode),
            MemberChange::Remove(id) => single_change(id, ConfChangeType::RemoveNode),
        }
    }
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
    /// Raft learners (added, not yet caught up).
    pub learners: Vec<u64>,
    /// The applied state.
    pub state: ClusterState,
}

/// Where the raft loop sends messages to other coordinators.
pub trait Transport: Send {
    /// Queues `msg` for `msg.to`; `false` if it cannot be queued (unknown
    /// peer, full queue), which the loop reports as unreachable.
    fn send(&mut self, msg: Message) -> bool;
    /// Called after every Ready cycle with the current voters and state,
    /// so members added or removed at runtime get (or lose) a sender.
    fn sync(&mut self, voters: &[u64], state: &ClusterState);
}

/// The locally applied state, published after every change (not a
/// linearizable read: a follower may lag). Used by routing and by the
/// leader's controller.
#[derive(Debug, Clone, Default)]
pub struct LocalView {
    /// The leader this node knows of (0 if none).
    pub leader_id: u64,
    /// Whether this coordinator is the leader.
    pub is_leader: bool,
    /// Raft voters.
    pub voters: Vec<u64>,
    /// Raft learners (added, not yet caught up).
    pub learners: Vec<u64>,
    /// Current term.
    pub term: u64,
    /// The applied state.
    pub state: Arc<ClusterState>,
}

type Deadline = Instant;
/// Where a read's answer goes.
type ReadReply = oneshot::Sender<Result<ReadView, String>>;

/// The raft loop: create with [`RaftLoop::new`], then `run`.
pub struct RaftLoop {
    node: RaftNode,
    transport: Box<dyn Transport>,
    timeout: Duration,
    tick: Duration,
    /// Pending proposals: reply, deadline, and the lowest log index the
    /// entry can have (guards against a [`ProposalId`] reused after a
    /// restart matching an entry of the previous incarnation).
    proposals: HashMap<ProposalId, (oneshot::Sender<WriteReply>, Deadline, u64)>,
    reads: HashMap<Vec<u8>, (ReadReply, Deadline)>,
    awaiting_apply: Vec<(u64, ReadReply, Deadline)>,
    next_read: u64,
    published: watch::Sender<LocalView>,
    membership: Vec<(MemberChange, oneshot::Sender<WriteReply>, Deadline)>,
    last_publish: Instant,
}

impl std::fmt::Debug for RaftLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftLoop")
            .field("node", &self.node)
            .finish()
    }
}

impl RaftLoop {
    /// A loop for `node` sending through `transport`, failing client
    /// requests after `timeout` and publishing its applied state.
    pub fn new(
        node: RaftNode,
        transport: Box<dyn Transport>,
        tick: Duration,
        timeout: Duration,
        published: watch::Sender<LocalView>,
    ) -> Self {
        RaftLoop {
            published,
            membership: Vec::new(),
            last_publish: Instant::now(),
            node,
            transport,
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
                    self.promote_caught_up_learner();
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
            LoopRequest::ChangeMembership { change, reply } => {
                self.change_membership(change, reply, deadline)
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

    fn change_membership(
        &mut self,
        change: MemberChange,
        reply: oneshot::Sender<WriteReply>,
        deadline: Deadline,
    ) {
        if !self.node.is_leader() {
            let _ = reply.send(WriteReply::NotLeader {
                leader: self.node.leader_id(),
            });
            return;
        }
        let voters = self.node.voters();
        if change.done(&voters, &self.node.learners()) {
            let _ = reply.send(WriteReply::Applied(ApplyOutcome::Applied));
            return;
        }
        if change == MemberChange::Remove(self.node.id()) {
            // A leader cannot cleanly remove itself: hand leadership to
            // another voter; the caller retries with the new leader.
            if let Some(to) = voters.iter().copied().find(|v| *v != self.node.id()) {
                self.node.transfer_leader(to);
            }
            let _ = reply.send(WriteReply::NotLeader { leader: 0 });
            return;
        }
        if self.node.has_pending_conf_change() {
            // raft-rs would silently drop a second change; say so instead.
            let _ = reply.send(WriteReply::Unavailable {
                message: "another membership change is in progress; retry".into(),
            });
            return;
        }
        match self.node.propose_conf_change(change.to_conf_change()) {
            Ok(()) => self.membership.push((change, reply, deadline)),
            Err(e) => {
                let _ = reply.send(WriteReply::Unavailable {
                    message: format!("membership change refused: {e}"),
                });
            }
        }
    }

    /// On the leader, with no membership change in flight, proposes to
    /// make one caught-up learner a voter.
    fn promote_caught_up_learner(&mut self) {
        if self.node.has_pending_conf_change() {
            return;
        }
        let Some(id) = self.node.caught_up_learners(CATCH_UP_LAG).first().copied() else {
            return;
        };
        let cc = single_change(id, raft::eraftpb::ConfChangeType::AddNode);
        match self.node.propose_conf_change(cc) {
            Ok(()) => tracing::info!(member = id, "learner caught up: promoting it to voter"),
            Err(e) => tracing::debug!(member = id, "cannot promote the learner yet: {e}"),
        }
    }

    fn ready(&mut self) -> Result<(), NodeError> {
        let out = self.node.on_ready()?;
        if !self.membership.is_empty() {
            let voters = self.node.voters();
            let learners = self.node.learners();
            let (done, pending): (Vec<_>, Vec<_>) = self
                .membership
                .drain(..)
                .partition(|(c, _, _)| c.done(&voters, &learners));
            self.membership = pending;
            for (_, reply, _) in done {
                let _ = reply.send(WriteReply::Applied(ApplyOutcome::Applied));
            }
        }
        self.transport.sync(&self.node.voters(), self.node.state());
        for m in out.messages_to_send {
            let to = m.to;
            if !self.transport.send(m) {
                self.node.report_unreachable(to);
            }
        }
        self.publish();
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

    /// Publishes the local view if the leader, term or voters moved, or
    /// if the applied index moved and the last copy is older than
    /// [`PUBLISH_EVERY`] (copying the state on every write would tax
    /// write-heavy loads; the ticker publishes what is left).
    fn publish(&mut self) {
        let node = &self.node;
        let current = self.published.borrow();
        let roles_changed = current.leader_id != node.leader_id()
            || current.term != node.term()
            || current.is_leader != node.is_leader()
            || current.voters != node.voters()
            || current.learners != node.learners();
        let applied_changed = current.state.applied_index() != node.state().applied_index();
        drop(current);
        let due = self.last_publish.elapsed() >= PUBLISH_EVERY;
        if roles_changed || (applied_changed && due) {
            self.last_publish = Instant::now();
            self.published.send_replace(LocalView {
                leader_id: node.leader_id(),
                is_leader: node.is_leader(),
                voters: node.voters(),
                learners: node.learners(),
                term: node.term(),
                state: Arc::new(node.state().clone()),
            });
        }
    }

    fn view(&self) -> ReadView {
        ReadView {
            leader_id: self.node.leader_id(),
            term: self.node.term(),
            commit_index: self.node.commit_index(),
            applied_index: self.node.applied_index(),
            voters: self.node.voters(),
            learners: self.node.learners(),
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
        self.membership
            .retain(|(_, reply, d)| *d > now && !reply.is_closed());
    }
}
