//! Server-side aggregation: pure functions over client deltas, the
//! [`Strategy`] enum of a job spec, and the stateful [`Aggregator`] that moves
//! the global parameters.

use serde::{Deserialize, Serialize};

use super::error::{FlError, Result};
use super::params::Params;

/// One client's contribution to a round.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientUpdate {
    /// `trained - global`.
    pub delta: Params,
    /// Local examples (the FedAvg weight).
    pub num_samples: usize,
}

/// An aggregation strategy, as written in a job spec, e.g.
/// `{"name":"fed_adam","eta":0.01,"beta1":0.9,"beta2":0.99,"tau":0.001}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case")]
pub enum Strategy {
    /// Sample-weighted mean of deltas (McMahan et al. 2017).
    FedAvg,
    /// FedAvg with server momentum (Hsu et al. 2019): `v = momentum*v + Δ; x += server_lr*v`.
    FedAvgM {
        /// Server learning rate.
        server_lr: f32,
        /// Server momentum.
        momentum: f32,
    },
    /// FedProx: the server side is FedAvg; `mu` belongs in the clients' `TrainConfig::proximal_mu`.
    FedProx {
        /// Proximal coefficient (informational on the server).
        mu: f32,
    },
    /// FedAdagrad (Reddi et al. 2021): `m = β1 m + (1-β1)Δ; v += Δ²; x += η m/(√v+τ)`.
    FedAdagrad {
        /// Server learning rate η.
        eta: f32,
        /// Momentum β1 (0 disables).
        beta1: f32,
        /// Adaptivity τ.
        tau: f32,
    },
    /// FedAdam (Reddi et al. 2021): `v = β2 v + (1-β2)Δ²`.
    FedAdam {
        /// Server learning rate η.
        eta: f32,
        /// First-moment decay β1.
        beta1: f32,
        /// Second-moment decay β2.
        beta2: f32,
        /// Adaptivity τ.
        tau: f32,
    },
    /// FedYogi (Reddi et al. 2021): `v = v - (1-β2)Δ² sign(v - Δ²)`.
    FedYogi {
        /// Server learning rate η.
        eta: f32,
        /// First-moment decay β1.
        beta1: f32,
        /// Second-moment decay β2.
        beta2: f32,
        /// Adaptivity τ.
        tau: f32,
    },
    /// Coordinate-wise median of deltas (unweighted).
    Median,
    /// Coordinate-wise mean after dropping the `floor(beta*n)` largest and smallest values.
    TrimmedMean {
        /// Fraction trimmed at each end, in `[0, 0.5)`.
        beta: f32,
    },
    /// Krum (Blanchard et al. 2017): the single delta with the best score.
    Krum {
        /// Byzantine clients tolerated.
        f: usize,
    },
    /// Multi-Krum: sample-weighted mean of the `m` best-scored deltas.
    MultiKrum {
        /// Byzantine clients tolerated.
        f: usize,
        /// Deltas kept.
        m: usize,
    },
}

fn check(updates: &[ClientUpdate]) -> Result<&Params> {
    let first = &updates
        .first()
        .ok_or_else(|| FlError::InvalidConfig("no client updates to aggregate".into()))?
        .delta;
    for u in &updates[1..] {
        first.check_layout(&u.delta)?;
    }
    Ok(first)
}

/// Sample-weighted mean of the deltas (errors if all weights are zero).
pub fn fedavg(updates: &[ClientUpdate]) -> Result<Params> {
    let first = check(updates)?;
    let total: f64 = updates.iter().map(|u| u.num_samples as f64).sum();
    if total <= 0.0 {
        return Err(FlError::InvalidConfig("total sample count is zero".into()));
    }
    let mut acc = vec![0.0f64; first.num_values()];
    for u in updates {
        let w = u.num_samples as f64 / total;
        for (a, &v) in acc.iter_mut().zip(u.delta.values()) {
            *a += w * f64::from(v);
        }
    }
    let mut out = first.zeros_like();
    for (o, a) in out.values_mut().zip(acc) {
        *o = a as f32;
    }
    Ok(out)
}

