//! The /metrics endpoint: Prometheus text from [`crate::metrics::handle`] on its own port,
//! behind the bearer token when one is set.

use std::net::SocketAddr;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Serve `GET /metrics` (any path, in fact) as Prometheus text on `listener`; with a `token`,
/// only to requests that carry `authorization: Bearer <token>` (401 otherwise).
pub async fn serve(listener: TcpListener, handle: PrometheusHandle, token: Option<String>) {
    let token: Option<std::sync::Arc<str>> = token.map(Into::into);
    loop {
        let mut sock = super::gate::accept(&listener).await;
        let (handle, token) = (handle.clone(), token.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            // Read the request head (one read; scrapers send it in one segment).
            let n = tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut buf))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(0);
            let allowed = token.as_deref().is_none_or(|t| {
                let head = &buf[..n];
                let value = head.split(|&b| b == b'\n').find_map(|line| {
                    let (name, value) = line.split_at(line.iter().position(|&b| b == b':')?);
                    name.eq_ignore_ascii_case(b"authorization")
                        .then(|| value[1..].trim_ascii())
                });
                super::gate::authorized(value, t)
            });
            let (status, body) = if allowed {
                ("200 OK", handle.render())
            } else {
                (
                    "401 Unauthorized",
                    "missing or wrong bearer token\n".to_string(),
                )
            };
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

/// Bind the metrics port; its own error so a busy port is a clear start-up failure.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
