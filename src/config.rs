//! Server settings: a TOML file and command-line flags (each with an env var), merged and
//! validated once at start-up; errors name the key. The only place that reads configuration.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::device::Device;
use crate::batching::BatchPolicy;

/// One model to load.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// Name clients use in requests.
    pub name: String,
    /// Hugging Face model directory.
    pub path: PathBuf,
    /// Precision plan to run: a `samp-plan.json` file, or `float32` [default: the directory's
    /// own samp-plan.json when it has one (what `samp quantize` writes), else float32].
    #[serde(default)]
    pub plan: Option<PathBuf>,
    /// More variants of the same model: variant name → plan (a file, or `float32`). Each runs
    /// on its own compute thread; requests pick one by name.
    #[serde(default)]
    pub variants: std::collections::BTreeMap<String, PathBuf>,
    /// Where this model's encoder runs [default: the server's `device`].
    #[serde(default)]
    pub device: Option<Device>,
}

/// Per-request limits.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Most inputs in one request.
    pub max_inputs: usize,
    /// Longest text in characters (before tokenization; longer texts are refused).
    pub max_text_chars: usize,
    /// Largest request message in bytes.
    pub max_message_bytes: usize,
    /// Request bytes being received (not yet decoded) over all connections and streams at
    /// once; past it, a stream that sends more gets RESOURCE_EXHAUSTED.
    pub max_inflight_request_bytes: usize,
    /// Longest life of one stream (the streaming RPCs), in seconds; the stream's own deadline
    /// may end it sooner.
    pub max_stream_seconds: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_inputs: 256,
            max_text_chars: 100_000,
            max_message_bytes: 16 * 1024 * 1024,
            max_inflight_request_bytes: 256 * 1024 * 1024,
            max_stream_seconds: 600,
        }
    }
}

impl Limits {
    pub fn max_stream(&self) -> Duration {
        Duration::from_secs(self.max_stream_seconds)
    }
}

/// TLS on the gRPC port (off unless `cert_file` and `key_file` are set).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain of the server.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of that certificate.
    pub key_file: Option<PathBuf>,
    /// PEM CA certificate(s): when set, clients must present a certificate it signed (mTLS).
    pub client_ca_file: Option<PathBuf>,
}

/// The PEM files of [`Tls`], read by `validate`.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsPem {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub client_ca: Option<Vec<u8>>,
}

/// Connection hygiene of the gRPC port (and, for the limits that apply, the HTTP door).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Connections {
    /// Open connections at once; further ones wait in the kernel's backlog until one closes.
    pub max_connections: usize,
    /// Concurrent streams (calls) per HTTP/2 connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 keepalive ping interval, in seconds (0: off).
    pub keepalive_interval_seconds: u64,
    /// A connection whose keepalive ping is not answered within this many seconds is closed.
    pub keepalive_timeout_seconds: u64,
    /// Close connections after this many seconds (gracefully: in-flight calls finish), so that
    /// idle or long-lived clients rebalance across replicas (0: never).
    pub max_connection_age_seconds: u64,
    /// Close a connection (gRPC or HTTP) that has had no call in progress for this many seconds,
    /// counted from its last call or from its accept (0: never). Keepalive pings are not calls.
    pub idle_timeout_seconds: u64,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            max_connections: 1024,
            max_concurrent_streams: 64,
            keepalive_interval_seconds: 30,
            keepalive_timeout_seconds: 10,
            max_connection_age_seconds: 0,
            idle_timeout_seconds: 300,
        }
    }
}

fn seconds(s: u64) -> Option<Duration> {
    (s > 0).then(|| Duration::from_secs(s))
}

