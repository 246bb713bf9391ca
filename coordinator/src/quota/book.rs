//! Per-key usage and the admission decision, without I/O: requests per
//! minute, tokens per minute and requests in flight, each against this
//! coordinator's share of the key's cluster-wide limit.
//!
//! The share: with `n` coordinators, each admits `limit / n` per minute
//! (a bucket of that size, at least one unit, refilled at that rate) and
//! `ceil(max_concurrent / n)` at once. A client that spreads its requests
//! over the coordinators (round robin, a load balancer) gets about the
//! key's limit in total; one that sends everything to a single coordinator
//! gets that coordinator's share: conservative, never above the limit.

use std::collections::HashMap;

use super::bucket::Bucket;
use crate::state::{KeyLimits, MAX_API_KEYS};

/// What a refused request is told.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Refusal {
    /// Over the requests-per-minute limit.
    Requests {
        /// Seconds until a request would be admitted.
        retry_after_s: f64,
    },
    /// Over the tokens-per-minute limit.
    Tokens {
        /// Seconds until a request would be admitted.
        retry_after_s: f64,
    },
    /// Too many requests in flight.
    Concurrency,
}

impl Refusal {
    /// Seconds the client should wait (`Retry-After`), at least one.
    pub fn retry_after_s(&self) -> u64 {
        let s = match self {
            Refusal::Requests { retry_after_s } | Refusal::Tokens { retry_after_s } => {
                *retry_after_s
            }
            Refusal::Concurrency => 1.0,
        };
        // Rounding noise is not a second more; saturating float-to-int
        // conversion, an hour at most is plenty.
        (s - 1e-6).ceil().clamp(1.0, 3_600.0) as u64
    }

    /// The metrics label and the error `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Refusal::Requests { .. } => "requests",
            Refusal::Tokens { .. } => "tokens",
            Refusal::Concurrency => "concurrency",
        }
    }
}

/// The `x-ratelimit-*` figures of a key, as this coordinator sees them.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RateStatus {
    /// The key's requests-per-minute limit and what this coordinator still
    /// admits now, and seconds until that is full again.
    pub requests: Option<(u32, u64, f64)>,
    /// The same for tokens per minute.
    pub tokens: Option<(u32, u64, f64)>,
}

#[derive(Debug)]
struct Usage {
    limits: KeyLimits,
    coordinators: usize,
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    in_flight: u32,
}

/// Each coordinator's share of a per-minute `limit`: (bucket size, rate).
fn minute_share(limit: u32, coordinators: usize) -> (f64, f64) {
    let rate = f64::from(limit) / coordinators.max(1) as f64;
    (rate.max(1.0), rate)
}

/// Each coordinator's share of a concurrency limit, at least one.
pub fn concurrency_share(limit: u32, coordinators: usize) -> u32 {
    let n = u32::try_from(coordinators.max(1)).unwrap_or(u32::MAX);
    limit.div_ceil(n).max(1)
}

impl Usage {
    fn new(limits: KeyLimits, coordinators: usize, now: f64) -> Self {
        let bucket = |l: Option<u32>| {
            l.map(|l| {
                let (cap, rate) = minute_share(l, coordinators);
                Bucket::new(cap, rate, now)
            })
        };
        Self {
            limits,
            coordinators,
            requests: bucket(limits.rpm),
            tokens: bucket(limits.tpm),
            in_flight: 0,
        }
    }

    /// Follows a change of the number of coordinators.
    fn follow(&mut self, coordinators: usize, now: f64) {
        if coordinators == self.coordinators {
            return;
        }
        self.coordinators = coordinators;
        for (b, l) in [
            (&mut self.requests, self.limits.rpm),
            (&mut self.tokens, self.limits.tpm),
        ] {
            if let (Some(b), Some(l)) = (b.as_mut(), l) {
                let (cap, rate) = minute_share(l, coordinators);
                b.resize(cap, rate, now);
            }
        }
    }

