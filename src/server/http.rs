//! The HTTP/JSON door beside gRPC: TEI-compatible `POST /embed`, `POST /predict`, `GET /info`,
//! `GET /health`, samp's own `POST /tag`, and OpenAI-compatible `POST /v1/embeddings` and
//! `GET /v1/models`. Each call becomes its samp.v1 request and runs through the very handler a
//! gRPC call runs through (validation, admission, batching, deadlines, metrics, with
//! `api="http"`); an error keeps its gRPC code, as an HTTP status plus a JSON body.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Code;

use super::deadline::Arrived;
use super::gate;
use super::observe::Api;
use super::proto;
use super::proto::samp_server::Samp;
use super::service::SampService;
use super::status::ServeError;
use super::validate::check_count;

/// What every route shares.
#[derive(Clone)]
struct Door {
    svc: SampService,
    token: Option<Arc<str>>,
    /// KiB of request bodies in flight (being received, parsed or answered), over every HTTP
    /// connection: a budget of `limits.max_inflight_request_bytes` of the door's own.
    budget: Arc<Semaphore>,
    max_body: usize,
}

impl Door {
    /// With a bearer token configured: the call must carry it.
    fn check_token(&self, headers: &HeaderMap) -> Result<(), Failure> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let got = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
        if gate::authorized(got, token) {
            Ok(())
        } else {
            Err(Failure::new(
                Code::Unauthenticated,
                "missing or wrong bearer token (authorization: Bearer ...)",
            ))
        }
    }
}

/// The routes, over the same service the gRPC port serves.
pub fn router(svc: SampService, token: Option<String>) -> Router {
    let limits = *svc.state().limits();
    let door = Door {
        svc,
        token: token.map(Into::into),
        budget: Arc::new(Semaphore::new(
            limits
                .max_inflight_request_bytes
                .div_ceil(1024)
                .min(Semaphore::MAX_PERMITS),
        )),
        max_body: limits.max_message_bytes,
    };
    Router::new()
        .route("/embed", post(tei_embed))
        .route("/predict", post(tei_predict))
        .route("/tag", post(tag))
        .route("/info", get(info))
        .route("/health", get(health))
        .route("/v1/embeddings", post(openai_embeddings))
        .route("/v1/models", get(openai_models))
        .fallback(|| async { Failure::new(Code::NotFound, "no such route").tei() })
        .with_state(door)
}

/// Serve `router` on `listener` (at most `max_connections` open at once, accept errors backed
/// off) until `stop` resolves; then finish the requests in flight.
pub async fn serve(
    listener: TcpListener,
    max_connections: usize,
    router: Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = Slots {
        listener,
        slots: Arc::new(Semaphore::new(max_connections)),
    };
    axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
}

/// The HTTP listener: a slot per open connection, like the gRPC port's.
struct Slots {
    listener: TcpListener,
    slots: Arc<Semaphore>,
}

