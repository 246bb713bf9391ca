//! The continuous-batching engine: one dedicated thread per loaded model,
//! fed by a bounded channel, answering each request on its own event channel
//! (the mistral.rs shape).
//!
//! [`Engine::load`] returns the engine and an [`EngineHandle`]; the engine's
//! [`Engine::run`] loop is meant for a thread of its own. Submitting never
//! blocks: a full queue is refused at once with `Overloaded`. Dropping a
//! request's event receiver cancels it; its slot and KV cache are freed at the
//! next step.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;

use protocol::{FinishReason, GenerateError, GenerateEvent, GenerateRequest, Usage};
use tokio::sync::mpsc;

use crate::frontend::ModelFrontend;
use crate::gguf::GgufFile;
use crate::model::{BatchItem, KvCache, LlamaModel, ModelError, Scratch};
use crate::sampling::Sampler;
use crate::scheduler::{AdmitError, Scheduler, SchedulerConfig, SeqId};
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
    /// KV cache budget in bytes for all running sequences of this model.
    pub kv_budget_bytes: usize,
    /// Threads the model's matmuls and attention run on.
    pub threads: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_running: 16,
            max_waiting: 64,
            max_step_tokens: 256,
            kv_budget_bytes: 512 << 20,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
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
}

impl From<crate::gguf::GgufError> for EngineError {
    fn from(e: crate::gguf::GgufError) -> Self {
        Self::Model(ModelError::Gguf(e))
    }
}

/// Live counters of an engine, readable from any thread.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Requests submitted and not yet running.
    pub waiting: AtomicUsize,
    /// Sequences running.
    pub running: AtomicUsize,
    /// KV cache bytes reserved by running sequences.
    pub kv_used_bytes: AtomicUsize,
    /// Forward steps executed.
    pub steps: AtomicU64,
}

enum EngineMsg {
    Submit(Box<Submission>),
    InjectPanic,
    Abort,
}

struct Submission {
    id: SeqId,
    request: GenerateRequest,
    sink: EventSink,
}

/// The sending side of one request's event stream. If it is dropped before
/// the request finished (the engine crashed or was shut down), the receiver
/// gets a `Failed(Unavailable)` event rather than a silent end.
struct EventSink {
    tx: mpsc::Sender<GenerateEvent>,
    done: bool,
}

impl EventSink {
    fn send(&mut self, ev: GenerateEvent) {
        // Capacity covers max_tokens events plus the final one, so this only
        // fails when the receiver is gone; the next step then cancels the sequence.
        let _ = self.tx.try_send(ev);
    }

