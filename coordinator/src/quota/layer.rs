//! The axum middleware enforcing key and tenant limits on `/v1/*`: it runs after the
//! auth layer (which put the [`Principal`] in the request), asks the
//! [`QuotaBook`] for admission, answers 429 with `Retry-After` and
//! OpenAI's `x-ratelimit-*` headers when refused, and otherwise passes the
//! request on with a [`TokenMeter`] the API charges the tokens to. A
//! request counts as in flight until its response body is dropped (sent
//! in full, or the client went away).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde_json::json;

use super::book::{QuotaBook, RateStatus, Refusal, Refused, Subject};
use super::metrics::TenantMetrics;
use crate::auth::Principal;

/// The number of coordinators sharing every limit, from the replicated
/// membership.
pub type CoordinatorCount = Arc<dyn Fn() -> usize + Send + Sync>;

/// What the middleware reads.
pub struct QuotaLayerState {
    book: Arc<Mutex<QuotaBook>>,
    clock: Instant,
    coordinators: CoordinatorCount,
    metrics: TenantMetrics,
}

impl QuotaLayerState {
    /// A fresh book; `coordinators` says how many share each limit.
    pub fn new(coordinators: CoordinatorCount, metrics: TenantMetrics) -> Self {
        Self {
            book: Arc::default(),
            clock: Instant::now(),
            coordinators,
            metrics,
        }
    }
}

fn lock(book: &Mutex<QuotaBook>) -> MutexGuard<'_, QuotaBook> {
    // The book holds counters only: a panic elsewhere leaves them usable.
    book.lock().unwrap_or_else(|e| e.into_inner())
}

/// Charges the tokens a request used to its key's and tenant's
/// tokens-per-minute budgets.
#[derive(Clone)]
pub struct TokenMeter {
    book: Arc<Mutex<QuotaBook>>,
    clock: Instant,
    subjects: Arc<[Subject]>,
}

impl std::fmt::Debug for TokenMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenMeter")
            .field("subjects", &self.subjects)
            .finish()
    }
}

impl TokenMeter {
    /// The request used `tokens` tokens.
    pub fn charge(&self, tokens: u64) {
        let now = self.clock.elapsed().as_secs_f64();
        lock(&self.book).charge_tokens(&self.subjects, tokens, now);
    }
}

/// Gives the in-flight slots back when dropped.
struct Slot {
    book: Arc<Mutex<QuotaBook>>,
    subjects: Arc<[Subject]>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.book).release(&self.subjects);
    }
}

/// OpenAI's duration format for the reset headers (`1s`, `6m0s`, `20ms`).
fn duration_text(s: f64) -> String {
    if s < 1.0 {
        // Rounded up so that a client that waits this long is admitted.
        return format!("{}ms", (s * 1000.0).ceil().max(0.0) as u64);
    }
    let whole = s.ceil() as u64;
    if whole < 60 {
        format!("{whole}s")
    } else {
        format!("{}m{}s", whole / 60, whole % 60)
    }
}

fn put_headers(headers: &mut HeaderMap, st: &RateStatus) {
    for (name, fig) in [("requests", st.requests), ("tokens", st.tokens)] {
        let Some((limit, remaining, reset)) = fig else {
            continue;
        };
        for (h, v) in [
            (format!("x-ratelimit-limit-{name}"), limit.to_string()),
            (
                format!("x-ratelimit-remaining-{name}"),
                remaining.to_string(),
            ),
            (format!("x-ratelimit-reset-{name}"), duration_text(reset)),
        ] {
            if let (Ok(h), Ok(v)) = (HeaderName::try_from(h), HeaderValue::try_from(v)) {
                headers.insert(h, v);
            }
        }
    }
}

/// Marks a response as this layer's 429 (a response extension), for the
/// audit trail.
#[derive(Debug, Clone, Copy)]
pub struct QuotaRefused;

