//! A small persistent thread pool for matmuls.
//!
//! `threads - 1` workers wait for jobs; the calling thread always runs part 0
//! itself. A job's parts are fixed in advance (the caller decides the static
//! split), but which thread runs a part is decided by claiming its bit in an
//! epoch-tagged mask: worker `i` claims part `i` when it wakes, and the
//! caller, after its own part, claims any part whose worker has not started
//! yet (e.g. because it was descheduled). A worker only touches the job after
//! a successful claim, so it can never see a finished job.
//!
//! Waiting is a bounded spin followed by `park` (workers wait for the epoch to
//! change; the caller waits for the pending count to reach zero and is
//! unparked by the last worker). With one thread there are no workers and no
//! synchronisation at all.

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

/// How long a worker keeps polling for the next job before parking. Decode
/// issues matmuls back to back with short gaps (norms, attention), so a short
/// spin avoids a futex wake per matmul.
const WORKER_SPIN: Duration = Duration::from_micros(200);
/// How long the caller polls for its workers before parking.
const CALLER_SPIN: Duration = Duration::from_micros(200);
/// Parts per job are limited by the claim mask.
const MAX_PARTS: usize = 32;

/// The job a worker runs: a lifetime-erased pointer to the caller's closure
/// plus the caller's handle for the final `unpark`.
struct Job {
    f: *const (dyn Fn(usize) + Sync),
    caller: Thread,
    panicked: AtomicBool,
}

struct Shared {
    /// `epoch << 32 | claimed-parts mask`. A new epoch publishes a new job.
    claims: AtomicU64,
    /// The current job; valid while some claimed part is unfinished.
    job: AtomicPtr<Job>,
    /// Parts of the current job not finished yet.
    pending: AtomicUsize,
    shutdown: AtomicBool,
}

impl Shared {
    /// Claims part `p` of job `epoch`; false if it is taken or the job is over.
    fn try_claim(&self, epoch: u64, p: usize) -> bool {
        let bit = 1u64 << p;
        let mut c = self.claims.load(Ordering::Acquire);
        loop {
            if c >> 32 != epoch || c & bit != 0 {
                return false;
            }
            match self
                .claims
                .compare_exchange_weak(c, c | bit, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(now) => c = now,
            }
        }
    }
}

/// A pool of `threads` compute threads in total, the caller included.
pub struct ComputePool {
    threads: usize,
    shared: Option<Arc<Shared>>,
    workers: Vec<Thread>,
    handles: Vec<JoinHandle<()>>,
    /// Serialises concurrent callers (one job at a time).
    dispatch: Mutex<()>,
}

impl std::fmt::Debug for ComputePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComputePool")
            .field("threads", &self.threads)
            .finish()
    }
}

impl ComputePool {
    /// A pool of `threads` threads in total (0 is treated as 1, more than 32
    /// as 32); spawns `threads - 1` workers.
    pub fn new(threads: usize) -> Self {
        let threads = threads.clamp(1, MAX_PARTS);
        if threads == 1 {
            return Self {
                threads,
                shared: None,
                workers: Vec::new(),
                handles: Vec::new(),
                dispatch: Mutex::new(()),
            };
        }
        let shared = Arc::new(Shared {
            claims: AtomicU64::new(u64::from(u32::MAX)),
            job: AtomicPtr::new(std::ptr::null_mut()),
            pending: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
        });
        let mut handles = Vec::with_capacity(threads - 1);
        for i in 1..threads {
            let shared = Arc::clone(&shared);
            let h = thread::Builder::new()
                .name(format!("inferno-kernel-{i}"))
                .spawn(move || worker(i, &shared));
            match h {
                Ok(h) => handles.push(h),
                Err(e) => {
                    tracing::warn!("could not spawn kernel worker {i}: {e}; using {i} threads");
                    break;
                }
            }
        }
        let workers = handles.iter().map(|h| h.thread().clone()).collect();
        Self {
            threads: handles.len() + 1,
            shared: Some(shared),
            workers,
            handles,
            dispatch: Mutex::new(()),
        }
    }

