//! Continuous-batching admission and step planning, as pure logic: no I/O,
//! no clocks, no model. The engine asks it what to run each step.
//!
//! Policy, per step:
//! 1. every running sequence whose prompt is done decodes one token;
//! 2. sequences still in their prompt get chunks, oldest first, within the
//!    step's token budget;
//! 3. waiting requests are admitted (FIFO) while there is a running slot,
//!    KV budget for their whole `prompt + max_tokens` reservation, and token
//!    budget left for their first chunk.
//!
//! Reserving a request's whole KV need at admission means a running sequence
//! never has to be preempted.

use std::collections::VecDeque;

/// Identifies a sequence inside one engine.
pub type SeqId = u64;

/// Limits the scheduler enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Sequences that may run (hold a KV cache) at once.
    pub max_running: usize,
    /// Requests that may wait for admission; more are refused as overloaded.
    pub max_waiting: usize,
    /// Tokens processed per step across all sequences (decode tokens plus prompt chunks).
    pub max_step_tokens: usize,
    /// KV cache budget, in token positions, shared by all running sequences.
    pub kv_budget_tokens: usize,
    /// The model's context length: prompt plus generated tokens must fit in it.
    pub context_length: usize,
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
    /// Prompt plus max_tokens exceeds the model's context.
    #[error("prompt ({prompt} tokens) plus max_tokens ({max_new}) exceeds the context length of {context}")]
    ContextExceeded {
        /// Prompt tokens.
        prompt: usize,
        /// Requested new tokens.
        max_new: usize,
        /// The model's context length.
        context: usize,
    },
    /// The request alone needs more KV cache than the model's whole budget.
    #[error("prompt plus max_tokens needs {needed} KV positions, more than this model's budget of {budget}")]
    KvBudgetExceeded {
        /// Positions needed.
        needed: usize,
        /// The budget.
        budget: usize,
    },
}

#[derive(Debug, Clone)]
struct Entry {
    id: SeqId,
    prompt_len: usize,
    max_new: usize,
    /// Prompt tokens already in the cache.
    prefilled: usize,
    /// Decode tokens already fed back in.
    decoded: usize,
}

impl Entry {
    fn reservation(&self) -> usize {
        self.prompt_len + self.max_new
    }
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
    /// Sequences admitted from the queue in this step (they need a KV cache).
    pub admitted: Vec<SeqId>,
    /// What to process, decode items first.
    pub items: Vec<PlannedItem>,
}

/// Queue, running set and KV accounting of one model.
#[derive(Debug)]
pub struct Scheduler {
    cfg: SchedulerConfig,
    waiting: VecDeque<Entry>,
    running: Vec<Entry>,
    kv_reserved: usize,
}

impl Scheduler {
    /// An empty scheduler.
    pub fn new(cfg: SchedulerConfig) -> Self {
        Self {
            cfg,
            waiting: VecDeque::new(),
            running: Vec::new(),
            kv_reserved: 0,
        }
    }

    /// The limits in force.
    pub fn config(&self) -> &SchedulerConfig {
        &self.cfg
    }

    /// Checks a request against limits that do not depend on the current load.
    pub fn validate(
        cfg: &SchedulerConfig,
        prompt_len: usize,
        max_new: usize,
    ) -> Result<(), AdmitError> {
        if prompt_len == 0 || max_new == 0 {
            return Err(AdmitError::Empty);
        }
        if prompt_len + max_new > cfg.context_length {
            return Err(AdmitError::ContextExceeded {
                prompt: prompt_len,
                max_new,
                context: cfg.context_length,
            });
        }
        if prompt_len + max_new > cfg.kv_budget_tokens {
            return Err(AdmitError::KvBudgetExceeded {
                needed: prompt_len + max_new,
                budget: cfg.kv_budget_tokens,
            });
        }
        Ok(())
    }

    /// Queues a request.
    pub fn enqueue(
        &mut self,
        id: SeqId,
        prompt_len: usize,
        max_new: usize,
    ) -> Result<(), AdmitError> {
        Self::validate(&self.cfg, prompt_len, max_new)?;
        if self.waiting.len() >= self.cfg.max_waiting {
            return Err(AdmitError::QueueFull(self.waiting.len()));
        }
        self.waiting.push_back(Entry {
            id,
            prompt_len,
            max_new,
            prefilled: 0,
            decoded: 0,
        });
        Ok(())
    }

    /// Forgets a sequence, waiting or running (finished or cancelled), and frees its KV reservation.
    /// Returns whether it was known.
    pub fn remove(&mut self, id: SeqId) -> bool {
        if let Some(i) = self.running.iter().position(|e| e.id == id) {
            let e = self.running.swap_remove(i);
            self.kv_reserved -= e.reservation();
            return true;
        }
        if let Some(i) = self.waiting.iter().position(|e| e.id == id) {
            self.waiting.remove(i);
            return true;
        }
        false
    }

    /// Requests waiting for admission.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Sequences running.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// KV positions reserved by running sequences.
    pub fn kv_reserved(&self) -> usize {
        self.kv_reserved
    }

