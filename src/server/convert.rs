//! samp.v1 messages into domain calls and domain results back into replies: one [`Rpc`] impl
//! per unary request type, and the model listing. The handlers in `service.rs` only run them.

use std::sync::Arc;

use super::proto;
use super::status::ServeError;
use super::validate::{aggregation, check_count, check_text, truncation};
use crate::backend::{HeadWork, ModelWorker, Output};
use crate::config::Limits;
use crate::model::config::Task;
use crate::model::heads::tag::Entity;
use crate::model::{Classification, EmbedOptions, Embedding, LabelScore, Model, Tagging};
use crate::quant::plan::Plan;
use crate::tokenize::{Input, Truncation};

/// What the head does with a job's inputs once they are tokenized (texts the head needs are
/// moved back out of them, not copied).
pub type MakeWork = Box<dyn FnOnce(Vec<Input>) -> HeadWork + Send>;

/// A request checked against the limits and the model that serves it.
pub struct Call {
    pub inputs: Vec<Input>,
    pub truncation: Truncation,
    pub work: MakeWork,
}

/// A unary request of samp.v1: how it becomes a [`Call`] and how the job's output becomes its
/// reply.
pub trait Rpc: Target + Send + 'static {
    type Reply: Send + 'static;
    /// The task; its name is the RPC's in metrics.
    const TASK: Task;
    /// Validate the request into a call to `model`, before any work is spent on it.
    fn into_call(self, limits: &Limits, model: &Model) -> Result<Call, ServeError>;
    /// The reply; `served` gets its token count here.
    fn reply(output: Output, served: proto::Served) -> Result<Self::Reply, ServeError>;
}

/// Every text of a request, checked where it lies, then moved into inputs.
fn single_inputs(
    limits: &Limits,
    field: &str,
    texts: Vec<String>,
) -> Result<Vec<Input>, ServeError> {
    check_count(limits, "inputs", texts.len())?;
    for (i, t) in texts.iter().enumerate() {
        check_text(limits, || format!("{field}[{i}]"), t)?;
    }
    Ok(texts.into_iter().map(Input::Single).collect())
}

fn other_output(task: Task) -> ServeError {
    ServeError::Internal(anyhow::anyhow!(
        "the compute thread answered a {} job with another task's output",
        task.name()
    ))
}

/// A result that knows how many tokens its input had.
trait Counted {
    fn tokens(&self) -> usize;
}

macro_rules! counted {
    ($($t:ty),*) => {$(
        impl Counted for $t {
            fn tokens(&self) -> usize {
                self.tokens
            }
        }
    )*};
}

counted!(Embedding, Classification, Tagging);

/// The results as reply items, and `served` with their tokens.
fn items<T: Counted, P: From<T>>(
    mut served: proto::Served,
    v: Vec<T>,
) -> (Option<proto::Served>, Vec<P>) {
    served.tokens = v.iter().map(|x| x.tokens() as u32).sum();
    (Some(served), v.into_iter().map(P::from).collect())
}

/// `target` of every request: they all name a model and a variant the same way.
macro_rules! targets {
    ($($req:ty),*) => {$(
        impl Target for $req {
            fn target(&self) -> (&str, &str) {
                (&self.model, &self.variant)
            }
        }
    )*};
}

/// The model and variant a request names (empty: the only model able / the default).
pub trait Target {
    fn target(&self) -> (&str, &str);
}

targets!(
    proto::EmbedRequest,
    proto::ClassifyRequest,
    proto::TagRequest
);

impl Rpc for proto::EmbedRequest {
    type Reply = proto::EmbedResponse;
    const TASK: Task = Task::Embed;

    fn into_call(self, limits: &Limits, model: &Model) -> Result<Call, ServeError> {
        let inputs = single_inputs(limits, "texts", self.texts)?;
        let opts = EmbedOptions {
            normalize: self.normalize,
            dims: (self.dimensions > 0).then_some(self.dimensions as usize),
            truncation: truncation(self.truncation)?,
        };
        model.check_embed(&opts)?;
        Ok(Call {
            inputs,
            truncation: opts.truncation,
            work: Box::new(move |_| HeadWork::Embed(opts)),
        })
    }

    fn reply(output: Output, served: proto::Served) -> Result<Self::Reply, ServeError> {
        let Output::Embed(v) = output else {
            return Err(other_output(Self::TASK));
        };
        let (served, embeddings) = items(served, v);
        Ok(proto::EmbedResponse { served, embeddings })
    }
}

impl Rpc for proto::ClassifyRequest {
    type Reply = proto::ClassifyResponse;
    const TASK: Task = Task::Classify;

