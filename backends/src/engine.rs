//! The continuous-batching engine: one dedicated thread per loaded model,
//! fed by a bounded channel, answering each request on its own event channel
//! (the mistral.rs shape).
//!
//! [`Engine::load`] returns the engine and an [`EngineHandle`]; the engine's
//! [`Engine::run`] loop is meant for a thread of its own. Submitting never
//! blocks: a full queue is refused at once with `Overloaded`. Dropping a
//! request's event receiver cancels it; its slot and KV blocks are freed at
//! the next step (its full blocks stay in the prefix cache).
//!
//! The KV cache is paged ([`crate::scheduler`]): sequences take blocks as
//! they grow, and when blocks run out the youngest sequence is preempted and
//! later recomputed. Its client sees one uninterrupted stream: the
//! sequence's sampler, detokenizer and stop matcher live here, untouched by
//! preemption, and the tokens it already streamed are recomputed, not
//! resampled.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::prefix::MAX_REPORTED_SPANS;
use protocol::{
    FinishReason, GenerateError, GenerateEvent, GenerateRequest, Usage, KEEPALIVE_AFTER,
};
use tokio::sync::mpsc;

use crate::frontend::ModelFrontend;
use crate::gguf::GgufFile;
use crate::grammar::TokenConstraint;
use crate::model::{BatchItem, KvPool, ModelError, Scratch, Transformer};
use crate::prefix_index::PrefixIndex;
use crate::sampling::Sampler;
use crate::scheduler::{AdmitError, Scheduler, SchedulerConfig, SeqId, StepPlan};
use crate::stop::StopMatcher;
use crate::tokenizer::StreamDecoder;

/// Limits of one model's engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Sequences decoded together at most.
    pub max_running: usize,
    /// Requests that may wait; more are refused as overloaded.
    pub max_waiting: usize,
    /// Tokens per step (decode tokens plus prompt chunks).
    pub max_step_tokens: usize,
    /// Prompt tokens a step may carry on top of the decode tokens of
    /// running sequences (see
    /// [`SchedulerConfig::prefill_tokens_while_decoding`]).
    pub prefill_tokens_while_decoding: usize,
    /// KV cache pool of this model, in bytes, shared by all its sequences
    /// (in blocks of 16 positions).
    pub kv_budget_bytes: usize,
    /// Threads the model's matmuls and attention run on.
    pub threads: usize,
    /// Longest sequence served, prompt plus generated tokens (llama.cpp's
    /// `--ctx-size`, vLLM's `max_model_len`); more than the model's context
    /// length means the model's; `None` means the pool's share per running
    /// sequence within bounds (see `served_context`).
    pub ctx_size: Option<usize>,
}

/// Text spans each replica remembers for its routing summary.
const PREFIX_INDEX_SPANS: usize = 8192;

/// How often the routing summary of cached prefixes is rebuilt while busy.
const SUMMARY_EVERY: Duration = Duration::from_millis(200);

/// How often silent streams are checked for a keep-alive while busy.
const KEEPALIVE_CHECK_EVERY: Duration = Duration::from_millis(500);

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_running: 16,
            max_waiting: 64,
            max_step_tokens: 256,
            prefill_tokens_while_decoding: 32,
            kv_budget_bytes: 512 << 20,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            ctx_size: None,
        }
    }
}

/// Why an engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The model file was refused or failed to load.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The tokenizer or chat template in the file is unusable.
    #[error("{0}")]
    Frontend(String),
    /// The engine thread could not be started.
    #[error("cannot start the engine thread: {0}")]
    Thread(std::io::Error),
}

impl From<crate::gguf::GgufError> for EngineError {
    fn from(e: crate::gguf::GgufError) -> Self {
        Self::Model(ModelError::Gguf(e))
    }
}

