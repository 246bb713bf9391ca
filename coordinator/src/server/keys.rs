//! The API-key routes of the admin API: `POST /admin/v1/keys` makes a key
//! (the secret is in this answer only), `GET /admin/v1/keys` lists them
//! (never a secret, nor its hash), `DELETE /admin/v1/keys/{id}` revokes
//! one. Every coordinator refuses a revoked key as soon as it applies the
//! revocation.
//!
//! Tenants see only their own keys: an admin key of tenant `default` (the
//! cluster operator's, made at bootstrap) manages every tenant's keys; an
//! admin key of any other tenant lists, makes and revokes keys of its own
//! tenant only.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Extension;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::admin::{commit, parse_body, read, reply_json, write, Admin, ApiError};
use super::wire::WriteReply;
use crate::auth::{new_key, sees_tenant, Principal};
use crate::openai::unix_now;
use crate::state::{ApiKey, KeyLimits, KeyScope, Op};

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
    /// Requests per minute; absent: unlimited.
    #[serde(default)]
    rpm: Option<u32>,
    /// Tokens (prompt + completion) per minute; absent: unlimited.
    #[serde(default)]
    tpm: Option<u32>,
    /// Requests in flight at once; absent: unlimited.
    #[serde(default)]
    max_concurrent: Option<u32>,
}

impl CreateKeyBody {
    fn limits(&self) -> Result<KeyLimits, ApiError> {
        limits_from(self.rpm, self.tpm, self.max_concurrent)
    }
}

/// Limits as a request body gives them (keys' and tenants'): each absent
/// (no limit) or at least 1.
pub(super) fn limits_from(
    rpm: Option<u32>,
    tpm: Option<u32>,
    max_concurrent: Option<u32>,
) -> Result<KeyLimits, ApiError> {
    for (name, v) in [
        ("rpm", rpm),
        ("tpm", tpm),
        ("max_concurrent", max_concurrent),
    ] {
        if v == Some(0) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("{name} must be at least 1 (leave it out for no limit)"),
            ));
        }
    }
    Ok(KeyLimits {
        rpm,
        tpm,
        max_concurrent,
    })
}

fn not_yours(tenant: &str) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        format!("this admin key may not manage keys of tenant {tenant:?}"),
    )
}

/// The listing of a key: everything but the secret and its hash.
pub fn key_json(k: &ApiKey) -> Value {
    json!({
        "id": k.id,
        "tenant": k.tenant,
        "scope": k.scope,
        "created_at": k.created_at_unix,
        "expires_at": k.expires_at_unix,
        "rpm": k.limits.rpm,
        "tpm": k.limits.tpm,
        "max_concurrent": k.limits.max_concurrent,
    })
}

/// Makes a key.
pub async fn create_key(
    State(admin): State<Arc<Admin>>,
    who: Option<Extension<Principal>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let b: CreateKeyBody = parse_body(&body)?;
    if !sees_tenant(who.as_deref(), &b.tenant) {
        return Err(not_yours(&b.tenant));
    }
    let limits = b.limits()?;
    if let Some(s) = b.expires_in_s {
        if s == 0 || s > MAX_EXPIRES_IN_S {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("expires_in_s must be in [1, {MAX_EXPIRES_IN_S}]"),
            ));
        }
    }
    let known = read(&admin).await?.state.tenants().contains_key(&b.tenant);
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
            limits,
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
        "rpm": limits.rpm,
        "tpm": limits.tpm,
        "max_concurrent": limits.max_concurrent,
    })))
}

/// Lists the keys.
pub async fn list_keys(
    State(admin): State<Arc<Admin>>,
    who: Option<Extension<Principal>>,
) -> Result<Json<Value>, ApiError> {
    let v = read(&admin).await?;
    let keys: Vec<Value> = v
        .state
        .api_keys()
        .values()
        .filter(|k| sees_tenant(who.as_deref(), &k.tenant))
        .map(key_json)
        .collect();
    Ok(Json(json!({ "keys": keys })))
}

/// Revokes a key by id.
pub async fn revoke_key(
    State(admin): State<Arc<Admin>>,
    who: Option<Extension<Principal>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let v = read(&admin).await?;
    // Another tenant's key is as unknown as a missing one.
    let (hash, key) = v
        .state
        .api_key_by_id(&id)
        .filter(|(_, k)| sees_tenant(who.as_deref(), &k.tenant))
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
