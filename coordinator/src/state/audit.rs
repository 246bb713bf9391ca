//! The replicated audit trail: a hash chain of [`AuditEntry`]s appended by
//! [`Op::RecordAudit`](super::Op::RecordAudit) and trimmed by retention.
//!
//! Each entry holds the hash of the one before it, and its own hash covers
//! that link, its sequence number and its content ([`entry_hash`]). The
//! hashes are computed when the entry is applied, identically on every
//! coordinator, so:
//!
//! - an entry edited in one coordinator's stored state no longer matches
//!   its hash ([`verify_chain`] finds the break);
//! - an entry edited in one coordinator's raft log (the chain recomputed
//!   from it on restart) gives that coordinator a different head hash
//!   from the others' at the same sequence number (the admin API compares
//!   them, see `crate::audit`).
//!
//! Retention drops the oldest entries (by count and by age) and keeps a
//! [`AuditCheckpoint`]: the sequence number and hash of the last entry
//! dropped, from which the retained part still verifies.
//!
//! Pure code: the time of every entry and of the retention cut comes in
//! the command.

use std::collections::VecDeque;
use std::sync::Arc;

use protocol::hex::lower_hex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::machine::ApplyError;

/// Most entries a cluster keeps (retention may ask for fewer): keeps the
/// state, and the snapshot that carries it, well under the 16 MiB frame a
/// snapshot travels in.
pub const MAX_AUDIT_ENTRIES: u32 = 10_000;

/// Most records one [`Op::RecordAudit`](super::Op::RecordAudit) carries.
pub const MAX_AUDIT_BATCH: usize = 1000;

/// Longest recorded route (path), in bytes.
pub const MAX_AUDIT_ROUTE_LEN: usize = 128;

/// Longest recorded client address, key id or tenant, in bytes (an
/// entry is at most about 600 bytes encoded, the trail about 6 MiB).
pub const MAX_AUDIT_ADDR_LEN: usize = 64;

/// Longest recorded HTTP method, in bytes.
pub const MAX_AUDIT_METHOD_LEN: usize = 16;

/// The hash the first entry links to: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// A write through the admin API (models, members, keys, FL jobs),
    /// whatever its outcome.
    AdminWrite,
    /// Requests refused for a missing, unknown, expired or under-scoped
    /// key (aggregated per source and window).
    AuthFailure,
    /// Requests refused by a key's rate or concurrency limits (aggregated
    /// per source and window).
    QuotaRejection,
    /// Events a coordinator could not record (its buffer was full); the
    /// count says how many.
    Lost,
}

/// One audited event (or, for aggregated kinds, `count` of them in the
/// window starting at `time_unix`), as proposed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When, Unix seconds (the window's start for aggregated kinds).
    pub time_unix: u64,
    /// What happened.
    pub kind: AuditKind,
    /// The public id of the key used, if it was a known key (never the
    /// secret).
    pub key_id: Option<String>,
    /// The key's tenant, if known.
    pub tenant: Option<String>,
    /// The client's IP address.
    pub client: String,
    /// HTTP method.
    pub method: String,
    /// The path asked for (`*` when an aggregate covers several).
    pub route: String,
    /// The HTTP status answered.
    pub status: u16,
    /// How many events this record stands for (at least 1).
    pub count: u32,
}

/// A record as it sits in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the chain, from 1, never reused.
    pub seq: u64,
    /// The event.
    pub record: AuditRecord,
    /// Hash of the entry before (or of the checkpoint, or
    /// [`GENESIS_HASH`]).
    pub prev_hash: String,
    /// This entry's hash, [`entry_hash`].
    pub hash: String,
}

/// Where the retained chain starts: the last entry retention dropped
/// (sequence 0 and [`GENESIS_HASH`] while none was).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCheckpoint {
    /// Sequence number of the last dropped entry.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
}

impl Default for AuditCheckpoint {
    fn default() -> Self {
        AuditCheckpoint {
            seq: 0,
            hash: GENESIS_HASH.to_string(),
        }
    }
}

/// How much of the chain to keep, carried by each
/// [`Op::RecordAudit`](super::Op::RecordAudit) (so every replica trims
/// identically).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRetention {
    /// Most entries kept, 1..=[`MAX_AUDIT_ENTRIES`].
    pub max_entries: u32,
    /// Entries older than this many seconds are dropped; `None`: kept
    /// until `max_entries` pushes them out.
    pub max_age_secs: Option<u64>,
}

