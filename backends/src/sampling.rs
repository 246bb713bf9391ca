//! Per-sequence token sampling, with llama.cpp's order of operations.
//!
//! Each step applies, in order:
//!
//! 1. penalties: repetition (over the last `penalty_last_n` tokens of prompt
//!    and output), then presence and frequency (over every generated token,
//!    OpenAI semantics);
//! 2. if the temperature is not positive: argmax, ties going to the lowest id;
//! 3. otherwise top-k → top-p → min-p → temperature → softmax → a draw from
//!    the sequence's own seeded random generator.
//!
//! The same parameters, seed and sequence of logits always give the same
//! tokens.

use std::collections::{HashMap, VecDeque};

use protocol::SamplingParams;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Chooses the tokens of one sequence from the model's logits.
///
/// Keeps the penalty state (a window of recent tokens and counts of generated
/// ones), a seeded random generator and scratch buffers that are reused from
/// call to call, so sampling does not allocate once the buffers have grown.
#[derive(Debug, Clone)]
pub struct Sampler {
    /// The filters, temperature and penalties in use.
    params: SamplingParams,
    /// Random generator for the draws, seeded once per sequence.
    rng: ChaCha8Rng,
    /// The last `penalty_last_n` tokens of prompt and output, oldest first.
    window: VecDeque<u32>,
    /// Occurrences of each token inside `window`.
    window_counts: HashMap<u32, u32>,
    /// Occurrences of each generated token (prompt tokens excluded).
    generated_counts: HashMap<u32, u32>,
    /// Scratch list of candidate `(token id, logit)` pairs.
    candidates: Vec<(u32, f32)>,
}

