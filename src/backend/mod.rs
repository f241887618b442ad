//! The compute side: one dedicated OS thread per loaded model, fed by a bounded queue of jobs,
//! each carrying its reply channel. The thread forms batches across requests (policy in
//! `batching`), drops jobs whose client left or whose deadline passed, runs one encoder pass
//! for the whole batch, and hands each request its own results. Tokio never runs a forward.
//! A supervisor thread per model restarts the compute thread when it panics: the batch it was
//! computing fails (INTERNAL), the jobs still queued wait for the new thread.

mod batch;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device;
pub mod engine;
pub mod gpu_plan;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::batching::{admit, BatchFill, BatchPolicy, QueueState, Refusal};
use crate::error::SampError;
use crate::model::heads::tag::Aggregation;
use crate::model::{Classification, EmbedOptions, Embedding, Model, Tagging};
use crate::tokenize::Encoded;
use engine::Engine;

/// What to do with a job's encoder states.
#[derive(Debug, Clone)]
pub enum HeadWork {
    Embed(EmbedOptions),
    Classify,
    /// The original texts, for entity offsets.
    Tag(Vec<String>, Aggregation),
}

#[derive(Debug, Clone)]
pub enum Output {
    Embed(Vec<Embedding>),
    Classify(Vec<Classification>),
    Tag(Vec<Tagging>),
}

/// A finished job, with where its time went.
#[derive(Debug)]
pub struct FinishedJob {
    pub output: Output,
    pub queue: Duration,
    pub inference: Duration,
    pub batch_inputs: usize,
    /// Tokens in that pass (all real: samp never pads, so there is no padding ratio to report).
    pub batch_tokens: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("deadline passed while queued")]
    DeadlineExceeded,
    #[error(transparent)]
    Model(#[from] SampError),
    /// The encoder pass of the job's batch failed (shared by every job of that pass).
    #[error("encoder pass failed: {0}")]
    Pass(Arc<SampError>),
}

pub struct Job {
    pub encoded: Vec<Encoded>,
    pub work: HeadWork,
    pub deadline: Option<Instant>,
    pub reply: oneshot::Sender<Result<FinishedJob, JobError>>,
    enqueued: Instant,
    /// Its tokens still counted in the queue's budget (released exactly once, by whoever
    /// gets there first: the compute thread pass by pass, or the caller giving up).
    counted: Arc<AtomicUsize>,
}

impl Job {
    pub fn new(
        encoded: Vec<Encoded>,
        work: HeadWork,
        deadline: Option<Instant>,
    ) -> (Self, oneshot::Receiver<Result<FinishedJob, JobError>>) {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            encoded,
            work,
            deadline,
            reply,
            enqueued: Instant::now(),
            counted: Arc::new(AtomicUsize::new(0)),
        };
        (job, rx)
    }

    fn tokens(&self) -> usize {
        self.encoded.iter().map(Encoded::len).sum()
    }
}

/// A request refused at the door: the caller answers RESOURCE_EXHAUSTED (or UNAVAILABLE when
/// the worker is gone).
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("model {model}: {reason}")]
    Overloaded { model: String, reason: Refusal },
    #[error("model {model} has no running compute thread")]
    NoWorker { model: String },
}

/// Counters the worker keeps for metrics and tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub queued: AtomicUsize,
    /// Tokens admitted and not yet computed (the batch now computing included).
    pub queued_tokens: AtomicUsize,
    /// Measured tokens per second (f64 bits; 0 while unmeasured).
    rate: AtomicU64,
    pub batches: AtomicUsize,
    pub dropped_cancelled: AtomicUsize,
    pub dropped_deadline: AtomicUsize,
    /// Compute threads restarted after a panic.
    pub restarts: AtomicUsize,
    /// Whether a compute thread is running now (false between a panic and its restart).
    running: AtomicBool,
}

impl Stats {
    pub fn tokens_per_second(&self) -> Option<f64> {
        let r = f64::from_bits(self.rate.load(Ordering::Relaxed));
        (r > 0.0).then_some(r)
    }

    fn record_pass(&self, tokens: usize, took: Duration) {
        if let Some(r) = crate::batching::update_rate(self.tokens_per_second(), tokens, took) {
            self.rate.store(r.to_bits(), Ordering::Relaxed);
        }
    }
}

