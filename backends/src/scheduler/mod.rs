//! Continuous-batching admission and step planning over a paged KV cache,
//! as pure logic: no I/O, no clocks, no model. The engine asks it what to
//! run each step.
//!
//! The KV cache is a pool of fixed-size blocks ([`BlockPool`]). A sequence
//! holds a block table that grows one block at a time as it generates;
//! nothing is reserved for `max_tokens` up front.
//!
//! Policy, per step:
//! 1. every running sequence past its prompt decodes one token, oldest
//!    first; one that needs a new block and finds none preempts a running
//!    sequence not yet planned this step (possibly itself): the youngest
//!    [`Priority::Batch`] one if there is one, else the youngest. That
//!    sequence's blocks are released and it goes back to the front of the
//!    queue with every token it has so far, to be recomputed (from the
//!    prefix cache where possible) when it is readmitted;
//! 2. sequences still in their prompt get chunks, interactive ones first,
//!    oldest first within a class, within the step's token budget (their
//!    blocks were taken at admission), which is smaller when the step
//!    decodes too or once its first prompt chunk is planned
//!    ([`SchedulerConfig::prefill_tokens_while_decoding`]);
//! 3. waiting requests are admitted while there is a running slot, token
//!    budget, and blocks for the part of their prompt not already cached,
//!    keeping a small watermark of blocks for running sequences to grow
//!    into: the first waiting interactive request, else the first batch
//!    one (FIFO within a class), so batch work never delays a waiting
//!    interactive request.
//!
//! Prefix caching: a full block is identified by a hash chained over its
//! parent block's hash, its token ids and the request's cache salt. Full
//! blocks are registered once their keys and values are written (at the
//! next plan), stay cached after their sequences leave, and are evicted
//! least recently released first only when blocks are needed. A new
//! request reuses the longest cached chain of its tokens and prefills only
//! the rest.

mod blocks;

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};

pub use blocks::{BlockId, BlockPool};
pub use protocol::Priority;

/// Identifies a sequence inside one engine.
pub type SeqId = u64;

/// Limits the scheduler enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Sequences that may run (hold KV blocks) at once.
    pub max_running: usize,
    /// Requests that may wait for admission; more are refused as overloaded.
    pub max_waiting: usize,
    /// Tokens processed per step across all sequences (decode tokens plus prompt chunks).
    pub max_step_tokens: usize,
    /// Prompt tokens a step may add to the decode tokens of running
    /// sequences, or to the first prompt chunk of a step without them: a
    /// step is as slow as the tokens it processes, so this bounds the pause
    /// decoding sequences see when prompts arrive, and lets prompts that
    /// arrive together take turns (each gets its first token after its own
    /// chunks) instead of all finishing together at the end of one large
    /// step. A prompt alone uses `max_step_tokens`.
    pub prefill_tokens_while_decoding: usize,
    /// Token positions per KV block.
    pub block_size: usize,
    /// Blocks in the KV pool.
    pub num_blocks: usize,
    /// Blocks admission leaves free for running sequences to grow into.
    pub watermark_blocks: usize,
    /// The model's context length: prompt plus generated tokens must fit in it.
    pub context_length: usize,
}

impl SchedulerConfig {
    /// Blocks needed to hold `tokens` positions.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size.max(1))
    }

    /// The default watermark for a pool: 1% of the blocks, at least one.
    pub fn default_watermark(num_blocks: usize) -> usize {
        (num_blocks / 100).max(1)
    }
}

/// Why a request cannot be queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    /// The waiting queue is full.
    #[error("the queue is full ({0} requests waiting)")]
    QueueFull(usize),
    /// The prompt is empty or asks for no tokens.
    #[error("the prompt is empty or max_tokens is 0")]
    Empty,
    /// The prompt leaves no room in the model's context for a generated token.
    #[error("the prompt ({prompt} tokens) leaves no room to generate within the context length of {context}")]
    ContextExceeded {
        /// Prompt tokens.
        prompt: usize,
        /// The model's context length.
        context: usize,
    },
    /// Prompt plus an explicit `max_tokens` exceeds the model's context.
    #[error("prompt ({prompt} tokens) plus max_tokens ({max_new}) exceeds the context length of {context}")]
    LengthExceeded {
        /// Prompt tokens.
        prompt: usize,
        /// Requested new tokens.
        max_new: usize,
        /// The model's context length.
        context: usize,
    },
    /// The prompt alone needs more KV cache than the model's whole pool.
    #[error("the prompt needs {needed} KV positions, more than this model's cache of {budget}")]
    KvBudgetExceeded {
        /// Positions needed.
        needed: usize,
        /// Positions admission can ever give one sequence.
        budget: usize,
    },
}

