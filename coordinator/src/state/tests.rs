//! Tests of the state machine, snapshots and placement planner together.

use std::collections::BTreeMap;

use super::commands::*;
use super::machine::*;
use super::placement::*;
use super::snapshot::*;

const GIB: u64 = 1 << 30;

fn hash(c: char) -> String {
    c.to_string().repeat(64)
}

/// Applies ops at consecutive indices after the current one, requiring each
/// to succeed.
fn apply_ok(state: &mut ClusterState, ops: impl IntoIterator<Item = Op>) {
    for op in ops {
        let index = state.applied_index() + 1;
        let res = state.apply(index, &Command::new(op.clone()));
        assert!(res.is_ok(), "{op:?} failed: {res:?}");
    }
}

/// Applies one op at the next index, returning the result.
fn apply1(state: &mut ClusterState, op: Op) -> Result<ApplyOutcome, ApplyError> {
    let index = state.applied_index() + 1;
    state.apply(index, &Command::new(op))
}

/// Applies an op that must fail; checks the state is unchanged apart from
/// the applied index.
fn apply_err(state: &mut ClusterState, op: Op) -> ApplyError {
    let before = state.clone();
    let index = state.applied_index() + 1;
    let err = state.apply(index, &Command::new(op)).unwrap_err();
    assert_eq!(state.applied_index(), index, "index must advance");
    let mut expected = before;
    expected
        .apply(index, &Command::new(Op::RemoveCoordinator { id: u64::MAX }))
        .unwrap_err();
    assert_eq!(*state, expected, "refused op must not change state");
    err
}

fn node(id: &str, mem_gib: u64) -> Op {
    Op::RegisterNode {
        id: id.into(),
        addr: format!("{id}:7100"),
        cores: 8,
        memory_bytes: mem_gib * GIB,
        servable_models: vec![],
    }
}

fn model(name: &str, size_gib: u64, replicas: u32) -> Op {
    Op::RegisterModel {
        name: name.into(),
        source: format!("hf://org/{name}"),
        format: "gguf".into(),
        size_bytes: size_gib * GIB,
        desired_replicas: replicas,
    }
}

fn set(model: &str, node: &str, state: PlacementState) -> Op {
    Op::SetPlacement {
        model: model.into(),
        node: node.into(),
        state,
    }
}

fn status(id: &str, status: NodeStatus) -> Op {
    Op::SetNodeStatus {
        id: id.into(),
        status,
    }
}

// ---------------------------------------------------------------- index

#[test]
fn index_is_idempotent() {
    let mut s = ClusterState::new();
    let cmd = Command::new(Op::CreateTenant { name: "t".into() });
    assert_eq!(s.apply(5, &cmd), Ok(ApplyOutcome::Applied));
    assert_eq!(s.applied_index(), 5);
    // Replaying the same or an older index is ignored, not a duplicate error.
    assert_eq!(
        s.apply(5, &cmd),
        Ok(ApplyOutcome::AlreadyApplied { applied_index: 5 })
    );
    assert_eq!(
        s.apply(3, &Command::new(Op::CreateTenant { name: "u".into() })),
        Ok(ApplyOutcome::AlreadyApplied { applied_index: 5 })
    );
    assert!(!s.tenants().contains_key("u"));
    assert_eq!(
        s.apply(0, &cmd),
        Ok(ApplyOutcome::AlreadyApplied { applied_index: 5 })
    );
    // The next index applies (and here fails as a duplicate).
    assert_eq!(s.apply(6, &cmd), Err(ApplyError::TenantExists("t".into())));
    assert_eq!(s.applied_index(), 6);
    assert_eq!(
        s.apply_entry(6, &[0xff]),
        Ok(ApplyOutcome::AlreadyApplied { applied_index: 6 })
    );
}

#[test]
fn unknown_command_version_refused_but_consumed() {
    let mut s = ClusterState::new();
    let cmd = Command {
        version: COMMAND_VERSION + 1,
        op: Op::CreateTenant { name: "t".into() },
    };
    assert_eq!(
        s.apply(1, &cmd),
        Err(ApplyError::UnsupportedVersion {
            version: COMMAND_VERSION + 1,
            supported: COMMAND_VERSION
        })
    );
    assert_eq!(s.applied_index(), 1);
    assert!(s.tenants().is_empty());

    // Through the raw-entry path too.
    let bytes = encode(&cmd).unwrap();
    assert_eq!(
        s.apply_entry(2, &bytes),
        Err(ApplyError::UnsupportedVersion {
            version: COMMAND_VERSION + 1,
            supported: COMMAND_VERSION
        })
    );
    assert_eq!(s.applied_index(), 2);
    assert!(s.tenants().is_empty());
}

#[test]
fn apply_entry_decodes_and_refuses_garbage() {
    let mut s = ClusterState::new();
    let bytes = encode(&Command::new(Op::CreateTenant { name: "t".into() })).unwrap();
    assert_eq!(s.apply_entry(1, &bytes), Ok(ApplyOutcome::Applied));
    assert!(s.tenants().contains_key("t"));
    assert!(matches!(
        s.apply_entry(2, &[COMMAND_VERSION as u8, 0xff, 0xff]),
        Err(ApplyError::Undecodable(_))
    ));
    assert_eq!(s.applied_index(), 2);
}

// ---------------------------------------------------------- coordinators

