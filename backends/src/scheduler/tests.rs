//! The scheduler's policy, step by step, without a model.

use super::*;

const INTERACTIVE: Priority = Priority::Interactive;
const BATCH: Priority = Priority::Batch;

fn cfg() -> SchedulerConfig {
    SchedulerConfig {
        max_running: 4,
        max_waiting: 4,
        max_step_tokens: 64,
        prefill_tokens_while_decoding: 64,
        block_size: 4,
        num_blocks: 16,
        watermark_blocks: 1,
        context_length: 64,
    }
}

fn toks(n: usize, base: u32) -> Vec<u32> {
    (0..n as u32).map(|i| base + i).collect()
}

/// Runs a plan as the engine would: every item that wants logits samples
/// token `next`.
fn run(s: &mut Scheduler, plan: &StepPlan, next: u32) {
    for item in plan.items.iter().filter(|i| i.want_logits) {
        assert!(s.append_token(item.id, next));
    }
}

fn item(id: SeqId, start: usize, len: usize, want_logits: bool) -> PlannedItem {
    PlannedItem {
        id,
        start,
        len,
        want_logits,
    }
}

#[test]
fn prompt_is_chunked_then_decodes_one_token_per_step() {
    let mut s = Scheduler::new(SchedulerConfig {
        max_step_tokens: 8,
        ..cfg()
    });
    s.enqueue(1, toks(12, 10), b"", INTERACTIVE).unwrap();
    let p = s.plan();
    assert_eq!(p.admitted, vec![1]);
    assert_eq!(p.items, vec![item(1, 0, 8, false)]);
    run(&mut s, &p, 0);
    let p = s.plan();
    assert_eq!(p.items, vec![item(1, 8, 4, true)]);
    run(&mut s, &p, 99);
    let p = s.plan();
    assert_eq!(p.items, vec![item(1, 12, 1, true)]);
    assert_eq!(s.sequence(1).unwrap().0.last(), Some(&99));
}

#[test]
fn new_request_joins_while_another_decodes() {
    let mut s = Scheduler::new(SchedulerConfig {
        max_step_tokens: 8,
        ..cfg()
    });
    s.enqueue(1, toks(2, 10), b"", INTERACTIVE).unwrap();
    let p = s.plan();
    run(&mut s, &p, 5);
    s.enqueue(2, toks(20, 50), b"", INTERACTIVE).unwrap();
    let p = s.plan();
    assert_eq!(p.admitted, vec![2]);
    assert_eq!(p.items, vec![item(1, 2, 1, true), item(2, 0, 7, false)]);
}

#[test]
fn blocks_are_taken_one_at_a_time_as_a_sequence_grows() {
    let mut s = Scheduler::new(cfg());
    s.enqueue(1, toks(5, 10), b"", INTERACTIVE).unwrap();
    let p = s.plan();
    run(&mut s, &p, 1);
    // 5 prompt tokens: 2 blocks, nothing reserved for what will be generated.
    assert_eq!(s.blocks().used(), 2);
    for _ in 0..3 {
        let p = s.plan();
        run(&mut s, &p, 1);
    }
    // Positions 0..8 written, token 9 pending: still 2 blocks.
    assert_eq!(s.sequence(1).unwrap().0.len(), 9);
    assert_eq!(s.blocks().used(), 2);
    let p = s.plan();
    run(&mut s, &p, 1);
    assert_eq!(s.blocks().used(), 3);
    s.check().unwrap();
}

#[test]
fn admission_needs_no_max_tokens_and_many_long_requests_run_at_once() {
    // Each request could grow to the whole context (64 positions = the
    // whole pool), yet all four run together.
    let mut s = Scheduler::new(cfg());
    for id in 1..=4 {
        s.enqueue(id, toks(3, 10 * id as u32), b"", INTERACTIVE)
            .unwrap();
    }
    let p = s.plan();
    assert_eq!(p.admitted, vec![1, 2, 3, 4]);
    assert_eq!(s.running(), 4);
    assert_eq!(s.blocks().used(), 4);
}

