//! [`RaftNode`]: one coordinator's raft replica, driving raft-rs's Ready
//! cycle over [`DurableStorage`] and applying committed entries to the
//! [`ClusterState`].
//!
//! The node does no I/O besides its storage and keeps no clock: the caller
//! calls [`RaftNode::tick`] every [`RaftNodeConfig::tick_interval`], feeds
//! received messages to [`RaftNode::step`], and after either calls
//! [`RaftNode::on_ready`] and sends the returned messages.

use std::path::Path;
use std::time::Duration;

use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfChange, ConfChangeV2, ConfState, Entry, EntryType, Message, Snapshot};
use raft::{RawNode, ReadState, SnapshotStatus, StateRole, Storage};
use thiserror::Error;

use super::storage::{DurableStorage, StoreError, MAX_ENTRY_BYTES};
use crate::state::{self, ApplyError, ApplyOutcome, ClusterState, SnapshotError};

/// Default interval between two [`RaftNode::tick`] calls.
pub const DEFAULT_TICK_INTERVAL: Duration = Duration::from_millis(100);
/// Default number of ticks without a leader before a follower campaigns.
pub const DEFAULT_ELECTION_TICK: usize = 10;
/// Default number of ticks between leader heartbeats.
pub const DEFAULT_HEARTBEAT_TICK: usize = 2;
/// Default number of applied entries between two snapshots.
pub const DEFAULT_SNAPSHOT_INTERVAL: u64 = 1000;

/// Configuration of a [`RaftNode`].
#[derive(Debug, Clone)]
pub struct RaftNodeConfig {
    /// This node's raft id (non-zero).
    pub id: u64,
    /// Initial voters (including `id`) of a brand-new group. Used only
    /// when the storage is empty; a node joining an existing group passes
    /// an empty list and waits for the leader's snapshot.
    pub peers: Vec<u64>,
    /// How often the caller should call [`RaftNode::tick`].
    pub tick_interval: Duration,
    /// Election timeout in ticks.
    pub election_tick: usize,
    /// Heartbeat interval in ticks.
    pub heartbeat_tick: usize,
    /// Lower bound (inclusive) of the randomized election timeout, in
    /// ticks; 0 means `election_tick`.
    pub min_election_tick: usize,
    /// Upper bound (exclusive) of the randomized election timeout, in
    /// ticks; 0 means `2 * election_tick`.
    pub max_election_tick: usize,
    /// Whether candidates run a pre-vote first (avoids disruptive
    /// elections by partitioned nodes).
    pub pre_vote: bool,
    /// Whether a leader steps down when it no longer hears from a quorum.
    pub check_quorum: bool,
    /// Snapshot the state and compact the log after this many applied
    /// entries (0 disables periodic snapshots).
    pub snapshot_interval: u64,
    /// Largest append message, in bytes.
    pub max_size_per_msg: u64,
    /// Largest number of in-flight append messages per follower.
    pub max_inflight_msgs: usize,
}

impl RaftNodeConfig {
    /// The defaults (tick 100 ms, election 10 ticks, heartbeat 2 ticks,
    /// pre-vote and check-quorum on, a snapshot every 1000 entries) for
    /// node `id` in a group of `peers`.
    pub fn new(id: u64, peers: Vec<u64>) -> Self {
        RaftNodeConfig {
            id,
            peers,
            tick_interval: DEFAULT_TICK_INTERVAL,
            election_tick: DEFAULT_ELECTION_TICK,
            heartbeat_tick: DEFAULT_HEARTBEAT_TICK,
            min_election_tick: 0,
            max_election_tick: 0,
            pre_vote: true,
            check_quorum: true,
            snapshot_interval: DEFAULT_SNAPSHOT_INTERVAL,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
        }
    }
}

