//! Routes a validated request to a replica and waits for its first event,
//! so that failures before the first token become HTTP error statuses.

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
    /// The first event: a `Token` or `Finished`, never `Failed`.
    pub first: GenerateEvent,
}

/// Routes `req` (giving up at `route_deadline`) and waits for its first
/// event (giving up at `first_deadline`).
pub(crate) async fn start<B: InferenceBackend>(
    backend: &B,
    req: InferenceRequest,
    route_deadline: Instant,
    first_deadline: Instant,
) -> Result<Started, ApiError> {
    let Routed { node, mut events } = timeout_at(route_deadline, backend.generate(req))
        .await
        .map_err(|_| ApiError::timeout("No replica accepted the request in time."))??;
    match timeout_at(first_deadline, events.recv()).await {
        Err(_) => Err(ApiError::timeout(
            "The replica did not start generating in time.",
        )),
        Ok(None) => Err(ApiError::unavailable(
            "The replica ended the request without an answer.",
        )),
        Ok(Some(GenerateEvent::Failed(e))) => Err(e.into()),
        Ok(Some(first)) => Ok(Started {
            node,
            events,
            first,
        }),
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
