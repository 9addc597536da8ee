//! Boot-test jobs: a policy's `boot_test` run on this worker, within its
//! `[boot_tests]` limits.
//!
//! The test itself is [`crate::boot::boot_test`], the same as `haven verify --boot`;
//! this adds what a cluster needs around it: a slot among `max_running` (the
//! coordinator, told `max_running` at registration, hands out no more boot tests than
//! that, so a job seldom waits here; the slot is a second guard), the sandbox limits
//! and folder of `worker.toml`, and
//! cancellation. Cancelling drops the test, and dropping it kills QEMU and removes the
//! sandbox folder ([`crate::boot::sandbox::Sandbox`]); after a `kill -9` of the
//! worker QEMU dies with it and the folder is removed when the worker starts again.

use std::str::FromStr;
use std::time::Duration;

use haven_proto::v1;
use haven_repo::{BootOutcome, SnapshotRef};
use tokio_util::sync::CancellationToken;

use super::storage_keys::{KeyUse, Site};
use super::{Completion, Worker};
use crate::boot::resources::Limits;
use crate::boot::{BootCheck, BootRequest, boot_test};
use crate::error::{Result, WorkerError};

impl Worker {
    /// Runs the boot-test job `job` until its verdict is stored, or `cancel` fires.
    pub(super) async fn boot_test(
        &self,
        job: &v1::JobAssignment,
        cancel: &CancellationToken,
    ) -> Result<Completion> {
        let check = BootCheck::from_str(&job.boot_check).map_err(WorkerError::InvalidInput)?;
        if job.boot_snapshot.is_empty() || job.boot_timeout_seconds == 0 {
            return Err(WorkerError::InvalidInput(
                "a boot-test job needs a snapshot and a timeout".into(),
            ));
        }
        let _slot = tokio::select! {
            slot = self.boot_slots.acquire() => slot.map_err(|_| WorkerError::ShuttingDown)?,
            _ = cancel.cancelled() => return Err(WorkerError::Cancelled("boot test")),
        };
        let repo = self
            .repository(&job.repository, KeyUse::of_job(job.kind), Site::of_job(job))
            .await?;
        let limits = &self.config.boot_tests;
        let request = BootRequest {
            snapshot: SnapshotRef {
                vm: job.vm.clone(),
                timestamp: Some(job.boot_snapshot.clone()),
            },
            check,
            timeout: Duration::from_secs(job.boot_timeout_seconds),
            limits: Limits {
                max_cpus: limits.max_cpus,
                max_memory_mib: limits.max_memory_mib,
            },
            work_dir: Some(self.config.boot_dir()),
            accel: None,
        };
        // Dropping the test on cancellation ends its sandbox (QEMU, exports, folder).
        let report = tokio::select! {
            report = boot_test(repo, &request) => report?,
            _ = cancel.cancelled() => return Err(WorkerError::Cancelled("boot test")),
        };
        let record = &report.record;
        let passed = record.outcome == BootOutcome::Passed;
        let summary = format!(
            "boot test of {}: {} ({}; {})",
            report.snapshot,
            if passed { "passed" } else { "failed" },
            record.detail,
            record.sandbox
        );
        Ok(Completion {
            summary,
            removed: Vec::new(),
            boot_verdict: if passed {
                v1::BootVerdict::Passed
            } else {
                v1::BootVerdict::Failed
            },
        })
    }
}
