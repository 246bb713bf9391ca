//! NodeSupervisor: the root of a node's actor tree. It starts a scheduler and
//! a worker per language model, a worker per ONNX model, and a
//! federated-learning worker per job, and restarts a failed worker within
//! its restart budget.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::rpc::CallResult;
use ractor::{
    Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, SupervisionEvent,
};

use crate::fl_worker::{FlMsg, FlShared, FlWorker, FlWorkerArgs};
use crate::node::ModelSpec;
use crate::onnx_worker::{OnnxMsg, OnnxSlot, OnnxSpec, OnnxWorker, OnnxWorkerArgs};
use crate::restart::RestartBudget;
use crate::scheduler::{BatchScheduler, SchedulerArgs, SchedulerMsg};
use crate::worker::{ModelWorker, WorkerArgs, WorkerMsg};

/// How long unloading waits for a model's status before assuming it is busy.
const STOP_STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// Messages to the NodeSupervisor.
pub enum NodeMsg {
    /// The scheduler of every model, by name.
    Schedulers(RpcReplyPort<Vec<(String, ActorRef<SchedulerMsg>)>>),
    /// Start a scheduler and a worker for a new model and answer with its
    /// scheduler as soon as it exists (the weights load afterwards; the model
    /// reports `Loading` meanwhile). A name already present answers with its
    /// existing scheduler.
    Load(
        ModelSpec,
        RpcReplyPort<Result<ActorRef<SchedulerMsg>, String>>,
    ),
    /// Start the worker of an ONNX model and answer with its slot at once
    /// (the session loads afterwards; the slot reports `Loading`
    /// meanwhile). A name already present answers with its existing slot.
    LoadOnnx(OnnxSpec, RpcReplyPort<Result<Arc<OnnxSlot>, String>>),
    /// Stop a model's worker and scheduler, failing its in-flight requests;
    /// answers whether the model was present.
    Unload(String, RpcReplyPort<bool>),
    /// The federated-learning worker of a job, started (linked to the
    /// supervisor) on first use; an error once its restart budget is spent.
    FlWorker {
        /// Job id.
        job: String,
        /// Configuration and datasets of this node's federated side.
        shared: Arc<FlShared>,
        /// Where the worker goes.
        reply: RpcReplyPort<Result<ActorRef<FlMsg>, String>>,
    },
    /// Stop every model and then the supervisor.
    Shutdown,
}

/// Most federated jobs with a worker on one node; the oldest is stopped
/// to make room (jobs finish; the node is not told).
const MAX_FL_WORKERS: usize = 8;

/// One job's federated worker.
struct FlManaged {
    args: FlWorkerArgs,
    actor: Option<ActorRef<FlMsg>>,
    budget: RestartBudget,
    started: Instant,
}

/// Startup arguments.
pub struct NodeArgs {
    /// Models to serve.
    pub models: Vec<ModelSpec>,
    /// Restart budget applied to each model's worker.
    pub budget: RestartBudget,
}

/// The supervisor actor.
pub struct NodeSupervisor;

struct Managed {
    spec: ModelSpec,
    scheduler: ActorRef<SchedulerMsg>,
    worker: Option<ActorRef<WorkerMsg>>,
    budget: RestartBudget,
}

/// One ONNX model's worker.
struct OnnxManaged {
    spec: OnnxSpec,
    slot: Arc<OnnxSlot>,
    actor: Option<ActorRef<OnnxMsg>>,
    budget: RestartBudget,
}

async fn start_onnx_worker(m: &mut OnnxManaged, supervisor: ActorCell) {
    let args = OnnxWorkerArgs {
        spec: m.spec.clone(),
        slot: m.slot.clone(),
    };
    match Actor::spawn_linked(None, OnnxWorker, args, supervisor).await {
        Ok((actor, _)) => m.actor = Some(actor),
        Err(e) => {
            m.actor = None;
            let reason = match e {
                SpawnErr::StartupFailed(inner) => inner.to_string(),
                other => other.to_string(),
            };
            tracing::warn!(model = %m.spec.name, "cannot load the ONNX model: {reason}");
            m.slot.failed(format!("cannot load: {reason}"));
        }
    }
}

/// The supervisor's state.
pub struct SupervisorState {
    models: Vec<Managed>,
    onnx: Vec<OnnxManaged>,
    fl: HashMap<String, FlManaged>,
    budget: RestartBudget,
    stopping: bool,
}

async fn spawn_fl_worker(
    args: &FlWorkerArgs,
    supervisor: ActorCell,
) -> Result<ActorRef<FlMsg>, String> {
    Actor::spawn_linked(None, FlWorker, args.clone(), supervisor)
        .await
        .map(|(actor, _)| actor)
        .map_err(|e| e.to_string())
}

