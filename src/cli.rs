//! Command-line interface: clap-derive subcommands and the one-shot commands (`embed`,
//! `classify`, `tag`) that load a model, run it on texts from the arguments or a JSON Lines
//! file, and print one JSON object per input.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::error::SampError;
use crate::model::config::{Pooling, Task};
use crate::model::heads::tag::Aggregation;
use crate::model::{EmbedOptions, LoadOptions, Model};
use crate::tokenize::{Input, Truncation};

#[derive(Debug, Parser)]
#[command(
    name = "samp",
    version,
    about = "Serve BERT-class encoders with Self-Adaptive Mixed-Precision"
)]
pub struct Cli {
    /// Compute threads (default: all cores).
    #[arg(long, global = true, env = "SAMP_THREADS")]
    pub threads: Option<usize>,

    /// Log format.
    #[arg(long, global = true, env = "SAMP_LOG_FORMAT", default_value = "human", value_parser = ["human", "json"])]
    pub log_format: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Embed texts with a model; prints one JSON object per text.
    Embed(EmbedArgs),
    /// Classify texts (or text pairs with --pairs); prints one JSON object per input.
    Classify(ClassifyArgs),
    /// Tag entities in texts; prints one JSON object per text.
    Tag(TagArgs),
    /// Measure in-process throughput on a file of texts; prints one JSON object.
    Bench(BenchArgs),
    /// Serve models over gRPC (samp.v1, health, reflection) with Prometheus metrics.
    Serve(ServeArgs),
    /// Call a running server; prints one JSON object per input.
    Client(ClientArgs),
    /// Pick the fastest per-layer INT8/float plan that meets an accuracy requirement (SAMP).
    Quantize(QuantizeArgs),
    /// Print the metrics of one precision plan on a data file.
    Eval(EvalArgs),
    /// Load a running server (like ghz): throughput, latency percentiles, status codes.
    Loadgen(LoadgenArgs),
}

