//! Batching policy: which queued jobs form the next forward pass. Pure logic — no tokio, no
//! candle, no model: the compute thread (`backend`) asks it, tests drive it directly.
//!
//! Batches are packed by tokens, not by requests: the encoder computes no padding, so a batch
//! costs what its tokens cost, and "length-aware packing" reduces to respecting the token
//! budget. A single job larger than the budget still runs (alone), split into passes.
//!
//! Admission is by cost and time too (`admit`): the queue holds at most `max_queue_tokens`
//! tokens, and a request whose deadline cannot be met at the measured throughput of the work
//! ahead of it is refused at once rather than left to expire in the queue.

use std::time::Duration;

/// Limits of one forward pass and of the queue in front of it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchPolicy {
    /// Most tokens (special tokens included) in one batch.
    pub max_batch_tokens: usize,
    /// Most inputs (texts) in one batch.
    pub max_batch_size: usize,
    /// How long the first job of a batch may wait for company.
    #[serde(with = "millis")]
    pub max_wait: Duration,
    /// Requests admitted but not yet running; beyond it, requests are refused at once.
    pub queue_capacity: usize,
    /// Tokens admitted but not yet computed; beyond it, requests are refused at once (a single
    /// request larger than this is still admitted into an empty queue).
    pub max_queue_tokens: usize,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        BatchPolicy {
            max_batch_tokens: 8192,
            max_batch_size: 256,
            max_wait: Duration::from_millis(2),
            queue_capacity: 256,
            max_queue_tokens: 65_536,
        }
    }
}

impl BatchPolicy {
    /// Whether a sequence of `tokens` joins a forward pass that holds `pass_len` sequences of
    /// `pass_tokens` tokens so far. The first always does (a longer one runs alone): the one
    /// rule that splits work into passes, in the batch loop and in the one-shot pipeline.
    pub fn pass_takes(&self, pass_len: usize, pass_tokens: usize, tokens: usize) -> bool {
        pass_len == 0
            || (pass_tokens + tokens <= self.max_batch_tokens && pass_len < self.max_batch_size)
    }

    /// Errors name the setting.
    pub fn validate(&self) -> Result<(), ZeroSetting> {
        for (setting, value) in [
            ("max_batch_tokens", self.max_batch_tokens),
            ("max_batch_size", self.max_batch_size),
            ("queue_capacity", self.queue_capacity),
            ("max_queue_tokens", self.max_queue_tokens),
        ] {
            if value == 0 {
                return Err(ZeroSetting(setting));
            }
        }
        Ok(())
    }
}

/// A batching setting that is 0 where at least 1 is needed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("batching.{0} must be at least 1")]
pub struct ZeroSetting(pub &'static str);

/// A batch being filled.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchFill {
    pub tokens: usize,
    pub inputs: usize,
    pub jobs: usize,
}

impl BatchFill {
    /// Whether a job of `tokens`/`inputs` joins this batch. The first job always does.
    pub fn admits(&self, tokens: usize, inputs: usize, policy: &BatchPolicy) -> bool {
        self.jobs == 0
            || (self.tokens + tokens <= policy.max_batch_tokens
                && self.inputs + inputs <= policy.max_batch_size)
    }

    pub fn add(&mut self, tokens: usize, inputs: usize) {
        self.tokens += tokens;
        self.inputs += inputs;
        self.jobs += 1;
    }

    /// No further job could join.
    pub fn full(&self, policy: &BatchPolicy) -> bool {
        self.tokens >= policy.max_batch_tokens || self.inputs >= policy.max_batch_size
    }
}

/// The queue in front of a model at the moment a request asks to join it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueState {
    /// Requests admitted and not yet taken into a batch.
    pub jobs: usize,
    /// Their tokens, plus those of the batch now computing.
    pub tokens: usize,
    /// Measured tokens per second of this model's passes, once known.
    pub tokens_per_second: Option<f64>,
}

/// Why a request is refused at the door (RESOURCE_EXHAUSTED).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("the queue is full ({capacity} requests)")]
    QueueFull { capacity: usize },
    #[error("the queue is full ({queued} of {budget} tokens queued, this request has {tokens})")]
    TokenBudget {
        queued: usize,
        tokens: usize,
        budget: usize,
    },
    #[error(
        "the deadline cannot be met: about {wait_ms} ms of work is ahead of this request, \
         {left_ms} ms are left"
    )]
    Deadline { wait_ms: u64, left_ms: u64 },
}

impl QueueState {
    /// How long a request of `tokens` would take to finish behind this queue, at the measured
    /// rate; `None` while no rate has been measured.
    pub fn expected_wait(&self, tokens: usize, policy: &BatchPolicy) -> Option<Duration> {
        let rate = self.tokens_per_second.filter(|r| *r > 0.0)?;
        let secs = (self.tokens + tokens) as f64 / rate;
        Some(Duration::from_secs_f64(secs.min(1e6)) + policy.max_wait)
    }
}

