//! What a coordinator has seen and not yet committed to the audit chain:
//! admin writes, one record each, ready at once; authentication failures
//! and quota rejections, counted per source, key and status over a window
//! (a minute by default) and ready when the window has closed, so that a
//! flood of bad keys becomes one record per source and window instead of
//! one raft entry per request.
//!
//! Everything is bounded: past [`MAX_GROUPS`] distinct sources in one
//! window, or [`MAX_PENDING`] records waiting for a leader, events are
//! counted as lost and reported by a [`AuditKind::Lost`] record. Pure code:
//! the caller passes the time.

use std::collections::BTreeMap;

use crate::state::audit::{
    AuditKind, AuditRecord, MAX_AUDIT_ADDR_LEN, MAX_AUDIT_METHOD_LEN, MAX_AUDIT_ROUTE_LEN,
};

/// Most distinct aggregates (source, key, kind, status) in one window.
pub const MAX_GROUPS: usize = 1024;

/// Most records held while they cannot be committed (no leader).
pub const MAX_PENDING: usize = 10_000;

/// Aggregates are keyed by window start, kind, status, client, tenant and
/// key id.
type GroupKey = (u64, AuditKind, u16, String, Option<String>, Option<String>);

/// The uncommitted audit records of one coordinator.
#[derive(Debug)]
pub struct AuditBuffer {
    window_secs: u64,
    ready: Vec<AuditRecord>,
    groups: BTreeMap<GroupKey, AuditRecord>,
    lost: u64,
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn truncated(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// `record` with every field cut to what the state machine accepts.
pub fn bounded(mut record: AuditRecord) -> AuditRecord {
    record.client = truncated(&record.client, MAX_AUDIT_ADDR_LEN);
    record.method = truncated(&record.method, MAX_AUDIT_METHOD_LEN);
    record.route = truncated(&record.route, MAX_AUDIT_ROUTE_LEN);
    record.key_id = record.key_id.map(|k| truncated(&k, MAX_AUDIT_ADDR_LEN));
    record.tenant = record.tenant.map(|t| truncated(&t, MAX_AUDIT_ADDR_LEN));
    record.count = record.count.max(1);
    record
}

impl AuditBuffer {
    /// A buffer aggregating over windows of `window_secs` (at least 1).
    pub fn new(window_secs: u64) -> Self {
        AuditBuffer {
            window_secs: window_secs.max(1),
            ready: Vec::new(),
            groups: BTreeMap::new(),
            lost: 0,
        }
    }

    fn held(&self) -> usize {
        self.ready.len() + self.groups.len()
    }

    /// Takes one event seen at `now_unix` (its `time_unix` is set here).
    pub fn record(&mut self, event: AuditRecord, now_unix: u64) {
        let mut event = bounded(event);
        match event.kind {
            AuditKind::AdminWrite | AuditKind::Lost => {
                if self.held() >= MAX_PENDING {
                    self.lost += u64::from(event.count);
                    return;
                }
                event.time_unix = now_unix;
                self.ready.push(event);
            }
            AuditKind::AuthFailure | AuditKind::QuotaRejection => {
                let window = now_unix - now_unix % self.window_secs;
                let key = (
                    window,
                    event.kind,
                    event.status,
                    event.client.clone(),
                    event.tenant.clone(),
                    event.key_id.clone(),
                );
                if let Some(group) = self.groups.get_mut(&key) {
                    group.count = group.count.saturating_add(event.count);
                    if group.route != event.route || group.method != event.method {
                        group.route = "*".into();
                        if group.method != event.method {
                            group.method = "*".into();
                        }
                    }
                    return;
                }
                let in_window = self.groups.keys().filter(|k| k.0 == window).count();
                if in_window >= MAX_GROUPS || self.held() >= MAX_PENDING {
                    self.lost += u64::from(event.count);
                    return;
                }
                event.time_unix = window;
                self.groups.insert(key, event);
            }
        }
    }

    /// The records ready to commit at `now_unix`, oldest first: every
    /// admin write, every aggregate whose window has closed, and a
    /// [`AuditKind::Lost`] record if events were lost since the last call.
    pub fn take_ready(&mut self, now_unix: u64) -> Vec<AuditRecord> {
        let current = now_unix - now_unix % self.window_secs;
        let closed: Vec<GroupKey> = self
            .groups
            .keys()
            .take_while(|k| k.0 < current)
            .cloned()
            .collect();
        let mut out = std::mem::take(&mut self.ready);
        out.extend(closed.iter().filter_map(|k| self.groups.remove(k)));
        out.sort_by_key(|r| r.time_unix);
        if self.lost > 0 {
            out.push(AuditRecord {
                time_unix: now_unix,
                kind: AuditKind::Lost,
                key_id: None,
                tenant: None,
                client: String::new(),
                method: String::new(),
                route: String::new(),
                status: 0,
                count: u32::try_from(self.lost).unwrap_or(u32::MAX),
            });
            self.lost = 0;
        }
        out
    }

    /// Puts back records that could not be committed, to be offered again
    /// by the next [`take_ready`](Self::take_ready); what does not fit is
    /// counted as lost.
    pub fn put_back(&mut self, records: Vec<AuditRecord>) {
        let room = MAX_PENDING.saturating_sub(self.held());
        let mut back = records;
        if back.len() > room {
            let over = back.split_off(room);
            self.lost += over.iter().map(|r| u64::from(r.count)).sum::<u64>();
        }
        back.append(&mut self.ready);
        self.ready = back;
    }

    /// Counts `n` events that never reached the buffer (its channel was
    /// full).
    pub fn count_lost(&mut self, n: u64) {
        self.lost = self.lost.saturating_add(n);
    }

    /// Whether anything is waiting (ready or aggregating).
    pub fn is_empty(&self) -> bool {
        self.held() == 0 && self.lost == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: AuditKind, client: &str, status: u16) -> AuditRecord {
        AuditRecord {
            time_unix: 0,
            kind,
            key_id: None,
            tenant: None,
            client: client.into(),
            method: "GET".into(),
            route: "/v1/models".into(),
            status,
            count: 1,
        }
    }

    #[test]
    fn a_flood_of_bad_keys_is_one_record_per_source_and_window() {
        let mut b = AuditBuffer::new(60);
        for i in 0..5_000 {
            b.record(event(AuditKind::AuthFailure, "10.0.0.1", 401), 120 + i % 60);
        }
        b.record(event(AuditKind::AuthFailure, "10.0.0.2", 401), 130);
        assert!(b.take_ready(179).is_empty(), "the window is still open");
        let out = b.take_ready(180);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].time_unix, 120);
        let total: u32 = out.iter().map(|r| r.count).sum();
        assert_eq!(total, 5_001);
        assert!(out
            .iter()
            .any(|r| r.client == "10.0.0.1" && r.count == 5_000));
        assert!(b.is_empty());
    }

