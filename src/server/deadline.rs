//! Deadlines: when a call arrived, the client's deadline (set a little early so that samp, not
//! tonic's timer, answers), a stream's deadline for its messages, and running within one.

use std::time::{Duration, Instant};

use tonic::Request;

use super::status::ServeError;

/// `call`, or DEADLINE_EXCEEDED once `deadline` passes. Dropping the call on expiry drops what
/// it holds: the job's reply (the compute thread skips the job) and its place in the queue.
pub async fn within<T>(
    deadline: Option<Instant>,
    call: impl std::future::Future<Output = Result<T, ServeError>>,
) -> Result<T, ServeError> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d.into(), call)
            .await
            .map_err(|_| ServeError::DeadlineExceeded)?,
        None => call.await,
    }
}

/// When a call reached the server (set by the interceptor, before decoding).
#[derive(Debug, Clone, Copy)]
pub struct Arrived(pub Instant);

/// A deadline set by the stream a message came on (its own, not the message's).
#[derive(Debug, Clone, Copy)]
pub struct StreamDeadline(pub Option<Instant>);

/// The client's deadline: the stream's for a message of a stream, else `grpc-timeout` (e.g.
/// `100m`, `5S`) from the call's arrival. It is set a little early (5%, 2 to 100 ms) so that
/// samp's DEADLINE_EXCEEDED reaches the client before tonic's own timer (started at arrival too)
/// answers CANCELLED, or the client's gives up, even on a busy machine.
pub fn deadline<T>(req: &Request<T>) -> Option<Instant> {
    if let Some(StreamDeadline(d)) = req.extensions().get::<StreamDeadline>() {
        return *d;
    }
    let start = req
        .extensions()
        .get::<Arrived>()
        .map_or_else(Instant::now, |a| a.0);
    let v = req.metadata().get("grpc-timeout")?.to_str().ok()?;
    let d = parse_timeout(v)?;
    let margin = (d / 20).clamp(Duration::from_millis(2), Duration::from_millis(100));
    start.checked_add(d.saturating_sub(margin))
}

/// A `grpc-timeout` value: digits and a unit.
fn parse_timeout(v: &str) -> Option<Duration> {
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}
