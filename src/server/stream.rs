//! Bidirectional streaming RPCs: each message of a client stream answered by the unary
//! handler, pipelined and in order.

use tonic::{Request, Response, Status};

/// Requests of one stream in flight at once.
const STREAM_WINDOW: usize = 32;

pub type Answers<T> = std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<T, Status>> + Send>>;

/// Answer each message of a client stream with the unary handler `f`, up to `STREAM_WINDOW` at a
/// time, in order; the first error ends the stream. The stream's own grpc-timeout, if any,
/// applies to every message.
pub fn pipeline<Req, Resp, F, Fut>(req: Request<tonic::Streaming<Req>>, f: F) -> Answers<Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    F: Fn(Request<Req>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<Resp>, Status>> + Send + 'static,
{
    use futures_util::StreamExt;
    let timeout = req.metadata().get("grpc-timeout").cloned();
    let messages = req.into_inner();
    let answers = messages
        .map(move |m| {
            let timeout = timeout.clone();
            let call = m.map(|m| {
                let mut r = Request::new(m);
                if let Some(t) = timeout {
                    r.metadata_mut().insert("grpc-timeout", t);
                }
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
    // End the stream after the first error (gRPC closes it with that status).
    let mut failed = false;
    Box::pin(answers.take_while(move |r| {
        let go = !failed;
        failed |= r.is_err();
        std::future::ready(go)
    }))
}