impl Connections {
    pub fn keepalive_interval(&self) -> Option<Duration> {
        seconds(self.keepalive_interval_seconds)
    }
    pub fn keepalive_timeout(&self) -> Option<Duration> {
        seconds(self.keepalive_timeout_seconds)
    }
    pub fn max_connection_age(&self) -> Option<Duration> {
        seconds(self.max_connection_age_seconds)
    }
    pub fn idle_timeout(&self) -> Option<Duration> {
        seconds(self.idle_timeout_seconds)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// gRPC address.
    pub listen: SocketAddr,
    /// Prometheus metrics address (HTTP, path /metrics).
    pub metrics_listen: SocketAddr,
    /// The HTTP/JSON door (TEI and OpenAI routes); `"off"` turns it off.
    #[serde(deserialize_with = "listen_or_off")]
    pub http_listen: Option<SocketAddr>,
    pub models: Vec<ModelEntry>,
    /// Where the default models are looked for when `models` is empty.
    #[serde(default = "default_models_dir")]
    pub models_dir: PathBuf,
    pub batching: BatchPolicy,
    pub limits: Limits,
    pub connections: Connections,
    /// A file holding a static bearer token: when set, every gRPC call and every /metrics
    /// request must carry `authorization: Bearer <token>` (health checks excepted).
    pub auth_token_file: Option<PathBuf>,
    /// The token read from `auth_token_file` by `validate` (never printed).
    #[serde(skip)]
    pub auth_token: Option<String>,
    pub tls: Tls,
    /// The files of `tls`, read by `validate` (None: plain HTTP/2).
    #[serde(skip)]
    pub tls_pem: Option<TlsPem>,
    /// Longest wait for admitted work to finish after SIGTERM/SIGINT, in seconds.
    pub shutdown_grace_seconds: u64,
    /// Share (0..=1) of requests to a quantized variant that are run again, in the background,
    /// through the same model's float32 variant (when it has one) to export online fidelity.
    pub fidelity_sample_rate: f64,
    /// Where encoders run: `cpu` or `cuda[:N]` (CPU fallback, logged, without a usable GPU).
    pub device: Device,
    /// Directories with the CUDA libraries when they are not on the loader path.
    pub cuda_lib_dir: Option<PathBuf>,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: "0.0.0.0:50051".parse().expect("valid literal"),
            metrics_listen: "0.0.0.0:9090".parse().expect("valid literal"),
            http_listen: Some("0.0.0.0:8080".parse().expect("valid literal")),
            models: Vec::new(),
            models_dir: default_models_dir(),
            batching: BatchPolicy::default(),
            limits: Limits::default(),
            connections: Connections::default(),
            auth_token_file: None,
            auth_token: None,
            tls: Tls::default(),
            tls_pem: None,
            shutdown_grace_seconds: 30,
            fidelity_sample_rate: 0.01,
            device: Device::Cpu,
            cuda_lib_dir: None,
        }
    }
}

/// An address, or `off` (None).
pub fn parse_listen_or_off(s: &str) -> Result<Option<SocketAddr>, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|e| format!("{s:?}: {e} (an address like 0.0.0.0:8080, or off)"))
}

fn listen_or_off<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    parse_listen_or_off(&s).map_err(serde::de::Error::custom)
}

/// The models `scripts/fetch_models.sh` installs, by the name clients use, each with its task's
/// directory under `models/`: what `samp serve` serves when neither the file nor the flags name
/// a model.
pub const DEFAULT_MODELS: [(&str, &str); 3] = [
    ("all-MiniLM-L6-v2", "all-MiniLM-L6-v2"),
    ("minilm-sentiment", "minilm-sentiment"),
    ("rampart-pii", "rampart-pii"),
];

/// The directory the default models live in (relative to the working directory).
pub const DEFAULT_MODELS_DIR: &str = "models";

fn default_models_dir() -> PathBuf {
    DEFAULT_MODELS_DIR.into()
}

/// The SAMP plan a default model is served with, installed beside its files by the fetch step
/// from `plans/` (not `samp-plan.json`, so that `--model DIR` still serves the float model).
pub const DEFAULT_PLAN_FILE: &str = "samp-plan.default.json";

/// The default models found under `dir`: each serves its installed SAMP plan by default and
/// float32 as a second variant (float32 alone without a plan). When none is there, the first,
/// so that start-up fails naming its path.
pub fn default_models(dir: &Path) -> Vec<ModelEntry> {
    let entry = |name: &str, sub: &str| {
        let path = dir.join(sub);
        let plan = Some(path.join(DEFAULT_PLAN_FILE)).filter(|p| p.is_file());
        ModelEntry {
            name: name.into(),
            variants: if plan.is_some() {
                [("float32".to_string(), PathBuf::from("float32"))].into()
            } else {
                Default::default()
            },
            path,
            plan,
            device: None,
        }
    };
    let found: Vec<ModelEntry> = DEFAULT_MODELS
        .iter()
        .filter(|(_, sub)| dir.join(sub).join("config.json").is_file())
        .map(|(name, sub)| entry(name, sub))
        .collect();
    if found.is_empty() {
        let (name, sub) = DEFAULT_MODELS[0];
        vec![entry(name, sub)]
    } else {
        found
    }
}