#[test]
fn coordinators() {
    let mut s = ClusterState::new();
    apply_ok(
        &mut s,
        [
            Op::AddCoordinator {
                id: 1,
                name: "c1".into(),
                addr: "a:1".into(),
            },
            Op::AddCoordinator {
                id: 2,
                name: "c2".into(),
                addr: "b:1".into(),
            },
        ],
    );
    assert_eq!(s.coordinators().len(), 2);
    assert_eq!(s.coordinators()[&2].addr, "b:1");
    assert_eq!(
        apply_err(
            &mut s,
            Op::AddCoordinator {
                id: 1,
                name: "c1".into(),
                addr: "c:1".into()
            }
        ),
        ApplyError::CoordinatorExists(1)
    );
    assert_eq!(
        apply_err(
            &mut s,
            Op::AddCoordinator {
                id: 3,
                name: "c3".into(),
                addr: "a:1".into()
            }
        ),
        ApplyError::CoordinatorAddrInUse {
            addr: "a:1".into(),
            id: 1
        }
    );
    assert!(matches!(
        apply_err(
            &mut s,
            Op::AddCoordinator {
                id: 3,
                name: "c3".into(),
                addr: String::new()
            }
        ),
        ApplyError::InvalidField { field: "addr", .. }
    ));
    apply_ok(&mut s, [Op::RemoveCoordinator { id: 1 }]);
    assert_eq!(
        apply_err(&mut s, Op::RemoveCoordinator { id: 1 }),
        ApplyError::UnknownCoordinator(1)
    );
    assert_eq!(
        apply_err(&mut s, Op::RemoveCoordinator { id: 2 }),
        ApplyError::LastCoordinator(2)
    );
}

// ----------------------------------------------------------------- nodes

#[test]
fn nodes_register_update_and_status() {
    let mut s = ClusterState::new();
    assert_eq!(apply1(&mut s, node("n1", 16)), Ok(ApplyOutcome::Applied));
    let n = s.node("n1").unwrap();
    assert_eq!(
        (n.cores, n.memory_bytes, n.status),
        (8, 16 * GIB, NodeStatus::Up)
    );
    assert!(n.can_serve("anything"));
    // Same registration again: unchanged.
    assert_eq!(apply1(&mut s, node("n1", 16)), Ok(ApplyOutcome::Unchanged));

    assert_eq!(
        apply1(&mut s, status("n1", NodeStatus::Down)),
        Ok(ApplyOutcome::Applied)
    );
    assert_eq!(s.node("n1").unwrap().status, NodeStatus::Down);
    assert_eq!(
        apply1(&mut s, status("n1", NodeStatus::Down)),
        Ok(ApplyOutcome::Unchanged)
    );
    // Re-registering (node restart) updates it and marks it up.
    apply_ok(
        &mut s,
        [Op::RegisterNode {
            id: "n1".into(),
            addr: "n1:7200".into(),
            cores: 4,
            memory_bytes: 8 * GIB,
            servable_models: vec!["b".into(), "a".into(), "a".into()],
        }],
    );
    let n = s.node("n1").unwrap();
    assert_eq!(n.status, NodeStatus::Up);
    assert_eq!(n.addr, "n1:7200");
    assert_eq!(
        n.servable_models.iter().collect::<Vec<_>>(),
        ["a", "b"],
        "servable models are a sorted set"
    );
    assert!(n.can_serve("a") && !n.can_serve("c"));
}

#[test]
fn node_validation_errors() {
    let mut s = ClusterState::new();
    assert_eq!(
        apply_err(&mut s, status("ghost", NodeStatus::Up)),
        ApplyError::UnknownNode("ghost".into())
    );
    let bad = |cores, memory_bytes, id: &str| Op::RegisterNode {
        id: id.into(),
        addr: "x:1".into(),
        cores,
        memory_bytes,
        servable_models: vec![],
    };
    assert!(matches!(
        apply_err(&mut s, bad(0, GIB, "n")),
        ApplyError::InvalidField { field: "cores", .. }
    ));
    assert!(matches!(
        apply_err(&mut s, bad(1, 0, "n")),
        ApplyError::InvalidField {
            field: "memory_bytes",
            ..
        }
    ));
    assert!(matches!(
        apply_err(&mut s, bad(1, GIB, "")),
        ApplyError::InvalidField {
            field: "node id",
            ..
        }
    ));
    assert!(matches!(
        apply_err(&mut s, bad(1, GIB, &"x".repeat(MAX_NAME_LEN + 1))),
        ApplyError::InvalidField {
            field: "node id",
            ..
        }
    ));
}

// ---------------------------------------------------------------- models

#[test]
fn models_register_version_scale_unregister() {
    let mut s = ClusterState::new();
    assert_eq!(
        apply1(&mut s, model("m", 4, 2)),
        Ok(ApplyOutcome::ModelRegistered { version: 1 })
    );
    assert_eq!(
        apply1(&mut s, model("m", 4, 2)),
        Ok(ApplyOutcome::Unchanged)
    );
    // Only the replica count changes: same version.
    assert_eq!(
        apply1(&mut s, model("m", 4, 3)),
        Ok(ApplyOutcome::ModelRegistered { version: 1 })
    );
    assert_eq!(s.model("m").unwrap().desired_replicas, 3);
    // New artifact: version bump.
    assert_eq!(
        apply1(&mut s, model("m", 5, 3)),
        Ok(ApplyOutcome::ModelRegistered { version: 2 })
    );
    assert_eq!(s.model("m").unwrap().size_bytes, 5 * GIB);

    assert_eq!(
        apply1(
            &mut s,
            Op::ScaleModel {
                name: "m".into(),
                desired_replicas: 1
            }
        ),
        Ok(ApplyOutcome::Applied)
    );
    assert_eq!(s.model("m").unwrap().desired_replicas, 1);
    assert_eq!(
        apply1(
            &mut s,
            Op::ScaleModel {
                name: "m".into(),
                desired_replicas: 1
            }
        ),
        Ok(ApplyOutcome::Unchanged)
    );

    // Unregistering drops the placements too.
    apply_ok(
        &mut s,
        [
            node("n1", 16),
            node("n2", 16),
            set("m", "n2", PlacementState::Loading),
            set("m", "n1", PlacementState::Loading),
        ],
    );
    assert_eq!(
        apply1(&mut s, Op::UnregisterModel { name: "m".into() }),
        Ok(ApplyOutcome::ModelUnregistered {
            removed_placements: vec!["n1".into(), "n2".into()]
        })
    );
    assert!(s.models().is_empty());
    assert!(s.placements().is_empty());
}

