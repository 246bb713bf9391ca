//! Durable raft log storage over [redb].
//!
//! One redb database file in a directory holds:
//!
//! - the `entries` table: log index → protobuf-encoded [`Entry`];
//! - the `meta` table: the [`HardState`], the [`ConfState`], the metadata
//!   and data of the last snapshot (the [`ClusterState`] snapshot bytes),
//!   and the truncation point (index and term of the entry just before the
//!   first retained one).
//!
//! Every write ([`DurableStorage::append`], [`DurableStorage::set_hard_state`],
//! [`DurableStorage::apply_snapshot`], [`DurableStorage::compact`], …)
//! commits a redb write transaction with [`redb::Durability::Immediate`]
//! (fsync) before it returns, so whatever a write reported as done survives
//! a crash. The small metadata is cached in memory; entries are read from
//! the database.
//!
//! Decoding is size-capped (rust-protobuf 2.x must never parse unbounded
//! input), even though the bytes come from our own disk.
//!
//! [`ClusterState`]: crate::state::ClusterState

use std::path::{Path, PathBuf};

use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage};
use redb::{Database, ReadableTable, TableDefinition};
use thiserror::Error;

use crate::state::snapshot::MAX_SNAPSHOT_BYTES;

/// Largest encoded log entry accepted when decoding (the state machine caps
/// commands at 1 MiB; this leaves room for the entry envelope and context).
pub const MAX_ENTRY_BYTES: usize = 4 << 20;

/// Largest encoded metadata record (hard state, conf state, snapshot
/// metadata) accepted when decoding.
pub const MAX_META_BYTES: usize = 1 << 20;

/// File name of the database inside the storage directory.
pub const DB_FILE: &str = "raft.redb";

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const KEY_HARD_STATE: &str = "hard_state";
const KEY_CONF_STATE: &str = "conf_state";
const KEY_CONF_INDEX: &str = "conf_index";
const KEY_SNAP_META: &str = "snapshot_meta";
const KEY_SNAP_DATA: &str = "snapshot_data";
const KEY_TRUNCATED: &str = "truncated";

/// Errors of the durable raft storage.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The storage directory could not be created.
    #[error("cannot create storage directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The embedded database failed.
    #[error("database error: {0}")]
    Db(Box<redb::Error>),
    /// A stored protobuf record could not be decoded.
    #[error("cannot decode stored {what}: {source}")]
    Decode {
        /// Which record.
        what: &'static str,
        /// The protobuf error.
        source: protobuf::ProtobufError,
    },
    /// A protobuf record could not be encoded.
    #[error("cannot encode {what}: {source}")]
    Encode {
        /// Which record.
        what: &'static str,
        /// The protobuf error.
        source: protobuf::ProtobufError,
    },
    /// A stored record is larger than its decoding cap.
    #[error("stored {what} is {len} bytes, over the {max}-byte cap")]
    TooLarge {
        /// Which record.
        what: &'static str,
        /// Its size.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The database content is inconsistent.
    #[error("corrupt raft storage: {0}")]
    Corrupt(String),
    /// The caller asked for something the log cannot do (for instance
    /// appending entries that leave a gap, or overwriting compacted ones).
    #[error("invalid storage operation: {0}")]
    Invalid(String),
    /// The requested entries were compacted away.
    #[error("log compacted: first available index is {first}, requested {requested}")]
    Compacted {
        /// First index still in the log.
        first: u64,
        /// The requested index.
        requested: u64,
    },
    /// The requested entries are beyond the end of the log.
    #[error("log entries unavailable: last index is {last}, requested {requested}")]
    Unavailable {
        /// Last index in the log.
        last: u64,
        /// The requested index.
        requested: u64,
    },
    /// A snapshot older than the current log start was offered.
    #[error("snapshot at {index} is out of date (first index {first})")]
    SnapshotOutOfDate {
        /// Index of the offered snapshot.
        index: u64,
        /// First index of the log.
        first: u64,
    },
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(Box::new(redb::Error::from(e)))
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl From<StoreError> for raft::Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Compacted { .. } => raft::Error::Store(raft::StorageError::Compacted),
            StoreError::Unavailable { .. } => raft::Error::Store(raft::StorageError::Unavailable),
            StoreError::SnapshotOutOfDate { .. } => {
                raft::Error::Store(raft::StorageError::SnapshotOutOfDate)
            }
            other => raft::Error::Store(raft::StorageError::Other(Box::new(other))),
        }
    }
}

