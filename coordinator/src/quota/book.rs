//! Per-key and per-tenant usage and the admission decision, without I/O:
//! requests per minute, tokens per minute and requests in flight, each
//! against this coordinator's share of the cluster-wide limit. A request
//! counts against its key's limits and its tenant's (shared by all the
//! tenant's keys); it is admitted only when both have room, and then
//! charged to both.
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

/// Whose limits a request counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    /// An API key, by id.
    Key(String),
    /// A tenant, by name.
    Tenant(String),
}

impl Subject {
    /// `key` or `tenant`, for messages.
    pub fn level(&self) -> &'static str {
        match self {
            Subject::Key(_) => "key",
            Subject::Tenant(_) => "tenant",
        }
    }
}

/// Most subjects tracked before idle ones are forgotten.
const MAX_TRACKED: usize = 2 * MAX_API_KEYS;

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

/// The `x-ratelimit-*` figures of a request's limits, as this coordinator
/// sees them (of the key or its tenant, whichever has less left).
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

impl RateStatus {
    /// Per figure, the one with less remaining.
    fn tighter(self, other: RateStatus) -> RateStatus {
        let pick = |a: Option<(u32, u64, f64)>, b: Option<(u32, u64, f64)>| match (a, b) {
            (Some(a), Some(b)) => Some(if b.1 < a.1 { b } else { a }),
            (a, b) => a.or(b),
        };
        RateStatus {
            requests: pick(self.requests, other.requests),
            tokens: pick(self.tokens, other.tokens),
        }
    }
}

/// A refused request: which limit, whose, and the figures to report.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    /// The limit reached.
    pub refusal: Refusal,
    /// Whether it was the key's limit or its tenant's.
    pub level: &'static str,
    /// The `x-ratelimit-*` figures.
    pub status: RateStatus,
}

/// The usage of every limited key and tenant on this coordinator.
#[derive(Debug, Default)]
pub struct QuotaBook {
    subjects: HashMap<Subject, Usage>,
}

impl QuotaBook {
    /// Admits a request counted against each of `subjects` (its key and
    /// its tenant, with their limits) when `coordinators` share the
    /// limits, at time `now` (seconds): only if every one has room, and
    /// then charged to every one. An admitted request counts as in flight
    /// until [`QuotaBook::release`].
    pub fn admit(
        &mut self,
        subjects: &[(Subject, KeyLimits)],
        coordinators: usize,
        now: f64,
    ) -> Result<RateStatus, Refused> {
        let limited = || subjects.iter().filter(|(_, l)| l.any());
        let fresh = limited()
            .filter(|(s, _)| !self.subjects.contains_key(s))
            .count();
        if self.subjects.len() + fresh > MAX_TRACKED {
            self.subjects.retain(|_, u| !u.idle(now));
        }
        let mut status = RateStatus::default();
        for (subject, limits) in limited() {
            let u = self
                .subjects
                .entry(subject.clone())
                .or_insert_with(|| Usage::new(*limits, coordinators, now));
            if u.limits != *limits {
                // Changed limits (a tenant's) start with full buckets; the
                // requests in flight still count.
                let in_flight = u.in_flight;
                *u = Usage::new(*limits, coordinators, now);
                u.in_flight = in_flight;
            }
            u.follow(coordinators, now);
            let over_concurrency = limits
                .max_concurrent
                .is_some_and(|max| u.in_flight >= concurrency_share(max, coordinators));
            let refusal = if over_concurrency {
                Some(Refusal::Concurrency)
            } else if let Some(Err(retry_after_s)) = u.tokens.as_mut().map(|b| b.check(1.0, now)) {
                Some(Refusal::Tokens { retry_after_s })
            } else if let Some(Err(retry_after_s)) = u.requests.as_mut().map(|b| b.check(1.0, now))
            {
                Some(Refusal::Requests { retry_after_s })
            } else {
                None
            };
            status = status.tighter(u.status());
            if let Some(refusal) = refusal {
                return Err(Refused {
                    refusal,
                    level: subject.level(),
                    status,
                });
            }
        }
        // Every one has room: charge them all.
        let mut status = RateStatus::default();
        for (subject, _) in limited() {
            if let Some(u) = self.subjects.get_mut(subject) {
                if let Some(b) = u.requests.as_mut() {
                    b.charge(1.0, now);
                }
                u.in_flight += 1;
                status = status.tighter(u.status());
            }
        }
        Ok(status)
    }