#[test]
fn model_validation_errors() {
    let mut s = ClusterState::new();
    assert_eq!(
        apply_err(
            &mut s,
            Op::ScaleModel {
                name: "nope".into(),
                desired_replicas: 2
            }
        ),
        ApplyError::UnknownModel("nope".into())
    );
    assert_eq!(
        apply_err(
            &mut s,
            Op::UnregisterModel {
                name: "nope".into()
            }
        ),
        ApplyError::UnknownModel("nope".into())
    );
    assert!(matches!(
        apply_err(&mut s, model("m", 0, 1)),
        ApplyError::InvalidField {
            field: "size_bytes",
            ..
        }
    ));
    assert!(matches!(
        apply_err(&mut s, model("", 1, 1)),
        ApplyError::InvalidField {
            field: "model name",
            ..
        }
    ));
}

// ------------------------------------------------------------ placements

#[test]
fn placement_lifecycle() {
    use PlacementState::*;
    let mut s = ClusterState::new();
    apply_ok(&mut s, [node("n1", 16), model("m", 4, 1)]);
    apply_ok(&mut s, [set("m", "n1", Loading)]);
    assert_eq!(
        s.placement("m", "n1"),
        Some(&Placement {
            state: Loading,
            model_version: 1
        })
    );
    apply_ok(&mut s, [set("m", "n1", Ready)]);
    assert_eq!(
        apply1(&mut s, set("m", "n1", Ready)),
        Ok(ApplyOutcome::Unchanged)
    );
    apply_ok(&mut s, [set("m", "n1", Failed)]);
    // Retry in place after a new model version: the replica records it.
    apply_ok(&mut s, [model("m", 5, 1), set("m", "n1", Loading)]);
    assert_eq!(s.placement("m", "n1").unwrap().model_version, 2);
    assert_eq!(s.placements_of("m").count(), 1);
    assert_eq!(
        s.placements_on("n1")
            .map(|(m, _)| m.as_str())
            .collect::<Vec<_>>(),
        ["m"]
    );
    apply_ok(
        &mut s,
        [Op::RemovePlacement {
            model: "m".into(),
            node: "n1".into(),
        }],
    );
    assert!(s.placement("m", "n1").is_none());
    assert!(s.placements().is_empty(), "empty inner maps are pruned");
}

#[test]
fn placement_validation_errors() {
    use PlacementState::*;
    let mut s = ClusterState::new();
    apply_ok(
        &mut s,
        [
            node("n1", 16),
            Op::RegisterNode {
                id: "picky".into(),
                addr: "p:1".into(),
                cores: 1,
                memory_bytes: GIB,
                servable_models: vec!["other".into()],
            },
            node("down", 16),
            status("down", NodeStatus::Down),
            model("m", 4, 2),
        ],
    );
    assert_eq!(
        apply_err(&mut s, set("ghost", "n1", Loading)),
        ApplyError::UnknownModel("ghost".into())
    );
    assert_eq!(
        apply_err(&mut s, set("m", "ghost", Loading)),
        ApplyError::UnknownNode("ghost".into())
    );
    assert_eq!(
        apply_err(&mut s, set("m", "picky", Loading)),
        ApplyError::NodeCannotServe {
            model: "m".into(),
            node: "picky".into()
        }
    );
    assert_eq!(
        apply_err(&mut s, set("m", "down", Loading)),
        ApplyError::NodeDown("down".into())
    );
    assert_eq!(
        apply_err(&mut s, set("m", "n1", Ready)),
        ApplyError::PlacementNotFound {
            model: "m".into(),
            node: "n1".into()
        }
    );
    apply_ok(&mut s, [set("m", "n1", Loading)]);
    // Two replicas of one model on one node.
    assert_eq!(
        apply_err(&mut s, set("m", "n1", Loading)),
        ApplyError::DuplicatePlacement {
            model: "m".into(),
            node: "n1".into()
        }
    );
    apply_ok(&mut s, [set("m", "n1", Ready)]);
    assert_eq!(
        apply_err(&mut s, set("m", "n1", Loading)),
        ApplyError::DuplicatePlacement {
            model: "m".into(),
            node: "n1".into()
        }
    );
    apply_ok(&mut s, [set("m", "n1", Failed)]);
    assert_eq!(
        apply_err(&mut s, set("m", "n1", Ready)),
        ApplyError::InvalidPlacementTransition {
            model: "m".into(),
            node: "n1".into(),
            from: Failed,
            to: Ready
        }
    );
    assert_eq!(
        apply_err(
            &mut s,
            Op::RemovePlacement {
                model: "m".into(),
                node: "down".into()
            }
        ),
        ApplyError::PlacementNotFound {
            model: "m".into(),
            node: "down".into()
        }
    );
}

#[test]
fn down_node_may_still_report_failure() {
    use PlacementState::*;
    let mut s = ClusterState::new();
    apply_ok(
        &mut s,
        [
            node("n1", 16),
            model("m", 4, 1),
            set("m", "n1", Loading),
            status("n1", NodeStatus::Down),
        ],
    );
    assert_eq!(
        apply_err(&mut s, set("m", "n1", Ready)),
        ApplyError::NodeDown("n1".into())
    );
    apply_ok(&mut s, [set("m", "n1", Failed)]);
}

// --------------------------------------------------------------- tenants