/// Spawns the scheduler of a new model (linked to the supervisor); the
/// worker is started separately.
async fn spawn_scheduler(
    spec: ModelSpec,
    budget: &RestartBudget,
    supervisor: &ActorRef<NodeMsg>,
) -> Result<Managed, SpawnErr> {
    let sched_args = SchedulerArgs {
        name: spec.name.clone(),
    };
    let (scheduler, _) =
        Actor::spawn_linked(None, BatchScheduler, sched_args, supervisor.get_cell()).await?;
    Ok(Managed {
        spec,
        scheduler,
        worker: None,
        budget: budget.clone(),
    })
}

/// Stops a model that was already removed from the supervisor's list (so
/// its termination is not treated as a crash). Requests in flight fail with
/// `Unavailable`: a busy engine is told to abort, which drops every
/// request's event sink; an idle engine simply exits once its handles are
/// dropped, freeing the weights.
async fn stop_model(m: Managed) {
    let busy = match m
        .scheduler
        .call(SchedulerMsg::Status, Some(STOP_STATUS_TIMEOUT))
        .await
    {
        Ok(CallResult::Success(s)) => s.running + s.waiting > 0,
        _ => true,
    };
    if busy {
        // Processed before the scheduler stops: drain() handles queued
        // messages first.
        let _ = m.scheduler.cast(SchedulerMsg::Abort);
    }
    if let Some(w) = &m.worker {
        w.stop(Some("unloaded".into()));
    }
    if m.scheduler.drain().is_err() {
        m.scheduler.stop(Some("unloaded".into()));
    }
}

async fn start_worker(m: &mut Managed, supervisor: ActorCell) {
    let args = WorkerArgs {
        spec: m.spec.clone(),
        scheduler: m.scheduler.clone(),
    };
    match Actor::spawn_linked(None, ModelWorker, args, supervisor).await {
        Ok((worker, _)) => m.worker = Some(worker),
        Err(e) => {
            m.worker = None;
            let reason = match e {
                SpawnErr::StartupFailed(inner) => inner.to_string(),
                other => other.to_string(),
            };
            let _ = m
                .scheduler
                .cast(SchedulerMsg::ModelFailed(format!("cannot load: {reason}")));
        }
    }
}

