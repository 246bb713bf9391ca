//! How big the replicated state may grow. A snapshot travels as one frame
//! of at most 16 MiB (`crate::server::wire::MAX_PEER_FRAME_BYTES`): a
//! state past that could no longer bring a new or lagging coordinator up
//! to date. So every entry the state holds is counted (an upper estimate
//! of its encoded size, kept up to date as entries come and go, so no
//! apply has to walk the whole state), and a command that would grow the
//! state past [`STATE_BUDGET_BYTES`] is refused with a clear error. The
//! audit trail is bounded on its own (at most
//! [`MAX_AUDIT_ENTRIES`](super::audit::MAX_AUDIT_ENTRIES) entries of
//! bounded size, about 5 MiB at worst).
//!
//! Some counts are bounded too, so that one tenant cannot take the whole
//! budget: keys per tenant, active federated jobs per tenant, metrics per
//! round; finished federated jobs past [`MAX_FL_JOBS`] are forgotten,
//! oldest first, to make room for new ones.

use super::machine::{ApiKey, CoordinatorInfo, FlJob, FlRound, ModelInfo, NodeInfo, MAX_NAME_LEN};

/// Most bytes the state holds outside the audit trail.
pub const STATE_BUDGET_BYTES: u64 = 8 << 20;

/// Most API keys of one tenant.
pub const MAX_KEYS_PER_TENANT: usize = 1000;

/// Most federated jobs of one tenant that are not finished.
pub const MAX_ACTIVE_FL_JOBS_PER_TENANT: usize = 16;

/// Most federated jobs kept; past it, the oldest finished one is forgotten
/// when a job is created.
pub const MAX_FL_JOBS: usize = 256;

/// Longest federated job spec, in bytes.
pub const MAX_FL_SPEC_BYTES: usize = 64 << 10;

/// Most metrics one federated round records.
pub const MAX_ROUND_METRICS: usize = 32;

/// Longest metric name, in bytes.
pub const MAX_METRIC_NAME_LEN: usize = 64;

/// A string as counted: its bytes and its length prefix.
fn text(s: &str) -> u64 {
    s.len() as u64 + 8
}

/// A coordinator record.
pub fn coordinator_bytes(c: &CoordinatorInfo) -> u64 {
    8 + text(&c.name) + text(&c.addr)
}

/// A node record.
pub fn node_bytes(id: &str, n: &NodeInfo) -> u64 {
    text(id) + text(&n.addr) + 24 + n.servable_models.iter().map(|m| text(m)).sum::<u64>()
}

/// A model record.
pub fn model_bytes(name: &str, m: &ModelInfo) -> u64 {
    text(name) + text(&m.source) + text(&m.format) + 32
}

/// A replica record.
pub fn placement_bytes(model: &str, node: &str) -> u64 {
    text(model) + text(node) + 16
}

/// A tenant record.
pub fn tenant_bytes(name: &str) -> u64 {
    // Its settings: three optional varint limits and a class.
    text(name) + 24
}

/// An API key record.
pub fn key_bytes(hash: &str, k: &ApiKey) -> u64 {
    text(hash) + text(&k.id) + text(&k.tenant) + 48
}

/// One round of a federated job.
pub fn round_bytes(r: &FlRound) -> u64 {
    16 + text(&r.checkpoint_hash) + r.metrics.keys().map(|k| text(k) + 8).sum::<u64>()
}

/// A revoked certificate.
pub fn revoked_bytes(fingerprint: &str, name: &str) -> u64 {
    text(fingerprint) + text(name) + 8
}

/// A federated job's failure reason.
pub fn reason_bytes(reason: Option<&str>) -> u64 {
    reason.map_or(0, text)
}

/// A federated job with its rounds.
pub fn job_bytes(id: &str, j: &FlJob) -> u64 {
    text(id)
        + text(&j.tenant)
        + text(&j.spec)
        + reason_bytes(j.failure.as_deref())
        + 24
        + j.rounds.iter().map(round_bytes).sum::<u64>()
}

