//! The samp.v1 service: one generic handler for every unary RPC (and one for every stream):
//! pick the model, convert the request into a call (`convert.rs`), tokenize on the tokenizers'
//! pool, admit the job to the model's queue (or refuse it), await the compute thread's answer
//! within the client's deadline, convert back. Records per-stage metrics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};

use super::convert::{Call, Rpc};
use super::deadline::{deadline, within};
use super::fidelity::spawn_shadow;
use super::observe::{api_of, record, record_stages, refused, CancelGuard};
use super::proto;
use super::registry::Registry;
use super::status::ServeError;
use super::stream::{pipeline, Answers};
use super::validate::estimate_tokens;
use crate::backend::{FinishedJob, Job, ModelWorker};
use crate::config::Limits;
use crate::metrics as m;

/// State shared by every call.
pub struct State {
    models: Registry,
    limits: Limits,
    admitting: AtomicBool,
    /// Shadow one in this many requests of quantized variants through the float variant.
    fidelity_every: Option<usize>,
    sampled: AtomicUsize,
    /// The tokenizers' own threads (not the encoder's rayon pool, not tokio's).
    tokenizers: rayon::ThreadPool,
}

impl State {
    /// After this, new requests get UNAVAILABLE; admitted ones finish.
    pub fn stop_admitting(&self) {
        self.admitting.store(false, Ordering::SeqCst);
    }

    /// Admitting requests, and every model has its compute thread.
    pub fn healthy(&self) -> bool {
        self.admitting.load(Ordering::SeqCst) && self.models.all_alive()
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }
}

#[derive(Clone)]
pub struct SampService {
    state: Arc<State>,
}

impl SampService {
    /// `fidelity_rate`: the share of requests to quantized variants that are also run through
    /// the model's float32 variant (when it has one) to export online fidelity; 0 turns it off.
    pub fn new(
        models: BTreeMap<String, Vec<Arc<ModelWorker>>>,
        limits: Limits,
        fidelity_rate: f64,
    ) -> std::io::Result<Self> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let tokenizers = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("samp-tokenize-{i}"))
            .build()
            .map_err(std::io::Error::other)?;
        Ok(SampService {
            state: Arc::new(State {
                tokenizers,
                models: Registry::new(models),
                limits,
                admitting: AtomicBool::new(true),
                fidelity_every: (fidelity_rate > 0.0)
                    .then(|| (1.0 / fidelity_rate).round().max(1.0) as usize),
                sampled: AtomicUsize::new(0),
            }),
        })
    }

    pub fn state(&self) -> Arc<State> {
        self.state.clone()
    }

    /// Tokenize, queue, wait, all within the deadline. The call's work is built from the
    /// inputs once they are tokenized (so that texts a head needs are moved, not copied).
    /// Returns the finished job and the tokenize time.
    async fn run(
        &self,
        worker: &Arc<ModelWorker>,
        call: Call,
        deadline: Option<Instant>,
    ) -> Result<(FinishedJob, Duration), ServeError> {
        let Call {
            inputs,
            truncation,
            work,
        } = call;
        within(deadline, async {
            if !self.state.admitting.load(Ordering::SeqCst) {
                return Err(ServeError::Unavailable);
            }
            if deadline.is_some_and(|d| d <= Instant::now()) {
                return Err(ServeError::DeadlineExceeded);
            }
            // Take a place in the queue before spending anything on the request, by an
            // estimate of its tokens (made exact once tokenized); refused at once when the
            // queue cannot take it.
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let mut ticket = worker
                .reserve(estimate_tokens(&inputs, worker.model.max_len()), left)
                .map_err(|e| refused(worker, e))?;
            let t0 = Instant::now();
            let model = worker.model.clone();
            let (tx, rx) = tokio::sync::oneshot::channel();
            // Tokenizers have a pool of their own: never the encoder's, never tokio's.
            self.state.tokenizers.spawn(move || {
                let encoded = model.tokenize(&inputs, truncation);
                let _ = tx.send((encoded, inputs));
            });
            let (encoded, inputs) = rx
                .await
                .map_err(|_| ServeError::Internal(anyhow::anyhow!("tokenizer task lost")))?;
            let encoded = encoded?;
            let tokenize = t0.elapsed();
            let work = work(inputs);
            let shadow = self
                .shadow_for(worker)
                .map(|f| (f, encoded.clone(), work.clone()));
            let (job, rx) = Job::new(encoded, work, deadline);
            worker
                .send(&mut ticket, job)
                .map_err(|e| refused(worker, e))?;
            let q = worker.queue_state();
            metrics::gauge!(m::QUEUE_DEPTH, "model" => worker.model.name.clone())
                .set(q.jobs as f64);
            metrics::gauge!(m::QUEUE_TOKENS, "model" => worker.model.name.clone())
                .set(q.tokens as f64);
            if let Some(rate) = q.tokens_per_second {
                metrics::gauge!(m::TOKENS_PER_SECOND, "model" => worker.model.name.clone())
                    .set(rate);
            }
            let done = rx.await.map_err(|_| {
                ServeError::Internal(anyhow::anyhow!("the request's batch failed"))
            })??;
            drop(ticket);
            if let Some((float, encoded, work)) = shadow {
                spawn_shadow(worker, float, encoded, work, done.output.clone());
            }
            Ok((done, tokenize))
        })
        .await
    }

    /// For a request served by a quantized variant, and picked by the sampling rate: the
    /// model's float32 variant, to run it again off the hot path.
    fn shadow_for(&self, worker: &ModelWorker) -> Option<Arc<ModelWorker>> {
        let every = self.state.fidelity_every?;
        let shadow = self.state.models.float_variant(worker)?;
        let n = self.state.sampled.fetch_add(1, Ordering::Relaxed);
        n.is_multiple_of(every).then_some(shadow)
    }

    /// Every unary RPC: pick, convert, run, record, reply.
    async fn unary<R: Rpc>(&self, req: Request<R>) -> Result<Response<R::Reply>, Status> {
        let mut guard = CancelGuard::new(R::TASK.name(), api_of(&req));
        let deadline = deadline(&req);
        let r = req.into_inner();
        // Labels only from the closed set of loaded models: a request naming an unknown model
        // is counted under model="".
        let mut resolved = (String::new(), String::new());
        let result = async {
            let (model, variant) = r.target();
            let worker = self.state.models.pick(model, variant, R::TASK)?;
            resolved = (worker.model.name.clone(), worker.variant.clone());
            let call = r.into_call(&self.state.limits, &worker.model)?;
            let n = call.inputs.len();
            let (done, tokenize) = self.run(&worker, call, deadline).await?;
            record_stages(R::TASK.name(), &worker, &done, tokenize, n);
            let served = proto::Served {
                model: worker.model.name.clone(),
                variant: worker.variant.clone(),
                tokenize_seconds: tokenize.as_secs_f64(),
                queue_seconds: done.queue.as_secs_f64(),
                inference_seconds: done.inference.as_secs_f64(),
                tokens: 0,
            };
            R::reply(done.output, served)
        }
        .await;
        record(&mut guard, &resolved.0, &resolved.1, &result);
        result.map(Response::new).map_err(Status::from)
    }

    /// Every streaming RPC: each message answered by [`Self::unary`], in order.
    fn stream<R: Rpc>(&self, req: Request<tonic::Streaming<R>>) -> Response<Answers<R::Reply>> {
        let svc = self.clone();
        let max = self.state.limits.max_stream();
        Response::new(pipeline(req, max, move |r| {
            let svc = svc.clone();
            async move { svc.unary(r).await }
        }))
    }
}