/// A variant's score on its evaluation data, as `samp quantize` measured it.
#[derive(Debug, Clone, PartialEq)]
pub struct Quality {
    pub metric: String,
    pub value: f64,
    /// Below the float model's score on the same data.
    pub drop: f64,
}

/// Handle to a model's compute thread. Dropping every handle closes the queue; the thread
/// finishes what was admitted, then exits.
pub struct ModelWorker {
    pub model: Arc<Model>,
    pub variant: String,
    /// The variant's measured quality from its quantization report, when it has one.
    pub quality: Option<Quality>,
    pub stats: Arc<Stats>,
    policy: BatchPolicy,
    tx: SyncSender<Job>,
    /// The thread that keeps a compute thread running until the queue closes.
    supervisor: Option<std::thread::JoinHandle<()>>,
    /// Where its engine runs: `cpu`, or e.g. `cuda:0 (NVIDIA H200, sm_90)`.
    pub device: String,
}

/// What the compute thread does with one batch (the model's passes, or a test's stand-in).
pub(crate) type RunBatch = dyn Fn(&Model, Vec<Job>, &BatchPolicy, &Stats) + Send + Sync;

/// The pause before restarting a compute thread that panicked; it doubles while restarts follow
/// each other within [`STEADY`], up to [`MAX_RESTART_PAUSE`].
const RESTART_PAUSE: Duration = Duration::from_millis(200);
const MAX_RESTART_PAUSE: Duration = Duration::from_secs(5);
/// A compute thread that ran this long before panicking restarts after the shortest pause.
const STEADY: Duration = Duration::from_secs(10);

impl ModelWorker {
    /// A worker whose passes run on the model's own CPU encoder.
    pub fn spawn(model: Arc<Model>, variant: &str, policy: BatchPolicy) -> std::io::Result<Self> {
        let engine = Arc::new(engine::CpuEngine(model.clone()));
        Self::spawn_on(model, engine, variant, policy)
    }

    /// A worker whose passes run on `engine` (placed from `model`); the model's tokenizer and
    /// heads do the rest.
    pub fn spawn_on(
        model: Arc<Model>,
        engine: Arc<dyn Engine>,
        variant: &str,
        policy: BatchPolicy,
    ) -> std::io::Result<Self> {
        let device = engine.device();
        let run = Box::new(move |m: &Model, jobs, p: &BatchPolicy, st: &Stats| {
            batch::run_batch_on(m, &*engine, jobs, p, st)
        });
        let mut w = Self::spawn_with(model, variant, policy, run)?;
        w.device = device;
        Ok(w)
    }

    /// [`spawn`](Self::spawn) with a stand-in for the model's batch computation (tests).
    pub(crate) fn spawn_with(
        model: Arc<Model>,
        variant: &str,
        policy: BatchPolicy,
        run: Box<RunBatch>,
    ) -> std::io::Result<Self> {
        // The channel only carries jobs that `admit` let in: its bound is a backstop.
        let (tx, rx) = mpsc::sync_channel::<Job>(policy.queue_capacity);
        let stats = Arc::new(Stats::default());
        let compute = Arc::new(Compute {
            model: model.clone(),
            rx: Mutex::new(rx),
            policy,
            stats: stats.clone(),
            run,
        });
        let first = compute.start()?;
        let supervisor = std::thread::Builder::new()
            .name(format!("samp-supervise-{}", model.name))
            .spawn(move || compute.supervise(first))?;
        Ok(ModelWorker {
            model,
            variant: variant.to_string(),
            quality: None,
            stats,
            policy,
            tx,
            supervisor: Some(supervisor),
            device: "cpu".into(),
        })
    }

    /// The queue as a request would find it now.
    pub fn queue_state(&self) -> QueueState {
        QueueState {
            jobs: self.stats.queued.load(Ordering::Relaxed),
            tokens: self.stats.queued_tokens.load(Ordering::Relaxed),
            tokens_per_second: self.stats.tokens_per_second(),
        }
    }

    /// Seed the throughput estimate (from the warm-up) before real traffic measures it.
    pub fn seed_rate(&self, tokens: usize, took: Duration) {
        if self.stats.tokens_per_second().is_none() {
            self.stats.record_pass(tokens, took);
        }
    }

