//! The worker that serves one loaded model: callers queue checked requests
//! in the batcher (refused at once when it is full), and one thread takes
//! batches from it, runs them and answers each caller. A caller that stops
//! waiting leaves the queue before its batch runs.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use protocol::tensor::NamedTensor;
use tokio::sync::oneshot;

use super::batcher::{BatchPolicy, Batcher};
use super::session::OnnxModel;
use protocol::tensor::Signature;

use super::signature::check_inputs;
use super::{stack, OnnxError};

type Answer = Result<Vec<NamedTensor>, OnnxError>;

struct Job {
    inputs: Vec<NamedTensor>,
    rows: usize,
    reply: oneshot::Sender<Answer>,
}

struct Queue {
    batcher: Batcher<Job>,
    closed: bool,
    /// Fault hook for tests: the worker thread panics when it next wakes.
    panic_next: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Counts of what the worker has run, for tests and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ServerStats {
    /// Runs of the model.
    pub runs: u64,
    /// Requests answered by those runs.
    pub requests: u64,
}

/// A model served by its own worker thread; dropping it stops the worker
/// once the queued requests are answered.
pub struct OnnxServer {
    shared: Arc<Shared>,
    signature: Signature,
    stats: Arc<Mutex<ServerStats>>,
}

impl OnnxServer {
    /// Starts the worker thread for `model`. `on_exit` is called when the
    /// thread ends: with `None` after the server was dropped and its queue
    /// answered, with the panic message if it panicked (every waiting
    /// caller then gets [`OnnxError::Stopped`]).
    pub fn start(
        model: OnnxModel,
        policy: BatchPolicy,
        on_exit: impl FnOnce(Option<String>) + Send + 'static,
    ) -> std::io::Result<Self> {
        let signature = model.signature().clone();
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                batcher: Batcher::new(policy),
                closed: false,
                panic_next: false,
            }),
            wake: Condvar::new(),
        });
        let stats = Arc::new(Mutex::new(ServerStats::default()));
        let worker = Worker {
            shared: shared.clone(),
            stats: stats.clone(),
            batchable: signature.batchable(),
            input_names: signature.inputs.iter().map(|s| s.name.clone()).collect(),
            model,
        };
        std::thread::Builder::new()
            .name("onnx-worker".into())
            .spawn(move || {
                let shared = worker.shared.clone();
                let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| worker.run()));
                let reason = outcome.err().map(|p| crate::panic_message(p.as_ref()));
                if reason.is_some() {
                    // Nobody will take these: fail them rather than leave
                    // their callers waiting.
                    let mut q = shared.lock();
                    q.closed = true;
                    q.batcher.retain(|_| false);
                }
                on_exit(reason);
            })?;
        Ok(OnnxServer {
            shared,
            signature,
            stats,
        })
    }

    /// What the model takes and returns.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Requests waiting for their batch.
    pub fn queued(&self) -> usize {
        self.shared.lock().batcher.len()
    }

    /// Fault hook for tests: the worker thread panics when it next wakes.
    pub fn inject_panic(&self) {
        self.shared.lock().panic_next = true;
        self.shared.wake.notify_all();
    }

    /// What the worker has run so far.
    pub fn stats(&self) -> ServerStats {
        self.stats.lock().map(|s| *s).unwrap_or_default()
    }

    /// Checks `inputs`, queues them and waits for the answer. Dropping the
    /// future withdraws the request if its batch has not started.
    pub async fn infer(&self, inputs: Vec<NamedTensor>) -> Answer {
        check_inputs(&self.signature, &inputs)?;
        let rows = if self.signature.batchable() {
            stack::rows_of(&inputs)
        } else {
            1
        };
        let (reply, answer) = oneshot::channel();
        {
            let mut q = self.shared.lock();
            if q.closed {
                return Err(OnnxError::Stopped);
            }
            // Callers that gave up hold no place in the queue.
            q.batcher.retain(|job| !job.reply.is_closed());
            let job = Job {
                inputs,
                rows,
                reply,
            };
            q.batcher
                .push(job, rows, Instant::now())
                .map_err(|(_, why)| OnnxError::Refused(why))?;
        }
        self.shared.wake.notify_one();
        answer.await.unwrap_or(Err(OnnxError::Stopped))
    }
}

impl Drop for OnnxServer {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_all();
    }
}

struct Worker {
    shared: Arc<Shared>,
    stats: Arc<Mutex<ServerStats>>,
    batchable: bool,
    input_names: Vec<String>,
    model: OnnxModel,
}

impl Worker {
    fn run(mut self) {
        while let Some(batch) = self.next_batch() {
            self.serve(batch);
        }
    }

    /// Waits until a batch is due; None once the server is dropped and the
    /// queue is empty.
    fn next_batch(&self) -> Option<Vec<Job>> {
        let mut q = self.shared.lock();
        loop {
            if q.panic_next {
                drop(q);
                panic!("injected fault: the ONNX worker thread panicked");
            }
            q.batcher.retain(|job| !job.reply.is_closed());
            let now = Instant::now();
            if q.batcher.ready(now) || (q.closed && !q.batcher.is_empty()) {
                return Some(q.batcher.take_batch());
            }
            if q.closed {
                return None;
            }
            q = match q.batcher.deadline() {
                Some(due) => {
                    self.shared
                        .wake
                        .wait_timeout(q, due.saturating_duration_since(now))
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .0
                }
                None => self
                    .shared
                    .wake
                    .wait(q)
                    .unwrap_or_else(|poisoned| poisoned.into_inner()),
            };
        }
    }

    fn serve(&mut self, batch: Vec<Job>) {
        if batch.len() == 1 || !self.batchable {
            for job in batch {
                let answer = self.model.run(&job.inputs);
                self.count(1);
                let _ = job.reply.send(answer);
            }
            return;
        }
        let inputs: Vec<&[NamedTensor]> = batch.iter().map(|j| j.inputs.as_slice()).collect();
        let groups = stack::compatible_groups(&inputs);
        let mut jobs: Vec<Option<Job>> = batch.into_iter().map(Some).collect();
        for group in groups {
            let group: Vec<Job> = group.iter().filter_map(|&i| jobs[i].take()).collect();
            if group.len() == 1 {
                for job in group {
                    let answer = self.model.run(&job.inputs);
                    self.count(1);
                    let _ = job.reply.send(answer);
                }
                continue;
            }
            let answers = self.run_stacked(&group);
            self.count(group.len() as u64);
            match answers {
                Ok(answers) => {
                    for (job, answer) in group.into_iter().zip(answers) {
                        let _ = job.reply.send(Ok(answer));
                    }
                }
                Err(e) => {
                    for job in group {
                        let _ = job.reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    fn run_stacked(&mut self, batch: &[Job]) -> Result<Vec<Vec<NamedTensor>>, OnnxError> {
        let inputs: Vec<&[NamedTensor]> = batch.iter().map(|j| j.inputs.as_slice()).collect();
        let stacked = stack::stack(&self.input_names, &inputs)?;
        let outputs = self.model.run(&stacked)?;
        let rows: Vec<usize> = batch.iter().map(|j| j.rows).collect();
        Ok(stack::split(outputs, &rows)?)
    }

    fn count(&self, requests: u64) {
        if let Ok(mut s) = self.stats.lock() {
            s.runs += 1;
            s.requests += requests;
        }
    }
}
