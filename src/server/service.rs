//! The samp.v1 service: validate each request into domain types, tokenize on the blocking
//! pool, admit the job to the model's queue (or refuse it), await the compute thread's answer
//! within the client's deadline, convert back. Records per-stage metrics.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};

use super::deadline::{deadline, within};
use super::fidelity::spawn_shadow;
use super::observe::{api_of, record, record_stages, CancelGuard};
use super::proto;
use super::status::ServeError;
use super::stream::{pipeline, Answers};
use super::validate::{aggregation, check_count, check_text, estimate_tokens, truncation};
use crate::backend::{Done, Job, ModelWorker, Output, Work};
use crate::config::Limits;
use crate::metrics as m;
use crate::model::config::Task;
use crate::model::EmbedOptions;
use crate::tokenize::{Input, Truncation};

/// State shared by every call.
pub struct State {
    /// Per model, its variants; the first is the default.
    models: BTreeMap<String, Vec<Arc<ModelWorker>>>,
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
        self.admitting.load(Ordering::SeqCst) && self.models.values().flatten().all(|w| w.alive())
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
                models,
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

    /// The model a request names (or the only model that can do `task`), in the variant it
    /// names (or the model's default).
    fn pick(&self, name: &str, variant: &str, task: Task) -> Result<Arc<ModelWorker>, ServeError> {
        let variants = if name.is_empty() {
            let able: Vec<_> = self
                .state
                .models
                .values()
                .filter(|v| v[0].model.task == task)
                .collect();
            match able.as_slice() {
                [one] => *one,
                [] => {
                    return Err(ServeError::FailedPrecondition(format!(
                        "no loaded model does {}",
                        task.name()
                    )))
                }
                _ => {
                    return Err(ServeError::invalid(
                        "model",
                        format!("several models do {}; name one", task.name()),
                    ))
                }
            }
        } else {
            self.state
                .models
                .get(name)
                .ok_or_else(|| ServeError::NotFound(format!("unknown model {name:?}")))?
        };
        let worker = if variant.is_empty() {
            variants[0].clone()
        } else {
            variants
                .iter()
                .find(|w| w.variant == variant)
                .cloned()
                .ok_or_else(|| {
                    let names: Vec<&str> = variants.iter().map(|w| w.variant.as_str()).collect();
                    ServeError::NotFound(format!(
                        "model {} has no variant {variant:?} (variants: {})",
                        variants[0].model.name,
                        names.join(", ")
                    ))
                })?
        };
        worker.model.require(task)?;
        Ok(worker)
    }

    fn check_count(&self, field: &str, n: usize) -> Result<(), ServeError> {
        check_count(&self.state.limits, field, n)
    }

    fn check_text(&self, field: impl FnOnce() -> String, t: &str) -> Result<(), ServeError> {
        check_text(&self.state.limits, field, t)
    }