    fn status(&self) -> RateStatus {
        let fig = |b: &Option<Bucket>, l: Option<u32>| {
            b.as_ref()
                .zip(l)
                .map(|(b, l)| (l, b.remaining(), b.reset_s()))
        };
        RateStatus {
            requests: fig(&self.requests, self.limits.rpm),
            tokens: fig(&self.tokens, self.limits.tpm),
        }
    }

    fn idle(&mut self, now: f64) -> bool {
        self.in_flight == 0
            && self.requests.as_mut().is_none_or(|b| b.is_full(now))
            && self.tokens.as_mut().is_none_or(|b| b.is_full(now))
    }
}

/// The usage of every limited key on this coordinator.
#[derive(Debug, Default)]
pub struct QuotaBook {
    keys: HashMap<String, Usage>,
}

impl QuotaBook {
    /// Admits a request of key `key_id` with `limits` when `coordinators`
    /// share them, at time `now` (seconds). An admitted request counts as
    /// in flight until [`QuotaBook::release`].
    pub fn admit(
        &mut self,
        key_id: &str,
        limits: KeyLimits,
        coordinators: usize,
        now: f64,
    ) -> Result<RateStatus, (Refusal, RateStatus)> {
        if !self.keys.contains_key(key_id) && self.keys.len() >= MAX_API_KEYS {
            self.keys.retain(|_, u| !u.idle(now));
        }
        let u = self
            .keys
            .entry(key_id.to_string())
            .or_insert_with(|| Usage::new(limits, coordinators, now));
        if u.limits != limits {
            // Keys are immutable; a new key under a reused id starts afresh.
            *u = Usage::new(limits, coordinators, now);
        }
        u.follow(coordinators, now);
        if let Some(max) = limits.max_concurrent {
            if u.in_flight >= concurrency_share(max, coordinators) {
                return Err((Refusal::Concurrency, u.status()));
            }
        }
        if let Some(b) = u.tokens.as_mut() {
            if let Err(retry_after_s) = b.check(1.0, now) {
                return Err((Refusal::Tokens { retry_after_s }, u.status()));
            }
        }
        if let Some(b) = u.requests.as_mut() {
            if let Err(retry_after_s) = b.check(1.0, now) {
                return Err((Refusal::Requests { retry_after_s }, u.status()));
            }
            b.charge(1.0, now);
        }
        u.in_flight += 1;
        Ok(u.status())
    }

    /// An admitted request of `key_id` ended.
    pub fn release(&mut self, key_id: &str) {
        if let Some(u) = self.keys.get_mut(key_id) {
            u.in_flight = u.in_flight.saturating_sub(1);
        }
    }

    /// A request of `key_id` used `tokens` (prompt and completion).
    pub fn charge_tokens(&mut self, key_id: &str, tokens: u64, now: f64) {
        if let Some(b) = self.keys.get_mut(key_id).and_then(|u| u.tokens.as_mut()) {
            // Precision loss above 2^53 tokens is irrelevant.
            b.charge(tokens as f64, now);
        }
    }

    /// Keys tracked now.
    pub fn tracked(&self) -> usize {
        self.keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rpm: Option<u32>, tpm: Option<u32>, conc: Option<u32>) -> KeyLimits {
        KeyLimits {
            rpm,
            tpm,
            max_concurrent: conc,
        }
    }

    /// Three coordinators with one book each, a key of 60 rpm, requests
    /// sent round robin in one burst: about 60 are served, not 180.
    #[test]
    fn a_limit_holds_across_coordinators_sent_round_robin() {
        let l = limits(Some(60), None, None);
        let mut books: Vec<QuotaBook> = (0..3).map(|_| QuotaBook::default()).collect();
        let mut served = 0;
        for i in 0..300 {
            let book = &mut books[i % 3];
            if book.admit("k", l, 3, 0.0).is_ok() {
                served += 1;
                book.release("k");
            }
        }
        assert_eq!(served, 60);
        // A minute later, each has refilled its share: 60 more in total.
        let mut more = 0;
        for i in 0..300 {
            if books[i % 3].admit("k", l, 3, 60.0).is_ok() {
                more += 1;
            }
        }
        assert_eq!(more, 60);
    }

