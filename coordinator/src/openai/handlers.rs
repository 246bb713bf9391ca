//! The axum [`Router`] of the OpenAI API.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::{Json, Router};
use serde_json::json;
use tokio::time::Instant;

use super::backend::{InferenceBackend, ModelEntry};
use super::chunks::{Body, Endpoint, Shape};
use super::errors::ApiError;
use super::metrics::Metrics;
use super::request::{ChatCompletionRequest, CompletionRequest};
use super::tokenize::{DetokenizeBody, TokenizeBody};
use super::tracker::{Account, RequestTracker};
use super::validate::{self, Validated};
use super::{collect, dispatch, stream, tools};
use crate::auth::{presented_key, Principal};
use crate::quota::TokenMeter;

/// Metrics label of requests for models that are not served.
const UNKNOWN_MODEL_LABEL: &str = "unknown";

/// Limits of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiConfig {
    /// Longest a non-streaming request may take, routing included.
    pub total_timeout: Duration,
    /// Longest wait for the next event from a replica (the first one
    /// included); replicas send keep-alives while a request waits.
    pub idle_timeout: Duration,
    /// Longest wait for a replica to accept a request (and for `/ready`).
    pub route_timeout: Duration,
    /// Largest request body, in bytes (larger ones get 413).
    pub max_body_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            total_timeout: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(60),
            route_timeout: Duration::from_secs(30),
            max_body_bytes: 4 * 1024 * 1024,
        }
    }
}

/// What every handler of the API shares.
pub(crate) struct AppState<B> {
    pub(crate) backend: Arc<B>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) config: ApiConfig,
    pub(crate) created: u64,
}

/// The OpenAI API with the default [`ApiConfig`].
pub fn router<B: InferenceBackend>(backend: Arc<B>, metrics: Arc<Metrics>) -> Router {
    router_with_config(backend, metrics, ApiConfig::default())
}

/// The OpenAI API: `/v1/models`, `/v1/chat/completions`, `/v1/completions`,
/// `/health`, `/ready` and `/metrics`.
pub fn router_with_config<B: InferenceBackend>(
    backend: Arc<B>,
    metrics: Arc<Metrics>,
    config: ApiConfig,
) -> Router {
    let state = Arc::new(AppState {
        backend,
        metrics,
        config,
        created: dispatch::unix_now(),
    });
    Router::new()
        .route("/v1/models", get(models::<B>))
        .route("/v1/models/{id}", get(model::<B>))
        .route("/v1/chat/completions", post(chat_completions::<B>))
        .route("/v1/completions", post(completions::<B>))
        .route("/v1/responses", post(super::responses::create::<B>))
        .route(
            "/v1/responses/{id}",
            get(super::responses::retrieve::<B>).delete(super::responses::delete::<B>),
        )
        .route("/tokenize", post(tokenize::<B>))
        .route("/detokenize", post(detokenize::<B>))
        .route("/health", get(health))
        .route("/ready", get(ready::<B>))
        .route("/metrics", get(metrics_text::<B>))
        .fallback(no_such_route)
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .with_state(state)
}

async fn models<B: InferenceBackend>(State(s): State<Arc<AppState<B>>>) -> Response {
    let data: Vec<_> = s
        .backend
        .models()
        .iter()
        .map(|m| model_object(m, s.created))
        .collect();
    Json(json!({ "object": "list", "data": data })).into_response()
}

/// `GET /v1/models/{id}`: one model, or 404.
async fn model<B: InferenceBackend>(
    State(s): State<Arc<AppState<B>>>,
    Path(id): Path<String>,
) -> Response {
    match s.backend.models().iter().find(|m| m.id == id) {
        Some(m) => Json(model_object(m, s.created)).into_response(),
        None => ApiError::model_not_found(&id).into_response(),
    }
}