impl Sampler {
    /// A sampler for one sequence.
    ///
    /// The random generator is seeded from `params.seed`, or from
    /// `fallback_seed` when the request did not fix one. The prompt's tokens
    /// count towards the repetition-penalty window but not towards presence
    /// and frequency penalties.
    pub fn new(params: &SamplingParams, fallback_seed: u64, prompt: &[u32]) -> Self {
        let seed = params.seed.unwrap_or(fallback_seed);
        let mut sampler = Self {
            params: params.clone(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            window: VecDeque::new(),
            window_counts: HashMap::new(),
            generated_counts: HashMap::new(),
            candidates: Vec::new(),
        };
        let keep = sampler.window_len();
        let start = prompt.len().saturating_sub(keep);
        for &token in &prompt[start..] {
            sampler.push_window(token);
        }
        sampler
    }

    /// The parameters this sampler was built with.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Whether this sampler always takes the most likely token.
    pub fn is_greedy(&self) -> bool {
        // A NaN temperature counts as greedy too.
        let t = self.params.temperature;
        t.is_nan() || t <= 0.0
    }

    /// Chooses the next token from `logits`, one float per vocabulary entry.
    ///
    /// `logits` is used as scratch space and holds the penalized logits
    /// afterwards. NaN logits count as negative infinity. Penalties refer to
    /// the tokens passed to [`Sampler::accept`] so far; this call does not
    /// record the chosen token. Returns 0 when `logits` is empty.
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        for &(token, bias) in &self.params.logit_bias {
            if let Some(l) = logits.get_mut(token as usize) {
                *l += bias;
            }
        }
        self.apply_penalties(logits);
        if self.is_greedy() {
            return argmax(logits);
        }

        self.candidates.clear();
        self.candidates.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, sanitize(l)))
                .filter(|&(_, l)| l > f32::NEG_INFINITY),
        );
        if self.candidates.is_empty() {
            // Every logit is -inf or NaN: nothing to draw from.
            return argmax(logits);
        }

        self.top_k();
        self.top_p();
        self.min_p();
        self.draw()
    }

    /// Records a generated token: it enters the repetition window and counts
    /// for the presence and frequency penalties from the next step on.
    pub fn accept(&mut self, token: u32) {
        *self.generated_counts.entry(token).or_insert(0) += 1;
        self.push_window(token);
    }

    /// How many recent tokens the repetition penalty looks at.
    fn window_len(&self) -> usize {
        usize::try_from(self.params.penalty_last_n).unwrap_or(usize::MAX)
    }

    /// Appends `token` to the repetition window, dropping the oldest token
    /// once the window is full.
    fn push_window(&mut self, token: u32) {
        let keep = self.window_len();
        if keep == 0 {
            return;
        }
        if self.window.len() >= keep {
            if let Some(old) = self.window.pop_front() {
                if let Some(count) = self.window_counts.get_mut(&old) {
                    *count -= 1;
                    if *count == 0 {
                        self.window_counts.remove(&old);
                    }
                }
            }
        }
        self.window.push_back(token);
        *self.window_counts.entry(token).or_insert(0) += 1;
    }

    /// Applies the repetition, presence and frequency penalties in place.
    /// Token ids outside `logits` are ignored.
    fn apply_penalties(&self, logits: &mut [f32]) {
        let rep = self.params.repetition_penalty;
        // Non-positive or non-finite penalties would flip signs or produce
        // infinities; they are treated as "off", like 1.
        if rep != 1.0 && rep > 0.0 && rep.is_finite() {
            for &token in self.window_counts.keys() {
                if let Some(l) = logits.get_mut(token as usize) {
                    if *l > 0.0 {
                        *l /= rep;
                    } else {
                        *l *= rep;
                    }
                }
            }
        }

        let presence = self.params.presence_penalty;
        let frequency = self.params.frequency_penalty;
        if presence != 0.0 || frequency != 0.0 {
            for (&token, &count) in &self.generated_counts {
                if let Some(l) = logits.get_mut(token as usize) {
                    *l -= presence + frequency * count as f32;
                }
            }
        }
    }

    /// Keeps the `top_k` highest logits (ties to the lowest id), without
    /// sorting the rest.
    fn top_k(&mut self) {
        let k = self.params.top_k as usize;
        if k == 0 || k >= self.candidates.len() {
            return;
        }
        self.candidates.select_nth_unstable_by(k - 1, by_logit_desc);
        self.candidates.truncate(k);
    }

    /// Keeps the smallest set of most likely candidates whose probability
    /// (at temperature 1) reaches `top_p`; always keeps at least one.
    fn top_p(&mut self) {
        let p = self.params.top_p;
        // A NaN top_p counts as "off".
        if p.is_nan() || p >= 1.0 || self.candidates.len() <= 1 {
            return;
        }
        self.candidates.sort_unstable_by(by_logit_desc);
        let max = self.candidates[0].1;
        let total: f64 = self
            .candidates
            .iter()
            .map(|&(_, l)| f64::from(l - max).exp())
            .sum();
        let target = f64::from(p) * total;
        let mut cumulative = 0.0;
        let mut keep = self.candidates.len();
        for (i, &(_, l)) in self.candidates.iter().enumerate() {
            cumulative += f64::from(l - max).exp();
            if cumulative >= target {
                keep = i + 1;
                break;
            }
        }
        self.candidates.truncate(keep);
    }

    /// Drops candidates whose probability is below `min_p` times the most
    /// likely candidate's, i.e. whose logit is more than `-ln(min_p)` below
    /// the top logit.
    fn min_p(&mut self) {
        let min_p = self.params.min_p;
        if min_p.is_nan() || min_p <= 0.0 || self.candidates.len() <= 1 {
            return;
        }
        let max = self
            .candidates
            .iter()
            .map(|&(_, l)| l)
            .fold(f32::NEG_INFINITY, f32::max);
        let threshold = f64::from(max) + f64::from(min_p).ln();
        self.candidates.retain(|&(_, l)| f64::from(l) >= threshold);
    }

    /// Applies the temperature, takes the softmax of the remaining candidates
    /// and draws one of them.
    fn draw(&mut self) -> u32 {
        let temperature = f64::from(self.params.temperature);
        let max = self
            .candidates
            .iter()
            .map(|&(_, l)| l)
            .fold(f32::NEG_INFINITY, f32::max);
        if max == f32::INFINITY {
            // Infinite logits swamp every finite one: the lowest such id wins.
            return self
                .candidates
                .iter()
                .filter(|&&(_, l)| l == max)
                .map(|&(id, _)| id)
                .min()
                .unwrap_or(0);
        }
        let weight = |l: f32| (f64::from(l - max) / temperature).exp();
        let total: f64 = self.candidates.iter().map(|&(_, l)| weight(l)).sum();
        let mut target = self.rng.gen::<f64>() * total;
        let mut chosen = self.candidates.first().map_or(0, |&(id, _)| id);
        for &(id, l) in &self.candidates {
            let w = weight(l);
            if w <= 0.0 {
                continue;
            }
            chosen = id;
            if target < w {
                break;
            }
            target -= w;
        }
        chosen
    }
}

