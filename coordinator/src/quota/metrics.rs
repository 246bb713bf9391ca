//! Per-tenant metrics: requests, tokens and rate-limit refusals, labelled
//! by tenant (never by key). Tenants are made by admins and bounded by the
//! number of keys, so the label cannot grow without bound.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantStatus {
    tenant: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantKind {
    tenant: String,
    kind: String,
}

/// The per-tenant counters; clones share them.
#[derive(Debug, Clone, Default)]
pub struct TenantMetrics {
    requests: Family<TenantStatus, Counter>,
    tokens: Family<TenantKind, Counter>,
    rate_limited: Family<TenantKind, Counter>,
}

impl TenantMetrics {
    /// Registers the counters in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "inferno_tenant_requests",
            "OpenAI API requests by tenant and HTTP status",
            self.requests.clone(),
        );
        registry.register(
            "inferno_tenant_tokens",
            "Tokens used by tenant (kind: prompt or completion)",
            self.tokens.clone(),
        );
        registry.register(
            "inferno_tenant_rate_limited",
            "Requests refused with 429 by tenant and limit (requests, tokens, concurrency)",
            self.rate_limited.clone(),
        );
    }

    /// A request of `tenant` ended with `status`.
    pub fn record_request(&self, tenant: &str, status: &str) {
        self.requests
            .get_or_create(&TenantStatus {
                tenant: tenant.to_string(),
                status: status.to_string(),
            })
            .inc();
    }

    /// `tenant` used `prompt` and `completion` tokens.
    pub fn add_tokens(&self, tenant: &str, prompt: u64, completion: u64) {
        for (kind, n) in [("prompt", prompt), ("completion", completion)] {
            self.tokens
                .get_or_create(&TenantKind {
                    tenant: tenant.to_string(),
                    kind: kind.to_string(),
                })
                .inc_by(n);
        }
    }

    /// A request of `tenant` was refused by the `limit` limit.
    pub fn record_rate_limited(&self, tenant: &str, limit: &str) {
        self.rate_limited
            .get_or_create(&TenantKind {
                tenant: tenant.to_string(),
                kind: limit.to_string(),
            })
            .inc();
        self.record_request(tenant, "429");
    }
}
