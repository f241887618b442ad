//! The compute side: one dedicated OS thread per loaded model, fed by a bounded queue of jobs,
//! each carrying its reply channel. The thread forms batches across requests (policy in
//! `batching`), drops jobs whose client left or whose deadline passed, runs one encoder pass
//! for the whole batch, and hands each request its own results. Tokio never runs a forward.

#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device;
pub mod gpu_plan;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::batching::{BatchPolicy, Fill};
use crate::error::SampError;
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
        };
        (job, rx)
    }

    fn tokens(&self) -> usize {
        self.encoded.iter().map(Encoded::len).sum()
    }
}

/// The queue is full: the caller answers RESOURCE_EXHAUSTED.
#[derive(Debug, thiserror::Error)]
#[error("the queue of model {model} is full ({capacity} requests)")]
pub struct Overloaded {
    pub model: String,
    pub capacity: usize,
}

/// Counters the worker keeps for metrics and tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub queued: AtomicUsize,
    pub batches: AtomicUsize,
    pub dropped_cancelled: AtomicUsize,
    pub dropped_deadline: AtomicUsize,
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
    tx: SyncSender<Job>,
    capacity: usize,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ModelWorker {
    pub fn spawn(model: Arc<Model>, variant: &str, policy: BatchPolicy) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<Job>(policy.queue_capacity);
        let stats = Arc::new(Stats::default());
        let (m, st) = (model.clone(), stats.clone());
        let thread = std::thread::Builder::new()
            .name(format!("samp-compute-{}", model.name))
            .spawn(move || compute_loop(&m, &rx, &policy, &st))?;
        Ok(ModelWorker {
            model,
            variant: variant.to_string(),
            quality: None,
            stats,
            tx,
            capacity: policy.queue_capacity,
            thread: Some(thread),
        })
    }

    /// Admit a job, or refuse at once when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), Overloaded> {
        self.stats.queued.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.queued.fetch_sub(1, Ordering::Relaxed);
                Err(Overloaded {
                    model: self.model.name.clone(),
                    capacity: self.capacity,
                })
            }
        }
    }

    pub fn queue_depth(&self) -> usize {
        self.stats.queued.load(Ordering::Relaxed)
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

fn compute_loop(model: &Model, rx: &mpsc::Receiver<Job>, policy: &BatchPolicy, stats: &Stats) {
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
        stats.queued.fetch_sub(batch.len(), Ordering::Relaxed);
        run_batch(model, batch, stats);
    }
}

/// One encoder pass over every live job of the batch; each job gets its own results.
fn run_batch(model: &Model, batch: Vec<Job>, stats: &Stats) {
    let now = Instant::now();
    let mut live = Vec::with_capacity(batch.len());
    for job in batch {
        if job.reply.is_closed() {
            stats.dropped_cancelled.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(crate::metrics::DROPPED_TOTAL, "model" => model.name.clone(), "reason" => "cancelled")
                .increment(1);
        } else if job.deadline.is_some_and(|d| d <= now) {
            stats.dropped_deadline.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(crate::metrics::DROPPED_TOTAL, "model" => model.name.clone(), "reason" => "deadline")
                .increment(1);
            let _ = job.reply.send(Err(JobError::DeadlineExceeded));
        } else {
            live.push(job);
        }
    }
    if live.is_empty() {
        return;
    }
    stats.batches.fetch_add(1, Ordering::Relaxed);
    let _span = tracing::debug_span!("batch", model = %model.name, jobs = live.len()).entered();
    let owners: Vec<(usize, usize)> = live
        .iter()
        .enumerate()
        .flat_map(|(j, job)| (0..job.encoded.len()).map(move |l| (j, l)))
        .collect();
    let all: Vec<&Encoded> = live.iter().flat_map(|j| j.encoded.iter()).collect();
    let mut outputs: Vec<Result<Output, SampError>> = live
        .iter()
        .map(|j| {
            Ok(match j.work {
                Work::Embed(_) => Output::Embed(Vec::with_capacity(j.encoded.len())),
                Work::Classify => Output::Classify(Vec::with_capacity(j.encoded.len())),
                Work::Tag(..) => Output::Tag(Vec::with_capacity(j.encoded.len())),
            })
        })
        .collect();
    let inputs = all.len();
    let tokens: usize = all.iter().map(|e| e.len()).sum();
    let start = Instant::now();
    let pass = model.encode_states(&all, |i, states| {
        let (j, l) = owners[i];
        let (job, out) = (&live[j], &mut outputs[j]);
        let Ok(out) = out else { return Ok(()) };
        let enc = &job.encoded[l];
        let step = match (&job.work, out) {
            (Work::Embed(o), Output::Embed(v)) => {
                v.push(model.embed_one(states, enc, o));
                Ok(())
            }
            (Work::Classify, Output::Classify(v)) => {
                model.classify_one(states, enc).map(|r| v.push(r))
            }
            (Work::Tag(texts, agg), Output::Tag(v)) => model
                .tag_one(states, enc, &texts[l], *agg)
                .map(|r| v.push(r)),
            _ => unreachable!("outputs are built from the same work"),
        };
        if let Err(e) = step {
            outputs[j] = Err(e);
        }
        Ok(())
    });
    let inference = start.elapsed();
    match pass {
        Ok(()) => {
            for (job, out) in live.into_iter().zip(outputs) {
                let queue = now.saturating_duration_since(job.enqueued);
                let reply = out.map_err(JobError::from).map(|output| Done {
                    output,
                    queue,
                    inference,
                    batch_inputs: inputs,
                    batch_tokens: tokens,
                });
                let _ = job.reply.send(reply);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "encoder pass failed");
            let msg = format!("{e:#}");
            for job in live {
                let _ = job.reply.send(Err(JobError::Internal(msg.clone())));
            }
        }
    }
}
