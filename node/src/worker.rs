//! ModelWorker: owns one model replica's weights and runs its engine on a
//! dedicated OS thread, never on the async runtime.

use std::panic::AssertUnwindSafe;

use backends::engine::{Engine, EngineHandle};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::node::ModelSpec;
use crate::scheduler::SchedulerMsg;

/// Messages to a ModelWorker.
pub enum WorkerMsg {
    /// The engine thread ended; `Some` carries the panic message.
    EngineExited(Option<String>),
    /// Fault hook for tests: make the engine thread panic at its next step.
    InjectPanic,
}

/// Startup arguments of a ModelWorker.
pub struct WorkerArgs {
    /// What to load.
    pub spec: ModelSpec,
    /// The model's scheduler, told when this worker is ready.
    pub scheduler: ActorRef<SchedulerMsg>,
}

/// The worker actor.
pub struct ModelWorker;

/// A running worker's state.
pub struct WorkerState {
    handle: EngineHandle,
}

impl Actor for ModelWorker {
    type Msg = WorkerMsg;
    type State = WorkerState;
    type Arguments = WorkerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: WorkerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let spec = args.spec.clone();
        let (engine, handle) =
            tokio::task::spawn_blocking(move || Engine::load(&spec.path, &spec.engine)).await??;
        let me = myself.clone();
        std::thread::Builder::new()
            .name(format!("engine-{}", args.spec.name))
            .spawn(move || {
                let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| engine.run()));
                let reason = outcome.err().map(|p| backends::panic_message(p.as_ref()));
                let _ = me.cast(WorkerMsg::EngineExited(reason));
            })?;
        tracing::info!(model = %args.spec.name, "model worker ready");
        args.scheduler
            .cast(SchedulerMsg::WorkerReady(handle.clone()))
            .map_err(|e| format!("scheduler gone: {e}"))?;
        Ok(WorkerState { handle })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            WorkerMsg::InjectPanic => {
                state.handle.inject_panic();
                Ok(())
            }
            WorkerMsg::EngineExited(reason) => {
                let reason = reason.unwrap_or_else(|| "engine thread exited".into());
                Err(format!("engine crashed: {reason}").into())
            }
        }
    }
}