#[test]
fn tenants_and_keys() {
    let mut s = ClusterState::new();
    apply_ok(
        &mut s,
        [
            Op::CreateTenant {
                name: "acme".into(),
            },
            Op::CreateTenant {
                name: "beta".into(),
            },
            Op::AddApiKey {
                tenant: "acme".into(),
                key_hash: hash('a'),
                id: "key-1".into(),
                scope: KeyScope::Inference,
                created_at_unix: 0,
                expires_at_unix: None,
                limits: KeyLimits::default(),
            },
            Op::AddApiKey {
                tenant: "acme".into(),
                key_hash: hash('b'),
                id: "key-2".into(),
                scope: KeyScope::Inference,
                created_at_unix: 0,
                expires_at_unix: None,
                limits: KeyLimits::default(),
            },
        ],
    );
    assert_eq!(s.tenant_for_key(&hash('a')), Some("acme"));
    assert_eq!(s.keys_of("acme").count(), 2);
    assert_eq!(s.keys_of("beta").count(), 0);
    assert_eq!(s.api_keys().len(), 2);
    apply_ok(
        &mut s,
        [Op::RevokeApiKey {
            tenant: "acme".into(),
            key_hash: hash('a'),
        }],
    );
    assert_eq!(s.tenant_for_key(&hash('a')), None);
    assert_eq!(s.tenant_for_key(&hash('b')), Some("acme"));
}

/// Tenant limits and class: set on a new tenant (creating it) or an
/// existing one, replaced whole by the next setting, kept by snapshots;
/// a bad name is refused.
#[test]
fn tenant_settings_are_set_replaced_and_snapshotted() {
    let mut s = ClusterState::new();
    let batch = TenantSettings {
        limits: KeyLimits {
            rpm: Some(60),
            tpm: None,
            max_concurrent: Some(4),
        },
        priority: protocol::Priority::Batch,
    };
    apply_ok(
        &mut s,
        [
            Op::CreateTenant {
                name: "acme".into(),
            },
            Op::SetTenant {
                name: "acme".into(),
                settings: batch,
            },
            Op::SetTenant {
                name: "beta".into(),
                settings: TenantSettings::default(),
            },
        ],
    );
    assert_eq!(s.tenants().get("acme"), Some(&batch));
    assert_eq!(s.tenants().get("beta"), Some(&TenantSettings::default()));
    // A key can be made for a tenant that came from a setting.
    apply_ok(
        &mut s,
        [Op::AddApiKey {
            tenant: "beta".into(),
            key_hash: hash('c'),
            id: "key-c".into(),
            scope: KeyScope::Inference,
            created_at_unix: 0,
            expires_at_unix: None,
            limits: KeyLimits::default(),
        }],
    );
    let restored = restore(&snapshot(&s).unwrap()).unwrap();
    assert_eq!(restored, s);
    apply_ok(
        &mut s,
        [Op::SetTenant {
            name: "acme".into(),
            settings: TenantSettings::default(),
        }],
    );
    assert_eq!(s.tenants().get("acme"), Some(&TenantSettings::default()));
    assert!(apply1(
        &mut s,
        Op::SetTenant {
            name: String::new(),
            settings: batch,
        }
    )
    .is_err());
    assert_eq!(s.tenants().len(), 2);
}

/// The first admin key is created once: a second bootstrap (a restarted
/// bootstrap coordinator with a new key file) is refused, so a revoked
/// bootstrap key cannot come back.
#[test]
fn bootstrap_creates_the_default_admin_key_once() {
    let mut s = ClusterState::new();
    assert!(!s.bootstrapped());
    apply_ok(
        &mut s,
        [Op::Bootstrap {
            key_hash: hash('a'),
            id: "admin-0".into(),
            created_at_unix: 5,
        }],
    );
    assert!(s.bootstrapped() && s.tenants().contains_key(DEFAULT_TENANT));
    let k = s.api_key(&hash('a')).unwrap();
    assert_eq!(
        (k.scope, k.tenant.as_str(), k.id.as_str()),
        (KeyScope::Admin, "default", "admin-0")
    );
    apply_ok(
        &mut s,
        [Op::RevokeApiKey {
            tenant: DEFAULT_TENANT.into(),
            key_hash: hash('a'),
        }],
    );
    assert_eq!(
        apply_err(
            &mut s,
            Op::Bootstrap {
                key_hash: hash('b'),
                id: "admin-1".into(),
                created_at_unix: 6,
            }
        ),
        ApplyError::AlreadyBootstrapped
    );
    assert!(s.api_keys().is_empty());
}

#[test]
fn key_ids_are_unique_and_expiry_is_kept() {
    let mut s = ClusterState::new();
    let add = |h: char, id: &str, exp: Option<u64>| Op::AddApiKey {
        tenant: "t".into(),
        key_hash: hash(h),
        id: id.into(),
        scope: KeyScope::Inference,
        created_at_unix: 10,
        expires_at_unix: exp,
        limits: KeyLimits::default(),
    };
    apply_ok(
        &mut s,
        [
            Op::CreateTenant { name: "t".into() },
            add('a', "k1", Some(100)),
        ],
    );
    assert_eq!(
        apply_err(&mut s, add('b', "k1", None)),
        ApplyError::ApiKeyExists
    );
    let (h, k) = s.api_key_by_id("k1").unwrap();
    assert_eq!(h, &hash('a'));
    assert!(k.live_at(99) && !k.live_at(100));
}