impl axum::serve::Listener for Slots {
    type Io = gate::Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (gate::Conn, SocketAddr) {
        loop {
            let conn = gate::accept_slot(&self.listener, &self.slots).await;
            if let Ok(addr) = conn.peer_addr() {
                return (conn, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// An error as the door answers it: the gRPC code (kept in the body), and what went wrong.
#[derive(Debug)]
struct Failure {
    code: Code,
    message: String,
    /// The request field at fault, when one is.
    param: Option<&'static str>,
}

impl Failure {
    fn new(code: Code, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
            param: None,
        }
    }

    fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Failure {
            code: Code::InvalidArgument,
            message: message.into(),
            param: Some(param),
        }
    }

    /// The HTTP status of a gRPC code (the mapping of google.rpc.Code, 499 for a client that
    /// went away).
    fn status(&self) -> StatusCode {
        match self.code {
            Code::Ok => StatusCode::OK,
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
                StatusCode::BAD_REQUEST
            }
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Cancelled => StatusCode::from_u16(499).expect("valid status"),
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The gRPC code's name, e.g. `INVALID_ARGUMENT`.
    fn code_name(&self) -> String {
        format!("{:?}", self.code)
            .chars()
            .enumerate()
            .flat_map(|(i, c)| {
                let sep = (i > 0 && c.is_ascii_uppercase()).then_some('_');
                sep.into_iter()
                    .chain(std::iter::once(c.to_ascii_uppercase()))
            })
            .collect()
    }

    /// TEI's error body: `{"error", "error_type"}`, plus the gRPC code.
    fn tei(self) -> Response {
        let kind = match self.code {
            Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => "Validation",
            Code::ResourceExhausted => "Overloaded",
            Code::Unavailable => "Unhealthy",
            _ => "Backend",
        };
        let body = json!({"error": self.message, "error_type": kind, "code": self.code_name()});
        self.respond(body)
    }

    /// OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`.
    fn openai(self) -> Response {
        let kind = match self.code {
            Code::InvalidArgument | Code::NotFound | Code::FailedPrecondition => {
                "invalid_request_error"
            }
            Code::Unauthenticated => "authentication_error",
            Code::ResourceExhausted => "rate_limit_error",
            _ => "server_error",
        };
        let body = json!({"error": {
            "message": self.message, "type": kind, "param": self.param, "code": self.code_name(),
        }});
        self.respond(body)
    }

    fn respond(self, body: Value) -> Response {
        let mut r = json_response(self.status(), &body);
        if matches!(self.code, Code::ResourceExhausted | Code::Unavailable) {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        Failure::new(s.code(), s.message())
    }
}

impl From<ServeError> for Failure {
    fn from(e: ServeError) -> Self {
        tonic::Status::from(e).into()
    }
}

/// A JSON body with this status.
fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    let bytes = serde_json::to_vec(body).expect("JSON values serialize");
    let mut r = (status, bytes).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A request body, read within the size limit and the door's budget of bytes in flight, after
/// the bearer token is checked.
async fn read_body(
    door: &Door,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Bytes, OwnedSemaphorePermit), Failure> {
    door.check_token(headers)?;
    let too_large = || {
        Failure::new(
            Code::ResourceExhausted,
            format!(
                "request body over the limit of {} bytes (limits.max_message_bytes)",
                door.max_body
            ),
        )
    };
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if announced.is_some_and(|n| n > door.max_body) {
        return Err(too_large());
    }
    let kib = announced.unwrap_or(door.max_body).div_ceil(1024).max(1) as u32;
    let permit = door
        .budget
        .clone()
        .try_acquire_many_owned(kib)
        .map_err(|_| {
            Failure::new(
                Code::ResourceExhausted,
                "the server's budget for request bytes being received is spent; retry later",
            )
        })?;
    let bytes = axum::body::to_bytes(body, door.max_body)
        .await
        .map_err(|_| too_large())?;
    Ok((bytes, permit))
}

/// A POST call: its body (read within the limits; its share of the budget held until the call is
/// answered), its headers, and when it arrived.
struct Post {
    door: Door,
    headers: HeaderMap,
    bytes: Bytes,
    arrived: Instant,
    _permit: OwnedSemaphorePermit,
}

impl Post {
    fn parse<'a, T: Deserialize<'a>>(&'a self) -> Result<T, Failure> {
        parse(&self.bytes)
    }

    /// The samp.v1 request of this call.
    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        call(msg, self.arrived, &self.headers)
    }
}

/// Read the body, run `handle` on it, and answer what it makes or its error in `flavor`'s shape.
async fn answer_post<F, Fut>(
    door: Door,
    headers: HeaderMap,
    body: Body,
    flavor: fn(Failure) -> Response,
    handle: F,
) -> Response
where
    F: FnOnce(Post) -> Fut,
    Fut: std::future::Future<Output = Result<Response, Failure>>,
{
    let arrived = Instant::now();
    match read_body(&door, &headers, body).await {
        Ok((bytes, permit)) => handle(Post {
            door,
            headers,
            bytes,
            arrived,
            _permit: permit,
        })
        .await
        .unwrap_or_else(flavor),
        Err(f) => flavor(f),
    }
}

fn parse<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, Failure> {
    serde_json::from_slice(bytes).map_err(|e| Failure::invalid("body", format!("bad JSON: {e}")))
}

/// The samp.v1 request of an HTTP call: arrived now, through the HTTP door, with the client's
/// `grpc-timeout` header (e.g. `500m`, `2S`) as its deadline when it sends one.
fn call<T>(msg: T, arrived: Instant, headers: &HeaderMap) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.extensions_mut().insert(Arrived(arrived));
    req.extensions_mut().insert(Api("http"));
    if let Some(v) = headers
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok()?.parse().ok())
    {
        req.metadata_mut().insert("grpc-timeout", v);
    }
    req
}

/// A JSON string or list of strings, counted against `limits.max_inputs` before any string is
/// allocated. Returns the texts and whether a list was sent.
fn texts(door: &Door, field: &'static str, raw: &RawValue) -> Result<(Vec<String>, bool), Failure> {
    let text = raw.get();
    if !text.trim_start().starts_with('[') {
        let one: String = serde_json::from_str(text).map_err(|_| {
            Failure::invalid(field, format!("{field}: a string or a list of strings"))
        })?;
        return Ok((vec![one], false));
    }
    count(door, field, raw)?;
    let many: Vec<String> = serde_json::from_str(text).map_err(|_| {
        let ids = serde_json::from_str::<Vec<Value>>(text)
            .ok()
            .and_then(|v| v.first().map(|x| x.is_number() || x.is_array()))
            .unwrap_or(false);
        if ids {
            Failure::invalid(field, "token ids are not supported: send the texts")
        } else {
            Failure::invalid(field, format!("{field}: a string or a list of strings"))
        }
    })?;
    Ok((many, true))
}

/// The length of a JSON list, counted without keeping its items, against the input limit.
fn count(door: &Door, field: &'static str, raw: &RawValue) -> Result<usize, Failure> {
    let items: Vec<IgnoredAny> = serde_json::from_str(raw.get())
        .map_err(|_| Failure::invalid(field, format!("{field}: not a list")))?;
    check_count(door.svc.state().limits(), field, items.len())?;
    Ok(items.len())
}

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
async fn tei_embed(State(door): State<Door>, headers: HeaderMap, body: Body) -> Response {
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
async fn tei_predict(State(door): State<Door>, headers: HeaderMap, body: Body) -> Response {
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
                let mut scores = c.scores;
                scores.sort_by(|a, b| b.score.total_cmp(&a.score));
                scores
                    .into_iter()
                    .map(|s| json!({"label": s.label, "score": s.score}))
                    .collect()
            })
            .collect();
        Ok(per_input(results, batch))
    })
    .await
}

