//! The axum middleware that enforces [`super::policy`] on every request:
//! it hashes the presented key, looks it up in the locally applied cluster
//! state (replicated by raft, so a key created or revoked on any
//! coordinator takes effect here as soon as the entry is applied), and
//! either refuses the request with an OpenAI-style 401/403 or passes it on
//! with the [`Principal`] as a request extension.
//!
//! The lookup is by SHA-256 of the presented secret: how long it takes
//! depends on the hash, not on how much of a real secret a guess shares.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;

use super::policy::{classify, decide, Denial, Principal};
use super::secret::{hash_key, presented_key};
use crate::openai::unix_now;
use crate::server::raft_loop::LocalView;

/// Whether API keys are checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Every route but `/health` needs a key (the default).
    #[default]
    On,
    /// No checks at all: local experiments only (a warning is logged at
    /// every start).
    Off,
}

/// What the middleware reads.
#[derive(Debug, Clone)]
pub struct AuthLayerState {
    /// On or off.
    pub mode: AuthMode,
    /// Serve `/metrics` without a key.
    pub metrics_public: bool,
    /// The locally applied cluster state (its API keys).
    pub view: watch::Receiver<LocalView>,
}

/// Marks a response as this layer's 401 or 403 (a response extension),
/// for the audit trail. A refused request whose key is known (403) also
/// carries its [`Principal`], as an admitted one's response does.
#[derive(Debug, Clone, Copy)]
pub struct AuthRefused;

fn refuse(d: &Denial) -> Response {
    let status = StatusCode::from_u16(d.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    let kind = if d.status() == 403 {
        "permission_error"
    } else {
        "authentication_error"
    };
    let body =
        json!({"error": {"message": d.message(), "type": kind, "param": null, "code": d.code()}});
    let mut resp = (status, Json(body)).into_response();
    if d.status() == 401 {
        resp.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Bearer"),
        );
    }
    resp.extensions_mut().insert(AuthRefused);
    resp
}

/// Checks the request's key against the route's class.
pub async fn require_key(
    State(auth): State<Arc<AuthLayerState>>,
    mut req: Request,
    next: Next,
) -> Response {
    if auth.mode == AuthMode::Off {
        return next.run(req).await;
    }
    let class = classify(req.uri().path());
    let presented = presented_key(req.headers()).map(hash_key);
    let (decision, known) = {
        let view = auth.view.borrow();
        let key = presented.as_deref().and_then(|h| view.state.api_key(h));
        let known = key.map(|k| {
            let tenant = view.state.tenants().get(&k.tenant).copied();
            Principal::new(k, tenant.unwrap_or_default())
        });
        let decision = decide(
            class,
            presented.is_some(),
            key,
            unix_now(),
            auth.metrics_public,
        )
        .map(|acting| acting.and(known.clone()));
        (decision, known)
    };
    match decision {
        Ok(principal) => {
            if let Some(p) = &principal {
                req.extensions_mut().insert::<Principal>(p.clone());
            }
            let mut resp = next.run(req).await;
            if let Some(p) = principal {
                resp.extensions_mut().insert(p);
            }
            resp
        }
        Err(d) => {
            tracing::debug!(path = %req.uri().path(), ?d, "request refused");
            let mut resp = refuse(&d);
            if let Some(p) = known {
                resp.extensions_mut().insert(p);
            }
            resp
        }
    }
}