#[test]
fn tenant_validation_errors() {
    let mut s = ClusterState::new();
    apply_ok(
        &mut s,
        [
            Op::CreateTenant {
                name: "acme".into(),
            },
            Op::CreateTenant {
                name: "beta".into(),
            },
            Op::AddApiKey {
                tenant: "acme".into(),
                key_hash: hash('a'),
                id: "key-3".into(),
                scope: KeyScope::Inference,
                created_at_unix: 0,
                expires_at_unix: None,
                limits: KeyLimits::default(),
            },
        ],
    );
    assert_eq!(
        apply_err(
            &mut s,
            Op::CreateTenant {
                name: "acme".into()
            }
        ),
        ApplyError::TenantExists("acme".into())
    );
    assert_eq!(
        apply_err(
            &mut s,
            Op::AddApiKey {
                tenant: "ghost".into(),
                key_hash: hash('c'),
                id: "key-4".into(),
                scope: KeyScope::Inference,
                created_at_unix: 0,
                expires_at_unix: None,
                limits: KeyLimits::default(),
            }
        ),
        ApplyError::UnknownTenant("ghost".into())
    );
    // The same key cannot belong to two tenants.
    assert_eq!(
        apply_err(
            &mut s,
            Op::AddApiKey {
                tenant: "beta".into(),
                key_hash: hash('a'),
                id: "key-5".into(),
                scope: KeyScope::Inference,
                created_at_unix: 0,
                expires_at_unix: None,
                limits: KeyLimits::default(),
            }
        ),
        ApplyError::ApiKeyExists
    );
    // Raw keys, upper-case hex and wrong lengths are refused.
    for bad in [
        "sk-live-secret".to_string(),
        "A".repeat(64),
        "a".repeat(63),
        "g".repeat(64),
    ] {
        assert!(matches!(
            apply_err(
                &mut s,
                Op::AddApiKey {
                    tenant: "beta".into(),
                    key_hash: bad,
                    id: "key-6".into(),
                    scope: KeyScope::Inference,
                    created_at_unix: 0,
                    expires_at_unix: None,
                    limits: KeyLimits::default(),
                }
            ),
            ApplyError::InvalidField {
                field: "key_hash",
                ..
            }
        ));
    }
    // Revoking another tenant's key, or an unknown one.
    assert_eq!(
        apply_err(
            &mut s,
            Op::RevokeApiKey {
                tenant: "beta".into(),
                key_hash: hash('a')
            }
        ),
        ApplyError::ApiKeyNotFound("beta".into())
    );
    assert_eq!(
        apply_err(
            &mut s,
            Op::RevokeApiKey {
                tenant: "ghost".into(),
                key_hash: hash('a')
            }
        ),
        ApplyError::UnknownTenant("ghost".into())
    );
    assert!(matches!(
        apply_err(
            &mut s,
            Op::CreateTenant {
                name: String::new()
            }
        ),
        ApplyError::InvalidField { .. }
    ));
}

// --------------------------------------------------------------- FL jobs

fn round(job: &str, round: u64, loss: f64) -> Op {
    let mut metrics = BTreeMap::new();
    metrics.insert("loss".to_string(), loss);
    Op::FlRoundCommitted {
        job: job.into(),
        round,
        checkpoint_hash: hash('c'),
        metrics,
    }
}

fn job_status(job: &str, status: FlJobStatus) -> Op {
    Op::SetFlJobStatus {
        job: job.into(),
        status,
        reason: None,
    }
}

#[test]
fn a_failed_job_keeps_its_reason_and_reasons_are_bounded() {
    let mut s = ClusterState::new();
    apply_ok(
        &mut s,
        [
            Op::CreateFlJob {
                id: "j".into(),
                tenant: "t".into(),
                spec: "rounds = 2".into(),
            },
            job_status("j", FlJobStatus::Running),
        ],
    );
    let long = Op::SetFlJobStatus {
        job: "j".into(),
        status: FlJobStatus::Failed,
        reason: Some("x".repeat(MAX_REASON_LEN + 1)),
    };
    let at = s.applied_index() + 1;
    assert!(matches!(
        s.apply(at, &Command::new(long)),
        Err(ApplyError::InvalidField {
            field: "reason",
            ..
        })
    ));
    apply_ok(
        &mut s,
        [Op::SetFlJobStatus {
            job: "j".into(),
            status: FlJobStatus::Failed,
            reason: Some("the global model is not finite".into()),
        }],
    );
    let job = s.fl_job("j").expect("job");
    assert_eq!(job.status, FlJobStatus::Failed);
    assert_eq!(
        job.failure.as_deref(),
        Some("the global model is not finite")
    );
}

#[test]
fn fl_job_lifecycle() {
    let mut s = ClusterState::new();
    apply_ok(
        &mut s,
        [
            Op::CreateFlJob {
                id: "j".into(),
                tenant: "t".into(),
                spec: "rounds = 2".into(),
            },
            job_status("j", FlJobStatus::Running),
            round("j", 1, 0.5),
            job_status("j", FlJobStatus::Paused),
            round("j", 2, 0.25),
            job_status("j", FlJobStatus::Running),
            job_status("j", FlJobStatus::Completed),
        ],
    );
    let j = s.fl_job("j").unwrap();
    assert_eq!(j.status, FlJobStatus::Completed);
    assert_eq!(j.spec, "rounds = 2");
    assert_eq!(j.last_round(), 2);
    assert_eq!(j.rounds[1].metrics["loss"], 0.25);
    assert_eq!(s.fl_jobs().len(), 1);
    assert_eq!(
        apply1(&mut s, job_status("j", FlJobStatus::Completed)),
        Ok(ApplyOutcome::Unchanged)
    );
}

