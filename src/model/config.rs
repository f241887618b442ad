//! `config.json` and the sentence-transformers side files, parsed into one validated
//! [`ModelConfig`]. Owns the knowledge of how BERT, RoBERTa/XLM-R and DistilBERT name their
//! hyper-parameters; nothing here touches weights or the tokenizer.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::error::{Result, SampError};

/// The encoder families samp implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Bert,
    Roberta,
    DistilBert,
}

impl Arch {
    /// From config.json's `model_type`; `None` for architectures samp does not implement.
    pub fn from_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "bert" => Some(Arch::Bert),
            "roberta" | "xlm-roberta" | "camembert" => Some(Arch::Roberta),
            "distilbert" => Some(Arch::DistilBert),
            _ => None,
        }
    }

    /// Tensor-name prefix of the encoder inside a task checkpoint (`bert.`, ...).
    pub fn prefix(self) -> &'static str {
        match self {
            Arch::Bert => "bert.",
            Arch::Roberta => "roberta.",
            Arch::DistilBert => "distilbert.",
        }
    }
}

/// Which task head the checkpoint carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    Embed,
    Classify,
    Tag,
}

impl Task {
    pub fn name(self) -> &'static str {
        match self {
            Task::Embed => "embed",
            Task::Classify => "classify",
            Task::Tag => "tag",
        }
    }
}

impl std::str::FromStr for Task {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let names = [
            ("embed", Task::Embed),
            ("classify", Task::Classify),
            ("tag", Task::Tag),
        ];
        parse_name("task", s, &names)
    }
}

/// `s` as one of `names`, or an error that lists them ("unknown pooling \"x\" (mean, cls,
/// max)").
pub(crate) fn parse_name<T: Copy>(what: &str, s: &str, names: &[(&str, T)]) -> Result<T, String> {
    names
        .iter()
        .find(|(n, _)| *n == s)
        .map(|&(_, v)| v)
        .ok_or_else(|| {
            let all: Vec<&str> = names.iter().map(|(n, _)| *n).collect();
            format!("unknown {what} {s:?} ({})", all.join(", "))
        })
}

/// Hidden activation of the FFN (defined with the kernels that compute it).
pub use crate::kernels::Activation;

/// Hyper-parameters of one encoder checkpoint, validated.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: Arch,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f32,
    pub activation: Activation,
    pub pad_token_id: usize,
    /// Task of the checkpoint's head, from `architectures` (or `id2label` as a hint).
    pub task: Task,
    /// Label names by index; empty for embedding models.
    pub id2label: Vec<String>,
    /// `problem_type: multi_label_classification` → sigmoid instead of softmax.
    pub multi_label: bool,
}

impl ModelConfig {
    /// Position ids of RoBERTa start after the padding index; BERT's at 0.
    pub fn position_offset(&self) -> usize {
        match self.arch {
            Arch::Roberta => self.pad_token_id + 1,
            _ => 0,
        }
    }

    /// The longest input (special tokens included) the position table allows.
    pub fn position_limit(&self) -> usize {
        self.max_position_embeddings
            .saturating_sub(self.position_offset())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// Parse `dir/config.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let v = read_json(&path, "config.json: the model's hyper-parameters")?;
        Self::from_json(&v, &path)
    }

    pub fn from_json(v: &Value, path: &Path) -> Result<Self> {
        let bad = |reason: String| SampError::malformed(path, reason);
        let model_type = v
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("no \"model_type\" string".into()))?;
        let arch = Arch::from_model_type(model_type).ok_or_else(|| {
            SampError::UnsupportedArchitecture {
                path: path.to_path_buf(),
                found: model_type.to_string(),
            }
        })?;
        let get = |keys: &[&str]| -> Result<usize> {
            for k in keys {
                if let Some(x) = v.get(*k) {
                    return x
                        .as_u64()
                        .filter(|&n| n > 0)
                        .map(|n| n as usize)
                        .ok_or_else(|| {
                            bad(format!("\"{k}\" must be a positive integer, got {x}"))
                        });
                }
            }
            Err(bad(format!("missing \"{}\"", keys[0])))
        };
        let (hidden, layers, heads, intermediate) = match arch {
            Arch::DistilBert => (
                get(&["dim", "hidden_size"])?,
                get(&["n_layers", "num_hidden_layers"])?,
                get(&["n_heads", "num_attention_heads"])?,
                get(&["hidden_dim", "intermediate_size"])?,
            ),
            _ => (
                get(&["hidden_size"])?,
                get(&["num_hidden_layers"])?,
                get(&["num_attention_heads"])?,
                get(&["intermediate_size"])?,
            ),
        };
        if hidden % heads != 0 {
            return Err(bad(format!(
                "hidden size {hidden} is not a multiple of the {heads} attention heads"
            )));
        }
        let vocab_size = get(&["vocab_size"])?;
        let max_position_embeddings = get(&["max_position_embeddings"])?;
        let type_vocab_size = match arch {
            Arch::DistilBert => 0,
            _ => v
                .get("type_vocab_size")
                .and_then(Value::as_u64)
                .unwrap_or(2) as usize,
        };
        let layer_norm_eps = v
            .get("layer_norm_eps")
            .and_then(Value::as_f64)
            .unwrap_or(1e-12) as f32;
        let activation = parse_activation(v).map_err(bad)?;
        let pad_token_id = parse_pad_token_id(v, arch, vocab_size).map_err(bad)?;
        if let Some(pet) = v.get("position_embedding_type").and_then(Value::as_str) {
            if pet != "absolute" {
                return Err(bad(format!(
                    "position_embedding_type {pet:?} is not supported (only \"absolute\")"
                )));
            }
        }
        let id2label = parse_id2label(v).map_err(bad)?;
        let task = parse_task(v);
        let multi_label =
            v.get("problem_type").and_then(Value::as_str) == Some("multi_label_classification");
        Ok(ModelConfig {
            arch,
            hidden,
            layers,
            heads,
            intermediate,
            vocab_size,
            max_position_embeddings,
            type_vocab_size,
            layer_norm_eps,
            activation,
            pad_token_id,
            task,
            id2label,
            multi_label,
        })
    }
}

