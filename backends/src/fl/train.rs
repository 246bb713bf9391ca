//! Local training on one client's data, and evaluation.

use candle_core::{DType, Device, Tensor, Var, D};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::data::Dataset;
use super::error::{FlError, Result};
use super::model::{Model, ModelSpec};
use super::params::Params;

/// The client optimizer (no weight decay in any of them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OptimizerConfig {
    /// Plain SGD: `w -= lr * g`.
    Sgd {
        /// Learning rate.
        lr: f64,
    },
    /// Heavy-ball momentum (PyTorch style): `v = momentum * v + g; w -= lr * v`.
    Momentum {
        /// Learning rate.
        lr: f64,
        /// Momentum factor.
        momentum: f64,
    },
    /// Adam with bias correction.
    Adam {
        /// Learning rate.
        lr: f64,
        /// First-moment decay.
        beta1: f64,
        /// Second-moment decay.
        beta2: f64,
        /// Denominator epsilon.
        eps: f64,
    },
}

/// How a client trains locally.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Client optimizer; its state starts fresh every round.
    pub optimizer: OptimizerConfig,
    /// Mini-batch size; the last partial batch is kept.
    pub batch_size: usize,
    /// Passes over the local data.
    pub local_epochs: usize,
    /// FedProx coefficient: adds `mu/2 * ||w - w_global||^2` to the loss; 0 = off.
    pub proximal_mu: f64,
    /// Seed of the shuffling stream (see [`client_seed`]).
    pub seed: u64,
    /// Size of the private rayon pool this call runs in; 0 = the caller's pool.
    /// Small models train fastest single-threaded, but candle also sizes its
    /// own kernels from `RAYON_NUM_THREADS` (read at every matmul), so a
    /// process that trains should set `RAYON_NUM_THREADS=1` at startup and run
    /// clients in parallel instead. Measured, MNIST MLP round of 10 clients on
    /// 2 busy cores: 2.3 s with the variable set, 7 s with only `threads: 1`,
    /// 12 s with neither.
    #[serde(default = "one")]
    pub threads: usize,
}

fn one() -> usize {
    1
}

/// Runs `f` on a private rayon pool of `threads` threads (0 = as is).
pub(crate) fn on_threads<T: Send>(
    threads: usize,
    f: impl FnOnce() -> Result<T> + Send,
) -> Result<T> {
    if threads == 0 {
        return f();
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| FlError::InvalidConfig(format!("thread pool: {e}")))?
        .install(f)
}

impl Default for TrainConfig {
    /// The Flower anchor's setting: SGD lr 0.05, batch 32, 1 epoch, no proximal term.
    fn default() -> Self {
        TrainConfig {
            optimizer: OptimizerConfig::Sgd { lr: 0.05 },
            batch_size: 32,
            local_epochs: 1,
            proximal_mu: 0.0,
            seed: 42,
            threads: 1,
        }
    }
}

/// What a client sends back after a round.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalUpdate {
    /// `trained - global`.
    pub delta: Params,
    /// Local examples used (for sample weighting).
    pub num_samples: usize,
    /// Mean training cross-entropy over all steps (before each step's update).
    pub loss: f64,
    /// Training accuracy over all steps (before each step's update).
    pub accuracy: f64,
}

/// Mean loss and accuracy of a model on a dataset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// Mean cross-entropy.
    pub loss: f64,
    /// Fraction classified correctly.
    pub accuracy: f64,
}

