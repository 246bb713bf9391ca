//! Authentication and authorization of the HTTP APIs: API keys (a random
//! secret shown once; the cluster keeps only its SHA-256, see
//! [`crate::state::ApiKey`]), the route policy (which scope each route
//! needs) and the axum layer that enforces it on every request against the
//! locally applied, raft-replicated key index: no raft round trip per
//! request.
//!
//! - [`secret`]: making keys and hashing presented ones.
//! - [`policy`]: pure decisions: route class, key, time -> allow or deny.
//! - [`layer`]: the axum middleware.

pub mod layer;
pub mod policy;
pub mod secret;

pub use layer::{require_key, AuthLayerState, AuthMode, AuthRefused};
pub use policy::{sees_tenant, Denial, Principal, RouteClass};
pub use secret::{hash_key, new_key, presented_key, NewKey};
