//! Bidirectional streaming RPCs: each message of a client stream answered by the unary
//! handler, pipelined and in order, until the stream's deadline.

use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};

use super::deadline::{deadline, StreamDeadline};

/// Requests of one stream in flight at once.
const STREAM_WINDOW: usize = 32;

pub type Answers<T> = std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<T, Status>> + Send>>;

/// Answer each message of a client stream with the unary handler `f`, up to `STREAM_WINDOW` at a
/// time, in order; the first error ends the stream. The stream's deadline (its grpc-timeout,
/// capped at `max_stream`) bounds every message and the stream itself: when it passes, the
/// stream ends with DEADLINE_EXCEEDED.
pub fn pipeline<Req, Resp, F, Fut>(
    req: Request<tonic::Streaming<Req>>,
    max_stream: Duration,
    f: F,
) -> Answers<Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    F: Fn(Request<Req>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<Resp>, Status>> + Send + 'static,
{
    use futures_util::StreamExt;
    let cap = Instant::now() + max_stream;
    let end = deadline(&req).map_or(cap, |d| d.min(cap));
    let messages = req.into_inner();
    let answers = messages
        .map(move |m| {
            let call = m.map(|m| {
                let mut r = Request::new(m);
                r.extensions_mut().insert(StreamDeadline(Some(end)));
                f(r)
            });
            async move {
                match call {
                    Ok(fut) => fut.await.map(Response::into_inner),
                    Err(status) => Err(status),
                }
            }
        })
        .buffered(STREAM_WINDOW);
    let state = (
        Box::pin(answers),
        Box::pin(tokio::time::sleep_until(end.into())),
        false,
    );
    // End the stream after the first error (gRPC closes it with that status), or at the
    // deadline.
    Box::pin(futures_util::stream::unfold(
        state,
        |(mut answers, mut expiry, ended)| async move {
            if ended {
                return None;
            }
            tokio::select! {
                biased;
                a = answers.next() => a.map(|a| {
                    let failed = a.is_err();
                    (a, (answers, expiry, failed))
                }),
                _ = &mut expiry => Some((
                    Err(Status::deadline_exceeded("the stream's deadline passed")),
                    (answers, expiry, true),
                )),
            }
        },
    ))
}