/// What one sequence does in a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedItem {
    /// The sequence.
    pub id: SeqId,
    /// Position of the first token processed.
    pub start: usize,
    /// Tokens processed.
    pub len: usize,
    /// Whether the step ends with a token to sample for this sequence.
    pub want_logits: bool,
}

/// The work of one step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepPlan {
    /// Sequences admitted (or readmitted after preemption) in this step.
    pub admitted: Vec<SeqId>,
    /// Running sequences sent back to the queue to free their blocks.
    pub preempted: Vec<SeqId>,
    /// Sequences that need a block when no other sequence is left to
    /// preempt: they hold the whole pool and cannot grow; the caller
    /// finishes them (length) and removes them.
    pub exhausted: Vec<SeqId>,
    /// What to process, decode items first.
    pub items: Vec<PlannedItem>,
}

/// Prefix-cache counters of one scheduler since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheCounters {
    /// Prompt tokens looked up in the prefix cache at admission.
    pub queried_tokens: u64,
    /// Of those, tokens found cached (not recomputed).
    pub hit_tokens: u64,
    /// Sequences preempted to free blocks.
    pub preemptions: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    id: SeqId,
    /// Prompt and generated tokens so far; the last one may not be in the cache yet.
    tokens: Vec<u32>,
    /// Root of this request's hash chain (its cache salt).
    root: u64,
    /// Chained hashes of the full blocks of `tokens` computed so far.
    hashes: Vec<u64>,
    /// Tokens whose keys and values are in the cache.
    computed: usize,
    /// Tokens the current prefill pass must reach before decoding: the
    /// whole token list at (re)admission.
    prefill_to: usize,
    /// Blocks holding this sequence's positions, in order.
    table: Vec<BlockId>,
    /// Leading blocks of `table` registered in the prefix cache (or
    /// found there).
    registered: usize,
    /// Whether its first admission was counted in the cache counters.
    counted: bool,
    /// Its scheduling class.
    priority: Priority,
}

impl Entry {
    fn in_prefill(&self) -> bool {
        self.computed < self.prefill_to
    }
}

/// Queue, running set and KV block accounting of one model.
#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    pool: BlockPool,
    /// Keyed per scheduler, so block hashes cannot be predicted (and
    /// collided) from outside.
    hasher: RandomState,
    waiting: VecDeque<Entry>,
    running: Vec<Entry>,
    counters: CacheCounters,
}

impl Scheduler {
    /// An empty scheduler with every block free.
    pub fn new(cfg: SchedulerConfig) -> Self {
        let cfg = SchedulerConfig {
            block_size: cfg.block_size.max(1),
            ..cfg
        };
        Self {
            pool: BlockPool::new(cfg.num_blocks),
            cfg,
            hasher: RandomState::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            counters: CacheCounters::default(),
        }
    }

    /// The limits in force.
    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    /// Checks a prompt against limits that do not depend on the current load.
    pub fn validate(cfg: &SchedulerConfig, prompt_len: usize) -> Result<(), AdmitError> {
        if prompt_len == 0 {
            return Err(AdmitError::Empty);
        }
        if prompt_len >= cfg.context_length {
            return Err(AdmitError::ContextExceeded {
                prompt: prompt_len,
                context: cfg.context_length,
            });
        }
        // The prompt and one generated token must fit the whole pool.
        if cfg.blocks_for(prompt_len + 1) > cfg.num_blocks {
            return Err(AdmitError::KvBudgetExceeded {
                needed: prompt_len + 1,
                budget: cfg.num_blocks * cfg.block_size,
            });
        }
        Ok(())
    }

