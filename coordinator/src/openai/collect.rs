//! Non-streaming answers: events collected up to `Finished`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use protocol::GenerateEvent;
use tokio::time::{timeout_at, Instant};

use super::chunks::Shape;
use super::dispatch::Started;
use super::errors::ApiError;
use super::tracker::RequestTracker;

/// Collects a started request's text until it finishes or `deadline`
/// passes, and answers the whole completion.
pub(crate) async fn respond(
    started: Started,
    shape: Shape,
    tracker: &mut RequestTracker,
    deadline: Instant,
) -> Result<Response, ApiError> {
    let Started {
        node,
        mut events,
        first,
    } = started;
    let mut text = String::new();
    let mut event = first;
    loop {
        match event {
            GenerateEvent::Token {
                text: piece,
                token_ids,
            } => {
                tracker.tokens(token_ids.len());
                text.push_str(&piece);
            }
            GenerateEvent::Finished { reason, usage } => {
                tracker.finished(&node, usage);
                let body = shape.complete(text, reason, usage.into());
                return Ok((StatusCode::OK, Json(body)).into_response());
            }
            GenerateEvent::Failed(e) => return Err(e.into()),
            GenerateEvent::KeepAlive => {}
        }
        event = match timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => {
                return Err(ApiError::unavailable(
                    "The replica ended the request before finishing.",
                ))
            }
            Err(_) => return Err(ApiError::timeout("The request did not finish in time.")),
        };
    }
}
