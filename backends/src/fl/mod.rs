//! Federated learning core: parameters, models, local training, aggregation
//! strategies, differential privacy, datasets and partitioning. Pure and
//! I/O-light: nodes and coordinators move [`Params`] and [`ClientUpdate`]s
//! around; everything here is deterministic given its seeds.
//!
//! A round, in process:
//! ```no_run
//! # fn main() -> backends::fl::Result<()> {
//! use backends::fl::*;
//! let spec = ModelSpec::anchor_mlp();
//! let data = load_mnist_pickle(&default_mnist_path())?;
//! let parts = iid_split(&(0..60_000).collect::<Vec<_>>(), 10, 42)?;
//! let mut global = spec.init(42)?;
//! let mut agg = Aggregator::new(Strategy::FedAvg);
//! let mut updates = Vec::new();
//! for (c, rows) in parts.iter().enumerate() {
//!     let cfg = TrainConfig { seed: client_seed(42, 1, c as u64), ..TrainConfig::default() };
//!     let u = train_local(&spec, &global, &data.subset(rows)?, &cfg)?;
//!     updates.push(ClientUpdate { delta: u.delta, num_samples: u.num_samples });
//! }
//! global = agg.apply(&global, &updates)?;
//! # Ok(()) }
//! ```

pub mod aggregate;
pub mod data;
pub mod dp;
pub mod error;
pub mod job;
pub mod limits;
pub mod model;
pub mod onnx_export;
pub mod params;
pub mod partition;
pub mod train;

pub use aggregate::{Aggregator, ClientUpdate, Strategy};
pub use data::{
    default_data_dir, default_mnist_path, load_fashion_mnist_idx, load_mnist_pickle, Dataset,
};
pub use dp::{privatize_client, privatize_server, DpConfig, DpReport};
pub use error::{FlError, Result};
pub use job::{DatasetKind, DpSide, DpSpec, InitSpec, JobSpec, PartitionSpec, Sampling};
pub use model::{Model, ModelSpec};
pub use params::{Layout, NamedTensor, Params};
pub use partition::{dirichlet_split, iid_split, PartitionFile, Split, SplitKind};
pub use train::{
    client_seed, evaluate, train_local, Evaluation, LocalUpdate, OptimizerConfig, TrainConfig,
};
