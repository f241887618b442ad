//! The TEI-compatible routes (`POST /embed`, `POST /predict`, `GET /info`) and samp's
//! `POST /tag`.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tonic::Code;

use super::failure::{json_response, Failure};
use super::{answer_post, count, list_models, parse, texts, Door};
use crate::model::{LabelScore, Tagging};
use crate::server::proto;
use crate::server::proto::samp_server::Samp;

/// The truncation of a TEI request: `truncate: true` cuts long texts, `false` refuses them;
/// unset, the server's default (cut).
fn tei_truncation(truncate: Option<bool>) -> i32 {
    match truncate {
        None => proto::Truncation::Unspecified as i32,
        Some(true) => proto::Truncation::Truncate as i32,
        Some(false) => proto::Truncation::Error as i32,
    }
}

/// The body of the TEI-style routes (`/embed`, `/predict`, `/tag`): `inputs`, and the options of
/// each route (one route's option sent to another is refused, not ignored).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TeiBody<'a> {
    #[serde(borrow)]
    inputs: &'a RawValue,
    /// true: cut long texts; false: refuse them; unset: the server's default (cut).
    truncate: Option<bool>,
    /// samp's: a loaded model and variant (else the one model that does the task).
    #[serde(default)]
    model: String,
    #[serde(default)]
    variant: String,
    /// `/embed`.
    normalize: Option<bool>,
    dimensions: Option<u32>,
    /// `/predict`.
    #[serde(default)]
    raw_scores: bool,
    /// `/tag`: none, simple (default), first, average or max.
    aggregation: Option<String>,
}

impl TeiBody<'_> {
    /// Refuse the options of other routes than `route`, which takes those in `own`.
    fn only(&self, route: &str, own: &[&str]) -> Result<(), Failure> {
        let set = [
            ("normalize", self.normalize.is_some()),
            ("dimensions", self.dimensions.is_some()),
            ("raw_scores", self.raw_scores),
            ("aggregation", self.aggregation.is_some()),
        ];
        match set.iter().find(|(name, on)| *on && !own.contains(name)) {
            Some((name, _)) => Err(Failure::invalid("body", format!("{route} takes no {name}"))),
            None => Ok(()),
        }
    }
}

/// TEI `POST /embed`: `{"inputs": "text" | ["text", ...]}` → `[[f32, ...], ...]`.
pub(super) async fn embed(State(door): State<Door>, headers: HeaderMap, body: Body) -> Response {
    answer_post(door, headers, body, Failure::tei, |p| async move {
        let r: TeiBody = p.parse()?;
        r.only("/embed", &["normalize", "dimensions"])?;
        let (texts, _) = texts(&p.door, "inputs", r.inputs)?;
        let msg = proto::EmbedRequest {
            texts,
            model: r.model,
            variant: r.variant,
            truncation: tei_truncation(r.truncate),
            normalize: r.normalize,
            dimensions: r.dimensions.unwrap_or(0),
        };
        let out = p.door.svc.embed(p.request(msg)).await?;
        let vectors: Vec<Vec<f32>> = out
            .into_inner()
            .embeddings
            .into_iter()
            .map(|e| e.values)
            .collect();
        Ok(json_response(StatusCode::OK, &vectors))
    })
    .await
}

/// One input of `/predict`: a text, `[text]`, or `[a, b]` (a pair).
fn sequence(i: usize, v: Value) -> Result<proto::ClassifyInput, Failure> {
    use proto::classify_input::Input as In;
    let bad = || Failure::invalid("inputs", format!("inputs[{i}]: a text, [text] or [a, b]"));
    let input = match v {
        Value::String(t) => In::Text(t),
        Value::Array(mut v) if v.len() == 1 => match v.pop() {
            Some(Value::String(t)) => In::Text(t),
            _ => return Err(bad()),
        },
        Value::Array(v) if v.len() == 2 => {
            let mut it = v.into_iter();
            match (it.next(), it.next()) {
                (Some(Value::String(a)), Some(Value::String(b))) => {
                    In::Pair(proto::TextPair { a, b })
                }
                _ => return Err(bad()),
            }
        }
        _ => return Err(bad()),
    };
    Ok(proto::ClassifyInput { input: Some(input) })
}

/// TEI `POST /predict`: `{"inputs": "text"}` → `[{"label", "score"}, ...]` (every label, best
/// first); `["a", "b"]` is one pair (as in TEI); `[["t1"], ["a", "b"], "t3"]` a batch →
/// a list of such lists.
pub(super) async fn predict(State(door): State<Door>, headers: HeaderMap, body: Body) -> Response {
    answer_post(door, headers, body, Failure::tei, |p| async move {
        let r: TeiBody = p.parse()?;
        r.only("/predict", &["raw_scores"])?;
        if r.raw_scores {
            return Err(Failure::invalid(
                "raw_scores",
                "raw_scores is not supported: samp answers probabilities",
            ));
        }
        let raw = r.inputs.get().trim_start();
        let (inputs, batch) = if raw.starts_with('[') {
            count(&p.door, "inputs", r.inputs)?;
            let items: Vec<Value> = parse(raw.as_bytes())?;
            let pair = items.len() == 2 && items.iter().all(Value::is_string);
            if pair {
                (vec![sequence(0, Value::Array(items))?], false)
            } else {
                let inputs = items
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| sequence(i, v))
                    .collect::<Result<Vec<_>, _>>()?;
                (inputs, true)
            }
        } else {
            (vec![sequence(0, parse(raw.as_bytes())?)?], false)
        };
        let msg = proto::ClassifyRequest {
            inputs,
            model: r.model,
            variant: r.variant,
            truncation: tei_truncation(r.truncate),
        };
        let out = p.door.svc.classify(p.request(msg)).await?;
        let results: Vec<Value> = out
            .into_inner()
            .results
            .into_iter()
            .map(|c| {
                let mut scores: Vec<LabelScore> = c.scores.into_iter().map(Into::into).collect();
                scores.sort_by(|a, b| b.score.total_cmp(&a.score));
                json!(scores)
            })
            .collect();
        Ok(per_input(results, batch))
    })
    .await
}

