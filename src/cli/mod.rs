//! Command-line interface: clap-derive subcommands and the one-shot commands (`embed`,
//! `classify`, `tag`) that load a model, run it on texts from the arguments or a JSON Lines
//! file, and print one JSON object per input.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use crate::error::SampError;
use crate::model::config::{Pooling, Task};
use crate::model::heads::tag::Aggregation;
use crate::model::{EmbedOptions, LoadOptions, Model};
use crate::tokenize::{Input, Truncation};

mod bench;
mod kernels;
mod loadgen;
mod quantize;

pub use bench::{run_bench, BenchArgs};
pub use kernels::{run_kernels, KernelsArgs};
pub use loadgen::{run_loadgen, LoadgenArgs};
pub use quantize::{run_eval, run_quantize, EvalArgs, QuantizeArgs};

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
    /// Serve models over gRPC (samp.v1, health, reflection) and HTTP/JSON (TEI and OpenAI
    /// routes), with Prometheus metrics.
    Serve(Box<ServeArgs>),
    /// Call a running server; prints one JSON object per input.
    Client(ClientArgs),
    /// Pick the fastest per-layer INT8/float plan that meets an accuracy requirement (SAMP).
    Quantize(QuantizeArgs),
    /// Print the metrics of one precision plan on a data file.
    Eval(EvalArgs),
    /// Load a running server (like ghz): throughput, latency percentiles, status codes.
    Loadgen(LoadgenArgs),
    /// The GEMM kernel each precision uses on this CPU, self-checks, rates at the model
    /// shapes and the instruction peaks; prints one JSON object.
    Kernels(KernelsArgs),
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
    /// HTTP/JSON address (TEI `/embed`, `/predict`, `/info`, `/health`; OpenAI
    /// `/v1/embeddings`), or `off` [default: 0.0.0.0:8080].
    #[arg(long, env = "SAMP_HTTP_LISTEN")]
    pub http_listen: Option<String>,
    /// Model to serve, NAME=DIR or DIR; repeatable [default: every model scripts/fetch_models.sh
    /// installed under models/, each with its SAMP plan and a float32 variant].
    #[arg(long = "model", env = "SAMP_MODELS", value_delimiter = ',', value_parser = crate::config::parse_model_arg)]
    pub models: Vec<crate::config::ModelEntry>,
    /// Where the default models are looked for when none is named [default: models].
    #[arg(long, env = "SAMP_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
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
    /// Queued tokens per model before new requests get RESOURCE_EXHAUSTED.
    #[arg(long, env = "SAMP_MAX_QUEUE_TOKENS")]
    pub max_queue_tokens: Option<usize>,
    /// Open gRPC connections at once [default: 1024].
    #[arg(long, env = "SAMP_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Concurrent calls per HTTP/2 connection [default: 64].
    #[arg(long, env = "SAMP_MAX_CONCURRENT_STREAMS")]
    pub max_concurrent_streams: Option<u32>,
    /// File with a static bearer token that every call and /metrics scrape must present
    /// (`authorization: Bearer TOKEN`); health checks are exempt. Off by default.
    #[arg(long, env = "SAMP_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// PEM certificate chain: serve gRPC over TLS (with --tls-key-file). Off by default.
    #[arg(long, env = "SAMP_TLS_CERT_FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, env = "SAMP_TLS_KEY_FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificate(s) that client certificates must be signed by (mutual TLS).
    #[arg(long, env = "SAMP_TLS_CLIENT_CA_FILE")]
    pub tls_client_ca_file: Option<PathBuf>,
    /// Longest drain after SIGTERM/SIGINT, in seconds.
    #[arg(long, env = "SAMP_SHUTDOWN_GRACE_SECONDS")]
    pub shutdown_grace_seconds: Option<u64>,
    /// Share of requests to quantized variants re-run on the float32 variant for online
    /// fidelity metrics [default: 0.01].
    #[arg(long, env = "SAMP_FIDELITY_SAMPLE_RATE")]
    pub fidelity_sample_rate: Option<f64>,
    /// Where encoders run: `cpu` or `cuda[:N]`; without a usable GPU the CPU serves and the
    /// log says why [default: cpu].
    #[arg(long, env = "SAMP_DEVICE")]
    pub device: Option<crate::backend::device::Device>,
    /// Directories (colon-separated) with the CUDA libraries, when not on the loader path.
    #[arg(long, env = "SAMP_CUDA_LIB_DIR")]
    pub cuda_lib_dir: Option<PathBuf>,
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
        if let Some(v) = &self.http_listen {
            c.http_listen = crate::config::parse_listen_or_off(v)
                .map_err(|e| anyhow::anyhow!("--http-listen {e}"))?;
        }
        if let Some(d) = &self.models_dir {
            c.models_dir = d.clone();
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
        if let Some(v) = self.max_queue_tokens {
            c.batching.max_queue_tokens = v;
        }
        if let Some(v) = self.max_connections {
            c.connections.max_connections = v;
        }
        if let Some(v) = self.max_concurrent_streams {
            c.connections.max_concurrent_streams = v;
        }
        if let Some(v) = &self.auth_token_file {
            c.auth_token_file = Some(v.clone());
        }
        if let Some(v) = &self.tls_cert_file {
            c.tls.cert_file = Some(v.clone());
        }
        if let Some(v) = &self.tls_key_file {
            c.tls.key_file = Some(v.clone());
        }
        if let Some(v) = &self.tls_client_ca_file {
            c.tls.client_ca_file = Some(v.clone());
        }
        if let Some(v) = self.shutdown_grace_seconds {
            c.shutdown_grace_seconds = v;
        }
        if let Some(v) = self.fidelity_sample_rate {
            c.fidelity_sample_rate = v;
        }
        if let Some(v) = self.device {
            c.device = v;
        }
        if let Some(v) = &self.cuda_lib_dir {
            c.cuda_lib_dir = Some(v.clone());
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

/// Where the encoder runs.
#[derive(Debug, Clone, Args)]
pub struct DeviceArgs {
    /// `cpu`, or `cuda[:N]` for the GPU backend. Without a usable GPU (or in a build without
    /// the `cuda` feature) the model runs on the CPU and the log says why.
    #[arg(long, env = "SAMP_DEVICE", default_value = "cpu")]
    pub device: crate::backend::device::Device,
    /// Directories (colon-separated) with libcuda / libnvrtc / libcublasLt when they are not
    /// on the loader path (e.g. NVIDIA's pip wheels: site-packages/nvidia/cu13/lib).
    #[arg(long, env = "SAMP_CUDA_LIB_DIR")]
    pub cuda_lib_dir: Option<PathBuf>,
}

impl DeviceArgs {
    /// Load a model directory and place its encoder on the requested device.
    pub fn load(&self, dir: &Path, opts: &LoadOptions) -> anyhow::Result<Placed> {
        let model = Arc::new(Model::load(dir, opts)?);
        let dirs = crate::backend::device::lib_dirs(self.cuda_lib_dir.as_deref());
        let (engine, _) = crate::backend::device::place(&model, self.device, &dirs);
        Ok(Placed { model, engine })
    }
}

/// A model and the engine its encoder passes run on.
pub struct Placed {
    pub model: Arc<Model>,
    pub engine: Arc<dyn crate::backend::engine::Engine>,
}

impl Placed {
    /// The engine's passes, for the model's pipeline calls (`embed_on`, ...).
    pub fn forward(&self, batch: &crate::model::encoder::Batch) -> crate::error::Result<Vec<f32>> {
        self.engine.forward(batch)
    }
}

/// A model directory and the precision plan to run it with (every command that loads one).
#[derive(Debug, Clone, Args)]
pub struct ModelSource {
    /// Hugging Face model directory (config.json, tokenizer.json, model.safetensors).
    #[arg(long, env = "SAMP_MODEL")]
    pub model: PathBuf,

    /// Precision plan: a file, or `float32` [default: DIR/samp-plan.json when present].
    #[arg(long)]
    pub plan: Option<String>,
}

impl ModelSource {
    /// The plan file to load, if any (`float32` and no plan beside the model: none).
    pub fn plan_file(&self) -> Option<PathBuf> {
        crate::quant::plan::resolve(&self.model, self.plan.as_deref())
    }

    /// Load it with `opts` (its plan filled in) and place its encoder on `device`.
    pub fn load(&self, device: &DeviceArgs, opts: LoadOptions) -> anyhow::Result<Placed> {
        let opts = LoadOptions {
            plan: self.plan_file(),
            ..opts
        };
        device.load(&self.model, &opts)
    }
}

#[derive(Debug, Args)]
pub struct ModelArgs {
    #[command(flatten)]
    pub source: ModelSource,

    /// Texts to process.
    pub texts: Vec<String>,

    /// JSON Lines file of inputs: each line a JSON string, or {"text": ..., "text_pair": ...}.
    #[arg(long)]
    pub input: Option<PathBuf>,

    /// Refuse texts longer than the model's limit instead of truncating them.
    #[arg(long)]
    pub no_truncate: bool,

    #[command(flatten)]
    pub device: DeviceArgs,
}

impl ModelArgs {
    fn load(&self, opts: LoadOptions) -> anyhow::Result<Placed> {
        self.source.load(&self.device, opts)
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
    Ok(crate::tune::eval::read_examples(path)?
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
    let placed = a.model.load(LoadOptions {
        task: Some(Task::Embed),
        pooling: a.pooling,
        ..Default::default()
    })?;
    let opts = EmbedOptions {
        normalize: a.normalize,
        dims: a.dims,
        truncation: a.model.truncation(),
    };
    let forward = |b: &_| placed.forward(b);
    print_lines(&placed.model.embed_on(&forward, &inputs, &opts)?)
}

pub fn run_classify(a: &ClassifyArgs) -> anyhow::Result<()> {
    let inputs = gather(&a.model, a.pairs)?;
    let placed = a.model.load(LoadOptions::default())?;
    let forward = |b: &_| placed.forward(b);
    print_lines(
        &placed
            .model
            .classify_on(&forward, &inputs, a.model.truncation())?,
    )
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
    let placed = a.model.load(LoadOptions::default())?;
    let forward = |b: &_| placed.forward(b);
    let model = &placed.model;
    print_lines(&model.tag_on(&forward, &texts, a.aggregation, a.model.truncation())?)
}

pub fn run_serve(a: &ServeArgs) -> anyhow::Result<()> {
    let cfg = a.config()?;
    if a.check {
        // The configuration as it will run (secrets left out: only whether they are set).
        let mut out = serde_json::to_value(&cfg)?;
        out["cuda_built"] = crate::backend::device::CUDA_BUILT.into();
        out["auth"] = cfg.auth_token.is_some().into();
        out["tls_enabled"] = cfg.tls_pem.is_some().into();
        out["mtls"] = cfg
            .tls_pem
            .as_ref()
            .is_some_and(|t| t.client_ca.is_some())
            .into();
        println!("{out}");
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("samp-io")
        .build()?;
    rt.block_on(async move {
        let prepared = crate::server::prepare(&cfg).await?;
        let http = match &prepared.http {
            Some(l) => l.local_addr()?.to_string(),
            None => "off".to_string(),
        };
        tracing::info!(grpc = %prepared.grpc.local_addr()?,
            metrics = %prepared.metrics.local_addr()?, http = %http, "serving");
        crate::server::serve(cfg, prepared, crate::server::signal()).await
    })
}

pub fn run_client(a: &ClientArgs) -> anyhow::Result<()> {
    use crate::client::Call;
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
            tokio::time::timeout(timeout, crate::client::call(&a.addr, &a.model, call)).await
        })
        .map_err(|_| anyhow::anyhow!("no answer from {} within {} ms", a.addr, a.timeout_ms))??;
    print_lines(&lines)
}
