//! Property-based fuzzing (proptest) of what a coordinator decodes from
//! disk and from peers: raft log commands and state snapshots. Arbitrary
//! and mutated bytes must be refused with an error, never a panic, and a
//! refused entry must leave the state as it was (only the applied index
//! moves).

use coordinator::state::{decode, encode, restore, snapshot, ClusterState, Command, Op};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 2000,
        ..ProptestConfig::default()
    }
}

fn sample_state() -> ClusterState {
    let mut s = ClusterState::new();
    let ops = [
        Op::CreateTenant { name: "t".into() },
        Op::RegisterModel {
            name: "m".into(),
            source: "hf://x".into(),
            format: "gguf".into(),
            size_bytes: 1,
            desired_replicas: 1,
        },
    ];
    for (i, op) in ops.into_iter().enumerate() {
        s.apply(i as u64 + 1, &Command::new(op)).unwrap();
    }
    s
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_log_entries_are_refused_without_a_change(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let _ = decode(&bytes);
        let mut s = sample_state();
        let before = s.clone();
        if s.apply_entry(100, &bytes).is_err() {
            prop_assert_eq!(s.models(), before.models());
            prop_assert_eq!(s.tenants(), before.tenants());
            prop_assert_eq!(s.applied_index(), 100);
        }
    }

    #[test]
    fn mutated_commands_never_panic(i in 0usize..256, bit in 0u8..8) {
        let bytes = encode(&Command::new(Op::CreateFlJob {
            id: "j".into(),
            tenant: "t".into(),
            spec: "rounds = 3".into(),
        }))
        .unwrap();
        let mut m = bytes.clone();
        let at = i % m.len();
        m[at] ^= 1 << bit;
        let _ = decode(&m);
        let mut s = sample_state();
        let _ = s.apply_entry(100, &m);
    }

    #[test]
    fn arbitrary_and_mutated_snapshots_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), i in 0usize..4096, bit in 0u8..8) {
        let _ = restore(&bytes);
        let mut snap = snapshot(&sample_state()).unwrap();
        let at = i % snap.len();
        snap[at] ^= 1 << bit;
        // The checksum catches every flip in the payload; header flips are
        // refused by the header checks.
        prop_assert!(restore(&snap).is_err());
    }
}
