//! Raft core on a simulated, seeded, in-process network: no sockets, no
//! sleeps, logical ticks. Every scenario is reproducible from its seed.

use std::collections::{BTreeMap, BTreeSet};

use coordinator::raft::{Message, MessageType, RaftNode, RaftNodeConfig, SnapshotStatus};
use coordinator::state::{self, Command, Op};
use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
use tempfile::TempDir;

/// Tiny deterministic RNG (xorshift64*).
struct Xorshift(u64);

impl Xorshift {
    fn new(seed: u64) -> Self {
        Xorshift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }
}

#[derive(Clone, Copy, Default)]
struct Faults {
    drop: f64,
    duplicate: f64,
    /// Maximum extra delay in rounds (messages get 0..=max_delay).
    max_delay: u64,
}

struct Network {
    ids: Vec<u64>,
    nodes: BTreeMap<u64, Option<RaftNode>>,
    dirs: BTreeMap<u64, TempDir>,
    snapshot_interval: u64,
    rng: Xorshift,
    faults: Faults,
    /// Pairs (a, b) that cannot talk (both directions stored).
    cut: BTreeSet<(u64, u64)>,
    /// (deliver at round, sequence, message)
    in_flight: Vec<(u64, u64, Message)>,
    seq: u64,
    round: u64,
    /// term -> leader seen in that term.
    leaders: BTreeMap<u64, u64>,
    snapshots_installed: BTreeMap<u64, u64>,
}

fn node_config(id: u64, peers: &[u64], snapshot_interval: u64) -> RaftNodeConfig {
    let mut c = RaftNodeConfig::new(id, peers.to_vec());
    // Distinct, fixed election timeouts keep runs deterministic (raft-rs
    // otherwise draws them from a thread-local RNG).
    c.election_tick = 10 + 4 * (id as usize - 1);
    c.min_election_tick = c.election_tick;
    c.max_election_tick = c.election_tick + 1;
    c.snapshot_interval = snapshot_interval;
    c
}

impl Network {
    fn new(n: u64, seed: u64, snapshot_interval: u64) -> Self {
        let ids: Vec<u64> = (1..=n).collect();
        let mut nodes = BTreeMap::new();
        let mut dirs = BTreeMap::new();
        for &id in &ids {
            let dir = tempfile::tempdir().unwrap();
            let node =
                RaftNode::open(node_config(id, &ids, snapshot_interval), dir.path()).unwrap();
            nodes.insert(id, Some(node));
            dirs.insert(id, dir);
        }
        Network {
            ids,
            nodes,
            dirs,
            snapshot_interval,
            rng: Xorshift::new(seed),
            faults: Faults::default(),
            cut: BTreeSet::new(),
            in_flight: Vec::new(),
            seq: 0,
            round: 0,
            leaders: BTreeMap::new(),
            snapshots_installed: BTreeMap::new(),
        }
    }

    fn node(&self, id: u64) -> &RaftNode {
        self.nodes[&id].as_ref().unwrap()
    }

    fn node_mut(&mut self, id: u64) -> &mut RaftNode {
        self.nodes.get_mut(&id).unwrap().as_mut().unwrap()
    }

