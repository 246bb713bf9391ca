//! The node's public face: start the actor tree, submit requests, read status.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use backends::engine::EngineConfig;
use backends::frontend::ModelFrontend;
use protocol::{GenerateError, GenerateEvent, GenerateRequest};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorRef};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::fl_worker::{FlMsg, FlShared};
use crate::onnx_worker::{OnnxSlot, OnnxSpec};
use crate::restart::RestartBudget;
use crate::scheduler::SchedulerMsg;
use crate::supervisor::{NodeArgs, NodeMsg, NodeSupervisor};
use protocol::fl::{FlTrainRequest, FlTrainResponse};

/// Longest local training of one federated round (the leader's round
/// deadline is normally much shorter).
const FL_ROUND_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// Times a round is offered to a job's worker that is being restarted.
const FL_RESTART_POLLS: usize = 40;

/// How long a call into the actor tree may take before it is reported as an error.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A model to serve.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    /// Name clients use.
    pub name: String,
    /// GGUF file.
    pub path: PathBuf,
    /// Engine limits (queue, batch, KV budget).
    pub engine: EngineConfig,
}

/// Lifecycle of a model on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "reason")]
pub enum ModelState {
    /// Weights are loading.
    Loading,
    /// Serving.
    Ready,
    /// The worker crashed and is being restarted.
    Restarting,
    /// Out of restarts or unloadable; not serving.
    Failed(String),
}

impl std::fmt::Display for ModelState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelState::Failed(reason) => write!(f, "failed: {reason}"),
            other => f.write_str(other.label()),
        }
    }
}

impl ModelState {
    /// A short word for logs and tables.
    pub fn label(&self) -> &'static str {
        match self {
            ModelState::Loading => "loading",
            ModelState::Ready => "ready",
            ModelState::Restarting => "restarting",
            ModelState::Failed(_) => "failed",
        }
    }
}

/// State and load of one model.
#[derive(Debug, Clone, Serialize)]
pub struct ModelStatus {
    /// Model name.
    pub name: String,
    /// Lifecycle state.
    pub state: ModelState,
    /// Worker restarts so far.
    pub restarts: usize,
    /// Requests waiting for a slot.
    pub waiting: usize,
    /// Sequences running.
    pub running: usize,
    /// KV cache bytes in blocks held by running sequences.
    pub kv_used_bytes: usize,
    /// The KV cache and prefix cache figures, once the model is loaded.
    pub kv: Option<protocol::KvCacheReport>,
}

/// Errors of node operations other than generation itself.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The actor tree could not start.
    #[error("node failed to start: {0}")]
    Start(String),
    /// The actor tree did not answer in time.
    #[error("node did not answer: {0}")]
    NoAnswer(String),
    /// The model is unknown here.
    #[error("unknown model: {0}")]
    UnknownModel(String),
    /// The model could not be loaded or unloaded.
    #[error("model {name}: {reason}")]
    Model {
        /// Model name.
        name: String,
        /// What went wrong.
        reason: String,
    },
    /// The model did not become ready in time.
    #[error("model {name} is not ready ({state})")]
    NotReady {
        /// Model name.
        name: String,
        /// How long we waited.
        waited: Duration,
        /// Its last state.
        state: String,
    },
}

