//! The encoder stack: embeddings, then N transformer layers (post-LayerNorm, as BERT, RoBERTa
//! and DistilBERT all are), over a packed batch of variable-length sequences. No padding is
//! ever materialised: the GEMMs see all tokens of the batch as one matrix, attention runs per
//! sequence.

use crate::error::{Result, SampError};
use crate::kernels;
use crate::kernels::int8::{ActScale, QActs};
use crate::model::config::{Arch, ModelConfig};
use crate::model::linear::Linear;
use crate::model::weights::Weights;
use crate::quant::plan::{Gemm, Precision};

/// Token ids of several sequences laid end to end.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// Cumulative starts: sequence `i` is tokens `starts[i]..starts[i + 1]`.
    pub starts: Vec<usize>,
}

impl Batch {
    pub fn new() -> Self {
        Batch {
            starts: vec![0],
            ..Default::default()
        }
    }

    pub fn push(&mut self, ids: &[u32], type_ids: &[u32]) {
        self.ids.extend_from_slice(ids);
        self.type_ids.extend_from_slice(type_ids);
        self.starts.push(self.ids.len());
    }

    pub fn len(&self) -> usize {
        self.starts.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn tokens(&self) -> usize {
        self.ids.len()
    }

    pub fn seq(&self, i: usize) -> std::ops::Range<usize> {
        self.starts[i]..self.starts[i + 1]
    }
}

struct Embeddings {
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Option<Vec<f32>>,
    ln_gamma: Vec<f32>,
    ln_beta: Vec<f32>,
}

impl Embeddings {
    fn load(w: &Weights, cfg: &ModelConfig) -> Result<Self> {
        let h = cfg.hidden;
        let token_type = if cfg.type_vocab_size > 0 {
            Some(w.get(
                "embeddings.token_type_embeddings.weight",
                &[cfg.type_vocab_size, h],
            )?)
        } else {
            None
        };
        Ok(Embeddings {
            word: w.get("embeddings.word_embeddings.weight", &[cfg.vocab_size, h])?,
            position: w.get(
                "embeddings.position_embeddings.weight",
                &[cfg.max_position_embeddings, h],
            )?,
            token_type,
            ln_gamma: w.get("embeddings.LayerNorm.weight", &[h])?,
            ln_beta: w.get("embeddings.LayerNorm.bias", &[h])?,
        })
    }

    /// Refuse sequences over the position limit and ids outside the vocabulary.
    fn check(cfg: &ModelConfig, batch: &Batch) -> Result<()> {
        for s in 0..batch.len() {
            let len = batch.seq(s).len();
            if len > cfg.position_limit() {
                return Err(SampError::invalid(
                    format!("texts[{s}]"),
                    format!(
                        "{len} tokens, over the model's limit of {}",
                        cfg.position_limit()
                    ),
                ));
            }
        }
        if let Some(&id) = batch.ids.iter().find(|&&id| id as usize >= cfg.vocab_size) {
            return Err(SampError::invalid(
                "token id",
                format!("{id} is outside the vocabulary of {}", cfg.vocab_size),
            ));
        }
        Ok(())
    }

