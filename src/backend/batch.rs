//! One batch on the compute thread: passes of at most `max_batch_tokens`, the jobs no one waits
//! for dropped before every pass, the task heads, and each job answered when it is done.

use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::oneshot;

use super::engine::Engine;
use super::{release, FinishedJob, HeadWork, Job, JobError, Output, Stats};
use crate::batching::BatchPolicy;
use crate::model::encoder::Batch;
use crate::model::heads::tag::Aggregation;
use crate::model::{Classification, EmbedOptions, Embedding, Forward, Model, Tagging};

/// A job's head work and its results so far, in one: they cannot disagree.
enum HeadResults {
    Embed(EmbedOptions, Vec<Embedding>),
    Classify(Vec<Classification>),
    /// The original texts (for entity offsets), the aggregation, the taggings so far.
    Tag(Vec<String>, Aggregation, Vec<Tagging>),
}

impl HeadResults {
    fn new(work: HeadWork, n: usize) -> Self {
        match work {
            HeadWork::Embed(o) => HeadResults::Embed(o, Vec::with_capacity(n)),
            HeadWork::Classify => HeadResults::Classify(Vec::with_capacity(n)),
            HeadWork::Tag(texts, agg) => HeadResults::Tag(texts, agg, Vec::with_capacity(n)),
        }
    }

    fn into_output(self) -> Output {
        match self {
            HeadResults::Embed(_, v) => Output::Embed(v),
            HeadResults::Classify(v) => Output::Classify(v),
            HeadResults::Tag(_, _, v) => Output::Tag(v),
        }
    }
}

/// A job of the batch being computed: what it has so far.
struct Progress {
    job: Job,
    out: Result<HeadResults, JobError>,
    /// Its sequences computed so far.
    done: usize,
    /// When its first pass started, and that pass's inputs and tokens.
    first_pass: Option<(Instant, usize, usize)>,
}

/// Run a batch in passes of at most `max_batch_tokens`. Before every pass, jobs whose client
/// left are dropped and jobs whose deadline passed are answered DEADLINE_EXCEEDED, so a large
/// job stops computing for nobody. Each job is answered as soon as its last sequence is done.
pub(super) fn run_batch_on(
    model: &Model,
    engine: &dyn Engine,
    batch: Vec<Job>,
    policy: &BatchPolicy,
    stats: &Stats,
) {
    run_passes(model, &|b| engine.forward(b), batch, policy, stats)
}

/// [`run_batch_on`] the model's own CPU encoder.
#[cfg(test)]
pub(super) fn run_batch(model: &Model, batch: Vec<Job>, policy: &BatchPolicy, stats: &Stats) {
    run_passes(model, &|b| model.forward(b), batch, policy, stats)
}

fn run_passes(
    model: &Model,
    forward: Forward<'_>,
    batch: Vec<Job>,
    policy: &BatchPolicy,
    stats: &Stats,
) {
    let mut jobs: Vec<Progress> = batch
        .into_iter()
        .map(|mut job| {
            // The work moves into the job's results (the job keeps a placeholder).
            let work = std::mem::replace(&mut job.work, HeadWork::Classify);
            Progress {
                out: Ok(HeadResults::new(work, job.encoded.len())),
                job,
                done: 0,
                first_pass: None,
            }
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
                if !policy.pass_takes(pass.len(), tokens, n) {
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
        match forward(&batch) {
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
                let e = std::sync::Arc::new(e);
                for &(j, _) in &pass {
                    jobs[j].out = Err(JobError::Pass(e.clone()));
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
    let step = match out {
        HeadResults::Embed(o, v) => {
            v.push(model.embed_one(states, enc, o));
            Ok(())
        }
        HeadResults::Classify(v) => model.classify_one(states, enc).map(|r| v.push(r)),
        HeadResults::Tag(texts, agg, v) => model
            .tag_one(states, enc, &texts[l], *agg)
            .map(|r| v.push(r)),
    };
    if let Err(e) = step {
        p.out = Err(JobError::Model(e));
    }
}

fn answer(p: Progress) {
    let (start, inputs, tokens) = p.first_pass.unwrap_or((Instant::now(), 0, 0));
    let reply = p.out.map(|results| FinishedJob {
        output: results.into_output(),
        queue: start.saturating_duration_since(p.job.enqueued),
        inference: start.elapsed(),
        batch_inputs: inputs,
        batch_tokens: tokens,
    });
    let _ = p.job.reply.send(reply);
}
