//! Progress counters shared between a pipeline and whoever displays it.
//!
//! Pipelines only add to atomics; the CLI (or a worker's job reporter) samples them on
//! its own schedule, so reporting never slows the data path.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes done out of bytes expected, updated lock-free by pipeline tasks.
#[derive(Debug, Default)]
pub struct Progress {
    total: AtomicU64,
    done: AtomicU64,
}

impl Progress {
    /// A counter with nothing to do yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds to the expected total (pipelines may discover work as they go).
    pub fn add_total(&self, bytes: u64) {
        self.total.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Records finished work.
    pub fn add_done(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }

    /// `(done, total)` in bytes.
    pub fn snapshot(&self) -> (u64, u64) {
        (
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }
}