#[test]
fn requests_that_cannot_fit_are_refused_with_reasons() {
    let mut s = Scheduler::new(SchedulerConfig {
        max_waiting: 2,
        ..cfg()
    });
    assert_eq!(
        s.enqueue(1, vec![], b"", INTERACTIVE),
        Err(AdmitError::Empty)
    );
    assert!(matches!(
        s.enqueue(1, toks(64, 0), b"", INTERACTIVE),
        Err(AdmitError::ContextExceeded { prompt: 64, .. })
    ));
    let small = SchedulerConfig {
        num_blocks: 2,
        ..cfg()
    };
    assert!(matches!(
        Scheduler::validate(&small, 8),
        Err(AdmitError::KvBudgetExceeded {
            needed: 9,
            budget: 8
        })
    ));
    s.enqueue(1, toks(4, 0), b"", INTERACTIVE).unwrap();
    s.enqueue(2, toks(4, 0), b"", INTERACTIVE).unwrap();
    assert_eq!(
        s.enqueue(3, toks(4, 0), b"", INTERACTIVE),
        Err(AdmitError::QueueFull(2))
    );
}

#[test]
fn admission_waits_for_blocks_and_keeps_a_watermark() {
    let mut s = Scheduler::new(SchedulerConfig {
        num_blocks: 6,
        watermark_blocks: 1,
        ..cfg()
    });
    s.enqueue(1, toks(12, 0), b"a", INTERACTIVE).unwrap(); // 3 blocks
    s.enqueue(2, toks(8, 100), b"b", INTERACTIVE).unwrap(); // 2 blocks: 3 + 2 + watermark = 6
    s.enqueue(3, toks(4, 200), b"c", INTERACTIVE).unwrap(); // would eat the watermark
    let p = s.plan();
    assert_eq!(p.admitted, vec![1, 2]);
    assert_eq!(s.waiting(), 1);
    run(&mut s, &p, 7);
    assert!(s.remove(2));
    assert_eq!(s.plan().admitted, vec![3]);
}

#[test]
fn a_lone_request_may_use_the_watermark() {
    let mut s = Scheduler::new(SchedulerConfig {
        num_blocks: 3,
        watermark_blocks: 1,
        ..cfg()
    });
    s.enqueue(1, toks(11, 0), b"", INTERACTIVE).unwrap();
    assert_eq!(s.plan().admitted, vec![1]);
}

#[test]
fn running_slots_bound_admission() {
    let mut s = Scheduler::new(SchedulerConfig {
        max_running: 1,
        ..cfg()
    });
    s.enqueue(1, toks(1, 0), b"", INTERACTIVE).unwrap();
    s.enqueue(2, toks(1, 0), b"", INTERACTIVE).unwrap();
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
    s.enqueue(1, toks(4, 0), b"", INTERACTIVE).unwrap();
    assert!(s.remove(1));
    assert!(s.is_idle());
    assert!(!s.remove(1));
}

/// Grows three sequences in a 6-block pool until one must be preempted.
#[test]
fn preemption_picks_the_youngest_and_it_resumes_with_all_its_tokens() {
    let mut s = Scheduler::new(SchedulerConfig {
        num_blocks: 6,
        watermark_blocks: 0,
        ..cfg()
    });
    for id in 1..=3 {
        s.enqueue(id, toks(8, 100 * id as u32), b"", INTERACTIVE)
            .unwrap(); // 2 blocks each
    }
    let p = s.plan();
    assert_eq!(p.admitted, vec![1, 2, 3]);
    run(&mut s, &p, 1);
    // Every sequence now needs a third block for position 8; none is free.
    let p = s.plan();
    assert_eq!(p.preempted, vec![3]);
    assert_eq!(p.items.iter().map(|i| i.id).collect::<Vec<_>>(), vec![1, 2]);
    run(&mut s, &p, 2);
    assert_eq!(s.waiting(), 1);
    assert_eq!(s.running(), 2);
    s.check().unwrap();
    // It waits at the front until blocks come back, then recomputes its
    // prompt and the token it had generated (its cached blocks were
    // evicted to let the others grow) and samples its next token.
    s.remove(1);
    let p = s.plan();
    assert_eq!(p.admitted, vec![3]);
    let resumed = p.items.iter().find(|i| i.id == 3).unwrap();
    assert_eq!(resumed, &item(3, 0, 9, true));
    assert_eq!(
        s.sequence(3).unwrap().0,
        &[300, 301, 302, 303, 304, 305, 306, 307, 1][..]
    );
    assert_eq!(s.counters().preemptions, 1);
}

