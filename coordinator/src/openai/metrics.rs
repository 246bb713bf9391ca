//! Prometheus metrics of the OpenAI API, in a [`Registry`] owned by
//! [`Metrics`] (no global state, so tests can create many).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    model: String,
    status: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabel {
    model: String,
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelNodeLabel {
    model: String,
    node: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    node: String,
}

type HistogramFamily = Family<ModelLabel, Histogram, fn() -> Histogram>;

/// Time to first token: 10 ms to about 80 s.
fn ttft_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

/// Time between tokens: 1 ms to about 4 s.
fn itl_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 13))
}

/// The API's metrics, all named `inferno_*`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<StatusLabel, Counter>,
    errors: Family<ErrorLabel, Counter>,
    ttft: HistogramFamily,
    itl: HistogramFamily,
    prompt_tokens: Family<ModelNodeLabel, Counter>,
    completion_tokens: Family<ModelNodeLabel, Counter>,
    in_flight: Family<ModelLabel, Gauge>,
    queue_depth: Gauge,
    running: Family<NodeLabel, Gauge>,
    waiting: Family<NodeLabel, Gauge>,
    kv_usage: Family<ModelNodeLabel, Gauge<f64, AtomicU64>>,
    kv_cached_blocks: Family<ModelNodeLabel, Gauge>,
    prefix_queried: Family<ModelNodeLabel, Counter>,
    prefix_hit: Family<ModelNodeLabel, Counter>,
    preemptions: Family<ModelNodeLabel, Counter>,
    tenants: crate::quota::TenantMetrics,
    /// The nodes' cumulative counters as last reported, to turn their
    /// heartbeats into counter increments.
    kv_reported: Mutex<HashMap<ModelNodeLabel, [u64; 3]>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<StatusLabel, Counter>::default();
        let errors = Family::<ErrorLabel, Counter>::default();
        let ttft = HistogramFamily::new_with_constructor(ttft_histogram);
        let itl = HistogramFamily::new_with_constructor(itl_histogram);
        let prompt_tokens = Family::<ModelNodeLabel, Counter>::default();
        let completion_tokens = Family::<ModelNodeLabel, Counter>::default();
        let in_flight = Family::<ModelLabel, Gauge>::default();
        let queue_depth = Gauge::default();
        let running = Family::<NodeLabel, Gauge>::default();
        let waiting = Family::<NodeLabel, Gauge>::default();
        let kv_usage = Family::<ModelNodeLabel, Gauge<f64, AtomicU64>>::default();
        let kv_cached_blocks = Family::<ModelNodeLabel, Gauge>::default();
        let prefix_queried = Family::<ModelNodeLabel, Counter>::default();
        let prefix_hit = Family::<ModelNodeLabel, Counter>::default();
        let preemptions = Family::<ModelNodeLabel, Counter>::default();
        registry.register(
            "inferno_requests",
            "OpenAI API requests by model and HTTP status (cancelled: client went away)",
            requests.clone(),
        );
        registry.register(
            "inferno_request_errors",
            "Failed OpenAI API requests by model and kind",
            errors.clone(),
        );
        registry.register(
            "inferno_ttft_seconds",
            "Time from request arrival to the first generated token",
            ttft.clone(),
        );
        registry.register(
            "inferno_inter_token_latency_seconds",
            "Time between consecutive generated tokens",
            itl.clone(),
        );
        registry.register(
            "inferno_prompt_tokens",
            "Prompt tokens of finished requests by model and node",
            prompt_tokens.clone(),
        );
        registry.register(
            "inferno_completion_tokens",
            "Generated tokens of finished requests by model and node",
            completion_tokens.clone(),
        );
        registry.register(
            "inferno_requests_in_flight",
            "OpenAI API requests being served",
            in_flight.clone(),
        );
        registry.register(
            "inferno_queue_depth",
            "Requests waiting in the coordinator for a replica",
            queue_depth.clone(),
        );
        registry.register(
            "inferno_running_sequences",
            "Sequences being generated, per node",
            running.clone(),
        );
        registry.register(
            "inferno_waiting_sequences",
            "Requests admitted and waiting for a slot, per node",
            waiting.clone(),
        );
        registry.register(
            "inferno_kv_cache_usage_ratio",
            "KV cache blocks held by running sequences over all blocks, per replica",
            kv_usage.clone(),
        );
        registry.register(
            "inferno_kv_cache_cached_blocks",
            "KV cache blocks keeping a cached prefix (held or not), per replica",
            kv_cached_blocks.clone(),
        );
        registry.register(
            "inferno_prefix_cache_queried_tokens",
            "Prompt tokens looked up in the prefix cache, per replica",
            prefix_queried.clone(),
        );
        registry.register(
            "inferno_prefix_cache_hit_tokens",
            "Prompt tokens served from the prefix cache instead of recomputed, per replica",
            prefix_hit.clone(),
        );
        registry.register(
            "inferno_preemptions",
            "Sequences preempted (and later recomputed) to free KV cache blocks, per replica",
            preemptions.clone(),
        );
        let tenants = crate::quota::TenantMetrics::default();
        tenants.register(&mut registry);
        Self {
            registry,
            tenants,
            requests,
            errors,
            ttft,
            itl,
            prompt_tokens,
            completion_tokens,
            in_flight,
            queue_depth,
            running,
            waiting,
            kv_usage,
            kv_cached_blocks,
            prefix_queried,
            prefix_hit,
            preemptions,
            kv_reported: Mutex::new(HashMap::new()),
        }
    }

    /// The per-tenant counters (shared with the quota layer).
    pub fn tenants(&self) -> &crate::quota::TenantMetrics {
        &self.tenants
    }

    /// The metrics in the OpenMetrics text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// Sets the number of requests waiting in the coordinator for a replica.
    pub fn set_queue_depth(&self, depth: i64) {
        self.queue_depth.set(depth);
    }

    /// Sets a node's running and waiting sequences (from its heartbeat).
    pub fn set_node_sequences(&self, node: &str, running: i64, waiting: i64) {
        let label = NodeLabel {
            node: node.to_string(),
        };
        self.running.get_or_create(&label).set(running);
        self.waiting.get_or_create(&label).set(waiting);
    }

    /// Sets a replica's KV cache gauges and advances its prefix-cache and
    /// preemption counters to what its heartbeat reports (a replica that
    /// restarted counts from zero again).
    pub fn set_node_kv(&self, model: &str, node: &str, kv: &protocol::KvCacheReport) {
        let label = ModelNodeLabel {
            model: model.to_string(),
            node: node.to_string(),
        };
        let ratio = if kv.total_blocks == 0 {
            0.0
        } else {
            f64::from(kv.used_blocks) / f64::from(kv.total_blocks)
        };
        self.kv_usage.get_or_create(&label).set(ratio);
        self.kv_cached_blocks
            .get_or_create(&label)
            .set(i64::from(kv.cached_blocks));
        let now = [kv.queried_tokens, kv.hit_tokens, kv.preemptions];
        let mut reported = self.kv_reported.lock().unwrap_or_else(|p| p.into_inner());
        let before = reported.insert(label.clone(), now).unwrap_or([0; 3]);
        let counters = [&self.prefix_queried, &self.prefix_hit, &self.preemptions];
        for ((family, now), before) in counters.into_iter().zip(now).zip(before) {
            let delta = if now >= before { now - before } else { now };
            family.get_or_create(&label).inc_by(delta);
        }
    }

    /// Drops a node's gauges (it left the cluster).
    pub fn forget_node(&self, node: &str) {
        let label = NodeLabel {
            node: node.to_string(),
        };
        self.running.remove(&label);
        self.waiting.remove(&label);
    }

    pub(crate) fn record_request(&self, model: &str, status: &str) {
        self.requests
            .get_or_create(&StatusLabel {
                model: model.to_string(),
                status: status.to_string(),
            })
            .inc();
    }

    pub(crate) fn record_error(&self, model: &str, kind: &str) {
        self.errors
            .get_or_create(&ErrorLabel {
                model: model.to_string(),
                kind: kind.to_string(),
            })
            .inc();
    }

    pub(crate) fn observe_ttft(&self, model: &str, seconds: f64) {
        self.ttft
            .get_or_create(&model_label(model))
            .observe(seconds);
    }

    pub(crate) fn observe_itl(&self, model: &str, seconds: f64) {
        self.itl.get_or_create(&model_label(model)).observe(seconds);
    }

    pub(crate) fn add_usage(&self, model: &str, node: &str, usage: protocol::Usage) {
        let label = ModelNodeLabel {
            model: model.to_string(),
            node: node.to_string(),
        };
        self.prompt_tokens
            .get_or_create(&label)
            .inc_by(u64::from(usage.prompt_tokens));
        self.completion_tokens
            .get_or_create(&label)
            .inc_by(u64::from(usage.completion_tokens));
    }

    pub(crate) fn add_in_flight(&self, model: &str, delta: i64) {
        self.in_flight
            .get_or_create(&model_label(model))
            .inc_by(delta);
    }
}

fn model_label(model: &str) -> ModelLabel {
    ModelLabel {
        model: model.to_string(),
    }
}
