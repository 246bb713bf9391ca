//! Streamed responses: generation events as the Responses API's typed
//! server-sent events (`response.created`, `response.output_item.added`,
//! `response.output_text.delta`, `response.function_call_arguments.delta`,
//! ..., `response.completed`), each with its `sequence_number`.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use protocol::{FinishReason, GenerateEvent};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::output::{self, Call, Outcome, Pending};
use super::Keep;
use crate::openai::backend::InferenceBackend;
use crate::openai::errors::ApiError;
use crate::openai::handlers::{AppState, Prepared};
use crate::openai::stream::next_event;
use crate::openai::tools::{ToolCallParser, ToolEvent};
use crate::openai::tracker::RequestTracker;
use crate::openai::{chunks, dispatch};

/// A stream's state between two polls.
struct State<B> {
    s: Arc<AppState<B>>,
    events: mpsc::Receiver<GenerateEvent>,
    node: String,
    tracker: RequestTracker,
    calls: Option<ToolCallParser>,
    pending: Pending,
    keep: Option<Keep>,
    outcome: Outcome,
    /// The message item's output index while it is open.
    message: Option<u32>,
    /// Output items started so far.
    items: u32,
    /// The output index of each call, in call order.
    call_items: Vec<u32>,
    seq: u64,
    queue: VecDeque<Event>,
    done: bool,
}