/// Applies `reduce` to each coordinate's values across clients.
fn coordinatewise(
    updates: &[ClientUpdate],
    mut reduce: impl FnMut(&mut [f32]) -> f32,
) -> Result<Params> {
    let first = check(updates)?;
    let mut out = first.zeros_like();
    let columns: Vec<Vec<f32>> = updates
        .iter()
        .map(|u| u.delta.values().copied().collect())
        .collect();
    let mut buf = vec![0.0f32; updates.len()];
    for (j, o) in out.values_mut().enumerate() {
        for (b, c) in buf.iter_mut().zip(&columns) {
            *b = c[j];
        }
        *o = reduce(&mut buf);
    }
    Ok(out)
}

/// Coordinate-wise median (mean of the two middle values for even counts).
pub fn median(updates: &[ClientUpdate]) -> Result<Params> {
    coordinatewise(updates, |v| {
        v.sort_by(f32::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    })
}

/// Coordinate-wise trimmed mean dropping `floor(beta*n)` values at each end.
pub fn trimmed_mean(updates: &[ClientUpdate], beta: f32) -> Result<Params> {
    if !(0.0..0.5).contains(&beta) {
        return Err(FlError::InvalidConfig(format!(
            "trimmed mean beta {beta} not in [0, 0.5)"
        )));
    }
    let k = (beta * updates.len() as f32).floor() as usize;
    if 2 * k >= updates.len() {
        return Err(FlError::InvalidConfig(
            "trimmed mean would drop every update".into(),
        ));
    }
    coordinatewise(updates, |v| {
        v.sort_by(f32::total_cmp);
        let kept = &v[k..v.len() - k];
        (kept.iter().map(|&x| f64::from(x)).sum::<f64>() / kept.len() as f64) as f32
    })
}

/// Krum scores: for each update, the sum of squared distances to its
/// `n - f - 2` nearest other updates. Needs `n > f + 2`.
pub fn krum_scores(updates: &[ClientUpdate], f: usize) -> Result<Vec<f64>> {
    check(updates)?;
    let n = updates.len();
    if n < f + 3 {
        return Err(FlError::InvalidConfig(format!(
            "Krum with f={f} needs at least {} updates, got {n}",
            f + 3
        )));
    }
    let mut dist = vec![vec![0.0f64; n]; n];
    for i in 0..n {
        for j in i + 1..n {
            let d = updates[i].delta.sq_distance(&updates[j].delta)?;
            dist[i][j] = d;
            dist[j][i] = d;
        }
    }
    Ok((0..n)
        .map(|i| {
            let mut others: Vec<f64> = (0..n).filter(|&j| j != i).map(|j| dist[i][j]).collect();
            others.sort_by(f64::total_cmp);
            others[..n - f - 2].iter().sum()
        })
        .collect())
}

/// Indices of the `m` best (lowest) Krum scores, best first (ties by index).
pub fn krum_select(updates: &[ClientUpdate], f: usize, m: usize) -> Result<Vec<usize>> {
    if m == 0 || m > updates.len() {
        return Err(FlError::InvalidConfig(format!(
            "Multi-Krum m={m} not in 1..={}",
            updates.len()
        )));
    }
    let scores = krum_scores(updates, f)?;
    let mut idx: Vec<usize> = (0..updates.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]).then(a.cmp(&b)));
    idx.truncate(m);
    Ok(idx)
}

/// Multi-Krum: sample-weighted mean of the `m` selected deltas (`m = 1` is Krum).
pub fn multi_krum(updates: &[ClientUpdate], f: usize, m: usize) -> Result<Params> {
    let chosen: Vec<ClientUpdate> = krum_select(updates, f, m)?
        .into_iter()
        .map(|i| updates[i].clone())
        .collect();
    fedavg(&chosen)
}