    fn into_call(self, limits: &Limits, _: &Model) -> Result<Call, ServeError> {
        use proto::classify_input::Input as In;
        check_count(limits, "inputs", self.inputs.len())?;
        let mut inputs = Vec::with_capacity(self.inputs.len());
        // Checked where they lie and moved, never copied.
        for (i, inp) in self.inputs.into_iter().enumerate() {
            inputs.push(match inp.input {
                Some(In::Text(t)) => {
                    check_text(limits, || format!("inputs[{i}].text"), &t)?;
                    Input::Single(t)
                }
                Some(In::Pair(p)) => {
                    check_text(limits, || format!("inputs[{i}].pair.a"), &p.a)?;
                    check_text(limits, || format!("inputs[{i}].pair.b"), &p.b)?;
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
        Ok(Call {
            inputs,
            truncation: truncation(self.truncation)?,
            work: Box::new(|_| HeadWork::Classify),
        })
    }

    fn reply(output: Output, served: proto::Served) -> Result<Self::Reply, ServeError> {
        let Output::Classify(v) = output else {
            return Err(other_output(Self::TASK));
        };
        let (served, results) = items(served, v);
        Ok(proto::ClassifyResponse { served, results })
    }
}

impl Rpc for proto::TagRequest {
    type Reply = proto::TagResponse;
    const TASK: Task = Task::Tag;

    fn into_call(self, limits: &Limits, _: &Model) -> Result<Call, ServeError> {
        let inputs = single_inputs(limits, "texts", self.texts)?;
        let agg = aggregation(self.aggregation)?;
        Ok(Call {
            inputs,
            truncation: truncation(self.truncation)?,
            // The head needs the texts for entity offsets: moved back out of the inputs.
            work: Box::new(move |inputs: Vec<Input>| {
                HeadWork::Tag(inputs.into_iter().map(Input::into_first).collect(), agg)
            }),
        })
    }

    fn reply(output: Output, served: proto::Served) -> Result<Self::Reply, ServeError> {
        let Output::Tag(v) = output else {
            return Err(other_output(Self::TASK));
        };
        let (served, results) = items(served, v);
        Ok(proto::TagResponse { served, results })
    }
}

/// A model and its variants, as `ListModels` and `GetModel` show them.
pub fn model_info(variants: &[Arc<ModelWorker>]) -> proto::ModelInfo {
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
pub fn precision_summary(plan: &Plan) -> String {
    let n = plan.layers.len();
    match (plan.int8_gemms(), plan.bf16_gemms()) {
        (0, 0) => format!("float32 (all {n} layers)"),
        (k, b) => format!(
            "int8 GEMMs {k}/{all}, bf16 GEMMs {b}/{all}, layers {} (F float32, b bf16, q Quant-FFN-Only, p Quant-FFN-Only with bf16 attention, Q Fully-Quant; {:?} activations, {}-bit weights{})",
            plan.summary(),
            plan.activations,
            plan.weight_bits,
            plan.own_widths()
                .iter()
                .map(|(b, c)| format!(", {b}-bit in {c} GEMMs"))
                .collect::<String>(),
            all = 4 * n,
        ),
    }
}

// Domain results into replies, field for field.

impl From<Embedding> for proto::Embedding {
    fn from(e: Embedding) -> Self {
        proto::Embedding {
            values: e.embedding,
            tokens: e.tokens as u32,
            truncated: e.truncated,
        }
    }
}

impl From<Classification> for proto::Classification {
    fn from(c: Classification) -> Self {
        proto::Classification {
            label: c.label,
            score: c.score,
            scores: c
                .scores
                .into_iter()
                .map(|s| proto::LabelScore {
                    label: s.label,
                    score: s.score,
                })
                .collect(),
            tokens: c.tokens as u32,
            truncated: c.truncated,
        }
    }
}

impl From<Tagging> for proto::TagResult {
    fn from(t: Tagging) -> Self {
        proto::TagResult {
            entities: t
                .entities
                .into_iter()
                .map(|e| proto::Entity {
                    label: e.label,
                    score: e.score,
                    start: e.start as u32,
                    end: e.end as u32,
                    text: e.text,
                })
                .collect(),
            tokens: t.tokens as u32,
            truncated: t.truncated,
        }
    }
}

// Replies back into the domain types, for clients (`samp client`, the HTTP door) that show
// results in the one-shot CLI's shape. Logits do not travel over samp.v1: they stay empty.

impl From<proto::Embedding> for Embedding {
    fn from(e: proto::Embedding) -> Self {
        Embedding {
            embedding: e.values,
            tokens: e.tokens as usize,
            truncated: e.truncated,
        }
    }
}

impl From<proto::LabelScore> for LabelScore {
    fn from(s: proto::LabelScore) -> Self {
        LabelScore {
            label: s.label,
            score: s.score,
        }
    }
}

impl From<proto::Classification> for Classification {
    fn from(c: proto::Classification) -> Self {
        Classification {
            label: c.label,
            score: c.score,
            scores: c.scores.into_iter().map(LabelScore::from).collect(),
            logits: Vec::new(),
            tokens: c.tokens as usize,
            truncated: c.truncated,
        }
    }
}

impl From<proto::Entity> for Entity {
    fn from(e: proto::Entity) -> Self {
        Entity {
            label: e.label,
            score: e.score,
            start: e.start as usize,
            end: e.end as usize,
            text: e.text,
        }
    }
}

impl From<proto::TagResult> for Tagging {
    fn from(t: proto::TagResult) -> Self {
        Tagging {
            entities: t.entities.into_iter().map(Entity::from).collect(),
            tokens: t.tokens as usize,
            truncated: t.truncated,
        }
    }
}
