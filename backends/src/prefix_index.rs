//! Which prompt text spans this replica still holds in its KV cache: the
//! bounded summary a node reports in its heartbeats so that coordinators
//! can route a request to where its prefix already is (see
//! [`protocol::prefix`]).
//!
//! Each recorded span maps to the prefix hash of the last KV block its text
//! is estimated to cover; a span is reported while that block is cached.
//! Spans are recorded when a request is admitted, before its blocks are
//! written: a span whose block has not been cached yet is kept (pending),
//! one whose block was cached and is gone is forgotten.
//! Pure bookkeeping: the engine records spans at admission and asks for
//! the summary, passing the cache's membership test.

use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, Copy)]
struct Span {
    /// Prefix hash of the KV block the span's text reaches.
    block: u64,
    /// Recency tick (key in `order`).
    tick: u64,
    /// Whether the block has been seen in the cache.
    seen: bool,
}

/// Recently seen text spans and the KV block each depends on.
#[derive(Debug)]
pub struct PrefixIndex {
    capacity: usize,
    /// Span hash -> its entry.
    spans: HashMap<u64, Span>,
    /// Recency tick -> span hash.
    order: BTreeMap<u64, u64>,
    tick: u64,
}

impl PrefixIndex {
    /// An empty index remembering at most `capacity` spans.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            spans: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
        }
    }

    /// Spans remembered.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Records (or refreshes) a span whose prefix lives in the block with
    /// prefix hash `block`; the least recently recorded span is forgotten
    /// when full.
    pub fn record(&mut self, span: u64, block: u64) {
        self.tick += 1;
        let entry = Span {
            block,
            tick: self.tick,
            seen: false,
        };
        if let Some(old) = self.spans.insert(span, entry) {
            self.order.remove(&old.tick);
        }
        self.order.insert(self.tick, span);
        while self.spans.len() > self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.spans.remove(&oldest);
        }
    }

    /// Up to `max` spans whose block is cached, most recent first. Spans
    /// whose block was cached and has been evicted are forgotten.
    pub fn summary(&mut self, max: usize, cached: impl Fn(u64) -> bool) -> Vec<u64> {
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (&tick, &span) in self.order.iter().rev() {
            let Some(entry) = self.spans.get_mut(&span) else {
                continue;
            };
            if cached(entry.block) {
                entry.seen = true;
                if out.len() < max {
                    out.push(span);
                }
            } else if entry.seen {
                gone.push((tick, span));
            }
        }
        for (tick, span) in gone {
            self.order.remove(&tick);
            self.spans.remove(&span);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_reported_while_their_block_is_cached_most_recent_first() {
        let mut idx = PrefixIndex::new(8);
        idx.record(1, 100);
        idx.record(2, 200);
        idx.record(3, 100);
        assert_eq!(idx.summary(10, |b| b == 100 || b == 200), vec![3, 2, 1]);
        assert_eq!(idx.summary(2, |b| b == 100 || b == 200), vec![3, 2]);
        // Block 100 evicted: its spans are dropped for good.
        assert_eq!(idx.summary(10, |b| b == 200), vec![2]);
        assert_eq!(idx.len(), 1);
    }

    #[test]
    fn spans_whose_blocks_are_not_written_yet_wait_for_them() {
        let mut idx = PrefixIndex::new(8);
        idx.record(1, 100);
        // The prompt is still being prefilled: nothing to report, nothing lost.
        assert!(idx.summary(10, |_| false).is_empty());
        assert_eq!(idx.len(), 1);
        assert_eq!(idx.summary(10, |b| b == 100), vec![1]);
    }

    #[test]
    fn the_index_is_bounded_and_forgets_the_least_recent() {
        let mut idx = PrefixIndex::new(2);
        idx.record(1, 10);
        idx.record(2, 20);
        idx.record(1, 10); // refreshed
        idx.record(3, 30);
        assert_eq!(idx.summary(10, |_| true), vec![3, 1]);
    }
}
