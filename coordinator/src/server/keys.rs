//! The API-key routes of the admin API: `POST /admin/v1/keys` makes a key
//! (the secret is in this answer only), `GET /admin/v1/keys` lists them
//! (never a secret, nor its hash), `DELETE /admin/v1/keys/{id}` revokes
//! one. Every coordinator refuses a revoked key as soon as it applies the
//! revocation.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::admin::{commit, parse_body, read, reply_json, write, Admin, ApiError};
use super::wire::WriteReply;
use crate::auth::new_key;
use crate::openai::unix_now;
use crate::state::{ApiKey, KeyScope, Op};

/// Longest key lifetime accepted, in seconds (ten years).
const MAX_EXPIRES_IN_S: u64 = 10 * 365 * 86_400;

/// Body of `POST /admin/v1/keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKeyBody {
    /// The tenant (created if new).
    tenant: String,
    /// `inference` or `admin`.
    scope: KeyScope,
    /// Lifetime in seconds; absent: no expiry.
    #[serde(default)]
    expires_in_s: Option<u64>,
}

/// The listing of a key: everything but the secret and its hash.
pub fn key_json(k: &ApiKey) -> Value {
    json!({
        "id": k.id,
        "tenant": k.tenant,
        "scope": k.scope,
        "created_at": k.created_at_unix,
        "expires_at": k.expires_at_unix,
    })
}

/// Makes a key.
pub async fn create_key(
    State(admin): State<Arc<Admin>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: CreateKeyBody = parse_body(&body)?;
    if let Some(s) = b.expires_in_s {
        if s == 0 || s > MAX_EXPIRES_IN_S {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("expires_in_s must be in [1, {MAX_EXPIRES_IN_S}]"),
            ));
        }
    }
    let known = read(&admin).await?.state.tenants().contains(&b.tenant);
    if !known {
        let op = Op::CreateTenant {
            name: b.tenant.clone(),
        };
        match commit(&admin, op).await {
            WriteReply::Applied(_) => {}
            // Created meanwhile by another call: fine.
            WriteReply::Rejected { status: 409, .. } => {}
            other => {
                let _applied = reply_json(other)?;
            }
        }
    }
    let key = new_key();
    let now = unix_now();
    let expires_at_unix = b.expires_in_s.map(|s| now.saturating_add(s));
    let _applied = write(
        &admin,
        Op::AddApiKey {
            tenant: b.tenant.clone(),
            key_hash: key.hash.clone(),
            id: key.id.clone(),
            scope: b.scope,
            created_at_unix: now,
            expires_at_unix,
        },
    )
    .await?;
    Ok(Json(json!({
        "id": key.id,
        "key": key.secret,
        "tenant": b.tenant,
        "scope": b.scope,
        "created_at": now,
        "expires_at": expires_at_unix,
    })))
}

/// Lists the keys.
pub async fn list_keys(State(admin): State<Arc<Admin>>) -> Result<Json<Value>, ApiError> {
    let v = read(&admin).await?;
    let keys: Vec<Value> = v.state.api_keys().values().map(key_json).collect();
    Ok(Json(json!({ "keys": keys })))
}

/// Revokes a key by id.
pub async fn revoke_key(
    State(admin): State<Arc<Admin>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let v = read(&admin).await?;
    let (hash, key) = v
        .state
        .api_key_by_id(&id)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no API key {id:?}")))?;
    let _applied = write(
        &admin,
        Op::RevokeApiKey {
            tenant: key.tenant.clone(),
            key_hash: hash.clone(),
        },
    )
    .await?;
    Ok(Json(json!({"id": id, "revoked": true})))
}