/// Errors of a [`RaftNode`].
#[derive(Debug, Error)]
pub enum NodeError {
    /// The durable storage failed.
    #[error("raft storage: {0}")]
    Store(Box<StoreError>),
    /// raft-rs refused an operation.
    #[error("raft: {0}")]
    Raft(Box<raft::Error>),
    /// A snapshot could not be made or restored.
    #[error("state snapshot: {0}")]
    Snapshot(#[from] SnapshotError),
    /// A committed conf-change entry could not be decoded.
    #[error("undecodable conf change at index {index}: {reason}")]
    ConfChange {
        /// Log index of the entry.
        index: u64,
        /// Why.
        reason: String,
    },
}

impl From<StoreError> for NodeError {
    fn from(e: StoreError) -> Self {
        NodeError::Store(Box::new(e))
    }
}

impl From<raft::Error> for NodeError {
    fn from(e: raft::Error) -> Self {
        NodeError::Raft(Box::new(e))
    }
}

/// Identifies a proposal made through [`RaftNode::propose`]: the proposing
/// node and a per-node counter (not persisted: ids restart after a crash,
/// so pair them with the node's incarnation if that matters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProposalId {
    /// The node that proposed.
    pub node: u64,
    /// Its sequence number on that node.
    pub seq: u64,
}

impl ProposalId {
    fn to_context(self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16);
        v.extend_from_slice(&self.node.to_le_bytes());
        v.extend_from_slice(&self.seq.to_le_bytes());
        v
    }

    fn from_context(ctx: &[u8]) -> Option<Self> {
        let node: [u8; 8] = ctx.get(..8)?.try_into().ok()?;
        let seq: [u8; 8] = ctx.get(8..16)?.try_into().ok()?;
        if ctx.len() != 16 {
            return None;
        }
        Some(ProposalId {
            node: u64::from_le_bytes(node),
            seq: u64::from_le_bytes(seq),
        })
    }
}

/// What one [`RaftNode::on_ready`] call produced.
#[derive(Debug, Default)]
pub struct ReadyOutput {
    /// Messages to send to peers, in order (`Message::to` names the peer).
    /// Persisted messages are only included after the entries and hard
    /// state they depend on were durably written.
    pub messages_to_send: Vec<Message>,
    /// Normal entries applied to the state machine, with their outcomes,
    /// in log order.
    pub applied: Vec<(u64, Result<ApplyOutcome, ApplyError>)>,
    /// Proposals made on this node that were applied: (id, log index).
    pub proposals_applied: Vec<(ProposalId, u64)>,
    /// Linearizable-read confirmations for [`RaftNode::read_index`].
    pub read_states: Vec<ReadState>,
    /// Index of a snapshot received from the leader and installed.
    pub snapshot_installed: Option<u64>,
    /// Index of a snapshot this node took of its own state (log compacted).
    pub snapshot_taken: Option<u64>,
}

/// One coordinator's raft replica and its applied [`ClusterState`].
pub struct RaftNode {
    raw: RawNode<DurableStorage>,
    state: ClusterState,
    config: RaftNodeConfig,
    /// Last log index handed to the state machine (normal, empty or conf
    /// change entry, or snapshot).
    applied: u64,
    next_seq: u64,
    /// A conf change was applied since the last snapshot: the next
    /// snapshot must carry the new configuration so that a newly added
    /// member can install it (raft refuses a snapshot whose ConfState does
    /// not contain the receiver).
    conf_changed: bool,
}

impl std::fmt::Debug for RaftNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode")
            .field("id", &self.config.id)
            .field("applied", &self.applied)
            .field("role", &self.raw.raft.state)
            .field("term", &self.raw.raft.term)
            .finish()
    }
}

impl RaftNode {
    /// Opens (or creates) the node's storage in `dir` and starts the node
    /// with a discarding logger. See [`open_with_logger`](Self::open_with_logger).
    pub fn open(config: RaftNodeConfig, dir: impl AsRef<Path>) -> Result<Self, NodeError> {
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        Self::open_with_logger(config, dir, &logger)
    }