/// Live counters of an engine, readable from any thread.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Requests submitted and not running (queued, or preempted and waiting
    /// to resume).
    pub waiting: AtomicUsize,
    /// Sequences running.
    pub running: AtomicUsize,
    /// KV cache bytes in blocks held by running sequences.
    pub kv_used_bytes: AtomicUsize,
    /// Blocks in the KV pool.
    pub kv_total_blocks: AtomicUsize,
    /// Blocks held by running sequences.
    pub kv_used_blocks: AtomicUsize,
    /// Blocks keeping a cached prefix.
    pub kv_cached_blocks: AtomicUsize,
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_queried_tokens: AtomicU64,
    /// Prompt tokens found in the prefix cache.
    pub prefix_hit_tokens: AtomicU64,
    /// Sequences preempted to free KV blocks.
    pub preemptions: AtomicU64,
    /// Forward steps executed.
    pub steps: AtomicU64,
    /// Text spans of prompts whose KV blocks are cached, most recent first
    /// (see [`protocol::prefix`]).
    prefix_spans: Mutex<Arc<[u64]>>,
}

impl EngineStats {
    /// The latest summary of cached prompt prefixes, as text-span hashes.
    pub fn prefix_spans(&self) -> Arc<[u64]> {
        self.prefix_spans
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_prefix_spans(&self, spans: Vec<u64>) {
        *self.prefix_spans.lock().unwrap_or_else(|p| p.into_inner()) = spans.into();
    }
}

enum EngineMsg {
    Submit(Box<Submission>),
    InjectPanic,
    Abort,
}

struct Submission {
    id: SeqId,
    request: GenerateRequest,
    constraint: Option<TokenConstraint>,
    sink: EventSink,
}

/// The sending side of one request's event stream. If it is dropped before
/// the request finished (the engine crashed or was shut down), the receiver
/// gets a `Failed(Unavailable)` event rather than a silent end.
struct EventSink {
    tx: mpsc::Sender<GenerateEvent>,
    done: bool,
    /// When the last event was sent (or the request submitted).
    last_sent: Instant,
}

impl EventSink {
    fn new(tx: mpsc::Sender<GenerateEvent>) -> Self {
        Self {
            tx,
            done: false,
            last_sent: Instant::now(),
        }
    }

    fn send(&mut self, ev: GenerateEvent) {
        // Capacity covers max_tokens events, the final one and one
        // keep-alive, so this only fails when the receiver is gone; the
        // next step then cancels the sequence.
        let _ = self.tx.try_send(ev);
        self.last_sent = Instant::now();
    }

    /// Sends a keep-alive if the stream has been silent for
    /// [`KEEPALIVE_AFTER`] and its reader has caught up: a reader with
    /// events still queued needs none, and so at most one keep-alive is
    /// ever buffered.
    fn keep_alive(&mut self, now: Instant) {
        if now.duration_since(self.last_sent) >= KEEPALIVE_AFTER
            && self.tx.capacity() == self.tx.max_capacity()
        {
            let _ = self.tx.try_send(GenerateEvent::KeepAlive);
            self.last_sent = now;
        }
    }

    fn finish(&mut self, ev: GenerateEvent) {
        self.send(ev);
        self.done = true;
    }

    /// Ends the stream with `Unavailable` naming `error` (the step or
    /// the grammar failed; the request was not completed).
    fn fail_unavailable(&mut self, error: &dyn std::fmt::Display) {
        self.finish(GenerateEvent::Failed(GenerateError::Unavailable(
            error.to_string(),
        )));
    }

    fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

impl Drop for EventSink {
    fn drop(&mut self) {
        if !self.done {
            let _ = self
                .tx
                .try_send(GenerateEvent::Failed(GenerateError::Unavailable(
                    "the model worker stopped before the request finished".into(),
                )));
        }
    }
}

/// A cheap, cloneable handle to submit requests to a running engine.
#[derive(Clone)]
pub struct EngineHandle {
    inbox: SyncSender<EngineMsg>,
    stats: Arc<EngineStats>,
    next_id: Arc<AtomicU64>,
    sched_cfg: SchedulerConfig,
    frontend: Arc<ModelFrontend>,
}

impl EngineHandle {
    /// Queues a request and returns its event stream. Refused at once when
    /// the request cannot fit the model or the queue is full.
    pub fn submit(
        &self,
        request: GenerateRequest,
    ) -> Result<mpsc::Receiver<GenerateEvent>, GenerateError> {
        if request.max_tokens == Some(0) {
            return Err(admit_error(AdmitError::Empty));
        }
        let prompt_len = request.prompt_tokens.len();
        Scheduler::validate(&self.sched_cfg, prompt_len).map_err(admit_error)?;
        if let Some(m) = request.max_tokens {
            let context = self.sched_cfg.context_length;
            if prompt_len + m as usize > context {
                return Err(admit_error(AdmitError::LengthExceeded {
                    prompt: prompt_len,
                    max_new: m as usize,
                    context,
                }));
            }
        }
        let vocab = self.frontend.config.vocab_size;
        if let Some(bad) = request.prompt_tokens.iter().find(|t| **t as usize >= vocab) {
            return Err(GenerateError::InvalidRequest(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        let bias = &request.sampling.logit_bias;
        if let Some((bad, _)) = bias.iter().find(|(t, _)| *t as usize >= vocab) {
            return Err(GenerateError::InvalidRequest(format!(
                "logit_bias names token {bad}, outside the vocabulary of {vocab}"
            )));
        }
        if bias.len() > protocol::MAX_LOGIT_BIAS_TOKENS
            || bias
                .iter()
                .any(|(_, b)| b.is_nan() || b.abs() > protocol::MAX_LOGIT_BIAS)
        {
            return Err(GenerateError::InvalidRequest(format!(
                "logit_bias takes at most {} tokens, each biased by at most {}",
                protocol::MAX_LOGIT_BIAS_TOKENS,
                protocol::MAX_LOGIT_BIAS
            )));
        }
        let constraint = match &request.constraint {
            None => None,
            Some(c) => Some(
                self.frontend
                    .constraint(c)
                    .map_err(|e| GenerateError::InvalidRequest(e.to_string()))?,
            ),
        };
        let max_waiting = self.sched_cfg.max_waiting;
        let reserved = self
            .stats
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (w < max_waiting).then_some(w + 1)
            });
        if reserved.is_err() {
            return Err(admit_error(AdmitError::QueueFull(max_waiting)));
        }
        // Room for every token event, the final one and a keep-alive: the
        // engine never blocks on a slow client.
        let max_new = max_new_tokens(&self.sched_cfg, &request);
        let (tx, rx) = mpsc::channel(max_new + 2);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let msg = EngineMsg::Submit(Box::new(Submission {
            id,
            request,
            constraint,
            sink: EventSink::new(tx),
        }));
        match self.inbox.try_send(msg) {
            Ok(()) => Ok(rx),
            Err(e) => {
                self.stats.waiting.fetch_sub(1, Ordering::AcqRel);
                if let TrySendError::Full(EngineMsg::Submit(mut s))
                | TrySendError::Disconnected(EngineMsg::Submit(mut s)) = e
                {
                    s.sink.done = true;
                }
                Err(GenerateError::Unavailable(
                    "the model worker is not running".into(),
                ))
            }
        }
    }

    /// The longest sequence this engine serves, prompt plus generated
    /// tokens.
    pub fn context_length(&self) -> usize {
        self.sched_cfg.context_length
    }

    /// Tokenizer, chat template and configuration of the model.
    pub fn frontend(&self) -> &Arc<ModelFrontend> {
        &self.frontend
    }

    /// Live counters.
    pub fn stats(&self) -> &Arc<EngineStats> {
        &self.stats
    }

    /// Stops the engine at its next step (the model is being unloaded):
    /// every waiting and running request fails with `Unavailable` and the
    /// engine thread returns, freeing its KV cache; the weights go once the
    /// last handle is dropped.
    pub fn abort(&self) -> bool {
        self.inbox.try_send(EngineMsg::Abort).is_ok()
    }

    /// Fault hook for tests: the engine thread panics at its next step,
    /// with whatever requests it has in flight.
    pub fn inject_panic(&self) -> bool {
        self.inbox.try_send(EngineMsg::InjectPanic).is_ok()
    }
}

fn admit_error(e: AdmitError) -> GenerateError {
    match e {
        AdmitError::QueueFull(_) => GenerateError::Overloaded(e.to_string()),
        _ => GenerateError::InvalidRequest(e.to_string()),
    }
}

/// Context served by default, whatever the pool, when the model has it:
/// Ollama's long-standing default `num_ctx`, and what each slot of
/// llama-server gets at `-c 16384 --parallel 8`.
pub const DEFAULT_MIN_CONTEXT: usize = 2048;

/// The context length served: `ctx_size` when set (at least one KV block,
/// at most the model's). Unset, it is what the KV pool holds for each of
/// `max_running` sequences at once, at least [`DEFAULT_MIN_CONTEXT`] and at
/// most the model's: as llama-server splits `--ctx-size` over its slots, so
/// that a full batch of requests without `max_tokens` does not overcommit
/// the pool into preemptions (a longer context is one `ctx_size` away).
fn served_context(
    model: usize,
    ctx_size: Option<usize>,
    block: usize,
    pool_positions: usize,
    max_running: usize,
) -> usize {
    match ctx_size {
        Some(c) => c.clamp(block.min(model), model),
        None => {
            let share = pool_positions / max_running.max(1) / block.max(1) * block.max(1);
            share.max(DEFAULT_MIN_CONTEXT).min(model)
        }
    }
}

/// Tokens a request may generate: its `max_tokens`, or up to the end of
/// the context when it has none.
fn max_new_tokens(cfg: &SchedulerConfig, request: &GenerateRequest) -> usize {
    let room = cfg
        .context_length
        .saturating_sub(request.prompt_tokens.len());
    request.max_tokens.map_or(room, |m| (m as usize).min(room))
}

/// A request's generation state. It lives from submission to the end of
/// the stream, across preemptions; its tokens and KV blocks are the
/// scheduler's.
struct Sequence {
    prompt_len: usize,
    max_new: usize,
    generated: usize,
    ignore_eos: bool,
    sampler: Sampler,
    decoder: StreamDecoder,
    stop: StopMatcher,
    /// The grammar the output follows, if the request asked for one.
    constraint: Option<TokenConstraint>,
    /// How many alternatives to report log-probabilities of, if any.
    logprobs: Option<u8>,
    sink: EventSink,
}

impl Sequence {
    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_len as u32,
            completion_tokens: self.generated as u32,
        }
    }
}

/// One model's weights, KV pool, scheduler and sequences.
pub struct Engine {
    model: Transformer,
    frontend: Arc<ModelFrontend>,
    sched: Scheduler,
    kv: KvPool,
    /// Every accepted request, waiting or running, by id.
    seqs: HashMap<SeqId, Sequence>,
    prefixes: PrefixIndex,
    summary_at: Instant,
    keepalive_at: Instant,
    inbox: Receiver<EngineMsg>,
    stats: Arc<EngineStats>,
    scratch: Scratch,
    logits: Vec<f32>,
    panic_requested: bool,
    block_bytes: usize,
}

impl Engine {
    /// Loads a GGUF model and prepares its engine.
    pub fn load(path: &Path, cfg: &EngineConfig) -> Result<(Engine, EngineHandle), EngineError> {
        let file = GgufFile::open(path)?;
        let model = Transformer::load(&file, cfg.threads)?;
        let frontend = Arc::new(
            ModelFrontend::from_gguf(&file, model.config().clone())
                .map_err(|e| EngineError::Frontend(e.to_string()))?,
        );
        let kv = model.kv_pool(cfg.kv_budget_bytes);
        let block_bytes = model.config().kv_bytes_per_token() * kv.block_size();
        let sched_cfg = SchedulerConfig {
            max_running: cfg.max_running.max(1),
            max_waiting: cfg.max_waiting,
            max_step_tokens: cfg.max_step_tokens.max(1),
            prefill_tokens_while_decoding: cfg.prefill_tokens_while_decoding.max(1),
            block_size: kv.block_size(),
            num_blocks: kv.num_blocks(),
            watermark_blocks: SchedulerConfig::default_watermark(kv.num_blocks()),
            context_length: served_context(
                model.config().context_length,
                cfg.ctx_size,
                kv.block_size(),
                kv.num_blocks() * kv.block_size(),
                cfg.max_running,
            ),
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(cfg.max_waiting + 8);
        let stats = Arc::new(EngineStats::default());
        stats
            .kv_total_blocks
            .store(kv.num_blocks(), Ordering::Release);
        let handle = EngineHandle {
            inbox: tx,
            stats: stats.clone(),
            next_id: Arc::new(AtomicU64::new(1)),
            sched_cfg: sched_cfg.clone(),
            frontend: frontend.clone(),
        };
        let engine = Engine {
            model,
            frontend,
            sched: Scheduler::new(sched_cfg),
            kv,
            seqs: HashMap::new(),
            prefixes: PrefixIndex::new(PREFIX_INDEX_SPANS),
            summary_at: Instant::now(),
            keepalive_at: Instant::now(),
            inbox: rx,
            stats,
            scratch: Scratch::default(),
            logits: Vec::new(),
            panic_requested: false,
            block_bytes,
        };
        Ok((engine, handle))
    }

    /// Runs until every handle is dropped and all work is done.
    pub fn run(mut self) {
        loop {
            if self.sched.is_idle() {
                self.publish_prefixes();
                match self.inbox.recv_timeout(SUMMARY_EVERY) {
                    Ok(EngineMsg::Abort) => return,
                    Ok(msg) => self.accept(msg),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            loop {
                match self.inbox.try_recv() {
                    // Dropping the engine drops every request's event sink,
                    // which tells each client `Unavailable`.
                    Ok(EngineMsg::Abort) => return,
                    Ok(msg) => self.accept(msg),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        if self.sched.is_idle() {
                            return;
                        }
                        break;
                    }
                }
            }
            self.step();
            if self.summary_at.elapsed() >= SUMMARY_EVERY {
                self.publish_prefixes();
            }
            if self.keepalive_at.elapsed() >= KEEPALIVE_CHECK_EVERY {
                self.keep_alive();
            }
        }
    }

    fn accept(&mut self, msg: EngineMsg) {
        match msg {
            EngineMsg::InjectPanic => self.panic_requested = true,
            EngineMsg::Abort => {}
            EngineMsg::Submit(s) => {
                let Submission {
                    id,
                    request,
                    constraint,
                    sink,
                } = *s;
                let max_new = max_new_tokens(self.sched.config(), &request);
                let sampler =
                    Sampler::new(&request.sampling, rand::random(), &request.prompt_tokens);
                let prompt_len = request.prompt_tokens.len();
                let enqueued = self.sched.enqueue(
                    id,
                    request.prompt_tokens,
                    request.cache_salt.as_bytes(),
                    request.priority,
                );
                let mut seq = Sequence {
                    prompt_len,
                    max_new,
                    generated: 0,
                    ignore_eos: request.ignore_eos,
                    sampler,
                    decoder: StreamDecoder::default(),
                    stop: StopMatcher::new(&request.stop),
                    constraint,
                    logprobs: request.logprobs.map(|k| k.min(protocol::MAX_TOP_LOGPROBS)),
                    sink,
                };
                if let Err(e) = enqueued {
                    self.stats.waiting.fetch_sub(1, Ordering::AcqRel);
                    seq.sink.finish(GenerateEvent::Failed(admit_error(e)));
                    return;
                }
                self.record_prefixes(id, &request.prefix_spans);
                self.seqs.insert(id, seq);
            }
        }
    }

    /// Remembers which KV block each of the prompt's text spans ends in.
    fn record_prefixes(&mut self, id: SeqId, spans: &[protocol::PrefixSpan]) {
        let bs = self.kv.block_size();
        let Some(deepest) = spans.iter().map(|s| s.tokens as usize / bs).max() else {
            return;
        };
        let hashes = self.sched.chain_hashes(id, deepest).to_vec();
        for span in spans {
            // The last block fully covered by the span's text.
            let blocks = (span.tokens as usize / bs).min(hashes.len());
            if blocks > 0 {
                self.prefixes.record(span.hash, hashes[blocks - 1]);
            }
        }
    }

    fn publish_prefixes(&mut self) {
        self.summary_at = Instant::now();
        let sched = &self.sched;
        let spans = self
            .prefixes
            .summary(MAX_REPORTED_SPANS, |h| sched.is_cached(h));
        self.stats.set_prefix_spans(spans);
    }

    /// Runs one scheduler step: drop cancelled requests, plan (admit,
    /// preempt), forward, sample.
    pub fn step(&mut self) {
        if self.panic_requested {
            panic!("injected fault: model worker panic requested by a test hook");
        }
        self.drop_cancelled();
        let plan = self.sched.plan();
        self.apply_plan(&plan);
        if plan.items.is_empty() {
            return;
        }
        let mut items = Vec::with_capacity(plan.items.len());
        for it in &plan.items {
            // Every planned sequence is running.
            if let Some((tokens, blocks)) = self.sched.sequence(it.id) {
                items.push(BatchItem {
                    tokens: &tokens[it.start..it.start + it.len],
                    start_pos: it.start,
                    blocks,
                    want_logits: it.want_logits,
                });
            }
        }
        let (model, kv, scratch, logits) = (
            &self.model,
            &mut self.kv,
            &mut self.scratch,
            &mut self.logits,
        );
        let mut constrained: Vec<&mut TokenConstraint> = self
            .seqs
            .iter_mut()
            .filter(|(id, _)| plan.items.iter().any(|i| i.id == **id && i.want_logits))
            .filter_map(|(_, seq)| seq.constraint.as_mut())
            .collect();
        let result = if constrained.is_empty() {
            model.forward(&items, kv, scratch, logits)
        } else {
            // The next-token masks depend only on tokens already sampled:
            // compute them while the forward pass runs.
            std::thread::scope(|scope| {
                scope.spawn(|| {
                    for c in &mut constrained {
                        c.prepare_mask();
                    }
                });
                model.forward(&items, kv, scratch, logits)
            })
        };
        drop(items);
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = result {
            tracing::error!(error = %e, "forward pass failed; failing the step's requests");
            for it in &plan.items {
                self.sched.discard(it.id);
                if let Some(mut seq) = self.seqs.remove(&it.id) {
                    seq.sink.fail_unavailable(&e);
                }
            }
            self.publish_load();
            return;
        }
        let vocab = self.model.config().vocab_size;
        let mut finished = Vec::new();
        for (row, it) in plan.items.iter().filter(|i| i.want_logits).enumerate() {
            let Some(seq) = self.seqs.get_mut(&it.id) else {
                continue;
            };
            let logits = &mut self.logits[row * vocab..(row + 1) * vocab];
            if let Some(Err(e)) = seq.constraint.as_mut().map(|c| c.apply(logits)) {
                seq.sink.fail_unavailable(&e);
                finished.push(it.id);
                continue;
            }
            let token = seq.sampler.sample(logits);
            // `logits` now holds what the sampler drew from.
            let logprob = seq
                .logprobs
                .map(|k| token_logprob(logits, token, k, &self.frontend));
            seq.sampler.accept(token);
            seq.generated += 1;
            self.sched.append_token(it.id, token);
            if emit_token(seq, token, logprob, &self.frontend)
                || fast_forward(seq, it.id, &mut self.sched, &self.frontend)
            {
                finished.push(it.id);
            }
        }
        for id in finished {
            self.sched.remove(id);
            self.seqs.remove(&id);
        }
        self.publish_load();
    }

    /// Accounts for admissions and preemptions, and ends the sequences the
    /// pool cannot grow.
    fn apply_plan(&mut self, plan: &StepPlan) {
        let (admitted, preempted) = (plan.admitted.len(), plan.preempted.len());
        if admitted > preempted {
            self.stats
                .waiting
                .fetch_sub(admitted - preempted, Ordering::AcqRel);
        } else if preempted > admitted {
            self.stats
                .waiting
                .fetch_add(preempted - admitted, Ordering::AcqRel);
        }
        if preempted > 0 {
            tracing::debug!(?plan.preempted, "preempted to free KV blocks");
        }
        for id in &plan.exhausted {
            if let Some(mut seq) = self.seqs.remove(id) {
                tracing::warn!(
                    generated = seq.generated,
                    "a sequence filled the whole KV cache; ending it"
                );
                finish(
                    &mut seq,
                    String::new(),
                    Vec::new(),
                    Vec::new(),
                    FinishReason::Length,
                );
            }
        }
        self.publish_load();
    }

    /// Tells the readers of silent streams (queued, preempted or in a long
    /// prefill) that their requests are still held.
    fn keep_alive(&mut self) {
        let now = Instant::now();
        self.keepalive_at = now;
        for seq in self.seqs.values_mut() {
            seq.sink.keep_alive(now);
        }
    }

    fn drop_cancelled(&mut self) {
        let gone: Vec<SeqId> = self
            .seqs
            .iter()
            .filter(|(_, s)| s.sink.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            let was_running = self.sched.sequence(id).is_some();
            self.sched.remove(id);
            if let Some(mut seq) = self.seqs.remove(&id) {
                seq.sink.done = true;
                if !was_running {
                    self.stats.waiting.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
    }

    fn publish_load(&self) {
        let s = &self.stats;
        let blocks = self.sched.blocks();
        s.running.store(self.sched.running(), Ordering::Release);
        s.kv_used_blocks.store(blocks.used(), Ordering::Release);
        s.kv_cached_blocks.store(blocks.cached(), Ordering::Release);
        s.kv_used_bytes
            .store(blocks.used() * self.block_bytes, Ordering::Release);
        let c = self.sched.counters();
        s.prefix_queried_tokens
            .store(c.queried_tokens, Ordering::Release);
        s.prefix_hit_tokens.store(c.hit_tokens, Ordering::Release);
        s.preemptions.store(c.preemptions, Ordering::Release);
    }
}

/// The log-probabilities of a sampled token and of the step's `top` most
/// likely tokens, with their bytes.
fn token_logprob(
    logits: &[f32],
    token: u32,
    top: u8,
    frontend: &ModelFrontend,
) -> protocol::TokenLogprob {
    let step = crate::logprobs::step_logprobs(logits, token, usize::from(top));
    let bytes = |id: u32| frontend.tokenizer.token_bytes(id).unwrap_or_default();
    protocol::TokenLogprob {
        bytes: bytes(token),
        logprob: step.chosen,
        top: step
            .top
            .into_iter()
            .map(|(token_id, logprob)| protocol::TopLogprob {
                token_id,
                bytes: bytes(token_id),
                logprob,
            })
            .collect(),
    }
}

/// Most tokens a grammar may force into one step: they are computed in the
/// next forward pass like a short prefill.
const MAX_FORCED_PER_STEP: usize = 64;

/// Appends the tokens a sequence's grammar forces (the only valid
/// continuation) as if sampled, so that the next step computes them all
/// at once instead of one step each; returns whether the sequence is
/// finished. A forced token has probability 1 under the mask.
fn fast_forward(
    seq: &mut Sequence,
    id: SeqId,
    sched: &mut Scheduler,
    frontend: &ModelFrontend,
) -> bool {
    let Some(forced) = seq.constraint.as_mut().map(TokenConstraint::forced_tokens) else {
        return false;
    };
    for token in forced.into_iter().take(MAX_FORCED_PER_STEP) {
        let logprob = seq.logprobs.map(|k| protocol::TokenLogprob {
            bytes: frontend.tokenizer.token_bytes(token).unwrap_or_default(),
            logprob: 0.0,
            top: (k > 0)
                .then(|| protocol::TopLogprob {
                    token_id: token,
                    bytes: frontend.tokenizer.token_bytes(token).unwrap_or_default(),
                    logprob: 0.0,
                })
                .into_iter()
                .collect(),
        });
        seq.sampler.accept(token);
        seq.generated += 1;
        sched.append_token(id, token);
        if emit_token(seq, token, logprob, frontend) {
            return true;
        }
    }
    false
}

/// Streams one sampled token (with its log-probabilities, if asked for) to
/// its client; returns whether the sequence is finished.
fn emit_token(
    seq: &mut Sequence,
    token: u32,
    logprob: Option<protocol::TokenLogprob>,
    frontend: &ModelFrontend,
) -> bool {
    if !seq.ignore_eos && frontend.tokenizer.eog_ids().contains(&token) {
        finish(
            seq,
            String::new(),
            Vec::new(),
            Vec::new(),
            FinishReason::Stop,
        );
        return true;
    }
    let mut complete = false;
    if let Some(c) = seq.constraint.as_mut() {
        if let Err(e) = c.consume(token) {
            seq.sink.fail_unavailable(&e);
            return true;
        }
        complete = c.is_complete();
    }
    let logprobs: Vec<_> = logprob.into_iter().collect();
    let piece = seq.decoder.push(&frontend.tokenizer, token);
    let out = seq.stop.push(&piece);
    if out.stopped {
        if !out.emit.is_empty() {
            seq.sink.send(GenerateEvent::Token {
                text: out.emit,
                token_ids: vec![token],
                logprobs,
            });
        }
        let usage = seq.usage();
        seq.sink.finish(GenerateEvent::Finished {
            reason: FinishReason::Stop,
            usage,
        });
        return true;
    }
    if complete {
        finish(seq, out.emit, vec![token], logprobs, FinishReason::Stop);
        return true;
    }
    if seq.generated < seq.max_new {
        seq.sink.send(GenerateEvent::Token {
            text: out.emit,
            token_ids: vec![token],
            logprobs,
        });
        return false;
    }
    finish(seq, out.emit, vec![token], logprobs, FinishReason::Length);
    true
}

/// Ends a stream: flushes the text the detokenizer and the stop matcher
/// held back (unless it completes a stop string, which then is the
/// reason), sends it with `token_ids` and their `logprobs`, then `Finished`.
fn finish(
    seq: &mut Sequence,
    mut text: String,
    token_ids: Vec<u32>,
    logprobs: Vec<protocol::TokenLogprob>,
    reason: FinishReason,
) {
    let tail = seq.decoder.finish();
    let out = seq.stop.push(&tail);
    text.push_str(&out.emit);
    let reason = if out.stopped {
        FinishReason::Stop
    } else {
        text.push_str(&seq.stop.flush());
        reason
    };
    if !text.is_empty() || !token_ids.is_empty() {
        seq.sink.send(GenerateEvent::Token {
            text,
            token_ids,
            logprobs,
        });
    }
    let usage = seq.usage();
    seq.sink.finish(GenerateEvent::Finished { reason, usage });
}

/// Loads a model and runs its engine on a new named thread.
pub fn spawn_engine(
    path: &Path,
    cfg: &EngineConfig,
) -> Result<(EngineHandle, std::thread::JoinHandle<()>), EngineError> {
    let (engine, handle) = Engine::load(path, cfg)?;
    let name = format!(
        "engine-{}",
        path.file_stem().and_then(|s| s.to_str()).unwrap_or("model")
    );
    let join = std::thread::Builder::new()
        .name(name)
        .spawn(move || engine.run())
        .map_err(EngineError::Thread)?;
    Ok((handle, join))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_context_defaults_to_a_share_of_the_pool_within_bounds() {
        // SmolLM2 on 512 MiB: 23,296 positions over 16 sequences is below
        // the floor, so 2,048 of the model's 8,192.
        assert_eq!(served_context(8192, None, 16, 23_296, 16), 2048);
        // Qwen2.5 0.5B on 512 MiB: 43,690 positions, 2,730 each, in blocks.
        assert_eq!(served_context(32_768, None, 16, 43_690, 16), 2720);
        // A large pool serves up to the model's context.
        assert_eq!(served_context(32_768, None, 16, 1 << 20, 16), 32_768);
        // In between: the pool's share, whole blocks.
        assert_eq!(served_context(32_768, None, 16, 16 * 6008 + 5, 16), 6000);
        // A model shorter than the floor serves its own.
        assert_eq!(served_context(1024, None, 16, 100, 16), 1024);
        // ctx_size wins, within [one block, the model's].
        assert_eq!(served_context(8192, Some(64), 16, 100, 16), 64);
        assert_eq!(served_context(8192, Some(1 << 20), 16, 100, 16), 8192);
        assert_eq!(served_context(8192, Some(3), 16, 100, 16), 16);
    }
}
