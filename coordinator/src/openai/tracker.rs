//! Per-request metrics: a guard that counts the request in flight until it
//! is dropped and then records how it ended.

use std::sync::Arc;
use std::time::Instant;

use super::errors::ApiError;
use super::metrics::Metrics;

/// Status label of a request whose client went away before it ended.
const CANCELLED: &str = "cancelled";

/// Tracks one request; dropping it records the outcome (or a cancellation).
#[derive(Debug)]
pub(crate) struct RequestTracker {
    metrics: Arc<Metrics>,
    model: String,
    arrived: Instant,
    last_token: Option<Instant>,
    outcome: Option<(String, Option<&'static str>)>,
}

impl RequestTracker {
    /// Starts tracking a request for `model` (a label: a served model or `unknown`).
    pub(crate) fn new(metrics: Arc<Metrics>, model: String) -> Self {
        metrics.add_in_flight(&model, 1);
        Self {
            metrics,
            model,
            arrived: Instant::now(),
            last_token: None,
            outcome: None,
        }
    }

    /// `count` tokens arrived now.
    pub(crate) fn tokens(&mut self, count: usize) {
        if count == 0 {
            return;
        }
        let now = Instant::now();
        match self.last_token {
            None => self
                .metrics
                .observe_ttft(&self.model, (now - self.arrived).as_secs_f64()),
            Some(last) => {
                let per_token = (now - last).as_secs_f64() / count as f64;
                for _ in 0..count {
                    self.metrics.observe_itl(&self.model, per_token);
                }
            }
        }
        self.last_token = Some(now);
    }

    /// The request finished normally on `node`.
    pub(crate) fn finished(&mut self, node: &str, usage: protocol::Usage) {
        self.metrics.add_usage(&self.model, node, usage);
        self.outcome = Some(("200".into(), None));
    }

    /// The request failed with `error`.
    pub(crate) fn failed(&mut self, error: &ApiError) {
        self.outcome = Some((
            error.status().as_u16().to_string(),
            Some(error.metric_kind()),
        ));
    }
}

impl Drop for RequestTracker {
    fn drop(&mut self) {
        self.metrics.add_in_flight(&self.model, -1);
        let (status, kind) = match &self.outcome {
            Some((status, kind)) => (status.as_str(), *kind),
            None => (CANCELLED, Some(CANCELLED)),
        };
        self.metrics.record_request(&self.model, status);
        if let Some(kind) = kind {
            self.metrics.record_error(&self.model, kind);
        }
    }
}
