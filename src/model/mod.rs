//! A loaded model: config, tokenizer, encoder and task head, and the three pipeline entry
//! points (`embed`, `classify`, `tag`). Loads a Hugging Face model directory; never imports
//! tokio, tonic or proto types.

pub mod config;
pub mod encoder;
pub mod heads;
pub mod linear;
pub mod weights;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Result, SampError};
use crate::tokenize::{Encoded, Input, Tokenizer, Truncation};
use config::{ModelConfig, Pooling, SentenceConfig, Task};
use encoder::{Batch, Encoder};
use heads::classify::ClassifyHead;
use heads::tag::{Aggregation, Entity, TokenScores};
use linear::Linear;
use weights::Weights;

use crate::kernels::int8::ActScale;
use crate::quant::artifact;
use crate::quant::observer::Observer;
use crate::quant::plan::{ActMode, Gemm, Plan, Precision};

/// Choices made when loading a model directory.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Use this head instead of the one the config names (`embed` works on any model).
    pub task: Option<Task>,
    /// Override the pooling of sentence-transformers' files.
    pub pooling: Option<Pooling>,
    /// Most tokens per forward pass; larger batches are split. Bounds activation memory.
    pub max_batch_tokens: Option<usize>,
    /// Run this precision plan (a `samp-plan.json`); INT8 weights are read from
    /// `samp-int8.safetensors` beside it when present, else quantized at load.
    pub plan: Option<PathBuf>,
}

enum Head {
    Embed,
    Classify(ClassifyHead),
    Tag(Linear),
}