/// Result of storage operations.
pub type StoreResult<T> = Result<T, StoreError>;

fn decode_capped<M: PbMessage>(what: &'static str, bytes: &[u8], max: usize) -> StoreResult<M> {
    if bytes.len() > max {
        return Err(StoreError::TooLarge {
            what,
            len: bytes.len(),
            max,
        });
    }
    M::parse_from_bytes(bytes).map_err(|source| StoreError::Decode { what, source })
}

fn encode<M: PbMessage>(what: &'static str, m: &M) -> StoreResult<Vec<u8>> {
    m.write_to_bytes()
        .map_err(|source| StoreError::Encode { what, source })
}

fn encode_truncated(index: u64, term: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&index.to_le_bytes());
    b[8..].copy_from_slice(&term.to_le_bytes());
    b
}

fn decode_truncated(bytes: &[u8]) -> StoreResult<(u64, u64)> {
    let arr: [u8; 16] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("truncation record is {} bytes", bytes.len())))?;
    let mut i = [0u8; 8];
    let mut t = [0u8; 8];
    i.copy_from_slice(&arr[..8]);
    t.copy_from_slice(&arr[8..]);
    Ok((u64::from_le_bytes(i), u64::from_le_bytes(t)))
}

/// Raft log storage persisted in a redb database.
///
/// Reads go through the [`raft::Storage`] trait; writes are inherent
/// methods that commit (fsync) before returning.
pub struct DurableStorage {
    db: Database,
    dir: PathBuf,
    hard_state: HardState,
    conf_state: ConfState,
    /// Log index of the conf change the stored `conf_state` reflects.
    conf_index: u64,
    snapshot_meta: SnapshotMetadata,
    /// Index and term of the entry just before the first retained entry.
    truncated: (u64, u64),
    last_index: u64,
}

impl std::fmt::Debug for DurableStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableStorage")
            .field("dir", &self.dir)
            .field("hard_state", &self.hard_state)
            .field("conf_state", &self.conf_state)
            .field("truncated", &self.truncated)
            .field("last_index", &self.last_index)
            .finish()
    }
}

