//! Which nodes take part in a round (pure).

use rand::seq::SliceRandom;
use rand::SeedableRng;

/// A node that can train: its id and client index.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Candidate {
    /// Node id.
    pub node: String,
    /// Its client index (data shard).
    pub client: u32,
}

/// Picks `ceil(fraction * n)` (at least `min_clients`, at most all) of the
/// candidates, one node per client index, reproducibly for a given `seed`.
/// Returns fewer than `min_clients` only when there are fewer candidates.
pub fn select(
    mut candidates: Vec<Candidate>,
    fraction: f64,
    min_clients: usize,
    seed: u64,
) -> Vec<Candidate> {
    // One node per client index: the first by node id.
    candidates.sort_by(|a, b| (a.client, &a.node).cmp(&(b.client, &b.node)));
    candidates.dedup_by(|a, b| a.client == b.client);
    let n = candidates.len();
    let want = ((fraction * n as f64).ceil() as usize)
        .max(min_clients)
        .min(n);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    candidates.shuffle(&mut rng);
    candidates.truncate(want);
    candidates.sort();
    candidates
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cands(n: u32) -> Vec<Candidate> {
        (0..n)
            .map(|c| Candidate {
                node: format!("node-{c}"),
                client: c,
            })
            .collect()
    }

    #[test]
    fn fraction_minimum_and_duplicates() {
        assert_eq!(select(cands(10), 1.0, 1, 7).len(), 10);
        assert_eq!(select(cands(10), 0.3, 1, 7).len(), 3);
        assert_eq!(select(cands(10), 0.1, 4, 7).len(), 4, "the minimum wins");
        assert_eq!(
            select(cands(2), 0.5, 4, 7).len(),
            2,
            "never more than exist"
        );
        let mut dup = cands(3);
        dup.push(Candidate {
            node: "other".into(),
            client: 1,
        });
        assert_eq!(select(dup, 1.0, 1, 7).len(), 3, "one node per shard");
    }

    #[test]
    fn selection_is_reproducible_and_varies_by_seed() {
        let a = select(cands(20), 0.25, 1, 1);
        assert_eq!(a, select(cands(20), 0.25, 1, 1));
        let differs = (2..10).any(|s| select(cands(20), 0.25, 1, s) != a);
        assert!(differs);
    }
}