/// The FFN's activation from `hidden_act` (or DistilBERT's `activation`); GELU when absent.
fn parse_activation(v: &Value) -> Result<Activation, String> {
    let act_name = v
        .get("hidden_act")
        .or_else(|| v.get("activation"))
        .and_then(Value::as_str)
        .unwrap_or("gelu");
    match act_name {
        "gelu" => Ok(Activation::Gelu),
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
        "relu" => Ok(Activation::Relu),
        other => Err(format!("unsupported activation {other:?}")),
    }
}

/// `pad_token_id`, checked against the vocabulary; absent: 1 for RoBERTa, else 0.
fn parse_pad_token_id(v: &Value, arch: Arch, vocab_size: usize) -> Result<usize, String> {
    match v.get("pad_token_id") {
        None | Some(Value::Null) => Ok(if arch == Arch::Roberta { 1 } else { 0 }),
        Some(p) => p
            .as_u64()
            .and_then(|p| usize::try_from(p).ok())
            .filter(|&p| p < vocab_size)
            .ok_or_else(|| {
                format!("pad_token_id {p} is not a token id below vocab_size {vocab_size}")
            }),
    }
}

/// The head's task from `architectures`: `*ForSequenceClassification` classifies,
/// `*ForTokenClassification` tags, anything else embeds.
fn parse_task(v: &Value) -> Task {
    let architectures: Vec<&str> = v
        .get("architectures")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if architectures
        .iter()
        .any(|a| a.ends_with("ForSequenceClassification"))
    {
        Task::Classify
    } else if architectures
        .iter()
        .any(|a| a.ends_with("ForTokenClassification"))
    {
        Task::Tag
    } else {
        Task::Embed
    }
}

/// `id2label` as a dense vector; keys must be 0..n.
fn parse_id2label(v: &Value) -> Result<Vec<String>, String> {
    let Some(map) = v.get("id2label").and_then(Value::as_object) else {
        return Ok(Vec::new());
    };
    let mut by_id = BTreeMap::new();
    for (k, name) in map {
        let id: usize = k
            .parse()
            .map_err(|_| format!("id2label key {k:?} is not an integer"))?;
        let name = name
            .as_str()
            .ok_or_else(|| format!("id2label[{k}] is not a string"))?;
        by_id.insert(id, name.to_string());
    }
    if by_id.keys().copied().ne(0..by_id.len()) {
        return Err("id2label keys must be 0..n without gaps".into());
    }
    Ok(by_id.into_values().collect())
}

/// Pooling of token states into one vector, as sentence-transformers names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    Mean,
    Cls,
    Max,
}

impl std::str::FromStr for Pooling {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let names = [
            ("mean", Pooling::Mean),
            ("cls", Pooling::Cls),
            ("max", Pooling::Max),
        ];
        parse_name("pooling", s, &names)
    }
}

/// What the sentence-transformers files (when present) say about embedding.
#[derive(Debug, Clone)]
pub struct SentenceConfig {
    pub pooling: Pooling,
    pub normalize: bool,
    pub max_seq_length: Option<usize>,
}

