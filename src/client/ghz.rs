//! ghz configuration files (deploy/ghz/*.json) for `samp loadgen --config`, so that the
//! documented load tests run where ghz cannot be installed. Read: `call`, `host`, `data-file`
//! (or inline `data`), `concurrency`, `connections`, `total`, `duration`, `rps`, `timeout`;
//! `insecure`, `proto`, `import-paths` and `skip-first` are accepted and need nothing here
//! (samp loadgen has the proto built in and counts every request). Anything else is an error
//! naming the key, as is a request field samp's message does not have.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::loadgen::{Message, Rpc};
use crate::server::proto;

/// What a ghz config asks for; `None` where it is silent.
#[derive(Debug, Clone, Default)]
pub struct GhzConfig {
    pub rpc: Option<Rpc>,
    pub host: Option<String>,
    pub messages: Vec<Message>,
    pub concurrency: Option<usize>,
    pub connections: Option<usize>,
    pub total: Option<usize>,
    pub duration: Option<Duration>,
    pub rps: Option<f64>,
    pub timeout: Option<Duration>,
}

const IGNORED: [&str; 4] = ["insecure", "proto", "import-paths", "skip-first"];

/// Read a ghz config; `data-file` is resolved against the working directory, as ghz does.
pub fn read(path: &Path) -> anyhow::Result<GhzConfig> {
    read_from(path, Path::new("."))
}

/// Read a ghz config, resolving a relative `data-file` against `base`.
fn read_from(path: &Path, base: &Path) -> anyhow::Result<GhzConfig> {
    let at = |what: String| anyhow::anyhow!("{}: {what}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| at(format!("cannot read: {e}")))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| at(format!("bad JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| at("not a JSON object".into()))?;
    let mut c = GhzConfig::default();
    let mut data = None;
    for (key, value) in obj {
        let bad = |want: &str| at(format!("{key}: {want}, not {value}"));
        let count = || {
            value
                .as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| bad("a count"))
        };
        match key.as_str() {
            "call" => c.rpc = Some(rpc(value.as_str().ok_or_else(|| bad("a string"))?).map_err(at)?),
            "host" => c.host = Some(value.as_str().ok_or_else(|| bad("host:port"))?.to_string()),
            "concurrency" => c.concurrency = Some(count()?),
            "connections" => c.connections = Some(count()?),
            "total" => c.total = Some(count()?),
            "rps" => c.rps = Some(value.as_f64().ok_or_else(|| bad("a rate"))?),
            "duration" | "timeout" => {
                let d = duration(value.as_str().ok_or_else(|| bad("a duration like 10s"))?)
                    .ok_or_else(|| bad("a duration like 10s, 500ms or 1m30s"))?;
                if key == "duration" {
                    c.duration = Some(d);
                } else {
                    c.timeout = Some(d);
                }
            }
            "data" => data = Some(value.clone()),
            "data-file" => {
                let file = value.as_str().ok_or_else(|| bad("a path"))?;
                let text = std::fs::read_to_string(base.join(file))
                    .map_err(|e| at(format!("data-file {file}: cannot read: {e}")))?;
                data = Some(
                    serde_json::from_str(&text)
                        .map_err(|e| at(format!("data-file {file}: bad JSON: {e}")))?,
                );
            }
            k if IGNORED.contains(&k) => {}
            _ => return Err(at(format!("unknown key {key:?} (samp loadgen reads call, host, data, data-file, concurrency, connections, total, duration, rps, timeout)"))),
        }
    }
    let rpc = c.rpc.ok_or_else(|| at("no call".into()))?;
    let data = data.ok_or_else(|| at("no data or data-file".into()))?;
    let items = match data {
        Value::Array(v) => v,
        one => vec![one],
    };
    c.messages = items
        .iter()
        .enumerate()
        .map(|(i, m)| message(rpc, m).map_err(|e| at(format!("data[{i}]: {e}"))))
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(!c.messages.is_empty(), "{}: no messages", path.display());
    Ok(c)
}

fn rpc(call: &str) -> Result<Rpc, String> {
    match call {
        "samp.v1.Samp.Embed" | "samp.v1.Samp/Embed" => Ok(Rpc::Embed),
        "samp.v1.Samp.Classify" | "samp.v1.Samp/Classify" => Ok(Rpc::Classify),
        "samp.v1.Samp.Tag" | "samp.v1.Samp/Tag" => Ok(Rpc::Tag),
        other => Err(format!(
            "call {other:?}: samp loadgen calls samp.v1.Samp.Embed, .Classify or .Tag"
        )),
    }
}

/// A Go duration: `10s`, `500ms`, `1m30s`, `2h`.
pub fn duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let n: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += Duration::try_from_secs_f64(n * secs).ok()?;
    }
    Some(total)
}

