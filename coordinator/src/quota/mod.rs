//! Rate and concurrency limits of API keys and tenants, and per-tenant
//! metrics.
//!
//! - [`bucket`]: a token bucket on an explicit clock.
//! - [`book`]: per-key and per-tenant usage and the admission decision
//!   (pure), a request charged to both, with each
//!   coordinator enforcing its share of a cluster-wide limit.
//! - [`layer`]: the axum middleware: 429 with `Retry-After` and OpenAI's
//!   `x-ratelimit-*` headers, the in-flight slot held until the response
//!   body ends, and the [`TokenMeter`] the API charges tokens to.
//! - [`metrics`]: requests, tokens and refusals by tenant.

pub mod book;
pub mod bucket;
pub mod layer;
pub mod metrics;

pub use book::{QuotaBook, RateStatus, Refusal, Refused, Subject};
pub use layer::{enforce, QuotaLayerState, QuotaRefused, TokenMeter};
pub use metrics::TenantMetrics;
