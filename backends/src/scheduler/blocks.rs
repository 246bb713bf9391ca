//! The KV block pool as pure bookkeeping: which fixed-size blocks are free,
//! which are held by running sequences (reference-counted, so sequences
//! sharing a cached prefix share its blocks), and which hold a finished
//! prefix that may be reused until the space is needed (the prefix cache,
//! evicted least recently released first).
//!
//! No memory lives here: the model's [`KvPool`](crate::model::KvPool) holds
//! the keys and values at the block ids this pool hands out.

use std::collections::{BTreeMap, HashMap};

/// Index of a block in the model's KV pool.
pub type BlockId = u32;

/// Blocks of one model replica.
#[derive(Debug)]
pub struct BlockPool {
    /// Holders of each block.
    refs: Vec<u32>,
    /// The prefix hash a block is registered under, if any.
    hash_of: Vec<Option<u64>>,
    /// Prefix hash -> the block holding that prefix's last block of tokens.
    cached: HashMap<u64, BlockId>,
    /// Blocks nobody holds and no prefix is registered on; popped from the end.
    free: Vec<BlockId>,
    /// Unheld blocks that keep a registered prefix, by release order (oldest first).
    evictable: BTreeMap<u64, BlockId>,
    /// Each block's key in `evictable`, or 0 when it is not there.
    lru_key: Vec<u64>,
    lru_clock: u64,
    evictions: u64,
}

impl BlockPool {
    /// A pool of `num_blocks` free blocks.
    pub fn new(num_blocks: usize) -> Self {
        let n = u32::try_from(num_blocks).unwrap_or(u32::MAX) as usize;
        Self {
            refs: vec![0; n],
            hash_of: vec![None; n],
            cached: HashMap::new(),
            // Lowest ids first, so a lightly loaded pool touches little memory.
            free: (0..n as BlockId).rev().collect(),
            evictable: BTreeMap::new(),
            lru_key: vec![0; n],
            lru_clock: 0,
            evictions: 0,
        }
    }

    /// All blocks.
    pub fn total(&self) -> usize {
        self.refs.len()
    }

    /// Blocks that can be handed out now: free ones plus evictable cached ones.
    pub fn available(&self) -> usize {
        self.free.len() + self.evictable.len()
    }

    /// Blocks held by at least one sequence.
    pub fn used(&self) -> usize {
        self.total() - self.available()
    }

    /// Blocks that keep a cached prefix (held or not).
    pub fn cached(&self) -> usize {
        self.cached.len()
    }

    /// Cached blocks evicted so far to make room.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// The block registered under a prefix hash, if it is still cached.
    pub fn lookup(&self, hash: u64) -> Option<BlockId> {
        self.cached.get(&hash).copied()
    }

    /// Whether a prefix hash is still cached.
    pub fn contains(&self, hash: u64) -> bool {
        self.cached.contains_key(&hash)
    }

    /// Whether a block is unheld and waiting in the prefix cache.
    pub fn is_evictable(&self, block: BlockId) -> bool {
        self.lru_key[block as usize] != 0
    }

    /// Takes one more hold on a cached block (found with [`lookup`](Self::lookup)).
    pub fn acquire(&mut self, block: BlockId) {
        let b = block as usize;
        if self.refs[b] == 0 {
            self.leave_lru(block);
        }
        self.refs[b] += 1;
    }

