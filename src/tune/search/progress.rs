//! The search's progress on stderr.

use std::time::Instant;

/// Progress on stderr: a bar, a counter and what is being evaluated.
pub(super) struct Progress {
    pub total: usize,
    pub done: usize,
    pub start: Instant,
}

impl Progress {
    pub fn step(&mut self, what: &str) {
        self.done += 1;
        self.note(what);
    }

    /// A line at the current count, for what is decided rather than evaluated.
    pub fn note(&self, what: &str) {
        let width = 24;
        let filled = (self.done * width / self.total.max(1)).min(width);
        eprintln!(
            "[{}{}] {:>3}/{} {:>6.1}s  {what}",
            "#".repeat(filled),
            ".".repeat(width - filled),
            self.done,
            self.total,
            self.start.elapsed().as_secs_f64()
        );
    }
}
