//! A token bucket on an explicit clock (seconds as `f64`), so the rate
//! arithmetic is tested without sleeping.

/// A bucket that refills `capacity` units per minute, continuously, and
/// never holds more than `capacity`. Charges after the fact may take it
/// below zero (down to minus one minute's worth), which delays the next
/// admission until the debt is paid back.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    capacity: f64,
    per_sec: f64,
    level: f64,
    at: f64,
}

impl Bucket {
    /// A full bucket holding `capacity` and refilling `per_minute` units a
    /// minute, at time `now`.
    pub fn new(capacity: f64, per_minute: f64, now: f64) -> Self {
        Self {
            capacity,
            per_sec: per_minute / 60.0,
            level: capacity,
            at: now,
        }
    }

    /// Changes the size and rate (the cluster grew or shrank), keeping what
    /// was used.
    pub fn resize(&mut self, capacity: f64, per_minute: f64, now: f64) {
        self.refill(now);
        self.capacity = capacity;
        self.per_sec = per_minute / 60.0;
        self.level = self.level.min(capacity);
    }

    fn refill(&mut self, now: f64) {
        if now > self.at {
            self.level = (self.level + (now - self.at) * self.per_sec).min(self.capacity);
            self.at = now;
        }
    }

    /// `Ok` when `n` units are there now, else how many seconds until they
    /// will be.
    pub fn check(&mut self, n: f64, now: f64) -> Result<(), f64> {
        self.refill(now);
        if self.level >= n {
            Ok(())
        } else if self.per_sec <= 0.0 {
            Err(f64::INFINITY)
        } else {
            Err((n - self.level) / self.per_sec)
        }
    }

    /// Takes `n` units, after the fact: the level may go negative, by at
    /// most one bucket.
    pub fn charge(&mut self, n: f64, now: f64) {
        self.refill(now);
        self.level = (self.level - n).max(-self.capacity);
    }

    /// Whole units left now (as of the last update).
    pub fn remaining(&self) -> u64 {
        // Truncation is the point: a partial unit is not available.
        self.level.max(0.0).floor() as u64
    }

    /// Seconds until the bucket is full again.
    pub fn reset_s(&self) -> f64 {
        if self.per_sec <= 0.0 {
            return 0.0;
        }
        ((self.capacity - self.level) / self.per_sec).max(0.0)
    }

    /// Whether the bucket is full at `now` (nothing to remember).
    pub fn is_full(&mut self, now: f64) -> bool {
        self.refill(now);
        self.level >= self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_serves_its_capacity_then_refills_at_the_rate() {
        let mut b = Bucket::new(3.0, 60.0, 0.0);
        for _ in 0..3 {
            assert_eq!(b.check(1.0, 0.0), Ok(()));
            b.charge(1.0, 0.0);
        }
        let wait = b.check(1.0, 0.0).unwrap_err();
        assert!(
            (wait - 1.0).abs() < 1e-9,
            "60/min refills one a second: {wait}"
        );
        assert_eq!(b.check(1.0, 1.0), Ok(()));
        assert_eq!(b.remaining(), 1);
        assert!((b.reset_s() - 2.0).abs() < 1e-9);
    }

    #[test]
    fn it_never_holds_more_than_its_capacity() {
        let mut b = Bucket::new(2.0, 60.0, 0.0);
        assert!(b.is_full(1000.0));
        b.charge(1.0, 1000.0);
        assert_eq!(b.remaining(), 1);
    }

    #[test]
    fn debt_delays_the_next_admission_and_is_bounded() {
        let mut b = Bucket::new(100.0, 100.0, 0.0);
        b.charge(1_000.0, 0.0);
        // At most one bucket of debt: -100, so 101 units short of 1.
        let wait = b.check(1.0, 0.0).unwrap_err();
        assert!((wait - 101.0 * 0.6).abs() < 1e-6, "{wait}");
        assert_eq!(b.remaining(), 0);
    }

    #[test]
    fn resizing_keeps_what_was_used() {
        let mut b = Bucket::new(60.0, 60.0, 0.0);
        b.charge(50.0, 0.0);
        b.resize(20.0, 20.0, 0.0);
        assert_eq!(b.remaining(), 10);
        b.resize(5.0, 5.0, 0.0);
        assert_eq!(b.remaining(), 5);
    }
}