    /// Take a place in the queue for a request of about `tokens` (an estimate: it is not
    /// tokenized yet), or refuse it at once, before any work is spent on it.
    pub fn reserve(&self, tokens: usize, left: Option<Duration>) -> Result<Ticket, Refused> {
        // Between a panic and the restart the queue still takes jobs: the new thread runs them.
        if !self.supervised() {
            return Err(Refused::NoWorker {
                model: self.model.name.clone(),
            });
        }
        // Count first, then check against what was there before us, so that concurrent
        // callers cannot all squeeze into the last slot; the ticket undoes it on refusal.
        let jobs = self.stats.queued.fetch_add(1, Ordering::SeqCst);
        let queued = self.stats.queued_tokens.fetch_add(tokens, Ordering::SeqCst);
        let ticket = Ticket {
            counted: Arc::new(AtomicUsize::new(tokens)),
            stats: self.stats.clone(),
            sent: false,
        };
        let q = QueueState {
            jobs,
            tokens: queued,
            tokens_per_second: self.stats.tokens_per_second(),
        };
        admit(&q, tokens, left, &self.policy).map_err(|reason| self.refused(reason))?;
        Ok(ticket)
    }

    /// Send a job on its reserved place, its tokens now counted exactly. Keep the ticket while
    /// waiting for the answer: dropping it releases what is still counted.
    pub fn send(&self, ticket: &mut Ticket, mut job: Job) -> Result<(), Refused> {
        let exact = job.tokens();
        self.stats.queued_tokens.fetch_add(exact, Ordering::SeqCst);
        let had = ticket.counted.swap(exact, Ordering::SeqCst);
        self.stats.queued_tokens.fetch_sub(had, Ordering::SeqCst);
        job.counted = ticket.counted.clone();
        match self.tx.try_send(job) {
            Ok(()) => {
                ticket.sent = true;
                Ok(())
            }
            Err(TrySendError::Full(_)) => Err(self.refused(Refusal::QueueFull {
                capacity: self.policy.queue_capacity,
            })),
            Err(TrySendError::Disconnected(_)) => Err(Refused::NoWorker {
                model: self.model.name.clone(),
            }),
        }
    }

    /// Reserve and send in one step, for a job already tokenized whose caller does not wait
    /// on a ticket: its tokens stay counted until the compute thread is done with it.
    pub fn submit(&self, job: Job) -> Result<(), Refused> {
        let left = job
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()));
        let mut ticket = self.reserve(job.tokens(), left)?;
        self.send(&mut ticket, job)?;
        ticket.counted = Arc::new(AtomicUsize::new(0));
        Ok(())
    }

    fn refused(&self, reason: Refusal) -> Refused {
        Refused::Overloaded {
            model: self.model.name.clone(),
            reason,
        }
    }

    /// Whether a compute thread is running now: false while one that panicked waits for its
    /// restart, and once the queue has closed.
    pub fn alive(&self) -> bool {
        self.supervised() && self.stats.running.load(Ordering::SeqCst)
    }

    /// Whether the supervisor still keeps a compute thread going (it stops when the queue closes).
    fn supervised(&self) -> bool {
        self.supervisor.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Close the queue and wait until every admitted job has been answered.
    pub fn drain(mut self) {
        let supervisor = self.supervisor.take();
        drop(self);
        if let Some(t) = supervisor {
            let _ = t.join();
        }
    }
}