/// A model object: OpenAI's fields, vLLM's `max_model_len`, and what the
/// model's file says about it (architecture, quantization, parameters)
/// and what it can do; the file's facts are `null` until a node serving
/// the model has reported them.
fn model_object(m: &ModelEntry, created: u64) -> serde_json::Value {
    let card = m.card.as_ref();
    json!({
        "id": m.id,
        "object": "model",
        "created": created,
        "owned_by": "inferno",
        "max_model_len": card.map(|c| c.context_length),
        "ready_replicas": m.ready_replicas,
        "architecture": card.map(|c| c.architecture.clone()),
        "quantization": card.map(|c| c.quantization.clone()),
        "parameters": card.map(|c| c.parameters),
        "size_bytes": card.map(|c| c.size_bytes),
        "capabilities": card.map(|c| json!({
            "completions": true,
            "chat": c.chat_template,
            "tools": c.chat_template && c.tool_format.is_some(),
            "json_schema": true,
            "embeddings": false,
        })),
    })
}

async fn chat_completions<B: InferenceBackend>(
    State(s): State<Arc<AppState<B>>>,
    principal: Option<Extension<Principal>>,
    meter: Option<Extension<TokenMeter>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let parsed = read_body(body, s.config.max_body_bytes)
        .and_then(|b| validate::parse_body::<ChatCompletionRequest>(&b));
    let model = parsed.as_ref().ok().and_then(|r| r.model.clone());
    let validated = parsed
        .and_then(validate::chat)
        .map(|v| keyed(v, principal.as_ref().map(|p| &p.0), &headers));
    serve(
        &s,
        model,
        validated,
        Endpoint::Chat,
        account(principal, meter),
    )
    .await
}

/// `POST /tokenize` ([`super::tokenize`]).
async fn tokenize<B: InferenceBackend>(
    State(s): State<Arc<AppState<B>>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    json_call(&s, body, |b: TokenizeBody| {
        super::tokenize::tokenize(&*s.backend, b)
    })
    .await
}

/// `POST /detokenize` ([`super::tokenize`]).
async fn detokenize<B: InferenceBackend>(
    State(s): State<Arc<AppState<B>>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    json_call(&s, body, |b: DetokenizeBody| {
        super::tokenize::detokenize(&*s.backend, b)
    })
    .await
}

/// Parses a JSON body into `T` and answers `work(body)` (bounded by the
/// route timeout) as JSON, or the error.
async fn json_call<B, T, F, Fut>(
    s: &AppState<B>,
    body: Result<Bytes, BytesRejection>,
    work: F,
) -> Response
where
    T: serde::de::DeserializeOwned,
    F: FnOnce(T) -> Fut,
    Fut: std::future::Future<Output = Result<serde_json::Value, ApiError>>,
{
    let answer = match read_body(body, s.config.max_body_bytes)
        .and_then(|b| validate::parse_body::<T>(&b))
    {
        Ok(body) => bounded(s, work(body)).await,
        Err(e) => Err(e),
    };
    json_or_error(answer)
}

/// `work`, given up after the route timeout.
async fn bounded<B, T>(
    s: &AppState<B>,
    work: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    tokio::time::timeout(s.config.route_timeout, work)
        .await
        .map_err(|_| ApiError::timeout("No replica answered in time."))?
}