/// Server optimizer state carried across rounds.
#[derive(Debug, Clone, Default)]
struct ServerState {
    m: Option<Params>,
    v: Option<Params>,
}

/// Applies a [`Strategy`] round after round, keeping server-optimizer state.
#[derive(Debug, Clone)]
pub struct Aggregator {
    strategy: Strategy,
    state: ServerState,
    round: u64,
}

impl Aggregator {
    /// A fresh aggregator (round 0, no state).
    pub fn new(strategy: Strategy) -> Self {
        Aggregator {
            strategy,
            state: ServerState::default(),
            round: 0,
        }
    }

    /// The strategy in use.
    pub fn strategy(&self) -> &Strategy {
        &self.strategy
    }

    /// Rounds applied so far.
    pub fn rounds(&self) -> u64 {
        self.round
    }

    /// The aggregate delta of this round's updates before any server optimizer.
    pub fn combine(&self, updates: &[ClientUpdate]) -> Result<Params> {
        match &self.strategy {
            Strategy::FedAvg
            | Strategy::FedAvgM { .. }
            | Strategy::FedProx { .. }
            | Strategy::FedAdagrad { .. }
            | Strategy::FedAdam { .. }
            | Strategy::FedYogi { .. } => fedavg(updates),
            Strategy::Median => median(updates),
            Strategy::TrimmedMean { beta } => trimmed_mean(updates, *beta),
            Strategy::Krum { f } => multi_krum(updates, *f, 1),
            Strategy::MultiKrum { f, m } => multi_krum(updates, *f, *m),
        }
    }

    /// Aggregates one round and returns the new global parameters.
    pub fn apply(&mut self, global: &Params, updates: &[ClientUpdate]) -> Result<Params> {
        let delta = self.combine(updates)?;
        global.check_layout(&delta)?;
        let mut next = global.clone();
        match self.strategy.clone() {
            Strategy::FedAvgM {
                server_lr,
                momentum,
            } => {
                let v = self.state.v.get_or_insert_with(|| delta.zeros_like());
                v.zip_apply(&delta, |v, d| *v = momentum * *v + d)?;
                next.add_scaled(v, server_lr)?;
            }
            Strategy::FedAdagrad { eta, beta1, tau } => {
                self.adaptive(&mut next, &delta, eta, beta1, tau, |v, d2| v + d2)?
            }
            Strategy::FedAdam {
                eta,
                beta1,
                beta2,
                tau,
            } => self.adaptive(&mut next, &delta, eta, beta1, tau, |v, d2| {
                beta2 * v + (1.0 - beta2) * d2
            })?,
            Strategy::FedYogi {
                eta,
                beta1,
                beta2,
                tau,
            } => self.adaptive(&mut next, &delta, eta, beta1, tau, |v, d2| {
                v - (1.0 - beta2) * d2 * (v - d2).signum()
            })?,
            _ => next.add_scaled(&delta, 1.0)?,
        }
        self.round += 1;
        Ok(next)
    }

    /// Reddi et al. Algorithm 2; `v` starts at `tau^2` (the paper's `v_{-1}`).
    fn adaptive(
        &mut self,
        x: &mut Params,
        delta: &Params,
        eta: f32,
        beta1: f32,
        tau: f32,
        update_v: impl Fn(f32, f32) -> f32,
    ) -> Result<()> {
        let m = self.state.m.get_or_insert_with(|| delta.zeros_like());
        m.zip_apply(delta, |m, d| *m = beta1 * *m + (1.0 - beta1) * d)?;
        let v = self.state.v.get_or_insert_with(|| {
            let mut v = delta.zeros_like();
            v.values_mut().for_each(|x| *x = tau * tau);
            v
        });
        v.zip_apply(delta, |v, d| *v = update_v(*v, d * d))?;
        for ((x, &m), &v) in x.values_mut().zip(m.values()).zip(v.values()) {
            *x += eta * m / (v.sqrt() + tau);
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "aggregate_tests.rs"]
mod tests;