/// A running node. Models can be loaded and unloaded while it serves;
/// `Node` is shared between tasks behind an `Arc`.
pub struct Node {
    supervisor: ActorRef<NodeMsg>,
    /// Scheduler of every model, by name. Never held across an await.
    schedulers: RwLock<HashMap<String, ActorRef<SchedulerMsg>>>,
    /// Slot of every ONNX model, by name. Never held across an await.
    onnx: RwLock<HashMap<String, Arc<OnnxSlot>>>,
    join: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

async fn call<M, R>(
    actor: &ActorRef<M>,
    build: impl FnOnce(ractor::RpcReplyPort<R>) -> M,
) -> Result<R, NodeError>
where
    M: ractor::Message,
    R: Send + 'static,
{
    match actor.call(build, Some(CALL_TIMEOUT)).await {
        Ok(CallResult::Success(r)) => Ok(r),
        Ok(CallResult::Timeout) => Err(NodeError::NoAnswer("timed out".into())),
        Ok(CallResult::SenderError) => Err(NodeError::NoAnswer("reply dropped".into())),
        Err(e) => Err(NodeError::NoAnswer(e.to_string())),
    }
}

impl Node {
    /// Starts the actor tree and loads every model. A model that fails to
    /// load is reported `Failed` while the others serve.
    pub async fn start(models: Vec<ModelSpec>, budget: RestartBudget) -> Result<Node, NodeError> {
        let args = NodeArgs { models, budget };
        let (supervisor, join) = Actor::spawn(None, NodeSupervisor, args)
            .await
            .map_err(|e| NodeError::Start(e.to_string()))?;
        let schedulers = call(&supervisor, NodeMsg::Schedulers)
            .await?
            .into_iter()
            .collect();
        Ok(Node {
            supervisor,
            schedulers: RwLock::new(schedulers),
            onnx: RwLock::new(HashMap::new()),
            join: Mutex::new(Some(join)),
        })
    }

    /// A copy of the scheduler map's entry for `model` (the lock is released
    /// before returning).
    fn lookup(&self, model: &str) -> Option<ActorRef<SchedulerMsg>> {
        let map = self.schedulers.read().unwrap_or_else(|p| p.into_inner());
        map.get(model).cloned()
    }

    fn scheduler(&self, model: &str) -> Result<ActorRef<SchedulerMsg>, GenerateError> {
        self.lookup(model)
            .ok_or_else(|| GenerateError::UnknownModel(model.to_string()))
    }

    fn onnx_slot(&self, model: &str) -> Option<Arc<OnnxSlot>> {
        let map = self.onnx.read().unwrap_or_else(|p| p.into_inner());
        map.get(model).cloned()
    }

    /// Names of the models present (loading, ready, restarting or failed),
    /// LLMs and ONNX models, sorted.
    pub fn models(&self) -> Vec<String> {
        let mut names: Vec<String> = {
            let map = self.schedulers.read().unwrap_or_else(|p| p.into_inner());
            map.keys().cloned().collect()
        };
        let onnx = self.onnx.read().unwrap_or_else(|p| p.into_inner());
        names.extend(onnx.keys().cloned());
        names.sort();
        names
    }

    /// Starts serving an ONNX model: its worker starts and the session
    /// loads in the background (the model reports `Loading` until then).
    /// Loading a name already present is a no-op.
    pub async fn load_onnx(&self, spec: OnnxSpec) -> Result<(), NodeError> {
        if self.onnx_slot(&spec.name).is_some() || self.lookup(&spec.name).is_some() {
            return Ok(());
        }
        let name = spec.name.clone();
        let slot = call(&self.supervisor, |r| NodeMsg::LoadOnnx(spec, r))
            .await?
            .map_err(|reason| NodeError::Model {
                name: name.clone(),
                reason,
            })?;
        let mut map = self.onnx.write().unwrap_or_else(|p| p.into_inner());
        map.insert(name, slot);
        Ok(())
    }

