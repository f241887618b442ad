//! `samp loadgen`.

use std::path::PathBuf;

use clap::Args;

use super::read_texts;

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
