//! The restart policy ractor does not provide: at most N restarts within a
//! sliding window, after which the model is marked failed. Pure logic; the
//! caller supplies the clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A sliding-window restart budget.
#[derive(Debug, Clone)]
pub struct RestartBudget {
    max_restarts: usize,
    window: Duration,
    recent: VecDeque<Instant>,
}

impl RestartBudget {
    /// Allows `max_restarts` restarts in any `window`.
    pub fn new(max_restarts: usize, window: Duration) -> Self {
        Self {
            max_restarts,
            window,
            recent: VecDeque::new(),
        }
    }

    /// Records a restart at `now` if the budget allows it; returns whether it does.
    pub fn try_restart(&mut self, now: Instant) -> bool {
        while let Some(&oldest) = self.recent.front() {
            if now.duration_since(oldest) >= self.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if self.recent.len() >= self.max_restarts {
            return false;
        }
        self.recent.push_back(now);
        true
    }

    /// Restarts counted in the current window.
    pub fn used(&self) -> usize {
        self.recent.len()
    }
}

impl Default for RestartBudget {
    /// Three restarts a minute.
    fn default() -> Self {
        Self::new(3, Duration::from_secs(60))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_refuses_past_the_limit_and_recovers_after_the_window() {
        let t0 = Instant::now();
        let mut b = RestartBudget::new(2, Duration::from_secs(60));
        assert!(b.try_restart(t0));
        assert!(b.try_restart(t0 + Duration::from_secs(1)));
        assert!(!b.try_restart(t0 + Duration::from_secs(2)));
        assert_eq!(b.used(), 2);
        // Sixty seconds after the first restart, it no longer counts.
        assert!(b.try_restart(t0 + Duration::from_secs(60)));
        assert!(!b.try_restart(t0 + Duration::from_secs(60)));
        assert_eq!(b.used(), 2);
    }

    #[test]
    fn zero_budget_never_restarts() {
        let mut b = RestartBudget::new(0, Duration::from_secs(60));
        assert!(!b.try_restart(Instant::now()));
    }
}
