//! Screening of client updates before aggregation: an update that is not
//! the model's shape, holds NaN or infinity, or claims more samples than a
//! shard can have is dropped for that node and that round (and counted),
//! never fatal to the job. Pure, tested without a cluster.

use backends::fl::job::TRAIN_ROWS;
use protocol::fl::FlUpdate;

/// Why an update was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Its delta is not `num_values` little-endian f32.
    WrongLength,
    /// Its delta or its training loss is NaN or infinite.
    NotFinite,
    /// It claims no samples, or more than the whole training pool.
    BadSampleCount,
}

/// The reason `update` cannot be aggregated into a model of `num_values`
/// values, if any.
pub fn reject(update: &FlUpdate, num_values: usize) -> Option<Rejection> {
    if update.delta.len() != num_values.saturating_mul(4) {
        return Some(Rejection::WrongLength);
    }
    if update.num_samples == 0 || update.num_samples > TRAIN_ROWS as u64 {
        return Some(Rejection::BadSampleCount);
    }
    let finite = update
        .delta
        .chunks_exact(4)
        .all(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]).is_finite());
    if !finite || !update.train_loss.is_finite() {
        return Some(Rejection::NotFinite);
    }
    None
}

/// Splits `updates` into those to aggregate and the count dropped.
pub fn screen(updates: Vec<FlUpdate>, num_values: usize) -> (Vec<FlUpdate>, usize) {
    let before = updates.len();
    let kept: Vec<FlUpdate> = updates
        .into_iter()
        .filter(|u| match reject(u, num_values) {
            None => true,
            Some(why) => {
                tracing::warn!(client = u.client, ?why, "update dropped from the round");
                false
            }
        })
        .collect();
    let dropped = before - kept.len();
    (kept, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(values: &[f32], num_samples: u64, train_loss: f64) -> FlUpdate {
        FlUpdate {
            client: 0,
            delta: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            num_samples,
            train_loss,
            train_accuracy: 0.5,
            eval_loss: 0.0,
            eval_accuracy: 0.0,
            eval_samples: 0,
            seconds: 1.0,
            dp_noise_multiplier: None,
        }
    }

    #[test]
    fn hostile_updates_are_dropped_and_counted() {
        let good = update(&[0.1, -0.2, 0.3], 100, 0.7);
        assert_eq!(reject(&good, 3), None);
        assert_eq!(reject(&good, 4), Some(Rejection::WrongLength));
        assert_eq!(
            reject(&update(&[0.1, f32::NAN, 0.3], 100, 0.7), 3),
            Some(Rejection::NotFinite)
        );
        assert_eq!(
            reject(&update(&[0.1, f32::INFINITY, 0.3], 100, 0.7), 3),
            Some(Rejection::NotFinite)
        );
        assert_eq!(
            reject(&update(&[0.1, 0.2, 0.3], 100, f64::NAN), 3),
            Some(Rejection::NotFinite)
        );
        assert_eq!(
            reject(&update(&[0.1, 0.2, 0.3], 0, 0.7), 3),
            Some(Rejection::BadSampleCount)
        );
        assert_eq!(
            reject(&update(&[0.1, 0.2, 0.3], u64::MAX, 0.7), 3),
            Some(Rejection::BadSampleCount)
        );
        let (kept, dropped) = screen(
            vec![good.clone(), update(&[f32::NAN; 3], 10, 0.1), good.clone()],
            3,
        );
        assert_eq!((kept.len(), dropped), (2, 1));
    }
}
