//! The leader's federated-learning driver: runs every pending or running
//! job round by round, and resumes from the last committed round after a
//! leader change.
//!
//! A round: pick the participating nodes, send each the global model over
//! QUIC, wait (at most the round deadline) for their updates, aggregate
//! with the job's strategy, evaluate on the coordinators' test set, store
//! the new global model as a content-addressed blob on a majority of
//! coordinators, and only then commit the round (its checkpoint hash and
//! metrics) through raft.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backends::fl::{
    evaluate, privatize_server, Aggregator, ClientUpdate, Dataset, DatasetKind, DpConfig, DpSide,
    JobSpec, Params,
};
use protocol::fl::{FlTrainRequest, FlTrainResponse, FlUpdate, MAX_FL_FRAME_BYTES};
use protocol::{frame, NodeStreamRequest};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::blobs::BlobStore;
use super::screen::{max_shard_rows, screen};
use super::select::{select, Candidate};
use crate::server::nodes::NodeRegistry;
use crate::server::peers::{submit_write, Peers};
use crate::server::raft_loop::{LocalView, LoopRequest};
use crate::server::router::Router;
use crate::server::wire::{PeerRequest, PeerResponse, WriteReply};
use crate::state::commands::MAX_REASON_LEN;
use crate::state::{FlJobStatus, NodeStatus, Op};

/// How often the driver looks for jobs to run.
const SCAN_INTERVAL: Duration = Duration::from_millis(500);
/// Attempts at a round that gets too few updates before the job fails.
const ROUND_ATTEMPTS: usize = 3;
/// How long a round waits for enough nodes to be available.
const WAIT_FOR_NODES: Duration = Duration::from_secs(60);
/// A node silent for longer is not asked to train.
const NODE_FRESH: Duration = Duration::from_secs(3);

/// What the driver needs from the coordinator.
pub struct FlContext {
    /// The local raft loop (the driver runs on the leader).
    pub requests: mpsc::Sender<LoopRequest>,
    /// The locally applied state and leadership.
    pub view: watch::Receiver<LocalView>,
    /// Node heartbeats (which nodes are alive and their client index).
    pub registry: Arc<NodeRegistry>,
    /// Streams to nodes.
    pub router: Arc<Router>,
    /// Other coordinators (blob replication).
    pub peers: Arc<Peers>,
    /// The other coordinators' raft ids.
    pub peer_ids: Vec<u64>,
    /// This coordinator's checkpoints.
    pub blobs: Arc<BlobStore>,
    /// Where the test sets for central evaluation are (`inferno fl data`).
    pub data_dir: Option<PathBuf>,
    /// Where finished models are written as safetensors.
    pub models_dir: PathBuf,
    /// Request timeout for raft writes and peer calls.
    pub timeout: Duration,
    test_sets: Mutex<HashMap<DatasetKind, Arc<Dataset>>>,
}

impl std::fmt::Debug for FlContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlContext")
            .field("blobs", &self.blobs)
            .finish()
    }
}

