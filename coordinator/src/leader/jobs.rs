//! Jobs: creating them (by hand, by rounds, as follow-ups), live progress, and how an
//! attempt ends (failure, or completion of a prune, GC or replication job).

use std::time::Duration;

use haven_proto::Backoff;

use super::state::State;
use super::writes::{job_puts, put_json};
use super::{Leader, LeaderError, Mutating, Result};
use crate::model::{
    self, JobKind, JobParams, JobRecord, JobState, SnapshotRecord, VmRecord, now_ms,
};
use crate::store::{Compare, Op};

/// Attempts before a job is given up.
pub(super) const MAX_ATTEMPTS: u32 = 5;

/// The wait before a job's next attempt: up to 5 s after its first failed attempt,
/// doubling to at most 5 minutes, with full jitter. With [`MAX_ATTEMPTS`] the four
/// retries wait 37 s in all on average and 75 s at most, so an outage of the
/// repository or the store shorter than that does not fail the job at once, and jobs
/// that failed together do not come back together.
pub(super) const RETRY_BACKOFF: Backoff = Backoff {
    first: Duration::from_secs(5),
    max: Duration::from_secs(300),
};

/// Live progress of a job, from the worker's reports.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// `haven.v1.JobPhase` value.
    pub phase: i32,
    /// Bytes processed.
    pub bytes_done: u64,
    /// Bytes to process.
    pub bytes_total: u64,
    /// Current rate.
    pub bytes_per_second: u64,
    /// Bytes stored.
    pub bytes_uploaded: u64,
}

/// A job a decision creates: everything but its id and creation time, so that deciding
/// needs neither randomness nor the clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NewJob {
    /// What it does.
    pub(super) kind: JobKind,
    /// VM backed up or pruned; empty for repository-wide jobs.
    pub(super) vm: String,
    /// The VM's host; empty lets any worker run it.
    pub(super) host: String,
    /// The policy that created it.
    pub(super) policy: Option<String>,
    /// Repository URL.
    pub(super) repository: String,
    /// Parameters of the non-backup kinds.
    pub(super) params: JobParams,
}

impl NewJob {
    /// A backup of `vm`.
    pub(super) fn backup(vm: &VmRecord, policy: Option<String>, repository: String) -> Self {
        Self {
            kind: JobKind::Backup,
            vm: vm.name.clone(),
            host: vm.host.clone(),
            policy,
            repository,
            params: JobParams::default(),
        }
    }

    /// A job that needs only the repository (prune, GC, replication): any worker may
    /// run it.
    pub(super) fn repository_wide(
        kind: JobKind,
        vm: &str,
        policy: Option<String>,
        repository: String,
        params: JobParams,
    ) -> Self {
        Self {
            kind,
            vm: vm.to_string(),
            host: String::new(),
            policy,
            repository,
            params,
        }
    }

    /// The pending record, with a fresh id, created at `now`.
    pub(super) fn into_record(self, now: u64) -> JobRecord {
        JobRecord {
            id: model::new_id("job"),
            kind: self.kind,
            params: self.params,
            summary: None,
            boot_passed: None,
            vm: self.vm,
            host: self.host,
            policy: self.policy,
            repository: self.repository,
            state: JobState::Pending,
            attempts: Vec::new(),
            created_unix_ms: now,
            finished_unix_ms: 0,
            snapshot: None,
            error: None,
            bytes_uploaded: 0,
            commit: None,
            not_before_unix_ms: 0,
        }
    }
}

/// New jobs a decision creates and the rounds it records with them.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct JobPlan {
    /// Rounds (`POLICY` or `POLICY#gc`) to record as run now.
    pub(super) rounds: Vec<String>,
    /// Jobs to create.
    pub(super) jobs: Vec<NewJob>,
}

