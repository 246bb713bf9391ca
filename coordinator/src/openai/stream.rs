//! Streaming answers: generation events turned into server-sent events
//! (`data: {chunk}`, then `data: [DONE]`).
//!
//! The event receiver lives only inside the returned stream, so when the
//! client goes away and the response body is dropped, the receiver is
//! dropped too and the node cancels the request.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use protocol::GenerateEvent;
use tokio::sync::mpsc;

use super::chunks::{Body, Shape};
use super::dispatch::Started;
use super::errors::ApiError;
use super::tools::ToolCallParser;
use super::tracker::RequestTracker;

/// What the stream owns between two polls.
struct State {
    events: mpsc::Receiver<GenerateEvent>,
    node: String,
    shape: Shape,
    tracker: RequestTracker,
    idle_timeout: Duration,
    pending: VecDeque<Event>,
    done: bool,
    /// Parses tool calls out of the text, when the request offered tools.
    calls: Option<ToolCallParser>,
}

/// The SSE response of a started request. Every wait for the next event
/// (keep-alives included, which a replica sends while the request waits or
/// is preempted) is bounded by `idle_timeout`; when it passes, the stream
/// ends with an error event.
pub(crate) fn respond(
    started: Started,
    shape: Shape,
    tracker: RequestTracker,
    idle_timeout: Duration,
) -> Response {
    let Started {
        node,
        events,
        first,
    } = started;
    let calls = shape.tool_format().map(|_| ToolCallParser::new());
    let mut state = State {
        events,
        node,
        shape,
        tracker,
        idle_timeout,
        pending: VecDeque::new(),
        done: false,
        calls,
    };
    if let Some(chunk) = state.shape.role_chunk() {
        state.pending.push_back(json_event(&chunk));
    }
    state.handle(first);
    let events = stream::unfold(state, |mut state| async move {
        loop {
            if let Some(event) = state.pending.pop_front() {
                return Some((Ok::<_, Infallible>(event), state));
            }
            if state.done {
                return None;
            }
            let next = tokio::time::timeout(state.idle_timeout, state.events.recv()).await;
            match next {
                Ok(Some(event)) => state.handle(event),
                Ok(None) => state.fail(ApiError::unavailable(
                    "The replica ended the stream before finishing.",
                )),
                Err(_) => {
                    let secs = state.idle_timeout.as_secs();
                    state.fail(ApiError::timeout(format!(
                        "No token from the replica for {secs} s."
                    )))
                }
            }
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

impl State {
    fn handle(&mut self, event: GenerateEvent) {
        match event {
            GenerateEvent::Token { text, token_ids } => {
                self.tracker.tokens(token_ids.len());
                if text.is_empty() {
                    return;
                }
                match &mut self.calls {
                    None => {
                        let chunk = self.shape.content_chunk(text);
                        self.pending.push_back(json_event(&chunk));
                    }
                    Some(parser) => {
                        for event in parser.push(&text) {
                            let chunk = self.shape.tool_event_chunk(event);
                            self.pending.push_back(json_event(&chunk));
                        }
                    }
                }
            }
            GenerateEvent::Finished { reason, usage } => {
                self.tracker.finished(&self.node, usage);
                let mut called = false;
                if let Some(parser) = &mut self.calls {
                    for event in parser.finish() {
                        let chunk = self.shape.tool_event_chunk(event);
                        self.pending.push_back(json_event(&chunk));
                    }
                    called = parser.calls() > 0;
                }
                let finish = self.shape.finish_chunk(reason, called);
                self.pending.push_back(json_event(&finish));
                if let Some(chunk) = self.shape.usage_chunk(usage.into()) {
                    self.pending.push_back(json_event(&chunk));
                }
                self.pending.push_back(Event::default().data("[DONE]"));
                self.done = true;
            }
            GenerateEvent::Failed(e) => self.fail(e.into()),
            // The replica still holds the request; the wait for the next
            // event starts again.
            GenerateEvent::KeepAlive => {}
        }
    }

    fn fail(&mut self, error: ApiError) {
        self.tracker.failed(&error);
        self.pending
            .push_back(Event::default().data(error.body().to_string()));
        self.done = true;
    }
}

fn json_event(body: &Body) -> Event {
    match serde_json::to_string(body) {
        Ok(json) => Event::default().data(json),
        Err(e) => Event::default().data(
            ApiError::unavailable(format!("could not encode a chunk: {e}"))
                .body()
                .to_string(),
        ),
    }
}