impl FlContext {
    /// A context; see the fields.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        requests: mpsc::Sender<LoopRequest>,
        view: watch::Receiver<LocalView>,
        registry: Arc<NodeRegistry>,
        router: Arc<Router>,
        peers: Arc<Peers>,
        peer_ids: Vec<u64>,
        blobs: Arc<BlobStore>,
        data_dir: Option<PathBuf>,
        models_dir: PathBuf,
        timeout: Duration,
    ) -> Self {
        FlContext {
            requests,
            view,
            registry,
            router,
            peers,
            peer_ids,
            blobs,
            data_dir,
            models_dir,
            timeout,
            test_sets: Mutex::new(HashMap::new()),
        }
    }

    /// The test rows (60,000..70,000) of `kind`, loaded once; `None` if
    /// this coordinator has no copy of the dataset.
    fn test_set(&self, kind: DatasetKind) -> Option<Arc<Dataset>> {
        let dir = self.data_dir.as_ref()?;
        let mut sets = self.test_sets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = sets.get(&kind) {
            return Some(d.clone());
        }
        let all = match kind.load(dir) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("no central evaluation for {}: {e}", kind.name());
                return None;
            }
        };
        let rows: Vec<usize> = (backends::fl::job::TRAIN_ROWS..all.len()).collect();
        let test = Arc::new(all.subset(&rows).ok()?);
        sets.insert(kind, test.clone());
        Some(test)
    }

    async fn commit(&self, op: Op) -> Result<(), String> {
        match submit_write(&self.requests, op, self.timeout).await {
            WriteReply::Applied(_) => Ok(()),
            WriteReply::Rejected { message, .. } => Err(message),
            WriteReply::NotLeader { .. } => Err("no longer the leader".into()),
            WriteReply::Unavailable { message } => Err(message),
        }
    }

    /// The blob `hash`, from this coordinator's store or a peer's.
    async fn fetch_blob(&self, hash: &str) -> Option<Vec<u8>> {
        if let Some(b) = self.blobs.get(hash) {
            return Some(b);
        }
        for id in &self.peer_ids {
            let req = PeerRequest::GetBlob {
                hash: hash.to_string(),
            };
            if let Ok(PeerResponse::Blob(Some(bytes))) =
                self.peers.request(*id, &req, self.timeout).await
            {
                if self.blobs.put_checked(hash, &bytes).is_ok() {
                    return Some(bytes);
                }
            }
        }
        None
    }

    /// Stores a blob here and on peers until a majority holds it.
    async fn replicate_blob(&self, bytes: &[u8]) -> Result<String, String> {
        let hash = self
            .blobs
            .put(bytes)
            .map_err(|e| format!("cannot store the checkpoint: {e}"))?;
        let req = PeerRequest::PutBlob {
            hash: hash.clone(),
            bytes: bytes.to_vec(),
        };
        let held = self
            .peers
            .replicate(&self.peer_ids, &req, self.timeout)
            .await;
        if held.is_majority() {
            Ok(hash)
        } else {
            Err(format!(
                "checkpoint stored on {} of {} coordinators",
                held.holders, held.members
            ))
        }
    }
}

/// Runs jobs while this coordinator is the leader, until the raft loop
/// goes away.
pub async fn run(ctx: Arc<FlContext>) {
    let mut view = ctx.view.clone();
    let mut running: HashMap<String, JoinHandle<()>> = HashMap::new();
    loop {
        tokio::time::sleep(SCAN_INTERVAL).await;
        if view.has_changed().is_err() {
            break;
        }
        let current = view.borrow_and_update().clone();
        running.retain(|_, h| !h.is_finished());
        if !current.is_leader {
            for (_, h) in running.drain() {
                h.abort();
            }
            continue;
        }
        for (id, job) in current.state.fl_jobs() {
            let active = matches!(job.status, FlJobStatus::Pending | FlJobStatus::Running);
            if active && !running.contains_key(id) {
                let ctx = ctx.clone();
                let id2 = id.clone();
                running.insert(
                    id.clone(),
                    tokio::spawn(async move {
                        if let Err(e) = run_job(&ctx, &id2).await {
                            tracing::warn!(job = %id2, "federated job stopped: {e}");
                        }
                    }),
                );
            }
        }
    }
    for (_, h) in running {
        h.abort();
    }
}

/// Why a job task stopped early.
#[derive(Debug)]
enum JobStop {
    /// Leadership or quorum lost, or the job was stopped: leave it as is.
    Interrupted(String),
    /// The job cannot go on: mark it failed.
    Fatal(String),
}

impl std::fmt::Display for JobStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobStop::Interrupted(m) => write!(f, "interrupted: {m}"),
            JobStop::Fatal(m) => write!(f, "failed: {m}"),
        }
    }
}

async fn run_job(ctx: &FlContext, id: &str) -> Result<(), JobStop> {
    let result = drive(ctx, id).await;
    if let Err(JobStop::Fatal(reason)) = &result {
        tracing::error!(job = %id, "federated job failed: {reason}");
        let op = Op::SetFlJobStatus {
            job: id.to_string(),
            status: FlJobStatus::Failed,
            reason: Some(truncate(reason, MAX_REASON_LEN)),
        };
        let _ = ctx.commit(op).await;
    }
    result
}