#[tonic::async_trait]
impl proto::samp_server::Samp for SampService {
    type EmbedStreamStream = Answers<proto::EmbedResponse>;
    type ClassifyStreamStream = Answers<proto::ClassifyResponse>;
    type TagStreamStream = Answers<proto::TagResponse>;

    async fn embed_stream(
        &self,
        req: Request<tonic::Streaming<proto::EmbedRequest>>,
    ) -> Result<Response<Self::EmbedStreamStream>, Status> {
        Ok(self.stream(req))
    }

    async fn classify_stream(
        &self,
        req: Request<tonic::Streaming<proto::ClassifyRequest>>,
    ) -> Result<Response<Self::ClassifyStreamStream>, Status> {
        Ok(self.stream(req))
    }

    async fn tag_stream(
        &self,
        req: Request<tonic::Streaming<proto::TagRequest>>,
    ) -> Result<Response<Self::TagStreamStream>, Status> {
        Ok(self.stream(req))
    }

    async fn embed(
        &self,
        req: Request<proto::EmbedRequest>,
    ) -> Result<Response<proto::EmbedResponse>, Status> {
        self.unary(req).await
    }

    async fn classify(
        &self,
        req: Request<proto::ClassifyRequest>,
    ) -> Result<Response<proto::ClassifyResponse>, Status> {
        self.unary(req).await
    }

    async fn tag(
        &self,
        req: Request<proto::TagRequest>,
    ) -> Result<Response<proto::TagResponse>, Status> {
        self.unary(req).await
    }

    async fn list_models(
        &self,
        _req: Request<proto::ListModelsRequest>,
    ) -> Result<Response<proto::ListModelsResponse>, Status> {
        Ok(Response::new(proto::ListModelsResponse {
            models: self.state.models.infos(),
        }))
    }

    async fn get_model(
        &self,
        req: Request<proto::GetModelRequest>,
    ) -> Result<Response<proto::ModelInfo>, Status> {
        let name = req.into_inner().model;
        Ok(Response::new(self.state.models.info(&name)?))
    }
}