    /// Tokenize, queue, wait, all within the deadline. `work` is built from the inputs once
    /// they are tokenized (so that texts a head needs are moved, not copied). Returns the
    /// finished job and the tokenize time.
    async fn run(
        &self,
        worker: &Arc<ModelWorker>,
        inputs: Vec<Input>,
        truncation: Truncation,
        work: impl FnOnce(Vec<Input>) -> Work,
        deadline: Option<Instant>,
    ) -> Result<(Done, Duration), ServeError> {
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
                let encoded = model.encode(&inputs, truncation);
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
    fn shadow_for(&self, worker: &Arc<ModelWorker>) -> Option<Arc<ModelWorker>> {
        let every = self.state.fidelity_every?;
        let plan = worker.model.plan();
        if plan.int8_gemms() + plan.bf16_gemms() == 0 {
            return None;
        }
        let n = self.state.sampled.fetch_add(1, Ordering::Relaxed);
        if !n.is_multiple_of(every) {
            return None;
        }
        self.state
            .models
            .get(&worker.model.name)?
            .iter()
            .find(|w| w.model.plan().int8_gemms() + w.model.plan().bf16_gemms() == 0)
            .cloned()
    }

    fn served(worker: &ModelWorker, done: &Done, tokenize: Duration, tokens: u32) -> proto::Served {
        proto::Served {
            model: worker.model.name.clone(),
            variant: worker.variant.clone(),
            tokenize_seconds: tokenize.as_secs_f64(),
            queue_seconds: done.queue.as_secs_f64(),
            inference_seconds: done.inference.as_secs_f64(),
            tokens,
        }
    }
}

/// A refusal at the door, counted by reason.
fn refused(worker: &ModelWorker, e: crate::backend::Refused) -> ServeError {
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

#[tonic::async_trait]
impl proto::samp_server::Samp for SampService {
    type EmbedStreamStream = Answers<proto::EmbedResponse>;
    type ClassifyStreamStream = Answers<proto::ClassifyResponse>;
    type TagStreamStream = Answers<proto::TagResponse>;

    async fn embed_stream(
        &self,
        req: Request<tonic::Streaming<proto::EmbedRequest>>,
    ) -> Result<Response<Self::EmbedStreamStream>, Status> {
        let svc = self.clone();
        let max = self.state.limits.max_stream();
        Ok(Response::new(pipeline(req, max, move |r| {
            let svc = svc.clone();
            async move { proto::samp_server::Samp::embed(&svc, r).await }
        })))
    }

    async fn classify_stream(
        &self,
        req: Request<tonic::Streaming<proto::ClassifyRequest>>,
    ) -> Result<Response<Self::ClassifyStreamStream>, Status> {
        let svc = self.clone();
        let max = self.state.limits.max_stream();
        Ok(Response::new(pipeline(req, max, move |r| {
            let svc = svc.clone();
            async move { proto::samp_server::Samp::classify(&svc, r).await }
        })))
    }

    async fn tag_stream(
        &self,
        req: Request<tonic::Streaming<proto::TagRequest>>,
    ) -> Result<Response<Self::TagStreamStream>, Status> {
        let svc = self.clone();
        let max = self.state.limits.max_stream();
        Ok(Response::new(pipeline(req, max, move |r| {
            let svc = svc.clone();
            async move { proto::samp_server::Samp::tag(&svc, r).await }
        })))
    }

    async fn embed(
        &self,
        req: Request<proto::EmbedRequest>,
    ) -> Result<Response<proto::EmbedResponse>, Status> {
        let mut guard = CancelGuard::new("embed", api_of(&req));
        let deadline = deadline(&req);
        let r = req.into_inner();
        // Labels only from the closed set of loaded models: a request naming an unknown model
        // is counted under model="".
        let mut resolved = (String::new(), String::new());
        let result = async {
            let worker = self.pick(&r.model, &r.variant, Task::Embed)?;
            resolved = (worker.model.name.clone(), worker.variant.clone());
            let n = r.texts.len();
            self.check_count("inputs", n)?;
            for (i, t) in r.texts.iter().enumerate() {
                self.check_text(|| format!("texts[{i}]"), t)?;
            }
            let opts = EmbedOptions {
                normalize: r.normalize,
                dims: (r.dimensions > 0).then_some(r.dimensions as usize),
                truncation: truncation(r.truncation)?,
            };
            worker.model.check_embed(&opts)?;
            let inputs = r.texts.into_iter().map(Input::Single).collect();
            let (done, tokenize) = self
                .run(
                    &worker,
                    inputs,
                    opts.truncation,
                    move |_| Work::Embed(opts),
                    deadline,
                )
                .await?;
            record_stages("embed", &worker, &done, tokenize, n);
            let Output::Embed(v) = &done.output else {
                unreachable!("embed work gives embed output")
            };
            let tokens = v.iter().map(|e| e.tokens as u32).sum();
            Ok(proto::EmbedResponse {
                served: Some(Self::served(&worker, &done, tokenize, tokens)),
                embeddings: v
                    .iter()
                    .map(|e| proto::Embedding {
                        values: e.embedding.clone(),
                        tokens: e.tokens as u32,
                        truncated: e.truncated,
                    })
                    .collect(),
            })
        }
        .await;
        record(&mut guard, &resolved.0, &resolved.1, &result);
        result.map(Response::new).map_err(Status::from)
    }

    async fn classify(
        &self,
        req: Request<proto::ClassifyRequest>,
    ) -> Result<Response<proto::ClassifyResponse>, Status> {
        let mut guard = CancelGuard::new("classify", api_of(&req));
        let deadline = deadline(&req);
        let r = req.into_inner();
        // Labels only from the closed set of loaded models: a request naming an unknown model
        // is counted under model="".
        let mut resolved = (String::new(), String::new());
        let result = async {
            let worker = self.pick(&r.model, &r.variant, Task::Classify)?;
            resolved = (worker.model.name.clone(), worker.variant.clone());
            use proto::classify_input::Input as In;
            self.check_count("inputs", r.inputs.len())?;
            let mut inputs = Vec::with_capacity(r.inputs.len());
            // Checked where they lie and moved, never copied.
            for (i, inp) in r.inputs.into_iter().enumerate() {
                inputs.push(match inp.input {
                    Some(In::Text(t)) => {
                        self.check_text(|| format!("inputs[{i}].text"), &t)?;
                        Input::Single(t)
                    }
                    Some(In::Pair(p)) => {
                        self.check_text(|| format!("inputs[{i}].pair.a"), &p.a)?;
                        self.check_text(|| format!("inputs[{i}].pair.b"), &p.b)?;
                        Input::Pair(p.a, p.b)
                    }
                    None => {
                        return Err(ServeError::invalid(
                            format!("inputs[{i}]"),
                            "neither text nor pair",
                        ))
                    }
                });
            }
            let n = inputs.len();
            let trunc = truncation(r.truncation)?;
            let (done, tokenize) = self
                .run(&worker, inputs, trunc, |_| Work::Classify, deadline)
                .await?;
            record_stages("classify", &worker, &done, tokenize, n);
            let Output::Classify(v) = &done.output else {
                unreachable!("classify work gives classify output")
            };
            let tokens = v.iter().map(|c| c.tokens as u32).sum();
            Ok(proto::ClassifyResponse {
                served: Some(Self::served(&worker, &done, tokenize, tokens)),
                results: v
                    .iter()
                    .map(|c| proto::Classification {
                        label: c.label.clone(),
                        score: c.score,
                        scores: c
                            .scores
                            .iter()
                            .map(|s| proto::LabelScore {
                                label: s.label.clone(),
                                score: s.score,
                            })
                            .collect(),
                        tokens: c.tokens as u32,
                        truncated: c.truncated,
                    })
                    .collect(),
            })
        }
        .await;
        record(&mut guard, &resolved.0, &resolved.1, &result);
        result.map(Response::new).map_err(Status::from)
    }

    async fn tag(
        &self,
        req: Request<proto::TagRequest>,
    ) -> Result<Response<proto::TagResponse>, Status> {
        let mut guard = CancelGuard::new("tag", api_of(&req));
        let deadline = deadline(&req);
        let r = req.into_inner();
        // Labels only from the closed set of loaded models: a request naming an unknown model
        // is counted under model="".
        let mut resolved = (String::new(), String::new());
        let result = async {
            let worker = self.pick(&r.model, &r.variant, Task::Tag)?;
            resolved = (worker.model.name.clone(), worker.variant.clone());
            let n = r.texts.len();
            self.check_count("inputs", n)?;
            for (i, t) in r.texts.iter().enumerate() {
                self.check_text(|| format!("texts[{i}]"), t)?;
            }
            let agg = aggregation(r.aggregation)?;
            let trunc = truncation(r.truncation)?;
            let inputs = r.texts.into_iter().map(Input::Single).collect();
            // The head needs the texts for entity offsets: moved back out of the inputs.
            let work = move |inputs: Vec<Input>| {
                Work::Tag(inputs.into_iter().map(Input::into_first).collect(), agg)
            };
            let (done, tokenize) = self.run(&worker, inputs, trunc, work, deadline).await?;
            record_stages("tag", &worker, &done, tokenize, n);
            let Output::Tag(v) = &done.output else {
                unreachable!("tag work gives tag output")
            };
            let tokens = v.iter().map(|t| t.tokens as u32).sum();
            Ok(proto::TagResponse {
                served: Some(Self::served(&worker, &done, tokenize, tokens)),
                results: v
                    .iter()
                    .map(|t| proto::TagResult {
                        entities: t
                            .entities
                            .iter()
                            .map(|e| proto::Entity {
                                label: e.label.clone(),
                                score: e.score,
                                start: e.start as u32,
                                end: e.end as u32,
                                text: e.text.clone(),
                            })
                            .collect(),
                        tokens: t.tokens as u32,
                        truncated: t.truncated,
                    })
                    .collect(),
            })
        }
        .await;
        record(&mut guard, &resolved.0, &resolved.1, &result);
        result.map(Response::new).map_err(Status::from)
    }

    async fn list_models(
        &self,
        _req: Request<proto::ListModelsRequest>,
    ) -> Result<Response<proto::ListModelsResponse>, Status> {
        Ok(Response::new(proto::ListModelsResponse {
            models: self.state.models.values().map(|v| info(v)).collect(),
        }))
    }

    async fn get_model(
        &self,
        req: Request<proto::GetModelRequest>,
    ) -> Result<Response<proto::ModelInfo>, Status> {
        let name = req.into_inner().model;
        self.state
            .models
            .get(&name)
            .map(|v| Response::new(info(v)))
            .ok_or_else(|| ServeError::NotFound(format!("unknown model {name:?}")).into())
    }
}

fn info(variants: &[Arc<ModelWorker>]) -> proto::ModelInfo {
    let m = &variants[0].model;
    proto::ModelInfo {
        name: m.name.clone(),
        task: m.task.name().to_string(),
        architecture: format!("{:?}", m.cfg.arch).to_lowercase(),
        labels: m.labels.clone(),
        max_tokens: m.max_len() as u32,
        hidden_size: m.cfg.hidden as u32,
        layers: m.cfg.layers as u32,
        variants: variants
            .iter()
            .enumerate()
            .map(|(i, w)| proto::VariantInfo {
                name: w.variant.clone(),
                precision: precision_summary(w.model.plan()),
                is_default: i == 0,
                metric: w
                    .quality
                    .as_ref()
                    .map_or(String::new(), |q| q.metric.clone()),
                score: w.quality.as_ref().map(|q| q.value),
                drop: w.quality.as_ref().map(|q| q.drop),
            })
            .collect(),
    }
}

/// e.g. "float32 (all 6 layers)" or "int8 GEMMs 20/24, bf16 GEMMs 2/24, layers QQQQpF (F
/// float32, b bf16, q Quant-FFN-Only, p Quant-FFN-Only with bf16 attention, Q Fully-Quant;
/// Static activations, 8-bit weights)".
pub fn precision_summary(plan: &crate::quant::plan::Plan) -> String {
    let n = plan.layers.len();
    match (plan.int8_gemms(), plan.bf16_gemms()) {
        (0, 0) => format!("float32 (all {n} layers)"),
        (k, b) => format!(
            "int8 GEMMs {k}/{all}, bf16 GEMMs {b}/{all}, layers {} (F float32, b bf16, q Quant-FFN-Only, p Quant-FFN-Only with bf16 attention, Q Fully-Quant; {:?} activations, {}-bit weights)",
            plan.summary(),
            plan.activations,
            plan.weight_bits,
            all = 4 * n,
        ),
    }
}