/// Per-call options for `embed`.
#[derive(Debug, Clone, Default)]
pub struct EmbedOptions {
    /// Override the model's normalisation (sentence-transformers' `Normalize` module).
    pub normalize: Option<bool>,
    /// Keep only the first `dims` values.
    pub dims: Option<usize>,
    pub truncation: Truncation,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Embedding {
    pub embedding: Vec<f32>,
    pub tokens: usize,
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Classification {
    pub label: String,
    pub score: f32,
    /// Probability per label, in id2label order.
    pub scores: Vec<LabelScore>,
    /// Raw head outputs; empty (and not printed) where they did not travel, as in replies.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logits: Vec<f32>,
    pub tokens: usize,
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelScore {
    pub label: String,
    pub score: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tagging {
    pub entities: Vec<Entity>,
    pub tokens: usize,
    pub truncated: bool,
}

/// An encoder pass on another device (the CUDA backend implements it). The CPU encoder stays
/// loaded: it checks batches, and the quantization search and calibration run on it.
pub trait Accelerator: Send + Sync {
    /// Hidden states `[T, H]` of the last layer, as [`Encoder::forward`] returns them.
    fn forward(&self, encoder: &Encoder, batch: &Batch) -> Result<Vec<f32>>;
    /// Where it runs, for logs and `GetModel`, e.g. `cuda:0 (NVIDIA H200, sm_90)`.
    fn device(&self) -> String;
    /// Called once when a model starts using it (export its memory, for instance).
    fn on_attach(&self) {}
}

const DEFAULT_MAX_BATCH_TOKENS: usize = 16 * 1024;

pub struct Model {
    pub name: String,
    pub dir: PathBuf,
    pub cfg: ModelConfig,
    pub sentence: SentenceConfig,
    pub task: Task,
    pub labels: Vec<String>,
    tokenizer: Tokenizer,
    encoder: Encoder,
    head: Head,
    max_batch_tokens: usize,
    plan: Plan,
    accelerator: Option<Box<dyn Accelerator>>,
}

impl Model {
    /// Load a Hugging Face model directory.
    pub fn load(dir: &Path, opts: &LoadOptions) -> Result<Self> {
        if !dir.is_dir() {
            return Err(SampError::MissingFile {
                path: dir.to_path_buf(),
                what: "model directory",
            });
        }
        let cfg = ModelConfig::load(dir)?;
        let mut sentence = SentenceConfig::load(dir)?;
        if let Some(p) = opts.pooling {
            sentence.pooling = p;
        }
        let max_len = sentence
            .max_seq_length
            .map_or(cfg.position_limit(), |m| m.min(cfg.position_limit()));
        if max_len < 2 {
            let (file, key) = match sentence.max_seq_length {
                Some(m) if m < 2 => ("sentence_bert_config.json", "max_seq_length"),
                _ => ("config.json", "max_position_embeddings"),
            };
            return Err(SampError::malformed(
                dir.join(file),
                format!("{key} leaves {max_len} token positions; [CLS] and [SEP] need 2"),
            ));
        }
        let tokenizer = Tokenizer::load(dir, max_len, config::do_lower_case(dir)?)?;
        if tokenizer.max_token_id() as usize >= cfg.vocab_size {
            return Err(SampError::Tokenizer {
                path: tokenizer.path().to_path_buf(),
                reason: format!(
                    "produces token ids up to {} but config.json has vocab_size {}: \
                     the tokenizer does not belong to this model",
                    tokenizer.max_token_id(),
                    cfg.vocab_size
                ),
            });
        }
        let weights = Weights::open(dir, cfg.arch.prefix())?;
        let encoder = Encoder::load(&weights, &cfg)?;
        let task = opts.task.unwrap_or(cfg.task);
        let labels = if task == Task::Embed {
            Vec::new()
        } else if cfg.id2label.is_empty() {
            return Err(SampError::malformed(
                dir.join("config.json"),
                format!("a {} model needs \"id2label\"", task.name()),
            ));
        } else {
            cfg.id2label.clone()
        };
        let head = match task {
            Task::Embed => Head::Embed,
            Task::Classify => Head::Classify(ClassifyHead::load(&weights, &cfg, labels.len())?),
            Task::Tag => Head::Tag(Linear::load(
                &weights,
                "classifier",
                cfg.hidden,
                labels.len(),
            )?),
        };
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        let plan = Plan::float(cfg.layers);
        let mut model = Model {
            name,
            dir: dir.to_path_buf(),
            cfg,
            sentence,
            task,
            labels,
            tokenizer,
            encoder,
            head,
            max_batch_tokens: opts.max_batch_tokens.unwrap_or(DEFAULT_MAX_BATCH_TOKENS),
            plan,
            accelerator: None,
        };
        if let Some(path) = &opts.plan {
            model.load_plan(path)?;
        }
        Ok(model)
    }

    /// Read a plan file (and the INT8 weights beside it, if any) and run it.
    pub fn load_plan(&mut self, path: &Path) -> Result<()> {
        let plan = Plan::read(path)?;
        plan.validate(self.cfg.layers)
            .map_err(|reason| SampError::malformed(path, reason))?;
        let int8 = path.with_file_name(artifact::INT8_FILE);
        if int8.is_file() {
            let mut saved = artifact::read(&int8)?;
            if let Some(q) = saved.values().find(|q| q.bits != plan.weight_bits) {
                return Err(SampError::malformed(
                    &int8,
                    format!(
                        "holds {}-bit weights, the plan {} says weight_bits = {}",
                        q.bits,
                        path.display(),
                        plan.weight_bits
                    ),
                ));
            }
            for (i, layer) in self.encoder.layers_mut().iter_mut().enumerate() {
                for g in Gemm::ALL {
                    if let Some(q) = saved.remove(&artifact::tensor_name(i, g.name())) {
                        layer.linear_mut(g).set_qweights(q).map_err(|e| {
                            SampError::malformed(&int8, format!("layers.{i}.{}: {e}", g.name()))
                        })?;
                    }
                }
            }
            // Weights for a layer or GEMM this model does not have: not this model's file.
            if let Some(name) = saved.keys().next() {
                return Err(SampError::malformed(
                    &int8,
                    format!(
                        "tensor {name} matches no GEMM of this {}-layer model",
                        self.cfg.layers
                    ),
                ));
            }
        }
        self.apply_plan(&plan)
    }

    /// Switch every GEMM to the precision the plan gives it.
    pub fn apply_plan(&mut self, plan: &Plan) -> Result<()> {
        plan.validate(self.cfg.layers)
            .map_err(|reason| SampError::invalid("plan", reason))?;
        for (layer, lp) in self.encoder.layers_mut().iter_mut().zip(&plan.layers) {
            for g in Gemm::ALL {
                let gp = lp.get(g);
                let act = match (gp.precision, plan.activations) {
                    (Precision::Int8, ActMode::Dynamic) => Some(ActScale::Dynamic),
                    (Precision::Int8, ActMode::Static) => {
                        Some(ActScale::Static(gp.input_scale.expect("validated")))
                    }
                    _ => None,
                };
                layer.linear_mut(g).set_weight_bits(plan.weight_bits);
                layer.linear_mut(g).set_int8(act);
                layer
                    .linear_mut(g)
                    .set_bf16(gp.precision == Precision::Bfloat16);
            }
        }
        self.plan = plan.clone();
        if let Some(acc) = self.accelerator.take() {
            tracing::warn!(
                model = %self.name,
                "plan changed: {} detached, the CPU runs this model now",
                acc.device()
            );
        }
        Ok(())
    }

    /// Run encoder passes on `acc` from now on (it was built from this model and its plan).
    pub fn set_accelerator(&mut self, acc: Box<dyn Accelerator>) {
        acc.on_attach();
        self.accelerator = Some(acc);
    }

    /// Where encoder passes run: `cpu` or the accelerator's description.
    pub fn device(&self) -> String {
        self.accelerator
            .as_ref()
            .map_or_else(|| "cpu".to_string(), |a| a.device())
    }

    /// The plan this model runs (all float32 unless one was applied).
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The encoder, for per-layer timing and the INT8 weights of a plan.
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    /// Run the float model over `inputs` and return, per layer, what each GEMM's input looked
    /// like (the observers live on the layers that own them while this runs). The plan in force
    /// before is restored afterwards.
    pub fn calibrate(
        &mut self,
        inputs: &[Input],
        truncation: Truncation,
    ) -> Result<Vec<[Observer; 4]>> {
        let before = self.plan.clone();
        self.apply_plan(&Plan::float(self.cfg.layers))?;
        let set = |m: &Model, on: bool| {
            for l in m.encoder.layers() {
                for g in Gemm::ALL {
                    l.linear(g).observe(on);
                }
            }
        };
        set(self, true);
        let run = (|| {
            let encoded = self.encode(inputs, truncation)?;
            self.encode_states(&encoded, |_, _| Ok(()))
        })();
        let observed = self
            .encoder
            .layers()
            .iter()
            .map(|l| Gemm::ALL.map(|g| l.linear(g).observed().unwrap_or_default()))
            .collect();
        set(self, false);
        self.apply_plan(&before)?;
        run.map(|_| observed)
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Longest input in tokens (special tokens included).
    pub fn max_len(&self) -> usize {
        self.tokenizer.max_len()
    }

    /// Error unless this model's head can do `task` (embed works on every model).
    pub fn require(&self, task: Task) -> Result<()> {
        let ok = matches!(
            (&self.head, task),
            (_, Task::Embed) | (Head::Classify(_), Task::Classify) | (Head::Tag(_), Task::Tag)
        );
        if ok {
            Ok(())
        } else {
            Err(SampError::WrongTask {
                model: self.name.clone(),
                task: task.name(),
                has: self.task.name(),
            })
        }
    }

    /// Tokenize inputs (in parallel, order kept). The first half of every pipeline call; the
    /// server runs it on its tokenizer pool, away from the compute thread.
    pub fn encode(&self, inputs: &[Input], truncation: Truncation) -> Result<Vec<Encoded>> {
        self.tokenizer.encode_all(inputs, truncation)
    }

    /// Run the encoder over encoded inputs, splitting into passes of at most
    /// `max_batch_tokens`, and hand each sequence's `[len, H]` states to `f` in order.
    pub fn encode_states<E: std::borrow::Borrow<Encoded>>(
        &self,
        encoded: &[E],
        mut f: impl FnMut(usize, &[f32]) -> Result<()>,
    ) -> Result<()> {
        let h = self.cfg.hidden;
        let mut i = 0;
        while i < encoded.len() {
            let mut batch = Batch::new();
            let first = i;
            while i < encoded.len()
                && (batch.is_empty()
                    || batch.tokens() + encoded[i].borrow().len() <= self.max_batch_tokens)
            {
                let e = &encoded[i].borrow().encoding;
                batch.push(e.get_ids(), e.get_type_ids());
                i += 1;
            }
            let states = self.forward(&batch)?;
            for s in 0..batch.len() {
                let r = batch.seq(s);
                f(first + s, &states[r.start * h..r.end * h])?;
            }
        }
        Ok(())
    }

    /// Last-layer hidden states `[T, H]` of one packed batch, on the accelerator when the model
    /// has one.
    /// Non-finite states (NaN or infinite weights, an overflow) are an error, never an answer.
    pub fn forward(&self, batch: &Batch) -> Result<Vec<f32>> {
        let states = match &self.accelerator {
            Some(acc) => acc.forward(&self.encoder, batch),
            None => self.encoder.forward(batch),
        }?;
        match states.iter().position(|x| !x.is_finite()) {
            None => Ok(states),
            Some(index) => Err(SampError::NonFinite { index }),
        }
    }

    /// Check per-call embed options against this model.
    pub fn check_embed(&self, opts: &EmbedOptions) -> Result<()> {
        if let Some(d) = opts.dims {
            if d == 0 || d > self.cfg.hidden {
                return Err(SampError::invalid(
                    "dimensions",
                    format!("{d} is not in 1..={}", self.cfg.hidden),
                ));
            }
        }
        Ok(())
    }

    /// Embed head on one sequence's states.
    pub fn embed_one(&self, states: &[f32], enc: &Encoded, opts: &EmbedOptions) -> Embedding {
        let pooled = heads::embed::pool(states, self.cfg.hidden, self.sentence.pooling);
        let normalize = opts.normalize.unwrap_or(self.sentence.normalize);
        Embedding {
            embedding: heads::embed::finish(pooled, opts.dims, normalize),
            tokens: enc.len(),
            truncated: enc.truncated,
        }
    }

    /// Classify head on one sequence's states.
    pub fn classify_one(&self, states: &[f32], enc: &Encoded) -> Result<Classification> {
        self.require(Task::Classify)?;
        let Head::Classify(head) = &self.head else {
            unreachable!("require checked the head")
        };
        let (logits, probs) = head.forward(&states[..self.cfg.hidden]);
        let best = (0..probs.len()).fold(0, |b, j| if probs[j] > probs[b] { j } else { b });
        Ok(Classification {
            label: self.labels[best].clone(),
            score: probs[best],
            scores: self
                .labels
                .iter()
                .zip(&probs)
                .map(|(l, &s)| LabelScore {
                    label: l.clone(),
                    score: s,
                })
                .collect(),
            logits,
            tokens: enc.len(),
            truncated: enc.truncated,
        })
    }

    fn token_logits_one(&self, states: &[f32], enc: &Encoded) -> Result<Vec<f32>> {
        self.require(Task::Tag)?;
        let Head::Tag(classifier) = &self.head else {
            unreachable!("require checked the head")
        };
        let mut logits = vec![0.0f32; enc.len() * self.labels.len()];
        classifier.forward(states, enc.len(), &mut logits, false, None);
        Ok(logits)
    }

    /// Tag head on one sequence's states; `text` is the original input.
    pub fn tag_one(
        &self,
        states: &[f32],
        enc: &Encoded,
        text: &str,
        aggregation: Aggregation,
    ) -> Result<Tagging> {
        let n_labels = self.labels.len();
        let logits = self.token_logits_one(states, enc)?;
        let probs: Vec<f32> = logits
            .chunks_exact(n_labels)
            .flat_map(heads::classify::softmax)
            .collect();
        let tokens = token_scores(
            enc,
            &probs,
            n_labels,
            text,
            &self.tokenizer,
            self.tokenizer.subword_prefix().is_some(),
            self.tokenizer.unk_id(),
        );
        Ok(Tagging {
            entities: heads::tag::entities(&tokens, &self.labels, text, aggregation),
            tokens: enc.len(),
            truncated: enc.truncated,
        })
    }

    pub fn embed(&self, inputs: &[Input], opts: &EmbedOptions) -> Result<Vec<Embedding>> {
        self.check_embed(opts)?;
        let encoded = self.encode(inputs, opts.truncation)?;
        let mut out = Vec::with_capacity(inputs.len());
        self.encode_states(&encoded, |i, states| {
            out.push(self.embed_one(states, &encoded[i], opts));
            Ok(())
        })?;
        Ok(out)
    }

    pub fn classify(
        &self,
        inputs: &[Input],
        truncation: Truncation,
    ) -> Result<Vec<Classification>> {
        self.require(Task::Classify)?;
        let encoded = self.encode(inputs, truncation)?;
        let mut out = Vec::with_capacity(inputs.len());
        self.encode_states(&encoded, |i, states| {
            out.push(self.classify_one(states, &encoded[i])?);
            Ok(())
        })?;
        Ok(out)
    }

    /// Raw per-token logits of the tag head, `[tokens × labels]` per input (special tokens
    /// included), for evaluation and fidelity checks.
    pub fn token_logits(&self, inputs: &[Input], truncation: Truncation) -> Result<Vec<Vec<f32>>> {
        self.require(Task::Tag)?;
        let encoded = self.encode(inputs, truncation)?;
        let mut out = Vec::with_capacity(inputs.len());
        self.encode_states(&encoded, |i, states| {
            out.push(self.token_logits_one(states, &encoded[i])?);
            Ok(())
        })?;
        Ok(out)
    }

    pub fn tag(
        &self,
        texts: &[String],
        aggregation: Aggregation,
        truncation: Truncation,
    ) -> Result<Vec<Tagging>> {
        self.require(Task::Tag)?;
        let inputs: Vec<Input> = texts.iter().map(|t| Input::Single(t.clone())).collect();
        let encoded = self.encode(&inputs, truncation)?;
        let mut out = Vec::with_capacity(texts.len());
        self.encode_states(&encoded, |i, states| {
            out.push(self.tag_one(states, &encoded[i], &texts[i], aggregation)?);
            Ok(())
        })?;
        Ok(out)
    }
}

/// Per-token scores of the non-special tokens, with the pipeline's sub-word rule: with a
/// sub-word prefix (`##`), a token is a sub-word when its text is longer than the span it
/// covers; otherwise when it does not follow a space.
fn token_scores<'a>(
    enc: &Encoded,
    probs: &'a [f32],
    n_labels: usize,
    text: &str,
    tokenizer: &Tokenizer,
    has_prefix: bool,
    unk: Option<u32>,
) -> Vec<TokenScores<'a>> {
    let e = &enc.encoding;
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::with_capacity(e.len());
    for (t, ((&id, &(start, end)), &special)) in e
        .get_ids()
        .iter()
        .zip(e.get_offsets())
        .zip(e.get_special_tokens_mask())
        .enumerate()
    {
        if special == 1 {
            continue;
        }
        let (start, end) = (start.min(chars.len()), end.min(chars.len()));
        let is_subword = if Some(id) == unk {
            false
        } else if has_prefix {
            let word_len = tokenizer.id_to_token(id).map_or(0, |w| w.chars().count());
            word_len != end.saturating_sub(start)
        } else {
            start > 0 && !chars[start - 1..(start + 1).min(chars.len())].contains(&' ')
        };
        out.push(TokenScores {
            scores: &probs[t * n_labels..(t + 1) * n_labels],
            start,
            end,
            is_subword,
        });
    }
    out
}
