//! Non-streaming answers: the events of every choice collected up to its
//! `Finished`.

use std::collections::VecDeque;

use futures_util::StreamExt;
use protocol::{FinishReason, GenerateEvent, TokenLogprob, Usage};
use tokio::time::{timeout_at, Instant};

use super::chunks::{Body, Choice, Shape};
use super::dispatch::{self, Started};
use super::errors::ApiError;
use super::tracker::{add_choice, RequestTracker};

/// One choice while its events arrive.
#[derive(Debug, Default)]
struct Partial {
    node: String,
    text: String,
    logprobs: Vec<TokenLogprob>,
    reason: Option<FinishReason>,
}

/// Collects the started choices' text until each finishes or `deadline`
/// passes, and builds the whole completion. The usage counts the prompt
/// once and the tokens of every choice.
pub(crate) async fn respond(
    started: Vec<Started>,
    shape: Shape,
    tracker: &mut RequestTracker,
    deadline: Instant,
) -> Result<Body, ApiError> {
    let mut choices: Vec<Partial> = Vec::with_capacity(started.len());
    let mut queued = VecDeque::new();
    let mut receivers = Vec::new();
    for (i, s) in started.into_iter().enumerate() {
        choices.push(Partial {
            node: s.node,
            ..Partial::default()
        });
        queued.push_back((i, Some(s.first)));
        receivers.push((i, s.events));
    }
    let mut events = dispatch::merge(receivers);
    let mut usage: Option<Usage> = None;
    let mut open = choices.len();
    while open > 0 {
        let (i, event) = match queued.pop_front() {
            Some(next) => next,
            None => match timeout_at(deadline, events.next()).await {
                Ok(Some(next)) => next,
                Ok(None) => break,
                Err(_) => return Err(ApiError::timeout("The request did not finish in time.")),
            },
        };
        let choice = &mut choices[i];
        match event {
            Some(GenerateEvent::Token {
                text,
                token_ids,
                logprobs,
            }) => {
                tracker.tokens(token_ids.len());
                choice.text.push_str(&text);
                choice.logprobs.extend(logprobs);
            }
            Some(GenerateEvent::Finished { reason, usage: u }) => {
                tracker.finished(&choice.node, u);
                choice.reason = Some(reason);
                usage = Some(add_choice(usage, u));
                open -= 1;
            }
            Some(GenerateEvent::Failed(e)) => return Err(e.into()),
            Some(GenerateEvent::KeepAlive) => {}
            None if choice.reason.is_some() => {}
            None => {
                return Err(ApiError::unavailable(
                    "The replica ended the request before finishing.",
                ))
            }
        }
    }
    let choices = choices
        .into_iter()
        .map(|c| {
            Ok(Choice {
                text: c.text,
                reason: c.reason.ok_or_else(|| {
                    ApiError::unavailable("The replica ended the request before finishing.")
                })?,
                logprobs: c.logprobs,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(shape.complete(choices, usage.unwrap_or_default().into()))
}