/// samp's `POST /tag` (TEI has none): `{"inputs": "text"}` → `[{"label", "score", "start",
/// "end", "text"}, ...]` (character offsets); a list of texts → a list of such lists.
pub(super) async fn tag(State(door): State<Door>, headers: HeaderMap, body: Body) -> Response {
    answer_post(door, headers, body, Failure::tei, |p| async move {
        let r: TeiBody = p.parse()?;
        r.only("/tag", &["aggregation"])?;
        let (texts, batch) = texts(&p.door, "inputs", r.inputs)?;
        use proto::Aggregation as A;
        let aggregation = match r.aggregation.as_deref() {
            None | Some("simple") => A::Simple,
            Some("none") => A::None,
            Some("first") => A::First,
            Some("average") => A::Average,
            Some("max") => A::Max,
            Some(other) => {
                return Err(Failure::invalid(
                    "aggregation",
                    format!("aggregation {other:?}: none, simple, first, average or max"),
                ))
            }
        };
        let msg = proto::TagRequest {
            texts,
            model: r.model,
            variant: r.variant,
            truncation: tei_truncation(r.truncate),
            aggregation: aggregation as i32,
        };
        let out = p.door.svc.tag(p.request(msg)).await?;
        let results: Vec<Value> = out
            .into_inner()
            .results
            .into_iter()
            .map(|t| json!(Tagging::from(t).entities))
            .collect();
        Ok(per_input(results, batch))
    })
    .await
}

/// The answer of a TEI-style route: one input's result alone, a batch's as a list.
fn per_input(mut results: Vec<Value>, batch: bool) -> Response {
    let body = if batch {
        Value::Array(results)
    } else {
        results.pop().unwrap_or(Value::Null)
    };
    json_response(StatusCode::OK, &body)
}

/// One model as JSON (what `ListModels` says of it).
fn model_json(m: &proto::ModelInfo) -> Value {
    json!({
        "name": m.name, "task": m.task, "architecture": m.architecture, "labels": m.labels,
        "max_tokens": m.max_tokens, "hidden_size": m.hidden_size, "layers": m.layers,
        "variants": m.variants.iter().map(|v| json!({
            "name": v.name, "precision": v.precision, "default": v.is_default,
            "metric": v.metric, "score": v.score, "drop": v.drop,
        })).collect::<Vec<_>>(),
    })
}

/// TEI `GET /info`, of the embedding model (or the first model when none embeds), with every
/// loaded model under `models`.
pub(super) async fn info(State(door): State<Door>, headers: HeaderMap) -> Response {
    let run = async {
        let models = list_models(&door, &headers).await?;
        let m = models
            .iter()
            .find(|m| m.task == "embed")
            .or(models.first())
            .ok_or_else(|| Failure::new(Code::Unavailable, "no model loaded"))?;
        let default = m.variants.iter().find(|v| v.is_default);
        let model_type = match m.task.as_str() {
            "classify" => json!({"classifier": {
                "id2label": m.labels.iter().enumerate()
                    .map(|(i, l)| (i.to_string(), Value::from(l.clone())))
                    .collect::<serde_json::Map<_, _>>(),
            }}),
            "tag" => json!({"tagger": {"labels": m.labels}}),
            _ => json!({"embedding": {}}),
        };
        let state = door.svc.state();
        let limits = state.limits();
        let body = json!({
            "model_id": m.name,
            "model_sha": null,
            "model_dtype": default.map_or("float32".to_string(), |v| v.precision.clone()),
            "model_type": model_type,
            "max_input_length": m.max_tokens,
            "max_client_batch_size": limits.max_inputs,
            "version": env!("CARGO_PKG_VERSION"),
            "models": models.iter().map(model_json).collect::<Vec<_>>(),
        });
        Ok::<_, Failure>(json_response(StatusCode::OK, &body))
    };
    run.await.unwrap_or_else(Failure::tei)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predict_sequences_are_texts_or_pairs() {
        use proto::classify_input::Input as In;
        let s = sequence(0, json!("a")).unwrap();
        assert!(matches!(s.input, Some(In::Text(t)) if t == "a"));
        let s = sequence(0, json!(["a"])).unwrap();
        assert!(matches!(s.input, Some(In::Text(t)) if t == "a"));
        let s = sequence(0, json!(["a", "b"])).unwrap();
        assert!(matches!(s.input, Some(In::Pair(p)) if p.a == "a" && p.b == "b"));
        assert!(sequence(3, json!(["a", "b", "c"])).is_err());
        assert!(sequence(3, json!(7)).is_err());
    }
}
