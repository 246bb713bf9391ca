//! BatchScheduler: the front door of one model. It validates and admits
//! requests (a full queue is refused at once), routes them to the live
//! worker's engine, and answers with a clear error while the worker restarts
//! or after the model failed. Step planning itself (continuous batching) is
//! the pure `backends::scheduler`, run on the worker's engine thread so that
//! planning and compute never pay a message hop per step.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use backends::engine::{EngineHandle, EngineStats};
use backends::frontend::ModelFrontend;
use protocol::{GenerateError, GenerateEvent, GenerateRequest, KvCacheReport};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::mpsc;

use crate::node::{ModelState, ModelStatus};

/// The answer to a generate call: the request's event stream, or why it was refused.
pub type GenerateReply = Result<mpsc::Receiver<GenerateEvent>, GenerateError>;

/// Messages to a BatchScheduler.
pub enum SchedulerMsg {
    /// Submit a request.
    Generate(GenerateRequest, RpcReplyPort<GenerateReply>),
    /// A worker finished loading and serves through this handle.
    WorkerReady(EngineHandle),
    /// The worker died; it is being restarted.
    WorkerDown(String),
    /// The model is out of restarts (or could not load) and stays down.
    ModelFailed(String),
    /// Current state and load.
    Status(RpcReplyPort<ModelStatus>),
    /// Tokenizer and chat template of the model, once loaded.
    Frontend(RpcReplyPort<Option<Arc<ModelFrontend>>>),
    /// Fault hook for tests: make the worker's engine panic.
    InjectPanic,
    /// The model is being unloaded: stop the engine, failing its requests.
    Abort,
}

/// Startup arguments.
pub struct SchedulerArgs {
    /// Model name.
    pub name: String,
}

/// The scheduler actor.
pub struct BatchScheduler;

/// A scheduler's state.
pub struct SchedulerState {
    name: String,
    state: ModelState,
    handle: Option<EngineHandle>,
    restarts: usize,
}

impl Actor for BatchScheduler {
    type Msg = SchedulerMsg;
    type State = SchedulerState;
    type Arguments = SchedulerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: SchedulerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(SchedulerState {
            name: args.name,
            state: ModelState::Loading,
            handle: None,
            restarts: 0,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SchedulerMsg::Generate(req, reply) => {
                let answer = match (&st.state, &st.handle) {
                    (ModelState::Ready, Some(h)) => h.submit(req),
                    (ModelState::Failed(reason), _) => Err(GenerateError::Unavailable(format!(
                        "model {} failed: {reason}",
                        st.name
                    ))),
                    _ => Err(GenerateError::Unavailable(format!(
                        "model {} is {}",
                        st.name,
                        st.state.label()
                    ))),
                };
                let _ = reply.send(answer);
            }
            SchedulerMsg::WorkerReady(handle) => {
                st.handle = Some(handle);
                st.state = ModelState::Ready;
            }
            SchedulerMsg::WorkerDown(reason) => {
                tracing::warn!(model = %st.name, %reason, "model worker down, restarting");
                st.handle = None;
                st.restarts += 1;
                st.state = ModelState::Restarting;
            }
            SchedulerMsg::ModelFailed(reason) => {
                tracing::error!(model = %st.name, %reason, "model failed");
                st.handle = None;
                st.state = ModelState::Failed(reason);
            }
            SchedulerMsg::Status(reply) => {
                let (waiting, running, kv_used_bytes, kv) = match &st.handle {
                    Some(h) => {
                        let s = h.stats();
                        (
                            s.waiting.load(Ordering::Acquire),
                            s.running.load(Ordering::Acquire),
                            s.kv_used_bytes.load(Ordering::Acquire),
                            Some(kv_report(s)),
                        )
                    }
                    None => (0, 0, 0, None),
                };
                let _ = reply.send(ModelStatus {
                    name: st.name.clone(),
                    state: st.state.clone(),
                    restarts: st.restarts,
                    waiting,
                    running,
                    kv_used_bytes,
                    kv,
                });
            }
            SchedulerMsg::Frontend(reply) => {
                let _ = reply.send(st.handle.as_ref().map(|h| h.frontend().clone()));
            }
            SchedulerMsg::InjectPanic => {
                if let Some(h) = &st.handle {
                    h.inject_panic();
                }
            }
            SchedulerMsg::Abort => {
                if let Some(h) = &st.handle {
                    h.abort();
                }
            }
        }
        Ok(())
    }
}

/// The engine's KV figures as reported in heartbeats.
fn kv_report(s: &EngineStats) -> KvCacheReport {
    let count = |a: &std::sync::atomic::AtomicUsize| {
        u32::try_from(a.load(Ordering::Acquire)).unwrap_or(u32::MAX)
    };
    KvCacheReport {
        total_blocks: count(&s.kv_total_blocks),
        used_blocks: count(&s.kv_used_blocks),
        cached_blocks: count(&s.kv_cached_blocks),
        queried_tokens: s.prefix_queried_tokens.load(Ordering::Acquire),
        hit_tokens: s.prefix_hit_tokens.load(Ordering::Acquire),
        preemptions: s.preemptions.load(Ordering::Acquire),
        prefix_spans: s.prefix_spans().to_vec(),
    }
}
