//! The tenant routes of the admin API: `GET /admin/v1/tenants` lists
//! tenants with their limits and scheduling class, `PUT
//! /admin/v1/tenants/{name}` sets them (creating the tenant if new).
//!
//! A tenant's limits are shared by all of its keys, on top of each key's
//! own, so only the operator (an admin key of tenant `default`) sets them:
//! a tenant's own admin key could otherwise lift its tenant's quota. Other
//! tenants' admin keys see their own tenant only.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Extension;
use axum::Json;
use protocol::Priority;
use serde::Deserialize;
use serde_json::{json, Value};

use super::admin::{parse_body, read, write, Admin, ApiError};
use crate::auth::{sees_tenant, Principal};
use crate::state::{TenantSettings, DEFAULT_TENANT};

/// Body of `PUT /admin/v1/tenants/{name}`: the whole setting, each limit
/// absent for none.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetTenantBody {
    /// Requests per minute.
    #[serde(default)]
    rpm: Option<u32>,
    /// Tokens (prompt + completion) per minute.
    #[serde(default)]
    tpm: Option<u32>,
    /// Requests in flight at once.
    #[serde(default)]
    max_concurrent: Option<u32>,
    /// `interactive` (the default) or `batch`.
    #[serde(default)]
    priority: Priority,
}

impl SetTenantBody {
    fn settings(&self) -> Result<TenantSettings, ApiError> {
        Ok(TenantSettings {
            limits: super::keys::limits_from(self.rpm, self.tpm, self.max_concurrent)?,
            priority: self.priority,
        })
    }
}

/// The listing of one tenant.
fn tenant_json(name: &str, t: &TenantSettings, keys: usize) -> Value {
    json!({
        "name": name,
        "rpm": t.limits.rpm,
        "tpm": t.limits.tpm,
        "max_concurrent": t.limits.max_concurrent,
        "priority": t.priority,
        "keys": keys,
    })
}

/// Sets a tenant's limits and class (the operator only).
pub async fn set_tenant(
    State(admin): State<Arc<Admin>>,
    who: Option<Extension<Principal>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    if who.as_deref().is_some_and(|p| p.tenant != DEFAULT_TENANT) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "only an admin key of tenant \"default\" may set tenant limits",
        ));
    }
    let settings = parse_body::<SetTenantBody>(&body)?.settings()?;
    let _applied = write(
        &admin,
        crate::state::Op::SetTenant {
            name: name.clone(),
            settings,
        },
    )
    .await?;
    Ok(Json(tenant_json(&name, &settings, 0)))
}

/// Lists the tenants the key may see.
pub async fn list_tenants(
    State(admin): State<Arc<Admin>>,
    who: Option<Extension<Principal>>,
) -> Result<Json<Value>, ApiError> {
    let v = read(&admin).await?;
    let tenants: Vec<Value> = v
        .state
        .tenants()
        .iter()
        .filter(|(name, _)| sees_tenant(who.as_deref(), name))
        .map(|(name, t)| tenant_json(name, t, v.state.keys_of(name).count()))
        .collect();
    Ok(Json(json!({ "tenants": tenants })))
}
