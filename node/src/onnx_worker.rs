//! OnnxWorker: owns one ONNX model's session and its batching worker
//! thread ([`OnnxServer`]). Requests do not pass through the actor: the
//! node takes the live server from the model's [`OnnxSlot`], which the
//! worker fills once loaded and the supervisor updates across restarts.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use backends::onnx::{BatchPolicy, OnnxModel, OnnxServer};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::node::{ModelState, ModelStatus};

/// How a node serves its ONNX models.
#[derive(Debug, Clone)]
pub struct OnnxSettings {
    /// ONNX Runtime's shared library (`inferno pull onnxruntime`).
    pub runtime: PathBuf,
    /// Intra-op threads of each session.
    pub threads: usize,
    /// How requests are batched.
    pub batching: BatchPolicy,
}

/// An ONNX model to serve.
#[derive(Debug, Clone)]
pub struct OnnxSpec {
    /// Name clients use.
    pub name: String,
    /// The `.onnx` file.
    pub path: PathBuf,
    /// Runtime, threads and batching.
    pub settings: OnnxSettings,
}

/// Whether a model file is served by the ONNX backend (by its extension).
pub fn is_onnx_file(path: &std::path::Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("onnx"))
}

struct SlotState {
    state: ModelState,
    server: Option<Arc<OnnxServer>>,
    restarts: usize,
}

/// Where one ONNX model's live server and state are found; shared by the
/// node (requests, status), the worker (loads) and the supervisor
/// (restarts).
pub struct OnnxSlot {
    name: String,
    inner: Mutex<SlotState>,
}

impl OnnxSlot {
    /// A slot for a model that is loading.
    pub fn new(name: &str) -> Arc<Self> {
        Arc::new(OnnxSlot {
            name: name.to_string(),
            inner: Mutex::new(SlotState {
                state: ModelState::Loading,
                server: None,
                restarts: 0,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The server, while the model is ready; otherwise its state.
    pub fn server(&self) -> Result<Arc<OnnxServer>, ModelState> {
        let s = self.lock();
        match (&s.state, &s.server) {
            (ModelState::Ready, Some(server)) => Ok(server.clone()),
            (state, _) => Err(state.clone()),
        }
    }

    /// State and load, in the shape of the LLM models' status.
    pub fn status(&self) -> ModelStatus {
        let s = self.lock();
        ModelStatus {
            name: self.name.clone(),
            state: s.state.clone(),
            restarts: s.restarts,
            waiting: s.server.as_ref().map_or(0, |srv| srv.queued()),
            running: 0,
            kv_used_bytes: 0,
            kv: None,
        }
    }

    fn ready(&self, server: Arc<OnnxServer>) {
        let mut s = self.lock();
        s.server = Some(server);
        s.state = ModelState::Ready;
    }

    /// The worker is down and being restarted: stop handing out its server.
    pub(crate) fn restarting(&self) {
        let mut s = self.lock();
        s.server = None;
        s.state = ModelState::Restarting;
        s.restarts += 1;
    }

    /// The model is down for good.
    pub(crate) fn failed(&self, reason: String) {
        let mut s = self.lock();
        s.server = None;
        s.state = ModelState::Failed(reason);
    }

    /// Drops the server (unload): queued requests are answered, the
    /// session is freed once the last caller lets go.
    pub(crate) fn close(&self) {
        let mut s = self.lock();
        s.server = None;
        s.state = ModelState::Failed("unloaded".into());
    }
}

/// Messages to an OnnxWorker.
pub enum OnnxMsg {
    /// The batching thread ended; `Some` carries its panic message.
    ServerExited(Option<String>),
    /// Fault hook for tests: make the batching thread panic.
    InjectPanic,
}

/// Startup arguments of an OnnxWorker.
pub struct OnnxWorkerArgs {
    /// What to load.
    pub spec: OnnxSpec,
    /// Where the loaded server goes.
    pub slot: Arc<OnnxSlot>,
}

/// The worker actor.
pub struct OnnxWorker;

/// A running worker's state.
pub struct OnnxWorkerState {
    server: Arc<OnnxServer>,
}

impl Actor for OnnxWorker {
    type Msg = OnnxMsg;
    type State = OnnxWorkerState;
    type Arguments = OnnxWorkerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: OnnxWorkerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let spec = args.spec.clone();
        let model = tokio::task::spawn_blocking(move || {
            OnnxModel::load(&spec.settings.runtime, &spec.path, spec.settings.threads)
        })
        .await??;
        let me = myself.clone();
        let server = Arc::new(OnnxServer::start(
            model,
            args.spec.settings.batching,
            move |reason| {
                let _ = me.cast(OnnxMsg::ServerExited(reason));
            },
        )?);
        tracing::info!(model = %args.spec.name, "ONNX model ready");
        args.slot.ready(server.clone());
        Ok(OnnxWorkerState { server })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            OnnxMsg::InjectPanic => {
                state.server.inject_panic();
                Ok(())
            }
            // A normal exit follows an unload, which stops this actor.
            OnnxMsg::ServerExited(None) => Ok(()),
            OnnxMsg::ServerExited(Some(reason)) => {
                Err(format!("the ONNX worker thread crashed: {reason}").into())
            }
        }
    }
}