/// While a sequence decodes, prompts get at most
/// `prefill_tokens_while_decoding` tokens a step and take turns: the first
/// waiting prompt is finished (and samples) before the next one starts. A
/// step with nothing to decode uses the whole `max_step_tokens`.
#[test]
fn prompts_take_small_turns_while_others_decode() {
    let mut s = Scheduler::new(SchedulerConfig {
        max_step_tokens: 32,
        prefill_tokens_while_decoding: 8,
        num_blocks: 32,
        ..cfg()
    });
    s.enqueue(1, toks(20, 0), b"", INTERACTIVE).unwrap();
    let p = s.plan();
    assert_eq!(
        p.items,
        vec![item(1, 0, 20, true)],
        "alone: the whole budget"
    );
    run(&mut s, &p, 1);
    s.enqueue(2, toks(6, 100), b"", INTERACTIVE).unwrap();
    s.enqueue(3, toks(6, 200), b"", INTERACTIVE).unwrap();
    let p = s.plan();
    assert_eq!(
        p.items,
        vec![
            item(1, 20, 1, true),
            item(2, 0, 6, true),
            item(3, 0, 2, false)
        ]
    );
    run(&mut s, &p, 1);
    let p = s.plan();
    assert_eq!(
        p.items,
        vec![
            item(1, 21, 1, true),
            item(2, 6, 1, true),
            item(3, 2, 4, true)
        ]
    );
}

/// Prompts that arrive together with nothing decoding: the first gets the
/// whole budget, the others share at most `prefill_tokens_while_decoding`
/// behind it, so the first one's token comes after its own work only.
#[test]
fn a_burst_of_prompts_takes_turns_too() {
    let mut s = Scheduler::new(SchedulerConfig {
        max_step_tokens: 32,
        prefill_tokens_while_decoding: 8,
        num_blocks: 32,
        ..cfg()
    });
    for id in 1..=3 {
        s.enqueue(id, toks(12, 100 * id as u32), b"", INTERACTIVE)
            .unwrap();
    }
    let p = s.plan();
    assert_eq!(p.items, vec![item(1, 0, 12, true), item(2, 0, 8, false)]);
    assert_eq!(p.admitted, vec![1, 2], "3 waits: no budget was left for it");
    run(&mut s, &p, 1);
    let p = s.plan();
    assert_eq!(
        p.items,
        vec![
            item(1, 12, 1, true),
            item(2, 8, 4, true),
            item(3, 0, 4, false)
        ]
    );
}

/// With one running slot taken, a batch request that queued first waits
/// for an interactive one that came later; batch requests among
/// themselves keep their order.
#[test]
fn waiting_interactive_requests_are_admitted_before_batch_ones() {
    let mut s = Scheduler::new(SchedulerConfig {
        max_running: 1,
        ..cfg()
    });
    s.enqueue(1, toks(4, 0), b"", BATCH).unwrap();
    let p = s.plan();
    assert_eq!(p.admitted, vec![1]);
    s.enqueue(2, toks(4, 10), b"", BATCH).unwrap();
    s.enqueue(3, toks(4, 20), b"", BATCH).unwrap();
    s.enqueue(4, toks(4, 30), b"", INTERACTIVE).unwrap();
    let mut order = Vec::new();
    for _ in 0..3 {
        let running: Vec<SeqId> = s.running.iter().map(|e| e.id).collect();
        for id in running {
            s.remove(id);
        }
        order.extend(s.plan().admitted);
    }
    assert_eq!(order, vec![4, 2, 3]);
    s.check().unwrap();
}