#[derive(Debug, Args)]
pub struct LoadgenArgs {
    /// Server address.
    #[arg(long, env = "SAMP_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// RPC to call.
    #[arg(long, value_enum, default_value = "embed")]
    pub rpc: crate::server::loadgen::Rpc,
    /// Model name (optional when one loaded model does the task).
    #[arg(long, default_value = "")]
    pub model: String,
    /// Variant (default: the model's default).
    #[arg(long, default_value = "")]
    pub variant: String,
    /// Texts to send, one per line or JSON Lines; requests cycle through them.
    #[arg(long)]
    pub data: PathBuf,
    /// Texts per request.
    #[arg(long, default_value_t = 1)]
    pub inputs_per_request: usize,
    /// Requests in flight at once (workers).
    #[arg(long, short = 'c', default_value_t = 16)]
    pub concurrency: usize,
    /// HTTP/2 connections the workers share.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Stop after this many requests [default: 1000 unless --duration is given].
    #[arg(long, short = 'n')]
    pub requests: Option<usize>,
    /// Stop after this many seconds.
    #[arg(long, short = 'z')]
    pub duration: Option<f64>,
    /// Fixed rate in requests per second (open loop); default: as fast as the workers go.
    #[arg(long)]
    pub rps: Option<f64>,
    /// Per-request deadline in milliseconds (sent as grpc-timeout).
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Print the report as JSON instead of the summary.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// Float model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Calibration texts (JSON Lines: strings or {"text": ..}; or one text per line).
    #[arg(long)]
    pub calib: PathBuf,
    /// Evaluation data (JSON Lines, with "label" or "score" for labelled metrics); without it
    /// the calibration texts are used and the metric is fidelity to the float model.
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Metric to optimise: accuracy, macro_f1, spearman, agreement, entity_f1, mean_cosine or
    /// worst_cosine [default: labelled when the data has labels/scores, else fidelity].
    #[arg(long)]
    pub metric: Option<String>,
    /// Largest acceptable drop from the float model's score (in the metric's units, e.g. 0.01
    /// for one point of accuracy).
    #[arg(long, conflicts_with = "min_score")]
    pub max_drop: Option<f64>,
    /// Lowest acceptable score.
    #[arg(long)]
    pub min_score: Option<f64>,
    /// Layer modes the search may use.
    #[arg(long, value_enum, default_value = "auto")]
    pub mode: crate::quant::search::SearchMode,
    /// Calibration: max, percentile, percentile:P, mse, or auto (the best of the three on the
    /// fully quantized model).
    #[arg(long, default_value = "auto")]
    pub calibration: String,
    /// Activation scales: static (calibrated), dynamic (per token at run time), or auto (the
    /// better of the two on the fully quantized model).
    #[arg(long, default_value = "auto", value_parser = ["auto", "static", "dynamic"])]
    pub activations: String,
    /// A plan meets the requirement only with this many bootstrap standard errors of its drop
    /// to spare (guards against choosing on the noise of a finite evaluation set; 0 = none).
    #[arg(long, default_value_t = 2.0)]
    pub margin_se: f64,
    /// Use at most this many calibration texts.
    #[arg(long, default_value_t = 512)]
    pub calib_limit: usize,
    /// Texts per batch when timing layers.
    #[arg(long, default_value_t = 32)]
    pub timing_batch: usize,
    /// Output directory: the model files, samp-plan.json (the choice), the presets
    /// samp-plan.{ffn-only,fully-quant,fully-quant-static,fully-quant-dynamic}.json,
    /// samp-int8.safetensors and report.{json,md,svg}.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Precision plan: a file, or `float32` [default: DIR/samp-plan.json when present].
    #[arg(long)]
    pub plan: Option<String>,
    /// Data (JSON Lines as for `samp quantize --eval`).
    #[arg(long)]
    pub data: PathBuf,
    /// Metric to report first (all available ones are printed).
    #[arg(long)]
    pub metric: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file (models, batching, limits, ports); flags override it.
    #[arg(long, env = "SAMP_CONFIG")]
    pub config: Option<PathBuf>,
    /// gRPC address [default: 0.0.0.0:50051].
    #[arg(long, env = "SAMP_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// Prometheus metrics address (HTTP) [default: 0.0.0.0:9090].
    #[arg(long, env = "SAMP_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Model to serve, NAME=DIR or DIR; repeatable [default: models/all-MiniLM-L6-v2].
    #[arg(long = "model", env = "SAMP_MODELS", value_delimiter = ',', value_parser = crate::config::parse_model_arg)]
    pub models: Vec<crate::config::ModelEntry>,
    /// Another variant of a loaded model, MODEL:VARIANT=PLAN (PLAN a samp-plan file or
    /// float32); repeatable. The model's own plan stays its default variant.
    #[arg(long = "variant", env = "SAMP_VARIANTS", value_delimiter = ',', value_parser = crate::config::parse_variant_arg)]
    pub variants: Vec<(String, String, PathBuf)>,
    /// Most tokens in one forward pass.
    #[arg(long, env = "SAMP_MAX_BATCH_TOKENS")]
    pub max_batch_tokens: Option<usize>,
    /// Most inputs in one forward pass.
    #[arg(long, env = "SAMP_MAX_BATCH_SIZE")]
    pub max_batch_size: Option<usize>,
    /// How long a batch waits for more requests, in milliseconds.
    #[arg(long, env = "SAMP_MAX_WAIT_MS")]
    pub max_wait_ms: Option<u64>,
    /// Queued requests per model before new ones get RESOURCE_EXHAUSTED.
    #[arg(long, env = "SAMP_QUEUE_CAPACITY")]
    pub queue_capacity: Option<usize>,
    /// Longest drain after SIGTERM/SIGINT, in seconds.
    #[arg(long, env = "SAMP_SHUTDOWN_GRACE_SECONDS")]
    pub shutdown_grace_seconds: Option<u64>,
    /// Share of requests to quantized variants re-run on the float32 variant for online
    /// fidelity metrics [default: 0.01].
    #[arg(long, env = "SAMP_FIDELITY_SAMPLE_RATE")]
    pub fidelity_sample_rate: Option<f64>,
    /// Validate the configuration (file, flags and env together), print it as JSON and exit
    /// without loading models or binding ports.
    #[arg(long)]
    pub check: bool,
}

