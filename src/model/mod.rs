//! A loaded model: config, tokenizer, encoder and task head, and the three pipeline entry
//! points (`embed`, `classify`, `tag`). Loads a Hugging Face model directory; never imports
//! tokio, tonic or proto types.

pub mod config;
pub mod encoder;
pub mod heads;
pub mod linear;
pub mod weights;

use std::path::{Path, PathBuf};

use crate::batching::BatchPolicy;
use crate::error::{Result, SampError};
use crate::tokenize::{Encoded, Input, Tokenizer, Truncation};
use config::{ModelConfig, Pooling, SentenceConfig, Task};
use encoder::{Batch, Encoder};
use heads::classify::ClassifyHead;
use heads::tag::Aggregation;
pub use heads::{Classification, Embedding, LabelScore, Tagging};
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

/// What runs the encoder passes of the pipeline calls: the model's own CPU encoder
/// ([`Model::forward`]) or an engine the caller placed it on.
pub type Forward<'a> = &'a dyn Fn(&Batch) -> Result<Vec<f32>>;

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
    /// How the pipeline calls split their inputs into passes (the batch loop's rule).
    passes: BatchPolicy,
    plan: Plan,
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
            passes: BatchPolicy {
                max_batch_tokens: opts
                    .max_batch_tokens
                    .unwrap_or(BatchPolicy::default().max_batch_tokens),
                ..BatchPolicy::default()
            },
            plan,
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
            .and_then(|()| plan.check_precisions("CPU", encoder::CPU_PRECISIONS))
            .map_err(|e| SampError::malformed(path, e.to_string()))?;
        let int8 = path.with_file_name(artifact::INT8_FILE);
        if int8.is_file() {
            let mut saved = artifact::read(&int8)?;
            for (i, layer) in self.encoder.layers_mut().iter_mut().enumerate() {
                for g in Gemm::ALL {
                    let Some(q) = saved.remove(&artifact::tensor_name(i, g.name())) else {
                        continue;
                    };
                    let want = plan.bits(i, g);
                    if q.bits != want {
                        // A preset written beside a plan with narrowed layers: its own width
                        // is made from the float weights (the same integers a file of that
                        // width would hold).
                        tracing::debug!(
                            layer = i,
                            gemm = g.name(),
                            saved = q.bits,
                            plan = want,
                            "INT8 weights of another width in the file; made from the float ones"
                        );
                        continue;
                    }
                    layer.linear_mut(g).set_qweights(q).map_err(|e| {
                        SampError::malformed(&int8, format!("layers.{i}.{}: {e}", g.name()))
                    })?;
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
            .and_then(|()| plan.check_precisions("CPU", encoder::CPU_PRECISIONS))
            .map_err(|e| SampError::invalid("plan", e.to_string()))?;
        for (i, (layer, lp)) in self
            .encoder
            .layers_mut()
            .iter_mut()
            .zip(&plan.layers)
            .enumerate()
        {
            for g in Gemm::ALL {
                let gp = lp.get(g);
                let act = match (gp.precision, plan.activations) {
                    (Precision::Int8, ActMode::Dynamic) => Some(ActScale::Dynamic),
                    (Precision::Int8, ActMode::Static) => {
                        Some(ActScale::Static(gp.input_scale.expect("validated")))
                    }
                    _ => None,
                };
                layer.linear_mut(g).set_weight_bits(plan.bits(i, g));
                layer.linear_mut(g).set_int8(act);
                layer
                    .linear_mut(g)
                    .set_bf16(gp.precision == Precision::Bfloat16);
            }
        }
        self.plan = plan.clone();
        Ok(())
    }

    /// The plan this model runs (all float32 unless one was applied).
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The most tokens one encoder pass takes (`max_batch_tokens`).
    pub fn max_pass_tokens(&self) -> usize {
        self.passes.max_batch_tokens
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
            let encoded = self.tokenize(inputs, truncation)?;
            self.encode_states(&encoded, &|b| self.forward(b), |_, _| Ok(()))
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
            Err(self.wrong_task(task))
        }
    }

    fn wrong_task(&self, task: Task) -> SampError {
        SampError::WrongTask {
            model: self.name.clone(),
            task: task.name(),
            has: self.task.name(),
        }
    }

    /// Tokenize inputs (in parallel, order kept). The first half of every pipeline call; the
    /// server runs it on its tokenizer pool, away from the compute thread.
    pub fn tokenize(&self, inputs: &[Input], truncation: Truncation) -> Result<Vec<Encoded>> {
        self.tokenizer.encode_all(inputs, truncation)
    }

    /// Run the encoder over encoded inputs, splitting into passes of at most
    /// `max_batch_tokens`, and hand each sequence's `[len, H]` states to `f` in order.
    pub fn encode_states<E: std::borrow::Borrow<Encoded>>(
        &self,
        encoded: &[E],
        forward: Forward<'_>,
        mut f: impl FnMut(usize, &[f32]) -> Result<()>,
    ) -> Result<()> {
        let h = self.cfg.hidden;
        let mut i = 0;
        while i < encoded.len() {
            let mut batch = Batch::new();
            let first = i;
            while i < encoded.len()
                && self
                    .passes
                    .pass_takes(batch.len(), batch.tokens(), encoded[i].borrow().len())
            {
                let e = &encoded[i].borrow().encoding;
                batch.push(e.get_ids(), e.get_type_ids());
                i += 1;
            }
            let states = forward(&batch)?;
            for s in 0..batch.len() {
                let r = batch.seq(s);
                f(first + s, &states[r.start * h..r.end * h])?;
            }
        }
        Ok(())
    }

    /// Last-layer hidden states `[T, H]` of one packed batch on the CPU encoder. Non-finite
    /// states (NaN or infinite weights, an overflow) are an error, never an answer.
    pub fn forward(&self, batch: &Batch) -> Result<Vec<f32>> {
        encoder::finite(self.encoder.forward(batch)?)
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
        heads::embed::embed_one(states, enc, self.cfg.hidden, &self.sentence, opts)
    }

    /// Classify head on one sequence's states.
    pub fn classify_one(&self, states: &[f32], enc: &Encoded) -> Result<Classification> {
        let head = self.classify_head()?;
        Ok(head.classify_one(&states[..self.cfg.hidden], enc, &self.labels))
    }

    /// Tag head on one sequence's states; `text` is the original input.
    pub fn tag_one(
        &self,
        states: &[f32],
        enc: &Encoded,
        text: &str,
        aggregation: Aggregation,
    ) -> Result<Tagging> {
        let classifier = self.tag_head()?;
        let tagger = heads::tag::Tagger {
            classifier,
            labels: &self.labels,
            tokenizer: &self.tokenizer,
        };
        Ok(tagger.tag_one(states, enc, text, aggregation))
    }

    fn classify_head(&self) -> Result<&ClassifyHead> {
        match &self.head {
            Head::Classify(h) => Ok(h),
            _ => Err(self.wrong_task(Task::Classify)),
        }
    }

    fn tag_head(&self) -> Result<&Linear> {
        match &self.head {
            Head::Tag(h) => Ok(h),
            _ => Err(self.wrong_task(Task::Tag)),
        }
    }

    pub fn embed(&self, inputs: &[Input], opts: &EmbedOptions) -> Result<Vec<Embedding>> {
        self.embed_on(&|b| self.forward(b), inputs, opts)
    }

    /// [`Model::embed`] with the encoder passes run by `forward` (an engine's).
    pub fn embed_on(
        &self,
        forward: Forward<'_>,
        inputs: &[Input],
        opts: &EmbedOptions,
    ) -> Result<Vec<Embedding>> {
        self.check_embed(opts)?;
        let encoded = self.tokenize(inputs, opts.truncation)?;
        let mut out = Vec::with_capacity(inputs.len());
        self.encode_states(&encoded, forward, |i, states| {
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
        self.classify_on(&|b| self.forward(b), inputs, truncation)
    }

    /// [`Model::classify`] with the encoder passes run by `forward` (an engine's).
    pub fn classify_on(
        &self,
        forward: Forward<'_>,
        inputs: &[Input],
        truncation: Truncation,
    ) -> Result<Vec<Classification>> {
        self.require(Task::Classify)?;
        let encoded = self.tokenize(inputs, truncation)?;
        let mut out = Vec::with_capacity(inputs.len());
        self.encode_states(&encoded, forward, |i, states| {
            out.push(self.classify_one(states, &encoded[i])?);
            Ok(())
        })?;
        Ok(out)
    }

    /// Raw per-token logits of the tag head, `[tokens × labels]` per input (special tokens
    /// included), for evaluation and fidelity checks.
    pub fn token_logits(&self, inputs: &[Input], truncation: Truncation) -> Result<Vec<Vec<f32>>> {
        let tag = self.tag_head()?;
        let encoded = self.tokenize(inputs, truncation)?;
        let mut out = Vec::with_capacity(inputs.len());
        self.encode_states(&encoded, &|b| self.forward(b), |i, states| {
            out.push(heads::tag::token_logits(
                tag,
                states,
                encoded[i].len(),
                self.labels.len(),
            ));
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
        self.tag_on(&|b| self.forward(b), texts, aggregation, truncation)
    }

    /// [`Model::tag`] with the encoder passes run by `forward` (an engine's).
    pub fn tag_on(
        &self,
        forward: Forward<'_>,
        texts: &[String],
        aggregation: Aggregation,
        truncation: Truncation,
    ) -> Result<Vec<Tagging>> {
        self.require(Task::Tag)?;
        let inputs: Vec<Input> = texts.iter().map(|t| Input::Single(t.clone())).collect();
        let encoded = self.tokenize(&inputs, truncation)?;
        let mut out = Vec::with_capacity(texts.len());
        self.encode_states(&encoded, forward, |i, states| {
            out.push(self.tag_one(states, &encoded[i], &texts[i], aggregation)?);
            Ok(())
        })?;
        Ok(out)
    }
}
