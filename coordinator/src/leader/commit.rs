//! The fenced commit: a worker's manifest is accepted only while its fencing token
//! still owns the job (one store transaction that compares the ownership key's
//! revision), then published create-only in the repository, then the job succeeds and
//! its follow-up jobs are created. A commit interrupted after its acceptance (crash,
//! repository error) is finished by a later tick from the job record.

use haven_repo::{Backend, Durability, PutOutcome, SnapshotId};

use super::jobs::{check_token, mark_succeeded};
use super::writes::put_json;
use super::{Leader, LeaderError, Result};
use crate::model::{self, JobRecord, JobState, PendingCommit, SnapshotRecord, now_ms};
use crate::store::Compare;

/// Largest sealed manifest accepted (etcd values are limited to 1.5 MiB).
const MAX_MANIFEST_BYTES: usize = 1 << 20;
/// How far a worker's clock may run ahead of the leader's: a snapshot stamped later
/// than this in the future would sort after every real one, becoming `VM@latest`
/// and keeping prune from ever removing it.
const MAX_CLOCK_AHEAD_MS: u64 = 10 * 60 * 1000;

/// Snapshot data a worker sends with its commit.
#[derive(Debug, Clone)]
pub struct CommitRequest {
    /// Worker id.
    pub worker: String,
    /// Job id.
    pub job_id: String,
    /// Fencing token of the worker's attempt.
    pub token: i64,
    /// `snapshots/VM/TS`.
    pub manifest_key: String,
    /// Sealed manifest.
    pub manifest_blob: Vec<u8>,
    /// Catalog entry.
    pub snapshot: SnapshotRecord,
}

/// What to do with a commit request whose token owns the job.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum CommitDecision {
    /// A retry of a commit already accepted: finish that one.
    Finish,
    /// A new commit: write these records, fenced by the token.
    Accept(Box<Accepted>),
}

/// The records a new commit writes.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Accepted {
    /// The job, committing, with the manifest to publish.
    job: JobRecord,
    /// Key of the catalog entry.
    catalog_key: String,
    /// The catalog entry.
    record: SnapshotRecord,
}

/// Decides a commit of `job` (whose token the request holds): a retry to finish, or a
/// new manifest to accept once it is checked to belong to the job's VM, to fit in the
/// store, to be stamped no later than [`MAX_CLOCK_AHEAD_MS`] after `now_ms` and to
/// be a well-formed sealed blob; refused otherwise.
pub(super) fn accept_commit(
    job: &JobRecord,
    request: &CommitRequest,
    now_ms: u64,
) -> Result<CommitDecision> {
    let snapshot = format!("{}@{}", request.snapshot.vm, request.snapshot.timestamp);
    match job.state {
        JobState::Assigned => {}
        JobState::Committing | JobState::Succeeded
            if job.commit.as_ref().map(|c| &c.manifest_key) == Some(&request.manifest_key)
                || job.snapshot.as_deref() == Some(snapshot.as_str()) =>
        {
            return Ok(CommitDecision::Finish);
        }
        other => {
            return Err(LeaderError::Fenced(format!(
                "job {} is {other:?}, not running",
                request.job_id
            )));
        }
    }
    let id = SnapshotId::from_manifest_key(&request.manifest_key).ok_or_else(|| {
        LeaderError::Invalid(format!("bad manifest key {:?}", request.manifest_key))
    })?;
    if id.vm != job.vm
        || request.snapshot.vm != job.vm
        || request.snapshot.timestamp != id.timestamp
    {
        return Err(LeaderError::Invalid(format!(
            "manifest {} does not belong to job {} of VM {}",
            request.manifest_key, job.id, job.vm
        )));
    }
    let stamped_ms = haven_repo::parse_timestamp(&id.timestamp)
        .map(|time| u64::try_from(time.unix_timestamp_nanos() / 1_000_000).unwrap_or(0))
        .map_err(|error| LeaderError::Invalid(format!("snapshot timestamp: {error}")))?;
    if stamped_ms > now_ms.saturating_add(MAX_CLOCK_AHEAD_MS) {
        return Err(LeaderError::Invalid(format!(
            "snapshot {}@{} is stamped in the future: check the worker's clock",
            id.vm, id.timestamp
        )));
    }
    if request.manifest_blob.len() > MAX_MANIFEST_BYTES {
        return Err(LeaderError::Invalid(format!(
            "manifest of {} bytes exceeds the {MAX_MANIFEST_BYTES}-byte limit",
            request.manifest_blob.len()
        )));
    }
    haven_repo::check_frame_only(&request.manifest_key, &request.manifest_blob)
        .map_err(|error| LeaderError::Invalid(format!("manifest blob: {error}")))?;
    let mut updated = job.clone();
    updated.state = JobState::Committing;
    updated.snapshot = Some(snapshot);
    updated.bytes_uploaded = request.snapshot.bytes_uploaded;
    updated.commit = Some(PendingCommit {
        manifest_key: request.manifest_key.clone(),
        manifest_hex: hex::encode(&request.manifest_blob),
        token: request.token,
    });
    let mut record = request.snapshot.clone();
    record.repository = job.repository.clone();
    record.job_id = job.id.clone();
    record.committed_unix_ms = now_ms;
    Ok(CommitDecision::Accept(Box::new(Accepted {
        job: updated,
        catalog_key: model::snapshot_key(&id.vm, &id.timestamp),
        record,
    })))
}

