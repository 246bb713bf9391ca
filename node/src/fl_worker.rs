//! FlWorker: the actor that trains a federated job's rounds on this node,
//! one per job, supervised by the [`NodeSupervisor`](crate::supervisor)
//! like the model workers: a panic in training fails that round, the actor
//! fails, and the supervisor restarts it within its restart budget; other
//! jobs and the models keep running.
//!
//! The data is read from this node's disk and never leaves it; only the
//! parameter delta travels back to the leader.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use backends::fl::{
    client_seed, evaluate, privatize_client, train_local, Dataset, DatasetKind, DpConfig, DpSide,
    JobSpec, Params,
};
use protocol::fl::{FlTrainRequest, FlTrainResponse, FlUpdate};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rand::{Rng, SeedableRng};

/// How this node takes part in federated learning.
#[derive(Debug, Clone, Default)]
pub struct FlConfig {
    /// The client index (data shard) this node trains as; `None`: it takes
    /// no part in federated jobs.
    pub client: Option<u32>,
    /// Where `inferno fl data` put the datasets.
    pub data_dir: PathBuf,
    /// Fault injection for robustness tests: send garbage updates.
    pub byzantine: bool,
}

/// What every job's worker on this node shares: the configuration and the
/// datasets, loaded once.
#[derive(Debug)]
pub struct FlShared {
    cfg: FlConfig,
    datasets: Mutex<HashMap<DatasetKind, Arc<Dataset>>>,
}

impl FlShared {
    /// Shared state for `cfg`.
    pub fn new(cfg: FlConfig) -> Self {
        FlShared {
            cfg,
            datasets: Mutex::new(HashMap::new()),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &FlConfig {
        &self.cfg
    }

    /// The dataset, loaded once and kept.
    fn dataset(&self, kind: DatasetKind) -> Result<Arc<Dataset>, String> {
        let mut cache = self.datasets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = cache.get(&kind) {
            return Ok(d.clone());
        }
        let d = Arc::new(kind.load(&self.cfg.data_dir).map_err(|e| {
            format!(
                "cannot load {} from {} (run `inferno fl data {}`): {e}",
                kind.name(),
                self.cfg.data_dir.display(),
                kind.name()
            )
        })?);
        cache.insert(kind, d.clone());
        Ok(d)
    }
}

/// Messages to an [`FlWorker`].
pub enum FlMsg {
    /// Train one round and answer with the update.
    Train(Box<FlTrainRequest>, RpcReplyPort<FlTrainResponse>),
    /// Fault hook for tests: the next round's training panics.
    InjectPanic,
}

/// Startup arguments of an [`FlWorker`].
#[derive(Debug, Clone)]
pub struct FlWorkerArgs {
    /// The job it trains.
    pub job: String,
    /// Configuration and datasets.
    pub shared: Arc<FlShared>,
}

/// The actor; see the module docs.
#[derive(Debug)]
pub struct FlWorker;

/// Its state.
#[derive(Debug)]
pub struct FlWorkerState {
    args: FlWorkerArgs,
    panic_next: bool,
}

impl Actor for FlWorker {
    type Msg = FlMsg;
    type State = FlWorkerState;
    type Arguments = FlWorkerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: FlWorkerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(FlWorkerState {
            args,
            panic_next: false,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        st: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (req, reply) = match msg {
            FlMsg::InjectPanic => {
                st.panic_next = true;
                return Ok(());
            }
            FlMsg::Train(req, reply) => (*req, reply),
        };
        let Some(client) = st.args.shared.cfg.client else {
            let _ = reply.send(FlTrainResponse::Failed(
                "this node takes no part in federated learning (no fl_client in its config)".into(),
            ));
            return Ok(());
        };
        let spec = match JobSpec::from_json(&req.spec_json) {
            Ok(s) => s,
            Err(e) => {
                let _ = reply.send(FlTrainResponse::Failed(format!("bad job spec: {e}")));
                return Ok(());
            }
        };
        let shared = st.args.shared.clone();
        let panic_now = std::mem::take(&mut st.panic_next);
        let job = req.job.clone();
        let round = req.round;
        let work = tokio::task::spawn_blocking(move || {
            assert!(
                !panic_now,
                "injected fault: federated training panics (test hook)"
            );
            let data = shared.dataset(spec.dataset)?;
            train_round(&spec, &data, client, &req, &shared.cfg)
        })
        .await;
        match work {
            Ok(Ok(update)) => {
                tracing::info!(%job, round, client, samples = update.num_samples,
                    seconds = update.seconds, "federated round trained");
                let _ = reply.send(FlTrainResponse::Update(update));
                Ok(())
            }
            Ok(Err(e)) => {
                let _ = reply.send(FlTrainResponse::Failed(e));
                Ok(())
            }
            Err(e) => {
                let _ = reply.send(FlTrainResponse::Failed(
                    "local training panicked; the worker is restarted".into(),
                ));
                // Fail the actor: the supervisor restarts it.
                Err(format!("federated training of {job} panicked: {e}").into())
            }
        }
    }
}

fn train_round(
    spec: &JobSpec,
    data: &Dataset,
    client: u32,
    req: &FlTrainRequest,
    fl: &FlConfig,
) -> Result<FlUpdate, String> {
    let byzantine = fl.byzantine;
    let started = Instant::now();
    let err = |e: backends::fl::FlError| e.to_string();
    let global = Params::from_raw_le(&req.global, &spec.model.layout()).map_err(err)?;
    let rows = spec
        .partition
        .rows(client as usize, data.labels(), &fl.data_dir)
        .map_err(err)?;
    let (train_rows, hold_rows) = spec.holdout(rows);
    let train = data.subset(&train_rows).map_err(err)?;
    let (eval_loss, eval_accuracy) = if hold_rows.is_empty() {
        (0.0, 0.0)
    } else {
        let e =
            evaluate(&spec.model, &global, &data.subset(&hold_rows).map_err(err)?).map_err(err)?;
        (e.loss, e.accuracy)
    };
    let mut cfg = spec.train.clone();
    cfg.seed = client_seed(spec.train.seed, req.round, u64::from(client));
    let update = train_local(&spec.model, &global, &train, &cfg).map_err(err)?;
    let mut delta = update.delta;
    if byzantine {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed);
        for v in delta.values_mut() {
            *v = rng.gen_range(-100.0f32..100.0);
        }
    }
    let mut dp_noise_multiplier = None;
    if let Some(dp) = spec.dp.filter(|d| d.side == DpSide::Client) {
        let report = privatize_client(
            &mut delta,
            &DpConfig {
                clip_norm: dp.clip_norm,
                noise_multiplier: dp.noise_multiplier,
            },
            cfg.seed ^ 0x5eed,
        )
        .map_err(err)?;
        dp_noise_multiplier = Some(report.noise_multiplier);
    }
    Ok(FlUpdate {
        client,
        delta: delta.to_raw_le(),
        num_samples: update.num_samples as u64,
        train_loss: update.loss,
        train_accuracy: update.accuracy,
        eval_loss,
        eval_accuracy,
        eval_samples: hold_rows.len() as u64,
        seconds: started.elapsed().as_secs_f64(),
        dp_noise_multiplier,
    })
}
