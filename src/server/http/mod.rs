//! The HTTP/JSON door beside gRPC: TEI-compatible `POST /embed`, `POST /predict`, `GET /info`,
//! `GET /health`, samp's own `POST /tag`, and OpenAI-compatible `POST /v1/embeddings` and
//! `GET /v1/models`. Each call becomes its samp.v1 request and runs through the very handler a
//! gRPC call runs through (validation, admission, batching, deadlines, metrics, with
//! `api="http"`); an error keeps its gRPC code, as an HTTP status plus a JSON body.

mod failure;
mod openai;
mod tei;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Code;

use self::failure::Failure;
use super::deadline::Arrived;
use super::gate;
use super::observe::Api;
use super::proto;
use super::proto::samp_server::Samp;
use super::service::SampService;
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
        .route("/embed", post(tei::embed))
        .route("/predict", post(tei::predict))
        .route("/tag", post(tei::tag))
        .route("/info", get(tei::info))
        .route("/health", get(health))
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/models", get(openai::models))
        .fallback(|| async { Failure::new(Code::NotFound, "no such route").tei() })
        .with_state(door)
}

/// Serve `router` on `listener` (at most `max_connections` open at once, accept errors backed
/// off) until `stop` resolves; then finish the requests in flight.
pub async fn serve(
    listener: TcpListener,
    conns: &crate::config::Connections,
    router: Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let listener = Slots {
        listener,
        slots: Arc::new(Semaphore::new(conns.max_connections)),
        idle: conns.idle_timeout(),
    };
    let router = router.layer(axum::middleware::from_fn(super::idle::count_http_call));
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<gate::ConnInfo>(),
    )
    .with_graceful_shutdown(stop)
    .await
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Slots>>
    for gate::ConnInfo
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, Slots>) -> Self {
        tonic::transport::server::Connected::connect_info(stream.io())
    }
}

/// The HTTP listener: a slot per open connection and the idle timeout, like the gRPC port's.
struct Slots {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    idle: Option<std::time::Duration>,
}

impl axum::serve::Listener for Slots {
    type Io = gate::Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (gate::Conn, SocketAddr) {
        loop {
            let conn = gate::accept_slot(&self.listener, &self.slots, self.idle).await;
            if let Ok(addr) = conn.peer_addr() {
                return (conn, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
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

async fn list_models(door: &Door, headers: &HeaderMap) -> Result<Vec<proto::ModelInfo>, Failure> {
    door.check_token(headers)?;
    let out = door
        .svc
        .list_models(tonic::Request::new(proto::ListModelsRequest {}))
        .await?;
    Ok(out.into_inner().models)
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
