use super::*;

fn ent(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: format!("e{index}t{term}").into_bytes().into(),
        ..Default::default()
    }
}

fn ctx() -> GetEntriesContext {
    GetEntriesContext::empty(false)
}

fn terms(s: &DurableStorage, lo: u64, hi: u64) -> Vec<u64> {
    s.entries(lo, hi, None, ctx())
        .unwrap()
        .iter()
        .map(|e| e.term)
        .collect()
}

#[test]
fn empty_storage() {
    let dir = tempfile::tempdir().unwrap();
    let s = DurableStorage::open(dir.path()).unwrap();
    assert!(s.is_empty());
    assert_eq!(s.first_index().unwrap(), 1);
    assert_eq!(s.last_index().unwrap(), 0);
    assert_eq!(s.term(0).unwrap(), 0);
    assert!(!s.initial_state().unwrap().initialized());
}

#[test]
fn append_entries_term_first_last() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = DurableStorage::open(dir.path()).unwrap();
    s.append(&[ent(1, 1), ent(2, 1), ent(3, 2)]).unwrap();
    assert_eq!(s.first_index().unwrap(), 1);
    assert_eq!(s.last_index().unwrap(), 3);
    assert_eq!(s.term(2).unwrap(), 1);
    assert_eq!(s.term(3).unwrap(), 2);
    assert_eq!(
        s.term(4),
        Err(raft::Error::Store(raft::StorageError::Unavailable))
    );
    let got = s.entries(1, 4, None, ctx()).unwrap();
    assert_eq!(got, vec![ent(1, 1), ent(2, 1), ent(3, 2)]);
    // Size limit: always at least one entry.
    assert_eq!(s.entries(1, 4, Some(0), ctx()).unwrap().len(), 1);
    let one = ent(1, 1).compute_size() as u64;
    assert_eq!(s.entries(1, 4, Some(2 * one), ctx()).unwrap().len(), 2);
    assert!(s.entries(1, 5, None, ctx()).is_err());
}

#[test]
fn append_rejects_gap_and_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = DurableStorage::open(dir.path()).unwrap();
    s.append(&[ent(1, 1), ent(2, 1)]).unwrap();
    assert!(matches!(
        s.append(&[ent(4, 1)]),
        Err(StoreError::Invalid(_))
    ));
    s.compact(2).unwrap();
    assert!(matches!(
        s.append(&[ent(1, 2)]),
        Err(StoreError::Invalid(_))
    ));
}

#[test]
fn conflicting_suffix_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = DurableStorage::open(dir.path()).unwrap();
    s.append(&[ent(1, 1), ent(2, 1), ent(3, 1), ent(4, 1), ent(5, 1)])
        .unwrap();
    // A new leader overwrites from index 3 with a shorter log.
    s.append(&[ent(3, 2), ent(4, 2)]).unwrap();
    assert_eq!(s.last_index().unwrap(), 4);
    assert_eq!(terms(&s, 1, 5), vec![1, 1, 2, 2]);
    assert_eq!(
        s.term(5),
        Err(raft::Error::Store(raft::StorageError::Unavailable))
    );
    drop(s);
    let s = DurableStorage::open(dir.path()).unwrap();
    assert_eq!(s.last_index().unwrap(), 4);
    assert_eq!(terms(&s, 1, 5), vec![1, 1, 2, 2]);
}

#[test]
fn hard_and_conf_state_persist_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let hs = HardState {
        term: 7,
        vote: 2,
        commit: 3,
        ..Default::default()
    };
    let cs = ConfState {
        voters: vec![1, 2, 3],
        ..Default::default()
    };
    {
        let mut s = DurableStorage::open(dir.path()).unwrap();
        s.append(&[ent(1, 1), ent(2, 1), ent(3, 7)]).unwrap();
        s.set_hard_state(&hs).unwrap();
        s.set_conf_state(&cs, 2).unwrap();
    }
    let s = DurableStorage::open(dir.path()).unwrap();
    let rs = s.initial_state().unwrap();
    assert_eq!(rs.hard_state, hs);
    assert_eq!(rs.conf_state, cs);
    assert!(rs.initialized());
    assert_eq!(s.last_index().unwrap(), 3);
    assert_eq!(s.conf_index(), 2);
}

