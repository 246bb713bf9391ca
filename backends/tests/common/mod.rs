//! Helpers shared by the engine tests: collecting a request's stream.

use std::time::{Duration, Instant};

use protocol::{FinishReason, GenerateError, GenerateEvent, TokenLogprob};
use tokio::sync::mpsc::Receiver;

/// Everything one request's stream said.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The streamed text.
    pub text: String,
    /// The streamed token ids.
    pub tokens: Vec<u32>,
    /// Their log-probabilities, when the request asked for them.
    pub logprobs: Vec<TokenLogprob>,
    /// Why it finished, if it did.
    pub finish: Option<FinishReason>,
    /// Why it failed, if it did.
    pub error: Option<GenerateError>,
}

/// Reads a stream to its final event (keep-alives skipped); panics if it
/// closes without one or runs past two minutes.
pub fn collect(mut rx: Receiver<GenerateEvent>) -> Outcome {
    let mut out = Outcome::default();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        match rx.blocking_recv() {
            Some(GenerateEvent::Token {
                text,
                token_ids,
                logprobs,
            }) => {
                out.text.push_str(&text);
                out.tokens.extend(token_ids);
                out.logprobs.extend(logprobs);
            }
            Some(GenerateEvent::KeepAlive) => {}
            Some(GenerateEvent::Finished { reason, .. }) => {
                out.finish = Some(reason);
                return out;
            }
            Some(GenerateEvent::Failed(e)) => {
                out.error = Some(e);
                return out;
            }
            None => panic!("stream closed without a final event"),
        }
    }
    panic!("generation did not finish in time");
}
