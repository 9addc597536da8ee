//! Forgetting finished jobs once the history period has passed, so the store and the
//! cache do not grow with every job ever run.

use std::time::Duration;

use super::state::State;
use super::tick::TickReport;
use super::writes::OPS_PER_TXN;
use super::{Leader, Result};
use crate::model::{self, now_ms};
use crate::store::Op;

/// Finished jobs that ended more than `history` before `now`, at most `limit` of them
/// so one pass stays short however long the backlog.
pub(super) fn expired_jobs(
    state: &State,
    now: u64,
    history: Duration,
    limit: usize,
) -> Vec<String> {
    let history = u64::try_from(history.as_millis()).unwrap_or(u64::MAX);
    let cutoff = now.saturating_sub(history);
    state
        .jobs
        .values()
        .filter(|job| {
            !job.state.is_active() && job.finished_unix_ms > 0 && job.finished_unix_ms < cutoff
        })
        .map(|job| job.id.clone())
        .take(limit)
        .collect()
}

impl Leader {
    /// Forgets jobs that ended longer than the history period ago, a bounded batch per
    /// pass so a long backlog never makes one pass slow.
    pub(super) async fn expire_jobs(&self, report: &mut TickReport) -> Result<()> {
        let _mutating = self.mutating().await;
        let expired = expired_jobs(
            &self.state(),
            now_ms(),
            self.settings.job_history,
            OPS_PER_TXN,
        );
        if expired.is_empty() {
            return Ok(());
        }
        let ops = expired
            .iter()
            .map(|id| Op::Delete(model::job_key(id)))
            .collect();
        self.write_batched(ops).await?;
        {
            let mut state = self.state();
            for id in &expired {
                state.jobs.remove(id);
                state.progress.remove(id);
            }
        }
        report.expired += expired.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leader::fixtures::{finished_job, pending_job, state_with};
    use crate::model::{JobKind, JobState};

    #[test]
    fn only_jobs_finished_before_the_history_period_expire() {
        const HOUR: u64 = 3600 * 1000;
        let now = 10 * HOUR;
        let jobs = [
            finished_job("old-success", JobState::Succeeded, now - 2 * HOUR),
            finished_job("old-failure", JobState::Failed, now - 2 * HOUR),
            finished_job("recent", JobState::Succeeded, now - 1000),
            finished_job("exactly-at-cutoff", JobState::Succeeded, now - HOUR),
            finished_job("never-finished", JobState::Succeeded, 0),
            pending_job("active", JobKind::Backup, "h1", 1),
        ];
        let state = state_with(&[], &[], &jobs);
        let mut expired = expired_jobs(&state, now, Duration::from_secs(3600), 100);
        expired.sort();
        assert_eq!(expired, vec!["old-failure", "old-success"]);
        assert_eq!(
            expired_jobs(&state, now, Duration::from_secs(3600), 1).len(),
            1,
            "bounded per pass"
        );
        assert!(expired_jobs(&state, now, Duration::MAX, 100).is_empty());
    }
}