impl DurableStorage {
    /// Opens the storage in `dir` (created if missing), restoring whatever
    /// was persisted there before.
    pub fn open(dir: impl AsRef<Path>) -> StoreResult<Self> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::CreateDir {
            path: dir.clone(),
            source,
        })?;
        let db = Database::create(dir.join(DB_FILE))?;
        // Make sure both tables exist so read transactions can open them.
        let txn = db.begin_write()?;
        {
            txn.open_table(ENTRIES)?;
            txn.open_table(META)?;
        }
        txn.commit()?;

        let mut s = DurableStorage {
            db,
            dir,
            hard_state: HardState::default(),
            conf_state: ConfState::default(),
            conf_index: 0,
            snapshot_meta: SnapshotMetadata::default(),
            truncated: (0, 0),
            last_index: 0,
        };
        s.load()?;
        Ok(s)
    }

    fn load(&mut self) -> StoreResult<()> {
        let r = self.db.begin_read()?;
        let meta = r.open_table(META)?;
        if let Some(v) = meta.get(KEY_HARD_STATE)? {
            self.hard_state = decode_capped("hard state", v.value(), MAX_META_BYTES)?;
        }
        if let Some(v) = meta.get(KEY_CONF_STATE)? {
            self.conf_state = decode_capped("conf state", v.value(), MAX_META_BYTES)?;
        }
        if let Some(v) = meta.get(KEY_CONF_INDEX)? {
            let b: [u8; 8] = v.value().try_into().map_err(|_| {
                StoreError::Corrupt(format!("conf index record is {} bytes", v.value().len()))
            })?;
            self.conf_index = u64::from_le_bytes(b);
        }
        if let Some(v) = meta.get(KEY_SNAP_META)? {
            self.snapshot_meta = decode_capped("snapshot metadata", v.value(), MAX_META_BYTES)?;
        }
        if let Some(v) = meta.get(KEY_TRUNCATED)? {
            self.truncated = decode_truncated(v.value())?;
        }
        let entries = r.open_table(ENTRIES)?;
        self.last_index = match entries.last()? {
            Some((k, _)) => k.value(),
            None => self.truncated.0,
        };
        if self.last_index < self.truncated.0 {
            return Err(StoreError::Corrupt(format!(
                "last index {} below truncation point {}",
                self.last_index, self.truncated.0
            )));
        }
        Ok(())
    }

    /// The directory this storage lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The persisted hard state.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The persisted configuration.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Metadata of the last stored snapshot (index 0 if none).
    pub fn snapshot_metadata(&self) -> &SnapshotMetadata {
        &self.snapshot_meta
    }

    /// The data of the last stored snapshot (empty if none).
    pub fn snapshot_data(&self) -> StoreResult<Vec<u8>> {
        let r = self.db.begin_read()?;
        let meta = r.open_table(META)?;
        match meta.get(KEY_SNAP_DATA)? {
            Some(v) => {
                let bytes = v.value();
                if bytes.len() > MAX_SNAPSHOT_BYTES {
                    return Err(StoreError::TooLarge {
                        what: "snapshot data",
                        len: bytes.len(),
                        max: MAX_SNAPSHOT_BYTES,
                    });
                }
                Ok(bytes.to_vec())
            }
            None => Ok(Vec::new()),
        }
    }

    fn first(&self) -> u64 {
        self.truncated.0 + 1
    }

    /// Whether nothing was ever persisted (no entries, no snapshot, no
    /// configuration, default hard state).
    pub fn is_empty(&self) -> bool {
        self.last_index == 0
            && self.truncated == (0, 0)
            && self.hard_state == HardState::default()
            && self.conf_state == ConfState::default()
    }

    /// Appends `ents`, first removing any stored entries at or after
    /// `ents[0].index` (a conflicting suffix), and commits durably.
    ///
    /// Errors if `ents` would overwrite compacted entries or leave a gap.
    pub fn append(&mut self, ents: &[Entry]) -> StoreResult<()> {
        let Some(first_new) = ents.first().map(|e| e.index) else {
            return Ok(());
        };
        if first_new < self.first() {
            return Err(StoreError::Invalid(format!(
                "append at {first_new} overwrites compacted log (first index {})",
                self.first()
            )));
        }
        if first_new > self.last_index + 1 {
            return Err(StoreError::Invalid(format!(
                "append at {first_new} leaves a gap after last index {}",
                self.last_index
            )));
        }
        for (i, e) in ents.iter().enumerate() {
            if e.index != first_new + i as u64 {
                return Err(StoreError::Invalid(format!(
                    "appended entries are not contiguous at position {i}"
                )));
            }
        }
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(ENTRIES)?;
            if first_new <= self.last_index {
                t.retain_in(first_new.., |_, _| false)?;
            }
            for e in ents {
                let bytes = encode("entry", e)?;
                t.insert(e.index, bytes.as_slice())?;
            }
        }
        txn.commit()?;
        self.last_index = first_new + ents.len() as u64 - 1;
        Ok(())
    }

    /// Persists the hard state.
    pub fn set_hard_state(&mut self, hs: &HardState) -> StoreResult<()> {
        self.put_meta(KEY_HARD_STATE, &encode("hard state", hs)?)?;
        self.hard_state = hs.clone();
        Ok(())
    }

    /// Persists only a new commit index (the rest of the hard state is
    /// unchanged).
    pub fn set_commit(&mut self, commit: u64) -> StoreResult<()> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(&hs)
    }

    /// Persists the configuration that results from applying the conf
    /// change at log `index` (0 for a bootstrap configuration), in one
    /// durable transaction.
    pub fn set_conf_state(&mut self, cs: &ConfState, index: u64) -> StoreResult<()> {
        let txn = self.db.begin_write()?;
        {
            let mut m = txn.open_table(META)?;
            m.insert(KEY_CONF_STATE, encode("conf state", cs)?.as_slice())?;
            m.insert(KEY_CONF_INDEX, index.to_le_bytes().as_slice())?;
        }
        txn.commit()?;
        self.conf_state = cs.clone();
        self.conf_index = index;
        Ok(())
    }

    /// Log index of the conf change (or snapshot) the stored configuration
    /// reflects; conf changes at or below it are already in effect.
    pub fn conf_index(&self) -> u64 {
        self.conf_index
    }

    fn put_meta(&mut self, key: &str, value: &[u8]) -> StoreResult<()> {
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(META)?;
            t.insert(key, value)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Installs a snapshot received from the leader: stores its metadata
    /// and data, drops the whole log, raises the hard state's term and
    /// commit to the snapshot's, and adopts its configuration — all in one
    /// durable transaction.
    pub fn apply_snapshot(&mut self, snapshot: &Snapshot) -> StoreResult<()> {
        let meta = snapshot.get_metadata();
        if meta.index < self.first() && !(meta.index == 0 && self.is_empty()) {
            return Err(StoreError::SnapshotOutOfDate {
                index: meta.index,
                first: self.first(),
            });
        }
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = meta.index;
        let cs = meta.get_conf_state().clone();
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(ENTRIES)?;
            t.retain_in(0u64.., |_, _| false)?;
            let mut m = txn.open_table(META)?;
            m.insert(KEY_SNAP_META, encode("snapshot metadata", meta)?.as_slice())?;
            m.insert(KEY_SNAP_DATA, snapshot.get_data())?;
            m.insert(KEY_HARD_STATE, encode("hard state", &hs)?.as_slice())?;
            m.insert(KEY_CONF_STATE, encode("conf state", &cs)?.as_slice())?;
            m.insert(KEY_CONF_INDEX, meta.index.to_le_bytes().as_slice())?;
            m.insert(
                KEY_TRUNCATED,
                encode_truncated(meta.index, meta.term).as_slice(),
            )?;
        }
        txn.commit()?;
        self.snapshot_meta = meta.clone();
        self.hard_state = hs;
        self.conf_state = cs;
        self.conf_index = meta.index;
        self.truncated = (meta.index, meta.term);
        self.last_index = meta.index;
        Ok(())
    }

    /// Stores a snapshot this node made of its own state at applied index
    /// `index` (which must be in the log), with configuration `cs`. The log
    /// itself is left alone; see [`compact`](Self::compact).
    pub fn create_snapshot(&mut self, index: u64, cs: &ConfState, data: &[u8]) -> StoreResult<()> {
        if index < self.snapshot_meta.index {
            return Err(StoreError::SnapshotOutOfDate {
                index,
                first: self.snapshot_meta.index,
            });
        }
        let term = self.term_of(index)?;
        let meta = SnapshotMetadata {
            index,
            term,
            conf_state: Some(cs.clone()).into(),
            ..Default::default()
        };
        let txn = self.db.begin_write()?;
        {
            let mut m = txn.open_table(META)?;
            m.insert(
                KEY_SNAP_META,
                encode("snapshot metadata", &meta)?.as_slice(),
            )?;
            m.insert(KEY_SNAP_DATA, data)?;
        }
        txn.commit()?;
        self.snapshot_meta = meta;
        Ok(())
    }

    /// Discards all entries before `compact_index`, keeping the term of the
    /// entry at `compact_index - 1` for log matching. A `compact_index` at
    /// or below the first index is a no-op; one beyond `last_index + 1` is
    /// an error.
    pub fn compact(&mut self, compact_index: u64) -> StoreResult<()> {
        if compact_index <= self.first() {
            return Ok(());
        }
        if compact_index > self.last_index + 1 {
            return Err(StoreError::Invalid(format!(
                "compact to {compact_index} beyond last index {}",
                self.last_index
            )));
        }
        let prev_term = self.term_of(compact_index - 1)?;
        let txn = self.db.begin_write()?;
        {
            let mut t = txn.open_table(ENTRIES)?;
            t.retain_in(..compact_index, |_, _| false)?;
            let mut m = txn.open_table(META)?;
            m.insert(
                KEY_TRUNCATED,
                encode_truncated(compact_index - 1, prev_term).as_slice(),
            )?;
        }
        txn.commit()?;
        self.truncated = (compact_index - 1, prev_term);
        Ok(())
    }

    /// The term of the entry at `idx`, which must be in
    /// `[first_index - 1, last_index]`.
    pub fn term_of(&self, idx: u64) -> StoreResult<u64> {
        if idx == self.truncated.0 {
            return Ok(self.truncated.1);
        }
        if idx < self.first() {
            return Err(StoreError::Compacted {
                first: self.first(),
                requested: idx,
            });
        }
        if idx > self.last_index {
            return Err(StoreError::Unavailable {
                last: self.last_index,
                requested: idx,
            });
        }
        let r = self.db.begin_read()?;
        let t = r.open_table(ENTRIES)?;
        match t.get(idx)? {
            Some(v) => {
                let e: Entry = decode_capped("entry", v.value(), MAX_ENTRY_BYTES)?;
                Ok(e.term)
            }
            None => Err(StoreError::Corrupt(format!("entry {idx} missing"))),
        }
    }

    /// Entries in `[low, high)`, limited to `max_size` encoded bytes (at
    /// least one entry is returned when the range is not empty).
    pub fn entries_in(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> StoreResult<Vec<Entry>> {
        if low < self.first() {
            return Err(StoreError::Compacted {
                first: self.first(),
                requested: low,
            });
        }
        if high > self.last_index + 1 {
            return Err(StoreError::Unavailable {
                last: self.last_index,
                requested: high - 1,
            });
        }
        let mut out = Vec::new();
        if low >= high {
            return Ok(out);
        }
        let r = self.db.begin_read()?;
        let t = r.open_table(ENTRIES)?;
        let mut size: u64 = 0;
        let mut expected = low;
        for item in t.range(low..high)? {
            let (k, v) = item?;
            if k.value() != expected {
                return Err(StoreError::Corrupt(format!("entry {expected} missing")));
            }
            let bytes = v.value();
            let e: Entry = decode_capped("entry", bytes, MAX_ENTRY_BYTES)?;
            size += bytes.len() as u64;
            if let Some(max) = max_size {
                if !out.is_empty() && size > max {
                    break;
                }
            }
            out.push(e);
            expected += 1;
        }
        if out.is_empty() || (max_size.is_none() && expected != high) {
            return Err(StoreError::Corrupt(format!("entry {expected} missing")));
        }
        Ok(out)
    }
}

impl Storage for DurableStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        Ok(self.entries_in(low, high, max_size.into())?)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        Ok(self.term_of(idx)?)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.snapshot_meta.index < request_index {
            return Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snap = Snapshot::default();
        snap.set_metadata(self.snapshot_meta.clone());
        snap.data = self.snapshot_data()?.into();
        Ok(snap)
    }
}

#[cfg(test)]
mod tests;
