//! The door of the gRPC port: how many connections it keeps open, how it survives accept errors,
//! and what every call passes through before it is decoded (its arrival time, for deadlines,
//! and the optional bearer token).

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::{Request, Status};

use super::deadline::Arrived;
use super::idle::{Calls, IdleClock};

/// Stamps each call with its arrival and checks its bearer token when one is configured.
#[derive(Clone)]
pub struct Gate {
    /// `Bearer <token>`, the whole header value expected.
    expected: Option<Arc<str>>,
}

impl Gate {
    pub fn new(token: Option<String>) -> Self {
        Gate {
            expected: token.map(|t| Arc::from(format!("Bearer {t}"))),
        }
    }
}

impl tonic::service::Interceptor for Gate {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.extensions_mut().insert(Arrived(Instant::now()));
        if let Some(expected) = &self.expected {
            let got = req
                .metadata()
                .get("authorization")
                .map(|v| v.as_bytes())
                .unwrap_or_default();
            if !same(got, expected.as_bytes()) {
                return Err(Status::unauthenticated(
                    "missing or wrong bearer token (authorization: Bearer ...)",
                ));
            }
        }
        Ok(req)
    }
}

/// Whether an `authorization` value is `Bearer <token>`, in time independent of where they
/// differ.
pub fn authorized(got: Option<&[u8]>, token: &str) -> bool {
    same(
        got.unwrap_or_default(),
        format!("Bearer {token}").as_bytes(),
    )
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Request bytes received and not yet decoded, over every connection and stream of the process.
/// Each message is bounded by `max_message_bytes`, but many concurrent streams each uploading
/// one would add up past any pod's memory: past this budget, a stream that sends more gets
/// RESOURCE_EXHAUSTED and its bytes are released.
#[derive(Clone)]
pub struct ByteBudget(Arc<InFlight>);

struct InFlight {
    used: AtomicUsize,
    limit: usize,
    /// The most one stream holds: one message. A streaming call's body lives as long as the
    /// stream, but tonic decodes each message as soon as it is complete, so bytes past one
    /// message's worth belong to messages already decoded and are released.
    per_stream: usize,
}

impl ByteBudget {
    pub fn new(limit: usize, max_message: usize) -> Self {
        ByteBudget(Arc::new(InFlight {
            used: AtomicUsize::new(0),
            limit,
            per_stream: max_message,
        }))
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.0.used.load(Ordering::Relaxed)
    }
}

impl<S> tower_layer::Layer<S> for ByteBudget {
    type Service = Budgeted<S>;
    fn layer(&self, inner: S) -> Budgeted<S> {
        Budgeted {
            inner,
            budget: self.clone(),
        }
    }
}

/// A service whose request bodies count against a [`ByteBudget`].
#[derive(Clone)]
pub struct Budgeted<S> {
    inner: S,
    budget: ByteBudget,
}

impl<S> tower_service::Service<http::Request<tonic::body::Body>> for Budgeted<S>
where
    S: tower_service::Service<http::Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> S::Future {
        let (parts, body) = req.into_parts();
        let body = tonic::body::Body::new(Counted {
            inner: body,
            held: 0,
            budget: self.budget.0.clone(),
        });
        self.inner.call(http::Request::from_parts(parts, body))
    }
}

/// A request body that counts its bytes in the budget until it is dropped (once tonic has
/// decoded the message, or the call ended).
struct Counted {
    inner: tonic::body::Body,
    held: usize,
    budget: Arc<InFlight>,
}