    fn forward(&self, cfg: &ModelConfig, batch: &Batch) -> Result<Vec<f32>> {
        Self::check(cfg, batch)?;
        let h = cfg.hidden;
        let mut x = vec![0.0f32; batch.tokens() * h];
        for s in 0..batch.len() {
            for (p, t) in batch.seq(s).enumerate() {
                let id = batch.ids[t] as usize;
                let row = &mut x[t * h..(t + 1) * h];
                let pos = (p + cfg.position_offset()) * h;
                row.copy_from_slice(&self.word[id * h..(id + 1) * h]);
                row.iter_mut()
                    .zip(&self.position[pos..pos + h])
                    .for_each(|(v, &e)| *v += e);
                if let Some(tt) = &self.token_type {
                    let ty = (batch.type_ids[t] as usize).min(cfg.type_vocab_size - 1);
                    row.iter_mut()
                        .zip(&tt[ty * h..(ty + 1) * h])
                        .for_each(|(v, &e)| *v += e);
                }
            }
        }
        kernels::layer_norm(
            &mut x,
            None,
            &self.ln_gamma,
            &self.ln_beta,
            cfg.layer_norm_eps,
        );
        Ok(x)
    }
}

/// Tensor names of one layer's parts, per architecture.
struct LayerNames {
    q: String,
    k: String,
    v: String,
    out: String,
    ln1: String,
    up: String,
    down: String,
    ln2: String,
}

impl LayerNames {
    fn new(arch: Arch, i: usize) -> Self {
        let (p, parts) = match arch {
            Arch::Bert | Arch::Roberta => (
                format!("encoder.layer.{i}."),
                [
                    "attention.self.query",
                    "attention.self.key",
                    "attention.self.value",
                    "attention.output.dense",
                    "attention.output.LayerNorm",
                    "intermediate.dense",
                    "output.dense",
                    "output.LayerNorm",
                ],
            ),
            Arch::DistilBert => (
                format!("transformer.layer.{i}."),
                [
                    "attention.q_lin",
                    "attention.k_lin",
                    "attention.v_lin",
                    "attention.out_lin",
                    "sa_layer_norm",
                    "ffn.lin1",
                    "ffn.lin2",
                    "output_layer_norm",
                ],
            ),
        };
        let n = |s: &str| format!("{p}{s}");
        LayerNames {
            q: n(parts[0]),
            k: n(parts[1]),
            v: n(parts[2]),
            out: n(parts[3]),
            ln1: n(parts[4]),
            up: n(parts[5]),
            down: n(parts[6]),
            ln2: n(parts[7]),
        }
    }
}

pub struct LayerNorm {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
}

impl LayerNorm {
    fn load(w: &Weights, name: &str, h: usize) -> Result<Self> {
        Ok(LayerNorm {
            gamma: w.get(&format!("{name}.weight"), &[h])?,
            beta: w.get(&format!("{name}.bias"), &[h])?,
        })
    }
}

/// One transformer layer: fused QKV projection, attention, output projection + residual +
/// LayerNorm, FFN up + activation, FFN down + residual + LayerNorm.
pub struct Layer {
    qkv: Linear,
    out: Linear,
    ln1: LayerNorm,
    up: Linear,
    down: Linear,
    ln2: LayerNorm,
}

impl Layer {
    fn load(w: &Weights, cfg: &ModelConfig, i: usize) -> Result<Self> {
        let n = LayerNames::new(cfg.arch, i);
        let (h, f) = (cfg.hidden, cfg.intermediate);
        Ok(Layer {
            qkv: Linear::concat(w, &[&n.q, &n.k, &n.v], h, h)?,
            out: Linear::load(w, &n.out, h, h)?,
            ln1: LayerNorm::load(w, &n.ln1, h)?,
            up: Linear::load(w, &n.up, h, f)?,
            down: Linear::load(w, &n.down, f, h)?,
            ln2: LayerNorm::load(w, &n.ln2, h)?,
        })
    }

    /// The LayerNorms after attention and after the FFN.
    pub fn norms(&self) -> [&LayerNorm; 2] {
        [&self.ln1, &self.ln2]
    }

    pub fn linear(&self, g: Gemm) -> &Linear {
        [&self.qkv, &self.out, &self.up, &self.down][g as usize]
    }

    pub fn linear_mut(&mut self, g: Gemm) -> &mut Linear {
        match g {
            Gemm::Qkv => &mut self.qkv,
            Gemm::AttnOut => &mut self.out,
            Gemm::FfnUp => &mut self.up,
            Gemm::FfnDown => &mut self.down,
        }
    }

    /// `x` `[T, H]` in, replaced by the layer's output.
    fn forward(&self, cfg: &ModelConfig, x: &mut Vec<f32>, starts: &[usize]) {
        self.run(cfg, x, starts, |_| {});
    }

