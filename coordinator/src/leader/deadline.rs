//! Ending jobs that will not end by themselves: a job past its deadline (a backup that
//! hangs while its worker keeps heartbeating, a job no worker can take) and a job an
//! operator cancels. Either fails the job for good; a worker still running it learns
//! so from its next progress report and cancels it.

use super::state::State;
use super::tick::TickReport;
use super::writes::{job_puts, put_json};
use super::{Leader, LeaderError, Result};
use crate::model::{self, JobRecord, JobState, now_ms};
use crate::policy::DEFAULT_JOB_TIMEOUT_SECONDS;
use crate::store::Op;

/// The deadline of `job` (Unix ms): its creation plus its policy's `job_timeout_seconds`
/// or [`DEFAULT_JOB_TIMEOUT_SECONDS`].
pub(super) fn deadline(state: &State, job: &JobRecord) -> u64 {
    let seconds = job
        .policy
        .as_ref()
        .and_then(|name| state.policies.get(name))
        .map_or(DEFAULT_JOB_TIMEOUT_SECONDS, |policy| {
            policy.job_timeout_seconds
        });
    job.created_unix_ms
        .saturating_add(seconds.saturating_mul(1000))
}

/// The pending and running jobs past their deadline at `now`, as they become: failed,
/// saying when their time ran out. A committing job is not among them: its manifest
/// was accepted, and stopping its publication would lose a snapshot already taken.
pub(super) fn overdue_jobs(state: &State, now: u64) -> Vec<JobRecord> {
    state
        .jobs
        .values()
        .filter(|job| matches!(job.state, JobState::Pending | JobState::Assigned))
        .filter(|job| deadline(state, job) <= now)
        .map(|job| {
            let seconds = deadline(state, job).saturating_sub(job.created_unix_ms) / 1000;
            ended(
                job,
                now,
                "timed out",
                format!("timed out: not done {} after it was created", span(seconds)),
            )
        })
        .collect()
}

/// `job` cancelled at `now` by `by`: failed, unless it already ended or is being
/// committed (its snapshot is taken and being published: too late to cancel).
pub(super) fn cancellation(job: &JobRecord, now: u64, by: &str) -> Result<JobRecord> {
    match job.state {
        JobState::Pending | JobState::Assigned => {
            Ok(ended(job, now, "cancelled", format!("cancelled by {by}")))
        }
        JobState::Committing => Err(LeaderError::Fenced(format!(
            "job {} is committing: its snapshot is taken and being published",
            job.id
        ))),
        JobState::Succeeded | JobState::Failed => Err(LeaderError::Fenced(format!(
            "job {} already ended ({})",
            job.id,
            job.state.as_str()
        ))),
    }
}

/// `job` failed for good at `now`: its running attempt ends with `outcome`.
fn ended(job: &JobRecord, now: u64, outcome: &str, error: String) -> JobRecord {
    let mut job = job.clone();
    job.end_attempt(now, outcome);
    job.state = JobState::Failed;
    job.finished_unix_ms = now;
    job.error = Some(error);
    job
}

/// A number of seconds as operators write it: `90 s`, `2 h`, `1 h 30 min`.
fn span(seconds: u64) -> String {
    let (hours, minutes, rest) = (seconds / 3600, seconds % 3600 / 60, seconds % 60);
    match (hours, minutes, rest) {
        (0, 0, s) => format!("{s} s"),
        (0, m, 0) => format!("{m} min"),
        (h, 0, 0) => format!("{h} h"),
        (h, m, 0) => format!("{h} h {m} min"),
        _ => format!("{seconds} s"),
    }
}

impl Leader {
    /// Fails the jobs past their deadline; their workers cancel them at their next
    /// progress report.
    pub(super) async fn enforce_deadlines(&self, report: &mut TickReport) -> Result<()> {
        let _mutating = self.mutating().await;
        let overdue = overdue_jobs(&self.state(), now_ms());
        if overdue.is_empty() {
            return Ok(());
        }
        self.read_back(overdue.iter().map(|job| job.id.clone()).collect())
            .await?;
        let overdue = overdue_jobs(&self.state(), now_ms());
        if overdue.is_empty() {
            return Ok(());
        }
        let mut ops = job_puts(&overdue)?;
        ops.extend(
            overdue
                .iter()
                .map(|job| Op::Delete(model::owner_key(&job.id))),
        );
        self.write_batched(ops).await?;
        report.timed_out += overdue.len();
        let mut state = self.state();
        for job in overdue {
            tracing::warn!(
                job = job.id,
                vm = job.vm,
                error = job.error,
                "job timed out"
            );
            state.stopped(job);
        }
        Ok(())
    }