impl ServeConfig {
    /// Parse a TOML file; unknown keys and bad values are errors naming the key.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_seconds)
    }

    /// Fill defaults and check everything; errors name the key.
    pub fn validate(mut self) -> anyhow::Result<Self> {
        if self.models.is_empty() {
            self.models = default_models(&self.models_dir);
        }
        let mut seen = std::collections::HashSet::new();
        for (i, m) in self.models.iter().enumerate() {
            if m.name.is_empty() {
                anyhow::bail!("models[{i}].name is empty");
            }
            if !seen.insert(m.name.clone()) {
                anyhow::bail!("models[{i}].name {:?} appears twice", m.name);
            }
            if let Some(v) = m.variants.keys().find(|v| v.is_empty()) {
                anyhow::bail!("models[{i}].variants has an empty name {v:?}");
            }
        }
        if !(0.0..=1.0).contains(&self.fidelity_sample_rate) {
            anyhow::bail!(
                "fidelity_sample_rate is {}, must be between 0 and 1",
                self.fidelity_sample_rate
            );
        }
        self.batching.validate().map_err(anyhow::Error::msg)?;
        if self.limits.max_inputs == 0 || self.limits.max_text_chars == 0 {
            anyhow::bail!("limits.max_inputs and limits.max_text_chars must be at least 1");
        }
        if self.limits.max_inflight_request_bytes < self.limits.max_message_bytes {
            anyhow::bail!(
                "limits.max_inflight_request_bytes ({}) is below limits.max_message_bytes ({}): \
                 no largest message could be received",
                self.limits.max_inflight_request_bytes,
                self.limits.max_message_bytes
            );
        }
        if self.limits.max_stream_seconds == 0 {
            anyhow::bail!("limits.max_stream_seconds must be at least 1");
        }
        if self.connections.max_connections == 0 || self.connections.max_concurrent_streams == 0 {
            anyhow::bail!(
                "connections.max_connections and connections.max_concurrent_streams must be at \
                 least 1"
            );
        }
        if let Some(p) = &self.auth_token_file {
            let text = std::fs::read_to_string(p).map_err(|e| {
                anyhow::anyhow!("auth_token_file {}: cannot read: {e}", p.display())
            })?;
            let token = text.trim();
            if token.is_empty() || !token.chars().all(|c| c.is_ascii_graphic()) {
                anyhow::bail!(
                    "auth_token_file {}: the token must be one line of printable ASCII",
                    p.display()
                );
            }
            self.auth_token = Some(token.to_string());
        }
        let read = |key: &str, p: &Path| {
            std::fs::read(p)
                .map_err(|e| anyhow::anyhow!("tls.{key} {}: cannot read: {e}", p.display()))
        };
        self.tls_pem = match (&self.tls.cert_file, &self.tls.key_file) {
            (None, None) if self.tls.client_ca_file.is_some() => {
                anyhow::bail!("tls.client_ca_file needs tls.cert_file and tls.key_file")
            }
            (None, None) => None,
            (Some(c), Some(k)) => Some(TlsPem {
                cert: read("cert_file", c)?,
                key: read("key_file", k)?,
                client_ca: match &self.tls.client_ca_file {
                    Some(ca) => Some(read("client_ca_file", ca)?),
                    None => None,
                },
            }),
            _ => anyhow::bail!("tls.cert_file and tls.key_file go together: set both or neither"),
        };
        Ok(self)
    }
}

/// `NAME=DIR` (or just `DIR`, named after its last path component), for `--model`.
pub fn parse_model_arg(s: &str) -> Result<ModelEntry, String> {
    let (name, path) = match s.split_once('=') {
        Some((n, p)) => (n.to_string(), PathBuf::from(p)),
        None => {
            let p = PathBuf::from(s);
            let n = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| format!("cannot name model {s:?}; use NAME=DIR"))?;
            (n, p)
        }
    };
    if name.is_empty() {
        return Err(format!("empty model name in {s:?}"));
    }
    Ok(ModelEntry {
        name,
        path,
        plan: None,
        variants: Default::default(),
        device: None,
    })
}

