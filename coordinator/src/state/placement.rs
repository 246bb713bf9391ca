//! Pure replica-placement planning, run by the raft leader.
//!
//! [`plan`] looks at a [`ClusterState`] and returns the
//! [`Op::SetPlacement`] / [`Op::RemovePlacement`] ops that move it towards
//! every model running `desired_replicas` healthy replicas:
//!
//! 1. Replicas that cannot count are removed: those on down or unknown
//!    nodes, on nodes that no longer list the model as servable, of
//!    unregistered models, and failed ones (a failed replica is not placed
//!    back on the same node in the same plan).
//! 2. Models with too many replicas lose them from the fullest nodes (least
//!    free memory first).
//! 3. Models with too few replicas get new ones, one replica per model per
//!    pass in model-name order (so every model gets its first replica before
//!    any gets its second), each on the up node with the most free memory
//!    that can serve the model, does not already hold it, and has room.
//!
//! A node's free memory is its `memory_bytes` minus, for every replica it
//! holds, the model's `size_bytes` plus [`PlannerConfig::kv_budget_bytes`].
//! Ties are broken by the smaller node id, so the plan is deterministic.
//! Models that cannot get all their replicas are reported as
//! [`Shortfall`]s.
//!
//! Not handled yet: moving replicas of a model whose version changed, and
//! evicting replicas from a node whose memory shrank below what it holds.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::commands::{Command, NodeStatus, Op, PlacementState};
use super::machine::ClusterState;

/// Default per-replica KV-cache budget: 1 GiB.
pub const DEFAULT_KV_BUDGET_BYTES: u64 = 1 << 30;

/// Tunables of the planner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannerConfig {
    /// Memory reserved for each replica's KV cache on top of the weights.
    pub kv_budget_bytes: u64,
}

impl Default for PlannerConfig {
    fn default() -> Self {
        Self {
            kv_budget_bytes: DEFAULT_KV_BUDGET_BYTES,
        }
    }
}

/// A model that could not get all the replicas it wants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shortfall {
    /// Model name.
    pub model: String,
    /// Replicas wanted.
    pub desired: u32,
    /// Healthy replicas once the plan is applied.
    pub placed: u32,
}

/// The result of [`plan`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Ops to propose, in order: removals first, then new placements.
    pub ops: Vec<Op>,
    /// Models left short of their desired replicas, sorted by name.
    pub shortfalls: Vec<Shortfall>,
}

impl Plan {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The ops wrapped as commands of the current version, ready to propose.
    pub fn commands(&self) -> Vec<Command> {
        self.ops.iter().cloned().map(Command::new).collect()
    }
}

fn replica_bytes(state: &ClusterState, model: &str, config: &PlannerConfig) -> u64 {
    state
        .model(model)
        .map_or(0, |m| m.size_bytes.saturating_add(config.kv_budget_bytes))
}

/// The node in `candidates` with the most free memory (ties: smallest id).
fn most_free<'a>(
    free: &BTreeMap<&'a str, u64>,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    let mut best: Option<(&str, u64)> = None;
    for node in candidates {
        let f = free.get(node).copied().unwrap_or(0);
        if best.is_none_or(|(_, bf)| f > bf) {
            best = Some((node, f));
        }
    }
    best.map(|(n, _)| n)
}

/// The node in `candidates` with the least free memory (ties: smallest id).
fn least_free<'a>(
    free: &BTreeMap<&'a str, u64>,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    let mut best: Option<(&str, u64)> = None;
    for node in candidates {
        let f = free.get(node).copied().unwrap_or(0);
        if best.is_none_or(|(_, bf)| f < bf) {
            best = Some((node, f));
        }
    }
    best.map(|(n, _)| n)
}