impl ServeArgs {
    /// The file (if any) with the flags on top, validated.
    pub fn config(&self) -> anyhow::Result<crate::config::ServeConfig> {
        let mut c = match &self.config {
            Some(p) => crate::config::ServeConfig::from_file(p)?,
            None => Default::default(),
        };
        if let Some(v) = self.listen {
            c.listen = v;
        }
        if let Some(v) = self.metrics_listen {
            c.metrics_listen = v;
        }
        if !self.models.is_empty() {
            c.models = self.models.clone();
        }
        if !self.variants.is_empty() && c.models.is_empty() {
            c = c.validate()?;
        }
        for (model, variant, plan) in &self.variants {
            let names: Vec<String> = c.models.iter().map(|m| m.name.clone()).collect();
            let entry = c
                .models
                .iter_mut()
                .find(|m| m.name == *model)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "--variant {model}:{variant}: no model {model:?} (models: {names:?})"
                    )
                })?;
            entry.variants.insert(variant.clone(), plan.clone());
        }
        if let Some(v) = self.max_batch_tokens {
            c.batching.max_batch_tokens = v;
        }
        if let Some(v) = self.max_batch_size {
            c.batching.max_batch_size = v;
        }
        if let Some(v) = self.max_wait_ms {
            c.batching.max_wait = std::time::Duration::from_millis(v);
        }
        if let Some(v) = self.queue_capacity {
            c.batching.queue_capacity = v;
        }
        if let Some(v) = self.shutdown_grace_seconds {
            c.shutdown_grace_seconds = v;
        }
        if let Some(v) = self.fidelity_sample_rate {
            c.fidelity_sample_rate = v;
        }
        c.validate()
    }
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Server address.
    #[arg(long, env = "SAMP_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// Model name (optional when one loaded model does the task).
    #[arg(long, default_value = "")]
    pub model: String,
    /// Give up after this long (connecting included), in milliseconds.
    #[arg(long, env = "SAMP_CLIENT_TIMEOUT_MS", default_value_t = 30_000)]
    pub timeout_ms: u64,
    #[command(subcommand)]
    pub call: ClientCall,
}

#[derive(Debug, Subcommand)]
pub enum ClientCall {
    /// Embed texts.
    Embed {
        texts: Vec<String>,
        /// Keep only the first N dimensions.
        #[arg(long, default_value_t = 0)]
        dims: u32,
    },
    /// Classify texts (or pairs with --pairs).
    Classify {
        texts: Vec<String>,
        #[arg(long)]
        pairs: bool,
    },
    /// Tag entities.
    Tag { texts: Vec<String> },
    /// List the loaded models.
    Models,
    /// grpc.health.v1 check: exits 0 when the service is SERVING, 1 otherwise (for container
    /// health checks and exec probes).
    Health {
        /// Service to check ("" = the server as a whole, or samp.v1.Samp).
        #[arg(long, default_value = "")]
        service: String,
    },
}

#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Hugging Face model directory (config.json, tokenizer.json, model.safetensors).
    #[arg(long, env = "SAMP_MODEL")]
    pub model: PathBuf,

    /// Texts to process.
    pub texts: Vec<String>,

    /// JSON Lines file of inputs: each line a JSON string, or {"text": ..., "text_pair": ...}.
    #[arg(long)]
    pub input: Option<PathBuf>,

    /// Refuse texts longer than the model's limit instead of truncating them.
    #[arg(long)]
    pub no_truncate: bool,

    /// Precision plan: a file, or `float32` [default: DIR/samp-plan.json when present].
    #[arg(long)]
    pub plan: Option<String>,
}

