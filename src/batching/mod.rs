//! Batching policy: which queued jobs form the next forward pass. Pure logic — no tokio, no
//! candle, no model: the compute thread (`backend`) asks it, tests drive it directly.
//!
//! Batches are packed by tokens, not by requests: the encoder computes no padding, so a batch
//! costs what its tokens cost, and "length-aware packing" reduces to respecting the token
//! budget. A single job larger than the budget still runs (alone); the model splits it into
//! passes of its own.

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
}

impl Default for BatchPolicy {
    fn default() -> Self {
        BatchPolicy {
            max_batch_tokens: 8192,
            max_batch_size: 256,
            max_wait: Duration::from_millis(2),
            queue_capacity: 256,
        }
    }
}

impl BatchPolicy {
    /// Errors name the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_batch_tokens == 0 {
            return Err("batching.max_batch_tokens must be at least 1".into());
        }
        if self.max_batch_size == 0 {
            return Err("batching.max_batch_size must be at least 1".into());
        }
        if self.queue_capacity == 0 {
            return Err("batching.queue_capacity must be at least 1".into());
        }
        Ok(())
    }
}

/// A batch being filled.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fill {
    pub tokens: usize,
    pub inputs: usize,
    pub jobs: usize,
}

impl Fill {
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
        let mut f = Fill::default();
        assert!(f.admits(500, 1, &p), "an oversized first job still runs");
        f.add(60, 1);
        assert!(f.admits(40, 1, &p));
        assert!(!f.admits(41, 1, &p), "token budget");
        f.add(40, 1);
        assert!(f.full(&p));
        let mut g = Fill::default();
        g.add(10, 2);
        assert!(!g.admits(10, 2, &p), "input budget");
    }

    #[test]
    fn zero_limits_are_rejected_by_name() {
        let p = BatchPolicy {
            queue_capacity: 0,
            ..Default::default()
        };
        assert!(p.validate().unwrap_err().contains("queue_capacity"));
    }
}