/// Out of blocks, the batch sequence makes room even when it is the
/// oldest: the younger interactive ones keep running.
#[test]
fn preemption_takes_batch_sequences_before_younger_interactive_ones() {
    let mut s = Scheduler::new(SchedulerConfig {
        num_blocks: 6,
        watermark_blocks: 0,
        ..cfg()
    });
    s.enqueue(2, toks(7, 200), b"", BATCH).unwrap();
    let p = s.plan();
    assert_eq!(p.admitted, vec![2]);
    run(&mut s, &p, 1);
    s.enqueue(1, toks(8, 100), b"", INTERACTIVE).unwrap();
    s.enqueue(3, toks(8, 300), b"", INTERACTIVE).unwrap();
    let p = s.plan();
    assert_eq!(p.admitted, vec![1, 3]);
    run(&mut s, &p, 1);
    // The pool is full and each needs a third block.
    let p = s.plan();
    assert_eq!(p.preempted, vec![2]);
    assert_eq!(p.items.iter().map(|i| i.id).collect::<Vec<_>>(), vec![1, 3]);
    s.check().unwrap();
}

/// A batch sequence in its prompt gets the step's budget only after the
/// interactive ones, even when it was admitted first: a waiting
/// interactive request is admitted and chunked ahead of it.
#[test]
fn interactive_prompts_are_chunked_before_batch_ones() {
    let mut s = Scheduler::new(SchedulerConfig {
        max_step_tokens: 8,
        ..cfg()
    });
    s.enqueue(1, toks(20, 0), b"", BATCH).unwrap();
    let p = s.plan();
    assert_eq!(p.items, vec![item(1, 0, 8, false)]);
    s.enqueue(2, toks(12, 50), b"", INTERACTIVE).unwrap();
    let p = s.plan();
    assert_eq!(p.admitted, vec![2]);
    assert_eq!(p.items, vec![item(2, 0, 8, false)]);
    let p = s.plan();
    assert_eq!(p.items, vec![item(2, 8, 4, true), item(1, 8, 4, false)]);
    s.check().unwrap();
}

#[test]
fn a_sequence_alone_in_a_full_pool_is_exhausted() {
    let mut s = Scheduler::new(SchedulerConfig {
        num_blocks: 2,
        watermark_blocks: 0,
        ..cfg()
    });
    s.enqueue(1, toks(7, 0), b"", INTERACTIVE).unwrap();
    let p = s.plan();
    run(&mut s, &p, 1); // 8 tokens: positions 0..7 fit, token 8's does not
    let p = s.plan();
    assert_eq!(p.items, vec![item(1, 7, 1, true)]);
    run(&mut s, &p, 1);
    let p = s.plan();
    assert_eq!(p.exhausted, vec![1]);
    assert!(p.items.is_empty());
    assert!(s.is_idle());
    s.check().unwrap();
}

#[test]
fn a_shared_prefix_is_computed_once() {
    let mut s = Scheduler::new(cfg());
    let system = toks(12, 500);
    let mut a = system.clone();
    a.extend([1, 2]);
    let mut b = system.clone();
    b.extend([3, 4, 5]);
    s.enqueue(1, a, b"", INTERACTIVE).unwrap();
    let p = s.plan();
    run(&mut s, &p, 9);
    s.remove(1);
    s.enqueue(2, b, b"", INTERACTIVE).unwrap();
    let p = s.plan();
    // The 3 system-prompt blocks are reused; only the user turn is prefilled.
    assert_eq!(p.items, vec![item(2, 12, 3, true)]);
    let c = s.counters();
    assert_eq!((c.queried_tokens, c.hit_tokens), (14 + 15, 12));
    s.check().unwrap();
}