fn json_or_error(answer: Result<serde_json::Value, ApiError>) -> Response {
    match answer {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn completions<B: InferenceBackend>(
    State(s): State<Arc<AppState<B>>>,
    principal: Option<Extension<Principal>>,
    meter: Option<Extension<TokenMeter>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let parsed = read_body(body, s.config.max_body_bytes)
        .and_then(|b| validate::parse_body::<CompletionRequest>(&b));
    let model = parsed.as_ref().ok().and_then(|r| r.model.clone());
    let validated = parsed
        .and_then(validate::completion)
        .and_then(|v| special_tokens_allowed(v, principal.as_ref().map(|p| &p.0)))
        .map(|v| keyed(v, principal.as_ref().map(|p| &p.0), &headers));
    serve(
        &s,
        model,
        validated,
        Endpoint::Text,
        account(principal, meter),
    )
    .await
}

/// Who the request is accounted to.
pub(crate) fn account(
    principal: Option<Extension<Principal>>,
    meter: Option<Extension<TokenMeter>>,
) -> Account {
    Account {
        tenant: principal.map(|p| p.0.tenant),
        meter: meter.map(|m| m.0),
    }
}

/// `allow_special_tokens` lets a prompt hold control tokens, so only admin
/// keys may set it (anyone when auth is off).
fn special_tokens_allowed(
    v: Validated,
    principal: Option<&Principal>,
) -> Result<Validated, ApiError> {
    let admin = principal.is_none_or(|p| p.scope == crate::state::KeyScope::Admin);
    if v.request.allow_special_tokens && !admin {
        return Err(ApiError::forbidden(
            "'allow_special_tokens' needs an admin key: it lets a prompt hold control tokens.",
            "allow_special_tokens",
        ));
    }
    Ok(v)
}

/// Salts the request's prefix cache with its tenant (the key's, checked by
/// the auth layer), or with the key it came with when auth is off, so that
/// tenants never share cache blocks; and gives it its tenant's scheduling
/// class (interactive when auth is off).
pub(crate) fn keyed(
    mut v: Validated,
    principal: Option<&Principal>,
    headers: &HeaderMap,
) -> Validated {
    let owner = match principal {
        Some(p) => format!("tenant:{}", p.tenant),
        None => presented_key(headers).map_or_else(String::new, |k| format!("key:{k}")),
    };
    v.request.cache_salt = validate::salt_with_owner(&owner, &v.request.cache_salt);
    v.request.priority = principal
        .map(|p| p.tenant_settings.priority)
        .unwrap_or_default();
    v
}

pub(crate) fn read_body(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::payload_too_large(limit)
        } else {
            ApiError::invalid(rejection.body_text(), None)
        }
    })
}

/// A validated request ready to be routed, with how to answer it.
pub(crate) struct Prepared {
    /// The request.
    pub(crate) v: Validated,
    /// The fixed parts of its answer.
    pub(crate) shape: Shape,
    /// Its metrics and accounting.
    pub(crate) tracker: RequestTracker,
    arrived: Instant,
}

/// Checks a parsed request against the served models (tools need a model
/// that has a tool format) and starts tracking it. On failure the error
/// is counted and returned.
pub(crate) fn prepare<B: InferenceBackend>(
    s: &AppState<B>,
    model: Option<String>,
    parsed: Result<Validated, ApiError>,
    endpoint: Endpoint,
    account: Account,
) -> Result<Prepared, ApiError> {
    let arrived = Instant::now();
    // Only served models become label values, so clients cannot grow the series.
    let label = match model {
        Some(m) if s.backend.models().iter().any(|e| e.id == m) => m,
        _ => UNKNOWN_MODEL_LABEL.to_string(),
    };
    let mut tracker = RequestTracker::new(s.metrics.clone(), label, account);
    let prepared = parsed.and_then(|mut v| {
        let models = s.backend.models();
        let entry = models.iter().find(|e| e.id == v.request.model);
        if v.tools.is_some() && entry.is_none() {
            return Err(ApiError::model_not_found(&v.request.model));
        }
        let format = tools::apply(&mut v, entry.and_then(|e| e.card.as_ref()))?;
        Ok((v, format))
    });
    let (v, tool_format) = match prepared {
        Ok(prepared) => prepared,
        Err(e) => {
            tracker.failed(&e);
            return Err(e);
        }
    };
    let shape = Shape::new(endpoint, v.request.model.clone(), v.include_usage)
        .with_tools(tool_format)
        .with_logprobs(v.request.logprobs.is_some());
    Ok(Prepared {
        v,
        shape,
        tracker,
        arrived,
    })
}

