//! The outermost HTTP middleware of every listener: after the request has
//! been answered it decides, from the method, path, status and the markers
//! the auth and quota layers leave on the response, whether the exchange
//! is audited, and hands the record to the [`AuditSink`] without waiting.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use tokio::sync::mpsc;

use crate::auth::{AuthRefused, Principal};
use crate::quota::QuotaRefused;
use crate::state::audit::{AuditKind, AuditRecord};

/// Capacity of the channel from the HTTP handlers to the committing task.
pub const SINK_QUEUE: usize = 4096;

/// Where the middleware leaves records: a bounded channel to the task that
/// commits them (`crate::server::audit_sink`). A full channel never
/// blocks a request: the record is counted as lost, and the count is
/// itself recorded.
#[derive(Debug)]
pub struct AuditSink {
    tx: mpsc::Sender<AuditRecord>,
    lost: AtomicU64,
}

impl AuditSink {
    /// A sink and the receiving end its committing task reads.
    pub fn new() -> (Arc<Self>, mpsc::Receiver<AuditRecord>) {
        let (tx, rx) = mpsc::channel(SINK_QUEUE);
        let sink = AuditSink {
            tx,
            lost: AtomicU64::new(0),
        };
        (Arc::new(sink), rx)
    }

    /// Hands over one record (never waits).
    pub fn record(&self, record: AuditRecord) {
        if self.tx.try_send(record).is_err() {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records dropped since the last call because the channel was full.
    pub fn take_lost(&self) -> u64 {
        self.lost.swap(0, Ordering::Relaxed)
    }
}

/// Which kind of record, if any, an answered request makes.
pub fn classify(
    method: &Method,
    path: &str,
    auth_refused: bool,
    quota_refused: bool,
) -> Option<AuditKind> {
    if auth_refused {
        return Some(AuditKind::AuthFailure);
    }
    if quota_refused {
        return Some(AuditKind::QuotaRejection);
    }
    let read = matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    (path.starts_with("/admin/") && !read).then_some(AuditKind::AdminWrite)
}

/// Records the request once answered, if [`classify`] says so.
pub async fn observe(State(sink): State<Arc<AuditSink>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_default();
    let resp = next.run(req).await;
    let ext = resp.extensions();
    let kind = classify(
        &method,
        &path,
        ext.get::<AuthRefused>().is_some(),
        ext.get::<QuotaRefused>().is_some(),
    );
    if let Some(kind) = kind {
        let who = ext.get::<Principal>();
        sink.record(AuditRecord {
            time_unix: 0,
            kind,
            key_id: who.map(|p| p.key_id.clone()),
            tenant: who.map(|p| p.tenant.clone()),
            client,
            method: method.to_string(),
            route: path,
            status: resp.status().as_u16(),
            count: 1,
        });
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_audited() {
        let admin_write = classify(&Method::POST, "/admin/v1/models", false, false);
        assert_eq!(admin_write, Some(AuditKind::AdminWrite));
        let delete = classify(&Method::DELETE, "/admin/v1/keys/k1", false, false);
        assert_eq!(delete, Some(AuditKind::AdminWrite));
        assert_eq!(classify(&Method::GET, "/admin/v1/keys", false, false), None);
        let inference = classify(&Method::POST, "/v1/chat/completions", false, false);
        assert_eq!(inference, None);
        let refused = classify(&Method::GET, "/admin/v1/cluster", true, false);
        assert_eq!(refused, Some(AuditKind::AuthFailure));
        let limited = classify(&Method::POST, "/v1/completions", false, true);
        assert_eq!(limited, Some(AuditKind::QuotaRejection));
    }

    #[test]
    fn a_full_sink_counts_instead_of_blocking() {
        let (sink, _rx) = AuditSink::new();
        let r = AuditRecord {
            time_unix: 0,
            kind: AuditKind::AuthFailure,
            key_id: None,
            tenant: None,
            client: "c".into(),
            method: "GET".into(),
            route: "/".into(),
            status: 401,
            count: 1,
        };
        for _ in 0..SINK_QUEUE + 5 {
            sink.record(r.clone());
        }
        assert_eq!(sink.take_lost(), 5);
        assert_eq!(sink.take_lost(), 0);
    }
}
