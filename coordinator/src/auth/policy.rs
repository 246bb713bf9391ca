//! Which key each route needs, decided without I/O: default deny. Only
//! `GET /health` is open; `/admin/*` needs an admin key; `/metrics` needs a
//! key unless it is configured public; everything else (`/v1/*`, `/ready`
//! and unknown paths, so that 404s do not map the API for strangers) needs
//! an inference or admin key.

use crate::state::{ApiKey, KeyLimits, KeyScope, TenantSettings, DEFAULT_TENANT};

/// The access class of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClass {
    /// No key needed.
    Public,
    /// Any valid key.
    Inference,
    /// An admin key.
    Admin,
    /// Any valid key, or none when metrics are public.
    Metrics,
}

/// The class of `path`.
pub fn classify(path: &str) -> RouteClass {
    if path == "/health" {
        RouteClass::Public
    } else if path == "/admin" || path.starts_with("/admin/") {
        RouteClass::Admin
    } else if path == "/metrics" {
        RouteClass::Metrics
    } else {
        RouteClass::Inference
    }
}

/// Who a request acts as, once its key is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The key's public id.
    pub key_id: String,
    /// The key's tenant.
    pub tenant: String,
    /// The key's scope.
    pub scope: KeyScope,
    /// The key's rate and concurrency limits.
    pub limits: KeyLimits,
    /// Its tenant's limits (shared by all the tenant's keys) and
    /// scheduling class.
    pub tenant_settings: TenantSettings,
}

impl Principal {
    /// The principal of `key`, whose tenant has `tenant_settings`.
    pub fn new(key: &ApiKey, tenant_settings: TenantSettings) -> Self {
        Self {
            key_id: key.id.clone(),
            tenant: key.tenant.clone(),
            scope: key.scope,
            limits: key.limits,
            tenant_settings,
        }
    }
}

/// Whether `who` may see and manage what belongs to `tenant` (keys, FL
/// jobs): the operator's tenant `default` (and everyone when auth is off,
/// `who` is `None`) sees every tenant's; any other tenant only its own.
pub fn sees_tenant(who: Option<&Principal>, tenant: &str) -> bool {
    who.is_none_or(|p| p.tenant == DEFAULT_TENANT || p.tenant == tenant)
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No key was presented (401).
    Missing,
    /// The key is unknown or revoked (401).
    Invalid,
    /// The key has expired (401).
    Expired,
    /// The key is valid but may not use this route (403).
    Forbidden,
}

impl Denial {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            Denial::Forbidden => 403,
            _ => 401,
        }
    }

    /// The OpenAI-style error code.
    pub fn code(&self) -> &'static str {
        match self {
            Denial::Missing => "missing_api_key",
            Denial::Invalid | Denial::Expired => "invalid_api_key",
            Denial::Forbidden => "insufficient_scope",
        }
    }

    /// What the client is told.
    pub fn message(&self) -> &'static str {
        match self {
            Denial::Missing => {
                "this route needs an API key: send `Authorization: Bearer KEY` (or `x-api-key: KEY`)"
            }
            Denial::Invalid => "the API key is not valid (unknown or revoked)",
            Denial::Expired => "the API key has expired",
            Denial::Forbidden => "this route needs an admin key",
        }
    }
}

/// Decides a request to a route of `class`. `presented` says whether a key
/// was sent; `key` is the cluster's record of it, if known. The answer is
/// the key the request acts as (`None` on open routes).
pub fn decide(
    class: RouteClass,
    presented: bool,
    key: Option<&ApiKey>,
    now_unix: u64,
    metrics_public: bool,
) -> Result<Option<&ApiKey>, Denial> {
    // Open routes ignore whatever key comes along (a stale one included).
    if class == RouteClass::Public || (class == RouteClass::Metrics && metrics_public) {
        return Ok(None);
    }
    if !presented {
        return Err(Denial::Missing);
    }
    let key = key.ok_or(Denial::Invalid)?;
    if !key.live_at(now_unix) {
        return Err(Denial::Expired);
    }
    if class == RouteClass::Admin && key.scope != KeyScope::Admin {
        return Err(Denial::Forbidden);
    }
    Ok(Some(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(scope: KeyScope, expires: Option<u64>) -> ApiKey {
        ApiKey {
            id: "k".into(),
            tenant: "t".into(),
            scope,
            created_at_unix: 0,
            expires_at_unix: expires,
            limits: KeyLimits::default(),
        }
    }

    #[test]
    fn routes_are_classified_default_deny() {
        assert_eq!(classify("/health"), RouteClass::Public);
        assert_eq!(classify("/health/x"), RouteClass::Inference);
        assert_eq!(classify("/admin/v1/cluster"), RouteClass::Admin);
        assert_eq!(classify("/administrator"), RouteClass::Inference);
        assert_eq!(classify("/metrics"), RouteClass::Metrics);
        assert_eq!(classify("/v1/chat/completions"), RouteClass::Inference);
        assert_eq!(classify("/ready"), RouteClass::Inference);
        assert_eq!(classify("/no/such/route"), RouteClass::Inference);
    }

    /// The 401/403 matrix: every class against no key, an unknown key, an
    /// expired key, an inference key and an admin key.
    #[test]
    fn the_key_matrix() {
        use RouteClass::*;
        let inf = key(KeyScope::Inference, None);
        let adm = key(KeyScope::Admin, Some(100));
        let old = key(KeyScope::Admin, Some(10));
        let now = 50;
        let d = |c, p, k: Option<&ApiKey>, public| {
            decide(c, p, k, now, public).map(|p| p.map(|p| p.scope))
        };
        assert_eq!(d(Public, true, None, false), Ok(None));
        assert_eq!(d(Public, true, Some(&old), false), Ok(None));
        for c in [Inference, Admin, Metrics] {
            assert_eq!(d(c, true, None, false), Err(Denial::Invalid), "{c:?}");
            assert_eq!(d(c, true, Some(&old), false), Err(Denial::Expired), "{c:?}");
            assert_eq!(
                d(c, true, Some(&adm), false),
                Ok(Some(KeyScope::Admin)),
                "{c:?}"
            );
        }
        assert_eq!(d(Public, false, None, false), Ok(None));
        assert_eq!(d(Metrics, false, None, true), Ok(None));
        for c in [Inference, Admin, Metrics] {
            assert_eq!(d(c, false, None, false), Err(Denial::Missing), "{c:?}");
        }
        assert_eq!(
            d(Inference, true, Some(&inf), false),
            Ok(Some(KeyScope::Inference))
        );
        assert_eq!(
            d(Metrics, true, Some(&inf), false),
            Ok(Some(KeyScope::Inference))
        );
        assert_eq!(d(Admin, true, Some(&inf), false), Err(Denial::Forbidden));
        assert_eq!(Denial::Forbidden.status(), 403);
        assert_eq!(Denial::Missing.status(), 401);
    }
}
