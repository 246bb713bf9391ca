//! Screening of client updates before aggregation: an update that is not
//! the model's shape, holds NaN or infinity, or claims more samples than
//! the node's shard can have is dropped for that node and that round (and
//! counted), never fatal to the job. Pure, tested without a cluster.

use backends::fl::job::{PartitionSpec, TRAIN_ROWS};
use backends::fl::SplitKind;
use protocol::fl::FlUpdate;

/// The most training rows one client's shard can hold under `partition`:
/// `max_rows_per_client` when set; for a computed IID split, the pool
/// divided among the clients (rounded up); for a Dirichlet split or a
/// partition file (shards of any size), the whole pool. A client claiming
/// more would weigh its update above what it trained on.
pub fn max_shard_rows(partition: &PartitionSpec) -> u64 {
    let by_split = match (partition.split, &partition.file) {
        (SplitKind::Iid, None) => TRAIN_ROWS.div_ceil(partition.clients.max(1)),
        _ => TRAIN_ROWS,
    };
    let cap = partition.max_rows_per_client.unwrap_or(TRAIN_ROWS);
    by_split.min(cap) as u64
}

/// Why an update was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Its delta is not `num_values` little-endian f32.
    WrongLength,
    /// Its delta or its training loss is NaN or infinite.
    NotFinite,
    /// It claims no samples, or more than its shard can hold.
    BadSampleCount,
}

/// The reason `update` cannot be aggregated into a model of `num_values`
/// values from a shard of at most `max_samples` rows, if any.
pub fn reject(update: &FlUpdate, num_values: usize, max_samples: u64) -> Option<Rejection> {
    if update.delta.len() != num_values.saturating_mul(4) {
        return Some(Rejection::WrongLength);
    }
    if update.num_samples == 0 || update.num_samples > max_samples {
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
pub fn screen(
    updates: Vec<FlUpdate>,
    num_values: usize,
    max_samples: u64,
) -> (Vec<FlUpdate>, usize) {
    let before = updates.len();
    let kept: Vec<FlUpdate> = updates
        .into_iter()
        .filter(|u| match reject(u, num_values, max_samples) {
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
        assert_eq!(reject(&good, 3, MAX), None);
        assert_eq!(reject(&good, 4, MAX), Some(Rejection::WrongLength));
        assert_eq!(
            reject(&update(&[0.1, f32::NAN, 0.3], 100, 0.7), 3, MAX),
            Some(Rejection::NotFinite)
        );
        assert_eq!(
            reject(&update(&[0.1, f32::INFINITY, 0.3], 100, 0.7), 3, MAX),
            Some(Rejection::NotFinite)
        );
        assert_eq!(
            reject(&update(&[0.1, 0.2, 0.3], 100, f64::NAN), 3, MAX),
            Some(Rejection::NotFinite)
        );
        assert_eq!(
            reject(&update(&[0.1, 0.2, 0.3], 0, 0.7), 3, MAX),
            Some(Rejection::BadSampleCount)
        );
        assert_eq!(
            reject(&update(&[0.1, 0.2, 0.3], u64::MAX, 0.7), 3, MAX),
            Some(Rejection::BadSampleCount)
        );
        let (kept, dropped) = screen(
            vec![good.clone(), update(&[f32::NAN; 3], 10, 0.1), good.clone()],
            3,
            MAX,
        );
        assert_eq!((kept.len(), dropped), (2, 1));
    }

    const MAX: u64 = TRAIN_ROWS as u64;

    #[test]
    fn a_client_may_not_claim_more_rows_than_its_shard() {
        let spec = |split, clients, file: Option<&str>, cap| PartitionSpec {
            split,
            clients,
            file: file.map(Into::into),
            alpha: 0.5,
            seed: 0,
            max_rows_per_client: cap,
        };
        let iid10 = max_shard_rows(&spec(SplitKind::Iid, 10, None, None));
        assert_eq!(iid10, (TRAIN_ROWS / 10) as u64);
        let claim = |n| update(&[0.1, 0.2, 0.3], n, 0.7);
        assert_eq!(reject(&claim(iid10), 3, iid10), None);
        assert_eq!(
            reject(&claim(iid10 + 1), 3, iid10),
            Some(Rejection::BadSampleCount)
        );
        let capped = max_shard_rows(&spec(SplitKind::Iid, 10, None, Some(500)));
        assert_eq!(capped, 500);
        let dirichlet = max_shard_rows(&spec(SplitKind::Dirichlet, 10, None, None));
        assert_eq!(dirichlet, MAX);
        let file = max_shard_rows(&spec(SplitKind::Iid, 10, Some("p.json"), None));
        assert_eq!(file, MAX);
    }
}
