//! Command-line interface: clap-derive subcommands and the one-shot commands (`embed`,
//! `classify`, `tag`) that load a model, run it on texts from the arguments or a JSON Lines
//! file, and print one JSON object per input.

use std::io::{BufRead, Write};
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
}

impl ModelArgs {
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
    let file = std::fs::File::open(path).map_err(|source| SampError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (n, line) in std::io::BufReader::new(file).split(b'\n').enumerate() {
        let line = line.map_err(|source| SampError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |reason: String| SampError::malformed(path, format!("line {}: {reason}", n + 1));
        let line = std::str::from_utf8(&line).map_err(|e| bad(format!("invalid UTF-8 ({e})")))?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let input = match &v {
            serde_json::Value::String(s) => Input::Single(s.clone()),
            serde_json::Value::Object(o) => {
                let text = o
                    .get("text")
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| bad("object without a \"text\" string".into()))?;
                match o.get("text_pair") {
                    None | Some(serde_json::Value::Null) => Input::Single(text.into()),
                    Some(serde_json::Value::String(b)) => Input::Pair(text.into(), b.clone()),
                    Some(_) => return Err(bad("\"text_pair\" must be a string".into())),
                }
            }
            _ => return Err(bad("expected a JSON string or object".into())),
        };
        out.push(input);
    }
    Ok(out)
}

fn gather(args: &ModelArgs, pairs: bool) -> anyhow::Result<Vec<Input>> {
    let mut inputs = Vec::new();
    if pairs {
        if args.texts.len() % 2 != 0 {
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
    let model = Model::load(&a.model.model, &LoadOptions::default())?;
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
    let model = Model::load(&a.model.model, &LoadOptions::default())?;
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
    let report = serde_json::json!({
        "engine": "samp",
        "model": model.name,
        "task": model.task.name(),
        "batch": a.batch,
        "threads": rayon::current_num_threads(),
        "texts": n_texts,
        "passes": passes,
        "seconds": secs,
        "texts_per_s": n_texts as f64 / secs,
        "tokens_per_s": n_tokens as f64 / secs,
        "mean_tokens": n_tokens as f64 / n_texts as f64,
    });
    println!("{report}");
    Ok(())
}

pub fn run_serve(a: &ServeArgs) -> anyhow::Result<()> {
    let cfg = a.config()?;
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
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let lines = rt.block_on(crate::server::client::call(&a.addr, &a.model, call))?;
    print_lines(&lines)
}