    /// Queues a request whose prompt is `tokens`; `salt` separates its
    /// cache entries from those of requests with another salt, `priority`
    /// orders its admission against other waiting requests.
    pub fn enqueue(
        &mut self,
        id: SeqId,
        tokens: Vec<u32>,
        salt: &[u8],
        priority: Priority,
    ) -> Result<(), AdmitError> {
        Self::validate(&self.cfg, tokens.len())?;
        if self.waiting.len() >= self.cfg.max_waiting {
            return Err(AdmitError::QueueFull(self.waiting.len()));
        }
        let mut h = self.hasher.build_hasher();
        h.write(b"inferno-kv-salt");
        h.write_usize(salt.len());
        h.write(salt);
        self.waiting.push_back(Entry {
            id,
            prefill_to: tokens.len(),
            tokens,
            root: h.finish(),
            hashes: Vec::new(),
            computed: 0,
            table: Vec::new(),
            registered: 0,
            counted: false,
            priority,
        });
        Ok(())
    }

    /// Appends the token just sampled for a running sequence; it is fed
    /// back in at the next step. Returns whether the sequence is running.
    pub fn append_token(&mut self, id: SeqId, token: u32) -> bool {
        match self.running.iter_mut().find(|e| e.id == id) {
            Some(e) => {
                e.tokens.push(token);
                true
            }
            None => false,
        }
    }

    /// A running sequence's tokens and block table.
    pub fn sequence(&self, id: SeqId) -> Option<(&[u32], &[BlockId])> {
        self.running
            .iter()
            .find(|e| e.id == id)
            .map(|e| (e.tokens.as_slice(), e.table.as_slice()))
    }

    /// The prefix hashes of the first `blocks` full blocks of a queued or
    /// running sequence's tokens (fewer if it has fewer full blocks).
    pub fn chain_hashes(&mut self, id: SeqId, blocks: usize) -> &[u64] {
        let (hasher, bs) = (&self.hasher, self.cfg.block_size);
        let entry = self
            .running
            .iter_mut()
            .chain(self.waiting.iter_mut())
            .find(|e| e.id == id);
        match entry {
            Some(e) => {
                let n = blocks.min(e.tokens.len() / bs);
                ensure_hashes(hasher, bs, e, n);
                &e.hashes[..n]
            }
            None => &[],
        }
    }

    /// Whether a prefix hash is still in the cache.
    pub fn is_cached(&self, hash: u64) -> bool {
        self.pool.contains(hash)
    }

    /// Forgets a finished or cancelled sequence, waiting or running. Its
    /// fully written blocks stay in the prefix cache. Returns whether it
    /// was known.
    pub fn remove(&mut self, id: SeqId) -> bool {
        self.take(id, true)
    }

    /// Forgets a sequence whose last step failed: its blocks are released
    /// without caching what that step wrote.
    pub fn discard(&mut self, id: SeqId) -> bool {
        self.take(id, false)
    }

    fn take(&mut self, id: SeqId, keep_cache: bool) -> bool {
        if let Some(i) = self.running.iter().position(|e| e.id == id) {
            let mut e = self.running.remove(i);
            if keep_cache {
                self.commit(&mut e);
            }
            self.release(&mut e);
            return true;
        }
        if let Some(i) = self.waiting.iter().position(|e| e.id == id) {
            self.waiting.remove(i);
            return true;
        }
        false
    }

    /// Requests waiting for admission (preempted ones included).
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Sequences running.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// The block pool (usage and cache figures).
    pub fn blocks(&self) -> &BlockPool {
        &self.pool
    }

    /// Prefix-cache and preemption counters.
    pub fn counters(&self) -> CacheCounters {
        self.counters
    }

    /// Whether there is nothing to do.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Plans the next step and records it as done: the caller must run
    /// every item before planning again.
    pub fn plan(&mut self) -> StepPlan {
        // Everything planned last time has been written: cache its full blocks.
        let mut running = std::mem::take(&mut self.running);
        for e in &mut running {
            self.commit(e);
        }
        self.running = running;

        let mut plan = StepPlan::default();
        let mut budget = self.cfg.max_step_tokens.max(1);
        self.plan_decodes(&mut plan, &mut budget);
        if !plan.items.is_empty() {
            budget = budget.min(self.cfg.prefill_tokens_while_decoding.max(1));
        }
        self.plan_prefills(&mut plan, &mut budget, Priority::Interactive);
        self.admit(&mut plan, &mut budget, Some(Priority::Interactive));
        self.plan_prefills(&mut plan, &mut budget, Priority::Batch);
        self.admit(&mut plan, &mut budget, None);
        plan
    }