    #[test]
    fn admin_writes_are_ready_at_once_and_not_aggregated() {
        let mut b = AuditBuffer::new(60);
        b.record(event(AuditKind::AdminWrite, "10.0.0.1", 200), 125);
        b.record(event(AuditKind::AdminWrite, "10.0.0.1", 200), 126);
        let out = b.take_ready(126);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].time_unix, 126);
    }

    #[test]
    fn routes_that_differ_are_summarized() {
        let mut b = AuditBuffer::new(10);
        b.record(event(AuditKind::QuotaRejection, "h", 429), 1);
        let mut other = event(AuditKind::QuotaRejection, "h", 429);
        other.route = "/v1/chat/completions".into();
        b.record(other, 2);
        let out = b.take_ready(10);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].route.as_str(), out[0].count), ("*", 2));
        assert_eq!(out[0].method, "GET");
    }

    #[test]
    fn too_many_sources_in_a_window_are_counted_as_lost() {
        let mut b = AuditBuffer::new(60);
        for i in 0..(MAX_GROUPS + 10) {
            b.record(event(AuditKind::AuthFailure, &format!("h{i}"), 401), 61);
        }
        let out = b.take_ready(120);
        assert_eq!(out.len(), MAX_GROUPS + 1);
        let lost = out.last().unwrap();
        assert_eq!((lost.kind, lost.count), (AuditKind::Lost, 10));
    }

    #[test]
    fn records_put_back_come_first_next_time() {
        let mut b = AuditBuffer::new(60);
        b.record(event(AuditKind::AdminWrite, "a", 200), 1);
        let first = b.take_ready(1);
        b.record(event(AuditKind::AdminWrite, "b", 200), 2);
        b.put_back(first);
        let out = b.take_ready(2);
        let clients: Vec<_> = out.iter().map(|r| r.client.as_str()).collect();
        assert_eq!(clients, ["a", "b"]);
    }

    #[test]
    fn fields_are_cut_to_what_the_chain_accepts() {
        let mut e = event(AuditKind::AdminWrite, "c", 200);
        e.route = "é".repeat(MAX_AUDIT_ROUTE_LEN);
        let r = bounded(e);
        assert!(r.route.len() <= MAX_AUDIT_ROUTE_LEN);
        assert!(r.route.chars().all(|c| c == 'é'));
    }
}
