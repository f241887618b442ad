//! The door of the gRPC port: how many connections it keeps open, how it survives accept errors,
//! and what every call passes through before it is decoded (its arrival time, for deadlines,
//! and the optional bearer token).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::{Request, Status};

use super::service::Arrived;

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

/// A connection that holds one of the listener's slots until it closes.
pub struct Conn {
    io: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;
    fn connect_info(&self) -> TcpConnectInfo {
        self.io.connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
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
) -> impl futures_util::Stream<Item = std::io::Result<Conn>> {
    let slots = Arc::new(Semaphore::new(max));
    futures_util::stream::unfold((listener, slots), |(listener, slots)| async move {
        let slot = slots.clone().acquire_owned().await.ok()?;
        let io = accept(&listener).await;
        Some((Ok(Conn { io, _slot: slot }), (listener, slots)))
    })
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
