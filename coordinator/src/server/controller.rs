//! The leader's control loop: turns node heartbeats into raft writes
//! (registration, up/down, replica states) and runs the placement planner.
//!
//! [`control_ops`] is pure: it looks at the applied state and the
//! heartbeat table and returns the ops to propose. [`run`] calls it
//! periodically on the leader and commits the ops one by one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use protocol::ReplicaState;
use tokio::sync::{mpsc, watch};

use super::nodes::{NodeRegistry, SeenNode};
use super::peers::submit_write;
use super::raft_loop::{LocalView, LoopRequest};
use super::wire::WriteReply;
use crate::state::{plan, ClusterState, Command, NodeStatus, Op, PlacementState, PlannerConfig};

/// Tunables of the control loop.
#[derive(Debug, Clone, Copy)]
pub struct ControlConfig {
    /// A node silent for this long is marked down.
    pub node_down_after: Duration,
    /// How often the leader looks at the cluster.
    pub interval: Duration,
    /// Planner settings (KV budget per replica).
    pub planner: PlannerConfig,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            node_down_after: Duration::from_secs(3),
            interval: Duration::from_millis(250),
            planner: PlannerConfig::default(),
        }
    }
}

/// The ops that bring `state` in line with what the nodes report, then
/// the placement plan over the result.
///
/// - a node heard from recently that is unknown, changed, or down is
///   (re-)registered, which marks it up;
/// - an up node silent for `node_down_after` is marked down, but only once
///   this coordinator has listened for that long itself (`listening`), so
///   a freshly elected leader does not mark everyone down;
/// - a loading replica the node reports ready becomes ready; one it
///   reports failed becomes failed (and the planner moves it);
/// - then [`plan`] places, moves and removes replicas.
pub fn control_ops(
    state: &ClusterState,
    seen: &BTreeMap<String, SeenNode>,
    listening: Duration,
    cfg: &ControlConfig,
) -> Vec<Op> {
    let mut ops = Vec::new();
    // A heartbeat that came with a revoked certificate does not count.
    let fresh = |s: &SeenNode| s.age < cfg.node_down_after && !state.is_revoked(&s.fingerprint);
    for (id, s) in seen.iter().filter(|(_, s)| fresh(s)) {
        let hb = &s.heartbeat;
        let servable: BTreeSet<String> = hb.servable.iter().map(|m| m.name.clone()).collect();
        let current = state.node(id);
        let same = current.is_some_and(|n| {
            n.addr == hb.addr
                && n.cores == hb.cores
                && n.memory_bytes == hb.memory_bytes
                && n.servable_models == servable
                && n.status == NodeStatus::Up
        });
        if !same {
            ops.push(Op::RegisterNode {
                id: id.clone(),
                addr: hb.addr.clone(),
                cores: hb.cores,
                memory_bytes: hb.memory_bytes,
                servable_models: servable.into_iter().collect(),
            });
        }
    }
    if listening >= cfg.node_down_after {
        for (id, n) in state.nodes() {
            let silent = seen.get(id).is_none_or(|s| !fresh(s));
            if n.status == NodeStatus::Up && silent {
                ops.push(Op::SetNodeStatus {
                    id: id.clone(),
                    status: NodeStatus::Down,
                });
            }
        }
    }
    for (model, nodes) in state.placements() {
        for (node, p) in nodes {
            let Some(s) = seen.get(node).filter(|s| fresh(s)) else {
                continue;
            };
            let reported = s
                .heartbeat
                .replicas
                .iter()
                .find(|r| &r.model == model)
                .map(|r| r.state);
            let next = match (p.state, reported) {
                (PlacementState::Loading, Some(ReplicaState::Ready)) => PlacementState::Ready,
                (PlacementState::Loading | PlacementState::Ready, Some(ReplicaState::Failed)) => {
                    PlacementState::Failed
                }
                _ => continue,
            };
            ops.push(Op::SetPlacement {
                model: model.clone(),
                node: node.clone(),
                state: next,
            });
        }
    }
    // Plan over the state as it will be once these ops are applied.
    let mut next = state.clone();
    for op in &ops {
        let index = next.applied_index() + 1;
        // A refused op changes nothing; the planner sees the state as is.
        let _ = next.apply(index, &Command::new(op.clone()));
    }
    ops.extend(plan(&next, &cfg.planner).ops);
    ops
}

