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
use futures_util::{stream, StreamExt};
use protocol::{GenerateEvent, TokenLogprob, Usage};

use super::chunks::{Body, Shape};
use super::dispatch::{self, Merged, Started};
use super::errors::ApiError;
use super::tools::ToolCallParser;
use super::tracker::{add_choice, RequestTracker};

/// One choice of the stream.
struct ChoiceState {
    node: String,
    /// Parses tool calls out of the text, when the request offered tools.
    calls: Option<ToolCallParser>,
    /// Characters of text sent so far (the completions API's `text_offset`).
    chars: usize,
    finished: bool,
}

/// What the stream owns between two polls.
struct State {
    events: Merged,
    choices: Vec<ChoiceState>,
    shape: Shape,
    tracker: RequestTracker,
    idle_timeout: Duration,
    pending: VecDeque<Event>,
    usage: Option<Usage>,
    done: bool,
}

/// The SSE response of started choices (one per `n`), their chunks
/// interleaved as they come, each with its choice's `index`. Every wait for
/// the next event (keep-alives included, which a replica sends while the
/// request waits or is preempted) is bounded by `idle_timeout`; when it
/// passes, the stream ends with an error event.
pub(crate) fn respond(
    started: Vec<Started>,
    shape: Shape,
    tracker: RequestTracker,
    idle_timeout: Duration,
) -> Response {
    let mut choices = Vec::with_capacity(started.len());
    let mut firsts = Vec::with_capacity(started.len());
    let mut receivers = Vec::with_capacity(started.len());
    for (i, s) in started.into_iter().enumerate() {
        choices.push(ChoiceState {
            node: s.node,
            calls: shape.tool_format().map(|_| ToolCallParser::new()),
            chars: 0,
            finished: false,
        });
        firsts.push((i, s.first));
        receivers.push((i, s.events));
    }
    let mut state = State {
        events: dispatch::merge(receivers),
        choices,
        shape,
        tracker,
        idle_timeout,
        pending: VecDeque::new(),
        usage: None,
        done: false,
    };
    for (i, _) in &firsts {
        if let Some(chunk) = state.shape.role_chunk(*i as u32) {
            state.pending.push_back(json_event(&chunk));
        }
    }
    for (i, first) in firsts {
        state.handle(i, Some(first));
    }
    let events = stream::unfold(state, |mut state| async move {
        loop {
            if let Some(event) = state.pending.pop_front() {
                return Some((Ok::<_, Infallible>(event), state));
            }
            if state.done {
                return None;
            }
            match next_event(state.idle_timeout, state.events.next()).await {
                Ok((i, event)) => state.handle(i, event),
                Err(e) => state.fail(e),
            }
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

impl State {
    /// Handles choice `i`'s next event (`None`: its events ended).
    fn handle(&mut self, i: usize, event: Option<GenerateEvent>) {
        match event {
            Some(GenerateEvent::Token {
                text,
                token_ids,
                logprobs,
            }) => {
                self.tracker.tokens(token_ids.len());
                self.text(i, text, &logprobs);
            }
            Some(GenerateEvent::Finished { reason, usage }) => {
                let index = i as u32;
                let choice = &mut self.choices[i];
                choice.finished = true;
                self.tracker.finished(&choice.node, usage);
                self.usage = Some(add_choice(self.usage, usage));
                let mut called = false;
                if let Some(parser) = &mut choice.calls {
                    for event in parser.finish() {
                        let chunk = self.shape.tool_event_chunk(index, event);
                        self.pending.push_back(json_event(&chunk));
                    }
                    called = parser.calls() > 0;
                }
                let finish = self.shape.finish_chunk(index, reason, called);
                self.pending.push_back(json_event(&finish));
                if self.choices.iter().all(|c| c.finished) {
                    let usage = self.usage.unwrap_or_default();
                    if let Some(chunk) = self.shape.usage_chunk(usage.into()) {
                        self.pending.push_back(json_event(&chunk));
                    }
                    self.pending.push_back(Event::default().data("[DONE]"));
                    self.done = true;
                }
            }
            Some(GenerateEvent::Failed(e)) => self.fail(e.into()),
            // The replica still holds the request; the wait for the next
            // event starts again.
            Some(GenerateEvent::KeepAlive) => {}
            None if self.choices[i].finished => {}
            None => self.fail(ended_early()),
        }
    }

    /// Sends choice `i`'s new text, with its tokens' log-probabilities on
    /// the first chunk it makes (or on a chunk of its own, when the text
    /// is held back or all of it went into tool calls).
    fn text(&mut self, i: usize, text: String, logprobs: &[TokenLogprob]) {
        let index = i as u32;
        let choice = &mut self.choices[i];
        let mut lp = if logprobs.is_empty() {
            None
        } else {
            self.shape.logprobs(logprobs, choice.chars)
        };
        choice.chars += super::logprobs::completion_chars(logprobs);
        match &mut choice.calls {
            None if !text.is_empty() => {
                let chunk = self.shape.content_chunk(index, text, lp.take());
                self.pending.push_back(json_event(&chunk));
            }
            None => {}
            Some(parser) => {
                for event in parser.push(&text) {
                    let chunk = self.shape.tool_event_chunk(index, event);
                    self.pending.push_back(json_event(&chunk));
                }
            }
        }
        if let Some(lp) = lp {
            let chunk = self.shape.content_chunk(index, String::new(), Some(lp));
            self.pending.push_back(json_event(&chunk));
        }
    }

    fn fail(&mut self, error: ApiError) {
        self.tracker.failed(&error);
        self.pending
            .push_back(Event::default().data(error.body().to_string()));
        self.done = true;
    }
}

/// The next event of a stream, waiting at most `idle` for it: a stream
/// that ends or goes quiet that long is an error to end the answer with.
pub(crate) async fn next_event<T>(
    idle: Duration,
    next: impl std::future::Future<Output = Option<T>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(idle, next).await {
        Ok(Some(event)) => Ok(event),
        Ok(None) => Err(ended_early()),
        Err(_) => Err(ApiError::timeout(format!(
            "No token from the replica for {} s.",
            idle.as_secs()
        ))),
    }
}

/// A replica's events ended before the request finished.
fn ended_early() -> ApiError {
    ApiError::unavailable("The replica ended the stream before finishing.")
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