/// samp's `POST /tag` (TEI has none): `{"inputs": "text"}` → `[{"label", "score", "start",
/// "end", "text"}, ...]` (character offsets); a list of texts → a list of such lists.
async fn tag(State(door): State<Door>, headers: HeaderMap, body: Body) -> Response {
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
            .map(|t| {
                t.entities
                    .into_iter()
                    .map(|e| {
                        json!({"label": e.label, "score": e.score, "start": e.start,
                            "end": e.end, "text": e.text})
                    })
                    .collect()
            })
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

async fn list_models(door: &Door, headers: &HeaderMap) -> Result<Vec<proto::ModelInfo>, Failure> {
    door.check_token(headers)?;
    let out = door
        .svc
        .list_models(tonic::Request::new(proto::ListModelsRequest {}))
        .await?;
    Ok(out.into_inner().models)
}

/// TEI `GET /info`, of the embedding model (or the first model when none embeds), with every
/// loaded model under `models`.
async fn info(State(door): State<Door>, headers: HeaderMap) -> Response {
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

/// `GET /health`: 200 while every model has its compute thread and the server admits
/// requests; 503 otherwise (starting up, a lost worker, shutting down). No token needed, so
/// that probes work.
async fn health(State(door): State<Door>) -> Response {
    if door.svc.state().healthy() {
        (StatusCode::OK, "ok").into_response()
    } else {
        Failure::new(Code::Unavailable, "not serving").tei()
    }
}

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
async fn openai_embeddings(State(door): State<Door>, headers: HeaderMap, body: Body) -> Response {
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
async fn openai_models(State(door): State<Door>, headers: HeaderMap) -> Response {
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
    fn codes_map_to_http_statuses_and_names() {
        let f = Failure::new(Code::ResourceExhausted, "full");
        assert_eq!(f.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(f.code_name(), "RESOURCE_EXHAUSTED");
        let f = Failure::new(Code::DeadlineExceeded, "late");
        assert_eq!(f.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(f.code_name(), "DEADLINE_EXCEEDED");
        assert_eq!(
            Failure::invalid("input", "x").status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(Failure::new(Code::Cancelled, "gone").status().as_u16(), 499);
    }

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