impl Default for AuditRetention {
    fn default() -> Self {
        AuditRetention {
            max_entries: 10_000,
            max_age_secs: Some(30 * 86_400),
        }
    }
}

/// The hash of an entry: SHA-256 (lower-case hex) over a domain tag, the
/// previous hash, the sequence number and the record, in bincode 2's
/// standard encoding (deterministic).
pub fn entry_hash(prev_hash: &str, seq: u64, record: &AuditRecord) -> String {
    let mut h = Sha256::new();
    h.update(b"inferno-audit-v1\0");
    h.update(prev_hash.as_bytes());
    h.update(seq.to_le_bytes());
    // Encoding plain strings and integers into a Vec cannot fail; an empty
    // encoding would still hash deterministically.
    let body =
        bincode::serde::encode_to_vec(record, bincode::config::standard()).unwrap_or_default();
    h.update(&body);
    lower_hex(&h.finalize())
}

/// Where a chain fails to verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit chain broken at entry {seq}: {reason}")]
pub struct ChainBreak {
    /// The first entry that does not verify.
    pub seq: u64,
    /// What is wrong with it.
    pub reason: String,
}

/// The end of a verified chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    /// Sequence number of the last entry (the checkpoint's if none).
    pub seq: u64,
    /// Its hash.
    pub hash: String,
}

/// Checks that `entries` follow `checkpoint` without a gap, each linking
/// to the one before and matching its own hash.
pub fn verify_chain(
    checkpoint: &AuditCheckpoint,
    entries: &[AuditEntry],
) -> Result<ChainHead, ChainBreak> {
    let mut seq = checkpoint.seq;
    let mut hash = checkpoint.hash.clone();
    for e in entries {
        let brk = |reason: String| ChainBreak { seq: e.seq, reason };
        if e.seq != seq + 1 {
            return Err(brk(format!(
                "follows entry {seq}: entries {}..{} are missing or out of order",
                seq + 1,
                e.seq
            )));
        }
        if e.prev_hash != hash {
            return Err(brk(
                "it does not link to the hash of the entry before".into()
            ));
        }
        if entry_hash(&e.prev_hash, e.seq, &e.record) != e.hash {
            return Err(brk("its content does not match its hash (edited)".into()));
        }
        seq = e.seq;
        hash = e.hash.clone();
    }
    Ok(ChainHead { seq, hash })
}

/// The retained chain. Entries are behind an [`Arc`] so that the copies of
/// the state the coordinator publishes share them instead of copying the
/// whole trail on every read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditLog {
    entries: Arc<VecDeque<AuditEntry>>,
    checkpoint: AuditCheckpoint,
}

fn invalid(field: &'static str, reason: String) -> ApplyError {
    ApplyError::InvalidField { field, reason }
}

fn check_len(field: &'static str, value: &str, max: usize) -> Result<(), ApplyError> {
    if value.len() > max {
        return Err(invalid(field, format!("longer than {max} bytes")));
    }
    Ok(())
}

fn check_record(r: &AuditRecord) -> Result<(), ApplyError> {
    if r.count == 0 {
        return Err(invalid("audit count", "must be at least 1".into()));
    }
    for v in [&r.key_id, &r.tenant].into_iter().flatten() {
        check_len("audit key id or tenant", v, MAX_AUDIT_ADDR_LEN)?;
    }
    check_len("audit client", &r.client, MAX_AUDIT_ADDR_LEN)?;
    check_len("audit method", &r.method, MAX_AUDIT_METHOD_LEN)?;
    check_len("audit route", &r.route, MAX_AUDIT_ROUTE_LEN)
}

impl AuditLog {
    /// The retained entries, oldest first.
    pub fn entries(&self) -> &VecDeque<AuditEntry> {
        &self.entries
    }

    /// Where the retained entries start.
    pub fn checkpoint(&self) -> &AuditCheckpoint {
        &self.checkpoint
    }

    /// The last entry's sequence number and hash (the checkpoint's when
    /// nothing is retained).
    pub fn head(&self) -> ChainHead {
        match self.entries.back() {
            Some(e) => ChainHead {
                seq: e.seq,
                hash: e.hash.clone(),
            },
            None => ChainHead {
                seq: self.checkpoint.seq,
                hash: self.checkpoint.hash.clone(),
            },
        }
    }