/// A logit with NaN replaced by negative infinity.
fn sanitize(l: f32) -> f32 {
    if l.is_nan() {
        f32::NEG_INFINITY
    } else {
        l
    }
}

/// Orders candidates by descending logit, ties by ascending id.
fn by_logit_desc(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Index of the largest logit; the lowest index wins ties, NaN counts as
/// negative infinity, and 0 is returned for an empty or all-NaN row.
fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_logit = f32::NEG_INFINITY;
    for (i, &l) in logits.iter().enumerate() {
        if l > best_logit {
            best = i;
            best_logit = l;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SamplingParams {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            penalty_last_n: 64,
            seed: Some(42),
            logit_bias: Vec::new(),
        }
    }

    fn greedy() -> SamplingParams {
        SamplingParams {
            temperature: 0.0,
            ..params()
        }
    }

    /// Samples `n` times from fresh copies of `logits` and counts each token.
    fn histogram(sampler: &mut Sampler, logits: &[f32], n: usize) -> Vec<usize> {
        let mut counts = vec![0; logits.len()];
        let mut row = logits.to_vec();
        for _ in 0..n {
            row.copy_from_slice(logits);
            counts[sampler.sample(&mut row) as usize] += 1;
        }
        counts
    }

    #[test]
    fn sampler_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<Sampler>();
    }

    #[test]
    fn greedy_picks_argmax() {
        let mut s = Sampler::new(&greedy(), 0, &[]);
        let mut logits = vec![0.1, -3.0, 2.5, 2.4, 0.0];
        assert_eq!(s.sample(&mut logits), 2);
        let mut logits = vec![-5.0, -1.0, -2.0];
        assert_eq!(s.sample(&mut logits), 1);
    }

    #[test]
    fn greedy_ties_go_to_lowest_id() {
        let mut s = Sampler::new(&greedy(), 0, &[]);
        let mut logits = vec![1.0, 3.0, 2.0, 3.0, 3.0];
        assert_eq!(s.sample(&mut logits), 1);
    }

    #[test]
    fn negative_temperature_is_greedy() {
        let p = SamplingParams {
            temperature: -1.0,
            ..params()
        };
        let mut s = Sampler::new(&p, 0, &[]);
        assert!(s.is_greedy());
        let mut logits = vec![0.0, 0.5, 0.4];
        assert_eq!(s.sample(&mut logits), 1);
    }

    #[test]
    fn infinite_logits_win() {
        let mut s = Sampler::new(&params(), 0, &[]);
        for _ in 0..20 {
            let mut logits = vec![1.0, f32::INFINITY, 2.0, f32::INFINITY];
            assert_eq!(s.sample(&mut logits), 1);
        }
    }

    #[test]
    fn nan_logits_do_not_panic() {
        let mut s = Sampler::new(&greedy(), 0, &[]);
        let mut logits = vec![f32::NAN, 1.0, f32::NAN, 2.0];
        assert_eq!(s.sample(&mut logits), 3);
        let mut logits = vec![f32::NAN; 3];
        assert_eq!(s.sample(&mut logits), 0);

        let p = SamplingParams {
            top_k: 2,
            top_p: 0.9,
            min_p: 0.1,
            ..params()
        };
        let mut s = Sampler::new(&p, 0, &[]);
        for _ in 0..100 {
            let mut logits = vec![f32::NAN, 1.0, f32::NAN, 1.5, f32::NEG_INFINITY];
            let t = s.sample(&mut logits);
            assert!(t == 1 || t == 3, "drew {t}");
        }
        let mut logits = vec![f32::NAN; 4];
        assert_eq!(s.sample(&mut logits), 0);
        let mut empty: Vec<f32> = Vec::new();
        assert_eq!(s.sample(&mut empty), 0);
    }

    #[test]
    fn top_k_1_equals_greedy_at_any_temperature() {
        let logits = [0.3, 2.0, -1.0, 2.0, 1.9, 0.0];
        for temperature in [0.1, 1.0, 5.0, 100.0] {
            let p = SamplingParams {
                temperature,
                top_k: 1,
                ..params()
            };
            let mut s = Sampler::new(&p, 7, &[]);
            let counts = histogram(&mut s, &logits, 200);
            assert_eq!(counts[1], 200, "temperature {temperature}");
        }
    }

    #[test]
    fn top_k_keeps_only_k_best() {
        let p = SamplingParams {
            temperature: 10.0,
            top_k: 3,
            ..params()
        };
        let mut s = Sampler::new(&p, 1, &[]);
        let logits = [0.0, 5.0, 1.0, 4.0, 3.0, 2.0, 4.5];
        let counts = histogram(&mut s, &logits, 3000);
        for (id, &c) in counts.iter().enumerate() {
            if [1, 3, 6].contains(&id) {
                assert!(c > 0, "token {id} should appear");
            } else {
                assert_eq!(c, 0, "token {id} is outside the top 3");
            }
        }
    }

    #[test]
    fn top_p_keeps_minimal_nucleus() {
        // Probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.75 needs {0, 1}
        // (0.5 < 0.75 <= 0.8), so 2 and 3 must never appear.
        let probs: [f32; 4] = [0.5, 0.3, 0.15, 0.05];
        let logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
        let p = SamplingParams {
            top_p: 0.75,
            ..params()
        };
        let mut s = Sampler::new(&p, 3, &[]);
        let counts = histogram(&mut s, &logits, 5000);
        assert_eq!(counts[2] + counts[3], 0, "{counts:?}");
        assert!(counts[0] > 0 && counts[1] > 0, "{counts:?}");
        // Renormalized inside the nucleus: 0.5 / 0.8 = 0.625.
        let f0 = counts[0] as f64 / 5000.0;
        assert!((f0 - 0.625).abs() < 0.03, "{f0}");

        // Just past 0.8 the third token joins, but never the fourth.
        let p = SamplingParams {
            top_p: 0.85,
            ..params()
        };
        let mut s = Sampler::new(&p, 3, &[]);
        let counts = histogram(&mut s, &logits, 5000);
        assert_eq!(counts[3], 0, "{counts:?}");
        assert!(counts[2] > 0, "{counts:?}");
    }

    #[test]
    fn top_p_zero_keeps_the_top_token() {
        let p = SamplingParams {
            top_p: 0.0,
            ..params()
        };
        let mut s = Sampler::new(&p, 3, &[]);
        let counts = histogram(&mut s, &[0.0, 0.2, 0.1], 200);
        assert_eq!(counts[1], 200);
    }

    #[test]
    fn top_k_then_top_p() {
        // After top_k 3 the kept probabilities are ~0.5/0.3/0.2 of the three
        // best; top_p 0.7 keeps the first two.
        let logits = [
            0.5f32.ln(),
            0.3f32.ln(),
            0.2f32.ln(),
            0.19f32.ln(),
            0.18f32.ln(),
        ];
        let p = SamplingParams {
            top_k: 3,
            top_p: 0.7,
            ..params()
        };
        let mut s = Sampler::new(&p, 5, &[]);
        let counts = histogram(&mut s, &logits, 3000);
        assert_eq!(counts[2] + counts[3] + counts[4], 0, "{counts:?}");
        assert!(counts[0] > 0 && counts[1] > 0);
    }

    #[test]
    fn min_p_filters() {
        // Probabilities 0.6, 0.25, 0.1, 0.05; min_p 0.2 keeps p >= 0.12:
        // tokens 0 and 1 only.
        let probs: [f32; 4] = [0.6, 0.25, 0.1, 0.05];
        let logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
        let p = SamplingParams {
            min_p: 0.2,
            ..params()
        };
        let mut s = Sampler::new(&p, 9, &[]);
        let counts = histogram(&mut s, &logits, 5000);
        assert_eq!(counts[2] + counts[3], 0, "{counts:?}");
        assert!(counts[1] > 0, "{counts:?}");

        // min_p 0.1 keeps 0.1 * 0.6 = 0.06 and up: token 3 stays out.
        let p = SamplingParams {
            min_p: 0.1,
            ..params()
        };
        let mut s = Sampler::new(&p, 9, &[]);
        let counts = histogram(&mut s, &logits, 5000);
        assert_eq!(counts[3], 0, "{counts:?}");
        assert!(counts[2] > 0, "{counts:?}");
    }

    #[test]
    fn repetition_penalty_flips_choice() {
        // Token 0 (logit 2.0) was in the prompt; divided by 2 it drops to 1.0,
        // below token 1's 1.5.
        let p = SamplingParams {
            repetition_penalty: 2.0,
            ..greedy()
        };
        let mut s = Sampler::new(&p, 0, &[0]);
        let mut logits = vec![2.0, 1.5, -1.0];
        assert_eq!(s.sample(&mut logits), 1);
        assert_eq!(logits, vec![1.0, 1.5, -1.0]);

        // Negative logits are multiplied: -0.6 * 2 = -1.2 < -1.0.
        let mut s = Sampler::new(&p, 0, &[0]);
        let mut logits = vec![-0.6, -1.0, -3.0];
        assert_eq!(s.sample(&mut logits), 1);
        assert_eq!(logits, vec![-1.2, -1.0, -3.0]);
    }

    #[test]
    fn repetition_penalty_counts_once_and_respects_window() {
        let p = SamplingParams {
            repetition_penalty: 2.0,
            penalty_last_n: 3,
            ..greedy()
        };
        // Prompt [0, 0, 1, 2, 3]: only the last 3 (1, 2, 3) are in the window.
        let mut s = Sampler::new(&p, 0, &[0, 0, 1, 2, 3]);
        let mut logits = vec![4.0, 4.0, 4.0, 4.0, 4.0];
        s.sample(&mut logits);
        assert_eq!(logits, vec![4.0, 2.0, 2.0, 2.0, 4.0]);

        // Accepting 3 again pushes 1 out: window is 2, 3, 3, penalized once.
        s.accept(3);
        let mut logits = vec![4.0, 4.0, 4.0, 4.0, 4.0];
        s.sample(&mut logits);
        assert_eq!(logits, vec![4.0, 4.0, 2.0, 2.0, 4.0]);

        // penalty_last_n 0 disables the repetition penalty.
        let p = SamplingParams {
            penalty_last_n: 0,
            ..p
        };
        let mut s = Sampler::new(&p, 0, &[0, 1]);
        s.accept(2);
        let mut logits = vec![4.0, 4.0, 4.0];
        s.sample(&mut logits);
        assert_eq!(logits, vec![4.0, 4.0, 4.0]);
    }

    #[test]
    fn presence_and_frequency_penalties() {
        let p = SamplingParams {
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            ..greedy()
        };
        // Prompt tokens do not count for presence/frequency.
        let mut s = Sampler::new(&p, 0, &[3, 3, 3]);
        s.accept(0);
        s.accept(0);
        s.accept(0);
        s.accept(1);
        let mut logits = vec![3.0, 2.0, 1.9, 1.0];
        let t = s.sample(&mut logits);
        // 0: 3 - 0.5 - 3 * 0.25 = 1.75; 1: 2 - 0.5 - 0.25 = 1.25; 2, 3 untouched.
        assert_eq!(logits, vec![1.75, 1.25, 1.9, 1.0]);
        assert_eq!(t, 2);
    }

    #[test]
    fn all_penalties_combine_in_order() {
        let p = SamplingParams {
            repetition_penalty: 2.0,
            presence_penalty: 1.0,
            frequency_penalty: 0.5,
            ..greedy()
        };
        let mut s = Sampler::new(&p, 0, &[]);
        s.accept(0);
        s.accept(0);
        let mut logits = vec![6.0, -1.0];
        s.sample(&mut logits);
        // Repetition first: 6 / 2 = 3; then 3 - 1 - 2 * 0.5 = 1.
        assert_eq!(logits, vec![1.0, -1.0]);
    }

    #[test]
    fn out_of_vocab_tokens_are_ignored() {
        let p = SamplingParams {
            repetition_penalty: 2.0,
            presence_penalty: 1.0,
            ..greedy()
        };
        let mut s = Sampler::new(&p, 0, &[100]);
        s.accept(200);
        let mut logits = vec![1.0, 2.0];
        assert_eq!(s.sample(&mut logits), 1);
        assert_eq!(logits, vec![1.0, 2.0]);
    }

    fn draws(seed: Option<u64>, fallback: u64) -> Vec<u32> {
        let p = SamplingParams {
            seed,
            temperature: 0.9,
            top_k: 20,
            top_p: 0.95,
            min_p: 0.01,
            ..params()
        };
        let mut s = Sampler::new(&p, fallback, &[]);
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        (0..100)
            .map(|_| {
                let mut row = logits.clone();
                let t = s.sample(&mut row);
                s.accept(t);
                t
            })
            .collect()
    }

    #[test]
    fn same_seed_same_sequence() {
        assert_eq!(draws(Some(1234), 0), draws(Some(1234), 99));
        // The request's seed wins over the fallback; the fallback is used
        // when there is none.
        assert_eq!(draws(None, 1234), draws(Some(1234), 5));
    }

    #[test]
    fn different_seed_different_sequence() {
        assert_ne!(draws(Some(1), 0), draws(Some(2), 0));
        assert_ne!(draws(None, 1), draws(None, 2));
    }

    #[test]
    fn distribution_matches_softmax() {
        let logits = [0.7f32.ln(), 0.3f32.ln()];
        let mut s = Sampler::new(&params(), 2024, &[]);
        let counts = histogram(&mut s, &logits, 10_000);
        let f0 = counts[0] as f64 / 10_000.0;
        assert!((f0 - 0.7).abs() < 0.03, "frequency of token 0: {f0}");
    }

    #[test]
    fn temperature_sharpens_and_flattens() {
        let logits = [0.7f32.ln(), 0.3f32.ln()];
        // Temperature 0.5 squares the odds: 0.49 / (0.49 + 0.09) ≈ 0.845.
        let p = SamplingParams {
            temperature: 0.5,
            ..params()
        };
        let mut s = Sampler::new(&p, 11, &[]);
        let counts = histogram(&mut s, &logits, 10_000);
        let f0 = counts[0] as f64 / 10_000.0;
        assert!((f0 - 0.845).abs() < 0.03, "{f0}");

        // A very high temperature is close to uniform.
        let p = SamplingParams {
            temperature: 1000.0,
            ..params()
        };
        let mut s = Sampler::new(&p, 11, &[]);
        let counts = histogram(&mut s, &logits, 10_000);
        let f0 = counts[0] as f64 / 10_000.0;
        assert!((f0 - 0.5).abs() < 0.03, "{f0}");
    }

    #[test]
    fn scratch_buffer_is_reused() {
        let p = SamplingParams {
            top_k: 5,
            ..params()
        };
        let mut s = Sampler::new(&p, 0, &[]);
        let logits: Vec<f32> = (0..1000).map(|i| (i % 17) as f32).collect();
        let mut row = logits.clone();
        s.sample(&mut row);
        let cap = s.candidates.capacity();
        let ptr = s.candidates.as_ptr();
        for _ in 0..10 {
            row.copy_from_slice(&logits);
            s.sample(&mut row);
        }
        assert_eq!(s.candidates.capacity(), cap);
        assert_eq!(s.candidates.as_ptr(), ptr);
    }

    #[test]
    fn logit_bias_bans_and_forces_tokens_before_everything_else() {
        let logits = [1.0, 3.0, 2.0, 0.5];
        let ban = SamplingParams {
            logit_bias: vec![(1, -100.0)],
            ..greedy()
        };
        let mut s = Sampler::new(&ban, 0, &[]);
        assert_eq!(s.sample(&mut logits.clone()), 2);
        let force = SamplingParams {
            logit_bias: vec![(3, 100.0), (99, 5.0)],
            ..params()
        };
        let mut s = Sampler::new(&force, 0, &[]);
        assert_eq!(histogram(&mut s, &logits, 200)[3], 200);
        // A masked token stays masked.
        let mut masked = [f32::NEG_INFINITY, 3.0, 2.0, 0.5];
        let up = SamplingParams {
            logit_bias: vec![(0, 100.0)],
            ..greedy()
        };
        assert_eq!(Sampler::new(&up, 0, &[]).sample(&mut masked), 1);
    }
}
