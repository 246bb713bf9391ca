//! NodeSupervisor: the root of a node's actor tree. It starts a scheduler and
//! a worker per model and restarts a failed worker within its restart budget.

use std::time::{Duration, Instant};

use ractor::rpc::CallResult;
use ractor::{
    Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, SupervisionEvent,
};

use crate::node::ModelSpec;
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
    /// Stop a model's worker and scheduler, failing its in-flight requests;
    /// answers whether the model was present.
    Unload(String, RpcReplyPort<bool>),
    /// Stop every model and then the supervisor.
    Shutdown,
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

/// The supervisor's state.
pub struct SupervisorState {
    models: Vec<Managed>,
    budget: RestartBudget,
    stopping: bool,
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
            NodeMsg::Unload(name, reply) => {
                let Some(pos) = st.models.iter().position(|m| m.spec.name == name) else {
                    let _ = reply.send(false);
                    return Ok(());
                };
                let m = st.models.remove(pos);
                stop_model(m).await;
                tracing::info!(model = %name, "model unloaded");
                let _ = reply.send(true);
            }
            NodeMsg::Shutdown => {
                st.stopping = true;
                for m in &st.models {
                    if let Some(w) = &m.worker {
                        w.stop(None);
                    }
                    m.scheduler.stop(None);
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
