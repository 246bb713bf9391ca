//! Bounds on a federated job spec. A spec comes from whoever can reach the
//! admin API and is replayed by every leader, so anything it makes a
//! coordinator or a node allocate, wait for, read or write is capped here:
//! no spec can crash, wedge or crash-loop the control plane, and none can
//! name a file outside the directory it is resolved against.

use std::path::{Component, Path};

use super::aggregate::Strategy;
use super::error::{FlError, Result};
use super::job::JobSpec;
use super::model::ModelSpec;
use super::train::OptimizerConfig;

/// Longest job id.
pub const MAX_ID_LEN: usize = 63;
/// Most parameters of a job's model (64 MiB of f32 per copy).
pub const MAX_PARAMS: usize = 16 << 20;
/// Most dense layers of an MLP.
pub const MAX_LAYERS: usize = 32;
/// Most rounds of a job.
pub const MAX_ROUNDS: u64 = 100_000;
/// Most clients (shards) of a job.
pub const MAX_CLIENTS: usize = 10_000;
/// Longest round timeout, in seconds (one day).
pub const MAX_ROUND_TIMEOUT_S: u64 = 86_400;
/// Largest mini-batch.
pub const MAX_BATCH: usize = 65_536;
/// Most local epochs per round.
pub const MAX_LOCAL_EPOCHS: usize = 1_000;
/// Most training threads a spec may ask a node for.
pub const MAX_TRAIN_THREADS: usize = 256;

fn bad<T>(m: impl Into<String>) -> Result<T> {
    Err(FlError::InvalidConfig(m.into()))
}

/// Job ids are `[a-z0-9][a-z0-9_-]{0,62}`: they name files and metrics.
pub fn check_id(id: &str) -> Result<()> {
    let mut chars = id.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if first_ok && rest_ok && id.len() <= MAX_ID_LEN {
        Ok(())
    } else {
        bad(format!(
            "id {id:?} must match [a-z0-9][a-z0-9_-]{{0,{}}}",
            MAX_ID_LEN - 1
        ))
    }
}

/// A file a spec names: relative, without `..`, resolved by the reader
/// against its own data directory.
pub fn check_relative_file(field: &str, path: &Path) -> Result<()> {
    let ok = !path.as_os_str().is_empty()
        && path.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        bad(format!(
            "{field} {:?} must be a relative path inside the data directory (no '/', no '..')",
            path.display()
        ))
    }
}

fn finite_in(field: &str, v: f64, lo: f64, hi: f64) -> Result<()> {
    if v.is_finite() && (lo..=hi).contains(&v) {
        Ok(())
    } else {
        bad(format!(
            "{field} must be finite and in [{lo}, {hi}], got {v}"
        ))
    }
}

/// Parameters of `model`, refusing more than [`MAX_PARAMS`] without
/// overflowing on the way.
pub fn check_model(model: &ModelSpec) -> Result<usize> {
    if let ModelSpec::Mlp { layers } = model {
        if layers.len() > MAX_LAYERS + 1 {
            return bad(format!(
                "model.layers has {} widths, at most {} allowed",
                layers.len(),
                MAX_LAYERS + 1
            ));
        }
    }
    let mut total = 0usize;
    for (name, shape) in model.layout() {
        let n = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| total.checked_add(n));
        match n {
            Some(t) if t <= MAX_PARAMS => total = t,
            _ => {
                return bad(format!(
                    "model has more than {MAX_PARAMS} parameters (at tensor {name})"
                ))
            }
        }
    }
    Ok(total)
}

fn check_optimizer(o: &OptimizerConfig) -> Result<()> {
    match *o {
        OptimizerConfig::Sgd { lr } => finite_in("train.optimizer.lr", lr, 1e-9, 100.0),
        OptimizerConfig::Momentum { lr, momentum } => {
            finite_in("train.optimizer.lr", lr, 1e-9, 100.0)?;
            finite_in("train.optimizer.momentum", momentum, 0.0, 0.9999)
        }
        OptimizerConfig::Adam {
            lr,
            beta1,
            beta2,
            eps,
        } => {
            finite_in("train.optimizer.lr", lr, 1e-9, 100.0)?;
            finite_in("train.optimizer.beta1", beta1, 0.0, 0.9999)?;
            finite_in("train.optimizer.beta2", beta2, 0.0, 0.999999)?;
            finite_in("train.optimizer.eps", eps, 1e-12, 1.0)
        }
    }
}