impl Leader {
    /// The fenced commit: accepts the manifest only while `token` owns the job, then
    /// publishes it create-only in the repository.
    pub async fn commit(&self, request: CommitRequest) -> Result<String> {
        let mutating = self.mutating().await;
        let job = check_token(
            &self.state(),
            &request.worker,
            &request.job_id,
            request.token,
        )?
        .clone();
        let (updated, catalog_key, record) = match accept_commit(&job, &request, now_ms())? {
            CommitDecision::Finish => {
                drop(mutating);
                return self.finish_commit(&request.job_id).await;
            }
            CommitDecision::Accept(accepted) => {
                let Accepted {
                    job,
                    catalog_key,
                    record,
                } = *accepted;
                (job, catalog_key, record)
            }
        };
        // Under `mutations`: the ownership compare fences a moved job, but not a second
        // commit of the same attempt, which only the state check above refuses.
        let written = self
            .write(
                vec![Compare::ModRevision(
                    model::owner_key(&job.id),
                    request.token,
                )],
                vec![
                    put_json(model::job_key(&job.id), &updated)?,
                    put_json(catalog_key.clone(), &record)?,
                ],
            )
            .await;
        let accepted = match written {
            Ok(accepted) => accepted,
            Err(error @ LeaderError::Store(_)) => {
                // Applied or not, the store knows. Applied (its reply lost), the cache
                // must say so, or a `fail` of this attempt would overwrite the accepted
                // commit and leave its catalog entry behind without a manifest.
                let stored = self.resync_job(&job.id).await;
                let applied = matches!(&stored, Ok(Some(stored))
                    if stored.commit.as_ref().map(|c| &c.manifest_key)
                        == Some(&request.manifest_key));
                if !applied {
                    return Err(error);
                }
                true
            }
            Err(error) => return Err(error),
        };
        if !accepted {
            return Err(LeaderError::Fenced(format!(
                "job {} moved: {} no longer owns it (its lease expired)",
                job.id, request.worker
            )));
        }
        {
            let mut state = self.state();
            state.jobs.insert(job.id.clone(), updated);
            state.snapshots.insert(catalog_key, record);
        }
        drop(mutating);
        self.finish_commit(&request.job_id).await
    }

    /// Publishes an accepted manifest (idempotent) and marks the job succeeded.
    async fn finish_commit(&self, job_id: &str) -> Result<String> {
        let job = self
            .state()
            .jobs
            .get(job_id)
            .cloned()
            .ok_or_else(|| LeaderError::NotFound(format!("unknown job {job_id:?}")))?;
        let snapshot = job.snapshot.clone().unwrap_or_default();
        if job.state == JobState::Succeeded {
            return Ok(snapshot);
        }
        let Some(commit) = job.commit.clone() else {
            return Err(LeaderError::Fenced(format!(
                "job {job_id} has no accepted commit"
            )));
        };
        let blob = hex::decode(&commit.manifest_hex).map_err(LeaderError::StoredManifest)?;
        // Outside every lock: a repository write must not stall every other request.
        // Publishing is idempotent, so a concurrent retry of the same commit is harmless.
        let backend = self.backend(&job.repository).await?;
        self.set_publishing(job_id, true);
        let published = publish(&backend, &commit.manifest_key, blob).await;
        self.set_publishing(job_id, false);
        published?;
        let mutating = self.mutating().await;
        if self.has_succeeded(job_id) {
            return Ok(snapshot);
        }
        let mut done = job;
        done.commit = None;
        mark_succeeded(&mut done, now_ms());
        match self
            .write_ended(&mutating, done.clone(), Vec::new(), Vec::new())
            .await
        {
            Ok(_) => {}
            // Applied, its reply lost (`write_ended` read the record back): the job
            // succeeded, and its follow-ups are still to be created.
            Err(LeaderError::Store(_)) if self.has_succeeded(job_id) => {}
            Err(error) => return Err(error),
        }
        if let Err(error) = self.create_follow_ups(&mutating, &done).await {
            tracing::warn!(job = job_id, %error, "cannot create the prune/replication jobs");
        }
        drop(mutating);
        self.changed.notify_waiters();
        Ok(snapshot)
    }

    /// Whether the cache says job `job_id` succeeded.
    fn has_succeeded(&self, job_id: &str) -> bool {
        self.state()
            .jobs
            .get(job_id)
            .is_some_and(|job| job.state == JobState::Succeeded)
    }

