//! Per-call metrics of the samp.v1 handlers: outcome and latency counters, the stage timings of
//! a served request, and counting clients that went away as `cancelled`.

use std::time::{Duration, Instant};

use super::status::ServeError;
use crate::backend::{FinishedJob, ModelWorker};
use crate::metrics as m;

/// Which door a call came through (the `api` label of the request metrics): the HTTP door sets
/// it as a request extension; calls without one came over gRPC.
#[derive(Debug, Clone, Copy)]
pub struct Api(pub &'static str);

pub fn api_of<T>(req: &tonic::Request<T>) -> &'static str {
    req.extensions().get::<Api>().map_or("grpc", |a| a.0)
}

/// Counts a call whose client went away (tonic drops the handler) as `cancelled`.
pub struct CancelGuard {
    rpc: &'static str,
    api: &'static str,
    start: Instant,
    armed: bool,
}

impl CancelGuard {
    pub fn new(rpc: &'static str, api: &'static str) -> Self {
        CancelGuard {
            rpc,
            api,
            start: Instant::now(),
            armed: true,
        }
    }
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if self.armed {
            metrics::counter!(m::REQUESTS_TOTAL, "rpc" => self.rpc, "api" => self.api,
                "model" => "", "variant" => "", "outcome" => "cancelled")
            .increment(1);
            metrics::histogram!(m::REQUEST_SECONDS, "rpc" => self.rpc, "api" => self.api,
                "model" => "")
            .record(self.start.elapsed().as_secs_f64());
        }
    }
}

/// Count the outcome and latency of one call.
pub fn record<T>(guard: &mut CancelGuard, model: &str, variant: &str, r: &Result<T, ServeError>) {
    guard.armed = false;
    let (rpc, api, start) = (guard.rpc, guard.api, guard.start);
    let outcome = match r {
        Ok(_) => "ok",
        Err(e) => e.outcome(),
    };
    metrics::counter!(m::REQUESTS_TOTAL, "rpc" => rpc, "api" => api, "model" => model.to_string(),
        "variant" => variant.to_string(), "outcome" => outcome)
    .increment(1);
    metrics::histogram!(m::REQUEST_SECONDS, "rpc" => rpc, "api" => api, "model" => model.to_string())
        .record(start.elapsed().as_secs_f64());
}

pub fn record_stages(
    rpc: &'static str,
    worker: &ModelWorker,
    done: &FinishedJob,
    tokenize: Duration,
    inputs: usize,
) {
    let model = worker.model.name.clone();
    metrics::histogram!(m::TOKENIZE_SECONDS, "rpc" => rpc, "model" => model.clone())
        .record(tokenize.as_secs_f64());
    metrics::histogram!(m::QUEUE_SECONDS, "rpc" => rpc, "model" => model.clone())
        .record(done.queue.as_secs_f64());
    metrics::histogram!(m::INFERENCE_SECONDS, "rpc" => rpc, "model" => model.clone())
        .record(done.inference.as_secs_f64());
    metrics::histogram!(m::BATCH_INPUTS, "model" => model.clone()).record(done.batch_inputs as f64);
    metrics::histogram!(m::BATCH_TOKENS, "model" => model.clone()).record(done.batch_tokens as f64);
    metrics::counter!(m::INPUTS_TOTAL, "rpc" => rpc, "model" => model).increment(inputs as u64);
}

/// A refusal at the door, counted by reason.
pub fn refused(worker: &ModelWorker, e: crate::backend::Refused) -> ServeError {
    use crate::backend::Refused;
    use crate::batching::Refusal;
    let reason = match &e {
        Refused::Overloaded { reason, .. } => match reason {
            Refusal::QueueFull { .. } => "queue_full",
            Refusal::TokenBudget { .. } => "token_budget",
            Refusal::Deadline { .. } => "deadline",
        },
        Refused::NoWorker { .. } => "no_worker",
    };
    metrics::counter!(m::REFUSED_TOTAL, "model" => worker.model.name.clone(), "reason" => reason)
        .increment(1);
    match e {
        Refused::Overloaded { .. } => ServeError::Overloaded(e.to_string()),
        Refused::NoWorker { .. } => ServeError::Unavailable,
    }
}
