//! Routes a validated request to a replica and waits for its first event,
//! so that failures before the first token become HTTP error statuses.

use std::time::Duration;

use futures_util::future::try_join_all;
use futures_util::stream::{self, BoxStream, SelectAll, StreamExt};
use protocol::{GenerateEvent, InferenceRequest};
use tokio::sync::mpsc;
use tokio::time::{timeout_at, Instant};

use super::backend::{InferenceBackend, Routed};
use super::errors::ApiError;

/// A request a replica accepted and started answering.
#[derive(Debug)]
pub(crate) struct Started {
    /// The node serving it.
    pub node: String,
    /// The events after `first`.
    pub events: mpsc::Receiver<GenerateEvent>,
    /// The first event: a `Token` or `Finished`, never `Failed` or `KeepAlive`.
    pub first: GenerateEvent,
}

/// How long [`start`] waits for the first token once a replica has the
/// request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FirstWait {
    /// Longest silence: each keep-alive from the replica (sent while the
    /// request is queued or preempted) starts the wait again.
    pub idle: Duration,
    /// When to give up regardless, if ever.
    pub deadline: Option<Instant>,
}

/// Starts the `n` choices of one request: choice 0 first; then, once its
/// replica has computed the prompt (its first event), the others on the
/// same node, where they find the prompt's KV blocks cached and prefill
/// only what the cache lacks. Choice `i` samples with the request's seed
/// plus `i`, so a fixed seed gives the same choices every time.
pub(crate) async fn start_choices<B: InferenceBackend>(
    backend: &B,
    req: InferenceRequest,
    n: u8,
    route_deadline: Instant,
    first: FirstWait,
) -> Result<Vec<Started>, ApiError> {
    let lead = start(backend, req.clone(), None, route_deadline, first).await?;
    let node = lead.node.clone();
    let others = try_join_all((1..n).map(|i| {
        let mut choice = req.clone();
        choice.sampling.seed = req.sampling.seed.map(|s| s.wrapping_add(u64::from(i)));
        start(backend, choice, Some(node.clone()), route_deadline, first)
    }))
    .await?;
    let mut all = Vec::with_capacity(usize::from(n));
    all.push(lead);
    all.extend(others);
    Ok(all)
}

/// The events of several choices as one stream of `(choice, event)`; a
/// choice whose events end yields `(choice, None)` once. Dropping it drops
/// every receiver, which cancels the choices still running.
pub(crate) type Merged = SelectAll<BoxStream<'static, (usize, Option<GenerateEvent>)>>;

/// Merges the choices' event receivers (each with its choice's index).
pub(crate) fn merge(receivers: Vec<(usize, mpsc::Receiver<GenerateEvent>)>) -> Merged {
    stream::select_all(receivers.into_iter().map(|(choice, rx)| {
        stream::unfold(Some(rx), move |rx| async move {
            let mut rx = rx?;
            match rx.recv().await {
                Some(event) => Some(((choice, Some(event)), Some(rx))),
                None => Some(((choice, None), None)),
            }
        })
        .boxed()
    }))
}

/// Routes `req` (to `prefer` if it can; giving up at `route_deadline`) and
/// waits for its first token or final event, as `first` allows.
pub(crate) async fn start<B: InferenceBackend>(
    backend: &B,
    req: InferenceRequest,
    prefer: Option<String>,
    route_deadline: Instant,
    first: FirstWait,
) -> Result<Started, ApiError> {
    let Routed { node, mut events } = timeout_at(route_deadline, backend.generate(req, prefer))
        .await
        .map_err(|_| ApiError::timeout("No replica accepted the request in time."))??;
    loop {
        let idle_end = Instant::now() + first.idle;
        let wait_end = first.deadline.map_or(idle_end, |d| d.min(idle_end));
        return match timeout_at(wait_end, events.recv()).await {
            Err(_) => Err(ApiError::timeout(
                "The replica did not start generating in time.",
            )),
            Ok(None) => Err(ApiError::unavailable(
                "The replica ended the request without an answer.",
            )),
            Ok(Some(GenerateEvent::KeepAlive)) => continue,
            Ok(Some(GenerateEvent::Failed(e))) => Err(e.into()),
            Ok(Some(first)) => Ok(Started {
                node,
                events,
                first,
            }),
        };
    }
}

/// A fresh response id: `prefix` and 24 random alphanumerics.
pub(crate) fn response_id(prefix: &str) -> String {
    use rand::distributions::{Alphanumeric, DistString};
    format!(
        "{prefix}{}",
        Alphanumeric.sample_string(&mut rand::thread_rng(), 24)
    )
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