    #[test]
    fn refusals_say_which_limit_and_when_to_retry() {
        let mut b = QuotaBook::default();
        let l = limits(Some(2), None, None);
        assert!(b.admit("k", l, 1, 0.0).is_ok());
        let st = b.admit("k", l, 1, 0.0).expect("second of two");
        assert_eq!(st.requests.map(|r| (r.0, r.1)), Some((2, 0)));
        let (r, _) = b.admit("k", l, 1, 0.0).unwrap_err();
        assert_eq!(r.kind(), "requests");
        assert_eq!(r.retry_after_s(), 30, "2/min: one every 30 s");
    }

    #[test]
    fn concurrency_is_freed_on_release() {
        let mut b = QuotaBook::default();
        let l = limits(None, None, Some(2));
        assert!(b.admit("k", l, 1, 0.0).is_ok());
        assert!(b.admit("k", l, 1, 0.0).is_ok());
        assert_eq!(b.admit("k", l, 1, 0.0).unwrap_err().0, Refusal::Concurrency);
        b.release("k");
        assert!(b.admit("k", l, 1, 0.0).is_ok());
        // Other keys are not affected.
        assert!(b.admit("other", l, 1, 0.0).is_ok());
    }

    #[test]
    fn concurrency_share_is_at_least_one() {
        assert_eq!(concurrency_share(1, 3), 1);
        assert_eq!(concurrency_share(4, 3), 2);
        assert_eq!(concurrency_share(9, 3), 3);
        assert_eq!(concurrency_share(5, 0), 5);
    }

    #[test]
    fn tokens_are_charged_after_the_fact_and_block_until_repaid() {
        let mut b = QuotaBook::default();
        let l = limits(None, Some(600), None);
        assert!(b.admit("k", l, 1, 0.0).is_ok());
        b.release("k");
        b.charge_tokens("k", 900, 0.0);
        let (r, st) = b.admit("k", l, 1, 0.0).unwrap_err();
        assert_eq!(r.kind(), "tokens");
        // 301 tokens short at 10 tokens/s.
        assert_eq!(r.retry_after_s(), 31);
        assert_eq!(st.tokens.map(|t| t.1), Some(0));
        assert!(b.admit("k", l, 1, 31.0).is_ok());
    }

    #[test]
    fn a_tiny_limit_over_many_coordinators_still_admits() {
        let mut b = QuotaBook::default();
        let l = limits(Some(1), None, None);
        assert!(b.admit("k", l, 3, 0.0).is_ok());
        let (r, _) = b.admit("k", l, 3, 0.0).unwrap_err();
        // Each of 3 refills 1/3 a minute: 180 s per request here.
        assert_eq!(r.retry_after_s(), 180);
    }

    #[test]
    fn a_growing_cluster_shrinks_each_share() {
        let mut b = QuotaBook::default();
        let l = limits(Some(60), None, None);
        assert!(b.admit("k", l, 1, 0.0).is_ok());
        // 59 left of 60; the share of 2 holds 30: one more taken leaves 29.
        let st = b.admit("k", l, 2, 0.0).expect("within the new share");
        assert_eq!(st.requests.map(|r| r.1), Some(29));
    }

    #[test]
    fn idle_keys_are_forgotten_when_the_book_is_full() {
        let mut b = QuotaBook::default();
        let l = limits(Some(10), None, None);
        for i in 0..MAX_API_KEYS {
            b.admit(&format!("k{i}"), l, 1, 0.0).expect("fresh key");
            b.release(&format!("k{i}"));
        }
        assert_eq!(b.tracked(), MAX_API_KEYS);
        // An hour later all are full again: forgotten to make room.
        assert!(b.admit("new", l, 1, 3_600.0).is_ok());
        assert_eq!(b.tracked(), 1);
    }
}