    /// One decode token per running sequence past its prompt, oldest first,
    /// preempting the youngest when a sequence needs a block and none is left.
    fn plan_decodes(&mut self, plan: &mut StepPlan, budget: &mut usize) {
        let mut i = 0;
        while i < self.running.len() && *budget > 0 {
            if self.running[i].in_prefill() {
                i += 1;
                continue;
            }
            let need = self.cfg.blocks_for(self.running[i].tokens.len());
            let mut grown = true;
            while self.running[i].table.len() < need {
                if let Some(b) = self.pool.allocate() {
                    self.running[i].table.push(b);
                    continue;
                }
                let victim = self.victim(i);
                if victim > i {
                    self.preempt(victim, plan);
                    continue;
                }
                // This sequence is the one to go. Alone, it holds the whole
                // pool: it ends here. Otherwise it makes room for the others.
                if self.running.len() == 1 {
                    let mut e = self.running.remove(0);
                    self.release(&mut e);
                    plan.exhausted.push(e.id);
                } else {
                    self.preempt(i, plan);
                }
                grown = false;
                break;
            }
            if !grown {
                continue;
            }
            let e = &mut self.running[i];
            plan.items.push(PlannedItem {
                id: e.id,
                start: e.computed,
                len: e.tokens.len() - e.computed,
                want_logits: true,
            });
            let len = e.tokens.len() - e.computed;
            e.computed = e.tokens.len();
            // Tokens a grammar forced make a decode longer than one.
            *budget = budget.saturating_sub(len.max(1));
            i += 1;
        }
    }

    /// Which running sequence makes room when sequence `i` (planned now)
    /// needs a block: of `i` and the sequences not planned yet (after it),
    /// the youngest batch one, else the youngest.
    fn victim(&self, i: usize) -> usize {
        let last = self.running.len() - 1;
        (i..=last)
            .rev()
            .find(|&j| self.running[j].priority == Priority::Batch)
            .unwrap_or(last)
    }

    /// Prompt chunks for sequences of `class` still in their prompt,
    /// oldest first.
    fn plan_prefills(&mut self, plan: &mut StepPlan, budget: &mut usize, class: Priority) {
        let cap = self.cfg.prefill_tokens_while_decoding.max(1);
        for e in self
            .running
            .iter_mut()
            .filter(|e| e.in_prefill() && e.priority == class)
        {
            if *budget == 0 {
                return;
            }
            *budget -= chunk(e, *budget, &mut plan.items);
            *budget = (*budget).min(cap);
        }
    }

    /// The waiting request to admit next: the first interactive one, else
    /// (unless `only` says interactive) the first one.
    fn next_waiting(&self, only: Option<Priority>) -> Option<usize> {
        let first = self
            .waiting
            .iter()
            .position(|e| e.priority == Priority::Interactive);
        match only {
            Some(Priority::Interactive) => first,
            _ if self.waiting.is_empty() => None,
            _ => Some(first.unwrap_or(0)),
        }
    }

