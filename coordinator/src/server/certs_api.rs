//! Certificate revocation in the admin API (operator keys only, tenant
//! `default`):
//!
//! - `POST /admin/v1/certs/revoke {"fingerprint", "name"}`: adds the
//!   certificate (lower-case hex SHA-256 of its DER, as `inferno certs
//!   revoke` computes it) to the replicated deny list. Every coordinator
//!   closes the connections presenting it as soon as it applies the entry
//!   and refuses new ones; a node of that name is marked down, so its
//!   replicas are placed elsewhere.
//! - `GET /admin/v1/certs/revoked`: the deny list.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::admin::{parse_body, write, Admin, ApiError};
use crate::auth::Principal;
use crate::openai::unix_now;
use crate::state::{Op, DEFAULT_TENANT};

/// Body of `POST /admin/v1/certs/revoke`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    fingerprint: String,
    name: String,
}

fn operator_only(who: Option<&Principal>) -> Result<(), ApiError> {
    if who.is_some_and(|p| p.tenant != DEFAULT_TENANT) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "certificates are managed with an admin key of tenant default",
        ));
    }
    Ok(())
}

/// `POST /admin/v1/certs/revoke`.
pub async fn revoke(
    State(admin): State<Arc<Admin>>,
    who: Option<Extension<Principal>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    operator_only(who.as_ref().map(|Extension(p)| p))?;
    let b: RevokeBody = parse_body(&body)?;
    let op = Op::RevokeCert {
        fingerprint: b.fingerprint.to_ascii_lowercase(),
        name: b.name,
        revoked_at_unix: unix_now(),
    };
    write(&admin, op).await
}

/// `GET /admin/v1/certs/revoked`.
pub async fn list(
    State(admin): State<Arc<Admin>>,
    who: Option<Extension<Principal>>,
) -> Result<Json<Value>, ApiError> {
    operator_only(who.as_ref().map(|Extension(p)| p))?;
    let view = admin.view.borrow().clone();
    let revoked: Vec<Value> = view
        .state
        .revoked_certs()
        .iter()
        .map(|(fp, r)| json!({"fingerprint": fp, "name": r.name, "revoked_at": r.revoked_at_unix}))
        .collect();
    Ok(Json(json!({"revoked": revoked})))
}