/// How much slower than measured the queue may run and still meet an admitted deadline.
pub const DEADLINE_HEADROOM: f64 = 1.5;

/// Whether a request of `tokens` joins the queue `q`, given the time `left` to its deadline.
pub fn admit(
    q: &QueueState,
    tokens: usize,
    left: Option<Duration>,
    policy: &BatchPolicy,
) -> Result<(), Refusal> {
    if q.jobs >= policy.queue_capacity {
        return Err(Refusal::QueueFull {
            capacity: policy.queue_capacity,
        });
    }
    if q.tokens > 0 && q.tokens + tokens > policy.max_queue_tokens {
        return Err(Refusal::TokenBudget {
            queued: q.tokens,
            tokens,
            budget: policy.max_queue_tokens,
        });
    }
    if let (Some(left), Some(wait)) = (left, q.expected_wait(tokens, policy)) {
        // Headroom for the rate to drop while the request waits (a noisy neighbour, a burst of
        // long texts): refusing now is cheaper for the client than expiring later.
        if wait.mul_f64(DEADLINE_HEADROOM) > left {
            return Err(Refusal::Deadline {
                wait_ms: wait.as_millis() as u64,
                left_ms: left.as_millis() as u64,
            });
        }
    }
    Ok(())
}

/// Exponentially weighted tokens per second over the last passes.
pub fn update_rate(old: Option<f64>, tokens: usize, took: Duration) -> Option<f64> {
    let secs = took.as_secs_f64();
    if tokens == 0 || secs <= 0.0 {
        return old;
    }
    let now = tokens as f64 / secs;
    Some(match old {
        Some(r) => 0.7 * r + 0.3 * now,
        None => now,
    })
}

mod millis {
    use std::time::Duration;
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let ms: u64 = serde::Deserialize::deserialize(d)?;
        Ok(Duration::from_millis(ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_by_tokens_and_inputs() {
        let p = BatchPolicy {
            max_batch_tokens: 100,
            max_batch_size: 3,
            ..Default::default()
        };
        let mut f = BatchFill::default();
        assert!(f.admits(500, 1, &p), "an oversized first job still runs");
        f.add(60, 1);
        assert!(f.admits(40, 1, &p));
        assert!(!f.admits(41, 1, &p), "token budget");
        f.add(40, 1);
        assert!(f.full(&p));
        let mut g = BatchFill::default();
        g.add(10, 2);
        assert!(!g.admits(10, 2, &p), "input budget");
    }

    #[test]
    fn admission_by_requests_tokens_and_time() {
        let p = BatchPolicy {
            queue_capacity: 4,
            max_queue_tokens: 1000,
            max_wait: Duration::ZERO,
            ..Default::default()
        };
        let empty = QueueState {
            jobs: 0,
            tokens: 0,
            tokens_per_second: None,
        };
        assert_eq!(
            admit(&empty, 5000, None, &p),
            Ok(()),
            "one big request alone"
        );
        let busy = QueueState {
            jobs: 2,
            tokens: 800,
            tokens_per_second: Some(1000.0),
        };
        assert_eq!(admit(&busy, 200, None, &p), Ok(()));
        assert!(matches!(
            admit(&busy, 201, None, &p),
            Err(Refusal::TokenBudget { .. })
        ));
        // 800 + 100 tokens at 1000 tokens/s: 0.9 s of work, 1.35 s with the headroom.
        let ms = Duration::from_millis;
        assert_eq!(admit(&busy, 100, Some(ms(1400)), &p), Ok(()));
        assert!(
            admit(&busy, 100, Some(ms(1000)), &p).is_err(),
            "no headroom"
        );
        assert_eq!(
            admit(&busy, 100, Some(ms(850)), &p),
            Err(Refusal::Deadline {
                wait_ms: 900,
                left_ms: 850
            })
        );
        let unmeasured = QueueState {
            tokens_per_second: None,
            ..busy
        };
        assert_eq!(admit(&unmeasured, 100, Some(ms(1)), &p), Ok(()));
        let full = QueueState { jobs: 4, ..busy };
        assert!(matches!(
            admit(&full, 1, None, &p),
            Err(Refusal::QueueFull { capacity: 4 })
        ));
    }

    #[test]
    fn rate_is_smoothed() {
        let r = update_rate(None, 1000, Duration::from_secs(1));
        assert_eq!(r, Some(1000.0));
        let r = update_rate(r, 2000, Duration::from_secs(1));
        assert_eq!(r, Some(1300.0));
        assert_eq!(update_rate(r, 0, Duration::from_secs(1)), r);
    }

    #[test]
    fn zero_limits_are_rejected_by_name() {
        let p = BatchPolicy {
            queue_capacity: 0,
            ..Default::default()
        };
        assert!(p
            .validate()
            .unwrap_err()
            .to_string()
            .contains("queue_capacity"));
    }
}
