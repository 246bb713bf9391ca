//! Differential privacy for updates: L2 clipping plus seeded Gaussian noise,
//! on the client (each update) or on the server (the clipped average).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::aggregate::ClientUpdate;
use super::error::{FlError, Result};
use super::params::Params;

/// Clipping bound and noise multiplier.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DpConfig {
    /// L2 bound `C` every update is clipped to.
    pub clip_norm: f32,
    /// Noise multiplier `sigma`: noise std is `sigma * C` per update (client
    /// side) or `sigma * C / m` on the mean of `m` updates (server side).
    pub noise_multiplier: f32,
}

/// What a DP step did, for logs and privacy accounting.
#[derive(Debug, Clone, PartialEq)]
pub struct DpReport {
    /// `sigma`.
    pub noise_multiplier: f32,
    /// Standard deviation of the noise actually added to each coordinate.
    pub noise_std: f32,
    /// L2 norms of the updates before clipping.
    pub norms_before: Vec<f64>,
    /// How many updates were scaled down.
    pub clipped: usize,
}

impl DpConfig {
    fn validate(&self) -> Result<()> {
        if self.clip_norm.is_nan()
            || self.clip_norm <= 0.0
            || self.noise_multiplier.is_nan()
            || self.noise_multiplier < 0.0
        {
            return Err(FlError::InvalidConfig(format!(
                "DP needs clip_norm > 0 and noise_multiplier >= 0, got {self:?}"
            )));
        }
        Ok(())
    }
}

/// Scales `update` down so its L2 norm is at most `clip_norm`; returns the
/// norm before clipping.
pub fn clip(update: &mut Params, clip_norm: f32) -> f64 {
    let norm = update.l2_norm();
    if norm > f64::from(clip_norm) {
        update.scale_in_place((f64::from(clip_norm) / norm) as f32);
    }
    norm
}

/// Adds N(0, std^2) to every value, from a ChaCha8 stream seeded by `seed`
/// (Box–Muller).
pub fn add_gaussian_noise(params: &mut Params, std: f32, seed: u64) {
    if std == 0.0 {
        return;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut spare: Option<f64> = None;
    for v in params.values_mut() {
        let z = match spare.take() {
            Some(z) => z,
            None => {
                let u1: f64 = 1.0 - rng.gen::<f64>(); // (0, 1]
                let u2: f64 = rng.gen();
                let r = (-2.0 * u1.ln()).sqrt();
                let theta = std::f64::consts::TAU * u2;
                spare = Some(r * theta.sin());
                r * theta.cos()
            }
        };
        *v += (z * f64::from(std)) as f32;
    }
}

/// Client-side DP: clip the update to `C`, add N(0, (sigma*C)^2) per coordinate.
pub fn privatize_client(update: &mut Params, cfg: &DpConfig, seed: u64) -> Result<DpReport> {
    cfg.validate()?;
    let norm = clip(update, cfg.clip_norm);
    let std = cfg.noise_multiplier * cfg.clip_norm;
    add_gaussian_noise(update, std, seed);
    Ok(DpReport {
        noise_multiplier: cfg.noise_multiplier,
        noise_std: std,
        clipped: usize::from(norm > f64::from(cfg.clip_norm)),
        norms_before: vec![norm],
    })
}

/// Server-side (central) DP: clip each update to `C`, take the unweighted
/// mean of the `m` updates, add N(0, (sigma*C/m)^2) per coordinate.
pub fn privatize_server(
    updates: &[ClientUpdate],
    cfg: &DpConfig,
    seed: u64,
) -> Result<(Params, DpReport)> {
    cfg.validate()?;
    let first = updates
        .first()
        .ok_or_else(|| FlError::InvalidConfig("no client updates to privatize".into()))?;
    let m = updates.len();
    let mut sum = first.delta.zeros_like();
    let mut norms = Vec::with_capacity(m);
    for u in updates {
        let mut d = u.delta.clone();
        norms.push(clip(&mut d, cfg.clip_norm));
        sum.add_scaled(&d, 1.0)?;
    }
    sum.scale_in_place(1.0 / m as f32);
    let std = cfg.noise_multiplier * cfg.clip_norm / m as f32;
    add_gaussian_noise(&mut sum, std, seed);
    let clipped = norms
        .iter()
        .filter(|&&n| n > f64::from(cfg.clip_norm))
        .count();
    Ok((
        sum,
        DpReport {
            noise_multiplier: cfg.noise_multiplier,
            noise_std: std,
            norms_before: norms,
            clipped,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fl::params::NamedTensor;

    fn p(values: Vec<f32>) -> Params {
        Params::new(vec![
            NamedTensor::new("w", vec![values.len()], values).unwrap()
        ])
        .unwrap()
    }

    #[test]
    fn clipping() {
        let mut a = p(vec![3.0, 4.0]);
        assert_eq!(clip(&mut a, 1.0), 5.0);
        assert!((a.l2_norm() - 1.0).abs() < 1e-6);
        let mut b = p(vec![0.3, 0.4]);
        clip(&mut b, 1.0);
        assert_eq!(b, p(vec![0.3, 0.4]));
    }

    #[test]
    fn noise_is_seeded_and_has_the_right_scale() {
        let mut a = p(vec![0.0; 100_000]);
        add_gaussian_noise(&mut a, 2.0, 9);
        let mut b = p(vec![0.0; 100_000]);
        add_gaussian_noise(&mut b, 2.0, 9);
        assert_eq!(a, b);
        let n = a.num_values() as f64;
        let mean = a.values().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = a
            .values()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(mean.abs() < 0.03, "{mean}");
        assert!((var.sqrt() - 2.0).abs() < 0.03, "{var}");
    }

    #[test]
    fn client_and_server_side() {
        let cfg = DpConfig {
            clip_norm: 1.0,
            noise_multiplier: 0.0,
        };
        let mut a = p(vec![3.0, 4.0]);
        let r = privatize_client(&mut a, &cfg, 1).unwrap();
        assert_eq!((r.clipped, r.noise_std), (1, 0.0));
        let ups = vec![
            ClientUpdate {
                delta: p(vec![3.0, 4.0]),
                num_samples: 1,
            },
            ClientUpdate {
                delta: p(vec![0.0, 0.5]),
                num_samples: 9,
            },
        ];
        let (mean, r) = privatize_server(&ups, &cfg, 1).unwrap();
        // clipped: [0.6, 0.8] and [0, 0.5]; unweighted mean
        let v: Vec<f32> = mean.values().copied().collect();
        assert!(
            (v[0] - 0.3).abs() < 1e-6 && (v[1] - 0.65).abs() < 1e-6,
            "{v:?}"
        );
        assert_eq!(r.clipped, 1);
        let noisy = DpConfig {
            clip_norm: 2.0,
            noise_multiplier: 1.5,
        };
        let (_, r) = privatize_server(&ups, &noisy, 1).unwrap();
        assert_eq!((r.noise_multiplier, r.noise_std), (1.5, 1.5));
        assert!(privatize_server(&[], &cfg, 1).is_err());
        assert!(privatize_client(
            &mut a,
            &DpConfig {
                clip_norm: 0.0,
                noise_multiplier: 1.0
            },
            1
        )
        .is_err());
    }
}
