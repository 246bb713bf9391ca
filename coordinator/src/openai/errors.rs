//! OpenAI error objects: `{"error":{"message","type","param","code"}}` with
//! the matching HTTP status.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::GenerateError;
use serde_json::{json, Value};

use super::backend::RouteError;

/// Seconds a client is told to wait when a node reports overload without a hint.
const DEFAULT_RETRY_AFTER_S: u32 = 1;

/// An error answered to an OpenAI client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<String>,
    code: Option<&'static str>,
    retry_after_s: Option<u32>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after_s: None,
        }
    }

    /// 400: the request is malformed or asks for something unsupported;
    /// `param` names the offending request field.
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            param: param.map(str::to_string),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    /// The request field this error names.
    #[cfg(test)]
    pub fn param(&self) -> Option<&str> {
        self.param.as_deref()
    }

    /// 403: the key may not ask for this; `param` names the field.
    pub fn forbidden(message: impl Into<String>, param: &str) -> Self {
        Self {
            param: Some(param.to_string()),
            ..Self::new(StatusCode::FORBIDDEN, "permission_error", message)
        }
    }

    /// 404: the model is not served by this cluster.
    pub fn model_not_found(model: &str) -> Self {
        Self {
            param: Some("model".into()),
            code: Some("model_not_found"),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("The model `{model}` does not exist or is not available."),
            )
        }
    }

    /// 429 with a `Retry-After` header: every replica is saturated.
    pub fn overloaded(message: impl Into<String>, retry_after_s: u32) -> Self {
        Self {
            code: Some("rate_limit_exceeded"),
            retry_after_s: Some(retry_after_s),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message)
        }
    }

    /// 503: the cluster cannot serve the request right now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            message,
        )
    }

    /// 504: a replica did not answer in time.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "timeout", message)
    }

    /// 413: the request body exceeds `limit` bytes.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("The request body is larger than {limit} bytes."),
        )
    }

    /// 415: a body that is not of a media type the route takes.
    pub fn unsupported_media_type(found: &str, expected: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            format!("The request body must be sent with Content-Type {expected} (got {found:?})."),
        )
    }

    /// 405: the path exists but not with this method.
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            format!("{method} is not allowed on {path}."),
        )
    }

    /// 408: the request body did not arrive in time.
    pub fn body_timeout(seconds: u64) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            format!("The request body did not arrive within {seconds} s."),
        )
    }

    /// 404: no stored response has this id (never stored, expired,
    /// deleted, or another tenant's); `param` names where the id came from.
    pub fn response_not_found(id: &str, param: Option<&str>) -> Self {
        Self {
            param: param.map(str::to_string),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("No response with id '{id}' was found."),
            )
        }
    }

    /// 404 for a path this API does not serve.
    pub fn no_such_route(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("Unknown request URL: {path}."),
        )
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// A short label for metrics (`invalid`, `unknown_model`, ...).
    pub fn metric_kind(&self) -> &'static str {
        match self.status {
            StatusCode::BAD_REQUEST => "invalid",
            StatusCode::NOT_FOUND => "unknown_model",
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::TOO_MANY_REQUESTS => "overloaded",
            StatusCode::GATEWAY_TIMEOUT => "timeout",
            _ => "unavailable",
        }
    }

    /// The OpenAI error object, `{"error":{...}}`.
    pub fn body(&self) -> Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(secs) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<RouteError> for ApiError {
    fn from(e: RouteError) -> Self {
        match e {
            RouteError::UnknownModel(model) => Self::model_not_found(&model),
            RouteError::NoReplica(m) => {
                Self::unavailable(format!("No replica of the model is ready: {m}"))
            }
            RouteError::Overloaded { retry_after_s } => {
                Self::overloaded("The model is overloaded; retry later.", retry_after_s)
            }
            RouteError::Invalid(m) => Self::invalid(m, None),
            RouteError::Unavailable(m) => Self::unavailable(m),
            RouteError::Timeout(m) => Self::timeout(m),
        }
    }
}

impl From<GenerateError> for ApiError {
    fn from(e: GenerateError) -> Self {
        match e {
            GenerateError::Overloaded(m) => Self::overloaded(m, DEFAULT_RETRY_AFTER_S),
            GenerateError::InvalidRequest(m) => Self::invalid(m, None),
            GenerateError::UnknownModel(model) => Self::model_not_found(&model),
            GenerateError::Unavailable(m) => Self::unavailable(m),
        }
    }
}