    /// As `forward`, returning the time each stage took (for profiling one layer).
    pub fn forward_stages(
        &self,
        cfg: &ModelConfig,
        x: &mut Vec<f32>,
        starts: &[usize],
    ) -> Vec<(&'static str, std::time::Duration)> {
        let mut out = Vec::new();
        let mut last = std::time::Instant::now();
        self.run(cfg, x, starts, |stage| {
            let now = std::time::Instant::now();
            out.push((stage, now - last));
            last = now;
        });
        out
    }

    /// The layer, calling `mark(stage)` as each stage ends.
    fn run(
        &self,
        cfg: &ModelConfig,
        x: &mut Vec<f32>,
        starts: &[usize],
        mut mark: impl FnMut(&'static str),
    ) {
        let t = *starts.last().unwrap_or(&0);
        let (h, f, eps) = (cfg.hidden, cfg.intermediate, cfg.layer_norm_eps);
        SCRATCH.with_borrow_mut(|s| {
            // Every element of each buffer is written before it is read (GEMMs without
            // accumulation and attention cover their whole outputs; x1 is a copy of x), so
            // resizing without clearing is enough: no per-layer allocation, zeroing or page
            // faults on the hot path.
            let qkv = sized(&mut s.qkv, t * 3 * h);
            self.qkv.forward(x, t, qkv, false, None);
            mark("qkv gemm");
            let ctx = sized(&mut s.ctx, t * h);
            kernels::attention(qkv, ctx, starts, cfg.heads, cfg.head_dim());
            mark("attention core");

            // Attention output: residual + ctx · Wo + b, then LayerNorm.
            let x1 = sized(&mut s.x1, t * h);
            x1.copy_from_slice(&x[..t * h]);
            self.out.forward(ctx, t, x1, true, None);
            mark("attn-out gemm + residual");
            kernels::layer_norm(x1, None, &self.ln1.gamma, &self.ln1.beta, eps);
            mark("layernorm 1");

            let up = sized(&mut s.up, t * f);
            let act = Some(cfg.activation);
            match self.down.fused_input() {
                // The down projection's INT8 input is made by the up projection (in its
                // epilogue for a static scale, block by block for dynamic ones where it can).
                Some(scale) => {
                    let q = &mut s.up_int8;
                    self.up.forward_quantized(x1, t, up, act, scale, q);
                    mark("ffn-up gemm + gelu");
                    self.down.forward_int8(q, t, x1, true, None);
                }
                None => {
                    self.up.forward(x1, t, up, false, act);
                    mark("ffn-up gemm + gelu");
                    self.down.forward(up, t, x1, true, None);
                }
            }
            mark("ffn-down gemm + residual");
            kernels::layer_norm(x1, None, &self.ln2.gamma, &self.ln2.beta, eps);
            // The layer's output becomes x; x's old buffer is the next layer's x1.
            s.x1.truncate(t * h);
            x.truncate(t * h);
            std::mem::swap(x, &mut s.x1);
            mark("layernorm 2");
        });
    }
}

/// Activation buffers of one layer pass, kept per compute thread across layers and batches.
#[derive(Default)]
struct Scratch {
    qkv: Vec<f32>,
    ctx: Vec<f32>,
    x1: Vec<f32>,
    up: Vec<f32>,
    /// `up` as the down projection's INT8 input, where it is made in the up projection.
    up_int8: QActs,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// `v` as exactly `n` elements, growing it (zero-filled) only when it is too short; the
/// contents are stale and must be overwritten by the caller.
fn sized(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// Borrowed embedding tables, row-major `[rows, H]`.
pub struct EmbeddingTables<'a> {
    pub word: &'a [f32],
    pub position: &'a [f32],
    pub token_type: Option<&'a [f32]>,
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
}

/// Embeddings plus the layer stack of one checkpoint.
pub struct Encoder {
    pub cfg: ModelConfig,
    embeddings: Embeddings,
    layers: Vec<Layer>,
}

impl Encoder {
    pub fn load(w: &Weights, cfg: &ModelConfig) -> Result<Self> {
        let embeddings = Embeddings::load(w, cfg)?;
        let layers = (0..cfg.layers)
            .map(|i| Layer::load(w, cfg, i))
            .collect::<Result<Vec<_>>>()?;
        Ok(Encoder {
            cfg: cfg.clone(),
            embeddings,
            layers,
        })
    }