impl ModelArgs {
    fn load_options(&self) -> LoadOptions {
        LoadOptions {
            plan: crate::quant::plan::resolve(&self.model, self.plan.as_deref()),
            ..Default::default()
        }
    }

    fn truncation(&self) -> Truncation {
        if self.no_truncate {
            Truncation::Error
        } else {
            Truncation::Truncate
        }
    }
}

#[derive(Debug, Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Pooling (default: from the sentence-transformers files, else mean).
    #[arg(long)]
    pub pooling: Option<Pooling>,
    /// L2-normalise (default: as the model's modules.json says).
    #[arg(long)]
    pub normalize: Option<bool>,
    /// Keep only the first N dimensions.
    #[arg(long)]
    pub dims: Option<usize>,
}

#[derive(Debug, Args)]
pub struct ClassifyArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Take the positional texts two at a time as (sentence A, sentence B) pairs.
    #[arg(long)]
    pub pairs: bool,
}

#[derive(Debug, Args)]
pub struct TagArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// How sub-words and B-/I- tags merge into entities.
    #[arg(long, default_value = "simple")]
    pub aggregation: Aggregation,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Hugging Face model directory.
    #[arg(long, env = "SAMP_MODEL")]
    pub model: PathBuf,
    /// Texts, one per line (or JSON Lines as for --input of the other commands).
    #[arg(long)]
    pub input: PathBuf,
    /// Texts per call.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Use only the first N texts of the file.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Keep running passes over the texts for at least this long.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Pipeline to run (default: the model's own head).
    #[arg(long)]
    pub task: Option<Task>,
    /// Precision plan: a file, or `float32` [default: DIR/samp-plan.json when present].
    #[arg(long)]
    pub plan: Option<String>,
    /// Also time each stage of encoder layer 0 on the first batch (GEMMs, attention,
    /// LayerNorm) and report the split.
    #[arg(long)]
    pub profile: bool,
}

/// Time each stage of layer 0 on one batch: the mean of 20 runs after a warm-up.
fn profile_layer(model: &Model, inputs: &[Input]) -> anyhow::Result<serde_json::Value> {
    let encoded = model.encode(inputs, Truncation::Truncate)?;
    let mut batch = crate::model::encoder::Batch::new();
    for e in &encoded {
        batch.push(e.encoding.get_ids(), e.encoding.get_type_ids());
    }
    let x0 = model.encoder().embed(&batch)?;
    let mut sums: Vec<(&str, f64)> = Vec::new();
    let runs = 20;
    for r in 0..=runs {
        let mut x = x0.clone();
        let stages = model.encoder().profile_layer(0, &mut x, &batch);
        if r == 0 {
            sums = stages.iter().map(|(s, _)| (*s, 0.0)).collect();
            continue;
        }
        for ((_, sum), (_, d)) in sums.iter_mut().zip(&stages) {
            *sum += d.as_secs_f64() * 1000.0 / runs as f64;
        }
    }
    let total: f64 = sums.iter().map(|(_, v)| v).sum();
    Ok(serde_json::json!({
        "batch_texts": inputs.len(),
        "batch_tokens": batch.tokens(),
        "total_ms": total,
        "stages": sums.iter().map(|(s, ms)| serde_json::json!({
            "stage": s, "ms": ms, "share": ms / total
        })).collect::<Vec<_>>(),
    }))
}

/// Read a file of texts: JSON Lines when every line parses as such, else one text per line.
pub fn read_texts(path: &Path) -> Result<Vec<Input>, SampError> {
    read_inputs(path).or_else(|_| {
        let bytes = std::fs::read(path).map_err(|source| SampError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| SampError::malformed(path, format!("invalid UTF-8 ({e})")))?;
        Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(Input::from)
            .collect())
    })
}

/// Read a JSON Lines input file; errors name the line.
pub fn read_inputs(path: &Path) -> Result<Vec<Input>, SampError> {
    Ok(crate::quant::eval::read_examples(path)?
        .into_iter()
        .map(|e| e.input)
        .collect())
}