#[test]
fn running_sequences_share_blocks_and_the_last_token_is_always_computed() {
    let mut s = Scheduler::new(cfg());
    s.enqueue(1, toks(8, 0), b"", INTERACTIVE).unwrap();
    let p = s.plan();
    run(&mut s, &p, 1);
    // The same 8 tokens again: at most 7 can come from the cache, so the
    // second block is recomputed, the first is shared.
    s.enqueue(2, toks(8, 0), b"", INTERACTIVE).unwrap();
    let p = s.plan();
    assert_eq!(p.items[1], item(2, 4, 4, true));
    let t1 = s.sequence(1).unwrap().1.to_vec();
    let t2 = s.sequence(2).unwrap().1.to_vec();
    assert_eq!(t1[0], t2[0]);
    assert_ne!(t1[1], t2[1]);
    assert_eq!(s.blocks().used(), 4);
    s.check().unwrap();
}

#[test]
fn salts_isolate_cache_entries() {
    let mut s = Scheduler::new(cfg());
    s.enqueue(1, toks(9, 0), b"tenant-a", INTERACTIVE).unwrap();
    let p = s.plan();
    run(&mut s, &p, 1);
    s.remove(1);
    s.enqueue(2, toks(9, 0), b"tenant-b", INTERACTIVE).unwrap();
    let p = s.plan();
    assert_eq!(p.items, vec![item(2, 0, 9, true)]);
    s.remove(2);
    s.enqueue(3, toks(9, 0), b"tenant-a", INTERACTIVE).unwrap();
    let p = s.plan();
    assert_eq!(p.items, vec![item(3, 8, 1, true)]);
}

#[test]
fn cached_blocks_are_evicted_least_recently_released_first_and_only_when_needed() {
    let mut s = Scheduler::new(SchedulerConfig {
        num_blocks: 4,
        watermark_blocks: 0,
        ..cfg()
    });
    // Two 4-token prefixes, each then released (cached, unheld).
    for (id, base) in [(1, 0), (2, 100)] {
        s.enqueue(id, toks(5, base), b"", INTERACTIVE).unwrap();
        let p = s.plan();
        run(&mut s, &p, 1);
        s.remove(id);
    }
    assert_eq!(s.blocks().cached(), 2);
    assert_eq!(s.blocks().used(), 0);
    // A 12-token prompt needs 3 blocks: 2 free ones and the oldest cached.
    s.enqueue(3, toks(12, 1000), b"", INTERACTIVE).unwrap();
    let p = s.plan();
    run(&mut s, &p, 1);
    assert_eq!(s.blocks().evictions(), 1);
    s.remove(3);
    // The newer prefix survived, the older one is gone.
    s.enqueue(4, toks(5, 100), b"", INTERACTIVE).unwrap();
    assert_eq!(s.plan().items, vec![item(4, 4, 1, true)]);
    s.remove(4);
    s.enqueue(5, toks(5, 0), b"", INTERACTIVE).unwrap();
    assert_eq!(s.plan().items, vec![item(5, 0, 5, true)]);
}

#[test]
fn a_discarded_step_is_not_cached() {
    let mut s = Scheduler::new(cfg());
    s.enqueue(1, toks(9, 0), b"", INTERACTIVE).unwrap();
    s.plan();
    assert!(s.discard(1));
    assert_eq!(s.blocks().cached(), 0);
    assert_eq!(s.blocks().used(), 0);
}