impl Prepared {
    /// When to give up: on the whole answer, on routing, on the first token.
    pub(crate) fn deadlines<B>(&self, s: &AppState<B>) -> (Instant, Instant, dispatch::FirstWait) {
        let total_deadline = self.arrived + s.config.total_timeout;
        let route_deadline = total_deadline.min(self.arrived + s.config.route_timeout);
        // Streams wait for their first token as long as the replica keeps
        // saying it holds the request; whole answers are bounded in total too.
        let first_wait = dispatch::FirstWait {
            idle: s.config.idle_timeout,
            deadline: (!self.v.stream).then_some(total_deadline),
        };
        (total_deadline, route_deadline, first_wait)
    }
}

/// Routes a validated request for `model` and answers it, streaming or whole.
async fn serve<B: InferenceBackend>(
    s: &AppState<B>,
    model: Option<String>,
    parsed: Result<Validated, ApiError>,
    endpoint: Endpoint,
    account: Account,
) -> Response {
    let mut p = match prepare(s, model, parsed, endpoint, account) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    if p.v.stream {
        let (_, route_deadline, first_wait) = p.deadlines(s);
        let n = p.v.n;
        return match dispatch::start_choices(
            &*s.backend,
            p.v.request,
            n,
            route_deadline,
            first_wait,
        )
        .await
        {
            Ok(started) => stream::respond(started, p.shape, p.tracker, s.config.idle_timeout),
            Err(e) => {
                p.tracker.failed(&e);
                e.into_response()
            }
        };
    }
    match whole(s, &mut p).await {
        Ok(body) => (StatusCode::OK, Json(body)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The whole answer of a prepared non-streaming request. Nothing has
/// reached the client yet, so a replica that fails mid-way (node killed,
/// model restarting) gets the whole request retried once on another
/// replica. A failure is counted before it is returned.
pub(crate) async fn whole<B: InferenceBackend>(
    s: &AppState<B>,
    p: &mut Prepared,
) -> Result<Body, ApiError> {
    let (total_deadline, route_deadline, first_wait) = p.deadlines(s);
    let mut result = Err(ApiError::unavailable("not attempted"));
    for attempt in 0..NON_STREAMING_ATTEMPTS {
        let route_deadline = if attempt == 0 {
            route_deadline
        } else {
            total_deadline.min(Instant::now() + s.config.route_timeout)
        };
        result = match dispatch::start_choices(
            &*s.backend,
            p.v.request.clone(),
            p.v.n,
            route_deadline,
            first_wait,
        )
        .await
        {
            Ok(started) => {
                collect::respond(started, p.shape.clone(), &mut p.tracker, total_deadline).await
            }
            Err(e) => Err(e),
        };
        match &result {
            Err(e) if e.status() == StatusCode::SERVICE_UNAVAILABLE => {
                tracing::warn!("retrying a non-streaming request: {}", e.message());
            }
            _ => break,
        }
    }
    if let Err(e) = &result {
        p.tracker.failed(e);
    }
    result
}

/// Tries of a non-streaming request whose replica fails (503).
const NON_STREAMING_ATTEMPTS: usize = 2;

/// `GET /health`: the process is up (no key needed).
pub async fn health() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

async fn ready<B: InferenceBackend>(State(s): State<Arc<AppState<B>>>) -> Response {
    match tokio::time::timeout(s.config.route_timeout, s.backend.ready()).await {
        Ok(Ok(())) => Json(json!({ "status": "ready" })).into_response(),
        Ok(Err(e)) => ApiError::unavailable(format!("Not ready: {e}")).into_response(),
        Err(_) => ApiError::unavailable("Not ready: no replica answered in time.").into_response(),
    }
}

async fn metrics_text<B: InferenceBackend>(State(s): State<Arc<AppState<B>>>) -> Response {
    match s.metrics.encode() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Any unknown path: an OpenAI-style 404.
pub async fn no_such_route(uri: Uri) -> Response {
    ApiError::no_such_route(uri.path()).into_response()
}