/// The backup `haven job run VM` asks for: refused while the VM has an active backup;
/// the repository comes from the first policy that selects the VM unless given.
pub(super) fn manual_backup(state: &State, vm: &str, repository: Option<String>) -> Result<NewJob> {
    let record = state
        .vms
        .get(vm)
        .ok_or_else(|| LeaderError::NotFound(format!("unknown VM {vm:?}: see `haven vm list`")))?;
    if let Some(job) = state.active_job(|j| j.kind == JobKind::Backup && j.vm == vm) {
        return Err(LeaderError::Fenced(format!(
            "VM {vm:?} already has an active job {}",
            job.id
        )));
    }
    let policy = state
        .policies
        .values()
        .find(|p| p.select.matches(&record.name, &record.host, &record.labels));
    let repository = match (repository, policy) {
        (Some(url), _) => url,
        (None, Some(policy)) => policy.repository.clone(),
        (None, None) => {
            return Err(LeaderError::Invalid(format!(
                "no policy selects VM {vm:?}; give a repository"
            )));
        }
    };
    Ok(NewJob::backup(
        record,
        policy.map(|p| p.name.clone()),
        repository,
    ))
}

/// The GC job `haven job run --gc` asks for: refused while the repository has an
/// active one.
pub(super) fn manual_gc(state: &State, repository: &str, margin_seconds: u64) -> Result<NewJob> {
    if let Some(job) = state.active_job(|j| j.kind == JobKind::Gc && j.repository == repository) {
        return Err(LeaderError::Fenced(format!(
            "repository {repository} already has an active GC job {}",
            job.id
        )));
    }
    Ok(NewJob::repository_wide(
        JobKind::Gc,
        "",
        None,
        repository.to_string(),
        JobParams {
            gc_margin_seconds: margin_seconds,
            ..JobParams::default()
        },
    ))
}

/// Checks that `token` is the live attempt of `job_id` run by `worker`.
pub(super) fn check_token<'a>(
    state: &'a State,
    worker: &str,
    job_id: &str,
    token: i64,
) -> Result<&'a JobRecord> {
    let job = state
        .jobs
        .get(job_id)
        .ok_or_else(|| LeaderError::NotFound(format!("unknown job {job_id:?}")))?;
    let attempt = job
        .current()
        .ok_or_else(|| LeaderError::Fenced(format!("job {job_id} was never assigned")))?;
    if attempt.worker != worker || attempt.token != token {
        return Err(LeaderError::Fenced(format!(
            "job {job_id} moved: {worker} no longer owns it (its lease expired or it was \
             reassigned)"
        )));
    }
    Ok(job)
}

/// Refuses a report about a job that is not running.
pub(super) fn check_running(job: &JobRecord) -> Result<()> {
    if job.state != JobState::Assigned {
        return Err(LeaderError::Fenced(format!(
            "job {} is {:?}, not running",
            job.id, job.state
        )));
    }
    Ok(())
}

/// Ends the current attempt with `outcome` at `now`: the job goes back to pending
/// while it may be retried and has attempts left, not to be assigned before the
/// [`RETRY_BACKOFF`] pause that `jitter` (drawn uniformly from [0, 1)) picks; it fails
/// with `error` otherwise.
pub(super) fn retry_or_fail(
    job: &mut JobRecord,
    now: u64,
    outcome: String,
    retryable: bool,
    error: String,
    jitter: f64,
) {
    job.end_attempt(now, outcome);
    let attempts = u32::try_from(job.attempts.len()).unwrap_or(u32::MAX);
    if retryable && attempts < MAX_ATTEMPTS {
        job.state = JobState::Pending;
        let pause = RETRY_BACKOFF.delay(attempts, jitter);
        job.not_before_unix_ms = now.saturating_add(u64::try_from(pause.as_millis()).unwrap_or(0));
    } else {
        job.state = JobState::Failed;
        job.finished_unix_ms = now;
        job.error = Some(error);
    }
}

/// Whether `job` already succeeded in the attempt `worker` runs under `token`: a
/// retried completion whose first try was applied (its reply lost) finds this, in the
/// cache or, after the ownership compare failed, in the store, and counts as success
/// instead of a moved job.
pub(super) fn already_succeeded(job: &JobRecord, worker: &str, token: i64) -> bool {
    job.state == JobState::Succeeded
        && job
            .current()
            .is_some_and(|attempt| attempt.worker == worker && attempt.token == token)
}

/// Ends the current attempt and the job as succeeded at `now`.
pub(super) fn mark_succeeded(job: &mut JobRecord, now: u64) {
    job.state = JobState::Succeeded;
    job.finished_unix_ms = now;
    job.end_attempt(now, "succeeded");
}

