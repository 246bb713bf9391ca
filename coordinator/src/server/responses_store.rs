//! Stored Responses API answers across the coordinators: each is kept
//! here and on peers until a majority holds it (as FL checkpoints are), so
//! that losing any one coordinator loses none; reads ask the peers when
//! this coordinator lacks a record. Records stay out of the raft log.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::peers::Peers;
use super::wire::{PeerRequest, PeerResponse};
use crate::openai::responses::{ResponseStore, StoreError, StoreLimits};
use crate::openai::RouteError;

/// This coordinator's share of the response store, and the way to its peers'.
#[derive(Debug)]
pub struct ReplicatedResponses {
    local: Mutex<ResponseStore>,
    peers: Arc<Peers>,
    peer_ids: Vec<u64>,
    timeout: Duration,
}

impl ReplicatedResponses {
    /// A store bounded by `limits`, replicated to `peer_ids`.
    pub fn new(
        limits: StoreLimits,
        peers: Arc<Peers>,
        peer_ids: Vec<u64>,
        timeout: Duration,
    ) -> Self {
        Self {
            local: Mutex::new(ResponseStore::new(limits)),
            peers,
            peer_ids,
            timeout,
        }
    }

    fn local(&self) -> MutexGuard<'_, ResponseStore> {
        self.local.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a record here (a peer's write, or the first copy of ours).
    pub fn put_local(&self, id: &str, record: Vec<u8>, expires_at: u64) -> Result<(), StoreError> {
        self.local()
            .put(id, record, expires_at, crate::openai::unix_now())
    }

    /// This coordinator's copy of a record, with its expiry.
    pub fn get_local(&self, id: &str) -> Option<(Vec<u8>, u64)> {
        self.local()
            .get(id, crate::openai::unix_now())
            .map(|(r, e)| (r.to_vec(), e))
    }

    /// Drops this coordinator's copy of a record; whether it had one.
    pub fn delete_local(&self, id: &str) -> bool {
        self.local().remove(id)
    }

    /// Stores a record here and on the peers; succeeds once a majority of
    /// the coordinators holds it.
    pub async fn save(&self, id: &str, record: Vec<u8>) -> Result<(), RouteError> {
        let now = crate::openai::unix_now();
        let expires_at = now.saturating_add(self.local().limits().ttl_s);
        self.put_local(id, record.clone(), expires_at)
            .map_err(|e| RouteError::Invalid(e.to_string()))?;
        let req = PeerRequest::PutResponse {
            id: id.to_string(),
            record,
            expires_at,
        };
        let held = self
            .peers
            .replicate(&self.peer_ids, &req, self.timeout)
            .await;
        if held.is_majority() {
            Ok(())
        } else {
            Err(RouteError::Unavailable(format!(
                "the response was stored on {} of {} coordinators, not a majority",
                held.holders, held.members
            )))
        }
    }

    /// A record from here, else from the first peer that has it (kept
    /// here afterwards).
    pub async fn load(&self, id: &str) -> Result<Option<Vec<u8>>, RouteError> {
        if let Some((record, _)) = self.get_local(id) {
            return Ok(Some(record));
        }
        let req = PeerRequest::GetResponse { id: id.to_string() };
        let asks = self
            .peer_ids
            .iter()
            .map(|&peer| self.peers.request(peer, &req, self.timeout));
        let answers = futures_util::future::join_all(asks).await;
        let reached = answers.iter().filter(|a| a.is_ok()).count();
        for answer in answers {
            if let Ok(PeerResponse::Blob(Some(record))) = answer {
                let ttl = self.local().limits().ttl_s;
                // A copy here: the next read needs no peer. Its expiry is
                // not known, so the TTL counts from now (at most the TTL late).
                let now = crate::openai::unix_now();
                let _ = self.put_local(id, record.clone(), now.saturating_add(ttl));
                return Ok(Some(record));
            }
        }
        // Every majority holds a stored record: if this coordinator and
        // the peers it reached make a majority, the record is gone.
        if (reached + 1) * 2 > self.peer_ids.len() + 1 {
            Ok(None)
        } else {
            Err(RouteError::Unavailable(
                "too few coordinators answered to tell whether the response exists".into(),
            ))
        }
    }

    /// Deletes a record here and on every peer reached; whether any held it.
    pub async fn delete(&self, id: &str) -> Result<bool, RouteError> {
        let existed = self.load(id).await?.is_some();
        self.delete_local(id);
        let req = PeerRequest::DeleteResponse { id: id.to_string() };
        let sends = self
            .peer_ids
            .iter()
            .map(|&peer| self.peers.request(peer, &req, self.timeout));
        futures_util::future::join_all(sends).await;
        Ok(existed)
    }
}
