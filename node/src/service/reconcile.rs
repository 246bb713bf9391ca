//! Turning the coordinators' assignments into loads and unloads.
//!
//! The decision is a pure function ([`reconcile`]); [`Debouncer`] keeps the
//! node from flapping while coordinators briefly disagree: the raft
//! leader's answer is acted on at once (and followers are ignored while a
//! leader answers); otherwise an assignment is acted on only once two
//! consecutive replies carry the same set.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backends::engine::EngineConfig;
use protocol::HeartbeatReply;
use tokio::sync::{mpsc, watch};

use crate::node::{ModelSpec, Node};
use crate::onnx_worker::{is_onnx_file, OnnxSettings, OnnxSpec};

/// What the node should change to match an assignment.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Actions {
    /// Models to load (assigned, servable here, not loaded), in name order.
    pub load: Vec<String>,
    /// Models to unload (loaded, not assigned), in name order.
    pub unload: Vec<String>,
}

impl Actions {
    /// Whether nothing needs to change.
    pub fn is_empty(&self) -> bool {
        self.load.is_empty() && self.unload.is_empty()
    }
}

/// Decides which models to load and unload so that the loaded set matches
/// `assigned`. Assigned models this node has no file for (not in
/// `servable`) are ignored; see [`unservable`].
pub fn reconcile(
    assigned: &BTreeSet<String>,
    loaded: &BTreeSet<String>,
    servable: &BTreeSet<String>,
) -> Actions {
    Actions {
        load: assigned
            .iter()
            .filter(|m| servable.contains(*m) && !loaded.contains(*m))
            .cloned()
            .collect(),
        unload: loaded.difference(assigned).cloned().collect(),
    }
}

/// Assigned models this node has no file for.
pub fn unservable(assigned: &BTreeSet<String>, servable: &BTreeSet<String>) -> Vec<String> {
    assigned.difference(servable).cloned().collect()
}

/// How long after a leader's answer followers' answers are ignored.
pub const LEADER_TRUST: Duration = Duration::from_secs(2);

/// Decides which assignments to act on. Replies without an opinion
/// (`None`) are ignored. The leader's answer is taken at once; while a
/// leader answered within [`LEADER_TRUST`], other coordinators are ignored;
/// without a leader, an assignment is taken once two consecutive replies
/// agree.
#[derive(Debug, Default)]
pub struct Debouncer {
    last: Option<BTreeSet<String>>,
    leader_seen: Option<Instant>,
}

impl Debouncer {
    /// Feeds the next reply (received at `now`); returns the assignment to
    /// act on, if any.
    pub fn observe(
        &mut self,
        now: Instant,
        assigned: Option<&[String]>,
        from_leader: bool,
    ) -> Option<BTreeSet<String>> {
        let set: BTreeSet<String> = assigned?.iter().cloned().collect();
        if from_leader {
            self.leader_seen = Some(now);
            self.last = Some(set.clone());
            return Some(set);
        }
        if self
            .leader_seen
            .is_some_and(|t| now.saturating_duration_since(t) < LEADER_TRUST)
        {
            return None;
        }
        let confirmed = self.last.as_ref() == Some(&set);
        self.last = Some(set.clone());
        confirmed.then_some(set)
    }
}

/// A heartbeat reply and the coordinator it came from.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The coordinator's name.
    pub coordinator: String,
    /// Its answer.
    pub reply: HeartbeatReply,
}