/// One request message in protobuf's JSON mapping.
fn message(rpc: Rpc, v: &Value) -> Result<Message, String> {
    let obj = v.as_object().ok_or("not a JSON object")?;
    let str_of = |k: &str| -> Result<String, String> {
        match obj.get(k) {
            None => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(format!("{k}: a string, not {other}")),
        }
    };
    let texts = || -> Result<Vec<String>, String> {
        let list = obj
            .get("texts")
            .and_then(Value::as_array)
            .ok_or("texts: a list of strings")?;
        list.iter()
            .map(|t| {
                t.as_str()
                    .map(str::to_string)
                    .ok_or("texts: a list of strings".to_string())
            })
            .collect()
    };
    let truncation = enum_field(
        obj.get("truncation"),
        "TRUNCATION_",
        &["UNSPECIFIED", "TRUNCATE", "ERROR"],
    )?;
    let allowed: &[&str] = match rpc {
        Rpc::Embed => &[
            "texts",
            "model",
            "variant",
            "truncation",
            "normalize",
            "dimensions",
        ],
        Rpc::Classify => &["inputs", "model", "variant", "truncation"],
        Rpc::Tag => &["texts", "model", "variant", "truncation", "aggregation"],
    };
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!(
            "field {k:?} is not in the request ({})",
            allowed.join(", ")
        ));
    }
    let (model, variant) = (str_of("model")?, str_of("variant")?);
    Ok(match rpc {
        Rpc::Embed => Message::Embed(proto::EmbedRequest {
            texts: texts()?,
            model,
            variant,
            truncation,
            normalize: match obj.get("normalize") {
                None => None,
                Some(b) => Some(b.as_bool().ok_or("normalize: true or false")?),
            },
            dimensions: match obj.get("dimensions") {
                None => 0,
                Some(d) => d
                    .as_u64()
                    .and_then(|d| u32::try_from(d).ok())
                    .ok_or("dimensions: a count")?,
            },
        }),
        Rpc::Classify => {
            use proto::classify_input::Input as In;
            let list = obj
                .get("inputs")
                .and_then(Value::as_array)
                .ok_or("inputs: a list of {\"text\": ..} or {\"pair\": {\"a\": .., \"b\": ..}}")?;
            let inputs = list
                .iter()
                .map(|x| {
                    let input = if let Some(t) = x.get("text").and_then(Value::as_str) {
                        In::Text(t.to_string())
                    } else if let Some(p) = x.get("pair") {
                        let side = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_string);
                        In::Pair(proto::TextPair {
                            a: side("a").ok_or("pair.a: a string")?,
                            b: side("b").ok_or("pair.b: a string")?,
                        })
                    } else {
                        return Err("inputs: each {\"text\": ..} or {\"pair\": {..}}".to_string());
                    };
                    Ok(proto::ClassifyInput { input: Some(input) })
                })
                .collect::<Result<_, String>>()?;
            Message::Classify(proto::ClassifyRequest {
                inputs,
                model,
                variant,
                truncation,
            })
        }
        Rpc::Tag => Message::Tag(proto::TagRequest {
            texts: texts()?,
            model,
            variant,
            truncation,
            aggregation: enum_field(
                obj.get("aggregation"),
                "AGGREGATION_",
                &["UNSPECIFIED", "NONE", "SIMPLE", "FIRST", "AVERAGE", "MAX"],
            )?,
        }),
    })
}

/// A proto enum in JSON: its name (`PREFIX` + one of `names`, whose index is its number) or
/// its number.
fn enum_field(v: Option<&Value>, prefix: &str, names: &[&str]) -> Result<i32, String> {
    match v {
        None => Ok(0),
        Some(Value::Number(n)) => n
            .as_i64()
            .filter(|&n| (0..names.len() as i64).contains(&n))
            .map(|n| n as i32)
            .ok_or_else(|| format!("{prefix}: unknown number {n}")),
        Some(Value::String(s)) => names
            .iter()
            .position(|n| s.strip_prefix(prefix) == Some(n))
            .map(|i| i as i32)
            .ok_or_else(|| {
                format!(
                    "{s:?}: one of {prefix}{}",
                    names.join(&format!(", {prefix}"))
                )
            }),
        Some(other) => Err(format!("{prefix}: a name or number, not {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(duration("1.5h"), Some(Duration::from_secs(5400)));
        assert_eq!(duration("10"), None);
        assert_eq!(duration("x"), None);
        assert_eq!(duration(""), None);
    }

    #[test]
    fn the_shipped_configs_read() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        for name in [
            "embed",
            "classify",
            "tag",
            "embed-proto",
            "classify-proto",
            "tag-proto",
        ] {
            let c = read_from(&root.join(format!("deploy/ghz/{name}.json")), root)
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert!(
                !c.messages.is_empty() && c.total.is_some() && c.timeout.is_some(),
                "{name}"
            );
            assert!(c.host.is_some() && c.concurrency.is_some(), "{name}");
        }
    }

    #[test]
    fn bad_configs_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let write = |body: &str| {
            let p = dir.path().join("c.json");
            std::fs::write(&p, body).unwrap();
            read(&p).unwrap_err().to_string()
        };
        let e = write(r#"{"call": "samp.v1.Samp.Embed", "data": [{"texts": ["a"]}], "qps": 3}"#);
        assert!(e.contains("\"qps\""), "{e}");
        let e = write(r#"{"call": "samp.v1.Samp.Embed", "data": [{"text": ["a"]}]}"#);
        assert!(e.contains("data[0]") && e.contains("\"text\""), "{e}");
        let e = write(r#"{"call": "samp.v1.Samp.Fly", "data": []}"#);
        assert!(e.contains("Fly"), "{e}");
        let e = write(
            r#"{"call": "samp.v1.Samp.Tag", "data": {"texts": ["a"], "aggregation": "AGGREGATION_BIG"}}"#,
        );
        assert!(e.contains("AGGREGATION_MAX"), "{e}");
        let ok = dir.path().join("ok.json");
        std::fs::write(
            &ok,
            r#"{"call": "samp.v1.Samp.Classify", "duration": "2s", "data": {"inputs": [{"text": "a"}, {"pair": {"a": "x", "b": "y"}}]}}"#,
        )
        .unwrap();
        let c = read(&ok).unwrap();
        assert_eq!(c.duration, Some(Duration::from_secs(2)));
        assert!(matches!(&c.messages[0], Message::Classify(r) if r.inputs.len() == 2));
    }
}