/// A prune, GC, replication or boot-test job that ended well (a boot test with its
/// verdict `boot_passed`), and the catalog keys its completion removes (a primary
/// prune's removed snapshots, only of its own VM).
pub(super) fn completion(
    job: &JobRecord,
    now: u64,
    summary: &str,
    removed: &[String],
    boot_passed: Option<bool>,
) -> Result<(JobRecord, Vec<String>)> {
    if job.kind == JobKind::Backup {
        return Err(LeaderError::Invalid(format!(
            "job {} is a backup: it ends with CommitSnapshot",
            job.id
        )));
    }
    check_running(job)?;
    if (job.kind == JobKind::BootTest) != boot_passed.is_some() {
        return Err(LeaderError::Invalid(format!(
            "job {}: a verdict comes with a boot test and only with one",
            job.id
        )));
    }
    let mut done = job.clone();
    mark_succeeded(&mut done, now);
    done.summary = Some(summary.chars().take(1000).collect());
    done.boot_passed = boot_passed;
    let mut dropped = Vec::new();
    for snapshot in removed {
        let (vm, timestamp) = snapshot
            .split_once('@')
            .ok_or_else(|| LeaderError::Invalid(format!("bad snapshot name {snapshot:?}")))?;
        if done.kind != JobKind::Prune || vm != done.vm {
            return Err(LeaderError::Invalid(format!(
                "job {} cannot remove {snapshot} from the catalog",
                job.id
            )));
        }
        // The catalog lists the primary's snapshots; a replica's prune leaves it alone.
        if done.params.replica_of.is_none() {
            dropped.push(model::snapshot_key(vm, timestamp));
        }
    }
    Ok((done, dropped))
}

impl Leader {
    /// Creates a job for `vm` now; the repository comes from the first policy that
    /// selects the VM unless given.
    pub async fn run_job(&self, vm: &str, repository: Option<String>) -> Result<String> {
        let mutating = self.mutating().await;
        let job = manual_backup(&self.state(), vm, repository)?;
        self.create_one(&mutating, job).await
    }

    /// Creates a GC job for `repository` now (none if one is already active there).
    pub async fn run_gc(&self, repository: &str, margin_seconds: u64) -> Result<String> {
        let mutating = self.mutating().await;
        let job = manual_gc(&self.state(), repository, margin_seconds)?;
        self.create_one(&mutating, job).await
    }

    /// Creates one job now; its id.
    async fn create_one(&self, mutating: &Mutating<'_>, job: NewJob) -> Result<String> {
        let now = now_ms();
        let record = job.into_record(now);
        let id = record.id.clone();
        self.create_jobs(mutating, Vec::new(), vec![record], now)
            .await?;
        Ok(id)
    }

    /// Applies a plan at `now`: creates its jobs and records its rounds; the new jobs'
    /// ids, in the plan's order.
    pub(super) async fn apply_plan(
        &self,
        mutating: &Mutating<'_>,
        plan: JobPlan,
        now: u64,
    ) -> Result<Vec<String>> {
        let jobs: Vec<JobRecord> = plan.jobs.into_iter().map(|j| j.into_record(now)).collect();
        let ids = jobs.iter().map(|job| job.id.clone()).collect();
        self.create_jobs(mutating, plan.rounds, jobs, now).await?;
        Ok(ids)
    }

    /// Writes new jobs and the rounds that created them (recorded at `now`), then puts
    /// them in the cache.
    async fn create_jobs(
        &self,
        _mutating: &Mutating<'_>,
        rounds: Vec<String>,
        jobs: Vec<JobRecord>,
        now: u64,
    ) -> Result<()> {
        let mut ops = Vec::with_capacity(rounds.len() + jobs.len());
        for round in &rounds {
            ops.push(put_json(model::round_key(round), &now)?);
        }
        ops.extend(job_puts(&jobs)?);
        self.write_batched(ops).await?;
        let mut state = self.state();
        for round in rounds {
            state.rounds.insert(round, now);
        }
        state.insert_jobs(jobs);
        Ok(())
    }

    /// Records progress; `Ok(true)` asks the worker to cancel.
    pub async fn progress(
        &self,
        worker: &str,
        job_id: &str,
        token: i64,
        progress: Progress,
    ) -> Result<bool> {
        {
            let mut state = self.state();
            let job = check_token(&state, worker, job_id, token)?;
            if job.state != JobState::Assigned {
                return Ok(!matches!(job.state, JobState::Committing));
            }
            state.progress.insert(job_id.to_string(), progress);
        }
        self.changed.notify_waiters();
        Ok(false)
    }