    /// The ids of manifests being published now. A set of ids stays whole whatever
    /// panicked while it was locked, so a poisoned lock is taken over: forgetting a
    /// publication in flight would let the tick publish it a second time.
    fn publishing(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.publishing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_publishing(&self, job_id: &str, on: bool) {
        let mut publishing = self.publishing();
        if on {
            publishing.insert(job_id.to_string());
        } else {
            publishing.remove(job_id);
        }
    }

    fn is_publishing(&self, job_id: &str) -> bool {
        self.publishing().contains(job_id)
    }

    /// Finishes commits that were accepted but not published (a crash or an error
    /// after the acceptance), except those being published now.
    pub(super) async fn resume_commits(&self) -> Result<()> {
        let stuck: Vec<String> = self
            .state()
            .jobs
            .values()
            .filter(|j| j.state == JobState::Committing && !self.is_publishing(&j.id))
            .map(|j| j.id.clone())
            .collect();
        for job in stuck {
            if let Err(error) = self.finish_commit(&job).await {
                tracing::warn!(job, %error, "cannot finish an accepted commit yet");
            }
        }
        Ok(())
    }
}

/// Writes a sealed manifest create-only; an identical existing one is success.
async fn publish(backend: &Backend, key: &str, blob: Vec<u8>) -> Result<()> {
    match backend
        .put_if_absent(key, blob.clone().into(), Durability::Immediate)
        .await?
    {
        PutOutcome::Created => Ok(()),
        PutOutcome::AlreadyExisted => {
            let existing = backend.get(key, blob.len() as u64 + 1).await?;
            if existing.as_ref() == blob.as_slice() {
                Ok(())
            } else {
                Err(LeaderError::ManifestConflict {
                    key: key.to_string(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leader::fixtures::assigned_job;
    use crate::model::JobKind;

    fn request(manifest_key: &str, vm: &str, timestamp: &str, blob: Vec<u8>) -> CommitRequest {
        CommitRequest {
            worker: "w1".into(),
            job_id: "j".into(),
            token: 1,
            manifest_key: manifest_key.into(),
            manifest_blob: blob,
            snapshot: SnapshotRecord {
                vm: vm.into(),
                timestamp: timestamp.into(),
                repository: "elsewhere".into(),
                disks: Vec::new(),
                bytes_uploaded: 5,
                job_id: "other".into(),
                bytes_read: 7,
                bytes_new: 6,
                committed_unix_ms: 0,
            },
        }
    }

    const TS: &str = "2026-12-06T05:30:00Z";
    /// A minute after `TS`.
    const NOW_MS: u64 = 1_796_535_060_000;

    #[test]
    fn commits_of_other_vms_oversized_or_of_finished_jobs_are_refused() {
        let job = assigned_job("j", JobKind::Backup, "vm1", "w1");
        let key = format!("snapshots/vm1/{TS}");
        let mut failed = job.clone();
        failed.state = JobState::Failed;
        // (case, job, request, expected refusal)
        let cases = [
            (
                "bad key",
                &job,
                request("nonsense", "vm1", TS, vec![]),
                "bad manifest key",
            ),
            (
                "other VM's key",
                &job,
                request(&format!("snapshots/vm2/{TS}"), "vm1", TS, vec![]),
                "does not belong",
            ),
            (
                "other VM's entry",
                &job,
                request(&key, "vm2", TS, vec![]),
                "does not belong",
            ),
            (
                "other timestamp",
                &job,
                request(&key, "vm1", "2026-12-06T00:00:00Z", vec![]),
                "does not belong",
            ),
            (
                "far future",
                &job,
                request(
                    "snapshots/vm1/2999-01-01T00:00:00Z",
                    "vm1",
                    "2999-01-01T00:00:00Z",
                    vec![],
                ),
                "stamped in the future",
            ),
            (
                "too large",
                &job,
                request(&key, "vm1", TS, vec![0; MAX_MANIFEST_BYTES + 1]),
                "exceeds",
            ),
            (
                "not a sealed blob",
                &job,
                request(&key, "vm1", TS, vec![1, 2, 3]),
                "manifest blob",
            ),
            (
                "failed job",
                &failed,
                request(&key, "vm1", TS, vec![]),
                "not running",
            ),
        ];
        for (case, job, request, message) in cases {
            match accept_commit(job, &request, NOW_MS) {
                Err(error) => assert!(error.to_string().contains(message), "{case}: {error}"),
                Ok(decision) => panic!("{case}: accepted as {decision:?}"),
            }
        }
    }

    #[test]
    fn a_retry_of_an_accepted_commit_is_finished_not_accepted_again() {
        let key = format!("snapshots/vm1/{TS}");
        let mut committing = assigned_job("j", JobKind::Backup, "vm1", "w1");
        committing.state = JobState::Committing;
        committing.commit = Some(PendingCommit {
            manifest_key: key.clone(),
            manifest_hex: String::new(),
            token: 1,
        });
        let mut succeeded = assigned_job("j", JobKind::Backup, "vm1", "w1");
        succeeded.state = JobState::Succeeded;
        succeeded.snapshot = Some(format!("vm1@{TS}"));
        for job in [&committing, &succeeded] {
            assert_eq!(
                accept_commit(job, &request(&key, "vm1", TS, vec![]), NOW_MS).ok(),
                Some(CommitDecision::Finish),
                "{:?}",
                job.state
            );
        }
    }
}
