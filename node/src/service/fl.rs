//! The node's federated-learning side: trains one round on its own shard
//! when the leader asks, and answers with the update. The data is read from
//! this node's disk and never leaves it; only parameters travel.
//!
//! Training runs on a blocking thread, one round at a time per node; a
//! panic in training fails that round (the leader drops the node from it)
//! and never the node.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use backends::fl::{
    client_seed, evaluate, privatize_client, train_local, Dataset, DatasetKind, DpConfig, DpSide,
    JobSpec, Params,
};
use protocol::fl::{FlTrainRequest, FlTrainResponse, FlUpdate};
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

/// Trains rounds for the leader; see the module docs.
#[derive(Debug)]
pub struct FlTrainer {
    cfg: FlConfig,
    datasets: Mutex<HashMap<DatasetKind, Arc<Dataset>>>,
    busy: tokio::sync::Semaphore,
}

impl FlTrainer {
    /// A trainer with `cfg`.
    pub fn new(cfg: FlConfig) -> Self {
        FlTrainer {
            cfg,
            datasets: Mutex::new(HashMap::new()),
            busy: tokio::sync::Semaphore::new(1),
        }
    }

    /// The client index announced in heartbeats.
    pub fn client(&self) -> Option<u32> {
        self.cfg.client
    }

    /// Runs one round of local training.
    pub async fn train(self: &Arc<Self>, req: FlTrainRequest) -> FlTrainResponse {
        let Some(client) = self.cfg.client else {
            return FlTrainResponse::Failed(
                "this node takes no part in federated learning (no fl_client in its config)".into(),
            );
        };
        let Ok(_permit) = self.busy.acquire().await else {
            return FlTrainResponse::Failed("the trainer is shutting down".into());
        };
        let spec = match JobSpec::from_json(&req.spec_json) {
            Ok(s) => s,
            Err(e) => return FlTrainResponse::Failed(format!("bad job spec: {e}")),
        };
        let this = self.clone();
        let job = req.job.clone();
        let round = req.round;
        let work = tokio::task::spawn_blocking(move || {
            std::panic::catch_unwind(AssertUnwindSafe(|| {
                let data = this.dataset(spec.dataset)?;
                train_round(&spec, &data, client, &req, this.cfg.byzantine)
            }))
        });
        match work.await {
            Ok(Ok(Ok(update))) => {
                tracing::info!(%job, round, client, samples = update.num_samples,
                    seconds = update.seconds, "federated round trained");
                FlTrainResponse::Update(update)
            }
            Ok(Ok(Err(e))) => FlTrainResponse::Failed(e),
            Ok(Err(_)) | Err(_) => FlTrainResponse::Failed("local training panicked".into()),
        }
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

fn train_round(
    spec: &JobSpec,
    data: &Dataset,
    client: u32,
    req: &FlTrainRequest,
    byzantine: bool,
) -> Result<FlUpdate, String> {
    let started = Instant::now();
    let err = |e: backends::fl::FlError| e.to_string();
    let global = Params::from_raw_le(&req.global, &spec.model.layout()).map_err(err)?;
    let rows = spec
        .partition
        .rows(client as usize, data.labels())
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