#[test]
fn fl_job_validation_errors() {
    let mut s = ClusterState::new();
    let create = Op::CreateFlJob {
        id: "j".into(),
        tenant: "t".into(),
        spec: "{}".into(),
    };
    apply_ok(&mut s, [create.clone()]);
    assert_eq!(
        apply_err(&mut s, create),
        ApplyError::FlJobExists("j".into())
    );
    assert!(matches!(
        apply_err(
            &mut s,
            Op::CreateFlJob {
                id: "k".into(),
                tenant: "t".into(),
                spec: "  ".into()
            }
        ),
        ApplyError::InvalidField { field: "spec", .. }
    ));
    assert_eq!(
        apply_err(&mut s, round("ghost", 1, 0.0)),
        ApplyError::UnknownFlJob("ghost".into())
    );
    assert_eq!(
        apply_err(&mut s, job_status("ghost", FlJobStatus::Running)),
        ApplyError::UnknownFlJob("ghost".into())
    );
    assert_eq!(
        apply_err(&mut s, round("j", 1, 0.0)),
        ApplyError::FlJobNotRunning {
            job: "j".into(),
            status: FlJobStatus::Pending
        }
    );
    assert_eq!(
        apply_err(&mut s, job_status("j", FlJobStatus::Completed)),
        ApplyError::InvalidFlJobTransition {
            job: "j".into(),
            from: FlJobStatus::Pending,
            to: FlJobStatus::Completed
        }
    );
    apply_ok(
        &mut s,
        [job_status("j", FlJobStatus::Running), round("j", 1, 0.0)],
    );
    for bad in [1, 3] {
        assert_eq!(
            apply_err(&mut s, round("j", bad, 0.0)),
            ApplyError::UnexpectedFlRound {
                job: "j".into(),
                expected: 2,
                got: bad
            }
        );
    }
    assert!(matches!(
        apply_err(
            &mut s,
            Op::FlRoundCommitted {
                job: "j".into(),
                round: 2,
                checkpoint_hash: "nothex".into(),
                metrics: BTreeMap::new()
            }
        ),
        ApplyError::InvalidField {
            field: "checkpoint_hash",
            ..
        }
    ));
    assert!(matches!(
        apply_err(&mut s, round("j", 2, f64::NAN)),
        ApplyError::InvalidField {
            field: "metrics",
            ..
        }
    ));
    apply_ok(&mut s, [job_status("j", FlJobStatus::Cancelled)]);
    assert_eq!(
        apply_err(&mut s, round("j", 2, 0.0)),
        ApplyError::FlJobFinished {
            job: "j".into(),
            status: FlJobStatus::Cancelled
        }
    );
    assert_eq!(
        apply_err(&mut s, job_status("j", FlJobStatus::Running)),
        ApplyError::FlJobFinished {
            job: "j".into(),
            status: FlJobStatus::Cancelled
        }
    );
}

// ---------------------------------------------- determinism and snapshots

/// A log touching every kind of op, including refused entries.
fn sample_log() -> Vec<Command> {
    use PlacementState::*;
    let mut ops = vec![
        Op::AddCoordinator {
            id: 1,
            name: "c1".into(),
            addr: "c1:7000".into(),
        },
        Op::AddCoordinator {
            id: 2,
            name: "c2".into(),
            addr: "c2:7000".into(),
        },
        node("n3", 32),
        node("n1", 16),
        node("n2", 24),
        model("llama", 4, 2),
        model("qwen", 2, 1),
        set("llama", "n3", Loading),
        set("llama", "n3", Loading), // refused: duplicate
        set("llama", "n3", Ready),
        set("qwen", "n1", Loading),
        status("n1", NodeStatus::Down),
        Op::CreateTenant {
            name: "acme".into(),
        },
        Op::AddApiKey {
            tenant: "acme".into(),
            key_hash: hash('d'),
            id: "key-7".into(),
            scope: KeyScope::Inference,
            created_at_unix: 0,
            expires_at_unix: None,
            limits: KeyLimits::default(),
        },
        Op::CreateFlJob {
            id: "job".into(),
            tenant: "t".into(),
            spec: "[job]\nrounds = 3".into(),
        },
        job_status("job", FlJobStatus::Running),
        round("job", 1, 0.125),
        Op::ScaleModel {
            name: "ghost".into(), // refused: unknown model
            desired_replicas: 1,
        },
        Op::RemoveCoordinator { id: 2 },
    ];
    ops.push(model("llama", 5, 3));
    ops.into_iter().map(Command::new).collect()
}

fn replay(log: &[Command]) -> ClusterState {
    let mut s = ClusterState::new();
    for (i, cmd) in log.iter().enumerate() {
        let _ = s.apply(i as u64 + 1, cmd);
    }
    s
}

#[test]
fn replicas_applying_the_same_log_are_byte_identical() {
    let log = sample_log();
    let a = replay(&log);
    let mut b = replay(&log);
    assert_eq!(snapshot(&a).unwrap(), snapshot(&b).unwrap());
    // Replaying the whole log again (e.g. after a restart without a
    // snapshot) is a no-op.
    for (i, cmd) in log.iter().enumerate() {
        assert!(matches!(
            b.apply(i as u64 + 1, cmd),
            Ok(ApplyOutcome::AlreadyApplied { .. })
        ));
    }
    assert_eq!(snapshot(&a).unwrap(), snapshot(&b).unwrap());
    // Through the encoded form as well.
    let mut c = ClusterState::new();
    for (i, cmd) in log.iter().enumerate() {
        let _ = c.apply_entry(i as u64 + 1, &encode(cmd).unwrap());
    }
    assert_eq!(snapshot(&a).unwrap(), snapshot(&c).unwrap());
    assert_eq!(a.applied_index(), log.len() as u64);
}

#[test]
fn snapshot_round_trip() {
    let s = replay(&sample_log());
    let bytes = snapshot(&s).unwrap();
    let restored = restore(&bytes).unwrap();
    assert_eq!(restored, s);
    assert_eq!(snapshot(&restored).unwrap(), bytes);
    // Empty state too.
    let empty = ClusterState::new();
    assert_eq!(restore(&snapshot(&empty).unwrap()).unwrap(), empty);
    // A restored replica keeps applying where the snapshot left off.
    let mut r = restored;
    let next = r.applied_index() + 1;
    assert_eq!(
        r.apply(next, &Command::new(Op::CreateTenant { name: "new".into() })),
        Ok(ApplyOutcome::Applied)
    );
}