/// Starts the prepared request and answers with its event stream; a
/// failure before the first token is an HTTP error.
pub(super) async fn respond<B: InferenceBackend>(
    s: Arc<AppState<B>>,
    mut p: Prepared,
    pending: Pending,
    keep: Keep,
) -> Response {
    let (_, route_deadline, first_wait) = p.deadlines(&s);
    let started = match dispatch::start(
        &*s.backend,
        p.v.request.clone(),
        None,
        route_deadline,
        first_wait,
    )
    .await
    {
        Ok(started) => started,
        Err(e) => {
            p.tracker.failed(&e);
            return e.into_response();
        }
    };
    let idle = s.config.idle_timeout;
    let mut state = State {
        calls: p.shape.tool_format().map(|_| ToolCallParser::new()),
        s,
        events: started.events,
        node: started.node,
        tracker: p.tracker,
        pending,
        keep: Some(keep),
        outcome: Outcome::default(),
        message: None,
        items: 0,
        call_items: Vec::new(),
        seq: 0,
        queue: VecDeque::new(),
        done: false,
    };
    let object = state.object();
    state.emit("response.created", json!({ "response": object }));
    state.emit("response.in_progress", json!({ "response": object }));
    let mut first = Some(started.first);
    let events = stream::unfold(state, move |mut state| {
        let first = first.take();
        async move {
            if let Some(event) = first {
                state.handle(event).await;
            }
            loop {
                if let Some(event) = state.queue.pop_front() {
                    return Some((Ok::<_, Infallible>(event), state));
                }
                if state.done {
                    return None;
                }
                match next_event(idle, state.events.recv()).await {
                    Ok(event) => state.handle(event).await,
                    Err(e) => state.fail(e),
                }
            }
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

impl<B: InferenceBackend> State<B> {
    fn object(&self) -> Value {
        let store = self.keep.as_ref().is_some_and(|k| k.store);
        self.pending.object(&self.outcome, store)
    }

    /// Queues one event of `kind` with `fields` and the next sequence number.
    fn emit(&mut self, kind: &str, mut fields: Value) {
        fields["type"] = json!(kind);
        fields["sequence_number"] = json!(self.seq);
        self.seq += 1;
        self.queue
            .push_back(Event::default().event(kind).data(fields.to_string()));
    }

    async fn handle(&mut self, event: GenerateEvent) {
        match event {
            GenerateEvent::Token {
                text, token_ids, ..
            } => {
                self.tracker.tokens(token_ids.len());
                match &mut self.calls {
                    None => self.text(text),
                    Some(parser) => {
                        for e in parser.push(&text) {
                            self.tool_event(e);
                        }
                    }
                }
            }
            GenerateEvent::Finished { reason, usage } => {
                self.tracker.finished(&self.node, usage);
                if let Some(parser) = &mut self.calls {
                    for e in parser.finish() {
                        self.tool_event(e);
                    }
                }
                let called = !self.outcome.calls.is_empty();
                self.outcome.reason = Some(chunks::calls_finish(reason, called));
                self.outcome.usage = usage;
                self.complete().await;
            }
            GenerateEvent::Failed(e) => self.fail(e.into()),
            GenerateEvent::KeepAlive => {}
        }
    }

    fn tool_event(&mut self, e: ToolEvent) {
        match e {
            ToolEvent::Content(text) => self.text(text),
            ToolEvent::CallStart { id, name, .. } => {
                self.close_message();
                let call = Call {
                    call_id: id,
                    name,
                    arguments: String::new(),
                };
                let index = self.items;
                self.items += 1;
                self.call_items.push(index);
                let item = output::call_item(&call, "in_progress");
                self.outcome.calls.push(call);
                self.emit(
                    "response.output_item.added",
                    json!({"output_index": index, "item": item}),
                );
            }
            ToolEvent::CallArgs { index, delta } => {
                let i = index as usize;
                let (Some(call), Some(&item)) =
                    (self.outcome.calls.get_mut(i), self.call_items.get(i))
                else {
                    return;
                };
                call.arguments.push_str(&delta);
                let item_id = call.item_id();
                self.emit(
                    "response.function_call_arguments.delta",
                    json!({"item_id": item_id, "output_index": item, "delta": delta}),
                );
            }
        }
    }

    /// New answer text. Text after a call (whitespace, in practice) is
    /// not part of the message, which comes first.
    fn text(&mut self, text: String) {
        if text.is_empty() || !self.outcome.calls.is_empty() {
            return;
        }
        let index = self.open_message();
        self.outcome.text.push_str(&text);
        let id = self.pending.message_id().to_string();
        self.emit(
            "response.output_text.delta",
            json!({"item_id": id, "output_index": index, "content_index": 0, "delta": text}),
        );
    }

    fn open_message(&mut self) -> u32 {
        if let Some(index) = self.message {
            return index;
        }
        let index = self.items;
        self.items += 1;
        self.message = Some(index);
        let id = self.pending.message_id().to_string();
        self.emit(
            "response.output_item.added",
            json!({"output_index": index, "item": output::message_item(&id, "", "in_progress")}),
        );
        self.emit(
            "response.content_part.added",
            json!({"item_id": id, "output_index": index, "content_index": 0,
                "part": output::text_part("")}),
        );
        index
    }

    fn close_message(&mut self) {
        let Some(index) = self.message.take() else {
            return;
        };
        let id = self.pending.message_id().to_string();
        let text = self.outcome.text.clone();
        self.emit(
            "response.output_text.done",
            json!({"item_id": id, "output_index": index, "content_index": 0, "text": text}),
        );
        self.emit(
            "response.content_part.done",
            json!({"item_id": id, "output_index": index, "content_index": 0,
                "part": output::text_part(&text)}),
        );
        self.emit(
            "response.output_item.done",
            json!({"output_index": index, "item": output::message_item(&id, &text, "completed")}),
        );
    }

    /// Closes every item, stores the response and ends the stream.
    async fn complete(&mut self) {
        if self.outcome.calls.is_empty() {
            // An empty answer is still one (empty) message.
            self.open_message();
        }
        self.close_message();
        let calls: Vec<(Call, u32)> = self
            .outcome
            .calls
            .iter()
            .cloned()
            .zip(self.call_items.iter().copied())
            .collect();
        for (call, index) in &calls {
            self.emit(
                "response.function_call_arguments.done",
                json!({"item_id": call.item_id(), "output_index": index,
                    "arguments": &call.arguments}),
            );
            self.emit(
                "response.output_item.done",
                json!({"output_index": index, "item": output::call_item(call, "completed")}),
            );
        }
        let object = match self.keep.take() {
            Some(keep) => {
                super::finish(
                    &*self.s.backend,
                    self.pending.clone(),
                    self.outcome.clone(),
                    keep,
                )
                .await
            }
            None => self.object(),
        };
        let kind = if self.outcome.reason == Some(FinishReason::Length) {
            "response.incomplete"
        } else {
            "response.completed"
        };
        self.emit(kind, json!({ "response": object }));
        self.done = true;
    }

    fn fail(&mut self, error: ApiError) {
        self.tracker.failed(&error);
        let body = error.body();
        self.emit(
            "error",
            json!({"code": body["error"]["code"], "message": error.message(),
                "param": body["error"]["param"]}),
        );
        self.done = true;
    }
}