    /// Runs an ONNX model on `inputs` (queued in its dynamic batcher).
    /// Dropping the future withdraws the request if its batch has not
    /// started.
    pub async fn infer(
        &self,
        model: &str,
        inputs: Vec<protocol::NamedTensor>,
    ) -> Result<Vec<protocol::NamedTensor>, GenerateError> {
        use backends::onnx::{OnnxError, Refused};
        let Some(slot) = self.onnx_slot(model) else {
            return Err(if self.lookup(model).is_some() {
                GenerateError::InvalidRequest(format!(
                    "model {model} is a language model, not an ONNX model"
                ))
            } else {
                GenerateError::UnknownModel(model.to_string())
            });
        };
        let server = slot
            .server()
            .map_err(|state| GenerateError::Unavailable(format!("model {model} is {state}")))?;
        server.infer(inputs).await.map_err(|e| match e {
            OnnxError::Input(e) => GenerateError::InvalidRequest(e.to_string()),
            OnnxError::Refused(r @ Refused::QueueFull(_)) => {
                GenerateError::Overloaded(r.to_string())
            }
            OnnxError::Refused(r @ Refused::TooManyRows { .. }) => {
                GenerateError::InvalidRequest(r.to_string())
            }
            OnnxError::Run(m) => {
                GenerateError::InvalidRequest(format!("the model failed on these inputs: {m}"))
            }
            other => GenerateError::Unavailable(other.to_string()),
        })
    }

    /// Starts serving a new model: its scheduler and worker start and the
    /// weights load in the background (the model reports `Loading` until
    /// then; see [`Node::wait_ready`]). Loading a name already present is a
    /// no-op.
    pub async fn load(&self, spec: ModelSpec) -> Result<(), NodeError> {
        if self.lookup(&spec.name).is_some() {
            return Ok(());
        }
        let name = spec.name.clone();
        let sched = call(&self.supervisor, |r| NodeMsg::Load(spec, r))
            .await?
            .map_err(|reason| NodeError::Model {
                name: name.clone(),
                reason,
            })?;
        let mut map = self.schedulers.write().unwrap_or_else(|p| p.into_inner());
        map.insert(name, sched);
        Ok(())
    }

    /// Stops serving a model: new requests get `UnknownModel` at once,
    /// requests in flight fail with `Unavailable`, and the worker and its
    /// weights are freed.
    pub async fn unload(&self, name: &str) -> Result<(), NodeError> {
        let removed = {
            let mut map = self.schedulers.write().unwrap_or_else(|p| p.into_inner());
            map.remove(name).is_some()
        } || {
            let mut map = self.onnx.write().unwrap_or_else(|p| p.into_inner());
            map.remove(name).is_some()
        };
        if !removed {
            return Err(NodeError::UnknownModel(name.to_string()));
        }
        let name_owned = name.to_string();
        call(&self.supervisor, |r| NodeMsg::Unload(name_owned, r)).await?;
        Ok(())
    }

    /// Submits a request; returns its event stream. Dropping the receiver cancels it.
    pub async fn generate(
        &self,
        model: &str,
        request: GenerateRequest,
    ) -> Result<mpsc::Receiver<GenerateEvent>, GenerateError> {
        let sched = self.scheduler(model)?;
        match sched
            .call(|r| SchedulerMsg::Generate(request, r), Some(CALL_TIMEOUT))
            .await
        {
            Ok(CallResult::Success(answer)) => answer,
            _ => Err(GenerateError::Unavailable(format!(
                "model {model} did not answer"
            ))),
        }
    }

    /// Tokenizer and chat template of a loaded model.
    pub async fn frontend(&self, model: &str) -> Result<Arc<ModelFrontend>, GenerateError> {
        let sched = self.scheduler(model)?;
        match call(&sched, SchedulerMsg::Frontend).await {
            Ok(Some(f)) => Ok(f),
            _ => Err(GenerateError::Unavailable(format!(
                "model {model} is not loaded"
            ))),
        }
    }

