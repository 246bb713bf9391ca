//! Limits on every HTTP request before a handler sees it: a body (POST,
//! PUT, PATCH) must come with `Content-Type: application/json` (the
//! federated-job route also takes `application/toml`), which a web page
//! cannot send cross-origin without a CORS preflight (415 otherwise); the
//! body must arrive whole within [`BODY_TIMEOUT`] (408) and within the size
//! cap (413). The errors are OpenAI error objects, as is the 405 of a known
//! path with the wrong method.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::openai::ApiError;

/// Longest a client may take to send its whole body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The media types `path` takes a body in.
fn accepted_types(path: &str) -> &'static [&'static str] {
    if path == "/admin/v1/fl/jobs" {
        &["application/json", "application/toml"]
    } else if takes_untyped_body(path) {
        &["application/json", "application/octet-stream"]
    } else {
        &["application/json"]
    }
}

/// Whether `path` takes a body without a media type: the v2 `infer`
/// route, which `tritonclient` calls with none (a JSON header and binary
/// tensors). A web page cannot abuse this cross-origin: the route needs an
/// API key, and no page can send the key's header without a preflight.
fn takes_untyped_body(path: &str) -> bool {
    path.starts_with("/v2/models/") && path.ends_with("/infer")
}

/// Whether `content_type` (parameters such as `charset` ignored) is one of
/// `accepted`.
fn type_ok(content_type: Option<&str>, accepted: &[&str]) -> bool {
    content_type
        .and_then(|c| c.split(';').next())
        .map(str::trim)
        .is_some_and(|t| accepted.iter().any(|a| t.eq_ignore_ascii_case(a)))
}

/// Checks the media type and reads the body within the time and size caps.
pub async fn guard_body(State(max_bytes): State<usize>, req: Request, next: Next) -> Response {
    let has_body_method = matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH);
    let declared_empty = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == "0");
    if !has_body_method || declared_empty {
        return next.run(req).await;
    }
    let path = req.uri().path().to_string();
    let accepted = accepted_types(&path);
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("(not text)"));
    let untyped_ok = content_type.is_none() && takes_untyped_body(&path);
    if !untyped_ok && !type_ok(content_type, accepted) {
        return ApiError::unsupported_media_type(
            content_type.unwrap_or("none"),
            &accepted.join(" or "),
        )
        .into_response();
    }
    let (parts, body) = req.into_parts();
    let bytes =
        match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, max_bytes)).await {
            Err(_) => return ApiError::body_timeout(BODY_TIMEOUT.as_secs()).into_response(),
            Ok(Err(_)) => return ApiError::payload_too_large(max_bytes).into_response(),
            Ok(Ok(b)) => b,
        };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// The 405 of every router.
pub async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> Response {
    ApiError::method_not_allowed(method.as_str(), uri.path()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_are_checked_per_route() {
        let json = accepted_types("/v1/chat/completions");
        assert!(type_ok(Some("application/json"), json));
        assert!(type_ok(Some("application/json; charset=utf-8"), json));
        assert!(type_ok(Some("Application/JSON"), json));
        assert!(!type_ok(Some("text/plain"), json));
        assert!(!type_ok(Some("application/x-www-form-urlencoded"), json));
        assert!(!type_ok(None, json));
        let fl = accepted_types("/admin/v1/fl/jobs");
        assert!(type_ok(Some("application/toml"), fl));
        assert!(!type_ok(Some("application/toml"), json));
        let v2 = accepted_types("/v2/models/relu/infer");
        assert!(type_ok(Some("application/octet-stream"), v2));
        assert!(!type_ok(Some("text/plain"), v2));
        assert!(takes_untyped_body("/v2/models/relu/infer"));
        assert!(!takes_untyped_body("/v1/chat/completions"));
        assert!(!takes_untyped_body("/v2/models/relu"));
    }
}