#[test]
fn a_preempted_sequence_reuses_its_cached_blocks_when_they_survive() {
    let mut s = Scheduler::new(SchedulerConfig {
        num_blocks: 5,
        watermark_blocks: 0,
        ..cfg()
    });
    s.enqueue(1, toks(8, 0), b"", INTERACTIVE).unwrap(); // 2 blocks
    s.enqueue(2, toks(8, 100), b"", INTERACTIVE).unwrap(); // 2 blocks
    let p = s.plan();
    run(&mut s, &p, 1);
    // Sequence 1 takes the last free block; sequence 2 must make room and,
    // being the youngest, preempts itself. Its two full blocks stay cached.
    let p = s.plan();
    assert_eq!(p.preempted, vec![2]);
    run(&mut s, &p, 1);
    s.remove(1);
    let p = s.plan();
    assert_eq!(p.admitted, vec![2]);
    assert_eq!(p.items, vec![item(2, 8, 1, true)]);
    s.check().unwrap();
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// A request of `len` tokens drawn from one of a few shared prefixes.
        Enqueue { len: usize, prefix: u32, salt: u8 },
        /// Plan a step and run it, sampling `token` for each sequence that wants one.
        Step { token: u32 },
        /// The `nth` known sequence finishes or is cancelled.
        Remove { nth: usize },
        /// The `nth` known sequence's step failed.
        Discard { nth: usize },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1usize..40, 0u32..3, 0u8..2).prop_map(|(len, prefix, salt)| Op::Enqueue {
                len,
                prefix,
                salt
            }),
            (0u32..5).prop_map(|token| Op::Step { token }),
            (0usize..8).prop_map(|nth| Op::Remove { nth }),
            (0usize..8).prop_map(|nth| Op::Discard { nth }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// Whatever happens, the pool stays consistent, every planned item
        /// fits its table, and once every sequence is gone no block is held.
        #[test]
        fn block_accounting_never_leaks(ops in proptest::collection::vec(op(), 1..120),
                                        num_blocks in 4usize..24,
                                        max_step_tokens in 1usize..20) {
            let cfg = SchedulerConfig {
                max_running: 4,
                max_waiting: 6,
                max_step_tokens,
                prefill_tokens_while_decoding: max_step_tokens / 2,
                block_size: 4,
                num_blocks,
                watermark_blocks: 1,
                context_length: 60,
            };
            let mut s = Scheduler::new(cfg);
            let mut known: Vec<SeqId> = Vec::new();
            let mut next_id = 1;
            for op in ops {
                match op {
                    Op::Enqueue { len, prefix, salt } => {
                        let tokens: Vec<u32> = (0..len as u32).map(|i| prefix * 1000 + i).collect();
                        // Both classes, so batch-first preemption and
                        // interactive-first admission are exercised too.
                        let class = if (len + prefix as usize).is_multiple_of(3) { BATCH } else { INTERACTIVE };
                        if s.enqueue(next_id, tokens, &[salt], class).is_ok() {
                            known.push(next_id);
                        }
                        next_id += 1;
                    }
                    Op::Step { token } => {
                        let plan = s.plan();
                        for id in &plan.exhausted {
                            known.retain(|k| k != id);
                            prop_assert!(s.sequence(*id).is_none());
                        }
                        for item in &plan.items {
                            let (tokens, table) = s.sequence(item.id).expect("planned sequences run");
                            prop_assert!(item.len >= 1);
                            prop_assert!(item.start + item.len <= tokens.len());
                            prop_assert!(table.len() * 4 >= item.start + item.len);
                        }
                        for item in plan.items.iter().filter(|i| i.want_logits) {
                            let len = s.sequence(item.id).map_or(0, |(t, _)| t.len());
                            // Sequences that reach the context end; the engine finishes them.
                            if len + 1 >= 60 {
                                s.remove(item.id);
                                known.retain(|k| *k != item.id);
                            } else {
                                prop_assert!(s.append_token(item.id, token));
                            }
                        }
                    }
                    Op::Remove { nth } if !known.is_empty() => {
                        let id = known.remove(nth % known.len());
                        prop_assert!(s.remove(id));
                    }
                    Op::Discard { nth } if !known.is_empty() => {
                        let id = known.remove(nth % known.len());
                        prop_assert!(s.discard(id));
                    }
                    _ => {}
                }
                prop_assert_eq!(s.check(), Ok(()));
                prop_assert_eq!(s.waiting() + s.running(), known.len());
            }
            for id in known {
                prop_assert!(s.remove(id));
            }
            prop_assert!(s.is_idle());
            prop_assert_eq!(s.blocks().used(), 0);
            prop_assert_eq!(s.blocks().available(), s.blocks().total());
            prop_assert_eq!(s.check(), Ok(()));
        }
    }
}