fn refuse(refusal: &Refusal, level: &str, st: &RateStatus) -> Response {
    let message = match refusal {
        Refusal::Requests { .. } => "rate limit reached for requests per minute",
        Refusal::Tokens { .. } => "rate limit reached for tokens per minute",
        Refusal::Concurrency => "too many requests in flight",
    };
    let body = json!({"error": {
        "message": format!("{message} of this {level}; retry in {} s", refusal.retry_after_s()),
        "type": refusal.kind(),
        "param": null,
        "code": "rate_limit_exceeded",
    }});
    let mut resp = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
    put_headers(resp.headers_mut(), st);
    resp.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        HeaderValue::from(refusal.retry_after_s()),
    );
    resp.extensions_mut().insert(QuotaRefused);
    resp
}

/// Whether a path's requests count against the key and tenant limits: the
/// OpenAI API (`/v1/*`) and the v2 `infer` route of ONNX models.
fn metered(path: &str) -> bool {
    path.starts_with("/v1/") || (path.starts_with("/v2/models/") && path.ends_with("/infer"))
}

/// Enforces the limits of the request's key and tenant on the metered
/// routes (see [`metered`]).
pub async fn enforce(
    State(q): State<Arc<QuotaLayerState>>,
    mut req: Request,
    next: Next,
) -> Response {
    let Some(p) = req.extensions().get::<Principal>().cloned() else {
        return next.run(req).await;
    };
    let tenant_limits = p.tenant_settings.limits;
    if !(p.limits.any() || tenant_limits.any()) || !metered(req.uri().path()) {
        return next.run(req).await;
    }
    let now = q.clock.elapsed().as_secs_f64();
    let coordinators = (q.coordinators)();
    let limited = [
        (Subject::Key(p.key_id.clone()), p.limits),
        (Subject::Tenant(p.tenant.clone()), tenant_limits),
    ];
    let admitted = lock(&q.book).admit(&limited, coordinators, now);
    let status = match admitted {
        Ok(status) => status,
        Err(Refused {
            refusal,
            level,
            status,
        }) => {
            q.metrics.record_rate_limited(&p.tenant, refusal.kind());
            tracing::debug!(key = %p.key_id, tenant = %p.tenant, limit = refusal.kind(), level, "rate limited");
            return refuse(&refusal, level, &status);
        }
    };
    let subjects: Arc<[Subject]> = limited
        .into_iter()
        .filter(|(_, l)| l.any())
        .map(|(s, _)| s)
        .collect();
    req.extensions_mut().insert(TokenMeter {
        book: q.book.clone(),
        clock: q.clock,
        subjects: subjects.clone(),
    });
    let slot = Slot {
        book: q.book.clone(),
        subjects,
    };
    let mut resp = next.run(req).await;
    put_headers(resp.headers_mut(), &status);
    if p.limits.max_concurrent.is_none() && tenant_limits.max_concurrent.is_none() {
        // Nothing waits on the slot: give it back now, keep the body as is.
        drop(slot);
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let body = body.into_data_stream().map(move |chunk| {
        let _held = &slot;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inference_routes_are_metered_and_metadata_is_not() {
        assert!(metered("/v1/chat/completions"));
        assert!(metered("/v2/models/relu/infer"));
        assert!(!metered("/v2/models/relu"));
        assert!(!metered("/v2/health/ready"));
        assert!(!metered("/admin/v1/models"));
    }

    #[test]
    fn reset_durations_read_like_openai_s() {
        assert_eq!(duration_text(0.0201), "21ms");
        assert_eq!(duration_text(1.0), "1s");
        assert_eq!(duration_text(59.2), "1m0s");
        assert_eq!(duration_text(360.0), "6m0s");
    }

    #[test]
    fn refusals_carry_retry_after_and_the_figures() {
        let st = RateStatus {
            requests: Some((60, 0, 1.0)),
            tokens: None,
        };
        let r = refuse(&Refusal::Requests { retry_after_s: 0.4 }, "key", &st);
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        let h = r.headers();
        assert_eq!(h["retry-after"], "1");
        assert_eq!(h["x-ratelimit-limit-requests"], "60");
        assert_eq!(h["x-ratelimit-remaining-requests"], "0");
        assert!(!h.contains_key("x-ratelimit-limit-tokens"));
    }
}