/// Records every voter's name and address in the replicated state (from
/// `known`: id → (member name, QUIC address)), so that members learn each
/// other's addresses from the log, including members added later.
pub fn member_ops(
    state: &ClusterState,
    voters: &[u64],
    known: &BTreeMap<u64, (String, String)>,
) -> Vec<Op> {
    voters
        .iter()
        .filter(|id| !state.coordinators().contains_key(id))
        .filter_map(|id| {
            let (name, addr) = known.get(id)?;
            Some(Op::AddCoordinator {
                id: *id,
                name: name.clone(),
                addr: addr.clone(),
            })
        })
        .collect()
}

/// Runs the control loop until the raft loop goes away. Only acts while
/// this coordinator is the leader. `members` are the coordinators this
/// one knows from its configuration (id → (name, address)).
pub async fn run(
    mut view: watch::Receiver<LocalView>,
    registry: Arc<NodeRegistry>,
    requests: mpsc::Sender<LoopRequest>,
    cfg: ControlConfig,
    members: BTreeMap<u64, (String, String)>,
    timeout: Duration,
) {
    let mut ticker = tokio::time::interval(cfg.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // How long this coordinator has been the leader without interruption.
    let mut leader_since: Option<tokio::time::Instant> = None;
    loop {
        ticker.tick().await;
        if view.has_changed().is_err() {
            return;
        }
        let current = view.borrow_and_update().clone();
        if !current.is_leader {
            leader_since = None;
            continue;
        }
        let since = *leader_since.get_or_insert_with(tokio::time::Instant::now);
        let listening = since.elapsed().min(registry.uptime());
        let mut ops = member_ops(&current.state, &current.voters, &members);
        ops.extend(control_ops(
            &current.state,
            &registry.snapshot(),
            listening,
            &cfg,
        ));
        for op in ops {
            tracing::info!(?op, "controller");
            match submit_write(&requests, op, timeout).await {
                WriteReply::Applied(_) => {}
                WriteReply::Rejected { message, .. } => {
                    tracing::warn!("controller write refused: {message}");
                }
                // Lost leadership or no quorum: look again next tick.
                WriteReply::NotLeader { .. } | WriteReply::Unavailable { .. } => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{NodeHeartbeat, ReplicaReport, ServableModel};

    const GIB: u64 = 1 << 30;

    fn cfg() -> ControlConfig {
        ControlConfig {
            planner: PlannerConfig {
                kv_budget_bytes: GIB / 2,
            },
            ..ControlConfig::default()
        }
    }

    fn heartbeat(id: &str, replicas: &[(&str, ReplicaState)]) -> NodeHeartbeat {
        NodeHeartbeat {
            node_id: id.into(),
            addr: format!("{id}:9000"),
            cores: 2,
            memory_bytes: 4 * GIB,
            free_kv_bytes: 0,
            servable: vec![ServableModel {
                name: "m".into(),
                size_bytes: GIB / 10,
                card: None,
                signature: None,
            }],
            replicas: replicas
                .iter()
                .map(|(model, state)| ReplicaReport {
                    model: model.to_string(),
                    state: *state,
                    running: 0,
                    waiting: 0,
                    error: None,
                    kv: None,
                })
                .collect(),
            fl_client: None,
        }
    }

    fn seen(hbs: Vec<NodeHeartbeat>, age: Duration) -> BTreeMap<String, SeenNode> {
        hbs.into_iter()
            .map(|hb| {
                (
                    hb.node_id.clone(),
                    SeenNode {
                        age,
                        ..SeenNode::new(hb)
                    },
                )
            })
            .collect()
    }

    fn apply_all(state: &mut ClusterState, ops: &[Op]) {
        for op in ops {
            let index = state.applied_index() + 1;
            state.apply(index, &Command::new(op.clone())).unwrap();
        }
    }

    fn with_model(replicas: u32) -> ClusterState {
        let mut s = ClusterState::new();
        apply_all(
            &mut s,
            &[Op::RegisterModel {
                name: "m".into(),
                source: "/models/m.gguf".into(),
                format: "gguf".into(),
                size_bytes: GIB / 10,
                desired_replicas: replicas,
            }],
        );
        s
    }

    const LONG: Duration = Duration::from_secs(60);

    #[test]
    fn new_nodes_are_registered_and_get_replicas() {
        let state = with_model(2);
        let seen = seen(
            vec![heartbeat("a", &[]), heartbeat("b", &[])],
            Duration::ZERO,
        );
        let ops = control_ops(&state, &seen, LONG, &cfg());
        let registered = ops
            .iter()
            .filter(|o| matches!(o, Op::RegisterNode { .. }))
            .count();
        assert_eq!(registered, 2, "{ops:?}");
        let placed: BTreeSet<&str> = ops
            .iter()
            .filter_map(|o| match o {
                Op::SetPlacement {
                    node,
                    state: PlacementState::Loading,
                    ..
                } => Some(node.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(placed, BTreeSet::from(["a", "b"]), "one replica per node");
        // Once applied, the same heartbeats ask for nothing more.
        let mut state = state;
        apply_all(&mut state, &ops);
        assert!(control_ops(&state, &seen, LONG, &cfg()).is_empty());
    }

    #[test]
    fn reported_states_move_replicas_and_failures_are_replaced() {
        let mut state = with_model(1);
        let quiet = seen(
            vec![heartbeat("a", &[]), heartbeat("b", &[])],
            Duration::ZERO,
        );
        let ops = control_ops(&state, &quiet, LONG, &cfg());
        apply_all(&mut state, &ops);
        let holder = state.placements_of("m").next().unwrap().0.clone();
        let other = if holder == "a" { "b" } else { "a" };

        let ready = seen(
            vec![
                heartbeat(&holder, &[("m", ReplicaState::Ready)]),
                heartbeat(other, &[]),
            ],
            Duration::ZERO,
        );
        let ops = control_ops(&state, &ready, LONG, &cfg());
        assert_eq!(
            ops,
            vec![Op::SetPlacement {
                model: "m".into(),
                node: holder.clone(),
                state: PlacementState::Ready
            }]
        );
        apply_all(&mut state, &ops);

        let failed = seen(
            vec![
                heartbeat(&holder, &[("m", ReplicaState::Failed)]),
                heartbeat(other, &[]),
            ],
            Duration::ZERO,
        );
        let ops = control_ops(&state, &failed, LONG, &cfg());
        apply_all(&mut state, &ops);
        let holders: Vec<&String> = state.placements_of("m").map(|(n, _)| n).collect();
        assert_eq!(holders, vec![other], "the failed replica moved: {ops:?}");
    }

    #[test]
    fn silent_nodes_go_down_only_after_listening_long_enough() {
        let mut state = with_model(1);
        let fresh = seen(
            vec![heartbeat("a", &[]), heartbeat("b", &[])],
            Duration::ZERO,
        );
        let ops = control_ops(&state, &fresh, LONG, &cfg());
        apply_all(&mut state, &ops);
        let holder = state.placements_of("m").next().unwrap().0.clone();
        let other = if holder == "a" { "b" } else { "a" };

        let mut silent = fresh.clone();
        silent.get_mut(&holder).unwrap().age = Duration::from_secs(10);
        // A leader that has only just started listening waits.
        let short = Duration::from_secs(1);
        assert!(control_ops(&state, &silent, short, &cfg())
            .iter()
            .all(|o| !matches!(o, Op::SetNodeStatus { .. })));

        let ops = control_ops(&state, &silent, LONG, &cfg());
        assert!(ops.contains(&Op::SetNodeStatus {
            id: holder.clone(),
            status: NodeStatus::Down
        }));
        apply_all(&mut state, &ops);
        let holders: Vec<&String> = state.placements_of("m").map(|(n, _)| n).collect();
        assert_eq!(holders, vec![other], "re-placed off the down node");

        // It comes back: registered (up) again.
        let ops = control_ops(&state, &fresh, LONG, &cfg());
        assert!(ops
            .iter()
            .any(|o| matches!(o, Op::RegisterNode { id, .. } if *id == holder)));
    }
}