    /// State and load of every model, in name order.
    pub async fn status(&self) -> Vec<ModelStatus> {
        let scheds: Vec<(String, ActorRef<SchedulerMsg>)> = {
            let map = self.schedulers.read().unwrap_or_else(|p| p.into_inner());
            map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let mut out = Vec::with_capacity(scheds.len());
        for (_, sched) in scheds {
            if let Ok(s) = call(&sched, SchedulerMsg::Status).await {
                out.push(s);
            }
        }
        {
            let onnx = self.onnx.read().unwrap_or_else(|p| p.into_inner());
            out.extend(onnx.values().map(|slot| slot.status()));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// State of one model.
    pub async fn model_status(&self, model: &str) -> Result<ModelStatus, NodeError> {
        if let Some(slot) = self.onnx_slot(model) {
            return Ok(slot.status());
        }
        let sched = self
            .lookup(model)
            .ok_or_else(|| NodeError::UnknownModel(model.to_string()))?;
        call(&sched, SchedulerMsg::Status).await
    }

    /// Waits until a model is ready, failing early if it failed.
    pub async fn wait_ready(&self, model: &str, timeout: Duration) -> Result<(), NodeError> {
        let start = Instant::now();
        loop {
            let s = self.model_status(model).await?;
            match s.state {
                ModelState::Ready => return Ok(()),
                ModelState::Failed(_) => {}
                _ if start.elapsed() < timeout => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                _ => {}
            }
            return Err(NodeError::NotReady {
                name: model.to_string(),
                waited: start.elapsed(),
                state: s.state.to_string(),
            });
        }
    }

    /// Trains one round of a federated job on this node, on the job's
    /// [`FlWorker`](crate::fl_worker::FlWorker) (started on first use,
    /// restarted by the supervisor if it crashes).
    pub async fn train_round(
        &self,
        shared: &Arc<FlShared>,
        req: FlTrainRequest,
    ) -> FlTrainResponse {
        // A worker that just crashed may still be listed until the
        // supervisor has handled its failure and restarted it: ask again.
        for _ in 0..FL_RESTART_POLLS {
            let worker = match self.fl_worker(&req.job, shared).await {
                Ok(w) => w,
                Err(e) => return FlTrainResponse::Failed(e.to_string()),
            };
            let req = req.clone();
            match worker
                .call(|r| FlMsg::Train(Box::new(req), r), Some(FL_ROUND_TIMEOUT))
                .await
            {
                Ok(CallResult::Success(answer)) => return answer,
                Ok(CallResult::Timeout) => {
                    return FlTrainResponse::Failed("local training timed out".into())
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        FlTrainResponse::Failed("the federated worker is not running".into())
    }

    /// Fault hook for tests: the next round of `job` panics in training.
    pub async fn inject_fl_panic(&self, job: &str, shared: &Arc<FlShared>) -> bool {
        match self.fl_worker(job, shared).await {
            Ok(w) => w.cast(FlMsg::InjectPanic).is_ok(),
            Err(_) => false,
        }
    }

    async fn fl_worker(
        &self,
        job: &str,
        shared: &Arc<FlShared>,
    ) -> Result<ActorRef<FlMsg>, NodeError> {
        let job = job.to_string();
        let shared = shared.clone();
        call(&self.supervisor, |reply| NodeMsg::FlWorker {
            job,
            shared,
            reply,
        })
        .await?
        .map_err(NodeError::NoAnswer)
    }

    /// Fault hook for tests: the model's engine thread (or an ONNX model's
    /// batching thread) panics at its next step.
    pub fn inject_worker_panic(&self, model: &str) -> bool {
        if let Some(slot) = self.onnx_slot(model) {
            return slot.server().map(|s| s.inject_panic()).is_ok();
        }
        self.lookup(model)
            .is_some_and(|s| s.cast(SchedulerMsg::InjectPanic).is_ok())
    }

    /// Stops every model and the supervisor, and waits for them (bounded).
    /// Usable through a shared reference; later calls return at once.
    pub async fn stop(&self) {
        let _ = self.supervisor.cast(NodeMsg::Shutdown);
        let join = self.join.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(join) = join {
            let _ = tokio::time::timeout(CALL_TIMEOUT, join).await;
        }
    }

    /// Stops every model and the supervisor, and waits for them.
    pub async fn shutdown(self) {
        self.stop().await;
    }
}
