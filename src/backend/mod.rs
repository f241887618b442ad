//! The compute side: one dedicated OS thread per loaded model, fed by a bounded queue of jobs,
//! each carrying its reply channel. The thread forms batches across requests (policy in
//! `batching`), drops jobs whose client left or whose deadline passed, runs one encoder pass
//! for the whole batch, and hands each request its own results. Tokio never runs a forward.

#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device;
pub mod gpu_plan;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::batching::{admit, BatchPolicy, Fill, QueueState, Refusal};
use crate::error::SampError;
use crate::model::encoder::Batch;
use crate::model::heads::tag::Aggregation;
use crate::model::{Classification, EmbedOptions, Embedding, Model, Tagging};
use crate::tokenize::Encoded;

/// What to do with a job's encoder states.
#[derive(Debug, Clone)]
pub enum Work {
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
pub struct Done {
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
    #[error("encoder pass failed: {0}")]
    Internal(String),
}

pub struct Job {
    pub encoded: Vec<Encoded>,
    pub work: Work,
    pub deadline: Option<Instant>,
    pub reply: oneshot::Sender<Result<Done, JobError>>,
    enqueued: Instant,
    /// Its tokens still counted in the queue's budget (released exactly once, by whoever
    /// gets there first: the compute thread pass by pass, or the caller giving up).
    counted: Arc<AtomicUsize>,
}

impl Job {
    pub fn new(
        encoded: Vec<Encoded>,
        work: Work,
        deadline: Option<Instant>,
    ) -> (Self, oneshot::Receiver<Result<Done, JobError>>) {
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
    /// Batches whose computation panicked; the worker carried on with the next.
    pub restarts: AtomicUsize,
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
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the compute thread does with one batch (the model's passes, or a test's stand-in).
type RunBatch = dyn Fn(&Model, Vec<Job>, &BatchPolicy, &Stats) + Send;

impl ModelWorker {
    pub fn spawn(model: Arc<Model>, variant: &str, policy: BatchPolicy) -> std::io::Result<Self> {
        Self::spawn_with(model, variant, policy, Box::new(run_batch))
    }

    fn spawn_with(
        model: Arc<Model>,
        variant: &str,
        policy: BatchPolicy,
        run: Box<RunBatch>,
    ) -> std::io::Result<Self> {
        // The channel only carries jobs that `admit` let in: its bound is a backstop.
        let (tx, rx) = mpsc::sync_channel::<Job>(policy.queue_capacity);
        let stats = Arc::new(Stats::default());
        let (m, st) = (model.clone(), stats.clone());
        let thread = std::thread::Builder::new()
            .name(format!("samp-compute-{}", model.name))
            .spawn(move || compute_loop(&m, &rx, &policy, &st, &*run))?;
        Ok(ModelWorker {
            model,
            variant: variant.to_string(),
            quality: None,
            stats,
            policy,
            tx,
            thread: Some(thread),
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
        if !self.alive() {
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

    /// Whether the compute thread is running (it only stops when the queue closes).
    pub fn alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Close the queue and wait until every admitted job has been answered.
    pub fn drain(mut self) {
        let thread = self.thread.take();
        drop(self);
        if let Some(t) = thread {
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
        let mut fill = Fill::default();
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
        let counters: Vec<Arc<AtomicUsize>> = batch.iter().map(|j| j.counted.clone()).collect();
        // A panic in one batch fails that batch's requests (their reply senders drop while
        // unwinding: INTERNAL) and the worker goes on with the next; the model is read-only.
        let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run(model, batch, policy, stats)
        }));
        // Whatever the batch did not release (it panicked part-way) is no longer queued.
        for c in &counters {
            release(c, stats, usize::MAX);
        }
        if ran.is_err() {
            stats.restarts.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(crate::metrics::WORKER_RESTARTS_TOTAL, "model" => model.name.clone())
                .increment(1);
            tracing::error!(model = %model.name, "a batch panicked; its requests failed, the worker goes on");
        }
    }
}

/// A job of the batch being computed: what it has so far.
struct Progress {
    job: Job,
    out: Result<Output, SampError>,
    /// Its sequences computed so far.
    done: usize,
    /// When its first pass started, and that pass's inputs and tokens.
    first_pass: Option<(Instant, usize, usize)>,
}

/// Run a batch in passes of at most `max_batch_tokens`. Before every pass, jobs whose client
/// left are dropped and jobs whose deadline passed are answered DEADLINE_EXCEEDED, so a large
/// job stops computing for nobody. Each job is answered as soon as its last sequence is done.
fn run_batch(model: &Model, batch: Vec<Job>, policy: &BatchPolicy, stats: &Stats) {
    let mut jobs: Vec<Progress> = batch
        .into_iter()
        .map(|job| Progress {
            out: Ok(match job.work {
                Work::Embed(_) => Output::Embed(Vec::with_capacity(job.encoded.len())),
                Work::Classify => Output::Classify(Vec::with_capacity(job.encoded.len())),
                Work::Tag(..) => Output::Tag(Vec::with_capacity(job.encoded.len())),
            }),
            job,
            done: 0,
            first_pass: None,
        })
        .collect();
    let h = model.cfg.hidden;
    let _span = tracing::debug_span!("batch", model = %model.name, jobs = jobs.len()).entered();
    loop {
        let now = Instant::now();
        jobs.retain_mut(|p| still_wanted(model, p, now, stats));
        if jobs.is_empty() {
            return;
        }
        // The next pass: sequences in job order, up to the token budget (at least one).
        let mut pass: Vec<(usize, usize)> = Vec::new();
        let mut tokens = 0;
        'fill: for (j, p) in jobs.iter().enumerate() {
            for l in p.done..p.job.encoded.len() {
                let n = p.job.encoded[l].len();
                if !pass.is_empty()
                    && (tokens + n > policy.max_batch_tokens || pass.len() >= policy.max_batch_size)
                {
                    break 'fill;
                }
                pass.push((j, l));
                tokens += n;
            }
        }
        let start = Instant::now();
        let mut batch = Batch::new();
        for &(j, l) in &pass {
            jobs[j]
                .first_pass
                .get_or_insert((start, pass.len(), tokens));
            let e = &jobs[j].job.encoded[l].encoding;
            batch.push(e.get_ids(), e.get_type_ids());
        }
        stats.batches.fetch_add(1, Ordering::Relaxed);
        match model.forward(&batch) {
            Ok(states) => {
                stats.record_pass(tokens, start.elapsed());
                for (s, &(j, l)) in pass.iter().enumerate() {
                    let r = batch.seq(s);
                    head(model, &mut jobs[j], l, &states[r.start * h..r.end * h]);
                    release(&jobs[j].job.counted, stats, r.len());
                }
            }
            Err(e) => {
                tracing::error!(model = %model.name, error = %e, "encoder pass failed");
                let msg = format!("{e:#}");
                for &(j, _) in &pass {
                    jobs[j].out = Err(SampError::Device(msg.clone()));
                }
            }
        }
        // Answer every job that is complete (or failed).
        let mut i = 0;
        while i < jobs.len() {
            if jobs[i].done == jobs[i].job.encoded.len() || jobs[i].out.is_err() {
                release(&jobs[i].job.counted, stats, usize::MAX);
                answer(jobs.remove(i));
            } else {
                i += 1;
            }
        }
    }
}

/// False (after answering or counting it) for a job no one waits for any more.
fn still_wanted(model: &Model, p: &mut Progress, now: Instant, stats: &Stats) -> bool {
    let reason = if p.job.reply.is_closed() {
        stats.dropped_cancelled.fetch_add(1, Ordering::Relaxed);
        "cancelled"
    } else if p.job.deadline.is_some_and(|d| d <= now) {
        stats.dropped_deadline.fetch_add(1, Ordering::Relaxed);
        // `retain_mut` only lends the job: swap its sender out to answer through it.
        let reply = std::mem::replace(&mut p.job.reply, oneshot::channel().0);
        let _ = reply.send(Err(JobError::DeadlineExceeded));
        "deadline"
    } else {
        return true;
    };
    release(&p.job.counted, stats, usize::MAX);
    metrics::counter!(crate::metrics::DROPPED_TOTAL, "model" => model.name.clone(), "reason" => reason)
        .increment(1);
    false
}

/// The task head on sequence `l` of a job, into the job's output.
fn head(model: &Model, p: &mut Progress, l: usize, states: &[f32]) {
    p.done = l + 1;
    let Ok(out) = &mut p.out else { return };
    let enc = &p.job.encoded[l];
    let step = match (&p.job.work, out) {
        (Work::Embed(o), Output::Embed(v)) => {
            v.push(model.embed_one(states, enc, o));
            Ok(())
        }
        (Work::Classify, Output::Classify(v)) => model.classify_one(states, enc).map(|r| v.push(r)),
        (Work::Tag(texts, agg), Output::Tag(v)) => model
            .tag_one(states, enc, &texts[l], *agg)
            .map(|r| v.push(r)),
        _ => unreachable!("outputs are built from the same work"),
    };
    if let Err(e) = step {
        p.out = Err(e);
    }
}

fn answer(p: Progress) {
    let (start, inputs, tokens) = p.first_pass.unwrap_or((Instant::now(), 0, 0));
    let reply = p.out.map_err(JobError::from).map(|output| Done {
        output,
        queue: start.saturating_duration_since(p.job.enqueued),
        inference: start.elapsed(),
        batch_inputs: inputs,
        batch_tokens: tokens,
    });
    let _ = p.job.reply.send(reply);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenize::Input;

    fn tiny() -> Arc<Model> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tiny-bert-multilabel");
        Arc::new(Model::load(&dir, &Default::default()).unwrap())
    }

    fn job(
        model: &Model,
        n: usize,
        deadline: Option<Instant>,
    ) -> (Job, oneshot::Receiver<Result<Done, JobError>>) {
        let texts: Vec<Input> = (0..n).map(|i| Input::Single(format!("text {i}"))).collect();
        Job::new(
            model.encode(&texts, Default::default()).unwrap(),
            Work::Embed(Default::default()),
            deadline,
        )
    }

    #[test]
    fn a_panicking_batch_fails_its_requests_and_the_worker_goes_on() {
        let model = tiny();
        let calls = AtomicUsize::new(0);
        let run: Box<RunBatch> = Box::new(move |m, batch, p, st| {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                panic!("injected fault");
            }
            run_batch(m, batch, p, st)
        });
        let w = ModelWorker::spawn_with(model.clone(), "v", BatchPolicy::default(), run).unwrap();
        let (a, a_rx) = job(&model, 3, None);
        w.submit(a).unwrap();
        assert!(
            a_rx.blocking_recv().is_err(),
            "the panicked batch's reply is dropped"
        );
        let (b, b_rx) = job(&model, 2, None);
        w.submit(b).unwrap();
        let done = b_rx.blocking_recv().unwrap().unwrap();
        let Output::Embed(v) = done.output else {
            panic!("embed work gives embed output")
        };
        assert_eq!(v.len(), 2);
        assert_eq!(w.stats.restarts.load(Ordering::SeqCst), 1);
        assert!(w.alive());
        // The batch's tokens are released right after its replies are sent.
        let t0 = Instant::now();
        while w.queue_state().tokens != 0 && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(w.queue_state().tokens, 0, "no tokens left counted");
        assert_eq!(w.queue_state().jobs, 0);
        w.drain();
    }

    #[test]
    fn a_deadline_stops_a_long_job_between_passes() {
        let model = tiny();
        let policy = BatchPolicy {
            max_batch_tokens: 1,
            ..Default::default()
        };
        let w = ModelWorker::spawn(model.clone(), "v", policy).unwrap();
        let n = 20_000;
        let (mut a, a_rx) = job(&model, n, None);
        a.deadline = Some(Instant::now() + Duration::from_millis(20));
        w.submit(a).unwrap();
        assert!(matches!(
            a_rx.blocking_recv().unwrap(),
            Err(JobError::DeadlineExceeded)
        ));
        let passes = w.stats.batches.load(Ordering::SeqCst);
        assert!(passes < n, "stopped after {passes} of {n} passes");
        w.drain();
    }

    #[test]
    fn the_token_budget_refuses_at_the_door() {
        let model = tiny();
        let policy = BatchPolicy {
            max_queue_tokens: 10,
            ..Default::default()
        };
        let w = ModelWorker::spawn(model.clone(), "v", policy).unwrap();
        // Pretend a job is ahead: its tokens are counted until it is done.
        w.stats.queued_tokens.store(8, Ordering::SeqCst);
        let (b, _b_rx) = job(&model, 2, None);
        let err = w.submit(b).unwrap_err();
        assert!(err.to_string().contains("tokens"), "{err}");
        assert_eq!(
            w.queue_state().tokens,
            8,
            "a refusal leaves nothing counted"
        );
        assert_eq!(w.queue_state().jobs, 0);
        let t = w.reserve(2, None).unwrap();
        assert_eq!(w.queue_state().tokens, 10);
        assert!(
            w.reserve(1, None).is_err(),
            "a full queue refuses before tokenizing"
        );
        drop(t);
        assert_eq!(
            w.queue_state().tokens,
            8,
            "a caller giving up releases its tokens"
        );
        assert_eq!(w.queue_state().jobs, 0);
        w.stats.queued_tokens.store(0, Ordering::SeqCst);
        // A sent job's tokens: released by the compute thread, or by the ticket when the
        // caller leaves first; never both.
        let t = w.reserve(5, None).unwrap();
        let (c, c_rx) = job(&model, 1, None);
        let mut t = t;
        w.send(&mut t, c).unwrap();
        c_rx.blocking_recv().unwrap().unwrap();
        assert_eq!(w.queue_state().tokens, 0);
        assert_eq!(w.queue_state().jobs, 0);
        w.drain();
    }
}