    /// An admitted request of `subjects` ended.
    pub fn release(&mut self, subjects: &[Subject]) {
        for s in subjects {
            if let Some(u) = self.subjects.get_mut(s) {
                u.in_flight = u.in_flight.saturating_sub(1);
            }
        }
    }

    /// A request of `subjects` used `tokens` (prompt and completion).
    pub fn charge_tokens(&mut self, subjects: &[Subject], tokens: u64, now: f64) {
        for s in subjects {
            if let Some(b) = self.subjects.get_mut(s).and_then(|u| u.tokens.as_mut()) {
                // Precision loss above 2^53 tokens is irrelevant.
                b.charge(tokens as f64, now);
            }
        }
    }

    /// Keys and tenants tracked now.
    pub fn tracked(&self) -> usize {
        self.subjects.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, l: KeyLimits) -> [(Subject, KeyLimits); 1] {
        [(Subject::Key(id.to_string()), l)]
    }

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
            if book.admit(&key("k", l), 3, 0.0).is_ok() {
                served += 1;
                book.release(&[Subject::Key("k".to_string())]);
            }
        }
        assert_eq!(served, 60);
        // A minute later, each has refilled its share: 60 more in total.
        let mut more = 0;
        for i in 0..300 {
            if books[i % 3].admit(&key("k", l), 3, 60.0).is_ok() {
                more += 1;
            }
        }
        assert_eq!(more, 60);
    }

    fn keyed(id: &str, l: KeyLimits, tenant: KeyLimits) -> [(Subject, KeyLimits); 2] {
        [
            (Subject::Key(id.to_string()), l),
            (Subject::Tenant("t".to_string()), tenant),
        ]
    }

    /// A tenant's limit is shared by its keys: two unlimited keys of a
    /// 4-a-minute tenant get 4 requests between them, and the refusal
    /// says it was the tenant's limit.
    #[test]
    fn a_tenant_limit_is_shared_by_its_keys() {
        let mut b = QuotaBook::default();
        let none = KeyLimits::default();
        let t = limits(Some(4), None, None);
        let served = (0..10)
            .filter(|i| {
                let id = if i % 2 == 0 { "a" } else { "b" };
                b.admit(&keyed(id, none, t), 1, 0.0).is_ok()
            })
            .count();
        assert_eq!(served, 4);
        let r = b.admit(&keyed("a", none, t), 1, 0.0).unwrap_err();
        assert_eq!((r.refusal.kind(), r.level), ("requests", "tenant"));
        assert_eq!(r.status.requests.map(|f| (f.0, f.1)), Some((4, 0)));
    }

    /// A request its key refuses costs its tenant nothing: the tenant's
    /// other keys still get the whole tenant budget.
    #[test]
    fn a_refusal_charges_no_one() {
        let mut b = QuotaBook::default();
        let t = limits(Some(3), None, Some(10));
        let one = limits(Some(1), None, None);
        assert!(b.admit(&keyed("a", one, t), 1, 0.0).is_ok());
        for _ in 0..5 {
            let r = b.admit(&keyed("a", one, t), 1, 0.0).unwrap_err();
            assert_eq!(r.level, "key");
        }
        let none = KeyLimits::default();
        assert!(b.admit(&keyed("b", none, t), 1, 0.0).is_ok());
        assert!(b.admit(&keyed("b", none, t), 1, 0.0).is_ok());
        assert_eq!(
            b.admit(&keyed("b", none, t), 1, 0.0).unwrap_err().level,
            "tenant"
        );
        // The tenant's concurrency counted the 3 admitted, and releases them.
        let subjects = [Subject::Key("b".into()), Subject::Tenant("t".into())];
        b.release(&subjects);
        b.release(&subjects);
        b.release(&[Subject::Key("a".into()), Subject::Tenant("t".into())]);
        let tight = limits(None, None, Some(1));
        assert!(b.admit(&keyed("c", none, tight), 1, 60.0).is_ok());
        assert_eq!(
            b.admit(&keyed("c", none, tight), 1, 60.0)
                .unwrap_err()
                .refusal,
            Refusal::Concurrency
        );
    }

    #[test]
    fn refusals_say_which_limit_and_when_to_retry() {
        let mut b = QuotaBook::default();
        let l = limits(Some(2), None, None);
        assert!(b.admit(&key("k", l), 1, 0.0).is_ok());
        let st = b.admit(&key("k", l), 1, 0.0).expect("second of two");
        assert_eq!(st.requests.map(|r| (r.0, r.1)), Some((2, 0)));
        let r = b.admit(&key("k", l), 1, 0.0).unwrap_err().refusal;
        assert_eq!(r.kind(), "requests");
        assert_eq!(r.retry_after_s(), 30, "2/min: one every 30 s");
    }

    #[test]
    fn concurrency_is_freed_on_release() {
        let mut b = QuotaBook::default();
        let l = limits(None, None, Some(2));
        assert!(b.admit(&key("k", l), 1, 0.0).is_ok());
        assert!(b.admit(&key("k", l), 1, 0.0).is_ok());
        assert_eq!(
            b.admit(&key("k", l), 1, 0.0).unwrap_err().refusal,
            Refusal::Concurrency
        );
        b.release(&[Subject::Key("k".to_string())]);
        assert!(b.admit(&key("k", l), 1, 0.0).is_ok());
        // Other keys are not affected.
        assert!(b.admit(&key("other", l), 1, 0.0).is_ok());
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
        assert!(b.admit(&key("k", l), 1, 0.0).is_ok());
        b.release(&[Subject::Key("k".to_string())]);
        b.charge_tokens(&[Subject::Key("k".to_string())], 900, 0.0);
        let Refused {
            refusal: r,
            status: st,
            ..
        } = b.admit(&key("k", l), 1, 0.0).unwrap_err();
        assert_eq!(r.kind(), "tokens");
        // 301 tokens short at 10 tokens/s.
        assert_eq!(r.retry_after_s(), 31);
        assert_eq!(st.tokens.map(|t| t.1), Some(0));
        assert!(b.admit(&key("k", l), 1, 31.0).is_ok());
    }

    #[test]
    fn a_tiny_limit_over_many_coordinators_still_admits() {
        let mut b = QuotaBook::default();
        let l = limits(Some(1), None, None);
        assert!(b.admit(&key("k", l), 3, 0.0).is_ok());
        let r = b.admit(&key("k", l), 3, 0.0).unwrap_err().refusal;
        // Each of 3 refills 1/3 a minute: 180 s per request here.
        assert_eq!(r.retry_after_s(), 180);
    }

    #[test]
    fn a_growing_cluster_shrinks_each_share() {
        let mut b = QuotaBook::default();
        let l = limits(Some(60), None, None);
        assert!(b.admit(&key("k", l), 1, 0.0).is_ok());
        // 59 left of 60; the share of 2 holds 30: one more taken leaves 29.
        let st = b.admit(&key("k", l), 2, 0.0).expect("within the new share");
        assert_eq!(st.requests.map(|r| r.1), Some(29));
    }

    #[test]
    fn idle_keys_are_forgotten_when_the_book_is_full() {
        let mut b = QuotaBook::default();
        let l = limits(Some(10), None, None);
        for i in 0..MAX_TRACKED {
            b.admit(&key(&format!("k{i}"), l), 1, 0.0)
                .expect("fresh key");
            b.release(&[Subject::Key(format!("k{i}"))]);
        }
        assert_eq!(b.tracked(), MAX_TRACKED);
        // An hour later all are full again: forgotten to make room.
        assert!(b.admit(&key("new", l), 1, 3_600.0).is_ok());
        assert_eq!(b.tracked(), 1);
    }
}
