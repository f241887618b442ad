//! The OpenAI-compatible routes: `POST /v1/embeddings` and `GET /v1/models`.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tonic::Code;

use super::failure::{json_response, Failure};
use super::{answer_post, list_models, texts, Door};
use crate::server::proto;
use crate::server::proto::samp_server::Samp;

#[derive(Deserialize)]
struct OpenAiEmbeddings<'a> {
    /// A loaded model's name, or `NAME:VARIANT`.
    model: String,
    #[serde(borrow)]
    input: &'a RawValue,
    encoding_format: Option<String>,
    dimensions: Option<u32>,
    /// Accepted and ignored, as OpenAI's own `user`.
    #[serde(default, rename = "user")]
    _user: Option<IgnoredAny>,
}

/// `model` or `model:variant`, as loaded; a name with a colon that is itself loaded wins.
fn model_and_variant(models: &[proto::ModelInfo], name: &str) -> (String, String) {
    if models.iter().any(|m| m.name == name) {
        return (name.to_string(), String::new());
    }
    match name.rsplit_once(':') {
        Some((m, v)) if models.iter().any(|x| x.name == m) => (m.to_string(), v.to_string()),
        _ => (name.to_string(), String::new()),
    }
}

/// OpenAI `POST /v1/embeddings`: `{"model", "input": str | [str], "encoding_format":
/// "float" | "base64", "dimensions"}`.
pub(super) async fn embeddings(
    State(door): State<Door>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    answer_post(door, headers, body, Failure::openai, |p| async move {
        let r: OpenAiEmbeddings = p.parse()?;
        let base64 = match r.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                return Err(Failure::invalid(
                    "encoding_format",
                    format!("encoding_format {other:?}: float or base64"),
                ))
            }
        };
        let (texts, _) = texts(&p.door, "input", r.input)?;
        let models = list_models(&p.door, &p.headers).await?;
        let (model, variant) = model_and_variant(&models, &r.model);
        let msg = proto::EmbedRequest {
            texts,
            model,
            variant,
            truncation: proto::Truncation::Unspecified as i32,
            normalize: None,
            dimensions: r.dimensions.unwrap_or(0),
        };
        let out = p
            .door
            .svc
            .embed(p.request(msg))
            .await
            .map_err(|s| {
                let mut f = Failure::from(s);
                if f.code == Code::NotFound {
                    f.param = Some("model");
                }
                f
            })?
            .into_inner();
        let served = out.served.unwrap_or_default();
        let data: Vec<Value> = out
            .embeddings
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let embedding = if base64 {
                    let bytes: Vec<u8> = e.values.iter().flat_map(|v| v.to_le_bytes()).collect();
                    Value::from(base64::engine::general_purpose::STANDARD.encode(bytes))
                } else {
                    json!(e.values)
                };
                json!({"object": "embedding", "index": i, "embedding": embedding})
            })
            .collect();
        let body = json!({
            "object": "list",
            "data": data,
            "model": served.model,
            "usage": {"prompt_tokens": served.tokens, "total_tokens": served.tokens},
        });
        Ok(json_response(StatusCode::OK, &body))
    })
    .await
}

/// OpenAI `GET /v1/models`: every model, and every variant as `NAME:VARIANT`.
pub(super) async fn models(State(door): State<Door>, headers: HeaderMap) -> Response {
    let run = async {
        let models = list_models(&door, &headers).await?;
        let data: Vec<Value> = models
            .iter()
            .flat_map(|m| {
                let own = std::iter::once(m.name.clone());
                let variants = m.variants.iter().map(|v| format!("{}:{}", m.name, v.name));
                own.chain(variants)
            })
            .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "samp"}))
            .collect();
        Ok::<_, Failure>(json_response(
            StatusCode::OK,
            &json!({"object": "list", "data": data}),
        ))
    };
    run.await.unwrap_or_else(Failure::openai)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_may_carry_a_variant() {
        let models = vec![proto::ModelInfo {
            name: "mini".into(),
            ..Default::default()
        }];
        assert_eq!(
            model_and_variant(&models, "mini"),
            ("mini".into(), String::new())
        );
        assert_eq!(
            model_and_variant(&models, "mini:float32"),
            ("mini".into(), "float32".into())
        );
        assert_eq!(
            model_and_variant(&models, "gpt:x"),
            ("gpt:x".into(), String::new())
        );
    }
}
