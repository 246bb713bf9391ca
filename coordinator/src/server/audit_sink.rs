//! The task that commits this coordinator's audit records: it drains the
//! [`AuditSink`](crate::audit::AuditSink) channel into an
//! [`AuditBuffer`], and once a second proposes what is ready as
//! [`Op::RecordAudit`] batches through the leader (so a burst of admin
//! writes costs one more raft entry a second, not one per write). Records that cannot be committed (no leader, timeout) stay in
//! the bounded buffer and are offered again.
//!
//! An admin write and its record are two raft entries: a coordinator that
//! dies between them loses that record (the write itself is in the log).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::admin::{commit, Admin};
use super::config::AuditConfig;
use super::wire::WriteReply;
use crate::audit::{AuditBuffer, AuditSink};
use crate::openai::unix_now;
use crate::state::audit::{AuditRecord, MAX_AUDIT_BATCH};
use crate::state::Op;

/// How often ready records are proposed.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Runs until the sink is dropped.
pub async fn run(
    sink: Arc<AuditSink>,
    mut rx: mpsc::Receiver<AuditRecord>,
    admin: Arc<Admin>,
    cfg: AuditConfig,
) {
    let mut buffer = AuditBuffer::new(cfg.window_secs);
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_flush = Instant::now();
    loop {
        tokio::select! {
            got = rx.recv() => match got {
                Some(r) => buffer.record(r, unix_now()),
                None => return,
            },
            _ = tick.tick() => {}
        }
        // Take whatever else is queued, so one proposal carries it.
        while let Ok(r) = rx.try_recv() {
            buffer.record(r, unix_now());
        }
        buffer.count_lost(sink.take_lost());
        if last_flush.elapsed() >= FLUSH_EVERY {
            flush(&mut buffer, &admin, cfg).await;
            last_flush = Instant::now();
        }
    }
}

/// Proposes every ready record, [`MAX_AUDIT_BATCH`] at a time; on the
/// first failure puts the rest back for the next flush.
async fn flush(buffer: &mut AuditBuffer, admin: &Admin, cfg: AuditConfig) {
    let mut ready = buffer.take_ready(unix_now());
    while !ready.is_empty() {
        let rest = ready.split_off(ready.len().min(MAX_AUDIT_BATCH));
        let batch = std::mem::replace(&mut ready, rest);
        let op = Op::RecordAudit {
            records: batch.clone(),
            retention: cfg.retention(),
            now_unix: unix_now(),
        };
        match commit(admin, op).await {
            WriteReply::Applied(_) => {
                tracing::debug!(records = batch.len(), "audit records committed");
            }
            WriteReply::Rejected { message, .. } => {
                // Fields are bounded before they get here; a refusal is a
                // bug, and retrying would refuse again.
                tracing::error!(records = batch.len(), "audit records refused: {message}");
            }
            WriteReply::NotLeader { .. } | WriteReply::Unavailable { .. } => {
                tracing::debug!(
                    records = batch.len(),
                    "audit records not committed; retrying"
                );
                let mut back = batch;
                back.extend(ready);
                buffer.put_back(back);
                return;
            }
        }
    }
}
