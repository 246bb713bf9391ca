//! The v2 routes: `GET /v2`, `GET /v2/health/live`, `GET /v2/health/ready`,
//! `GET /v2/models/{name}`, `GET /v2/models/{name}/ready` and
//! `POST /v2/models/{name}/infer`. Errors are the protocol's
//! `{"error": "..."}` objects.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use protocol::TensorInferRequest;
use serde_json::json;

use super::tensors::{self, BadRequest};
use super::{OnnxModelEntry, TensorBackend};
use crate::openai::{Metrics, RouteError};

/// The header giving the JSON part's length when binary tensors follow.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// Most input bytes one request carries to a node: the node frame, less
/// room for names and shapes.
const MAX_INPUT_BYTES: usize = protocol::MAX_NODE_FRAME_BYTES - (64 << 10);

fn tensor_bytes(t: &protocol::NamedTensor) -> usize {
    use protocol::TensorData;
    // The frame's encoding: floats fixed, integers as varints (at most
    // 5 and 10 bytes).
    let width = match &t.data {
        TensorData::Fp32(_) => 4,
        TensorData::Int32(_) => 5,
        TensorData::Fp64(_) => 8,
        TensorData::Int64(_) => 10,
        TensorData::Uint8(_) | TensorData::Bool(_) => 1,
    };
    t.data.len().saturating_mul(width)
}

/// What the routes share: the cluster and the API's metrics.
struct V2State<B> {
    backend: Arc<B>,
    metrics: Arc<Metrics>,
}

/// The v2 routes over `backend`; `infer` calls count in `metrics` like the
/// OpenAI routes' (`inferno_requests_total{model,status}`,
/// `inferno_requests_in_flight{model}`).
pub fn router<B: TensorBackend>(backend: Arc<B>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(live))
        .route("/v2/models/{name}", get(model_metadata::<B>))
        .route("/v2/models/{name}/ready", get(model_ready::<B>))
        .route("/v2/models/{name}/infer", post(infer::<B>))
        .with_state(Arc::new(V2State { backend, metrics }))
}

/// Counts one request in flight until dropped (also when the client
/// leaves mid-request).
struct InFlight<'a> {
    metrics: &'a Metrics,
    model: &'a str,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.metrics.add_in_flight(self.model, -1);
    }
}

/// An error in the protocol's shape.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn route_error(e: RouteError) -> Response {
    let status = match &e {
        RouteError::UnknownModel(_) => StatusCode::NOT_FOUND,
        RouteError::Invalid(_) => StatusCode::BAD_REQUEST,
        RouteError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
        RouteError::NoReplica(_) | RouteError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        RouteError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
    };
    let mut r = error(status, e.to_string());
    if let RouteError::Overloaded { retry_after_s } = e {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
    }
    r
}

/// The registered ONNX model `name`.
fn find<B: TensorBackend>(backend: &B, name: &str) -> Option<OnnxModelEntry> {
    backend.onnx_model(name)
}

/// The 404 of a name that is no registered ONNX model.
fn not_found(name: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no ONNX model named '{name}' is registered"),
    )
}

async fn server_metadata() -> Response {
    Json(json!({
        "name": "inferno",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    }))
    .into_response()
}

/// The coordinator answers: it is live and ready to route.
async fn live() -> Response {
    StatusCode::OK.into_response()
}

async fn model_metadata<B: TensorBackend>(
    State(st): State<Arc<V2State<B>>>,
    Path(name): Path<String>,
) -> Response {
    match find(st.backend.as_ref(), &name) {
        Some(OnnxModelEntry {
            signature: Some(sig),
            ..
        }) => Json(tensors::metadata(&name, &sig)).into_response(),
        Some(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no node serving '{name}' has reported its inputs and outputs yet"),
        ),
        None => not_found(&name),
    }
}

async fn model_ready<B: TensorBackend>(
    State(st): State<Arc<V2State<B>>>,
    Path(name): Path<String>,
) -> Response {
    match find(st.backend.as_ref(), &name) {
        Some(m) if m.ready_replicas > 0 => StatusCode::OK.into_response(),
        Some(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no replica of '{name}' is ready"),
        ),
        None => not_found(&name),
    }
}

async fn infer<B: TensorBackend>(
    State(st): State<Arc<V2State<B>>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(entry) = find(st.backend.as_ref(), &name) else {
        return not_found(&name);
    };
    st.metrics.add_in_flight(&name, 1);
    let _in_flight = InFlight {
        metrics: &st.metrics,
        model: &name,
    };
    let r = run_infer(st.backend.as_ref(), &name, entry, &headers, &body).await;
    st.metrics.record_request(&name, r.status().as_str());
    r
}

async fn run_infer<B: TensorBackend>(
    backend: &B,
    name: &str,
    entry: OnnxModelEntry,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let Some(signature) = entry.signature else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no replica of '{name}' is ready"),
        );
    };
    let header_len = match headers.get(HEADER_LENGTH) {
        None => None,
        Some(v) => match v.to_str().ok().and_then(|s| s.trim().parse::<usize>().ok()) {
            Some(n) => Some(n),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "Inference-Header-Content-Length must be a byte count",
                )
            }
        },
    };
    let mut call = match tensors::parse_infer(body, header_len, &signature) {
        Ok(c) => c,
        Err(BadRequest(m)) => return error(StatusCode::BAD_REQUEST, m),
    };
    let bytes: usize = call.inputs.iter().map(tensor_bytes).sum();
    if bytes > MAX_INPUT_BYTES {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the inputs hold {bytes} bytes; at most {MAX_INPUT_BYTES} travel to a node in one request"
            ),
        );
    }
    let req = TensorInferRequest {
        model: name.to_string(),
        // The answer needs only the call's id and outputs.
        inputs: std::mem::take(&mut call.inputs),
    };
    let outputs = match backend.infer(req).await {
        Ok(o) => o,
        Err(e) => return route_error(e),
    };
    let answer = tensors::answer(name, &call, &outputs);
    let mut r = answer.body.into_response();
    let content_type = if answer.header_len.is_some() {
        "application/octet-stream"
    } else {
        "application/json"
    };
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(n) = answer.header_len {
        r.headers_mut().insert(HEADER_LENGTH, HeaderValue::from(n));
    }
    r
}