    /// The hash of retained entry `seq` (or of the checkpoint, when `seq`
    /// is its sequence number).
    pub fn hash_at(&self, seq: u64) -> Option<&str> {
        if seq == self.checkpoint.seq {
            return Some(&self.checkpoint.hash);
        }
        let first = self.entries.front()?.seq;
        let i = usize::try_from(seq.checked_sub(first)?).ok()?;
        self.entries.get(i).map(|e| e.hash.as_str())
    }

    /// Validates the whole batch, then chains its records and applies
    /// `retention` at `now_unix`. A refused batch changes nothing.
    pub(super) fn append(
        &mut self,
        records: &[AuditRecord],
        retention: AuditRetention,
        now_unix: u64,
    ) -> Result<(), ApplyError> {
        if records.is_empty() || records.len() > MAX_AUDIT_BATCH {
            return Err(invalid(
                "audit records",
                format!("a batch holds 1 to {MAX_AUDIT_BATCH} records"),
            ));
        }
        if retention.max_entries == 0 || retention.max_entries > MAX_AUDIT_ENTRIES {
            return Err(invalid(
                "audit retention",
                format!("max_entries must be 1 to {MAX_AUDIT_ENTRIES}"),
            ));
        }
        records.iter().try_for_each(check_record)?;
        let entries = Arc::make_mut(&mut self.entries);
        let mut head = match entries.back() {
            Some(e) => (e.seq, e.hash.clone()),
            None => (self.checkpoint.seq, self.checkpoint.hash.clone()),
        };
        for r in records {
            let seq = head.0 + 1;
            let hash = entry_hash(&head.1, seq, r);
            entries.push_back(AuditEntry {
                seq,
                record: r.clone(),
                prev_hash: std::mem::replace(&mut head.1, hash.clone()),
                hash,
            });
            head.0 = seq;
        }
        let cutoff = retention
            .max_age_secs
            .map(|age| now_unix.saturating_sub(age));
        let max = usize::try_from(retention.max_entries).unwrap_or(usize::MAX);
        while let Some(front) = entries.front() {
            let too_many = entries.len() > max;
            let too_old = cutoff.is_some_and(|c| front.record.time_unix < c);
            if !(too_many || too_old) {
                break;
            }
            if let Some(dropped) = entries.pop_front() {
                self.checkpoint = AuditCheckpoint {
                    seq: dropped.seq,
                    hash: dropped.hash,
                };
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{snapshot, ClusterState, Command, Op};

    fn record(i: u64, kind: AuditKind) -> AuditRecord {
        AuditRecord {
            time_unix: 1_000 + i,
            kind,
            key_id: Some(format!("key{i}")),
            tenant: Some("default".into()),
            client: "127.0.0.1".into(),
            method: "POST".into(),
            route: "/admin/v1/models".into(),
            status: 200,
            count: 1,
        }
    }

    fn record_op(records: Vec<AuditRecord>, max_entries: u32, now_unix: u64) -> Command {
        Command::new(Op::RecordAudit {
            records,
            retention: AuditRetention {
                max_entries,
                max_age_secs: None,
            },
            now_unix,
        })
    }

    /// A state holding `n` admin-write entries, one batch per entry.
    fn state_with(n: u64, max_entries: u32) -> ClusterState {
        let mut s = ClusterState::new();
        for i in 0..n {
            let cmd = record_op(vec![record(i, AuditKind::AdminWrite)], max_entries, 2_000);
            s.apply(i + 1, &cmd).unwrap();
        }
        s
    }

    fn verify(s: &ClusterState) -> Result<ChainHead, ChainBreak> {
        let entries: Vec<_> = s.audit().entries().iter().cloned().collect();
        verify_chain(s.audit().checkpoint(), &entries)
    }

    #[test]
    fn entries_are_numbered_and_chained_from_genesis() {
        let s = state_with(3, 100);
        let e = s.audit().entries();
        assert_eq!(e.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(e[0].prev_hash, GENESIS_HASH);
        assert_eq!(e[1].prev_hash, e[0].hash);
        assert_eq!(e[2].prev_hash, e[1].hash);
        assert_eq!(verify(&s).unwrap().seq, 3);
        assert_eq!(s.audit().head().hash, e[2].hash);
        assert_eq!(s.audit().hash_at(2), Some(e[1].hash.as_str()));
        assert_eq!(s.audit().hash_at(0), Some(GENESIS_HASH));
        assert_eq!(s.audit().hash_at(4), None);
    }

    #[test]
    fn an_edited_entry_is_found_at_its_sequence_number() {
        let s = state_with(5, 100);
        let mut entries: Vec<_> = s.audit().entries().iter().cloned().collect();
        entries[2].record.route = "/admin/v1/keys".into();
        let brk = verify_chain(s.audit().checkpoint(), &entries).unwrap_err();
        assert_eq!(brk.seq, 3);
        assert!(brk.reason.contains("edited"), "{brk}");

        // Re-hashing the edited entry does not help: the next one no
        // longer links to it.
        entries[2].hash = entry_hash(&entries[2].prev_hash, 3, &entries[2].record);
        assert_eq!(
            verify_chain(s.audit().checkpoint(), &entries)
                .unwrap_err()
                .seq,
            4
        );
    }

    #[test]
    fn a_dropped_or_reordered_entry_is_found() {
        let s = state_with(5, 100);
        let entries: Vec<_> = s.audit().entries().iter().cloned().collect();
        let mut dropped = entries.clone();
        dropped.remove(1);
        assert_eq!(
            verify_chain(s.audit().checkpoint(), &dropped)
                .unwrap_err()
                .seq,
            3
        );
        let mut swapped = entries;
        swapped.swap(3, 4);
        assert!(verify_chain(s.audit().checkpoint(), &swapped).is_err());
    }

    #[test]
    fn retention_by_count_keeps_a_checkpoint_the_rest_verifies_from() {
        let full = state_with(10, 100);
        let trimmed = state_with(10, 4);
        let kept: Vec<_> = trimmed.audit().entries().iter().map(|e| e.seq).collect();
        assert_eq!(kept, [7, 8, 9, 10]);
        assert_eq!(trimmed.audit().checkpoint().seq, 6);
        assert_eq!(
            Some(trimmed.audit().checkpoint().hash.as_str()),
            full.audit().hash_at(6)
        );
        // Trimming changes no hash: both chains end the same.
        assert_eq!(verify(&trimmed).unwrap(), verify(&full).unwrap());
    }

    #[test]
    fn retention_by_age_drops_old_entries() {
        let mut s = ClusterState::new();
        let old = AuditRecord {
            time_unix: 100,
            ..record(0, AuditKind::AuthFailure)
        };
        let new = AuditRecord {
            time_unix: 5_000,
            ..record(1, AuditKind::AdminWrite)
        };
        let op = |records, now_unix| {
            Command::new(Op::RecordAudit {
                records,
                retention: AuditRetention {
                    max_entries: 100,
                    max_age_secs: Some(3_600),
                },
                now_unix,
            })
        };
        s.apply(1, &op(vec![old], 200)).unwrap();
        assert_eq!(s.audit().entries().len(), 1);
        s.apply(2, &op(vec![new], 5_000)).unwrap();
        let seqs: Vec<_> = s.audit().entries().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [2]);
        assert_eq!(s.audit().checkpoint().seq, 1);
        assert!(verify(&s).is_ok());
    }

    #[test]
    fn bad_batches_change_nothing() {
        let mut s = state_with(2, 100);
        let before = s.audit().clone();
        let long_route = AuditRecord {
            route: "/".repeat(MAX_AUDIT_ROUTE_LEN + 1),
            ..record(9, AuditKind::AdminWrite)
        };
        let zero = AuditRecord {
            count: 0,
            ..record(9, AuditKind::AuthFailure)
        };
        let too_many = vec![record(9, AuditKind::AdminWrite); MAX_AUDIT_BATCH + 1];
        let cases = [
            record_op(vec![record(9, AuditKind::AdminWrite), long_route], 100, 1),
            record_op(vec![zero], 100, 1),
            record_op(too_many, 100, 1),
            record_op(Vec::new(), 100, 1),
            record_op(vec![record(9, AuditKind::AdminWrite)], 0, 1),
            record_op(
                vec![record(9, AuditKind::AdminWrite)],
                MAX_AUDIT_ENTRIES + 1,
                1,
            ),
        ];
        for (i, cmd) in cases.iter().enumerate() {
            let index = 10 + i as u64;
            assert!(s.apply(index, cmd).is_err(), "case {i} accepted");
            assert_eq!(s.audit(), &before, "case {i} changed the chain");
            assert_eq!(s.applied_index(), index);
        }
    }

    #[test]
    fn replicas_agree_and_snapshots_carry_the_chain() {
        let a = state_with(6, 4);
        let b = state_with(6, 4);
        assert_eq!(a, b);
        let restored = snapshot::restore(&snapshot::snapshot(&a).unwrap()).unwrap();
        assert_eq!(restored.audit(), a.audit());
        assert!(verify(&restored).is_ok());
    }
}