    /// Opens (or creates) the node's storage in `dir` and starts the node.
    ///
    /// A brand-new directory gets `config.peers` as its initial voters.
    /// An existing one is restored: the last snapshot is loaded into the
    /// state machine and the committed entries after it, up to the
    /// persisted commit index, are re-applied.
    pub fn open_with_logger(
        config: RaftNodeConfig,
        dir: impl AsRef<Path>,
        logger: &slog::Logger,
    ) -> Result<Self, NodeError> {
        let mut store = DurableStorage::open(dir)?;
        if store.is_empty() && !config.peers.is_empty() {
            let cs = ConfState {
                voters: config.peers.clone(),
                ..Default::default()
            };
            store.set_conf_state(&cs, 0)?;
        }
        let snap_index = store.snapshot_metadata().index;
        let state = if snap_index > 0 {
            let data = store.snapshot_data()?;
            if data.is_empty() {
                ClusterState::new()
            } else {
                state::restore(&data)?
            }
        } else {
            ClusterState::new()
        };
        let commit = store.hard_state().commit;
        let last = store.last_index()?;
        let raft_config = raft::Config {
            id: config.id,
            election_tick: config.election_tick,
            heartbeat_tick: config.heartbeat_tick,
            min_election_tick: config.min_election_tick,
            max_election_tick: config.max_election_tick,
            pre_vote: config.pre_vote,
            check_quorum: config.check_quorum,
            applied: snap_index,
            max_size_per_msg: config.max_size_per_msg,
            max_inflight_msgs: config.max_inflight_msgs,
            ..Default::default()
        };
        raft_config.validate()?;
        let raw = RawNode::new(&raft_config, store, logger)?;
        let mut node = RaftNode {
            raw,
            state,
            config,
            applied: snap_index,
            next_seq: 1,
            conf_changed: false,
        };
        // Re-apply what was committed before the restart.
        let replay_to = commit.min(last);
        if replay_to > snap_index {
            let entries = node
                .raw
                .store()
                .entries_in(snap_index + 1, replay_to + 1, None)?;
            let mut scratch = ReadyOutput::default();
            node.apply_entries(entries, &mut scratch)?;
            node.raw.advance_apply_to(node.applied);
        }
        Ok(node)
    }

    /// This node's raft id.
    pub fn id(&self) -> u64 {
        self.config.id
    }

    /// The configuration the node was opened with.
    pub fn config(&self) -> &RaftNodeConfig {
        &self.config
    }

    /// The applied cluster state.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// The last log index applied (entries of any type, or a snapshot).
    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    /// The current commit index.
    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    /// The current term.
    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// The id of the leader this node knows of (0 if none).
    pub fn leader_id(&self) -> u64 {
        self.raw.raft.leader_id
    }

    /// This node's role.
    pub fn role(&self) -> StateRole {
        self.raw.raft.state
    }

    /// Whether this node is the leader.
    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The storage (read-only).
    pub fn storage(&self) -> &DurableStorage {
        self.raw.store()
    }

    /// The current voters.
    pub fn voters(&self) -> Vec<u64> {
        self.raw.store().conf_state().voters.clone()
    }

    /// The current learners (members that replicate but do not vote).
    pub fn learners(&self) -> Vec<u64> {
        self.raw.store().conf_state().learners.clone()
    }

    /// On the leader, the learners that have answered and whose log is
    /// within `lag` entries of the commit index: ready to vote. Empty on
    /// followers. A learner that never answered (unreachable, a wrong
    /// address) is never in it.
    pub fn caught_up_learners(&self, lag: u64) -> Vec<u64> {
        if !self.is_leader() {
            return Vec::new();
        }
        let committed = self.commit_index();
        let prs = self.raw.raft.prs();
        self.learners()
            .into_iter()
            .filter(|id| {
                prs.get(*id)
                    .is_some_and(|p| p.matched > 0 && p.matched.saturating_add(lag) >= committed)
            })
            .collect()
    }

    /// Whether a membership change is proposed and not yet applied.
    pub fn has_pending_conf_change(&self) -> bool {
        self.raw.raft.has_pending_conf()
    }

    /// Advances the logical clock by one tick. Returns whether a Ready may
    /// be pending.
    pub fn tick(&mut self) -> bool {
        self.raw.tick()
    }