impl http_body::Body for Counted {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Status>>> {
        let frame = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame {
            if let Some(data) = f.data_ref() {
                let n = data.len();
                let before = self.budget.used.fetch_add(n, Ordering::SeqCst);
                self.held += n;
                let over = before + n > self.budget.limit;
                if self.held > self.budget.per_stream {
                    let decoded = self.held - self.budget.per_stream;
                    self.budget.used.fetch_sub(decoded, Ordering::SeqCst);
                    self.held -= decoded;
                }
                if over {
                    return Poll::Ready(Some(Err(Status::resource_exhausted(format!(
                        "the server's budget of {} bytes for requests being received is spent; \
                         retry later",
                        self.budget.limit
                    )))));
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.held, Ordering::SeqCst);
    }
}

/// A connection that holds one of the listener's slots until it closes, and is closed when it
/// has had no call in progress for the idle timeout (when one is set).
pub struct Conn {
    io: TcpStream,
    calls: Calls,
    idle: Option<IdleClock>,
    _slot: OwnedSemaphorePermit,
}

/// What each request knows of its connection: the peer, and the connection's calls counter.
#[derive(Clone)]
pub struct ConnInfo {
    pub tcp: TcpConnectInfo,
    pub calls: Calls,
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        ConnInfo {
            tcp: self.io.connect_info(),
            calls: self.calls.clone(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let read = Pin::new(&mut self.io).poll_read(cx, buf);
        if read.is_pending() && self.idle.as_mut().is_some_and(|c| c.poll_expired(cx)) {
            // End of input: the server closes the connection as if the client had.
            tracing::debug!(peer = ?self.io.peer_addr().ok(), "closing an idle connection");
            return Poll::Ready(Ok(()));
        }
        read
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Accepted connections, at most `max` open at once (the rest wait in the kernel's backlog).
/// Accept errors (out of file descriptors, a connection reset before it was accepted) are
/// logged and retried after a growing pause, never spun on and never the end of the server.
pub fn incoming(
    listener: TcpListener,
    max: usize,
    idle: Option<Duration>,
) -> impl futures_util::Stream<Item = std::io::Result<Conn>> {
    let slots = Arc::new(Semaphore::new(max));
    futures_util::stream::unfold((listener, slots), move |(listener, slots)| async move {
        let conn = accept_slot(&listener, &slots, idle).await;
        Some((Ok(conn), (listener, slots)))
    })
}

/// Wait for a free slot of `slots` (never closed), then accept a connection that holds it and
/// closes after `idle` without a call in progress. Its calls must be counted (the gRPC port's
/// `idle::CountCalls` layer, the HTTP door's middleware), or it looks idle while serving.
pub async fn accept_slot(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    idle: Option<Duration>,
) -> Conn {
    let slot = slots
        .clone()
        .acquire_owned()
        .await
        .expect("the slots semaphore is never closed");
    let io = accept(listener).await;
    let calls = Calls::default();
    let idle = idle.map(|t| IdleClock::new(calls.clone(), t));
    Conn {
        io,
        calls,
        idle,
        _slot: slot,
    }
}

impl Conn {
    pub fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.io.peer_addr()
    }
}

/// Accept one connection, backing off on errors.
pub async fn accept(listener: &TcpListener) -> TcpStream {
    let mut pause = Duration::from_millis(5);
    loop {
        match listener.accept().await {
            Ok((io, _)) => return io,
            Err(e) => {
                tracing::warn!(error = %e, pause_ms = pause.as_millis() as u64, "accept failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

    /// A request body of `n` data frames of `size` bytes.
    struct Frames {
        n: usize,
        size: usize,
    }

    impl http_body::Body for Frames {
        type Data = bytes::Bytes;
        type Error = Status;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Status>>> {
            if self.n == 0 {
                return Poll::Ready(None);
            }
            self.n -= 1;
            let data = bytes::Bytes::from(vec![0u8; self.size]);
            Poll::Ready(Some(Ok(http_body::Frame::data(data))))
        }
    }

    fn counted(budget: &ByteBudget, n: usize, size: usize) -> Counted {
        Counted {
            inner: tonic::body::Body::new(Frames { n, size }),
            held: 0,
            budget: budget.0.clone(),
        }
    }

    async fn next(b: &mut Counted) -> Option<Result<http_body::Frame<bytes::Bytes>, Status>> {
        use http_body::Body as _;
        futures_util::future::poll_fn(|cx| Pin::new(&mut *b).poll_frame(cx)).await
    }

    #[tokio::test]
    async fn the_byte_budget_counts_undecoded_bytes_and_releases_them() {
        let budget = ByteBudget::new(100, 30);
        // A long stream: never more than one message's worth held.
        let mut stream = counted(&budget, 50, 10);
        while let Some(f) = next(&mut stream).await {
            assert!(f.is_ok());
            assert!(budget.used() <= 30, "{}", budget.used());
        }
        assert_eq!(budget.used(), 30);
        // Concurrent bodies past the budget: refused.
        let mut others: Vec<Counted> = (0..3).map(|_| counted(&budget, 3, 10)).collect();
        let mut refused = 0;
        for b in &mut others {
            while let Some(f) = next(b).await {
                if let Err(st) = f {
                    assert_eq!(st.code(), tonic::Code::ResourceExhausted);
                    refused += 1;
                    break;
                }
            }
        }
        assert!(refused > 0);
        drop(others);
        drop(stream);
        assert_eq!(
            budget.used(),
            0,
            "everything is released when the bodies go"
        );
    }

    #[test]
    fn bearer_token_is_checked_and_arrival_stamped() {
        let mut open = Gate::new(None);
        let r = open.call(Request::new(())).unwrap();
        assert!(r.extensions().get::<Arrived>().is_some());
        let mut gate = Gate::new(Some("s3cret".into()));
        assert_eq!(
            gate.call(Request::new(())).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        for (value, ok) in [
            ("Bearer s3cret", true),
            ("Bearer s3cre", false),
            ("Bearer s3creT", false),
            ("s3cret", false),
        ] {
            let mut r = Request::new(());
            r.metadata_mut()
                .insert("authorization", value.parse().unwrap());
            assert_eq!(gate.call(r).is_ok(), ok, "{value}");
            assert_eq!(authorized(Some(value.as_bytes()), "s3cret"), ok, "{value}");
        }
        assert!(!authorized(None, "s3cret"));
    }
}