    /// Admits waiting requests (interactive ones only when `only` says so),
    /// interactive ones first, in order within a class, while a slot, token
    /// budget and blocks for their uncached prompt remain.
    fn admit(&mut self, plan: &mut StepPlan, budget: &mut usize, only: Option<Priority>) {
        let bs = self.cfg.block_size;
        while *budget > 0 && self.running.len() < self.cfg.max_running {
            let Some(next) = self.next_waiting(only) else {
                break;
            };
            let Some(e) = self.waiting.get_mut(next) else {
                break;
            };
            // At least the last token is computed, to sample from its logits.
            let reusable = (e.tokens.len() - 1) / bs;
            ensure_hashes(&self.hasher, bs, e, reusable);
            let mut matched = Vec::new();
            let mut revived = 0;
            for h in &e.hashes[..reusable] {
                match self.pool.lookup(*h) {
                    Some(b) => {
                        revived += usize::from(self.pool.is_evictable(b));
                        matched.push(b);
                    }
                    None => break,
                }
            }
            let needed = self.cfg.blocks_for(e.tokens.len()) - matched.len();
            let available = self.pool.available() - revived;
            let room = if self.running.is_empty() {
                available
            } else {
                available.saturating_sub(self.cfg.watermark_blocks)
            };
            if needed > room {
                break;
            }
            let Some(mut e) = self.waiting.remove(next) else {
                break;
            };
            for &b in &matched {
                self.pool.acquire(b);
            }
            let hit = matched.len();
            e.table = matched;
            while e.table.len() < self.cfg.blocks_for(e.tokens.len()) {
                // Cannot fail: `needed <= available` was checked above.
                match self.pool.allocate() {
                    Some(b) => e.table.push(b),
                    None => break,
                }
            }
            e.registered = hit;
            e.computed = hit * bs;
            e.prefill_to = e.tokens.len();
            if !e.counted {
                e.counted = true;
                self.counters.queried_tokens += e.tokens.len() as u64;
                self.counters.hit_tokens += e.computed as u64;
            }
            plan.admitted.push(e.id);
            *budget -= chunk(&mut e, *budget, &mut plan.items);
            *budget = (*budget).min(self.cfg.prefill_tokens_while_decoding.max(1));
            self.running.push(e);
        }
    }

    /// Sends running sequence `i` back to the front of the queue, releasing
    /// its blocks (its full ones stay cached for its readmission).
    fn preempt(&mut self, i: usize, plan: &mut StepPlan) {
        let mut e = self.running.remove(i);
        self.release(&mut e);
        plan.preempted.push(e.id);
        self.counters.preemptions += 1;
        self.waiting.push_front(e);
    }

    /// Registers the sequence's fully written blocks in the prefix cache.
    fn commit(&mut self, e: &mut Entry) {
        let bs = self.cfg.block_size;
        let full = (e.computed / bs).min(e.table.len());
        if full <= e.registered {
            return;
        }
        ensure_hashes(&self.hasher, bs, e, full);
        for b in e.registered..full {
            // A block whose prefix another block already holds stays
            // private and is freed with its sequence.
            self.pool.register(e.table[b], e.hashes[b]);
        }
        e.registered = full;
    }

    /// Releases every block of a sequence, tail first, so that under
    /// pressure the cache forgets the ends of prefixes before their starts.
    fn release(&mut self, e: &mut Entry) {
        for &b in e.table.iter().rev() {
            self.pool.release(b);
        }
        e.table.clear();
        e.registered = 0;
        e.computed = 0;
    }

    /// Checks that the blocks held are exactly those in the running
    /// sequences' tables (tests and debug builds).
    pub fn check(&self) -> Result<(), String> {
        self.pool.check()?;
        let held: usize = self.running.iter().map(|e| e.table.len()).sum();
        let mut distinct: Vec<BlockId> =
            self.running.iter().flat_map(|e| e.table.clone()).collect();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() != self.pool.used() {
            return Err(format!(
                "{} distinct blocks in tables ({held} with sharing) but {} held in the pool",
                distinct.len(),
                self.pool.used()
            ));
        }
        if let Some(e) = self.waiting.iter().find(|e| !e.table.is_empty()) {
            return Err(format!("waiting sequence {} holds blocks", e.id));
        }
        Ok(())
    }
}

/// Extends `e.hashes` to its first `n` full blocks.
fn ensure_hashes(hasher: &RandomState, bs: usize, e: &mut Entry, n: usize) {
    while e.hashes.len() < n {
        let b = e.hashes.len();
        let parent = if b == 0 { e.root } else { e.hashes[b - 1] };
        let mut h = hasher.build_hasher();
        h.write_u64(parent);
        for &t in &e.tokens[b * bs..(b + 1) * bs] {
            h.write_u32(t);
        }
        e.hashes.push(h.finish());
    }
}

/// Plans the next prompt chunk of `e` within `budget`; returns its length.
fn chunk(e: &mut Entry, budget: usize, items: &mut Vec<PlannedItem>) -> usize {
    let len = (e.prefill_to - e.computed).min(budget);
    items.push(PlannedItem {
        id: e.id,
        start: e.computed,
        len,
        want_logits: e.computed + len == e.prefill_to,
    });
    e.computed += len;
    len
}

#[cfg(test)]
mod tests;