/// A place in a model's queue. Dropping it (the request was refused, failed before it was
/// sent, or its caller gave up) releases the tokens still counted for it at once, so a client
/// that leaves frees the budget without waiting for the compute thread to notice.
pub struct Ticket {
    counted: Arc<AtomicUsize>,
    stats: Arc<Stats>,
    sent: bool,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        release(&self.counted, &self.stats, usize::MAX);
        if !self.sent {
            self.stats.queued.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Release up to `n` of the tokens `counted` holds from the queue's budget, exactly once.
fn release(counted: &AtomicUsize, stats: &Stats, n: usize) {
    let mut cur = counted.load(Ordering::SeqCst);
    loop {
        let take = cur.min(n);
        if take == 0 {
            return;
        }
        match counted.compare_exchange(cur, cur - take, Ordering::SeqCst, Ordering::SeqCst) {
            Ok(_) => {
                stats.queued_tokens.fetch_sub(take, Ordering::SeqCst);
                return;
            }
            Err(now) => cur = now,
        }
    }
}

/// What a model's compute threads share: each in turn takes the queue's receiving end.
struct Compute {
    model: Arc<Model>,
    rx: Mutex<mpsc::Receiver<Job>>,
    policy: BatchPolicy,
    stats: Arc<Stats>,
    run: Box<RunBatch>,
}

impl Compute {
    fn start(self: &Arc<Self>) -> std::io::Result<std::thread::JoinHandle<()>> {
        let c = self.clone();
        let thread = std::thread::Builder::new()
            .name(format!("samp-compute-{}", self.model.name))
            .spawn(move || {
                // A thread that panicked poisoned the lock while unwinding; the receiver is fine.
                let rx = c.rx.lock().unwrap_or_else(PoisonError::into_inner);
                compute_loop(&c.model, &rx, &c.policy, &c.stats, &*c.run)
            })?;
        self.stats.running.store(true, Ordering::SeqCst);
        Ok(thread)
    }

    /// Wait on the compute thread; when it panicked, start a new one after a pause, until the
    /// queue closes. A panic fails the batch being computed: its jobs' reply senders drop while
    /// unwinding, which their callers answer INTERNAL. Jobs still queued wait for the new thread.
    fn supervise(self: Arc<Self>, mut thread: std::thread::JoinHandle<()>) {
        let mut pause = RESTART_PAUSE;
        let mut started = Instant::now();
        loop {
            let ended = thread.join();
            self.stats.running.store(false, Ordering::SeqCst);
            if ended.is_ok() {
                return; // the queue closed and every admitted job was answered
            }
            self.stats.restarts.fetch_add(1, Ordering::SeqCst);
            metrics::counter!(crate::metrics::WORKER_RESTARTS_TOTAL, "model" => self.model.name.clone())
                .increment(1);
            if started.elapsed() >= STEADY {
                pause = RESTART_PAUSE;
            }
            tracing::error!(
                model = %self.model.name,
                pause_ms = pause.as_millis() as u64,
                "the compute thread panicked; its batch failed, restarting it"
            );
            thread = loop {
                std::thread::sleep(pause);
                pause = (pause * 2).min(MAX_RESTART_PAUSE);
                match self.start() {
                    Ok(t) => break t,
                    Err(e) => {
                        tracing::error!(model = %self.model.name, error = %e, "cannot start a compute thread")
                    }
                }
            };
            started = Instant::now();
        }
    }
}

/// Releases what a batch's jobs still count in the queue's budget, also when the batch panics.
struct Release<'a> {
    counters: Vec<Arc<AtomicUsize>>,
    stats: &'a Stats,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        for c in &self.counters {
            release(c, self.stats, usize::MAX);
        }
    }
}

fn compute_loop(
    model: &Model,
    rx: &mpsc::Receiver<Job>,
    policy: &BatchPolicy,
    stats: &Stats,
    run: &RunBatch,
) {
    let mut carry: Option<Job> = None;
    loop {
        let first = match carry.take() {
            Some(j) => j,
            None => match rx.recv() {
                Ok(j) => j,
                Err(_) => return, // queue closed and empty: shutdown
            },
        };
        let mut fill = BatchFill::default();
        fill.add(first.tokens(), first.encoded.len());
        let mut batch = vec![first];
        let until = Instant::now() + policy.max_wait;
        while !fill.full(policy) {
            let left = until.saturating_duration_since(Instant::now());
            let next = if left.is_zero() {
                rx.try_recv().map_err(|_| RecvTimeoutError::Timeout)
            } else {
                rx.recv_timeout(left)
            };
            match next {
                Ok(j) if fill.admits(j.tokens(), j.encoded.len(), policy) => {
                    fill.add(j.tokens(), j.encoded.len());
                    batch.push(j);
                }
                Ok(j) => {
                    carry = Some(j);
                    break;
                }
                Err(_) => break,
            }
        }
        stats.queued.fetch_sub(batch.len(), Ordering::SeqCst);
        // Whatever the batch does not release (it panics part-way) is no longer queued.
        let _release = Release {
            counters: batch.iter().map(|j| j.counted.clone()).collect(),
            stats,
        };
        run(model, batch, policy, stats);
    }
}

#[cfg(test)]
mod tests;