    /// Every layer's [`Linear::prepare`] for passes of up to `max_rows` tokens (the FFN up
    /// projection's races for where its outputs go: the down projection's INT8 input when that
    /// has dynamic scales, as [`Layer`]'s forward pass hands them over).
    pub fn prepare_kernels(&self, max_rows: usize) {
        use crate::kernels::onednn::Output;
        for layer in &self.layers {
            let dynamic = layer.down.fused_input() == Some(ActScale::Dynamic);
            for g in Gemm::ALL {
                let out = match g {
                    Gemm::FfnUp if dynamic => Output::DynamicInt8,
                    _ => Output::Floats,
                };
                layer.linear(g).prepare(max_rows, out);
            }
        }
    }

    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    pub fn layers_mut(&mut self) -> &mut [Layer] {
        &mut self.layers
    }

    /// The embedding tables and their LayerNorm, for uploading to another device.
    pub fn embedding_tables(&self) -> EmbeddingTables<'_> {
        let e = &self.embeddings;
        EmbeddingTables {
            word: &e.word,
            position: &e.position,
            token_type: e.token_type.as_deref(),
            gamma: &e.ln_gamma,
            beta: &e.ln_beta,
        }
    }

    /// Check a batch as the embedding step does (lengths, ids), for a pass on another device.
    pub fn check(&self, batch: &Batch) -> Result<()> {
        check(&self.cfg, batch)
    }

    /// Position id of every token of the batch.
    pub fn positions(&self, batch: &Batch) -> Vec<u32> {
        positions(&self.cfg, batch)
    }

    /// The embedding output `[T, H]` (the first layer's input).
    pub fn embed(&self, batch: &Batch) -> Result<Vec<f32>> {
        self.embeddings.forward(&self.cfg, batch)
    }

    /// Run layer `i` alone on `x` (for timing each layer in each precision).
    pub fn forward_layer(&self, i: usize, x: &mut Vec<f32>, batch: &Batch) {
        self.layers[i].forward(&self.cfg, x, &batch.starts);
    }

    /// Run layer `i` alone on `x` and return each stage's time.
    pub fn profile_layer(
        &self,
        i: usize,
        x: &mut Vec<f32>,
        batch: &Batch,
    ) -> Vec<(&'static str, std::time::Duration)> {
        self.layers[i].forward_stages(&self.cfg, x, &batch.starts)
    }

    /// Hidden states `[T, H]` of the last layer for every token of the batch.
    pub fn forward(&self, batch: &Batch) -> Result<Vec<f32>> {
        let mut x = self.embeddings.forward(&self.cfg, batch)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let _span = tracing::trace_span!("layer", i).entered();
            layer.forward(&self.cfg, &mut x, &batch.starts);
        }
        Ok(x)
    }
}

/// The precisions the CPU encoder runs (float16 is a GPU precision).
pub const CPU_PRECISIONS: &[Precision] =
    &[Precision::Float32, Precision::Bfloat16, Precision::Int8];

/// Whether `batch` fits a model with `cfg` (token ids, type ids, positions), before a pass.
pub fn check(cfg: &ModelConfig, batch: &Batch) -> Result<()> {
    Embeddings::check(cfg, batch)
}

/// The position id of every token of `batch`.
pub fn positions(cfg: &ModelConfig, batch: &Batch) -> Vec<u32> {
    (0..batch.len())
        .flat_map(|s| (0..batch.seq(s).len()).map(|p| (p + cfg.position_offset()) as u32))
        .collect()
}

/// Hidden states, or an error at the first non-finite value.
pub fn finite(states: Vec<f32>) -> Result<Vec<f32>> {
    match states.iter().position(|x| !x.is_finite()) {
        None => Ok(states),
        Some(index) => Err(SampError::NonFinite { index }),
    }
}
