//! The dynamic batcher's policy, free of clocks and threads: requests wait
//! up to `max_queue_delay` to form a batch of at most `max_batch_size` rows,
//! as Triton's dynamic batcher does, in a queue of bounded length.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How a model's requests are batched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Most rows (first-dimension entries) in one run of the model.
    pub max_batch_size: usize,
    /// Longest a request waits for others to join its batch.
    pub max_queue_delay: Duration,
    /// Most requests waiting; one more is refused (an HTTP 429).
    pub max_queue: usize,
}

impl Default for BatchPolicy {
    /// Triton's defaults: no added delay (a batch takes whatever waited
    /// while the previous one ran, so batches form under load and a lone
    /// request waits for nothing).
    fn default() -> Self {
        BatchPolicy {
            max_batch_size: 32,
            max_queue_delay: Duration::ZERO,
            max_queue: 256,
        }
    }
}

/// Why a request was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The queue holds `max_queue` requests already.
    #[error("the model's queue is full ({0} requests waiting)")]
    QueueFull(usize),
    /// The request alone has more rows than one batch may.
    #[error("the request has {rows} rows, more than the model's max_batch_size of {max}")]
    TooManyRows {
        /// Rows asked for.
        rows: usize,
        /// The limit.
        max: usize,
    },
}

struct Waiting<T> {
    item: T,
    rows: usize,
    since: Instant,
}

/// Requests waiting to be batched, oldest first.
pub struct Batcher<T> {
    policy: BatchPolicy,
    queue: VecDeque<Waiting<T>>,
    rows: usize,
}

impl<T> Batcher<T> {
    /// An empty batcher.
    pub fn new(policy: BatchPolicy) -> Self {
        Batcher {
            policy,
            queue: VecDeque::new(),
            rows: 0,
        }
    }

    /// Queues a request of `rows` rows that arrived at `now`.
    pub fn push(&mut self, item: T, rows: usize, now: Instant) -> Result<(), (T, Refused)> {
        if rows > self.policy.max_batch_size {
            let max = self.policy.max_batch_size;
            return Err((item, Refused::TooManyRows { rows, max }));
        }
        if self.queue.len() >= self.policy.max_queue {
            return Err((item, Refused::QueueFull(self.queue.len())));
        }
        self.rows += rows;
        self.queue.push_back(Waiting {
            item,
            rows,
            since: now,
        });
        Ok(())
    }

    /// How many requests wait.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// When the oldest request's wait runs out; None when nothing waits.
    pub fn deadline(&self) -> Option<Instant> {
        self.queue
            .front()
            .map(|w| w.since + self.policy.max_queue_delay)
    }

    /// Whether a batch should run at `now`: the waiting rows fill a batch,
    /// or the oldest request has waited its `max_queue_delay`.
    pub fn ready(&self, now: Instant) -> bool {
        self.rows >= self.policy.max_batch_size || self.deadline().is_some_and(|d| now >= d)
    }

    /// Keeps only the requests `keep` accepts (the others were abandoned by
    /// their callers).
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.queue.retain(|w| keep(&w.item));
        self.rows = self.queue.iter().map(|w| w.rows).sum();
    }

    /// Takes the next batch: requests from the front, in arrival order, as
    /// long as their rows fit in `max_batch_size` together.
    pub fn take_batch(&mut self) -> Vec<T> {
        let mut batch = Vec::new();
        let mut rows = 0;
        while let Some(front) = self.queue.front() {
            if !batch.is_empty() && rows + front.rows > self.policy.max_batch_size {
                break;
            }
            rows += front.rows;
            if let Some(w) = self.queue.pop_front() {
                batch.push(w.item);
            }
        }
        self.rows -= rows;
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_batch_size: usize, max_queue: usize) -> BatchPolicy {
        BatchPolicy {
            max_batch_size,
            max_queue_delay: Duration::from_millis(2),
            max_queue,
        }
    }

    #[test]
    fn a_lone_request_waits_its_delay_and_a_full_batch_goes_at_once() {
        let t0 = Instant::now();
        let mut b = Batcher::new(policy(4, 16));
        b.push(1, 1, t0).unwrap();
        assert!(!b.ready(t0));
        assert!(!b.ready(t0 + Duration::from_millis(1)));
        assert!(b.ready(t0 + Duration::from_millis(2)));
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(2)));
        for i in 2..=4 {
            b.push(i, 1, t0).unwrap();
        }
        assert!(b.ready(t0), "four rows fill the batch");
        assert_eq!(b.take_batch(), vec![1, 2, 3, 4]);
        assert!(b.is_empty());
        assert_eq!(b.deadline(), None);
    }

    #[test]
    fn batches_keep_arrival_order_and_never_pass_the_row_limit() {
        let t0 = Instant::now();
        let mut b = Batcher::new(policy(8, 16));
        for (i, rows) in [3, 4, 2, 8, 1].into_iter().enumerate() {
            b.push(i, rows, t0).unwrap();
        }
        assert_eq!(b.take_batch(), vec![0, 1]);
        assert_eq!(b.take_batch(), vec![2]);
        assert_eq!(b.take_batch(), vec![3]);
        assert_eq!(b.take_batch(), vec![4]);
        assert!(b.take_batch().is_empty());
    }

    #[test]
    fn the_queue_is_bounded_and_oversized_requests_are_refused() {
        let t0 = Instant::now();
        let mut b = Batcher::new(policy(4, 2));
        assert_eq!(
            b.push(9, 5, t0).unwrap_err().1,
            Refused::TooManyRows { rows: 5, max: 4 }
        );
        b.push(1, 1, t0).unwrap();
        b.push(2, 1, t0).unwrap();
        assert_eq!(b.push(3, 1, t0).unwrap_err(), (3, Refused::QueueFull(2)));
    }

    #[test]
    fn abandoned_requests_leave_the_queue_and_its_row_count() {
        let t0 = Instant::now();
        let mut b = Batcher::new(policy(4, 16));
        b.push(1, 2, t0).unwrap();
        b.push(2, 2, t0 + Duration::from_millis(1)).unwrap();
        assert!(b.ready(t0), "four rows wait");
        b.retain(|&i| i != 1);
        assert!(!b.ready(t0 + Duration::from_millis(2)));
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(3)));
        assert_eq!(b.take_batch(), vec![2]);
    }
}