/// Whether metric names and count are within bounds.
pub fn check_metrics<'a>(
    mut names: impl ExactSizeIterator<Item = &'a String>,
) -> Result<(), String> {
    if names.len() > MAX_ROUND_METRICS {
        return Err(format!("more than {MAX_ROUND_METRICS} metrics"));
    }
    match names.find(|n| n.is_empty() || n.len() > MAX_METRIC_NAME_LEN.min(MAX_NAME_LEN)) {
        Some(n) => Err(format!(
            "metric name {n:?} is empty or longer than {MAX_METRIC_NAME_LEN} bytes"
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::state::{
        ApplyError, ClusterState, Command, FlJobStatus, KeyLimits, KeyScope, Op, PlacementState,
        TenantSettings,
    };

    /// The estimate computed from scratch.
    fn recount(s: &ClusterState) -> u64 {
        let coordinators: u64 = s.coordinators().values().map(coordinator_bytes).sum();
        let nodes: u64 = s.nodes().iter().map(|(k, n)| node_bytes(k, n)).sum();
        let models: u64 = s.models().iter().map(|(k, m)| model_bytes(k, m)).sum();
        let placements: u64 = s
            .placements()
            .iter()
            .flat_map(|(m, ns)| ns.keys().map(move |n| placement_bytes(m, n)))
            .sum();
        let tenants: u64 = s.tenants().keys().map(|t| tenant_bytes(t)).sum();
        let keys: u64 = s.api_keys().iter().map(|(h, k)| key_bytes(h, k)).sum();
        let jobs: u64 = s.fl_jobs().iter().map(|(k, j)| job_bytes(k, j)).sum();
        let revoked: u64 = s
            .revoked_certs()
            .iter()
            .map(|(f, r)| revoked_bytes(f, &r.name))
            .sum();
        coordinators + nodes + models + placements + tenants + keys + jobs + revoked
    }

    struct Log {
        state: ClusterState,
        index: u64,
        /// Recount after every entry (quadratic: off for long logs).
        recount: bool,
    }

    impl Log {
        fn new() -> Self {
            Log {
                state: ClusterState::new(),
                index: 0,
                recount: true,
            }
        }

        fn apply(&mut self, op: Op) -> Result<(), ApplyError> {
            self.index += 1;
            let r = self.state.apply(self.index, &Command::new(op)).map(|_| ());
            if !self.recount {
                return r;
            }
            assert_eq!(
                self.state.approx_bytes(),
                recount(&self.state),
                "the estimate drifted at entry {}",
                self.index
            );
            r
        }
    }

    fn model(name: &str) -> Op {
        Op::RegisterModel {
            name: name.into(),
            source: "s".repeat(200),
            format: "gguf".into(),
            size_bytes: 1,
            desired_replicas: 1,
        }
    }

    fn job(id: &str, tenant: &str) -> Op {
        Op::CreateFlJob {
            id: id.into(),
            tenant: tenant.into(),
            spec: "rounds = 3".into(),
        }
    }

    fn status(job: &str, status: FlJobStatus) -> Op {
        Op::SetFlJobStatus {
            job: job.into(),
            status,
            reason: (status == FlJobStatus::Failed).then(|| "it broke".into()),
        }
    }

    #[test]
    fn the_estimate_follows_every_kind_of_change() {
        let mut log = Log::new();
        let ops = vec![
            Op::AddCoordinator {
                id: 1,
                name: "c1".into(),
                addr: "a:1".into(),
            },
            Op::AddCoordinator {
                id: 2,
                name: "c2".into(),
                addr: "a:2".into(),
            },
            Op::RemoveCoordinator { id: 2 },
            Op::RegisterNode {
                id: "n1".into(),
                addr: "a:3".into(),
                cores: 2,
                memory_bytes: 1 << 30,
                servable_models: vec!["m".into()],
            },
            Op::RegisterNode {
                id: "n1".into(),
                addr: "a:33".into(),
                cores: 2,
                memory_bytes: 1 << 30,
                servable_models: vec![],
            },
            model("m"),
            model("m2"),
            Op::SetPlacement {
                model: "m".into(),
                node: "n1".into(),
                state: PlacementState::Loading,
            },
            Op::SetPlacement {
                model: "m2".into(),
                node: "n1".into(),
                state: PlacementState::Loading,
            },
            Op::SetPlacement {
                model: "m".into(),
                node: "n1".into(),
                state: PlacementState::Ready,
            },
            Op::RemovePlacement {
                model: "m2".into(),
                node: "n1".into(),
            },
            Op::UnregisterModel { name: "m".into() },
            Op::Bootstrap {
                key_hash: "a".repeat(64),
                id: "k0".into(),
                created_at_unix: 1,
            },
            Op::CreateTenant { name: "t".into() },
            Op::SetTenant {
                name: "t".into(),
                settings: TenantSettings {
                    limits: KeyLimits {
                        rpm: Some(u32::MAX),
                        tpm: Some(u32::MAX),
                        max_concurrent: Some(u32::MAX),
                    },
                    priority: protocol::Priority::Batch,
                },
            },
            Op::SetTenant {
                name: "new".into(),
                settings: TenantSettings::default(),
            },
            Op::AddApiKey {
                tenant: "t".into(),
                key_hash: "b".repeat(64),
                id: "k1".into(),
                scope: KeyScope::Inference,
                created_at_unix: 1,
                expires_at_unix: None,
                limits: KeyLimits::default(),
            },
            Op::RevokeApiKey {
                tenant: "t".into(),
                key_hash: "b".repeat(64),
            },
            job("j", "t"),
            status("j", FlJobStatus::Running),
            Op::FlRoundCommitted {
                job: "j".into(),
                round: 1,
                checkpoint_hash: "c".repeat(64),
                metrics: BTreeMap::from([("loss".to_string(), 0.5)]),
            },
            status("j", FlJobStatus::Failed),
            Op::RevokeCert {
                fingerprint: "d".repeat(64),
                name: "n1".into(),
                revoked_at_unix: 9,
            },
        ];
        for op in ops {
            log.apply(op).unwrap();
        }
        assert!(log.state.approx_bytes() > 0);
        // Revoking a node's certificate marks the node down.
        assert!(log.state.is_revoked(&"d".repeat(64)));
        assert_eq!(
            log.state.node("n1").map(|n| n.status),
            Some(crate::state::NodeStatus::Down)
        );
    }

    #[test]
    fn a_write_past_the_budget_is_refused_and_room_can_be_made() {
        let mut log = Log::new();
        log.recount = false;
        let mut n = 0;
        let err = loop {
            match log.apply(model(&format!("model-{n}"))) {
                Ok(()) => n += 1,
                Err(e) => break e,
            }
            assert!(n < 1_000_000, "the budget never bit");
        };
        assert!(matches!(err, ApplyError::StateFull { .. }), "{err}");
        assert!(err.to_string().contains("budget"), "{err}");
        assert!(log.state.approx_bytes() <= STATE_BUDGET_BYTES);
        assert_eq!(log.state.approx_bytes(), recount(&log.state));
        // The estimate is an upper bound of the real encoding, which fits
        // a snapshot frame with room for the audit trail.
        let snapshot = crate::state::snapshot(&log.state).unwrap();
        assert!(snapshot.len() as u64 <= log.state.approx_bytes() + 1024);
        assert!(snapshot.len() < 10 << 20);
        log.recount = true;
        let before = log.state.clone();
        assert!(log.apply(model("one-more")).is_err());
        assert_eq!(log.state.models(), before.models());
        log.apply(Op::UnregisterModel {
            name: "model-0".into(),
        })
        .unwrap();
        log.apply(model("one-more")).unwrap();
    }

    #[test]
    fn unfinished_jobs_are_capped_per_tenant_and_finished_ones_age_out() {
        let mut log = Log::new();
        for i in 0..MAX_ACTIVE_FL_JOBS_PER_TENANT {
            log.apply(job(&format!("a{i}"), "acme")).unwrap();
        }
        let err = log.apply(job("one-too-many", "acme")).unwrap_err();
        assert!(matches!(err, ApplyError::LimitReached { .. }), "{err}");
        // Another tenant is not held up by acme's jobs.
        log.apply(job("other", "globex")).unwrap();
        // Finish every job, then create more than the cluster keeps: the
        // oldest finished ones are forgotten first.
        let ids: Vec<String> = log.state.fl_jobs().keys().cloned().collect();
        for id in &ids {
            log.apply(status(id, FlJobStatus::Cancelled)).unwrap();
        }
        for i in 0..MAX_FL_JOBS {
            let id = format!("b{i}");
            log.apply(job(&id, "acme")).unwrap();
            log.apply(status(&id, FlJobStatus::Cancelled)).unwrap();
        }
        assert_eq!(log.state.fl_jobs().len(), MAX_FL_JOBS);
        assert!(log.state.fl_job("a0").is_none(), "the oldest job was kept");
        assert!(log.state.fl_job(&format!("b{}", MAX_FL_JOBS - 1)).is_some());
    }

    #[test]
    fn rounds_with_too_many_or_bad_metrics_are_refused() {
        let mut log = Log::new();
        log.apply(job("j", "t")).unwrap();
        log.apply(status("j", FlJobStatus::Running)).unwrap();
        let round = |metrics: BTreeMap<String, f64>| Op::FlRoundCommitted {
            job: "j".into(),
            round: 1,
            checkpoint_hash: "c".repeat(64),
            metrics,
        };
        let many = (0..=MAX_ROUND_METRICS)
            .map(|i| (format!("m{i}"), 1.0))
            .collect();
        assert!(log.apply(round(many)).is_err());
        let long = BTreeMap::from([("x".repeat(MAX_METRIC_NAME_LEN + 1), 1.0)]);
        assert!(log.apply(round(long)).is_err());
        assert_eq!(log.state.fl_job("j").map(|j| j.rounds.len()), Some(0));
        let spec = "x".repeat(MAX_FL_SPEC_BYTES + 1);
        let big = Op::CreateFlJob {
            id: "big".into(),
            tenant: "t".into(),
            spec,
        };
        assert!(log.apply(big).is_err());
    }
}