/// `text` cut to at most `max` bytes, on a character boundary.
fn truncate(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

fn job_status(ctx: &FlContext, id: &str) -> Option<(FlJobStatus, u64, Option<String>)> {
    let view = ctx.view.borrow();
    view.state.fl_job(id).map(|j| {
        (
            j.status,
            j.last_round(),
            j.rounds.last().map(|r| r.checkpoint_hash.clone()),
        )
    })
}

async fn drive(ctx: &FlContext, id: &str) -> Result<(), JobStop> {
    let spec_text = {
        let view = ctx.view.borrow();
        view.state
            .fl_job(id)
            .map(|j| j.spec.clone())
            .ok_or_else(|| JobStop::Interrupted("the job is gone".into()))?
    };
    let spec = JobSpec::from_json(&spec_text).map_err(|e| JobStop::Fatal(e.to_string()))?;
    let (status, last_round, checkpoint) =
        job_status(ctx, id).ok_or_else(|| JobStop::Interrupted("the job is gone".into()))?;
    if status == FlJobStatus::Pending {
        let op = Op::SetFlJobStatus {
            job: id.to_string(),
            status: FlJobStatus::Running,
            reason: None,
        };
        ctx.commit(op).await.map_err(JobStop::Interrupted)?;
    }
    let layout = spec
        .model
        .init(0)
        .map_err(|e| JobStop::Fatal(e.to_string()))?
        .layout();
    let mut global = match checkpoint {
        None => spec
            .init
            .params(&spec.model, ctx.data_dir.as_deref())
            .map_err(|e| JobStop::Fatal(format!("initial model: {e}")))?,
        Some(hash) => {
            let bytes = ctx.fetch_blob(&hash).await.ok_or_else(|| {
                JobStop::Interrupted(format!("checkpoint {hash} is on no reachable coordinator"))
            })?;
            tracing::info!(job = %id, round = last_round, "resuming from the last committed round");
            Params::from_raw_le(&bytes, &layout).map_err(|e| JobStop::Fatal(e.to_string()))?
        }
    };
    // Server optimizer state (FedAvgM, FedAdam...) restarts with a new
    // leader; FedAvg, median, trimmed mean and Krum have none.
    let mut aggregator = Aggregator::new(spec.strategy.clone());
    for round in last_round + 1..=spec.rounds {
        let started = Instant::now();
        let mut attempt = 0;
        let mut dropped_total = 0usize;
        let (updates, participants) = loop {
            attempt += 1;
            let (got, dropped) = screen(
                run_round(ctx, id, &spec, round, &global).await?,
                global.num_values(),
                max_shard_rows(&spec.partition),
            );
            dropped_total += dropped;
            match got {
                got if got.len() >= spec.sampling.min_clients => {
                    let n = got.len();
                    break (got, n);
                }
                got if attempt < ROUND_ATTEMPTS => {
                    tracing::warn!(job = %id, round, updates = got.len(),
                        "too few updates; retrying the round");
                }
                got => {
                    return Err(JobStop::Fatal(format!(
                        "round {round}: {} updates after {ROUND_ATTEMPTS} attempts, {} needed",
                        got.len(),
                        spec.sampling.min_clients
                    )))
                }
            }
        };
        let mut metrics = BTreeMap::new();
        let client_updates = updates
            .iter()
            .map(|u| {
                Ok(ClientUpdate {
                    delta: Params::from_raw_le(&u.delta, &layout)?,
                    num_samples: u.num_samples as usize,
                })
            })
            .collect::<backends::fl::Result<Vec<_>>>()
            .map_err(|e| JobStop::Fatal(format!("bad update: {e}")))?;
        let client_updates = match spec.dp.filter(|d| d.side == DpSide::Server) {
            Some(dp) => {
                let cfg = DpConfig {
                    clip_norm: dp.clip_norm,
                    noise_multiplier: dp.noise_multiplier,
                };
                let (noisy, report) = privatize_server(&client_updates, &cfg, round)
                    .map_err(|e| JobStop::Fatal(e.to_string()))?;
                metrics.insert(
                    "dp_noise_multiplier".into(),
                    f64::from(report.noise_multiplier),
                );
                vec![ClientUpdate {
                    delta: noisy,
                    num_samples: 1,
                }]
            }
            None => client_updates,
        };
        global = aggregator
            .apply(&global, &client_updates)
            .map_err(|e| JobStop::Fatal(format!("aggregation: {e}")))?;
        if !global.values().all(|v| v.is_finite()) {
            return Err(JobStop::Fatal(format!(
                "round {round}: the global model is no longer finite (training diverged; \
                 try a lower learning rate)"
            )));
        }
        if let Some(m) = updates.iter().find_map(|u| u.dp_noise_multiplier) {
            metrics.insert("dp_noise_multiplier".into(), f64::from(m));
        }
        round_metrics(ctx, &spec, &global, &updates, &mut metrics).await;
        metrics.insert("participants".into(), participants as f64);
        metrics.insert("dropped_updates".into(), dropped_total as f64);
        metrics.insert("seconds".into(), started.elapsed().as_secs_f64());
        let hash = ctx
            .replicate_blob(&global.to_raw_le())
            .await
            .map_err(JobStop::Interrupted)?;
        // Stopped meanwhile? Then do not commit more rounds.
        if job_status(ctx, id).is_some_and(|(s, _, _)| s != FlJobStatus::Running) {
            return Err(JobStop::Interrupted("the job was stopped".into()));
        }
        tracing::info!(job = %id, round, ?metrics, "round committed");
        ctx.commit(Op::FlRoundCommitted {
            job: id.to_string(),
            round,
            checkpoint_hash: hash,
            metrics,
        })
        .await
        .map_err(JobStop::Interrupted)?;
    }
    save_model(ctx, id, &global);
    register_model(ctx, id, &global).await;
    ctx.commit(Op::SetFlJobStatus {
        job: id.to_string(),
        status: FlJobStatus::Completed,
        reason: None,
    })
    .await
    .map_err(JobStop::Interrupted)
}

/// Central evaluation (test set on this coordinator) and federated
/// evaluation (the nodes' holdouts, weighted by their sizes).
async fn round_metrics(
    ctx: &FlContext,
    spec: &JobSpec,
    global: &Params,
    updates: &[FlUpdate],
    metrics: &mut BTreeMap<String, f64>,
) {
    let samples: u64 = updates.iter().map(|u| u.num_samples).sum();
    if samples > 0 {
        let w = |f: fn(&FlUpdate) -> f64| {
            updates
                .iter()
                .map(|u| f(u) * u.num_samples as f64)
                .sum::<f64>()
                / samples as f64
        };
        metrics.insert("train_loss".into(), w(|u| u.train_loss));
        metrics.insert("train_accuracy".into(), w(|u| u.train_accuracy));
    }
    let held: u64 = updates.iter().map(|u| u.eval_samples).sum();
    if held > 0 {
        let w = |f: fn(&FlUpdate) -> f64| {
            updates
                .iter()
                .map(|u| f(u) * u.eval_samples as f64)
                .sum::<f64>()
                / held as f64
        };
        // The holdouts were evaluated with the model the round started from.
        metrics.insert("fed_loss".into(), w(|u| u.eval_loss));
        metrics.insert("fed_accuracy".into(), w(|u| u.eval_accuracy));
    }
    let Some(test) = ctx.test_set(spec.dataset) else {
        return;
    };
    let model = spec.model.clone();
    let params = global.clone();
    let eval = tokio::task::spawn_blocking(move || evaluate(&model, &params, &test)).await;
    match eval {
        Ok(Ok(e)) => {
            metrics.insert("accuracy".into(), e.accuracy);
            metrics.insert("loss".into(), e.loss);
        }
        Ok(Err(e)) => tracing::warn!("central evaluation failed: {e}"),
        Err(e) => tracing::warn!("central evaluation panicked: {e}"),
    }
}

/// Nodes that can train this job now: alive, up, with a client index the
/// partition knows.
fn candidates(ctx: &FlContext, spec: &JobSpec) -> Vec<Candidate> {
    let view = ctx.view.borrow();
    ctx.registry
        .snapshot()
        .into_iter()
        .filter_map(|(node, seen)| {
            let client = seen.heartbeat.fl_client?;
            let up = view
                .state
                .node(&node)
                .is_some_and(|n| n.status == NodeStatus::Up);
            (up && seen.age < NODE_FRESH && (client as usize) < spec.partition.clients)
                .then_some(Candidate { node, client })
        })
        .collect()
}

/// One attempt at a round: the updates that arrived before the deadline.
async fn run_round(
    ctx: &FlContext,
    id: &str,
    spec: &JobSpec,
    round: u64,
    global: &Params,
) -> Result<Vec<FlUpdate>, JobStop> {
    let waited = Instant::now();
    let chosen = loop {
        let all = candidates(ctx, spec);
        let chosen = select(
            all,
            spec.sampling.fraction,
            spec.sampling.min_clients,
            spec.train.seed ^ round,
        );
        if chosen.len() >= spec.sampling.min_clients {
            break chosen;
        }
        if waited.elapsed() > WAIT_FOR_NODES {
            return Err(JobStop::Fatal(format!(
                "round {round}: only {} of the {} clients needed are available",
                chosen.len(),
                spec.sampling.min_clients
            )));
        }
        if !ctx.view.borrow().is_leader {
            return Err(JobStop::Interrupted("no longer the leader".into()));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let spec_json = spec.to_json().map_err(|e| JobStop::Fatal(e.to_string()))?;
    let req = FlTrainRequest {
        job: id.to_string(),
        round,
        spec_json,
        global: global.to_raw_le(),
    };
    let deadline = Duration::from_secs(spec.round_timeout_s);
    let asks = chosen.iter().map(|c| {
        let req = req.clone();
        async move {
            let answer = tokio::time::timeout(deadline, train_on(ctx, &c.node, &req)).await;
            match answer {
                Ok(Ok(u)) => Some(u),
                Ok(Err(e)) => {
                    tracing::warn!(node = %c.node, round, "no update: {e}");
                    None
                }
                Err(_) => {
                    tracing::warn!(node = %c.node, round, "straggler dropped from the round");
                    None
                }
            }
        }
    });
    let updates: Vec<FlUpdate> = futures_util::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect();
    Ok(updates)
}

/// Asks `node` for its update to `req`.
async fn train_on(ctx: &FlContext, node: &str, req: &FlTrainRequest) -> Result<FlUpdate, String> {
    let (mut send, mut recv) = ctx.router.open_stream(node).await?;
    let first = NodeStreamRequest::FlTrain(req.clone());
    frame::write_frame(&mut send, &first, MAX_FL_FRAME_BYTES, ctx.timeout)
        .await
        .map_err(|e| e.to_string())?;
    let _ = send.finish();
    // Training takes long; the caller bounds the whole exchange. A node
    // that stops sending heartbeats (killed, partitioned) is given up on
    // at once rather than at the round deadline.
    let read = frame::read_frame::<_, FlTrainResponse>(
        &mut recv,
        MAX_FL_FRAME_BYTES,
        Duration::from_secs(24 * 3600),
    );
    let answer = tokio::select! {
        r = read => r.map_err(|e| e.to_string())?,
        _ = ctx.registry.went_silent(node, NODE_FRESH, Duration::from_millis(250)) => {
            return Err(format!("node {node} stopped sending heartbeats"));
        }
    };
    match answer {
        FlTrainResponse::Update(u) => Ok(u),
        FlTrainResponse::Failed(reason) => Err(reason),
    }
}

/// The `source` of a trained model registered in the cluster: the job and
/// the checkpoint blob holding its weights.
pub fn trained_model_source(job: &str, hash: &str) -> String {
    format!("fl-job:{job}@{hash}")
}

/// Registers the trained model in the cluster's model catalog under the
/// job's id (format `safetensors`, no replicas: nodes serve GGUF LLMs; the
/// weights are the last checkpoint, downloadable from any coordinator).
/// A model of that name that did not come from a federated job is left
/// alone.
async fn register_model(ctx: &FlContext, id: &str, global: &Params) {
    let taken = ctx
        .view
        .borrow()
        .state
        .model(id)
        .is_some_and(|m| !m.source.starts_with("fl-job:"));
    if taken {
        tracing::warn!(job = %id, "a model with the job's name exists; the trained model is not registered");
        return;
    }
    let bytes = global.to_raw_le();
    let op = Op::RegisterModel {
        name: id.to_string(),
        source: trained_model_source(id, &super::blobs::hash(&bytes)),
        format: "safetensors".into(),
        size_bytes: bytes.len() as u64,
        desired_replicas: 0,
    };
    if let Err(e) = ctx.commit(op).await {
        tracing::warn!(job = %id, "cannot register the trained model: {e}");
    }
}

/// Writes the finished model as safetensors next to the coordinator's data.
fn save_model(ctx: &FlContext, id: &str, global: &Params) {
    let path = ctx.models_dir.join(format!("{id}.safetensors"));
    let result = global
        .to_safetensors()
        .map_err(|e| e.to_string())
        .and_then(|bytes| {
            std::fs::create_dir_all(&ctx.models_dir).map_err(|e| e.to_string())?;
            std::fs::write(&path, bytes).map_err(|e| e.to_string())
        });
    match result {
        Ok(()) => tracing::info!(job = %id, path = %path.display(), "trained model saved"),
        Err(e) => tracing::warn!(job = %id, "cannot save the trained model: {e}"),
    }
}