#[test]
fn compaction_keeps_boundary_term() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = DurableStorage::open(dir.path()).unwrap();
    s.append(&(1..=10).map(|i| ent(i, i / 4 + 1)).collect::<Vec<_>>())
        .unwrap();
    s.compact(6).unwrap();
    assert_eq!(s.first_index().unwrap(), 6);
    assert_eq!(s.last_index().unwrap(), 10);
    assert_eq!(s.term(5).unwrap(), 2);
    assert_eq!(
        s.term(4),
        Err(raft::Error::Store(raft::StorageError::Compacted))
    );
    assert_eq!(
        s.entries(4, 8, None, ctx()),
        Err(raft::Error::Store(raft::StorageError::Compacted))
    );
    assert_eq!(s.entries(6, 11, None, ctx()).unwrap().len(), 5);
    // Compacting below the first index is a no-op; beyond the end fails.
    s.compact(3).unwrap();
    assert_eq!(s.first_index().unwrap(), 6);
    assert!(s.compact(12).is_err());
    drop(s);
    let s = DurableStorage::open(dir.path()).unwrap();
    assert_eq!(s.first_index().unwrap(), 6);
    assert_eq!(s.term(5).unwrap(), 2);
    assert_eq!(s.last_index().unwrap(), 10);
}

#[test]
fn snapshots_created_and_applied() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = DurableStorage::open(dir.path()).unwrap();
    s.append(&(1..=5).map(|i| ent(i, 1)).collect::<Vec<_>>())
        .unwrap();
    let cs = ConfState {
        voters: vec![1, 2, 3],
        ..Default::default()
    };
    s.create_snapshot(4, &cs, b"state-at-4").unwrap();
    s.compact(5).unwrap();
    let snap = s.snapshot(0, 2).unwrap();
    assert_eq!(snap.get_metadata().index, 4);
    assert_eq!(snap.get_metadata().term, 1);
    assert_eq!(snap.get_metadata().get_conf_state(), &cs);
    assert_eq!(&snap.data[..], b"state-at-4");
    assert!(s.snapshot(5, 2).is_err());

    // A follower installs a newer snapshot from the leader.
    let dir2 = tempfile::tempdir().unwrap();
    let mut f = DurableStorage::open(dir2.path()).unwrap();
    f.append(&[ent(1, 1), ent(2, 1)]).unwrap();
    let mut leader_snap = Snapshot::default();
    leader_snap.mut_metadata().index = 20;
    leader_snap.mut_metadata().term = 3;
    leader_snap.mut_metadata().set_conf_state(cs.clone());
    leader_snap.data = b"state-at-20".to_vec().into();
    f.apply_snapshot(&leader_snap).unwrap();
    drop(f);
    let f = DurableStorage::open(dir2.path()).unwrap();
    assert_eq!(f.first_index().unwrap(), 21);
    assert_eq!(f.last_index().unwrap(), 20);
    assert_eq!(f.term(20).unwrap(), 3);
    assert_eq!(f.hard_state().commit, 20);
    assert_eq!(f.hard_state().term, 3);
    assert_eq!(f.conf_state(), &cs);
    assert_eq!(f.snapshot_data().unwrap(), b"state-at-20");
    // An older snapshot is refused.
    let mut f = f;
    let mut old = Snapshot::default();
    old.mut_metadata().index = 10;
    old.mut_metadata().term = 2;
    assert!(matches!(
        f.apply_snapshot(&old),
        Err(StoreError::SnapshotOutOfDate { .. })
    ));
}

#[test]
fn crash_between_writes_keeps_everything_returned() {
    let dir = tempfile::tempdir().unwrap();
    let hs = HardState {
        term: 2,
        commit: 2,
        ..Default::default()
    };
    {
        let mut s = DurableStorage::open(dir.path()).unwrap();
        s.append(&[ent(1, 1), ent(2, 2)]).unwrap();
        s.set_hard_state(&hs).unwrap();
        s.append(&[ent(3, 2), ent(4, 2)]).unwrap();
        // No explicit close: simulate a crash right after the last return.
        std::mem::forget(s);
    }
    // redb holds a file lock while the forgotten handle lives in this
    // process, so read the file through a copy, as a restarted process
    // would see it on disk.
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(dir.path().join(DB_FILE), copy.path().join(DB_FILE)).unwrap();
    let s = DurableStorage::open(copy.path()).unwrap();
    assert_eq!(s.last_index().unwrap(), 4);
    assert_eq!(terms(&s, 1, 5), vec![1, 2, 2, 2]);
    assert_eq!(s.hard_state(), &hs);
}

#[test]
fn oversized_record_is_refused() {
    let big = vec![0u8; MAX_ENTRY_BYTES + 1];
    let r: StoreResult<Entry> = decode_capped("entry", &big, MAX_ENTRY_BYTES);
    assert!(matches!(r, Err(StoreError::TooLarge { .. })));
}