#[test]
fn corrupt_snapshots_refused() {
    let bytes = snapshot(&replay(&sample_log())).unwrap();
    // Flip one payload byte.
    let mut flipped = bytes.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01;
    assert_eq!(restore(&flipped), Err(SnapshotError::ChecksumMismatch));
    // Flip one checksum byte.
    let mut flipped = bytes.clone();
    flipped[30] ^= 0x80;
    assert_eq!(restore(&flipped), Err(SnapshotError::ChecksumMismatch));
    // Truncations.
    assert!(matches!(
        restore(&bytes[..bytes.len() - 1]),
        Err(SnapshotError::LengthMismatch { .. })
    ));
    assert_eq!(restore(&bytes[..10]), Err(SnapshotError::Truncated(10)));
    // Wrong magic and version.
    let mut bad = bytes.clone();
    bad[0] = b'X';
    assert_eq!(restore(&bad), Err(SnapshotError::BadMagic));
    let mut bad = bytes.clone();
    bad[8] = 9;
    assert_eq!(
        restore(&bad),
        Err(SnapshotError::UnsupportedVersion {
            version: 9,
            supported: SNAPSHOT_VERSION
        })
    );
}

#[test]
fn state_serializes_to_json() {
    let s = replay(&sample_log());
    let v = serde_json::to_value(&s).unwrap();
    assert_eq!(v["applied_index"], serde_json::json!(s.applied_index()));
    assert_eq!(v["models"]["llama"]["version"], serde_json::json!(2));
    assert_eq!(
        v["placements"]["llama"]["n3"]["state"],
        serde_json::json!("Ready")
    );
    assert_eq!(v["coordinators"]["1"]["addr"], serde_json::json!("c1:7000"));
}

// ------------------------------------------------------------- placement

/// Applies every op of a plan (they must all be valid), then marks the
/// new replicas ready.
fn apply_plan(s: &mut ClusterState, p: &Plan) {
    for cmd in p.commands() {
        let index = s.applied_index() + 1;
        let res = s.apply(index, &cmd);
        assert!(res.is_ok(), "plan op {cmd:?} refused: {res:?}");
    }
    for op in &p.ops {
        if let Op::SetPlacement { model, node, .. } = op {
            apply_ok(s, [set(model, node, PlacementState::Ready)]);
        }
    }
}

fn holders(s: &ClusterState, model: &str) -> Vec<String> {
    s.placements_of(model).map(|(n, _)| n.clone()).collect()
}

fn cfg() -> PlannerConfig {
    PlannerConfig {
        kv_budget_bytes: GIB,
    }
}

#[test]
fn initial_placement_spreads_replicas() {
    let mut s = ClusterState::new();
    apply_ok(
        &mut s,
        [
            node("a", 16),
            node("b", 32),
            node("c", 24),
            node("d", 8),
            model("m", 4, 3),
        ],
    );
    let p = plan(&s, &cfg());
    assert!(p.shortfalls.is_empty());
    // Most free memory first: b (32), c (24), a (16).
    assert_eq!(
        p.ops,
        vec![
            set("m", "b", PlacementState::Loading),
            set("m", "c", PlacementState::Loading),
            set("m", "a", PlacementState::Loading),
        ]
    );
    apply_plan(&mut s, &p);
    assert_eq!(holders(&s, "m"), ["a", "b", "c"]);
    // Converged: nothing more to do.
    let again = plan(&s, &cfg());
    assert!(again.is_empty() && again.shortfalls.is_empty());
}

#[test]
fn ties_break_by_node_id_and_models_take_turns() {
    let mut s = ClusterState::new();
    apply_ok(
        &mut s,
        [
            node("n2", 16),
            node("n1", 16),
            node("n3", 16),
            model("x", 4, 2),
            model("y", 4, 2),
        ],
    );
    let p = plan(&s, &cfg());
    // x takes n1 (tie -> smallest id), y takes n2 (n1 is now fuller),
    // then x takes n3 and y the freest node left with no y: n1/n3 tie -> n1.
    assert_eq!(
        p.ops,
        vec![
            set("x", "n1", PlacementState::Loading),
            set("y", "n2", PlacementState::Loading),
            set("x", "n3", PlacementState::Loading),
            set("y", "n1", PlacementState::Loading),
        ]
    );
    // Same input, same plan.
    assert_eq!(plan(&s, &cfg()), p);
}

#[test]
fn never_two_replicas_on_one_node() {
    let mut s = ClusterState::new();
    apply_ok(&mut s, [node("big", 1024), model("m", 1, 3)]);
    let p = plan(&s, &cfg());
    assert_eq!(p.ops, vec![set("m", "big", PlacementState::Loading)]);
    assert_eq!(
        p.shortfalls,
        vec![Shortfall {
            model: "m".into(),
            desired: 3,
            placed: 1
        }]
    );
}

#[test]
fn down_node_replicas_are_replaced() {
    let mut s = ClusterState::new();
    apply_ok(
        &mut s,
        [
            node("a", 16),
            node("b", 16),
            node("c", 16),
            model("m", 4, 2),
        ],
    );
    let p = plan(&s, &cfg());
    apply_plan(&mut s, &p);
    assert_eq!(holders(&s, "m"), ["a", "b"]);
    apply_ok(&mut s, [status("a", NodeStatus::Down)]);
    let p = plan(&s, &cfg());
    assert_eq!(
        p.ops,
        vec![
            Op::RemovePlacement {
                model: "m".into(),
                node: "a".into()
            },
            set("m", "c", PlacementState::Loading),
        ]
    );
    apply_plan(&mut s, &p);
    assert_eq!(holders(&s, "m"), ["b", "c"]);
}