    fn finish(&mut self, ev: GenerateEvent) {
        self.send(ev);
        self.done = true;
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
        Scheduler::validate(
            &self.sched_cfg,
            request.prompt_tokens.len(),
            request.max_tokens as usize,
        )
        .map_err(admit_error)?;
        let vocab = self.frontend.config.vocab_size;
        if let Some(bad) = request.prompt_tokens.iter().find(|t| **t as usize >= vocab) {
            return Err(GenerateError::InvalidRequest(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
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
        let (tx, rx) = mpsc::channel(request.max_tokens as usize + 2);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let msg = EngineMsg::Submit(Box::new(Submission {
            id,
            request,
            sink: EventSink { tx, done: false },
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

struct Sequence {
    id: SeqId,
    tokens: Vec<u32>,
    prompt_len: usize,
    max_new: usize,
    ignore_eos: bool,
    sampler: Sampler,
    decoder: StreamDecoder,
    stop: StopMatcher,
    sink: EventSink,
    cache: KvCache,
}

impl Sequence {
    fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_len as u32,
            completion_tokens: self.generated() as u32,
        }
    }
}

/// One model's weights, scheduler and running sequences.
pub struct Engine {
    model: LlamaModel,
    frontend: Arc<ModelFrontend>,
    sched: Scheduler,
    waiting: HashMap<SeqId, Submission>,
    running: Vec<Sequence>,
    inbox: Receiver<EngineMsg>,
    stats: Arc<EngineStats>,
    scratch: Scratch,
    logits: Vec<f32>,
    panic_requested: bool,
    kv_bytes_per_token: usize,
}

impl Engine {
    /// Loads a GGUF model and prepares its engine.
    pub fn load(path: &Path, cfg: &EngineConfig) -> Result<(Engine, EngineHandle), EngineError> {
        let file = GgufFile::open(path)?;
        let model = LlamaModel::load(&file, cfg.threads)?;
        let frontend = Arc::new(
            ModelFrontend::from_gguf(&file, model.config().clone())
                .map_err(|e| EngineError::Frontend(e.to_string()))?,
        );
        let kv_bytes_per_token = model.config().kv_bytes_per_token();
        let sched_cfg = SchedulerConfig {
            max_running: cfg.max_running.max(1),
            max_waiting: cfg.max_waiting,
            max_step_tokens: cfg.max_step_tokens.max(1),
            kv_budget_tokens: cfg.kv_budget_bytes / kv_bytes_per_token,
            context_length: model.config().context_length,
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(cfg.max_waiting + 8);
        let stats = Arc::new(EngineStats::default());
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
            waiting: HashMap::new(),
            running: Vec::new(),
            inbox: rx,
            stats,
            scratch: Scratch::default(),
            logits: Vec::new(),
            panic_requested: false,
            kv_bytes_per_token,
        };
        Ok((engine, handle))
    }

    /// Runs until every handle is dropped and all work is done.
    pub fn run(mut self) {
        loop {
            if self.sched.is_idle() {
                match self.inbox.recv() {
                    Ok(EngineMsg::Abort) => return,
                    Ok(msg) => self.accept(msg),
                    Err(_) => return,
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
        }
    }

    fn accept(&mut self, msg: EngineMsg) {
        match msg {
            EngineMsg::InjectPanic => self.panic_requested = true,
            EngineMsg::Abort => {}
            EngineMsg::Submit(s) => {
                let s = *s;
                let (prompt, max_new) =
                    (s.request.prompt_tokens.len(), s.request.max_tokens as usize);
                match self.sched.enqueue(s.id, prompt, max_new) {
                    Ok(()) => {
                        self.waiting.insert(s.id, s);
                    }
                    Err(e) => {
                        self.stats.waiting.fetch_sub(1, Ordering::AcqRel);
                        let mut sink = s.sink;
                        sink.finish(GenerateEvent::Failed(admit_error(e)));
                    }
                }
            }
        }
    }

    /// Runs one scheduler step: drop cancelled requests, admit, forward, sample.
    pub fn step(&mut self) {
        if self.panic_requested {
            panic!("injected fault: model worker panic requested by a test hook");
        }
        self.drop_cancelled();
        let plan = self.sched.plan();
        for id in &plan.admitted {
            if let Some(s) = self.waiting.remove(id) {
                self.stats.waiting.fetch_sub(1, Ordering::AcqRel);
                self.start(s);
            }
        }
        self.publish_load();
        if plan.items.is_empty() {
            return;
        }
        let by_id: HashMap<SeqId, (usize, usize, bool)> = plan
            .items
            .iter()
            .map(|i| (i.id, (i.start, i.len, i.want_logits)))
            .collect();
        let mut order = Vec::with_capacity(plan.items.len());
        let mut items = Vec::with_capacity(plan.items.len());
        for (idx, seq) in self.running.iter_mut().enumerate() {
            if let Some(&(start, len, want_logits)) = by_id.get(&seq.id) {
                order.push((idx, want_logits));
                items.push(BatchItem {
                    tokens: &seq.tokens[start..start + len],
                    start_pos: start,
                    cache: &mut seq.cache,
                    want_logits,
                });
            }
        }
        let result = self
            .model
            .forward(&mut items, &mut self.scratch, &mut self.logits);
        drop(items);
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = result {
            tracing::error!(error = %e, "forward pass failed; failing the step's requests");
            let failed: Vec<usize> = order.iter().map(|(i, _)| *i).collect();
            self.fail_indices(&failed, &e.to_string());
            return;
        }
        let vocab = self.model.config().vocab_size;
        let mut finished = Vec::new();
        for (row, (idx, _)) in order.iter().filter(|(_, w)| *w).enumerate() {
            let logits = &mut self.logits[row * vocab..(row + 1) * vocab];
            let seq = &mut self.running[*idx];
            let token = seq.sampler.sample(logits);
            seq.sampler.accept(token);
            seq.tokens.push(token);
            if emit_token(seq, token, &self.frontend) {
                finished.push(*idx);
            }
        }
        self.remove_indices(finished);
    }

    fn start(&mut self, s: Submission) {
        let Submission { id, request, sink } = s;
        let prompt_len = request.prompt_tokens.len();
        let max_new = request.max_tokens as usize;
        let mut tokens = request.prompt_tokens;
        tokens.reserve(max_new);
        let sampler = Sampler::new(&request.sampling, rand::random(), &tokens);
        self.running.push(Sequence {
            id,
            tokens,
            prompt_len,
            max_new,
            ignore_eos: request.ignore_eos,
            sampler,
            decoder: StreamDecoder::default(),
            stop: StopMatcher::new(&request.stop),
            sink,
            cache: KvCache::new(self.model.config(), prompt_len + max_new),
        });
    }

    fn drop_cancelled(&mut self) {
        let cancelled: Vec<SeqId> = self
            .waiting
            .values()
            .filter(|s| s.sink.is_closed())
            .map(|s| s.id)
            .collect();
        for id in cancelled {
            if let Some(mut s) = self.waiting.remove(&id) {
                s.sink.done = true;
                self.sched.remove(id);
                self.stats.waiting.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let gone: Vec<usize> = (0..self.running.len())
            .filter(|i| self.running[*i].sink.is_closed())
            .collect();
        for &i in &gone {
            self.running[i].sink.done = true;
        }
        self.remove_indices(gone);
    }

    fn fail_indices(&mut self, indices: &[usize], reason: &str) {
        for &i in indices {
            self.running[i]
                .sink
                .finish(GenerateEvent::Failed(GenerateError::Unavailable(
                    reason.to_string(),
                )));
        }
        self.remove_indices(indices.to_vec());
    }

    fn remove_indices(&mut self, mut indices: Vec<usize>) {
        indices.sort_unstable();
        indices.dedup();
        for i in indices.into_iter().rev() {
            let seq = self.running.swap_remove(i);
            self.sched.remove(seq.id);
        }
        self.publish_load();
    }

    fn publish_load(&self) {
        self.stats
            .running
            .store(self.running.len(), Ordering::Release);
        self.stats.kv_used_bytes.store(
            self.sched.kv_reserved() * self.kv_bytes_per_token,
            Ordering::Release,
        );
    }
}

/// Streams one sampled token to its client; returns whether the sequence is finished.
fn emit_token(seq: &mut Sequence, token: u32, frontend: &ModelFrontend) -> bool {
    let eog = !seq.ignore_eos && frontend.tokenizer.eog_ids().contains(&token);
    if eog {
        let tail = seq.decoder.finish();
        let mut text = seq.stop.push(&tail).emit;
        text.push_str(&seq.stop.flush());
        if !text.is_empty() {
            seq.sink.send(GenerateEvent::Token {
                text,
                token_ids: Vec::new(),
            });
        }
        let usage = seq.usage();
        seq.sink.finish(GenerateEvent::Finished {
            reason: FinishReason::Stop,
            usage,
        });
        return true;
    }
    let piece = seq.decoder.push(&frontend.tokenizer, token);
    let out = seq.stop.push(&piece);
    if out.stopped {
        if !out.emit.is_empty() {
            seq.sink.send(GenerateEvent::Token {
                text: out.emit,
                token_ids: vec![token],
            });
        }
        let usage = seq.usage();
        seq.sink.finish(GenerateEvent::Finished {
            reason: FinishReason::Stop,
            usage,
        });
        return true;
    }
    let mut text = out.emit;
    if seq.generated() < seq.max_new {
        seq.sink.send(GenerateEvent::Token {
            text,
            token_ids: vec![token],
        });
        return false;
    }
    let tail = seq.decoder.finish();
    let tail_out = seq.stop.push(&tail);
    text.push_str(&tail_out.emit);
    let reason = if tail_out.stopped {
        FinishReason::Stop
    } else {
        text.push_str(&seq.stop.flush());
        FinishReason::Length
    };
    seq.sink.send(GenerateEvent::Token {
        text,
        token_ids: vec![token],
    });
    let usage = seq.usage();
    seq.sink.finish(GenerateEvent::Finished { reason, usage });
    true
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
        .map_err(|e| EngineError::Frontend(format!("cannot start the engine thread: {e}")))?;
    Ok((handle, join))
}