impl Actor for NodeSupervisor {
    type Msg = NodeMsg;
    type State = SupervisorState;
    type Arguments = NodeArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: NodeArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut models = Vec::with_capacity(args.models.len());
        for spec in args.models {
            let mut m = spawn_scheduler(spec, &args.budget, &myself).await?;
            start_worker(&mut m, myself.get_cell()).await;
            models.push(m);
        }
        Ok(SupervisorState {
            models,
            onnx: Vec::new(),
            fl: HashMap::new(),
            budget: args.budget,
            stopping: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeMsg::Schedulers(reply) => {
                let list = st
                    .models
                    .iter()
                    .map(|m| (m.spec.name.clone(), m.scheduler.clone()))
                    .collect();
                let _ = reply.send(list);
            }
            NodeMsg::Load(spec, reply) => {
                if let Some(m) = st.models.iter().find(|m| m.spec.name == spec.name) {
                    let _ = reply.send(Ok(m.scheduler.clone()));
                    return Ok(());
                }
                if st.stopping {
                    let _ = reply.send(Err("the node is shutting down".into()));
                    return Ok(());
                }
                match spawn_scheduler(spec, &st.budget, &myself).await {
                    Ok(mut m) => {
                        let _ = reply.send(Ok(m.scheduler.clone()));
                        tracing::info!(model = %m.spec.name, "loading model");
                        start_worker(&mut m, myself.get_cell()).await;
                        st.models.push(m);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(format!("cannot start scheduler: {e}")));
                    }
                }
            }
            NodeMsg::LoadOnnx(spec, reply) => {
                if let Some(m) = st.onnx.iter().find(|m| m.spec.name == spec.name) {
                    let _ = reply.send(Ok(m.slot.clone()));
                    return Ok(());
                }
                if st.stopping {
                    let _ = reply.send(Err("the node is shutting down".into()));
                    return Ok(());
                }
                let mut m = OnnxManaged {
                    slot: OnnxSlot::new(&spec.name),
                    spec,
                    actor: None,
                    budget: st.budget.clone(),
                };
                let _ = reply.send(Ok(m.slot.clone()));
                tracing::info!(model = %m.spec.name, "loading ONNX model");
                start_onnx_worker(&mut m, myself.get_cell()).await;
                st.onnx.push(m);
            }
            NodeMsg::Unload(name, reply) => {
                if let Some(pos) = st.onnx.iter().position(|m| m.spec.name == name) {
                    let m = st.onnx.remove(pos);
                    m.slot.close();
                    if let Some(a) = &m.actor {
                        a.stop(Some("unloaded".into()));
                    }
                    tracing::info!(model = %name, "ONNX model unloaded");
                    let _ = reply.send(true);
                    return Ok(());
                }
                let Some(pos) = st.models.iter().position(|m| m.spec.name == name) else {
                    let _ = reply.send(false);
                    return Ok(());
                };
                let m = st.models.remove(pos);
                stop_model(m).await;
                tracing::info!(model = %name, "model unloaded");
                let _ = reply.send(true);
            }
            NodeMsg::FlWorker { job, shared, reply } => {
                if let Some(m) = st.fl.get(&job) {
                    let answer = m
                        .actor
                        .clone()
                        .ok_or_else(|| format!("the federated worker of {job} failed too often"));
                    let _ = reply.send(answer);
                    return Ok(());
                }
                if st.fl.len() >= MAX_FL_WORKERS {
                    let oldest = st
                        .fl
                        .iter()
                        .min_by_key(|(_, m)| m.started)
                        .map(|(j, _)| j.clone());
                    if let Some(m) = oldest.and_then(|j| st.fl.remove(&j)) {
                        if let Some(a) = m.actor {
                            a.stop(Some("making room for another job".into()));
                        }
                    }
                }
                let args = FlWorkerArgs {
                    job: job.clone(),
                    shared,
                };
                let answer = spawn_fl_worker(&args, myself.get_cell()).await;
                if let Ok(actor) = &answer {
                    st.fl.insert(
                        job,
                        FlManaged {
                            args,
                            actor: Some(actor.clone()),
                            budget: st.budget.clone(),
                            started: Instant::now(),
                        },
                    );
                }
                let _ = reply.send(answer);
            }
            NodeMsg::Shutdown => {
                st.stopping = true;
                for m in st.fl.values() {
                    if let Some(a) = &m.actor {
                        a.stop(None);
                    }
                }
                for m in &st.models {
                    if let Some(w) = &m.worker {
                        w.stop(None);
                    }
                    m.scheduler.stop(None);
                }
                for m in &st.onnx {
                    m.slot.close();
                    if let Some(a) = &m.actor {
                        a.stop(None);
                    }
                }
                myself.stop(None);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        if st.stopping {
            return Ok(());
        }
        let id = cell.get_id();
        if let Some(m) = st
            .fl
            .values_mut()
            .find(|m| m.actor.as_ref().is_some_and(|a| a.get_id() == id))
        {
            m.actor = None;
            if m.budget.try_restart(Instant::now()) {
                tracing::warn!(job = %m.args.job, %reason, restarts = m.budget.used(),
                    "restarting federated worker");
                m.actor = spawn_fl_worker(&m.args, myself.get_cell()).await.ok();
            } else {
                tracing::error!(job = %m.args.job, %reason,
                    "federated worker failed too often; its job gets no more updates here");
            }
            return Ok(());
        }
        if let Some(m) = st
            .onnx
            .iter_mut()
            .find(|m| m.actor.as_ref().is_some_and(|a| a.get_id() == id))
        {
            m.actor = None;
            if m.budget.try_restart(Instant::now()) {
                tracing::warn!(model = %m.spec.name, %reason, restarts = m.budget.used(),
                    "restarting ONNX model worker");
                m.slot.restarting();
                start_onnx_worker(m, myself.get_cell()).await;
            } else {
                m.slot
                    .failed(format!("restart budget exhausted; last failure: {reason}"));
            }
            return Ok(());
        }
        if let Some(m) = st
            .models
            .iter_mut()
            .find(|m| m.worker.as_ref().is_some_and(|w| w.get_id() == id))
        {
            m.worker = None;
            let _ = m.scheduler.cast(SchedulerMsg::WorkerDown(reason.clone()));
            if m.budget.try_restart(Instant::now()) {
                tracing::warn!(model = %m.spec.name, %reason, restarts = m.budget.used(), "restarting model worker");
                start_worker(m, myself.get_cell()).await;
            } else {
                let _ = m.scheduler.cast(SchedulerMsg::ModelFailed(format!(
                    "restart budget exhausted; last failure: {reason}"
                )));
            }
        } else if let Some(m) = st.models.iter().find(|m| m.scheduler.get_id() == id) {
            // The scheduler only forwards messages; if it dies the model cannot be reached.
            tracing::error!(model = %m.spec.name, %reason, "model scheduler stopped");
            if let Some(w) = &m.worker {
                w.stop(None);
            }
        }
        Ok(())
    }
}
