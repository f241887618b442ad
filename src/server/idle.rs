//! Idle connections: a connection with no call in progress for `idle_timeout_seconds` is closed,
//! so that clients which open connections and leave them unused (or trickle a request's headers
//! forever) cannot keep the listener's connection slots. HTTP/2 keepalive pings do not count as
//! use: only calls do. Both doors count their calls per connection: the gRPC port through a tower
//! layer, the HTTP door through a middleware; the connection reads them from [`Calls`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::time::{Instant, Sleep};

/// The calls in progress on one connection, and when the last one ended.
#[derive(Clone)]
pub struct Calls(Arc<Activity>);

struct Activity {
    open: AtomicUsize,
    /// When the connection became idle (accepted, or its last call ended).
    since: Mutex<Instant>,
    /// The connection's reader, woken when its last call ends to start the idle clock.
    reader: AtomicWaker,
}

impl Default for Calls {
    fn default() -> Self {
        Calls(Arc::new(Activity {
            open: AtomicUsize::new(0),
            since: Mutex::new(Instant::now()),
            reader: AtomicWaker::new(),
        }))
    }
}

impl Calls {
    /// A call starts: the connection is in use until the guard is dropped.
    pub fn begin(&self) -> CallGuard {
        self.0.open.fetch_add(1, Ordering::SeqCst);
        CallGuard(self.0.clone())
    }

    /// Since when no call has been in progress; `None` while one is.
    fn idle_since(&self) -> Option<Instant> {
        let since = *self.0.since.lock().unwrap_or_else(PoisonError::into_inner);
        (self.0.open.load(Ordering::SeqCst) == 0).then_some(since)
    }
}

/// One call in progress (held by its response body until the response is sent or dropped).
pub struct CallGuard(Arc<Activity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        let mut since = self.0.since.lock().unwrap_or_else(PoisonError::into_inner);
        if self.0.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            *since = Instant::now();
            drop(since);
            self.0.reader.wake();
        }
    }
}

/// The idle clock of one connection, polled from its read side.
pub struct IdleClock {
    calls: Calls,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
}

impl IdleClock {
    pub fn new(calls: Calls, timeout: Duration) -> Self {
        let sleep = Box::pin(tokio::time::sleep(timeout));
        IdleClock {
            calls,
            timeout,
            sleep,
        }
    }

    /// Whether the connection has had no call in progress for the whole timeout. While it is
    /// not, the task is woken when the timeout could pass (or the last call ends).
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.calls.0.reader.register(cx.waker());
        loop {
            let Some(since) = self.calls.idle_since() else {
                return false;
            };
            let deadline = since + self.timeout;
            if Instant::now() >= deadline {
                return true;
            }
            if self.sleep.deadline() != deadline {
                self.sleep.as_mut().reset(deadline);
            }
            if self.sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
        }
    }
}

/// The calls counter of the connection a request came on, when the connection has one.
fn calls_of<B>(req: &http::Request<B>) -> Option<&Calls> {
    use super::gate::ConnInfo;
    use tonic::transport::server::TlsConnectInfo;
    let ext = req.extensions();
    ext.get::<ConnInfo>()
        .or_else(|| {
            ext.get::<TlsConnectInfo<ConnInfo>>()
                .map(TlsConnectInfo::get_ref)
        })
        .or_else(|| {
            ext.get::<axum::extract::ConnectInfo<ConnInfo>>()
                .map(|c| &c.0)
        })
        .map(|info| &info.calls)
}

/// Counts the gRPC port's calls on their connection's [`Calls`], from the request until its
/// response body (a stream's included) is finished or dropped.
#[derive(Clone, Copy, Default)]
pub struct CountCalls;

impl<S> tower_layer::Layer<S> for CountCalls {
    type Service = Counting<S>;
    fn layer(&self, inner: S) -> Counting<S> {
        Counting { inner }
    }
}

#[derive(Clone)]
pub struct Counting<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower_service::Service<http::Request<tonic::body::Body>> for Counting<S>
where
    S: tower_service::Service<http::Request<tonic::body::Body>, Response = http::Response<B>>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let guard = calls_of(&req).map(Calls::begin);
        let response = self.inner.call(req);
        Box::pin(async move {
            let r = response.await?;
            Ok(r.map(|body| tonic::body::Body::new(Held::new(body, guard))))
        })
    }
}

/// The HTTP door's middleware: the call is in progress until its response body is done.
pub async fn count_http_call(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let guard = calls_of(&req).map(Calls::begin);
    next.run(req)
        .await
        .map(|body| axum::body::Body::new(Held::new(body, guard)))
}

/// A response body that keeps its call counted until it is finished or dropped.
struct Held {
    inner: tonic::body::Body,
    _guard: Option<CallGuard>,
}

impl Held {
    fn new<B>(body: B, guard: Option<CallGuard>) -> Self
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<tonic::codegen::StdError>,
    {
        Held {
            inner: tonic::body::Body::new(body),
            _guard: guard,
        }
    }
}

impl http_body::Body for Held {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expired(clock: &mut IdleClock) -> bool {
        let waker = futures_util::task::noop_waker();
        clock.poll_expired(&mut Context::from_waker(&waker))
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_runs_only_while_no_call_is_in_progress() {
        let calls = Calls::default();
        let mut clock = IdleClock::new(calls.clone(), Duration::from_secs(10));
        assert!(!expired(&mut clock));
        tokio::time::advance(Duration::from_secs(6)).await;
        let call = calls.begin();
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(!expired(&mut clock), "a call in progress keeps it open");
        drop(call);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(
            !expired(&mut clock),
            "the clock restarts when the last call ends"
        );
        let (a, b) = (calls.begin(), calls.begin());
        drop(a);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(!expired(&mut clock), "one of two calls still in progress");
        drop(b);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(expired(&mut clock));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_woken_to_close() {
        let calls = Calls::default();
        let mut clock = IdleClock::new(calls.clone(), Duration::from_secs(5));
        let call = calls.begin();
        // Pending while the call runs; the end of the call wakes it, then the timer does.
        let waited = tokio::spawn(async move {
            futures_util::future::poll_fn(|cx| {
                if clock.poll_expired(cx) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
            Instant::now()
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
        let ended = Instant::now();
        drop(call);
        let closed = waited.await.unwrap();
        assert_eq!(closed - ended, Duration::from_secs(5));
    }
}