    /// Feeds a message received from a peer.
    pub fn step(&mut self, msg: Message) -> Result<(), NodeError> {
        Ok(self.raw.step(msg)?)
    }

    /// Starts an election now.
    pub fn campaign(&mut self) -> Result<(), NodeError> {
        Ok(self.raw.campaign()?)
    }

    /// Proposes an encoded [`state::Command`] (see [`state::encode`]).
    /// On a follower it is forwarded to the leader; with no leader it is
    /// dropped (`raft::Error::ProposalDropped`). The returned id shows up
    /// in [`ReadyOutput::proposals_applied`] once applied here; a proposal
    /// lost to a leader change never shows up, so callers time out.
    pub fn propose(&mut self, data: Vec<u8>) -> Result<ProposalId, NodeError> {
        let id = ProposalId {
            node: self.config.id,
            seq: self.next_seq,
        };
        self.raw.propose(id.to_context(), data)?;
        self.next_seq += 1;
        Ok(id)
    }

    /// Proposes a membership change.
    pub fn propose_conf_change(&mut self, cc: ConfChangeV2) -> Result<(), NodeError> {
        Ok(self.raw.propose_conf_change(Vec::new(), cc)?)
    }

    /// Asks the leader to hand leadership to `to` (a caught-up voter).
    pub fn transfer_leader(&mut self, to: u64) {
        self.raw.transfer_leader(to)
    }

    /// Requests a linearizable read point; the matching [`ReadState`]
    /// (with `request_ctx == ctx`) appears in a later
    /// [`ReadyOutput::read_states`]. Reads are safe once
    /// [`applied_index`](Self::applied_index) reaches its `index`.
    pub fn read_index(&mut self, ctx: Vec<u8>) {
        self.raw.read_index(ctx)
    }

    /// Reports whether a snapshot sent to `to` was delivered
    /// ([`SnapshotStatus::Finish`]) or not ([`SnapshotStatus::Failure`]).
    pub fn report_snapshot(&mut self, to: u64, status: SnapshotStatus) {
        self.raw.report_snapshot(to, status)
    }

    /// Reports that a message to `to` could not be delivered.
    pub fn report_unreachable(&mut self, to: u64) {
        self.raw.report_unreachable(to)
    }

    /// Whether [`on_ready`](Self::on_ready) has work to do.
    pub fn has_ready(&self) -> bool {
        self.raw.has_ready()
    }

    /// Runs one Ready cycle, strictly in the order raft-rs requires:
    ///
    /// 1. collect `take_messages()` (safe to send before persisting);
    /// 2. install a snapshot from the leader (storage, then state machine);
    /// 3. apply committed entries (skipping empty ones, applying conf
    ///    changes and persisting the new `ConfState`);
    /// 4. persist new entries and the `HardState` (fsync'd);
    /// 5. only then collect `take_persisted_messages()`;
    /// 6. `advance()`: persist the new commit index, collect the
    ///    LightReady's messages, apply its committed entries;
    /// 7. `advance_apply()`, then take a snapshot if
    ///    [`RaftNodeConfig::snapshot_interval`] entries were applied since
    ///    the last one, or a conf change was applied (so the snapshot a new
    ///    member receives contains it).
    pub fn on_ready(&mut self) -> Result<ReadyOutput, NodeError> {
        let mut out = ReadyOutput::default();
        if !self.raw.has_ready() {
            return Ok(out);
        }
        let mut ready = self.raw.ready();

        // 1.
        out.messages_to_send.extend(ready.take_messages());

        // 2.
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            self.install_snapshot(&snap)?;
            out.snapshot_installed = Some(snap.get_metadata().index);
        }

        // 3.
        let committed = ready.take_committed_entries();
        self.apply_entries(committed, &mut out)?;

        // 4.
        if !ready.entries().is_empty() {
            self.raw.mut_store().append(ready.entries())?;
        }
        if let Some(hs) = ready.hs() {
            self.raw.mut_store().set_hard_state(hs)?;
        }
        out.read_states.extend(ready.take_read_states());

