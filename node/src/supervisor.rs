//! NodeSupervisor: the root of a node's actor tree. It starts a scheduler and
//! a worker per model and restarts a failed worker within its restart budget.

use std::time::Instant;

use ractor::{
    Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, SupervisionEvent,
};

use crate::node::ModelSpec;
use crate::restart::RestartBudget;
use crate::scheduler::{BatchScheduler, SchedulerArgs, SchedulerMsg};
use crate::worker::{ModelWorker, WorkerArgs, WorkerMsg};

/// Messages to the NodeSupervisor.
pub enum NodeMsg {
    /// The scheduler of every model, by name.
    Schedulers(RpcReplyPort<Vec<(String, ActorRef<SchedulerMsg>)>>),
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
    stopping: bool,
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
            let sched_args = SchedulerArgs {
                name: spec.name.clone(),
            };
            let (scheduler, _) =
                Actor::spawn_linked(None, BatchScheduler, sched_args, myself.get_cell()).await?;
            let mut m = Managed {
                spec,
                scheduler,
                worker: None,
                budget: args.budget.clone(),
            };
            start_worker(&mut m, myself.get_cell()).await;
            models.push(m);
        }
        Ok(SupervisorState {
            models,
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
