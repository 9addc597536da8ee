//! One scheduling pass of the leader, in the order its steps depend on each other.

use super::{Leader, Result};

/// What one tick did, for the replica's debug log and the scale benchmark.
#[derive(Debug, Clone, Copy, Default)]
pub struct TickReport {
    /// Jobs created by due policy rounds.
    pub created: usize,
    /// Jobs given to workers.
    pub assigned: usize,
    /// Jobs whose worker lost its lease.
    pub requeued: usize,
    /// Jobs failed because they were past their deadline.
    pub timed_out: usize,
    /// Finished jobs forgotten after the history period.
    pub expired: usize,
    /// VMs forgotten after their host stopped reporting them.
    pub forgotten_vms: usize,
}

impl Leader {
    /// One scheduling pass: drop dead workers (their jobs go back to pending), fail
    /// jobs past their deadline, start due policy rounds, finish interrupted commits,
    /// place pending jobs, forget jobs past their history period and VMs their host
    /// no longer reports, and notify RPO breaches.
    pub async fn tick(&self) -> Result<TickReport> {
        let mut report = TickReport::default();
        self.reap_workers(&mut report).await?;
        self.enforce_deadlines(&mut report).await?;
        self.start_rounds(&mut report).await?;
        self.resume_commits().await?;
        self.assign(&mut report).await?;
        self.expire_jobs(&mut report).await?;
        self.forget_missing_vms(&mut report).await?;
        self.watch_rpo(crate::model::now_ms());
        if report.assigned > 0 {
            self.assigned.notify_waiters();
        }
        if report.assigned > 0 || report.requeued > 0 || report.timed_out > 0 {
            self.changed.notify_waiters();
        }
        Ok(report)
    }
}
