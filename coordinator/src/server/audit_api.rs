//! The audit routes of the admin API, read from this coordinator's own
//! copy of the chain (its locally applied state):
//!
//! - `GET /admin/v1/audit?after=SEQ&limit=N&since=UNIX&tenant=T`: a page
//!   of entries (oldest first, `limit` at most [`MAX_PAGE`]), with the
//!   checkpoint and head the chain is verified between. A tenant other
//!   than `default` sees only its own entries (`filtered: true`, as with
//!   any filter: such a page cannot be verified as a chain).
//! - `GET /admin/v1/audit/peers?seq=SEQ`: every coordinator's hash of
//!   entry `SEQ` (this one's included), asked over the peer transport, so
//!   that a chain rewritten consistently on one coordinator (from an
//!   edited raft log) shows up as a disagreement. Operator (`default`)
//!   keys only.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::admin::{Admin, ApiError};
use super::wire::{PeerRequest, PeerResponse};
use crate::auth::{sees_tenant, Principal};
use crate::state::DEFAULT_TENANT;

/// Most entries one page holds.
pub const MAX_PAGE: usize = 1000;

/// Query of `GET /admin/v1/audit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Entries after this sequence number (default: from the start).
    #[serde(default)]
    after: u64,
    /// Page size, 1 to [`MAX_PAGE`] (default [`MAX_PAGE`]).
    #[serde(default)]
    limit: Option<usize>,
    /// Only entries at or after this time, Unix seconds.
    #[serde(default)]
    since: Option<u64>,
    /// Only entries of this tenant.
    #[serde(default)]
    tenant: Option<String>,
}

fn bad_query(e: QueryRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, format!("bad query: {e}"))
}

/// `GET /admin/v1/audit`.
pub async fn list(
    State(admin): State<Arc<Admin>>,
    who: Option<Extension<Principal>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(bad_query)?;
    let limit = q.limit.unwrap_or(MAX_PAGE);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("limit must be 1 to {MAX_PAGE}"),
        ));
    }
    let who = who.map(|Extension(p)| p);
    let view = admin.view.borrow().clone();
    let audit = view.state.audit();
    let own_only = who.as_ref().is_some_and(|p| p.tenant != DEFAULT_TENANT);
    let wanted = |e: &&crate::state::audit::AuditEntry| {
        let tenant = e.record.tenant.as_deref().unwrap_or("");
        e.seq > q.after
            && q.since.is_none_or(|t| e.record.time_unix >= t)
            && q.tenant.as_deref().is_none_or(|t| tenant == t)
            && (!own_only || sees_tenant(who.as_ref(), tenant))
    };
    let mut page: Vec<&crate::state::audit::AuditEntry> = audit
        .entries()
        .iter()
        .filter(wanted)
        .take(limit + 1)
        .collect();
    let more = page.len() > limit;
    page.truncate(limit);
    let head = audit.head();
    Ok(Json(json!({
        "checkpoint": audit.checkpoint(),
        "head": {"seq": head.seq, "hash": head.hash},
        "filtered": own_only || q.since.is_some() || q.tenant.is_some(),
        "more": more,
        "entries": page,
    })))
}

/// Query of `GET /admin/v1/audit/peers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeersQuery {
    /// The entry whose hash is compared.
    seq: u64,
}

/// `GET /admin/v1/audit/peers`.
pub async fn peers(
    State(admin): State<Arc<Admin>>,
    who: Option<Extension<Principal>>,
    query: Result<Query<PeersQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(bad_query)?;
    if who.is_some_and(|Extension(p)| p.tenant != DEFAULT_TENANT) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "comparing the audit chain across coordinators needs an admin key of tenant default",
        ));
    }
    let state = admin.view.borrow().state.clone();
    let mut answers = Vec::new();
    let asks = state.coordinators().iter().map(|(&id, info)| {
        let admin = admin.clone();
        let own = (id == admin.id).then(|| {
            let audit = state.audit();
            (audit.head().seq, audit.hash_at(q.seq).map(str::to_string))
        });
        async move {
            let answer = match own {
                Some(own) => Ok(own),
                None => ask(&admin, id, q.seq).await,
            };
            (id, info.name.clone(), answer)
        }
    });
    for (id, name, answer) in futures_util::future::join_all(asks).await {
        answers.push(match answer {
            Ok((head_seq, hash)) => json!({
                "id": id, "name": name, "head_seq": head_seq, "hash": hash, "error": null,
            }),
            Err(e) => json!({
                "id": id, "name": name, "head_seq": null, "hash": null, "error": e,
            }),
        });
    }
    Ok(Json(json!({"seq": q.seq, "coordinators": answers})))
}

/// One peer's head and hash of entry `seq`.
async fn ask(admin: &Admin, id: u64, seq: u64) -> Result<(u64, Option<String>), String> {
    let timeout = admin.timeout.min(Duration::from_secs(5));
    let req = PeerRequest::AuditHash { seq };
    let answer = tokio::time::timeout(timeout, admin.peers.request(id, &req, timeout)).await;
    match answer {
        Ok(Ok(PeerResponse::AuditHash { head_seq, hash })) => Ok((head_seq, hash)),
        Ok(Ok(other)) => Err(format!("unexpected answer: {other:?}")),
        Ok(Err(e)) => Err(format!("cannot ask it: {e}")),
        Err(_) => Err("timed out".into()),
    }
}