    /// Threads in total, the caller included.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// A process-wide pool sized to the available parallelism, created on
    /// first use.
    pub fn global() -> &'static ComputePool {
        static POOL: OnceLock<ComputePool> = OnceLock::new();
        POOL.get_or_init(|| {
            ComputePool::new(thread::available_parallelism().map_or(1, |n| n.get()))
        })
    }

    /// Runs `f(0), …, f(parts - 1)` (at most `threads` parts), each exactly
    /// once, and returns when all have finished. The caller runs part 0 and
    /// any part no worker has started; worker `i` otherwise runs part `i`.
    ///
    /// # Panics
    /// If `parts > threads`, or (after all parts finished) if any part
    /// panicked; a panic of the caller's own part is resumed as is.
    pub fn run(&self, parts: usize, f: &(dyn Fn(usize) + Sync)) {
        assert!(
            parts <= self.threads,
            "{parts} parts on {} threads",
            self.threads
        );
        let shared = match &self.shared {
            Some(s) if parts > 1 => s,
            _ => {
                for p in 0..parts {
                    f(p);
                }
                return;
            }
        };
        let _serial = self.dispatch.lock().unwrap_or_else(PoisonError::into_inner);
        // SAFETY: erases the closure's lifetime. A worker dereferences it only
        // after claiming an unfinished part, and this function returns only
        // once every part has finished (`pending == 0`), so the closure
        // outlives every use.
        let f_static: *const (dyn Fn(usize) + Sync) = unsafe {
            std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(f)
        };
        let job = Job {
            f: f_static,
            caller: thread::current(),
            panicked: AtomicBool::new(false),
        };
        shared
            .job
            .store((&job as *const Job).cast_mut(), Ordering::Relaxed);
        shared.pending.store(parts, Ordering::Relaxed);
        let epoch = ((shared.claims.load(Ordering::Relaxed) >> 32) + 1) & u64::from(u32::MAX);
        // Part 0 is ours; parts past `parts` are pre-claimed so no worker
        // takes them.
        let unused = !((1u64 << parts) - 1) & u64::from(u32::MAX);
        shared
            .claims
            .store((epoch << 32) | unused | 1, Ordering::Release);
        for w in &self.workers[..parts - 1] {
            w.unpark();
        }
        let mut first_panic: Option<Box<dyn Any + Send>> = None;
        let mut part = Some(0);
        while let Some(p) = part {
            if let Err(e) = panic::catch_unwind(AssertUnwindSafe(|| f(p))) {
                first_panic.get_or_insert(e);
            }
            shared.pending.fetch_sub(1, Ordering::AcqRel);
            part = (1..parts).rev().find(|&q| shared.try_claim(epoch, q));
        }
        wait_for(&shared.pending);
        if let Some(e) = first_panic {
            panic::resume_unwind(e);
        }
        if job.panicked.load(Ordering::Relaxed) {
            panic!("a compute pool worker panicked");
        }
    }
}

/// Waits until `pending` is zero: a bounded spin, then `park` (the last
/// worker unparks us).
fn wait_for(pending: &AtomicUsize) {
    let start = Instant::now();
    let mut n = 0u32;
    while pending.load(Ordering::Acquire) != 0 {
        n = n.wrapping_add(1);
        if n.is_multiple_of(64) && start.elapsed() > CALLER_SPIN {
            while pending.load(Ordering::Acquire) != 0 {
                thread::park();
            }
            return;
        }
        std::hint::spin_loop();
    }
}

fn worker(index: usize, shared: &Shared) {
    let mut seen = shared.claims.load(Ordering::Acquire) >> 32;
    loop {
        // Wait for a new epoch: spin a little, then park.
        let start = Instant::now();
        let mut n = 0u32;
        let epoch = loop {
            if shared.shutdown.load(Ordering::Acquire) {
                return;
            }
            let e = shared.claims.load(Ordering::Acquire) >> 32;
            if e != seen {
                break e;
            }
            n = n.wrapping_add(1);
            if n.is_multiple_of(64) && start.elapsed() > WORKER_SPIN {
                thread::park();
            } else {
                std::hint::spin_loop();
            }
        };
        seen = epoch;
        if !shared.try_claim(epoch, index) {
            continue; // not ours, or the caller already took it
        }
        // SAFETY: we hold an unfinished part of job `epoch`, so its caller is
        // still inside `run` (waiting for `pending` to reach zero) and keeps
        // the `Job` and the closure alive; the claim's Acquire pairs with the
        // caller's Release publication of `job`.
        let job = unsafe { &*shared.job.load(Ordering::Relaxed) };
        let caller = job.caller.clone();
        // SAFETY: as above; the closure is alive and `Sync`.
        let f = unsafe { &*job.f };
        if panic::catch_unwind(AssertUnwindSafe(|| f(index))).is_err() {
            job.panicked.store(true, Ordering::Relaxed);
        }
        // After this decrement the job may be gone; only `caller` is used.
        if shared.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            caller.unpark();
        }
    }
}

impl Drop for ComputePool {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            shared.shutdown.store(true, Ordering::Release);
            for w in &self.workers {
                w.unpark();
            }
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn runs_every_part_once() {
        for threads in 1..=4 {
            let pool = ComputePool::new(threads);
            assert_eq!(pool.threads(), threads);
            for parts in 1..=threads {
                let hits: Vec<AtomicUsize> = (0..parts).map(|_| AtomicUsize::new(0)).collect();
                for _ in 0..200 {
                    pool.run(parts, &|p| {
                        hits[p].fetch_add(1, Ordering::Relaxed);
                    });
                }
                for h in &hits {
                    assert_eq!(h.load(Ordering::Relaxed), 200);
                }
            }
        }
    }

    #[test]
    fn survives_idle_gaps_and_worker_panics() {
        let pool = ComputePool::new(3);
        let n = AtomicUsize::new(0);
        pool.run(3, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        std::thread::sleep(Duration::from_millis(5)); // workers park
        pool.run(3, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 6);
        let r = panic::catch_unwind(AssertUnwindSafe(|| {
            pool.run(3, &|p| {
                if p == 2 {
                    panic!("boom");
                }
            })
        }));
        assert!(r.is_err());
        pool.run(3, &|_| {
            n.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(n.load(Ordering::Relaxed), 9);
    }

    #[test]
    fn concurrent_callers_are_serialised() {
        let pool = Arc::new(ComputePool::new(2));
        let total = Arc::new(AtomicUsize::new(0));
        let hs: Vec<_> = (0..3)
            .map(|_| {
                let (pool, total) = (Arc::clone(&pool), Arc::clone(&total));
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        pool.run(2, &|_| {
                            total.fetch_add(1, Ordering::Relaxed);
                        });
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(total.load(Ordering::Relaxed), 600);
    }
}
