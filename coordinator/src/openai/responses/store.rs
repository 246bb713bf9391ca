//! The bounded store of Responses API answers on one coordinator: each
//! stored response is an opaque record that expires after a TTL; past the
//! count or byte bound, the oldest records go first.

use std::collections::{BTreeSet, HashMap};

/// The store's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Most records held.
    pub max_records: usize,
    /// Most bytes held, over all records.
    pub max_bytes: usize,
    /// Largest single record.
    pub max_record_bytes: usize,
    /// Seconds a record lives after it is stored.
    pub ttl_s: u64,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            max_records: 4096,
            max_bytes: 64 << 20,
            max_record_bytes: 1 << 20,
            ttl_s: 24 * 3600,
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    record: Vec<u8>,
    expires_at: u64,
    /// Insertion order, for eviction.
    seq: u64,
}

/// Stored responses by id. Pure: callers pass the time.
#[derive(Debug, Default)]
pub struct ResponseStore {
    limits: StoreLimits,
    entries: HashMap<String, Entry>,
    /// `(seq, id)` of every entry, oldest first.
    order: BTreeSet<(u64, String)>,
    bytes: usize,
    next_seq: u64,
}

/// Why a record was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The record is larger than one record may be.
    #[error("a stored response may be at most {max} bytes, this one is {len}")]
    TooLarge {
        /// The record's size.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The id is not one this server hands out.
    #[error("not a response id: {0:?}")]
    BadId(String),
}

/// Longest response id accepted.
pub const MAX_ID_BYTES: usize = 64;

/// Whether `id` looks like an id this server makes (`resp_` and
/// alphanumerics), so that ids from requests and peers are bounded.
pub fn valid_id(id: &str) -> bool {
    id.len() <= MAX_ID_BYTES
        && id
            .strip_prefix("resp_")
            .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
}

impl ResponseStore {
    /// An empty store with these bounds.
    pub fn new(limits: StoreLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// The store's bounds.
    pub fn limits(&self) -> StoreLimits {
        self.limits
    }

    /// Stores `record` under `id` until `expires_at` (Unix seconds; capped
    /// at `now` plus the TTL), replacing any record of that id, and evicts
    /// expired records and then the oldest ones until the bounds hold.
    pub fn put(
        &mut self,
        id: &str,
        record: Vec<u8>,
        expires_at: u64,
        now: u64,
    ) -> Result<(), StoreError> {
        if !valid_id(id) {
            return Err(StoreError::BadId(id.chars().take(80).collect()));
        }
        if record.len() > self.limits.max_record_bytes {
            return Err(StoreError::TooLarge {
                len: record.len(),
                max: self.limits.max_record_bytes,
            });
        }
        self.remove(id);
        self.expire(now);
        while !self.entries.is_empty()
            && (self.entries.len() >= self.limits.max_records
                || self.bytes + record.len() > self.limits.max_bytes)
        {
            let Some((_, oldest)) = self.order.first().cloned() else {
                break;
            };
            self.remove(&oldest);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += record.len();
        self.order.insert((seq, id.to_string()));
        self.entries.insert(
            id.to_string(),
            Entry {
                record,
                expires_at: expires_at.min(now.saturating_add(self.limits.ttl_s)),
                seq,
            },
        );
        Ok(())
    }

    /// The record stored under `id`, unless it expired.
    pub fn get(&self, id: &str, now: u64) -> Option<(&[u8], u64)> {
        self.entries
            .get(id)
            .filter(|e| e.expires_at > now)
            .map(|e| (e.record.as_slice(), e.expires_at))
    }

    /// Removes `id`'s record; whether there was one.
    pub fn remove(&mut self, id: &str) -> bool {
        match self.entries.remove(id) {
            Some(e) => {
                self.bytes -= e.record.len();
                self.order.remove(&(e.seq, id.to_string()));
                true
            }
            None => false,
        }
    }

    /// Drops every record that expired by `now`.
    pub fn expire(&mut self, now: u64) {
        let gone: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.expires_at <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.remove(&id);
        }
    }

    /// Records held (expired ones included until the next write).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the store holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> ResponseStore {
        ResponseStore::new(StoreLimits {
            max_records: 3,
            max_bytes: 100,
            max_record_bytes: 60,
            ttl_s: 10,
        })
    }

    #[test]
    fn a_record_lives_until_its_ttl() {
        let mut s = small();
        s.put("resp_a", b"one".to_vec(), u64::MAX, 100).unwrap();
        assert_eq!(s.get("resp_a", 105).map(|r| r.0), Some(&b"one"[..]));
        // The TTL caps whatever expiry a caller (or a peer) asks for.
        assert_eq!(s.get("resp_a", 110), None);
        s.put("resp_b", b"two".to_vec(), 103, 100).unwrap();
        assert_eq!(s.get("resp_b", 103), None);
        s.expire(111);
        assert!(s.is_empty());
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn the_oldest_records_go_first_past_the_bounds() {
        let mut s = small();
        for id in ["resp_a", "resp_b", "resp_c", "resp_d"] {
            s.put(id, vec![0; 10], u64::MAX, 0).unwrap();
        }
        assert_eq!(s.len(), 3);
        assert!(s.get("resp_a", 0).is_none());
        // The count bound makes room for one: b goes; c, d and e fit in bytes.
        s.put("resp_e", vec![0; 60], u64::MAX, 0).unwrap();
        assert!(s.get("resp_b", 0).is_none());
        assert!(s.get("resp_c", 0).is_some() && s.get("resp_d", 0).is_some());
        assert_eq!(s.bytes(), 80);
        // 50 more bytes push out c, d and e, oldest first.
        s.put("resp_f", vec![0; 50], u64::MAX, 0).unwrap();
        assert_eq!((s.len(), s.bytes()), (1, 50));
        assert!(s.get("resp_f", 0).is_some());
    }

    #[test]
    fn replacing_and_removing_keep_the_accounting() {
        let mut s = small();
        s.put("resp_a", vec![0; 30], u64::MAX, 0).unwrap();
        s.put("resp_a", vec![0; 5], u64::MAX, 0).unwrap();
        assert_eq!((s.len(), s.bytes()), (1, 5));
        assert!(s.remove("resp_a"));
        assert!(!s.remove("resp_a"));
        assert_eq!((s.len(), s.bytes()), (0, 0));
    }

    #[test]
    fn oversized_records_and_foreign_ids_are_refused() {
        let mut s = small();
        assert!(matches!(
            s.put("resp_a", vec![0; 61], u64::MAX, 0),
            Err(StoreError::TooLarge { .. })
        ));
        for id in [
            "",
            "resp_",
            "x_abc",
            "resp_../x",
            &format!("resp_{}", "a".repeat(80)),
        ] {
            assert!(
                matches!(s.put(id, vec![1], u64::MAX, 0), Err(StoreError::BadId(_))),
                "{id}"
            );
        }
        assert!(s.is_empty());
    }
}
