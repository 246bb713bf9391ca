//! Log-probabilities of one sampling step: the chosen token's and the most
//! likely alternatives', from the logits the sampler drew from.

/// The log-probabilities of one step.
#[derive(Debug, Clone, PartialEq)]
pub struct StepLogprobs {
    /// The chosen token's log-probability.
    pub chosen: f32,
    /// The most likely tokens, most likely first (ties to the lowest id).
    pub top: Vec<(u32, f32)>,
}

/// Log-softmax of `logits` at temperature 1, read at `chosen` and at the
/// `top` most likely ids.
///
/// NaN logits count as negative infinity; ids whose probability is zero
/// are never among the `top`. An id outside `logits` (or a row with no
/// finite logit) has log-probability negative infinity.
pub fn step_logprobs(logits: &[f32], chosen: u32, top: usize) -> StepLogprobs {
    let max = logits
        .iter()
        .copied()
        .filter(|l| !l.is_nan())
        .fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        // Nothing finite (or an infinite logit swamping everything):
        // fall back to a distribution with all mass on the largest ids.
        return degenerate(logits, chosen, top, max);
    }
    let sum: f64 = logits
        .iter()
        .filter(|l| !l.is_nan())
        // f32 exponentials (each at most 1) summed in f64: as exact as
        // the logits, and a vocabulary of 150k costs a fraction of a ms.
        .map(|&l| f64::from((l - max).exp()))
        .sum();
    let lse = f64::from(max) + sum.ln();
    let lp = |l: f32| -> f32 {
        if l.is_nan() {
            f32::NEG_INFINITY
        } else {
            (f64::from(l) - lse) as f32
        }
    };
    let chosen_lp = logits
        .get(chosen as usize)
        .map_or(f32::NEG_INFINITY, |&l| lp(l));
    let top = most_likely(logits, top)
        .into_iter()
        .map(|(id, l)| (id, lp(l)))
        .collect();
    StepLogprobs {
        chosen: chosen_lp,
        top,
    }
}

/// The `k` ids with the largest finite-or-infinite (not NaN, not -inf)
/// logits, largest first, ties to the lowest id. One pass, keeping a
/// sorted list of `k`.
fn most_likely(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut best: Vec<(u32, f32)> = Vec::with_capacity(k + 1);
    if k == 0 {
        return best;
    }
    for (i, &l) in logits.iter().enumerate() {
        if l.is_nan() || l == f32::NEG_INFINITY {
            continue;
        }
        if best.len() == k && best.last().is_some_and(|&(_, worst)| l <= worst) {
            continue;
        }
        // Strictly greater logits go first, so equal ones keep id order.
        let at = best.partition_point(|&(_, b)| b >= l);
        best.insert(at, (i as u32, l));
        best.truncate(k);
    }
    best
}

/// Log-probabilities when no finite maximum exists: +inf logits share the
/// mass equally; with none, nothing has any.
fn degenerate(logits: &[f32], chosen: u32, top: usize, max: f32) -> StepLogprobs {
    if max == f32::INFINITY {
        let count = logits.iter().filter(|&&l| l == f32::INFINITY).count();
        let share = -(count as f32).ln();
        let lp = |l: f32| {
            if l == f32::INFINITY {
                share
            } else {
                f32::NEG_INFINITY
            }
        };
        let chosen = logits
            .get(chosen as usize)
            .map_or(f32::NEG_INFINITY, |&l| lp(l));
        let top = most_likely(logits, top)
            .into_iter()
            .filter(|&(_, l)| l == f32::INFINITY)
            .map(|(id, _)| (id, share))
            .collect();
        return StepLogprobs { chosen, top };
    }
    StepLogprobs {
        chosen: f32::NEG_INFINITY,
        top: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-5
    }

    #[test]
    fn probabilities_sum_to_one_and_match_the_softmax() {
        let logits = [1.0f32, 2.0, 3.0, 0.5];
        let s = step_logprobs(&logits, 2, 4);
        let total: f32 = s.top.iter().map(|&(_, lp)| lp.exp()).sum();
        assert!(close(total, 1.0), "{total}");
        let z: f32 = logits.iter().map(|l| l.exp()).sum();
        assert!(close(s.chosen, (3.0f32.exp() / z).ln()));
        assert_eq!(s.top.iter().map(|t| t.0).collect::<Vec<_>>(), [2, 1, 0, 3]);
        assert!(close(s.top[0].1, s.chosen));
    }

    #[test]
    fn top_is_bounded_and_ties_go_to_the_lowest_id() {
        let logits = [5.0f32, 7.0, 7.0, 1.0, 7.0];
        let s = step_logprobs(&logits, 0, 2);
        assert_eq!(s.top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2]);
        assert!(step_logprobs(&logits, 0, 0).top.is_empty());
    }

    #[test]
    fn masked_and_nan_tokens_have_no_probability() {
        let logits = [f32::NEG_INFINITY, 0.0, f32::NAN, 0.0];
        let s = step_logprobs(&logits, 1, 4);
        assert!(close(s.chosen, 0.5f32.ln()));
        assert_eq!(s.top.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(step_logprobs(&logits, 0, 1).chosen, f32::NEG_INFINITY);
        assert_eq!(step_logprobs(&logits, 99, 1).chosen, f32::NEG_INFINITY);
    }

    #[test]
    fn rows_without_a_finite_maximum_do_not_produce_nan() {
        let none = step_logprobs(&[f32::NEG_INFINITY; 3], 0, 3);
        assert_eq!(none.chosen, f32::NEG_INFINITY);
        assert!(none.top.is_empty());
        let inf = step_logprobs(&[f32::INFINITY, 0.0, f32::INFINITY], 2, 3);
        assert!(close(inf.chosen, 0.5f32.ln()));
        assert_eq!(inf.top.len(), 2);
        assert!(step_logprobs(&[], 0, 3).top.is_empty());
    }
}