fn check_strategy(s: &Strategy, clients: usize) -> Result<()> {
    let f = |field: &str, v: f32, lo: f64, hi: f64| finite_in(field, f64::from(v), lo, hi);
    match *s {
        Strategy::FedAvg | Strategy::Median => Ok(()),
        Strategy::FedAvgM {
            server_lr,
            momentum,
        } => {
            f("strategy.server_lr", server_lr, 1e-9, 100.0)?;
            f("strategy.momentum", momentum, 0.0, 0.9999)
        }
        Strategy::FedProx { mu } => f("strategy.mu", mu, 0.0, 1e6),
        Strategy::FedAdagrad { eta, beta1, tau } => {
            f("strategy.eta", eta, 1e-9, 100.0)?;
            f("strategy.beta1", beta1, 0.0, 0.9999)?;
            f("strategy.tau", tau, 1e-12, 1e3)
        }
        Strategy::FedAdam {
            eta,
            beta1,
            beta2,
            tau,
        }
        | Strategy::FedYogi {
            eta,
            beta1,
            beta2,
            tau,
        } => {
            f("strategy.eta", eta, 1e-9, 100.0)?;
            f("strategy.beta1", beta1, 0.0, 0.9999)?;
            f("strategy.beta2", beta2, 0.0, 0.999999)?;
            f("strategy.tau", tau, 1e-12, 1e3)
        }
        Strategy::TrimmedMean { beta } => f("strategy.beta", beta, 0.0, 0.4999),
        Strategy::Krum { f: byz } | Strategy::MultiKrum { f: byz, .. } if byz > clients => bad(
            format!("strategy.f = {byz} exceeds the job's {clients} clients"),
        ),
        Strategy::MultiKrum { m, .. } if m == 0 || m > clients => bad(format!(
            "strategy.m = {m} must be in [1, {clients}] (the job's clients)"
        )),
        Strategy::Krum { .. } | Strategy::MultiKrum { .. } => Ok(()),
    }
}

/// Every bound above, on a whole spec.
pub fn check_spec(spec: &JobSpec) -> Result<()> {
    check_id(&spec.id)?;
    check_model(&spec.model)?;
    if spec.rounds > MAX_ROUNDS {
        return bad(format!("rounds must be at most {MAX_ROUNDS}"));
    }
    let clients = spec.partition.clients;
    if clients > MAX_CLIENTS {
        return bad(format!("partition.clients must be at most {MAX_CLIENTS}"));
    }
    if spec.sampling.min_clients > clients {
        return bad(format!(
            "sampling.min_clients = {} exceeds partition.clients = {clients}",
            spec.sampling.min_clients
        ));
    }
    if spec.round_timeout_s > MAX_ROUND_TIMEOUT_S {
        return bad(format!(
            "round_timeout_s must be at most {MAX_ROUND_TIMEOUT_S}"
        ));
    }
    if spec.train.batch_size > MAX_BATCH || spec.train.local_epochs > MAX_LOCAL_EPOCHS {
        return bad(format!(
            "train.batch_size must be at most {MAX_BATCH} and train.local_epochs at most {MAX_LOCAL_EPOCHS}"
        ));
    }
    if spec.train.threads > MAX_TRAIN_THREADS {
        return bad(format!("train.threads must be at most {MAX_TRAIN_THREADS}"));
    }
    check_optimizer(&spec.train.optimizer)?;
    finite_in("train.proximal_mu", spec.train.proximal_mu, 0.0, 1e6)?;
    check_strategy(&spec.strategy, clients)?;
    finite_in("partition.alpha", spec.partition.alpha, 1e-6, 1e6)?;
    if let Some(dp) = &spec.dp {
        finite_in("dp.clip_norm", f64::from(dp.clip_norm), 1e-9, 1e9)?;
        finite_in(
            "dp.noise_multiplier",
            f64::from(dp.noise_multiplier),
            0.0,
            1e6,
        )?;
    }
    if let Some(file) = &spec.init.file {
        check_relative_file("init.file", file)?;
    }
    if let Some(file) = &spec.partition.file {
        check_relative_file("partition.file", file)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_could_name_other_files_are_refused() {
        for good in ["mnist-mlp", "a", "job_1", "0"] {
            check_id(good).unwrap();
        }
        for badid in [
            "",
            "../../../x",
            "/tmp/x",
            "A",
            "-x",
            "a/b",
            "a.b",
            &"a".repeat(64),
        ] {
            assert!(check_id(badid).is_err(), "{badid:?}");
        }
    }

    #[test]
    fn files_must_stay_inside_the_data_directory() {
        check_relative_file("f", Path::new("init_params.bin")).unwrap();
        check_relative_file("f", Path::new("fl/partitions.json")).unwrap();
        for p in ["/dev/zero", "../x", "a/../../x", "", "./x"] {
            assert!(check_relative_file("f", Path::new(p)).is_err(), "{p:?}");
        }
    }

    #[test]
    fn huge_models_are_refused_without_overflow() {
        let m = |layers: Vec<usize>| ModelSpec::Mlp { layers };
        assert_eq!(
            check_model(&m(vec![784, 200, 10])).unwrap(),
            784 * 200 + 200 + 200 * 10 + 10
        );
        assert!(check_model(&m(vec![100_000, 100_000])).is_err());
        assert!(check_model(&m(vec![usize::MAX, usize::MAX])).is_err());
        assert!(check_model(&m(vec![2; 40])).is_err());
    }
}
