//! Per-request metrics: a guard that counts the request in flight until it
//! is dropped and then records how it ended.

use std::sync::Arc;
use std::time::Instant;

use super::errors::ApiError;
use super::metrics::Metrics;
use crate::quota::TokenMeter;

/// Status label of a request whose client went away before it ended.
const CANCELLED: &str = "cancelled";

/// Who a request is accounted to: its tenant (per-tenant metrics) and,
/// when its key has a tokens-per-minute limit, the meter to charge.
#[derive(Debug, Clone, Default)]
pub(crate) struct Account {
    pub(crate) tenant: Option<String>,
    pub(crate) meter: Option<TokenMeter>,
}

/// Tracks one request; dropping it records the outcome (or a cancellation).
#[derive(Debug)]
pub(crate) struct RequestTracker {
    metrics: Arc<Metrics>,
    model: String,
    account: Account,
    arrived: Instant,
    last_token: Option<Instant>,
    /// Tokens streamed so far (charged when the request ends without usage).
    generated: u64,
    usage: Option<protocol::Usage>,
    outcome: Option<(String, Option<&'static str>)>,
}

impl RequestTracker {
    /// Starts tracking a request for `model` (a label: a served model or `unknown`).
    pub(crate) fn new(metrics: Arc<Metrics>, model: String, account: Account) -> Self {
        metrics.add_in_flight(&model, 1);
        Self {
            metrics,
            model,
            account,
            arrived: Instant::now(),
            last_token: None,
            generated: 0,
            usage: None,
            outcome: None,
        }
    }

    /// `count` tokens arrived now.
    pub(crate) fn tokens(&mut self, count: usize) {
        if count == 0 {
            return;
        }
        self.generated = self.generated.saturating_add(count as u64);
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

    /// One choice of the request finished normally on `node` (the last
    /// one to finish ends the request). The prompt is counted once.
    pub(crate) fn finished(&mut self, node: &str, usage: protocol::Usage) {
        let counted = match self.usage {
            None => usage,
            Some(_) => protocol::Usage {
                prompt_tokens: 0,
                ..usage
            },
        };
        self.metrics.add_usage(&self.model, node, counted);
        self.usage = Some(add_choice(self.usage, usage));
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
        // A request cut short is charged the tokens it streamed.
        let (prompt, completion) = self.usage.map_or((0, self.generated), |u| {
            (u64::from(u.prompt_tokens), u64::from(u.completion_tokens))
        });
        if let Some(tenant) = &self.account.tenant {
            let tenants = self.metrics.tenants();
            tenants.record_request(tenant, status);
            tenants.add_tokens(tenant, prompt, completion);
        }
        if let Some(meter) = &self.account.meter {
            meter.charge(prompt.saturating_add(completion));
        }
    }
}

/// The usage of a request with one more finished choice: the prompt is
/// counted once, every choice's completion tokens are added.
pub(crate) fn add_choice(
    total: Option<protocol::Usage>,
    choice: protocol::Usage,
) -> protocol::Usage {
    match total {
        None => choice,
        Some(t) => protocol::Usage {
            prompt_tokens: t.prompt_tokens,
            completion_tokens: t.completion_tokens.saturating_add(choice.completion_tokens),
        },
    }
}
