//! Progress counters shared between a pipeline and whoever displays it.
//!
//! Pipelines only add to atomics; the CLI (or a worker's job reporter) samples them on
//! its own schedule, so reporting never slows the data path.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

/// What a long operation is doing now, for progress displays (`haven ... --json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Opening, planning: nothing counted yet.
    Starting = 0,
    /// Taking the snapshot point in the hypervisor.
    Snapshot,
    /// Reading disks and storing their chunks.
    Read,
    /// Writing the snapshot's indexes and manifest.
    Commit,
    /// Writing restored data.
    Write,
    /// Checking stored objects.
    Verify,
    /// Copying objects to another repository.
    Copy,
}

impl Phase {
    const ALL: [Phase; 7] = [
        Phase::Starting,
        Phase::Snapshot,
        Phase::Read,
        Phase::Commit,
        Phase::Write,
        Phase::Verify,
        Phase::Copy,
    ];

    /// The phase's name in reports: `starting`, `snapshot`, `read`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Snapshot => "snapshot",
            Phase::Read => "read",
            Phase::Commit => "commit",
            Phase::Write => "write",
            Phase::Verify => "verify",
            Phase::Copy => "copy",
        }
    }
}

/// Bytes done out of bytes expected and the current phase, updated lock-free by
/// pipeline tasks.
#[derive(Debug, Default)]
pub struct Progress {
    total: AtomicU64,
    done: AtomicU64,
    phase: AtomicU8,
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

    /// Enters `phase`.
    pub fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        let index = usize::from(self.phase.load(Ordering::Relaxed));
        // Only `set_phase` stores, and only a `Phase`'s discriminant.
        Phase::ALL.get(index).copied().unwrap_or(Phase::Starting)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_phase_reads_back_as_set() {
        let progress = Progress::new();
        assert_eq!(progress.phase(), Phase::Starting);
        for phase in Phase::ALL {
            progress.set_phase(phase);
            assert_eq!(progress.phase(), phase);
        }
    }
}