        // 5.
        out.messages_to_send.extend(ready.take_persisted_messages());

        // 6.
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit)?;
        }
        out.messages_to_send.extend(light.take_messages());
        let committed = light.take_committed_entries();
        self.apply_entries(committed, &mut out)?;

        // 7.
        self.raw.advance_apply();
        self.maybe_snapshot(&mut out)?;
        Ok(out)
    }

    fn install_snapshot(&mut self, snap: &Snapshot) -> Result<(), NodeError> {
        let index = snap.get_metadata().index;
        // Validate the data before touching storage.
        let state = if snap.get_data().is_empty() {
            ClusterState::new()
        } else {
            state::restore(snap.get_data())?
        };
        self.raw.mut_store().apply_snapshot(snap)?;
        self.state = state;
        self.applied = index;
        Ok(())
    }

    fn apply_entries(
        &mut self,
        entries: Vec<Entry>,
        out: &mut ReadyOutput,
    ) -> Result<(), NodeError> {
        for entry in entries {
            let index = entry.index;
            if index <= self.applied {
                // Re-delivered after a restart's eager replay.
                continue;
            }
            match entry.get_entry_type() {
                EntryType::EntryNormal => {
                    if entry.data.is_empty() {
                        // The empty entry a new leader appends.
                    } else {
                        let result = self.state.apply_entry(index, &entry.data);
                        if let Some(pid) = ProposalId::from_context(&entry.context) {
                            if pid.node == self.config.id {
                                out.proposals_applied.push((pid, index));
                            }
                        }
                        out.applied.push((index, result));
                    }
                }
                // A conf change at or below the stored conf index is already
                // in the persisted ConfState raft started from (restart
                // replay): applying it again could fail (joint configs).
                EntryType::EntryConfChange if index > self.raw.store().conf_index() => {
                    let cc: ConfChange = decode_conf_change(index, &entry.data)?;
                    let cs = self.raw.apply_conf_change(&cc)?;
                    self.raw.mut_store().set_conf_state(&cs, index)?;
                    self.conf_changed = true;
                }
                EntryType::EntryConfChangeV2 if index > self.raw.store().conf_index() => {
                    let cc: ConfChangeV2 = decode_conf_change(index, &entry.data)?;
                    let cs = self.raw.apply_conf_change(&cc)?;
                    self.raw.mut_store().set_conf_state(&cs, index)?;
                    self.conf_changed = true;
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {}
            }
            self.applied = index;
        }
        Ok(())
    }

    fn maybe_snapshot(&mut self, out: &mut ReadyOutput) -> Result<(), NodeError> {
        let interval = self.config.snapshot_interval;
        let last_snap = self.raw.store().snapshot_metadata().index;
        let due = interval > 0 && self.applied >= last_snap + interval;
        if !due && !self.conf_changed {
            return Ok(());
        }
        self.snapshot_now()?;
        out.snapshot_taken = Some(self.applied);
        Ok(())
    }

    /// Snapshots the applied state at [`applied_index`](Self::applied_index)
    /// and compacts the log up to it.
    pub fn snapshot_now(&mut self) -> Result<(), NodeError> {
        let index = self.applied;
        if index == 0 || index <= self.raw.store().snapshot_metadata().index {
            return Ok(());
        }
        let data = state::snapshot(&self.state)?;
        let cs = self.raw.store().conf_state().clone();
        let store = self.raw.mut_store();
        store.create_snapshot(index, &cs, &data)?;
        store.compact(index + 1)?;
        self.conf_changed = false;
        Ok(())
    }
}

fn decode_conf_change<M: PbMessage>(index: u64, data: &[u8]) -> Result<M, NodeError> {
    if data.len() > MAX_ENTRY_BYTES {
        return Err(NodeError::ConfChange {
            index,
            reason: format!("{} bytes, over the cap", data.len()),
        });
    }
    M::parse_from_bytes(data).map_err(|e| NodeError::ConfChange {
        index,
        reason: e.to_string(),
    })
}