    /// A fresh block for one holder: a free one, else the least recently
    /// released cached one (its prefix is forgotten). `None` when every
    /// block is held.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let block = match self.free.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self.evictable.pop_first()?;
                self.lru_key[b as usize] = 0;
                if let Some(h) = self.hash_of[b as usize].take() {
                    self.cached.remove(&h);
                }
                self.evictions += 1;
                b
            }
        };
        self.refs[block as usize] = 1;
        Some(block)
    }

    /// Drops one hold. A block nobody holds any more stays in the prefix
    /// cache if a prefix is registered on it, else becomes free.
    pub fn release(&mut self, block: BlockId) {
        let b = block as usize;
        debug_assert!(self.refs[b] > 0, "block {block} released more than held");
        if self.refs[b] == 0 {
            return;
        }
        self.refs[b] -= 1;
        if self.refs[b] > 0 {
            return;
        }
        if self.hash_of[b].is_some() {
            self.lru_clock += 1;
            self.lru_key[b] = self.lru_clock;
            self.evictable.insert(self.lru_clock, block);
        } else {
            self.free.push(block);
        }
    }

    /// Registers a held, fully written block under its prefix hash so later
    /// sequences can reuse it. Returns `false` (and registers nothing) if
    /// another block already holds that prefix or this block has a hash.
    pub fn register(&mut self, block: BlockId, hash: u64) -> bool {
        let b = block as usize;
        if self.hash_of[b].is_some() || self.cached.contains_key(&hash) {
            return false;
        }
        self.hash_of[b] = Some(hash);
        self.cached.insert(hash, block);
        true
    }

    fn leave_lru(&mut self, block: BlockId) {
        let key = std::mem::take(&mut self.lru_key[block as usize]);
        if key != 0 {
            self.evictable.remove(&key);
        }
    }

    /// Checks the pool's internal consistency (tests and debug builds).
    pub fn check(&self) -> Result<(), String> {
        let mut seen = vec![0u8; self.total()];
        for &b in &self.free {
            seen[b as usize] += 1;
            if self.refs[b as usize] != 0 || self.hash_of[b as usize].is_some() {
                return Err(format!("free block {b} is held or hashed"));
            }
        }
        for &b in self.evictable.values() {
            seen[b as usize] += 1;
            if self.refs[b as usize] != 0 || self.hash_of[b as usize].is_none() {
                return Err(format!("evictable block {b} is held or unhashed"));
            }
        }
        for (b, &n) in seen.iter().enumerate() {
            let held = self.refs[b] > 0;
            if (n == 1) == held || n > 1 {
                return Err(format!(
                    "block {b} is listed {n} times with {} holders",
                    self.refs[b]
                ));
            }
        }
        for (&h, &b) in &self.cached {
            if self.hash_of[b as usize] != Some(h) {
                return Err(format!(
                    "cache entry {h:x} points at block {b} with another hash"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_handed_out_lowest_first_and_come_back_free() {
        let mut p = BlockPool::new(3);
        assert_eq!(p.allocate(), Some(0));
        assert_eq!(p.allocate(), Some(1));
        assert_eq!(p.available(), 1);
        p.release(0);
        assert_eq!(p.available(), 2);
        assert_eq!(p.used(), 1);
        p.check().unwrap();
    }

    #[test]
    fn a_registered_block_outlives_its_holder_until_space_is_needed() {
        let mut p = BlockPool::new(2);
        let a = p.allocate().unwrap();
        assert!(p.register(a, 42));
        p.release(a);
        assert_eq!(p.lookup(42), Some(a));
        assert_eq!(p.used(), 0);
        assert!(p.is_evictable(a));
        // Reused: held again, no longer evictable.
        p.acquire(a);
        assert!(!p.is_evictable(a));
        assert_eq!(p.used(), 1);
        p.release(a);
        // Free blocks go first; the cached one is evicted only when nothing else is left.
        let b = p.allocate().unwrap();
        assert_ne!(a, b);
        assert_eq!(p.lookup(42), Some(a));
        let c = p.allocate().unwrap();
        assert_eq!(c, a);
        assert_eq!(p.lookup(42), None);
        assert_eq!(p.evictions(), 1);
        assert_eq!(p.allocate(), None);
        p.check().unwrap();
    }

    #[test]
    fn eviction_takes_the_least_recently_released_first() {
        let mut p = BlockPool::new(3);
        let blocks: Vec<BlockId> = (0..3).map(|_| p.allocate().unwrap()).collect();
        for (i, &b) in blocks.iter().enumerate() {
            assert!(p.register(b, 100 + i as u64));
        }
        p.release(blocks[1]);
        p.release(blocks[0]);
        p.release(blocks[2]);
        assert_eq!(p.allocate(), Some(blocks[1]));
        assert_eq!(p.allocate(), Some(blocks[0]));
        assert_eq!(p.lookup(102), Some(blocks[2]));
    }

    #[test]
    fn a_prefix_is_registered_once() {
        let mut p = BlockPool::new(2);
        let a = p.allocate().unwrap();
        let b = p.allocate().unwrap();
        assert!(p.register(a, 7));
        assert!(!p.register(b, 7));
        assert!(!p.register(a, 8));
        p.release(b);
        // The duplicate was never registered, so it is plainly free.
        assert!(!p.is_evictable(b));
        p.check().unwrap();
    }
}
