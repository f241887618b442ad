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
    use std::sync::atomic::AtomicBool;

    /// A waker that records being woken.
    struct Flag(AtomicBool);
    impl futures_util::task::ArcWake for Flag {
        fn wake_by_ref(me: &Arc<Self>) {
            me.0.store(true, Ordering::SeqCst);
        }
    }

    fn expired(clock: &mut IdleClock, flag: &Arc<Flag>) -> bool {
        let waker = futures_util::task::waker(flag.clone());
        clock.poll_expired(&mut Context::from_waker(&waker))
    }

    #[tokio::test]
    async fn only_calls_in_progress_keep_a_connection_from_idling() {
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let calls = Calls::default();
        let accepted = calls.idle_since().expect("idle from its accept");
        // A zero timeout: expired whenever no call is in progress.
        let mut clock = IdleClock::new(calls.clone(), Duration::ZERO);
        assert!(expired(&mut clock, &flag));
        let (a, b) = (calls.begin(), calls.begin());
        assert_eq!(calls.idle_since(), None);
        assert!(!expired(&mut clock, &flag));
        drop(a);
        assert!(
            !expired(&mut clock, &flag),
            "one of two calls still in progress"
        );
        assert!(!flag.0.load(Ordering::SeqCst));
        drop(b);
        assert!(
            flag.0.load(Ordering::SeqCst),
            "the last call's end wakes the reader"
        );
        assert!(
            calls.idle_since().unwrap() >= accepted,
            "the clock restarts"
        );
        assert!(expired(&mut clock, &flag));
        // A long timeout: not expired right after the last call, and the timer is armed.
        let mut clock = IdleClock::new(calls.clone(), Duration::from_secs(3600));
        drop(calls.begin());
        assert!(!expired(&mut clock, &flag));
        assert!(clock.sleep.deadline() > Instant::now() + Duration::from_secs(3000));
    }
}
