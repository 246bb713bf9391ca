//! The latest heartbeat of every worker node, as this coordinator heard
//! it. Heartbeats are not replicated: each coordinator keeps its own table
//! for routing, and the leader's [`controller`](super::controller) turns
//! it into raft writes (registration, up/down, replica states).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use protocol::{HeartbeatReply, NodeHeartbeat, ReplicaState};

use crate::state::{ClusterState, PlacementState};

/// Most nodes remembered; heartbeats from more are refused.
pub const MAX_NODES: usize = 4096;

/// Prompt text spans each model's replica reports holding in its KV cache.
pub type PrefixSets = HashMap<String, Arc<HashSet<u64>>>;

/// A heartbeat and how long ago it arrived.
#[derive(Debug, Clone)]
pub struct SeenNode {
    /// The last heartbeat.
    pub heartbeat: Arc<NodeHeartbeat>,
    /// Its replicas' cached prefixes, indexed for lookups.
    pub prefixes: Arc<PrefixSets>,
    /// Time since it arrived.
    pub age: Duration,
    /// Fingerprint of the certificate it arrived with (empty if unknown).
    pub fingerprint: Arc<str>,
}

impl SeenNode {
    /// A heartbeat just heard.
    pub fn new(heartbeat: NodeHeartbeat) -> Self {
        let prefixes = heartbeat
            .replicas
            .iter()
            .filter_map(|r| {
                let kv = r.kv.as_ref()?;
                let spans = kv
                    .prefix_spans
                    .iter()
                    .take(protocol::prefix::MAX_REPORTED_SPANS)
                    .copied()
                    .collect();
                Some((r.model.clone(), Arc::new(spans)))
            })
            .collect();
        SeenNode {
            heartbeat: Arc::new(heartbeat),
            prefixes: Arc::new(prefixes),
            age: Duration::ZERO,
            fingerprint: Arc::from(""),
        }
    }

    /// `self`, heard over a connection whose certificate has `fingerprint`.
    pub fn with_fingerprint(mut self, fingerprint: &str) -> Self {
        self.fingerprint = Arc::from(fingerprint);
        self
    }

    /// Share of `model`'s KV blocks on this node that hold cached prefixes
    /// or running sequences (0 when not reported).
    pub fn kv_fill(&self, model: &str) -> f64 {
        self.heartbeat
            .replicas
            .iter()
            .find(|r| r.model == model)
            .and_then(|r| r.kv.as_ref())
            .filter(|kv| kv.total_blocks > 0)
            .map_or(0.0, |kv| {
                f64::from(kv.cached_blocks.max(kv.used_blocks)) / f64::from(kv.total_blocks)
            })
    }

    /// Whether the node reports `model` ready.
    pub fn serves(&self, model: &str) -> bool {
        self.heartbeat
            .replicas
            .iter()
            .any(|r| r.model == model && r.state == ReplicaState::Ready)
    }
}

/// Heartbeats by node id.
#[derive(Debug)]
pub struct NodeRegistry {
    started: Instant,
    nodes: Mutex<HashMap<String, (Instant, SeenNode)>>,
}

impl Default for NodeRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        NodeRegistry {
            started: Instant::now(),
            nodes: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, (Instant, SeenNode)>> {
        // A poisoned lock only means a panic elsewhere mid-insert; the map
        // itself is still consistent.
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long this registry has been collecting heartbeats.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Records a heartbeat; `false` if the table is full.
    pub fn record(&self, hb: NodeHeartbeat, fingerprint: &str) -> bool {
        let id = hb.node_id.clone();
        let seen = SeenNode::new(hb).with_fingerprint(fingerprint);
        let mut nodes = self.lock();
        if nodes.len() >= MAX_NODES && !nodes.contains_key(&id) {
            return false;
        }
        nodes.insert(id, (Instant::now(), seen));
        true
    }

    /// Forgets `node` (it announced it is leaving): it is no longer
    /// routed to, and the leader marks it down.
    pub fn remove(&self, node: &str) {
        self.lock().remove(node);
    }

    /// The last heartbeat of `node`.
    pub fn get(&self, node: &str) -> Option<SeenNode> {
        self.lock().get(node).map(|(at, seen)| SeenNode {
            age: at.elapsed(),
            ..seen.clone()
        })
    }

    /// Resolves once `node` has been silent for `stale` (or is unknown),
    /// looking every `every`: raced against a reply the node owes, so a
    /// dead node is given up on without waiting for the transport's
    /// idle timeout.
    pub async fn went_silent(&self, node: &str, stale: Duration, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            if self.get(node).is_none_or(|s| s.age >= stale) {
                return;
            }
        }
    }

    /// What `read` finds in the file announcement of `model` of the
    /// first node (by id) that has a file for it and an answer.
    fn first_servable<T>(
        &self,
        model: &str,
        read: impl Fn(&protocol::ServableModel) -> Option<T>,
    ) -> Option<T> {
        let nodes = self.lock();
        let mut ids: Vec<&String> = nodes.keys().collect();
        ids.sort();
        ids.into_iter().find_map(|id| {
            nodes.get(id)?.1.heartbeat.servable.iter().find_map(|m| {
                if m.name == model {
                    read(m)
                } else {
                    None
                }
            })
        })
    }

    /// The card of `model` as the first node that has a file for it
    /// describes it.
    pub fn card(&self, model: &str) -> Option<protocol::ModelCard> {
        self.first_servable(model, |m| m.card.clone())
    }

    /// The declared inputs and outputs of ONNX model `model`, as the first
    /// node that has a file for it reports them.
    pub fn signature(&self, model: &str) -> Option<protocol::Signature> {
        self.first_servable(model, |m| m.signature.clone())
    }

    /// Every node heard from, by id.
    pub fn snapshot(&self) -> BTreeMap<String, SeenNode> {
        self.lock()
            .iter()
            .map(|(id, (at, seen))| {
                (
                    id.clone(),
                    SeenNode {
                        age: at.elapsed(),
                        ..seen.clone()
                    },
                )
            })
            .collect()
    }
}

/// What a node should run, according to `state`: the models placed on it
/// and not failed. `None` when the node is not registered yet.
pub fn assignment(state: &ClusterState, node: &str, from_leader: bool) -> HeartbeatReply {
    let assigned = state.node(node).map(|_| {
        state
            .placements()
            .iter()
            .filter(|(_, nodes)| {
                nodes
                    .get(node)
                    .is_some_and(|p| p.state != PlacementState::Failed)
            })
            .map(|(model, _)| model.clone())
            .collect()
    });
    HeartbeatReply {
        assigned,
        from_leader,
    }
}