    /// Cancels job `id` for `by` (the caller's identity): it fails at once, and a
    /// worker running it stops at its next progress report. The job as it ended.
    pub async fn cancel(&self, id: &str, by: &str) -> Result<JobRecord> {
        let _mutating = self.mutating().await;
        self.read_back(vec![id.to_owned()]).await?;
        let job = self
            .state()
            .jobs
            .get(id)
            .cloned()
            .ok_or_else(|| LeaderError::NotFound(format!("unknown job {id:?}")))?;
        let cancelled = cancellation(&job, now_ms(), by)?;
        self.write(
            Vec::new(),
            vec![
                put_json(model::job_key(id), &cancelled)?,
                Op::Delete(model::owner_key(id)),
            ],
        )
        .await?;
        tracing::info!(job = id, by, "job cancelled");
        self.state().stopped(cancelled.clone());
        self.changed.notify_waiters();
        Ok(cancelled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leader::fixtures::{assigned_job, pending_job, policy, state_with};
    use crate::model::JobKind;

    const HOUR_MS: u64 = 3600 * 1000;

    #[test]
    fn jobs_past_their_policys_deadline_or_the_default_fail() {
        let mut quick = policy("quick");
        quick.job_timeout_seconds = 2 * 3600;
        let of = |mut job: JobRecord, policy: Option<&str>, created: u64| {
            job.policy = policy.map(String::from);
            job.created_unix_ms = created;
            job
        };
        let now = 100 * HOUR_MS;
        let mut committing = assigned_job("committing", JobKind::Backup, "vm3", "w1");
        committing.state = JobState::Committing;
        let mut done = assigned_job("done", JobKind::Backup, "vm4", "w1");
        done.state = JobState::Succeeded;
        let jobs = [
            // (job, expected error; None: not overdue)
            (
                of(
                    assigned_job("hung", JobKind::Backup, "vm1", "w1"),
                    Some("quick"),
                    now - 2 * HOUR_MS,
                ),
                Some("timed out: not done 2 h after it was created"),
            ),
            (
                of(
                    assigned_job("in-time", JobKind::Backup, "vm2", "w1"),
                    Some("quick"),
                    now - 2 * HOUR_MS + 1,
                ),
                None,
            ),
            (
                of(
                    pending_job("never-placed", JobKind::Gc, "", 0),
                    None,
                    now - 24 * HOUR_MS,
                ),
                Some("timed out: not done 24 h after it was created"),
            ),
            (
                of(
                    pending_job("young", JobKind::Gc, "", 0),
                    None,
                    now - 23 * HOUR_MS,
                ),
                None,
            ),
            (
                of(
                    pending_job("policy-gone", JobKind::Prune, "h1", 0),
                    Some("removed"),
                    now - 24 * HOUR_MS,
                ),
                Some("timed out: not done 24 h after it was created"),
            ),
            (of(committing, Some("quick"), 0), None),
            (of(done, Some("quick"), 0), None),
        ];
        let records: Vec<JobRecord> = jobs.iter().map(|(job, _)| job.clone()).collect();
        let state = state_with(&[], &[quick], &records);
        let overdue = overdue_jobs(&state, now);
        for (job, expected) in &jobs {
            let found = overdue.iter().find(|o| o.id == job.id);
            assert_eq!(
                found.and_then(|o| o.error.as_deref()),
                *expected,
                "{}",
                job.id
            );
            if let Some(found) = found {
                assert_eq!(found.state, JobState::Failed);
                assert_eq!(found.finished_unix_ms, now);
                if let Some(attempt) = found.current() {
                    assert_eq!(
                        (attempt.ended_unix_ms, attempt.outcome.as_str()),
                        (now, "timed out")
                    );
                }
            }
        }
    }

    #[test]
    fn only_pending_and_running_jobs_can_be_cancelled() {
        let running = assigned_job("j", JobKind::Backup, "vm1", "w1");
        let cancelled = cancellation(&running, 9, "operator ann").unwrap();
        assert_eq!(cancelled.state, JobState::Failed);
        assert_eq!(
            cancelled.error.as_deref(),
            Some("cancelled by operator ann")
        );
        assert_eq!(cancelled.finished_unix_ms, 9);
        assert_eq!(
            cancelled
                .current()
                .map(|a| (a.ended_unix_ms, a.outcome.as_str())),
            Some((9, "cancelled"))
        );
        let pending = pending_job("p", JobKind::Gc, "", 1);
        assert_eq!(
            cancellation(&pending, 9, "x").map(|j| j.state).ok(),
            Some(JobState::Failed)
        );
        // (state, expected refusal)
        let refused = [
            (JobState::Committing, "is committing"),
            (JobState::Succeeded, "already ended (succeeded)"),
            (JobState::Failed, "already ended (failed)"),
        ];
        for (state, message) in refused {
            let mut job = running.clone();
            job.state = state;
            match cancellation(&job, 9, "x") {
                Err(LeaderError::Fenced(error)) => assert!(error.contains(message), "{error}"),
                other => panic!("{state:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn spans_read_as_operators_write_them() {
        for (seconds, text) in [
            (45, "45 s"),
            (120, "2 min"),
            (7200, "2 h"),
            (5400, "1 h 30 min"),
            (3601, "3601 s"),
        ] {
            assert_eq!(span(seconds), text);
        }
    }
}
