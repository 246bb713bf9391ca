//! Which ready replica gets a request, as a pure function of what the
//! router knows: each replica's outstanding requests on this coordinator
//! and the prompt text spans its KV cache holds (from its heartbeats).
//!
//! The cost of sending a request to a replica is the prefill it would have
//! to do (the request's spans not already cached there, in spans of
//! [`SPAN_BYTES`](protocol::prefix::SPAN_BYTES) of text) plus
//! [`LOAD_WEIGHT_SPANS`] per request it already has, in the spirit of
//! NVIDIA Dynamo's KV router (prefill blocks after overlap plus active
//! load); the cheapest wins. When no replica holds any of the prompt (or
//! the prompt is too short to have a full span), this is plain power of
//! two choices over the outstanding requests.

use std::collections::HashSet;
use std::sync::Arc;

use protocol::prefix::leading_matches;
use rand::Rng;

/// How much prefill (in text spans, ~64 tokens each) one outstanding
/// request on a replica is worth. Recomputing a prefix costs far more than
/// the wait behind one more running sequence (measured here: ~5 ms per
/// prompt token of prefill at a 1,000-token context against ~3 ms of
/// time to first token per running sequence), and a recomputed prefix
/// evicts another from a full cache; so a replica holding a 16-span
/// (about 1,000-token) prefix keeps its requests until it has 16 more in
/// flight than another, and load decides only between equal overlaps.
pub const LOAD_WEIGHT_SPANS: usize = 1;

/// A ready replica.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Its node.
    pub node: String,
    /// Where to reach it.
    pub addr: String,
    /// The prompt spans its KV cache holds, if it reports any.
    pub prefixes: Option<Arc<HashSet<u64>>>,
    /// Share of its KV blocks holding cached prefixes or running
    /// sequences (0 when unknown).
    pub kv_fill: f64,
}

impl Candidate {
    /// Leading spans of the prompt this replica holds.
    pub fn overlap(&self, spans: &[u64]) -> usize {
        self.prefixes
            .as_ref()
            .map_or(0, |set| leading_matches(spans, |h| set.contains(&h)))
    }
}

/// Index of the candidate to route to, `None` if there is none.
pub fn pick(
    candidates: &[Candidate],
    spans: &[u64],
    load: impl Fn(&Candidate) -> usize,
    rng: &mut impl Rng,
) -> Option<usize> {
    match candidates.len() {
        0 => return None,
        1 => return Some(0),
        _ => {}
    }
    let overlaps: Vec<usize> = candidates.iter().map(|c| c.overlap(spans)).collect();
    if overlaps.iter().all(|&o| o == 0) {
        return Some(two_choices(candidates, &load, rng));
    }
    let cost = |i: usize| (spans.len() - overlaps[i]) + LOAD_WEIGHT_SPANS * load(&candidates[i]);
    (0..candidates.len()).min_by_key(|&i| (cost(i), load(&candidates[i]), usize::MAX - overlaps[i]))
}

/// Power of two choices: the less loaded of two random candidates.
fn two_choices(
    candidates: &[Candidate],
    load: &impl Fn(&Candidate) -> usize,
    rng: &mut impl Rng,
) -> usize {
    let a = rng.gen_range(0..candidates.len());
    let mut b = rng.gen_range(0..candidates.len() - 1);
    if b >= a {
        b += 1;
    }
    let key = |i: usize| (load(&candidates[i]), candidates[i].kv_fill);
    let (ka, kb) = (key(a), key(b));
    if kb.0 < ka.0 || (kb.0 == ka.0 && kb.1 < ka.1) {
        b
    } else {
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn cand(node: &str, spans: &[u64]) -> Candidate {
        Candidate {
            node: node.into(),
            addr: String::new(),
            prefixes: Some(Arc::new(spans.iter().copied().collect())),
            kv_fill: 0.0,
        }
    }

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(1)
    }

    #[test]
    fn the_replica_holding_the_prefix_wins_at_equal_load() {
        let prompt: Vec<u64> = (1..=16).collect();
        let c = [
            cand("a", &[]),
            cand("b", &prompt[..12]),
            cand("c", &prompt[..3]),
        ];
        for _ in 0..20 {
            assert_eq!(pick(&c, &prompt, |_| 1, &mut rng()), Some(1));
        }
    }

    #[test]
    fn only_leading_spans_count() {
        let prompt: Vec<u64> = (1..=8).collect();
        // b holds spans 2..8 but not span 1: nothing of this prompt's prefix.
        let c = [cand("a", &[1, 2]), cand("b", &prompt[1..])];
        assert_eq!(pick(&c, &prompt, |_| 0, &mut rng()), Some(0));
    }

    #[test]
    fn a_large_load_difference_outweighs_an_overlap() {
        let prompt: Vec<u64> = (1..=16).collect();
        let c = [cand("hot", &prompt), cand("idle", &[])];
        let busy = |n: usize| move |c: &Candidate| if c.node == "hot" { n } else { 0 };
        // 16 spans saved against 12 extra requests: stay.
        assert_eq!(pick(&c, &prompt, busy(12), &mut rng()), Some(0));
        // Against 20 extra requests: spill over.
        assert_eq!(pick(&c, &prompt, busy(20), &mut rng()), Some(1));
    }

    #[test]
    fn without_any_overlap_it_is_power_of_two_choices() {
        let c = [cand("a", &[]), cand("b", &[99])];
        let load = |c: &Candidate| if c.node == "a" { 5 } else { 0 };
        // With two candidates both are always sampled: the less loaded wins.
        for seed in 0..10 {
            let mut r = rand::rngs::StdRng::seed_from_u64(seed);
            assert_eq!(pick(&c, &[1, 2, 3], load, &mut r), Some(1));
        }
        assert_eq!(pick(&c, &[], load, &mut rng()), Some(1));
        assert_eq!(pick(&[], &[1], load, &mut rng()), None);
    }

    #[test]
    fn a_new_prefix_goes_where_it_evicts_least_at_equal_load() {
        let mut full = cand("full", &[7]);
        full.kv_fill = 0.6;
        let c = [full, cand("empty", &[8])];
        for seed in 0..10 {
            let mut r = rand::rngs::StdRng::seed_from_u64(seed);
            assert_eq!(pick(&c, &[1, 2], |_| 2, &mut r), Some(1));
        }
    }
}
