//! Shared helpers of the integration tests: where the fetched models and golden files live.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A model fetched by scripts/fetch_models.sh; a clear failure (not a skip) when absent.
pub fn model_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("SAMP_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("models"));
    let d = base.join(name);
    assert!(
        d.join(".complete").exists() || d.join("config.json").exists(),
        "model {} is missing: run scripts/fetch_models.sh first",
        d.display()
    );
    d
}

pub fn golden(name: &str) -> serde_json::Value {
    let p = root().join("tests/golden").join(name);
    let s = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&s).unwrap()
}

pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `samp serve` as a child process on 127.0.0.1:0 (both ports), killed when dropped.
pub struct ServeProcess {
    pub child: std::process::Child,
    pub grpc: String,
    pub metrics: String,
    /// The HTTP door's address (empty when it is off).
    pub http: String,
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start the real binary with `args` after `serve` and wait until it logs its addresses.
/// `SAMP_BIN` names another binary to attack instead of this build's (e.g. an older release, to
/// show that a hostile test fails there).
pub fn serve_process<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> ServeProcess {
    use std::io::{BufRead, BufReader};
    let bin = std::env::var_os("SAMP_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_samp").into());
    let mut child = std::process::Command::new(bin)
        .args(["--log-format", "json", "serve", "--listen", "127.0.0.1:0"])
        .args([
            "--metrics-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .args(args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut grpc, mut metrics, mut http) = (String::new(), String::new(), String::new());
    for line in lines.by_ref() {
        let line = line.unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        let f = if v["fields"].is_object() {
            &v["fields"]
        } else {
            &v
        };
        if let (Some(g), Some(m)) = (f["grpc"].as_str(), f["metrics"].as_str()) {
            grpc = g.to_string();
            metrics = m.to_string();
            http = f["http"].as_str().unwrap_or_default().to_string();
            break;
        }
    }
    assert!(!grpc.is_empty(), "server did not report its address");
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    ServeProcess {
        child,
        grpc,
        metrics,
        http,
    }
}

/// The server in-process on 127.0.0.1:0 (every port), stopped by `shutdown`.
pub struct Running {
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    pub http: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn client(
        &self,
    ) -> samp::server::proto::samp_client::SampClient<tonic::transport::Channel> {
        samp::server::proto::samp_client::SampClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    pub async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

/// Prepare and serve `cfg` (its ports 127.0.0.1:0) in-process.
pub async fn start(cfg: samp::config::ServeConfig) -> Running {
    let prepared = samp::server::prepare(&cfg).await.unwrap();
    let addr = prepared.grpc.local_addr().unwrap();
    let maddr = prepared.metrics.local_addr().unwrap();
    let http = prepared.http.as_ref().unwrap().local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(samp::server::serve(cfg, prepared, async {
        let _ = rx.await;
    }));
    Running {
        addr,
        metrics: maddr,
        http,
        stop: Some(tx),
        task,
    }
}