/// `MODEL:VARIANT=PLAN`, for `--variant`.
pub fn parse_variant_arg(s: &str) -> Result<(String, String, PathBuf), String> {
    let err = || format!("{s:?}: expected MODEL:VARIANT=PLAN (PLAN a file or float32)");
    let (model, rest) = s.split_once(':').ok_or_else(err)?;
    let (variant, plan) = rest.split_once('=').ok_or_else(err)?;
    if model.is_empty() || variant.is_empty() || plan.is_empty() {
        return Err(err());
    }
    Ok((model.into(), variant.into(), plan.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_with_unknown_key_names_it() {
        let e = toml::from_str::<ServeConfig>("[batching]\nmax_wiat = 3\n").unwrap_err();
        assert!(e.to_string().contains("max_wiat"), "{e}");
    }

    #[test]
    fn full_file_parses_and_validates() {
        let c: ServeConfig = toml::from_str(
            r#"
            listen = "127.0.0.1:6000"
            shutdown_grace_seconds = 5
            [[models]]
            name = "mini"
            path = "models/all-MiniLM-L6-v2"
            variants = { reference = "float32" }
            [batching]
            max_batch_tokens = 4096
            max_wait = 5
            "#,
        )
        .unwrap();
        let c = c.validate().unwrap();
        assert_eq!(c.batching.max_wait, Duration::from_millis(5));
        assert_eq!(c.models[0].name, "mini");
        // What `serve --check` prints reads back as the same configuration (and holds no token).
        let printed = serde_json::to_value(&c).unwrap();
        assert!(printed.get("auth_token").is_none());
        let back: ServeConfig = serde_json::from_value(printed).unwrap();
        assert_eq!(back.listen, c.listen);
        assert_eq!(back.batching, c.batching);
        assert_eq!(back.models, c.models);
    }

    #[test]
    fn defaults_serve_every_installed_model_with_its_plan_and_float32() {
        let dir = tempfile::tempdir().unwrap();
        // Nothing installed: the first default model, so that loading it names its path.
        let none = default_models(dir.path());
        assert_eq!(none.len(), 1);
        assert_eq!(none[0].path, dir.path().join("all-MiniLM-L6-v2"));
        // Two installed, one with a plan.
        for sub in ["all-MiniLM-L6-v2", "rampart-pii"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
            std::fs::write(dir.path().join(sub).join("config.json"), "{}").unwrap();
        }
        let plan = dir.path().join("rampart-pii").join(DEFAULT_PLAN_FILE);
        std::fs::write(&plan, "{}").unwrap();
        let found = default_models(dir.path());
        let names: Vec<&str> = found.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["all-MiniLM-L6-v2", "rampart-pii"]);
        assert!(
            found[0].variants.is_empty(),
            "no plan: float32 is the default"
        );
        assert_eq!(found[0].plan, None);
        assert_eq!(found[1].plan, Some(plan));
        assert_eq!(found[1].variants["float32"], PathBuf::from("float32"));
    }

    #[test]
    fn reject_duplicates() {
        let d = ServeConfig {
            models: vec![
                parse_model_arg("a=x").unwrap(),
                parse_model_arg("a=y").unwrap(),
            ],
            ..Default::default()
        };
        assert!(d.validate().unwrap_err().to_string().contains("twice"));
        assert_eq!(parse_model_arg("some/dir/mini").unwrap().name, "mini");
        assert_eq!(
            parse_variant_arg("mini:fp=float32").unwrap(),
            ("mini".into(), "fp".into(), "float32".into())
        );
        assert!(parse_variant_arg("mini=x").is_err());
    }

    #[test]
    fn tls_and_token_files_are_read_and_checked_at_start_up() {
        let mut c = ServeConfig::default();
        c.tls.cert_file = Some("/nonexistent/cert.pem".into());
        let e = c.clone().validate().unwrap_err().to_string();
        assert!(e.contains("tls.cert_file and tls.key_file"), "{e}");
        c.tls.key_file = Some("/nonexistent/key.pem".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("tls.cert_file") && e.contains("cannot read"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "two words\n").unwrap();
        let c = ServeConfig {
            auth_token_file: Some(token),
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("printable ASCII"));
    }
}