    fn alive(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    fn crash(&mut self, id: u64) {
        // Dropping the node closes its database without any extra flush:
        // only what on_ready already committed survives.
        *self.nodes.get_mut(&id).unwrap() = None;
        self.in_flight
            .retain(|(_, _, m)| m.to != id && m.from != id);
    }

    fn restart(&mut self, id: u64) {
        assert!(self.nodes[&id].is_none());
        let node = RaftNode::open(
            node_config(id, &self.ids, self.snapshot_interval),
            self.dirs[&id].path(),
        )
        .unwrap();
        *self.nodes.get_mut(&id).unwrap() = Some(node);
    }

    /// Starts a brand-new, empty node that is not yet a member.
    fn add_empty_node(&mut self, id: u64) {
        let dir = tempfile::tempdir().unwrap();
        let node =
            RaftNode::open(node_config(id, &[], self.snapshot_interval), dir.path()).unwrap();
        self.ids.push(id);
        self.nodes.insert(id, Some(node));
        self.dirs.insert(id, dir);
    }

    /// Isolates `group` from everyone else.
    fn partition(&mut self, group: &[u64]) {
        for &a in group {
            for &b in &self.ids {
                if !group.contains(&b) {
                    self.cut.insert((a, b));
                    self.cut.insert((b, a));
                }
            }
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
    }

    fn send(&mut self, msg: Message) {
        let copies = if self.rng.chance(self.faults.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            if self.rng.chance(self.faults.drop) {
                if msg.get_msg_type() == MessageType::MsgSnapshot {
                    let (from, to) = (msg.from, msg.to);
                    if let Some(Some(n)) = self.nodes.get_mut(&from) {
                        n.report_snapshot(to, SnapshotStatus::Failure);
                    }
                }
                continue;
            }
            let at = self.round + self.rng.below(self.faults.max_delay + 1);
            self.seq += 1;
            self.in_flight.push((at, self.seq, msg.clone()));
        }
    }

    fn process_ready(&mut self, id: u64) -> bool {
        let Some(node) = self.nodes.get_mut(&id).unwrap().as_mut() else {
            return false;
        };
        let out = node.on_ready().unwrap();
        if let Some(idx) = out.snapshot_installed {
            self.snapshots_installed.insert(id, idx);
        }
        for (pid, _) in &out.proposals_applied {
            assert_eq!(pid.node, id);
        }
        let mut sent = false;
        for m in out.messages_to_send {
            sent = true;
            self.send(m);
        }
        sent
    }

    fn deliver_due(&mut self) -> bool {
        let round = self.round;
        let mut due: Vec<(u64, u64, Message)> = Vec::new();
        let mut rest = Vec::new();
        for item in self.in_flight.drain(..) {
            if item.0 <= round {
                due.push(item);
            } else {
                rest.push(item);
            }
        }
        self.in_flight = rest;
        due.sort_by_key(|(at, seq, _)| (*at, *seq));
        let any = !due.is_empty();
        for (_, _, m) in due {
            let (from, to) = (m.from, m.to);
            let blocked = self.cut.contains(&(from, to));
            let is_snap = m.get_msg_type() == MessageType::MsgSnapshot;
            let delivered = !blocked
                && match self.nodes.get_mut(&to) {
                    Some(Some(n)) => {
                        // Stale or duplicated messages may be refused.
                        let _ = n.step(m);
                        true
                    }
                    _ => false,
                };
            if is_snap {
                if let Some(Some(n)) = self.nodes.get_mut(&from) {
                    let status = if delivered {
                        SnapshotStatus::Finish
                    } else {
                        SnapshotStatus::Failure
                    };
                    n.report_snapshot(to, status);
                }
            } else if !delivered {
                if let Some(Some(n)) = self.nodes.get_mut(&from) {
                    n.report_unreachable(to);
                }
            }
        }
        any
    }

    fn check_leaders(&mut self) {
        for id in self.alive() {
            let n = self.node(id);
            if n.is_leader() {
                let term = n.term();
                let prev = *self.leaders.entry(term).or_insert(id);
                assert_eq!(prev, id, "two leaders in term {term}");
            }
        }
    }

    /// One logical round: tick everyone once, then exchange messages until
    /// nothing due this round is left.
    fn round(&mut self) {
        self.round += 1;
        for id in self.alive() {
            self.node_mut(id).tick();
        }
        for _ in 0..50 {
            let mut busy = false;
            for id in self.alive() {
                busy |= self.process_ready(id);
            }
            busy |= self.deliver_due();
            self.check_leaders();
            if !busy {
                break;
            }
        }
    }

    fn run(&mut self, rounds: u64) {
        for _ in 0..rounds {
            self.round();
        }
    }

    fn run_until(&mut self, max_rounds: u64, mut pred: impl FnMut(&Network) -> bool) -> bool {
        for _ in 0..max_rounds {
            if pred(self) {
                return true;
            }
            self.round();
        }
        pred(self)
    }

    fn leader(&self) -> Option<u64> {
        self.alive()
            .into_iter()
            .filter(|&id| self.node(id).is_leader())
            .max_by_key(|&id| self.node(id).term())
    }

    fn wait_leader(&mut self) -> u64 {
        assert!(
            self.run_until(500, |n| n.leader().is_some()),
            "no leader elected"
        );
        self.leader().unwrap()
    }

    fn snapshot_of(&self, id: u64) -> Vec<u8> {
        state::snapshot(self.node(id).state()).unwrap()
    }

    fn converged(&self, ids: &[u64]) -> bool {
        let first = self.snapshot_of(ids[0]);
        ids.iter().all(|&id| self.snapshot_of(id) == first)
            && ids
                .iter()
                .all(|&id| self.node(id).applied_index() == self.node(ids[0]).applied_index())
    }
}

fn model_cmd(i: u64) -> Vec<u8> {
    state::encode(&Command::new(Op::RegisterModel {
        name: format!("model-{i}"),
        source: format!("hub://org/model-{i}"),
        format: "gguf".into(),
        size_bytes: 1000 + i,
        desired_replicas: 1,
    }))
    .unwrap()
}

fn has_model(net: &Network, id: u64, i: u64) -> bool {
    net.node(id).state().model(&format!("model-{i}")).is_some()
}

/// Proposes models `range` through whoever leads, re-proposing what is
/// missing until all `ids` have every model (RegisterModel is idempotent).
fn commit_models(net: &mut Network, range: std::ops::Range<u64>, ids: &[u64], max_rounds: u64) {
    let mut rounds = 0;
    loop {
        let missing: Vec<u64> = range
            .clone()
            .filter(|&i| !ids.iter().all(|&id| has_model(net, id, i)))
            .collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            rounds < max_rounds,
            "models {missing:?} not committed on {ids:?} after {rounds} rounds"
        );
        if let Some(l) = net.leader() {
            for &i in &missing {
                if !has_model(net, l, i) {
                    let _ = net.node_mut(l).propose(model_cmd(i));
                }
            }
        }
        net.run(15);
        rounds += 15;
    }
}

#[test]
fn elects_exactly_one_leader() {
    let mut net = Network::new(3, 1, 1000);
    let leader = net.wait_leader();
    net.run(100);
    // Stable: same leader, and everyone agrees on it.
    assert_eq!(net.leader(), Some(leader));
    for id in net.alive() {
        assert_eq!(net.node(id).leader_id(), leader);
    }
    let leaders_in_term: Vec<_> = net.leaders.iter().collect();
    assert!(!leaders_in_term.is_empty());
}

#[test]
fn command_is_applied_identically_everywhere() {
    let mut net = Network::new(3, 2, 1000);
    let leader = net.wait_leader();
    let pid = net.node_mut(leader).propose(model_cmd(1)).unwrap();
    assert!(net.run_until(100, |n| n.alive().iter().all(|&id| has_model(n, id, 1))));
    assert_eq!(pid.node, leader);
    net.run(5);
    assert!(net.converged(&[1, 2, 3]));
    let m = net.node(1).state().model("model-1").unwrap();
    assert_eq!(m.size_bytes, 1001);
    // A follower's proposal is forwarded to the leader.
    let follower = net.alive().into_iter().find(|&id| id != leader).unwrap();
    net.node_mut(follower).propose(model_cmd(2)).unwrap();
    assert!(net.run_until(100, |n| n.alive().iter().all(|&id| has_model(n, id, 2))));
    net.run(5);
    assert!(net.converged(&[1, 2, 3]));
}

#[test]
fn minority_partition_cannot_commit_then_converges() {
    let mut net = Network::new(3, 3, 1000);
    let leader = net.wait_leader();
    commit_models(&mut net, 0..1, &[1, 2, 3], 200);
    // Isolate one follower.
    let isolated = net.alive().into_iter().find(|&id| id != leader).unwrap();
    let majority: Vec<u64> = net
        .alive()
        .into_iter()
        .filter(|&id| id != isolated)
        .collect();
    net.partition(&[isolated]);
    // Its proposal is dropped or never commits.
    let _ = net.node_mut(isolated).propose(model_cmd(100));
    commit_models(&mut net, 1..6, &majority, 300);
    net.run(100);
    assert!(!has_model(&net, isolated, 100));
    assert!(!has_model(&net, isolated, 3));
    for &id in &majority {
        assert!(!has_model(&net, id, 100), "isolated proposal committed");
    }
    // Pre-vote keeps the isolated node from disrupting the leader's term.
    assert!(net.node(majority[0]).is_leader() || net.node(majority[1]).is_leader());
    net.heal();
    assert!(net.run_until(300, |n| n.converged(&[1, 2, 3])));
    for i in 0..6 {
        assert!(has_model(&net, isolated, i));
    }
}

fn lossy_run(seed: u64, snapshot_interval: u64) {
    let mut net = Network::new(3, seed, snapshot_interval);
    net.faults = Faults {
        drop: 0.10,
        duplicate: 0.10,
        max_delay: 3,
    };
    net.wait_leader();
    commit_models(&mut net, 0..50, &[1, 2, 3], 5000);
    net.faults = Faults::default();
    assert!(
        net.run_until(500, |n| n.converged(&[1, 2, 3])),
        "seed {seed}: no convergence"
    );
    assert_eq!(net.node(1).state().models().len(), 50);
}

#[test]
fn lossy_network_seed_11() {
    lossy_run(11, 1000);
}

#[test]
fn lossy_network_seed_22() {
    lossy_run(22, 1000);
}

#[test]
fn lossy_network_seed_33_with_frequent_snapshots() {
    lossy_run(33, 15);
}

#[test]
fn follower_restart_catches_up_from_log() {
    let mut net = Network::new(3, 4, 1000);
    let leader = net.wait_leader();
    commit_models(&mut net, 0..5, &[1, 2, 3], 200);
    let follower = net.alive().into_iter().find(|&id| id != leader).unwrap();
    let applied_before = net.node(follower).applied_index();
    net.crash(follower);
    let others: Vec<u64> = net.alive();
    commit_models(&mut net, 5..10, &others, 200);
    net.restart(follower);
    // The restart re-applied what was committed before the crash.
    assert!(net.node(follower).applied_index() >= applied_before);
    for i in 0..5 {
        assert!(has_model(&net, follower, i));
    }
    assert!(net.run_until(300, |n| n.converged(&[1, 2, 3])));
    assert!(!net.snapshots_installed.contains_key(&follower));
}

#[test]
fn follower_restart_after_compaction_catches_up_by_snapshot() {
    let mut net = Network::new(3, 5, 10);
    let leader = net.wait_leader();
    commit_models(&mut net, 0..3, &[1, 2, 3], 200);
    let follower = net.alive().into_iter().find(|&id| id != leader).unwrap();
    net.crash(follower);
    let others: Vec<u64> = net.alive();
    commit_models(&mut net, 3..40, &others, 1000);
    // The leader compacted past what the follower has.
    let first = raft_first_index(&net, leader);
    assert!(first > 10, "leader log not compacted (first index {first})");
    net.restart(follower);
    assert!(net.run_until(500, |n| n.converged(&[1, 2, 3])));
    assert!(net.snapshots_installed.contains_key(&follower));
    assert_eq!(net.node(follower).state().models().len(), 40);
    // And it stays restartable from its own snapshot.
    net.crash(follower);
    net.restart(follower);
    assert_eq!(net.node(follower).state().models().len(), 40);
}

fn raft_first_index(net: &Network, id: u64) -> u64 {
    use raft::Storage;
    net.node(id).storage().first_index().unwrap()
}

#[test]
fn leader_crash_new_leader_keeps_everything_committed() {
    let mut net = Network::new(3, 6, 1000);
    let old = net.wait_leader();
    commit_models(&mut net, 0..10, &[1, 2, 3], 300);
    let committed_before = net.snapshot_of(old);
    let old_term = net.node(old).term();
    net.crash(old);
    let survivors = net.alive();
    let new = net.wait_leader();
    assert_ne!(new, old);
    assert!(net.node(new).term() > old_term);
    for &id in &survivors {
        for i in 0..10 {
            assert!(has_model(&net, id, i), "committed model-{i} lost on {id}");
        }
    }
    commit_models(&mut net, 10..20, &survivors, 300);
    // The old leader comes back as a follower and converges.
    net.restart(old);
    let restored = net.snapshot_of(old);
    assert_eq!(restored, committed_before);
    assert!(net.run_until(300, |n| n.converged(&[1, 2, 3])));
    assert_eq!(net.node(old).state().models().len(), 20);
}

#[test]
fn read_index_confirms_on_leader() {
    let mut net = Network::new(3, 7, 1000);
    let leader = net.wait_leader();
    commit_models(&mut net, 0..2, &[1, 2, 3], 200);
    let commit_at_request = net.node(leader).commit_index();
    net.node_mut(leader).read_index(b"r1".to_vec());
    let mut got = None;
    for _ in 0..50 {
        net.round += 1;
        let node = net.node_mut(leader);
        let out = node.on_ready().unwrap();
        if let Some(rs) = out.read_states.iter().find(|r| r.request_ctx == b"r1") {
            got = Some(rs.index);
        }
        for m in out.messages_to_send {
            net.send(m);
        }
        net.deliver_due();
        for id in net.alive() {
            if id != leader {
                net.process_ready(id);
            }
        }
        net.deliver_due();
        if got.is_some() {
            break;
        }
    }
    let index = got.expect("no read state");
    assert!(index >= commit_at_request);
    assert!(index <= net.node(leader).commit_index());
}

fn conf_change(node_id: u64, ty: ConfChangeType) -> ConfChangeV2 {
    let mut single = ConfChangeSingle::default();
    single.set_change_type(ty);
    single.node_id = node_id;
    let mut cc = ConfChangeV2::default();
    cc.set_changes(vec![single].into());
    cc
}

#[test]
fn membership_change_adds_by_snapshot_and_removes() {
    let mut net = Network::new(3, 8, 10);
    let leader = net.wait_leader();
    commit_models(&mut net, 0..25, &[1, 2, 3], 500);
    assert!(
        raft_first_index(&net, leader) > 1,
        "leader log not compacted"
    );
    // Add node 4: it starts empty and catches up by snapshot.
    net.add_empty_node(4);
    net.node_mut(leader)
        .propose_conf_change(conf_change(4, ConfChangeType::AddNode))
        .unwrap();
    assert!(net.run_until(300, |n| n.alive().iter().all(|&id| n
        .node(id)
        .voters()
        .len()
        == 4)));
    assert!(net.snapshots_installed.contains_key(&4));
    commit_models(&mut net, 25..30, &[1, 2, 3, 4], 500);
    assert!(net.run_until(300, |n| n.converged(&[1, 2, 3, 4])));
    // Remove a follower (not the leader).
    let leader = net.wait_leader();
    let gone = [1, 2, 3].into_iter().find(|&id| id != leader).unwrap();
    net.node_mut(leader)
        .propose_conf_change(conf_change(gone, ConfChangeType::RemoveNode))
        .unwrap();
    let rest: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|&id| id != gone).collect();
    assert!(net.run_until(300, |n| rest
        .iter()
        .all(|&id| n.node(id).voters().len() == 3)));
    net.crash(gone);
    commit_models(&mut net, 30..35, &rest, 500);
    // A restarted member replays its log without re-applying conf changes.
    let member = rest.iter().copied().find(|&id| id != leader).unwrap();
    let voters = net.node(member).voters();
    net.crash(member);
    net.restart(member);
    assert_eq!(net.node(member).voters(), voters);
    assert!(net.run_until(300, |n| n.converged(&rest)));
}