    /// A job that ended without a snapshot: retried unless `retryable` is false or it
    /// ran out of attempts.
    pub async fn fail(
        &self,
        worker: &str,
        job_id: &str,
        token: i64,
        error: &str,
        retryable: bool,
    ) -> Result<()> {
        let mutating = self.mutating().await;
        check_token(&self.state(), worker, job_id, token)?;
        // The cache may be behind the store after a write whose reply was lost and
        // which could not be read back (a commit accepted after all): the stored record
        // decides, so a failure never overwrites an accepted commit.
        self.resync_job(job_id).await?;
        let mut updated = check_token(&self.state(), worker, job_id, token)?.clone();
        check_running(&updated)?;
        retry_or_fail(
            &mut updated,
            now_ms(),
            format!("failed: {error}"),
            retryable,
            error.to_string(),
            rand::random(),
        );
        self.write_ended(&mutating, updated, Vec::new(), Vec::new())
            .await?;
        self.changed.notify_waiters();
        Ok(())
    }

    /// A prune, GC, replication or boot-test job that ended well; fenced like a commit.
    pub async fn complete(
        &self,
        worker: &str,
        job_id: &str,
        token: i64,
        summary: &str,
        removed: &[String],
        boot_passed: Option<bool>,
    ) -> Result<()> {
        let mutating = self.mutating().await;
        let job = check_token(&self.state(), worker, job_id, token)?.clone();
        if already_succeeded(&job, worker, token) {
            // A retry whose first try succeeded and whose reply was lost.
            return Ok(());
        }
        let (done, dropped) = completion(&job, now_ms(), summary, removed, boot_passed)?;
        let accepted = self
            .write_ended(
                &mutating,
                done,
                vec![Compare::ModRevision(model::owner_key(job_id), token)],
                dropped.iter().cloned().map(Op::Delete).collect(),
            )
            .await;
        let succeeded = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // `write_ended` read the record back: if the write was applied after
                // all, its catalog deletions were too.
                let applied = self
                    .state()
                    .jobs
                    .get(job_id)
                    .is_some_and(|job| already_succeeded(job, worker, token));
                if applied {
                    self.forget_snapshots(&dropped);
                }
                return Err(error);
            }
        };
        if !succeeded {
            // The ownership key is gone: the job moved, or an earlier try of this
            // completion was applied and its reply lost. The stored record tells.
            let stored = self.resync_job(job_id).await?;
            if !stored.is_some_and(|stored| already_succeeded(&stored, worker, token)) {
                return Err(LeaderError::Fenced(format!(
                    "job {job_id} moved: {worker} no longer owns it (its lease expired)"
                )));
            }
        }
        self.forget_snapshots(&dropped);
        self.changed.notify_waiters();
        Ok(())
    }

    /// Drops catalog entries a completion removed from the store.
    fn forget_snapshots(&self, keys: &[String]) {
        let mut state = self.state();
        for key in keys {
            state.snapshots.remove(key);
        }
    }

    /// Brings the cache's copy of job `id` in line with the store, after a write whose
    /// outcome is unknown (its reply was lost) or whose compare failed: the stored
    /// record (`None`: deleted, or unreadable and left alone in the cache).
    pub(super) async fn resync_job(&self, id: &str) -> Result<Option<JobRecord>> {
        let Some(kv) = self.store.get(&model::job_key(id)).await? else {
            let mut state = self.state();
            state.jobs.remove(id);
            state.progress.remove(id);
            return Ok(None);
        };
        let stored: JobRecord = match serde_json::from_slice(&kv.value) {
            Ok(stored) => stored,
            Err(error) => {
                tracing::warn!(key = kv.key, %error, "cannot read a job record back");
                return Ok(None);
            }
        };
        let catalog_entry = self.stored_catalog_entry(&stored).await?;
        let mut state = self.state();
        if let Some((key, record)) = catalog_entry {
            state.snapshots.insert(key, record);
        }
        let cached = state.jobs.get(id);
        if cached != Some(&stored) {
            let ended =
                cached.is_some_and(|job| job.state.is_active()) && !stored.state.is_active();
            tracing::info!(
                job = id,
                state = stored.state.as_str(),
                "job record read back from the store"
            );
            if ended {
                state.stopped(stored.clone());
            } else {
                state.insert_jobs([stored.clone()]);
            }
        }
        Ok(Some(stored))
    }

    /// The catalog entry of a backup `job` that committed, as stored: the transaction
    /// accepting a commit writes the job and its entry together, so a cache that
    /// missed the one (a lost reply) missed the other too.
    async fn stored_catalog_entry(
        &self,
        job: &JobRecord,
    ) -> Result<Option<(String, SnapshotRecord)>> {
        let committed = job.kind == JobKind::Backup
            && matches!(job.state, JobState::Committing | JobState::Succeeded);
        let Some((vm, timestamp)) = job.snapshot.as_deref().and_then(|s| s.rsplit_once('@')) else {
            return Ok(None);
        };
        if !committed {
            return Ok(None);
        }
        let key = model::snapshot_key(vm, timestamp);
        let Some(kv) = self.store.get(&key).await? else {
            return Ok(None);
        };
        Ok(serde_json::from_slice(&kv.value)
            .ok()
            .map(|record| (key, record)))
    }

    /// Reads jobs back from the store before a write that ends them from memory (a
    /// dead worker's jobs, overdue ones, a cancel). The cache is behind the store
    /// after a write whose reply was lost and whose read-back failed, and that write
    /// may have accepted a commit, which ending the job from memory would overwrite,
    /// leaving a catalog entry without its manifest.
    pub(super) async fn read_back(&self, ids: Vec<String>) -> Result<()> {
        for id in &ids {
            self.resync_job(id).await?;
        }
        Ok(())
    }

    /// Writes `job`, whose attempt ended, with `also`, and deletes its ownership key,
    /// if `compares` hold; then puts it in the cache. `Ok(false)`: a compare other
    /// than leadership failed and nothing changed. After a store error (the write may
    /// have been applied, its reply lost) the cache holds the record read back from
    /// the store when it can be read ([`Leader::resync_job`]).
    pub(super) async fn write_ended(
        &self,
        _mutating: &Mutating<'_>,
        job: JobRecord,
        compares: Vec<Compare>,
        also: Vec<Op>,
    ) -> Result<bool> {
        let mut ops = vec![
            put_json(model::job_key(&job.id), &job)?,
            Op::Delete(model::owner_key(&job.id)),
        ];
        ops.extend(also);
        match self.write(compares, ops).await {
            Ok(true) => {}
            Ok(false) => return Ok(false),
            Err(error @ LeaderError::Store(_)) => {
                // Applied or not, the store knows: the cache follows it, so a lost
                // reply cannot leave the job assigned, to be handed out again.
                if let Err(unread) = self.resync_job(&job.id).await {
                    tracing::warn!(job = job.id, error = %unread, "cannot read a job record back");
                }
                return Err(error);
            }
            Err(error) => return Err(error),
        }
        self.state().stopped(job);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leader::fixtures::{assigned_job, policy, state_with, vm};

    #[test]
    fn manual_backups_are_refused_or_take_their_repository_in_order() {
        let active = assigned_job("busy", JobKind::Backup, "vm2", "w1");
        let state = state_with(
            &[vm("vm1", "h1"), vm("vm2", "h1")],
            &[policy("p")],
            &[active],
        );
        // (VM, repository given, expected repository or error)
        let cases: [(&str, Option<&str>, std::result::Result<&str, &str>); 4] = [
            ("vm1", None, Ok("file:///p")),
            ("vm1", Some("s3://b/r"), Ok("s3://b/r")),
            ("vm2", None, Err("already has an active job busy")),
            ("vm9", None, Err("unknown VM")),
        ];
        for (name, given, expected) in cases {
            let decided = manual_backup(&state, name, given.map(String::from));
            match (decided, expected) {
                (Ok(job), Ok(repository)) => {
                    assert_eq!(job.repository, repository, "{name}");
                    assert_eq!((job.vm.as_str(), job.host.as_str()), (name, "h1"));
                }
                (Err(error), Err(message)) => {
                    assert!(error.to_string().contains(message), "{name}: {error}");
                }
                (decided, _) => panic!("{name}: unexpected {decided:?}"),
            }
        }
        let without_policy = state_with(&[vm("vm1", "h1")], &[], &[]);
        assert!(matches!(
            manual_backup(&without_policy, "vm1", None),
            Err(LeaderError::Invalid(_))
        ));
    }

    #[test]
    fn failures_are_retried_after_a_growing_jittered_pause_until_attempts_run_out() {
        const NOW: u64 = 1_000_000;
        // (attempts so far, retryable, jitter, expected state, expected not-before)
        let cases = [
            (1, true, 1.0, JobState::Pending, NOW + 5_000),
            (1, true, 0.5, JobState::Pending, NOW + 2_500),
            (2, true, 1.0, JobState::Pending, NOW + 10_000),
            (MAX_ATTEMPTS - 1, true, 0.5, JobState::Pending, NOW + 20_000),
            (MAX_ATTEMPTS, true, 1.0, JobState::Failed, 0),
            (1, false, 1.0, JobState::Failed, 0),
        ];
        for (attempts, retryable, jitter, expected, not_before) in cases {
            let mut job = assigned_job("j", JobKind::Backup, "vm1", "w1");
            let attempt = job.attempts[0].clone();
            job.attempts = vec![attempt; attempts as usize];
            retry_or_fail(
                &mut job,
                NOW,
                "failed: x".into(),
                retryable,
                "x".into(),
                jitter,
            );
            let case = format!("{attempts} attempts, retryable {retryable}, jitter {jitter}");
            assert_eq!(job.state, expected, "{case}");
            assert_eq!(job.not_before_unix_ms, not_before, "{case}");
            assert_eq!(job.current().map(|a| a.ended_unix_ms), Some(NOW));
            let failed = expected == JobState::Failed;
            assert_eq!(job.error.is_some(), failed);
            assert_eq!(job.finished_unix_ms, if failed { NOW } else { 0 });
        }
    }

    #[test]
    fn completion_drops_only_the_prunes_own_snapshots() {
        let prune = assigned_job("p", JobKind::Prune, "vm1", "w1");
        let gc = assigned_job("g", JobKind::Gc, "", "w1");
        let backup = assigned_job("b", JobKind::Backup, "vm1", "w1");
        let removed = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let (done, dropped) = completion(&prune, 9, "ok", &removed(&["vm1@T1"]), None).unwrap();
        assert_eq!(done.state, JobState::Succeeded);
        assert_eq!(done.summary.as_deref(), Some("ok"));
        assert_eq!(dropped, vec![model::snapshot_key("vm1", "T1")]);
        let mut at_replica = prune.clone();
        at_replica.params.replica_of = Some("file:///primary".into());
        let (done, dropped) =
            completion(&at_replica, 9, "ok", &removed(&["vm1@T1"]), None).unwrap();
        assert_eq!(done.state, JobState::Succeeded);
        assert!(
            dropped.is_empty(),
            "the catalog lists the primary's snapshots"
        );
        // (job, removed) that must be refused
        let refused = [
            (&prune, removed(&["vm2@T1"])),
            (&prune, removed(&["no-at-sign"])),
            (&gc, removed(&["vm1@T1"])),
            (&backup, removed(&[])),
        ];
        for (job, names) in refused {
            assert!(
                matches!(
                    completion(job, 9, "", &names, None),
                    Err(LeaderError::Invalid(_))
                ),
                "{} {names:?}",
                job.id
            );
        }
        let mut pending = prune.clone();
        pending.state = JobState::Pending;
        assert!(matches!(
            completion(&pending, 9, "", &[], None),
            Err(LeaderError::Fenced(_))
        ));
    }

    #[test]
    fn a_boot_test_completes_with_its_verdict_and_nothing_else_does() {
        let boot = assigned_job("t", JobKind::BootTest, "vm1", "w1");
        let gc = assigned_job("g", JobKind::Gc, "", "w1");
        for passed in [true, false] {
            let (done, dropped) = completion(&boot, 9, "booted", &[], Some(passed)).unwrap();
            assert_eq!(done.state, JobState::Succeeded);
            assert_eq!(done.boot_passed, Some(passed));
            assert!(dropped.is_empty());
        }
        for (job, verdict) in [(&boot, None), (&gc, Some(true))] {
            assert!(matches!(
                completion(job, 9, "", &[], verdict),
                Err(LeaderError::Invalid(_))
            ));
        }
    }
}