    /// Whether there is nothing to do.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Plans the next step and records it as done: the caller must run every item.
    pub fn plan(&mut self) -> StepPlan {
        let mut plan = StepPlan::default();
        let mut budget = self.cfg.max_step_tokens.max(1);
        for e in self
            .running
            .iter_mut()
            .filter(|e| e.prefilled == e.prompt_len)
        {
            if budget == 0 {
                break;
            }
            plan.items.push(PlannedItem {
                id: e.id,
                start: e.prompt_len + e.decoded,
                len: 1,
                want_logits: true,
            });
            e.decoded += 1;
            budget -= 1;
        }
        for e in self
            .running
            .iter_mut()
            .filter(|e| e.prefilled < e.prompt_len)
        {
            if budget == 0 {
                break;
            }
            budget -= Self::chunk(e, budget, &mut plan.items);
        }
        while budget > 0 && self.running.len() < self.cfg.max_running {
            let fits = self
                .waiting
                .front()
                .is_some_and(|e| self.kv_reserved + e.reservation() <= self.cfg.kv_budget_tokens);
            if !fits {
                break;
            }
            let Some(mut e) = self.waiting.pop_front() else {
                break;
            };
            self.kv_reserved += e.reservation();
            plan.admitted.push(e.id);
            budget -= Self::chunk(&mut e, budget, &mut plan.items);
            self.running.push(e);
        }
        plan
    }

    fn chunk(e: &mut Entry, budget: usize, items: &mut Vec<PlannedItem>) -> usize {
        let len = (e.prompt_len - e.prefilled).min(budget);
        items.push(PlannedItem {
            id: e.id,
            start: e.prefilled,
            len,
            want_logits: e.prefilled + len == e.prompt_len,
        });
        e.prefilled += len;
        len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SchedulerConfig {
        SchedulerConfig {
            max_running: 2,
            max_waiting: 2,
            max_step_tokens: 8,
            kv_budget_tokens: 64,
            context_length: 48,
        }
    }

    #[test]
    fn prompt_is_chunked_then_decodes_one_token_per_step() {
        let mut s = Scheduler::new(cfg());
        s.enqueue(1, 12, 4).unwrap();
        let p = s.plan();
        assert_eq!(p.admitted, vec![1]);
        assert_eq!(
            p.items,
            vec![PlannedItem {
                id: 1,
                start: 0,
                len: 8,
                want_logits: false
            }]
        );
        let p = s.plan();
        assert_eq!(
            p.items,
            vec![PlannedItem {
                id: 1,
                start: 8,
                len: 4,
                want_logits: true
            }]
        );
        let p = s.plan();
        assert_eq!(
            p.items,
            vec![PlannedItem {
                id: 1,
                start: 12,
                len: 1,
                want_logits: true
            }]
        );
    }

    #[test]
    fn new_request_joins_while_another_decodes() {
        let mut s = Scheduler::new(cfg());
        s.enqueue(1, 2, 10).unwrap();
        s.plan();
        s.enqueue(2, 20, 4).unwrap();
        let p = s.plan();
        assert_eq!(p.admitted, vec![2]);
        assert_eq!(
            p.items[0],
            PlannedItem {
                id: 1,
                start: 2,
                len: 1,
                want_logits: true
            }
        );
        assert_eq!(
            p.items[1],
            PlannedItem {
                id: 2,
                start: 0,
                len: 7,
                want_logits: false
            }
        );
    }

    #[test]
    fn full_queue_is_refused() {
        let mut s = Scheduler::new(cfg());
        s.enqueue(1, 4, 4).unwrap();
        s.enqueue(2, 4, 4).unwrap();
        assert_eq!(s.enqueue(3, 4, 4), Err(AdmitError::QueueFull(2)));
    }

    #[test]
    fn too_long_requests_are_refused_with_reasons() {
        let mut s = Scheduler::new(cfg());
        assert!(matches!(
            s.enqueue(1, 40, 10),
            Err(AdmitError::ContextExceeded { .. })
        ));
        assert_eq!(s.enqueue(1, 0, 10), Err(AdmitError::Empty));
        let small_kv = SchedulerConfig {
            kv_budget_tokens: 16,
            ..cfg()
        };
        assert!(matches!(
            Scheduler::validate(&small_kv, 10, 10),
            Err(AdmitError::KvBudgetExceeded {
                needed: 20,
                budget: 16
            })
        ));
    }

    #[test]
    fn kv_budget_holds_back_admission_until_a_sequence_leaves() {
        let mut s = Scheduler::new(SchedulerConfig {
            kv_budget_tokens: 40,
            max_running: 4,
            ..cfg()
        });
        s.enqueue(1, 4, 20).unwrap();
        s.enqueue(2, 4, 20).unwrap();
        let p = s.plan();
        assert_eq!(p.admitted, vec![1]);
        assert_eq!(s.kv_reserved(), 24);
        assert!(s.plan().admitted.is_empty());
        assert!(s.remove(1));
        assert_eq!(s.kv_reserved(), 0);
        assert_eq!(s.plan().admitted, vec![2]);
    }

    #[test]
    fn running_slots_bound_admission() {
        let mut s = Scheduler::new(SchedulerConfig {
            max_running: 1,
            ..cfg()
        });
        s.enqueue(1, 1, 4).unwrap();
        s.enqueue(2, 1, 4).unwrap();
        assert_eq!(s.plan().admitted, vec![1]);
        assert!(s.plan().admitted.is_empty());
        assert_eq!(s.waiting(), 1);
    }

    #[test]
    fn cancelled_waiting_request_leaves_the_queue() {
        let mut s = Scheduler::new(SchedulerConfig {
            max_running: 0,
            ..cfg()
        });
        s.enqueue(1, 4, 4).unwrap();
        assert!(s.remove(1));
        assert!(s.is_idle());
        assert!(!s.remove(1));
    }
}