/// Plans the placement changes that converge `state` towards every model's
/// desired replica count. Pure and deterministic; see the module docs.
pub fn plan(state: &ClusterState, config: &PlannerConfig) -> Plan {
    let mut ops = Vec::new();

    // Free memory per known node, counting every replica it holds.
    let mut free: BTreeMap<&str, u64> = state
        .nodes()
        .iter()
        .map(|(id, n)| (id.as_str(), n.memory_bytes))
        .collect();
    for (model, nodes) in state.placements() {
        let need = replica_bytes(state, model, config);
        for node in nodes.keys() {
            if let Some(f) = free.get_mut(node.as_str()) {
                *f = f.saturating_sub(need);
            }
        }
    }

    // 1. Drop replicas that cannot count; keep the healthy ones.
    let mut healthy: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    let mut excluded: BTreeSet<(&str, &str)> = BTreeSet::new();
    for (model, nodes) in state.placements() {
        let need = replica_bytes(state, model, config);
        for (node, p) in nodes {
            let keep = state.model(model).is_some()
                && p.state != PlacementState::Failed
                && state
                    .node(node)
                    .is_some_and(|n| n.status == NodeStatus::Up && n.can_serve(model));
            if keep {
                healthy.entry(model).or_default().insert(node);
                continue;
            }
            if p.state == PlacementState::Failed {
                excluded.insert((model, node));
            }
            if let Some(f) = free.get_mut(node.as_str()) {
                *f = f.saturating_add(need);
            }
            ops.push(Op::RemovePlacement {
                model: model.clone(),
                node: node.clone(),
            });
        }
    }

    // 2. Scale down: remove surplus replicas from the fullest nodes.
    for (name, model) in state.models() {
        let need = replica_bytes(state, name, config);
        let Some(nodes) = healthy.get_mut(name.as_str()) else {
            continue;
        };
        while nodes.len() > model.desired_replicas as usize {
            let Some(victim) = least_free(&free, nodes.iter().copied()) else {
                break;
            };
            nodes.remove(victim);
            if let Some(f) = free.get_mut(victim) {
                *f = f.saturating_add(need);
            }
            ops.push(Op::RemovePlacement {
                model: name.clone(),
                node: victim.to_string(),
            });
        }
    }

    // 3. Scale up, one replica per model per pass.
    let mut active: Vec<&str> = state
        .models()
        .iter()
        .filter(|(name, m)| {
            healthy.get(name.as_str()).map_or(0, BTreeSet::len) < m.desired_replicas as usize
        })
        .map(|(name, _)| name.as_str())
        .collect();
    while !active.is_empty() {
        let mut still_active = Vec::new();
        for model in active {
            let need = replica_bytes(state, model, config);
            let desired = state
                .model(model)
                .map_or(0, |m| m.desired_replicas as usize);
            let holders = healthy.entry(model).or_default();
            let candidates = state
                .nodes()
                .iter()
                .filter(|(id, n)| {
                    n.status == NodeStatus::Up
                        && n.can_serve(model)
                        && !holders.contains(id.as_str())
                        && !excluded.contains(&(model, id.as_str()))
                        && free.get(id.as_str()).copied().unwrap_or(0) >= need
                })
                .map(|(id, _)| id.as_str());
            let Some(node) = most_free(&free, candidates) else {
                continue;
            };
            holders.insert(node);
            if let Some(f) = free.get_mut(node) {
                *f = f.saturating_sub(need);
            }
            ops.push(Op::SetPlacement {
                model: model.to_string(),
                node: node.to_string(),
                state: PlacementState::Loading,
            });
            if holders.len() < desired {
                still_active.push(model);
            }
        }
        active = still_active;
    }

    let shortfalls = state
        .models()
        .iter()
        .filter_map(|(name, m)| {
            let placed = healthy.get(name.as_str()).map_or(0, BTreeSet::len);
            (placed < m.desired_replicas as usize).then(|| Shortfall {
                model: name.clone(),
                desired: m.desired_replicas,
                placed: u32::try_from(placed).unwrap_or(u32::MAX),
            })
        })
        .collect();

    Plan { ops, shortfalls }
}