fn gather(args: &ModelArgs, pairs: bool) -> anyhow::Result<Vec<Input>> {
    let mut inputs = Vec::new();
    if pairs {
        if !args.texts.len().is_multiple_of(2) {
            anyhow::bail!(
                "--pairs needs an even number of texts, got {}",
                args.texts.len()
            );
        }
        for p in args.texts.chunks(2) {
            inputs.push(Input::Pair(p[0].clone(), p[1].clone()));
        }
    } else {
        inputs.extend(args.texts.iter().map(|t| Input::Single(t.clone())));
    }
    if let Some(path) = &args.input {
        inputs.extend(read_inputs(path)?);
    }
    if inputs.is_empty() {
        anyhow::bail!("no input: give texts as arguments or --input FILE.jsonl");
    }
    Ok(inputs)
}

fn print_lines<T: serde::Serialize>(items: &[T]) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for item in items {
        serde_json::to_writer(&mut out, item)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

pub fn run_embed(a: &EmbedArgs) -> anyhow::Result<()> {
    let inputs = gather(&a.model, false)?;
    let model = Model::load(
        &a.model.model,
        &LoadOptions {
            task: Some(Task::Embed),
            pooling: a.pooling,
            plan: crate::quant::plan::resolve(&a.model.model, a.model.plan.as_deref()),
            ..Default::default()
        },
    )?;
    let opts = EmbedOptions {
        normalize: a.normalize,
        dims: a.dims,
        truncation: a.model.truncation(),
    };
    print_lines(&model.embed(&inputs, &opts)?)
}

pub fn run_classify(a: &ClassifyArgs) -> anyhow::Result<()> {
    let inputs = gather(&a.model, a.pairs)?;
    let model = Model::load(&a.model.model, &a.model.load_options())?;
    print_lines(&model.classify(&inputs, a.model.truncation())?)
}

pub fn run_tag(a: &TagArgs) -> anyhow::Result<()> {
    let inputs = gather(&a.model, false)?;
    let texts = inputs
        .into_iter()
        .enumerate()
        .map(|(i, inp)| match inp {
            Input::Single(t) => Ok(t),
            Input::Pair(..) => Err(anyhow::anyhow!(
                "input {i}: tag takes single texts, not pairs"
            )),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let model = Model::load(&a.model.model, &a.model.load_options())?;
    print_lines(&model.tag(&texts, a.aggregation, a.model.truncation())?)
}

pub fn run_bench(a: &BenchArgs) -> anyhow::Result<()> {
    let mut inputs = read_texts(&a.input)?;
    if let Some(n) = a.limit {
        inputs.truncate(n);
    }
    if inputs.is_empty() || a.batch == 0 {
        anyhow::bail!("bench needs at least one text and --batch >= 1");
    }
    let model = Model::load(
        &a.model,
        &LoadOptions {
            task: a.task,
            plan: crate::quant::plan::resolve(&a.model, a.plan.as_deref()),
            ..Default::default()
        },
    )?;
    let texts: Vec<String> = inputs.iter().map(|i| i.first().to_string()).collect();
    let run_once = |chunk: std::ops::Range<usize>| -> anyhow::Result<usize> {
        let part = &inputs[chunk.clone()];
        Ok(match model.task {
            Task::Embed => model
                .embed(part, &EmbedOptions::default())?
                .iter()
                .map(|r| r.tokens)
                .sum(),
            Task::Classify => model
                .classify(part, Truncation::Truncate)?
                .iter()
                .map(|r| r.tokens)
                .sum(),
            Task::Tag => model
                .tag(&texts[chunk], Aggregation::Simple, Truncation::Truncate)?
                .iter()
                .map(|r| r.tokens)
                .sum(),
        })
    };
    let chunks: Vec<_> = (0..inputs.len())
        .step_by(a.batch)
        .map(|s| s..(s + a.batch).min(inputs.len()))
        .collect();
    // One warm-up pass, then whole passes until the time is up.
    for c in &chunks {
        run_once(c.clone())?;
    }
    let start = std::time::Instant::now();
    let (mut n_texts, mut n_tokens, mut passes) = (0usize, 0usize, 0usize);
    while passes == 0 || start.elapsed().as_secs_f64() < a.seconds {
        for c in &chunks {
            n_tokens += run_once(c.clone())?;
            n_texts += c.len();
        }
        passes += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let profile = if a.profile {
        profile_layer(&model, &inputs[chunks[0].clone()])?
    } else {
        serde_json::Value::Null
    };
    let report = serde_json::json!({
        "engine": "samp",
        "model": model.name,
        "task": model.task.name(),
        "plan": model.plan().name,
        "layers": model.plan().summary(),
        "batch": a.batch,
        "threads": rayon::current_num_threads(),
        "texts": n_texts,
        "passes": passes,
        "seconds": secs,
        "texts_per_s": n_texts as f64 / secs,
        "tokens_per_s": n_tokens as f64 / secs,
        "mean_tokens": n_tokens as f64 / n_texts as f64,
        "layer_profile": profile,
    });
    println!("{report}");
    Ok(())
}

pub fn run_serve(a: &ServeArgs) -> anyhow::Result<()> {
    let cfg = a.config()?;
    if a.check {
        println!(
            "{}",
            serde_json::json!({
                "listen": cfg.listen,
                "metrics_listen": cfg.metrics_listen,
                "models": cfg.models.iter().map(|m| serde_json::json!({
                    "name": m.name, "path": m.path, "plan": m.plan, "variants": m.variants,
                })).collect::<Vec<_>>(),
                "shutdown_grace_seconds": cfg.shutdown_grace_seconds,
                "fidelity_sample_rate": cfg.fidelity_sample_rate,
                "batching": format!("{:?}", cfg.batching),
                "limits": format!("{:?}", cfg.limits),
            })
        );
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("samp-io")
        .build()?;
    rt.block_on(async move {
        let (workers, grpc, metrics) = crate::server::prepare(&cfg).await?;
        tracing::info!(grpc = %grpc.local_addr()?, metrics = %metrics.local_addr()?, "serving");
        crate::server::serve(cfg, workers, grpc, metrics, crate::server::signal()).await
    })
}

pub fn run_client(a: &ClientArgs) -> anyhow::Result<()> {
    use crate::server::client::Call;
    let call = match &a.call {
        ClientCall::Embed { texts, dims } => Call::Embed {
            texts: texts.clone(),
            dims: *dims,
        },
        ClientCall::Classify { texts, pairs } => Call::Classify {
            texts: texts.clone(),
            pairs: *pairs,
        },
        ClientCall::Tag { texts } => Call::Tag {
            texts: texts.clone(),
        },
        ClientCall::Models => Call::Models,
        ClientCall::Health { service } => Call::Health {
            service: service.clone(),
        },
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let timeout = std::time::Duration::from_millis(a.timeout_ms);
    let lines = rt
        .block_on(async {
            tokio::time::timeout(
                timeout,
                crate::server::client::call(&a.addr, &a.model, call),
            )
            .await
        })
        .map_err(|_| anyhow::anyhow!("no answer from {} within {} ms", a.addr, a.timeout_ms))??;
    print_lines(&lines)
}

/// Calibration texts: the first `limit` inputs of a file.
fn read_calib(path: &Path, limit: usize) -> anyhow::Result<Vec<Input>> {
    let mut v = read_texts(path)?;
    if v.is_empty() {
        anyhow::bail!("{}: no calibration texts", path.display());
    }
    v.truncate(limit.max(1));
    Ok(v)
}

pub fn run_quantize(a: &QuantizeArgs) -> anyhow::Result<()> {
    use crate::quant::{artifact, eval, plan, search};
    let calibration = match a.calibration.as_str() {
        "auto" => None,
        c => Some(crate::quant::observer::Calibration::parse(c).map_err(anyhow::Error::msg)?),
    };
    let activations = match a.activations.as_str() {
        "dynamic" => Some(plan::ActMode::Dynamic),
        "static" => Some(plan::ActMode::Static),
        _ => None,
    };
    anyhow::ensure!(
        a.margin_se.is_finite() && a.margin_se >= 0.0,
        "--margin-se {}: must be a number >= 0",
        a.margin_se
    );
    let requirement = match (a.max_drop, a.min_score) {
        (Some(d), _) if d.is_finite() && d >= 0.0 => search::Requirement::MaxDrop(d),
        (Some(d), _) => anyhow::bail!("--max-drop {d}: must be a number >= 0"),
        (None, Some(s)) => search::Requirement::MinScore(s),
        (None, None) => search::Requirement::Knee,
    };
    if a.out.exists() && std::fs::read_dir(&a.out)?.next().is_some() {
        anyhow::bail!("--out {}: exists and is not empty", a.out.display());
    }
    let calib = read_calib(&a.calib, a.calib_limit)?;
    let examples = match &a.eval {
        Some(p) => eval::read_examples(p)?,
        None => calib
            .iter()
            .map(|i| eval::Example {
                input: i.clone(),
                label: None,
                score: None,
            })
            .collect(),
    };
    eprintln!("loading {}", a.model.display());
    let mut model = Model::load(&a.model, &LoadOptions::default())?;
    let evaluator = eval::Evaluator::new(&model, examples, a.metric.as_deref())?;
    eprintln!(
        "{}: {} layers, task {}; metric {} on {} examples; {} calibration texts",
        model.name,
        model.cfg.layers,
        model.task.name(),
        evaluator.metric(),
        evaluator.len(),
        calib.len()
    );
    let opts = search::SearchOptions {
        calib,
        requirement,
        mode: a.mode,
        calibration,
        activations,
        margin_se: a.margin_se,
        timing_batch: a.timing_batch.max(1),
    };
    let (report, chosen) = search::search(&mut model, &evaluator, &opts)?;

    std::fs::create_dir_all(&a.out)?;
    copy_model_files(&a.model, &a.out)?;
    chosen.write(&a.out.join(plan::PLAN_FILE))?;
    let layers = model.cfg.layers;
    // The presets, for side-by-side evaluation: FFN-only and fully-quant with the activation
    // scheme the search chose, and fully-quant with static and with dynamic scales.
    let static_cal = report
        .calibration
        .unwrap_or(crate::quant::observer::Calibration::Percentile { percentile: 99.99 });
    let obs = model.calibrate(&opts.calib, Truncation::Truncate)?;
    let static_scales: Vec<[f32; 4]> = obs
        .iter()
        .map(|l| [0, 1, 2, 3].map(|g| l[g].scale(static_cal)))
        .collect();
    let chosen_cal = (report.activations == plan::ActMode::Static).then_some(static_cal);
    for (name, mode, act, cal) in [
        (
            "ffn-only",
            plan::LayerMode::FfnOnly,
            report.activations,
            chosen_cal,
        ),
        (
            "fully-quant",
            plan::LayerMode::Full,
            report.activations,
            chosen_cal,
        ),
        (
            "fully-quant-static",
            plan::LayerMode::Full,
            plan::ActMode::Static,
            Some(static_cal),
        ),
        (
            "fully-quant-dynamic",
            plan::LayerMode::Full,
            plan::ActMode::Dynamic,
            None,
        ),
    ] {
        let p = plan::Plan::from_modes(name, &vec![mode; layers], &static_scales, act, cal);
        p.write(&a.out.join(format!("samp-plan.{name}.json")))?;
    }
    // INT8 weights of every GEMM (the presets use them all).
    let q: Vec<(
        String,
        std::sync::Arc<crate::model::kernels::int8::QWeights>,
    )> = model
        .encoder()
        .layers()
        .iter()
        .enumerate()
        .flat_map(|(i, l)| {
            plan::Gemm::ALL.map(|g| (artifact::tensor_name(i, g.name()), l.linear(g).qweights()))
        })
        .collect();
    let refs: Vec<(String, &crate::model::kernels::int8::QWeights)> =
        q.iter().map(|(n, w)| (n.clone(), w.as_ref())).collect();
    artifact::write(&a.out.join(artifact::INT8_FILE), &refs)?;
    search::write_report(&a.out, &report)?;
    let c = &report.trials[report.chosen];
    let m = report.measured.iter().find(|m| m.name == "samp");
    eprintln!(
        "chosen plan {} ({}): {} {:.4} (float {:.4}); measured {:.2}x float32 throughput{}",
        c.layers,
        c.name,
        report.metric,
        c.score,
        report.float_score,
        m.map_or(f64::NAN, |m| m.ratio_to_float),
        if report.met {
            ""
        } else {
            "; NO plan met the requirement"
        }
    );
    println!(
        "{}",
        serde_json::json!({
            "out": a.out,
            "plan": chosen.summary(),
            "metric": report.metric,
            "score": c.score,
            "float_score": report.float_score,
            "met": report.met,
            "measured": report.measured,
        })
    );
    Ok(())
}

/// Hard-link (or copy) the model's files into `out`, leaving out any earlier samp outputs.
fn copy_model_files(from: &Path, out: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        let s = name.to_string_lossy();
        if !entry.file_type()?.is_file() || s.starts_with("samp-") || s.starts_with("report.") {
            continue;
        }
        let dst = out.join(&name);
        if std::fs::hard_link(entry.path(), &dst).is_err() {
            std::fs::copy(entry.path(), &dst)?;
        }
    }
    Ok(())
}

pub fn run_eval(a: &EvalArgs) -> anyhow::Result<()> {
    use crate::quant::eval;
    let examples = eval::read_examples(&a.data)?;
    let mut model = Model::load(&a.model, &LoadOptions::default())?;
    // The float model first: it is the reference for fidelity metrics.
    let evaluator = eval::Evaluator::new(&model, examples, a.metric.as_deref())?;
    if let Some(p) = crate::quant::plan::resolve(&a.model, a.plan.as_deref()) {
        model.load_plan(&p)?;
    }
    let start = std::time::Instant::now();
    let scores = evaluator.evaluate(&model)?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "model": model.name,
            "plan": model.plan().name,
            "layers": model.plan().summary(),
            "examples": evaluator.len(),
            "metric": scores.metric,
            "value": scores.value,
            "metrics": scores.all,
            "seconds": secs,
        })
    );
    Ok(())
}

pub fn run_loadgen(a: &LoadgenArgs) -> anyhow::Result<()> {
    use crate::server::loadgen;
    let texts: Vec<String> = read_texts(&a.data)?
        .into_iter()
        .map(|i| i.first().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    if let Some(r) = a.rps {
        anyhow::ensure!(r > 0.0 && r.is_finite(), "--rps {r}: must be > 0");
    }
    if let Some(d) = a.duration {
        anyhow::ensure!(d > 0.0 && d.is_finite(), "--duration {d}: must be > 0");
    }
    anyhow::ensure!(
        a.inputs_per_request >= 1,
        "--inputs-per-request must be at least 1"
    );
    let requests = match (a.requests, a.duration) {
        (None, None) => Some(1000),
        (n, _) => n,
    };
    let opts = loadgen::Options {
        addr: a.addr.clone(),
        rpc: a.rpc,
        model: a.model.clone(),
        variant: a.variant.clone(),
        texts,
        inputs_per_request: a.inputs_per_request,
        concurrency: a.concurrency.max(1),
        connections: a.connections.max(1),
        requests,
        duration: a.duration.map(std::time::Duration::from_secs_f64),
        rate: a.rps,
        timeout: std::time::Duration::from_millis(a.timeout_ms),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(loadgen::run(opts))?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", loadgen::summary(&report));
    }
    Ok(())
}