#[test]
fn failed_replica_is_moved_elsewhere() {
    let mut s = ClusterState::new();
    apply_ok(
        &mut s,
        [
            node("a", 32),
            node("b", 16),
            model("m", 4, 1),
            set("m", "a", PlacementState::Loading),
            set("m", "a", PlacementState::Failed),
        ],
    );
    let p = plan(&s, &cfg());
    assert_eq!(
        p.ops,
        vec![
            Op::RemovePlacement {
                model: "m".into(),
                node: "a".into()
            },
            set("m", "b", PlacementState::Loading),
        ]
    );
}

#[test]
fn scale_up_and_down() {
    let mut s = ClusterState::new();
    apply_ok(
        &mut s,
        [
            node("a", 16),
            node("b", 20),
            node("c", 24),
            model("m", 4, 1),
            model("other", 8, 1),
        ],
    );
    let p = plan(&s, &cfg());
    apply_plan(&mut s, &p);
    // m on c (24), other on b (20).
    assert_eq!(holders(&s, "m"), ["c"]);
    assert_eq!(holders(&s, "other"), ["b"]);

    apply_ok(
        &mut s,
        [Op::ScaleModel {
            name: "m".into(),
            desired_replicas: 3,
        }],
    );
    let p = plan(&s, &cfg());
    apply_plan(&mut s, &p);
    assert_eq!(holders(&s, "m"), ["a", "b", "c"]);

    // Free now: a 16-5=11, b 20-9-5=6, c 24-5=19. Scaling to 1 removes from
    // the fullest nodes first: b, then a.
    apply_ok(
        &mut s,
        [Op::ScaleModel {
            name: "m".into(),
            desired_replicas: 1,
        }],
    );
    let p = plan(&s, &cfg());
    assert_eq!(
        p.ops,
        vec![
            Op::RemovePlacement {
                model: "m".into(),
                node: "b".into()
            },
            Op::RemovePlacement {
                model: "m".into(),
                node: "a".into()
            },
        ]
    );
    apply_plan(&mut s, &p);
    assert_eq!(holders(&s, "m"), ["c"]);

    // Scale to zero removes the last replica and reports no shortfall.
    apply_ok(
        &mut s,
        [Op::ScaleModel {
            name: "m".into(),
            desired_replicas: 0,
        }],
    );
    let p = plan(&s, &cfg());
    assert_eq!(p.ops.len(), 1);
    assert!(p.shortfalls.is_empty());
}

#[test]
fn not_enough_room_places_what_fits_and_reports_shortfall() {
    let mut s = ClusterState::new();
    apply_ok(
        &mut s,
        [
            node("a", 16),
            node("b", 8),
            node("tiny", 2),
            model("m", 6, 4),
        ],
    );
    // Each replica needs 6 + 1 GiB: fits on a and b, not on tiny.
    let p = plan(&s, &cfg());
    assert_eq!(
        p.ops,
        vec![
            set("m", "a", PlacementState::Loading),
            set("m", "b", PlacementState::Loading),
        ]
    );
    assert_eq!(
        p.shortfalls,
        vec![Shortfall {
            model: "m".into(),
            desired: 4,
            placed: 2
        }]
    );
}

#[test]
fn memory_is_shared_between_models() {
    let mut s = ClusterState::new();
    apply_ok(&mut s, [node("a", 10), model("x", 4, 1), model("y", 4, 1)]);
    // x takes 5 GiB of a's 10, y would need 5 more: fits exactly.
    let p = plan(&s, &cfg());
    assert_eq!(p.ops.len(), 2);
    apply_ok(&mut s, [model("z", 1, 1)]);
    apply_plan(&mut s, &p);
    let p = plan(&s, &cfg());
    assert!(p.ops.is_empty());
    assert_eq!(p.shortfalls[0].model, "z");
}

#[test]
fn planner_respects_servable_models_and_cleans_up() {
    let mut s = ClusterState::new();
    apply_ok(
        &mut s,
        [
            node("any", 8),
            Op::RegisterNode {
                id: "big".into(),
                addr: "big:1".into(),
                cores: 8,
                memory_bytes: 64 * GIB,
                servable_models: vec!["other".into()],
            },
            model("m", 2, 1),
            set("m", "any", PlacementState::Loading),
        ],
    );
    assert!(plan(&s, &cfg()).is_empty());
    // The node re-registers without m: its replica must go, and big cannot
    // take it.
    apply_ok(
        &mut s,
        [Op::RegisterNode {
            id: "any".into(),
            addr: "any:1".into(),
            cores: 8,
            memory_bytes: 8 * GIB,
            servable_models: vec!["other".into()],
        }],
    );
    let p = plan(&s, &cfg());
    assert_eq!(
        p.ops,
        vec![Op::RemovePlacement {
            model: "m".into(),
            node: "any".into()
        }]
    );
    assert_eq!(p.shortfalls.len(), 1);
}

#[test]
fn a_coordinator_and_a_node_never_share_a_name() {
    let mut s = ClusterState::new();
    apply_ok(&mut s, [node("n1", 8)]);
    let err = apply_err(
        &mut s,
        Op::AddCoordinator {
            id: 7,
            name: "n1".into(),
            addr: "10.0.0.7:7000".into(),
        },
    );
    assert!(matches!(err, ApplyError::NameInUse(..)), "{err}");
    apply_ok(
        &mut s,
        [Op::AddCoordinator {
            id: 7,
            name: "coordinator-7".into(),
            addr: "10.0.0.7:7000".into(),
        }],
    );
    let err = apply_err(&mut s, node("coordinator-7", 8));
    assert!(matches!(err, ApplyError::NameInUse(..)), "{err}");
}
