//! `samp loadgen`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::read_texts;

#[derive(Debug, Args)]
pub struct LoadgenArgs {
    /// A ghz configuration file (deploy/ghz/*.json): its call, host, data, concurrency,
    /// connections, total, duration, rps and timeout; the flags below override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Server address [default: the config's host, else http://127.0.0.1:50051].
    #[arg(long, env = "SAMP_ADDR")]
    pub addr: Option<String>,
    /// RPC to call [default: the config's call, else embed].
    #[arg(long, value_enum)]
    pub rpc: Option<crate::client::loadgen::Rpc>,
    /// Model name (optional when one loaded model does the task).
    #[arg(long, default_value = "")]
    pub model: String,
    /// Variant (default: the model's default).
    #[arg(long, default_value = "")]
    pub variant: String,
    /// Texts to send, one per line or JSON Lines; requests cycle through them (without
    /// --config; a config's data messages are sent as they are).
    #[arg(long, required_unless_present = "config")]
    pub data: Option<PathBuf>,
    /// Texts per request.
    #[arg(long, default_value_t = 1)]
    pub inputs_per_request: usize,
    /// Requests in flight at once (workers) [default: 16].
    #[arg(long, short = 'c')]
    pub concurrency: Option<usize>,
    /// HTTP/2 connections the workers share [default: 1].
    #[arg(long)]
    pub connections: Option<usize>,
    /// Stop after this many requests [default: 1000 unless a duration is given].
    #[arg(long, short = 'n')]
    pub requests: Option<usize>,
    /// Stop after this many seconds.
    #[arg(long, short = 'z')]
    pub duration: Option<f64>,
    /// Fixed rate in requests per second (open loop); default: as fast as the workers go.
    #[arg(long)]
    pub rps: Option<f64>,
    /// Per-request deadline in milliseconds, sent as grpc-timeout [default: 10000].
    #[arg(long)]
    pub timeout_ms: Option<u64>,
    /// Print the report as JSON instead of the summary.
    #[arg(long)]
    pub json: bool,
}

pub fn run_loadgen(a: &LoadgenArgs) -> anyhow::Result<()> {
    use crate::client::loadgen;
    let ghz = match &a.config {
        Some(p) => crate::client::ghz::read(p)?,
        None => Default::default(),
    };
    if let (Some(want), Some(flag)) = (ghz.rpc, a.rpc) {
        anyhow::ensure!(
            want == flag,
            "--rpc {flag:?} differs from the config's call ({want:?})"
        );
    }
    let texts: Vec<String> = match &a.data {
        Some(p) => read_texts(p)?
            .into_iter()
            .map(|i| i.first().to_string())
            .filter(|t| !t.is_empty())
            .collect(),
        None => Vec::new(),
    };
    let rate = a.rps.or(ghz.rps);
    if let Some(r) = rate {
        anyhow::ensure!(r > 0.0 && r.is_finite(), "--rps {r}: must be > 0");
    }
    let duration = match a.duration {
        Some(d) => {
            anyhow::ensure!(d > 0.0 && d.is_finite(), "--duration {d}: must be > 0");
            Some(Duration::from_secs_f64(d))
        }
        None => ghz.duration,
    };
    anyhow::ensure!(
        a.inputs_per_request >= 1,
        "--inputs-per-request must be at least 1"
    );
    let requests = match (a.requests.or(ghz.total), duration) {
        (None, None) => Some(1000),
        (n, _) => n,
    };
    let addr = match (&a.addr, &ghz.host) {
        (Some(a), _) => a.clone(),
        (None, Some(h)) if h.contains("://") => h.clone(),
        (None, Some(h)) => format!("http://{h}"),
        (None, None) => "http://127.0.0.1:50051".into(),
    };
    let opts = loadgen::Options {
        addr,
        rpc: a.rpc.or(ghz.rpc).unwrap_or(loadgen::Rpc::Embed),
        model: a.model.clone(),
        variant: a.variant.clone(),
        texts,
        inputs_per_request: a.inputs_per_request,
        // A config's messages go as they are, unless --data replaces them.
        messages: if a.data.is_some() {
            Vec::new()
        } else {
            ghz.messages
        },
        concurrency: a.concurrency.or(ghz.concurrency).unwrap_or(16).max(1),
        connections: a.connections.or(ghz.connections).unwrap_or(1).max(1),
        requests,
        duration,
        rate,
        timeout: a
            .timeout_ms
            .map(Duration::from_millis)
            .or(ghz.timeout)
            .unwrap_or(Duration::from_secs(10)),
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