/// Applies confirmed assignments until `replies` closes or shutdown is signalled.
pub(crate) async fn run(
    node: Arc<Node>,
    files: HashMap<String, PathBuf>,
    engine: EngineConfig,
    onnx: OnnxSettings,
    mut replies: mpsc::Receiver<Reply>,
    mut shutdown: watch::Receiver<bool>,
) {
    let servable: BTreeSet<String> = files.keys().cloned().collect();
    let mut debouncer = Debouncer::default();
    let mut warned: HashSet<String> = HashSet::new();
    loop {
        let reply = tokio::select! {
            _ = shutdown.changed() => return,
            r = replies.recv() => match r {
                Some(r) => r,
                None => return,
            },
        };
        if *shutdown.borrow() {
            return;
        }
        let Some(assigned) = debouncer.observe(
            Instant::now(),
            reply.reply.assigned.as_deref(),
            reply.reply.from_leader,
        ) else {
            continue;
        };
        let missing = unservable(&assigned, &servable);
        warned.retain(|m| missing.contains(m));
        for m in missing {
            if warned.insert(m.clone()) {
                tracing::warn!(model = %m, coordinator = %reply.coordinator,
                    "assigned a model this node has no file for; ignoring it");
            }
        }
        let loaded: BTreeSet<String> = node.models().into_iter().collect();
        let actions = reconcile(&assigned, &loaded, &servable);
        if actions.is_empty() {
            continue;
        }
        tracing::info!(load = ?actions.load, unload = ?actions.unload, "reconciling models");
        for name in actions.unload {
            if let Err(e) = node.unload(&name).await {
                tracing::warn!(model = %name, "unload failed: {e}");
            }
        }
        for name in actions.load {
            let Some(path) = files.get(&name) else {
                continue;
            };
            if is_onnx_file(path) {
                let spec = OnnxSpec {
                    name: name.clone(),
                    path: path.clone(),
                    settings: onnx.clone(),
                };
                if let Err(e) = node.load_onnx(spec).await {
                    tracing::warn!(model = %name, "load failed: {e}");
                }
                continue;
            }
            let spec = ModelSpec {
                name: name.clone(),
                path: path.clone(),
                engine: engine.clone(),
            };
            if let Err(e) = node.load(spec).await {
                tracing::warn!(model = %name, "load failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn vec(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn loads_missing_and_unloads_unassigned() {
        let a = reconcile(&set(&["a", "b"]), &set(&["b", "c"]), &set(&["a", "b", "c"]));
        assert_eq!(
            a,
            Actions {
                load: vec(&["a"]),
                unload: vec(&["c"])
            }
        );
    }

    #[test]
    fn converged_state_needs_nothing() {
        let a = reconcile(&set(&["a"]), &set(&["a"]), &set(&["a", "b"]));
        assert!(a.is_empty());
    }

    #[test]
    fn unservable_assignments_are_ignored() {
        let a = reconcile(&set(&["a", "x"]), &set(&[]), &set(&["a"]));
        assert_eq!(a.load, vec(&["a"]));
        assert!(a.unload.is_empty());
        assert_eq!(unservable(&set(&["a", "x"]), &set(&["a"])), vec(&["x"]));
    }

    #[test]
    fn empty_assignment_unloads_everything() {
        let a = reconcile(&set(&[]), &set(&["a", "b"]), &set(&["a"]));
        assert_eq!(a.unload, vec(&["a", "b"]));
        assert!(a.load.is_empty());
    }

    #[test]
    fn without_a_leader_two_agreeing_replies_are_needed() {
        let t = Instant::now();
        let mut d = Debouncer::default();
        let a = vec(&["a"]);
        let b = vec(&["b"]);
        assert_eq!(d.observe(t, Some(&a), false), None);
        assert_eq!(d.observe(t, None, false), None, "no opinion is ignored");
        assert_eq!(d.observe(t, Some(&a), false), Some(set(&["a"])));
        assert_eq!(d.observe(t, Some(&a), false), Some(set(&["a"])));
        assert_eq!(d.observe(t, Some(&b), false), None, "a disagreement waits");
        assert_eq!(d.observe(t, Some(&a), false), None);
        assert_eq!(d.observe(t, Some(&[]), false), None);
        assert_eq!(d.observe(t, Some(&[]), false), Some(set(&[])));
    }

    #[test]
    fn the_leader_is_followed_at_once_and_outranks_followers() {
        let t = Instant::now();
        let mut d = Debouncer::default();
        let a = vec(&["a"]);
        let stale: Vec<String> = Vec::new();
        assert_eq!(d.observe(t, Some(&a), true), Some(set(&["a"])));
        // Two stale followers agreeing do not override a recent leader.
        assert_eq!(d.observe(t, Some(&stale), false), None);
        assert_eq!(d.observe(t, Some(&stale), false), None);
        assert_eq!(d.observe(t, None, true), None, "no opinion is ignored");
        // Once the leader has been silent for a while, followers count again.
        let later = t + LEADER_TRUST;
        assert_eq!(d.observe(later, Some(&stale), false), None);
        assert_eq!(d.observe(later, Some(&stale), false), Some(set(&[])));
    }
}