/// A per-(round, client) seed derived from a job seed (SplitMix64 mixing),
/// so every client shuffles differently every round, reproducibly.
pub fn client_seed(base: u64, round: u64, client: u64) -> u64 {
    let mut z = base
        .wrapping_add(round.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(client.wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Features and labels as candle tensors.
fn to_tensors(data: &Dataset, spec: &ModelSpec) -> Result<(Tensor, Tensor)> {
    if data.num_features() != spec.inputs() {
        return Err(FlError::InvalidConfig(format!(
            "dataset has {} features, model expects {}",
            data.num_features(),
            spec.inputs()
        )));
    }
    let classes = spec.classes() as u32;
    if let Some(bad) = data.labels().iter().find(|&&l| l >= classes) {
        return Err(FlError::InvalidConfig(format!(
            "label {bad} out of range for {classes} classes"
        )));
    }
    let x = Tensor::from_slice(
        data.features(),
        (data.len(), data.num_features()),
        &Device::Cpu,
    )?;
    let y = Tensor::from_slice(data.labels(), data.len(), &Device::Cpu)?;
    Ok((x, y))
}

/// Optimizer state across the steps of one local training run.
enum OptState {
    Sgd,
    Momentum(Vec<Tensor>),
    Adam {
        m: Vec<Tensor>,
        v: Vec<Tensor>,
        t: i32,
    },
}

impl OptState {
    fn new(cfg: &OptimizerConfig, vars: &[Var]) -> Result<Self> {
        let zeros = || -> Result<Vec<Tensor>> {
            vars.iter()
                .map(|v| Ok(v.as_tensor().zeros_like()?))
                .collect()
        };
        Ok(match cfg {
            OptimizerConfig::Sgd { .. } => OptState::Sgd,
            OptimizerConfig::Momentum { .. } => OptState::Momentum(zeros()?),
            OptimizerConfig::Adam { .. } => OptState::Adam {
                m: zeros()?,
                v: zeros()?,
                t: 0,
            },
        })
    }

    fn step(&mut self, cfg: &OptimizerConfig, vars: &[Var], grads: &[Tensor]) -> Result<()> {
        match (self, cfg) {
            (OptState::Sgd, OptimizerConfig::Sgd { lr }) => {
                for (var, g) in vars.iter().zip(grads) {
                    var.set(&var.as_tensor().sub(&g.affine(*lr, 0.0)?)?)?;
                }
            }
            (OptState::Momentum(vel), OptimizerConfig::Momentum { lr, momentum }) => {
                for ((var, g), v) in vars.iter().zip(grads).zip(vel.iter_mut()) {
                    *v = v.affine(*momentum, 0.0)?.add(g)?;
                    var.set(&var.as_tensor().sub(&v.affine(*lr, 0.0)?)?)?;
                }
            }
            (
                OptState::Adam { m, v, t },
                OptimizerConfig::Adam {
                    lr,
                    beta1,
                    beta2,
                    eps,
                },
            ) => {
                *t += 1;
                let c1 = 1.0 - beta1.powi(*t);
                let c2 = 1.0 - beta2.powi(*t);
                for (((var, g), m), v) in vars.iter().zip(grads).zip(m.iter_mut()).zip(v.iter_mut())
                {
                    *m = m.affine(*beta1, 0.0)?.add(&g.affine(1.0 - beta1, 0.0)?)?;
                    *v = v
                        .affine(*beta2, 0.0)?
                        .add(&g.sqr()?.affine(1.0 - beta2, 0.0)?)?;
                    let mhat = m.affine(1.0 / c1, 0.0)?;
                    let denom = v.affine(1.0 / c2, 0.0)?.sqrt()?.affine(1.0, *eps)?;
                    var.set(&var.as_tensor().sub(&mhat.div(&denom)?.affine(*lr, 0.0)?)?)?;
                }
            }
            _ => {
                return Err(FlError::InvalidConfig(
                    "optimizer state does not match its config".into(),
                ))
            }
        }
        Ok(())
    }
}

/// Trains `spec` from `global` on `data` and returns the update.
/// Deterministic for a given `cfg.seed`.
pub fn train_local(
    spec: &ModelSpec,
    global: &Params,
    data: &Dataset,
    cfg: &TrainConfig,
) -> Result<LocalUpdate> {
    on_threads(cfg.threads, || train_local_here(spec, global, data, cfg))
}

fn train_local_here(
    spec: &ModelSpec,
    global: &Params,
    data: &Dataset,
    cfg: &TrainConfig,
) -> Result<LocalUpdate> {
    if cfg.batch_size == 0 || cfg.local_epochs == 0 {
        return Err(FlError::InvalidConfig(
            "batch_size and local_epochs must be positive".into(),
        ));
    }
    if data.is_empty() {
        return Err(FlError::InvalidConfig("empty local dataset".into()));
    }
    let model = Model::from_params(spec, global)?;
    let (x, y) = to_tensors(data, spec)?;
    let anchors: Vec<Tensor> = if cfg.proximal_mu > 0.0 {
        model
            .vars()
            .iter()
            .map(|v| v.as_tensor().copy().map(|t| t.detach()))
            .collect::<candle_core::Result<_>>()?
    } else {
        Vec::new()
    };
    let mut state = OptState::new(&cfg.optimizer, model.vars())?;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut order: Vec<u32> = (0..data.len() as u32).collect();
    let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0u64, 0u64);
    for _ in 0..cfg.local_epochs {
        order.shuffle(&mut rng);
        for batch in order.chunks(cfg.batch_size) {
            let idx = Tensor::from_slice(batch, batch.len(), &Device::Cpu)?;
            let xb = x.index_select(&idx, 0)?;
            let yb = y.index_select(&idx, 0)?;
            let logits = model.forward(&xb)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &yb)?;
            let hits = logits
                .argmax(D::Minus1)?
                .eq(&yb)?
                .to_dtype(DType::U32)?
                .sum_all()?;
            loss_sum += f64::from(loss.to_scalar::<f32>()?) * batch.len() as f64;
            correct += u64::from(hits.to_scalar::<u32>()?);
            seen += batch.len() as u64;
            let objective = if cfg.proximal_mu > 0.0 {
                let mut prox = Tensor::zeros((), DType::F32, &Device::Cpu)?;
                for (v, a) in model.vars().iter().zip(&anchors) {
                    prox = prox.add(&v.as_tensor().sub(a)?.sqr()?.sum_all()?)?;
                }
                loss.add(&prox.affine(cfg.proximal_mu / 2.0, 0.0)?)?
            } else {
                loss
            };
            let store = objective.backward()?;
            let grads = model
                .vars()
                .iter()
                .map(|v| match store.get(v.as_tensor()) {
                    Some(g) => Ok(g.clone()),
                    None => Ok(v.as_tensor().zeros_like()?),
                })
                .collect::<Result<Vec<_>>>()?;
            state.step(&cfg.optimizer, model.vars(), &grads)?;
        }
    }
    let trained = model.to_params()?;
    Ok(LocalUpdate {
        delta: trained.sub(global)?,
        num_samples: data.len(),
        loss: loss_sum / seen as f64,
        accuracy: correct as f64 / seen as f64,
    })
}

/// Mean cross-entropy and accuracy of `params` on `data` (batches of 2000),
/// on one thread.
pub fn evaluate(spec: &ModelSpec, params: &Params, data: &Dataset) -> Result<Evaluation> {
    on_threads(1, || evaluate_here(spec, params, data))
}

fn evaluate_here(spec: &ModelSpec, params: &Params, data: &Dataset) -> Result<Evaluation> {
    if data.is_empty() {
        return Err(FlError::InvalidConfig("empty evaluation dataset".into()));
    }
    let model = Model::from_params(spec, params)?;
    let (x, y) = to_tensors(data, spec)?;
    let (mut loss_sum, mut correct) = (0.0f64, 0u64);
    let n = data.len();
    let mut start = 0;
    while start < n {
        let len = (n - start).min(2000);
        let xb = x.narrow(0, start, len)?;
        let yb = y.narrow(0, start, len)?;
        let logits = model.forward(&xb)?;
        let loss = candle_nn::loss::cross_entropy(&logits, &yb)?;
        loss_sum += f64::from(loss.to_scalar::<f32>()?) * len as f64;
        let hits = logits
            .argmax(D::Minus1)?
            .eq(&yb)?
            .to_dtype(DType::U32)?
            .sum_all()?;
        correct += u64::from(hits.to_scalar::<u32>()?);
        start += len;
    }
    Ok(Evaluation {
        loss: loss_sum / n as f64,
        accuracy: correct as f64 / n as f64,
    })
}

#[cfg(test)]
#[path = "train_tests.rs"]
mod tests;