impl SentenceConfig {
    /// Read `modules.json`, `1_Pooling/config.json` (or the pooling module's path) and
    /// `sentence_bert_config.json`. Absent files mean mean pooling, no normalisation.
    pub fn load(dir: &Path) -> Result<Self> {
        let mut cfg = SentenceConfig {
            pooling: Pooling::Mean,
            normalize: false,
            max_seq_length: None,
        };
        let sbert = dir.join("sentence_bert_config.json");
        if sbert.exists() {
            let v = read_json(&sbert, "sentence_bert_config.json")?;
            cfg.max_seq_length = v
                .get("max_seq_length")
                .and_then(Value::as_u64)
                .map(|n| n as usize);
        }
        let modules = dir.join("modules.json");
        let mut pooling_dir = dir.join("1_Pooling");
        if modules.exists() {
            let v = read_json(&modules, "modules.json")?;
            let list = v
                .as_array()
                .ok_or_else(|| SampError::malformed(&modules, "expected a JSON array"))?;
            for m in list {
                let ty = m.get("type").and_then(Value::as_str).unwrap_or_default();
                if ty.ends_with("models.Normalize") {
                    cfg.normalize = true;
                }
                if ty.ends_with("models.Pooling") {
                    if let Some(p) = m.get("path").and_then(Value::as_str) {
                        // A module path stays inside the model directory.
                        let inside = Path::new(p).components().all(|c| {
                            matches!(
                                c,
                                std::path::Component::Normal(_) | std::path::Component::CurDir
                            )
                        });
                        if !inside {
                            return Err(SampError::malformed(
                                &modules,
                                format!("path {p:?} leaves the model directory"),
                            ));
                        }
                        pooling_dir = dir.join(p);
                    }
                }
            }
        }
        let pooling_cfg = pooling_dir.join("config.json");
        if pooling_cfg.exists() {
            let v = read_json(&pooling_cfg, "pooling config")?;
            let on = |k: &str| v.get(k).and_then(Value::as_bool).unwrap_or(false);
            cfg.pooling = if on("pooling_mode_cls_token") {
                Pooling::Cls
            } else if on("pooling_mode_max_tokens") {
                Pooling::Max
            } else if on("pooling_mode_mean_tokens") {
                Pooling::Mean
            } else {
                return Err(SampError::malformed(
                    &pooling_cfg,
                    "no supported pooling mode is on (mean, cls, max)",
                ));
            };
        }
        Ok(cfg)
    }
}

/// `do_lower_case` of `dir/tokenizer_config.json` (true when the file or the key is absent,
/// as for BERT's uncased checkpoints).
pub fn do_lower_case(dir: &Path) -> Result<bool> {
    let cfg = dir.join("tokenizer_config.json");
    if !cfg.exists() {
        return Ok(true);
    }
    Ok(read_json(&cfg, "tokenizer_config.json")?
        .get("do_lower_case")
        .and_then(Value::as_bool)
        .unwrap_or(true))
}

pub(crate) fn read_json(path: &Path, what: &'static str) -> Result<Value> {
    let bytes = std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => SampError::MissingFile {
            path: path.to_path_buf(),
            what,
        },
        _ => SampError::Io {
            path: path.to_path_buf(),
            source: e,
        },
    })?;
    serde_json::from_slice(&bytes).map_err(|e| SampError::malformed(path, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ModelConfig> {
        ModelConfig::from_json(&v, Path::new("config.json"))
    }

    fn bert() -> Value {
        json!({"model_type": "bert", "hidden_size": 384, "num_hidden_layers": 6,
               "num_attention_heads": 12, "intermediate_size": 1536, "vocab_size": 30522,
               "max_position_embeddings": 512})
    }

    #[test]
    fn bert_defaults_to_embed() {
        let c = parse(bert()).unwrap();
        assert_eq!(c.arch, Arch::Bert);
        assert_eq!(c.task, Task::Embed);
        assert_eq!(c.head_dim(), 32);
        assert_eq!(c.position_limit(), 512);
    }

    #[test]
    fn roberta_limit_accounts_for_padding_offset() {
        let mut v = bert();
        v["model_type"] = json!("roberta");
        v["pad_token_id"] = json!(1);
        v["max_position_embeddings"] = json!(514);
        assert_eq!(parse(v).unwrap().position_limit(), 512);
    }

    #[test]
    fn task_and_labels_from_architectures() {
        let mut v = bert();
        v["architectures"] = json!(["BertForTokenClassification"]);
        v["id2label"] = json!({"1": "B-X", "0": "O"});
        let c = parse(v).unwrap();
        assert_eq!(c.task, Task::Tag);
        assert_eq!(c.id2label, vec!["O", "B-X"]);
    }

    #[test]
    fn errors_name_the_problem() {
        let mut v = bert();
        v["model_type"] = json!("gpt2");
        let e = parse(v).unwrap_err().to_string();
        assert!(e.contains("gpt2") && e.contains("unsupported"), "{e}");
        let mut v = bert();
        v.as_object_mut().unwrap().remove("hidden_size");
        assert!(parse(v).unwrap_err().to_string().contains("hidden_size"));
        let mut v = bert();
        v["num_attention_heads"] = json!(5);
        assert!(parse(v).unwrap_err().to_string().contains("multiple"));
        let mut v = bert();
        v["id2label"] = json!({"0": "a", "2": "b"});
        assert!(parse(v).unwrap_err().to_string().contains("gaps"));
    }
}
