//! The leading replica's state and every decision it makes.
//!
//! The store is the truth; this is a cache of it that only the leader holds, rebuilt
//! from the store when a replica wins the election. Every write is one store
//! transaction that also checks the leader key's revision (so a deposed leader cannot
//! write), and a worker's commit also checks the job's ownership key revision (so a
//! worker whose job moved cannot commit). Progress reports stay in memory: they are
//! frequent, and losing them in a failover costs nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use haven_repo::{Backend, Durability, PutOutcome, SnapshotId};
use tokio::sync::{Mutex, Notify};

use crate::cron::Schedule;
use crate::model::{
    self, Attempt, JobKind, JobParams, JobRecord, JobState, PendingCommit, SnapshotRecord,
    VmRecord, WorkerRecord, now_ms,
};
use crate::placement::{self, PendingJob, WorkerLoad};
use crate::policy::Policy;
use crate::store::{Compare, LeaseId, MetaStore, Op, StoreError};

/// Attempts before a job is given up.
const MAX_ATTEMPTS: u32 = 5;
/// Ops per store transaction (etcd allows 128 by default).
const OPS_PER_TXN: usize = 100;
/// Largest sealed manifest accepted (etcd values are limited to 1.5 MiB).
const MAX_MANIFEST_BYTES: usize = 1 << 20;

/// Why a leader operation failed; mapped to gRPC codes by the service.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// Leadership was lost: the caller should find the new leader.
    #[error("this replica no longer leads")]
    NotLeader,
    /// The store is unreachable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Unknown id.
    #[error("{0}")]
    NotFound(String),
    /// Malformed request.
    #[error("{0}")]
    Invalid(String),
    /// A worker id held by another live process.
    #[error("{0}")]
    AlreadyExists(String),
    /// A stale fencing token or a job in the wrong state.
    #[error("{0}")]
    Fenced(String),
    /// The repository refused the manifest.
    #[error("cannot publish the manifest: {0}")]
    Repository(String),
}

type Result<T, E = LeaderError> = std::result::Result<T, E>;

/// Settings of the leader's decisions.
#[derive(Debug, Clone)]
pub struct LeaderSettings {
    /// Lease of a worker: how long it may go silent before its jobs move.
    pub worker_lease: Duration,
    /// Host limit of manual jobs.
    pub default_max_per_host: u32,
    /// Per-worker limit of manual jobs.
    pub default_max_per_worker: u32,
    /// How long a finished job is kept after it ended.
    pub job_history: Duration,
}

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

/// A job handed to a worker.
#[derive(Debug, Clone)]
pub struct Assignment {
    /// The job.
    pub job: JobRecord,
    /// Its fencing token.
    pub token: i64,
}

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

#[derive(Default)]
struct State {
    workers: HashMap<String, WorkerRecord>,
    vms: BTreeMap<String, VmRecord>,
    policies: BTreeMap<String, Policy>,
    rounds: HashMap<String, u64>,
    jobs: HashMap<String, JobRecord>,
    snapshots: BTreeMap<String, SnapshotRecord>,
    progress: HashMap<String, Progress>,
}

/// The leader: state plus the store it mirrors, fenced by the leader key's revision.
pub struct Leader {
    store: Arc<dyn MetaStore>,
    leader_revision: i64,
    settings: LeaderSettings,
    state: Mutex<State>,
    backends: Mutex<HashMap<String, Backend>>,
    /// Jobs whose manifest is being published now: the tick resumes only the others
    /// (commits interrupted by a crash or an error), never one in flight.
    publishing: std::sync::Mutex<HashSet<String>>,
    /// Woken when jobs change state or progress (watches).
    pub changed: Notify,
    /// Woken when jobs are assigned (workers' long-polls): kept apart from `changed`
    /// so that thousands of progress reports and commits do not wake every poller.
    pub assigned: Notify,
}

impl Leader {
    /// Loads the state from the store after winning the election at `leader_revision`.
    pub async fn load(
        store: Arc<dyn MetaStore>,
        leader_revision: i64,
        settings: LeaderSettings,
    ) -> Result<Self> {
        let mut state = State::default();
        for kv in store.list(&model::prefix("workers/")).await? {
            if let Ok(record) = serde_json::from_slice::<WorkerRecord>(&kv.value) {
                state.workers.insert(record.id.clone(), record);
            }
        }
        for kv in store.list(&model::prefix("vms/")).await? {
            if let Ok(record) = serde_json::from_slice::<VmRecord>(&kv.value) {
                state.vms.insert(record.name.clone(), record);
            }
        }
        for kv in store.list(&model::prefix("policies/")).await? {
            if let Ok(policy) = serde_json::from_slice::<Policy>(&kv.value) {
                state.policies.insert(policy.name.clone(), policy);
            }
        }
        for kv in store.list(&model::prefix("policy-rounds/")).await? {
            let name = kv.key.rsplit('/').next().unwrap_or_default().to_string();
            if let Ok(ms) = serde_json::from_slice::<u64>(&kv.value) {
                state.rounds.insert(name, ms);
            }
        }
        for kv in store.list(&model::prefix("jobs/")).await? {
            match serde_json::from_slice::<JobRecord>(&kv.value) {
                Ok(job) => {
                    state.jobs.insert(job.id.clone(), job);
                }
                Err(error) => tracing::warn!(key = kv.key, %error, "skipping unreadable job"),
            }
        }
        for kv in store.list(&model::prefix("snapshots/")).await? {
            if let Ok(record) = serde_json::from_slice::<SnapshotRecord>(&kv.value) {
                state.snapshots.insert(kv.key.clone(), record);
            }
        }
        Ok(Self {
            store,
            leader_revision,
            settings,
            state: Mutex::new(state),
            backends: Mutex::new(HashMap::new()),
            publishing: std::sync::Mutex::new(HashSet::new()),
            changed: Notify::new(),
            assigned: Notify::new(),
        })
    }

    /// The backend of a repository URL, opened once (an S3 client keeps its
    /// connections).
    async fn backend(&self, url: &str) -> Result<Backend> {
        let mut backends = self.backends.lock().await;
        if let Some(backend) = backends.get(url) {
            return Ok(backend.clone());
        }
        let backend = Backend::from_url(url, false)
            .map_err(|error| LeaderError::Repository(error.to_string()))?;
        backends.insert(url.to_string(), backend.clone());
        Ok(backend)
    }

    /// The store's request counters.
    pub fn store_stats(&self) -> crate::store::StoreStats {
        self.store.stats()
    }

    /// Applies `ops` if this replica still leads and `compares` hold. `Ok(false)`: a
    /// compare other than leadership failed.
    async fn write(&self, mut compares: Vec<Compare>, ops: Vec<Op>) -> Result<bool> {
        compares.push(Compare::ModRevision(
            model::leader_key(),
            self.leader_revision,
        ));
        let outcome = self.store.txn(compares, ops).await?;
        if outcome.succeeded {
            return Ok(true);
        }
        match self.store.get(&model::leader_key()).await? {
            Some(kv) if kv.mod_revision == self.leader_revision => Ok(false),
            _ => Err(LeaderError::NotLeader),
        }
    }

    /// Writes many puts in transactions of bounded size.
    async fn write_batched(&self, ops: Vec<Op>) -> Result<()> {
        let mut ops = ops.into_iter().peekable();
        while ops.peek().is_some() {
            let batch: Vec<Op> = ops.by_ref().take(OPS_PER_TXN).collect();
            if !self.write(vec![], batch).await? {
                return Err(LeaderError::NotLeader);
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------ workers

    /// Registers a worker under a fresh lease, refusing an id another live process holds.
    pub async fn register(
        &self,
        id: &str,
        instance: &str,
        hosts: Vec<(String, Vec<VmRecord>)>,
        max_jobs: u32,
    ) -> Result<WorkerRecord> {
        check_name("worker id", id)?;
        if instance.is_empty() {
            return Err(LeaderError::Invalid("instance_id must not be empty".into()));
        }
        let mut state = self.state.lock().await;
        let key = model::worker_key(id);
        let existing = self.store.get(&key).await?;
        if let Some(kv) = &existing
            && let Ok(record) = serde_json::from_slice::<WorkerRecord>(&kv.value)
            && record.instance != instance
        {
            // The key lives under the holder's lease, so it exists only while that lease
            // does: no keep-alive to ask (which would also extend a dead holder's lease).
            return Err(LeaderError::AlreadyExists(format!(
                "worker id {id:?} is held by another live process (registered {} ms ago)",
                now_ms().saturating_sub(record.registered_unix_ms)
            )));
        }
        let lease: LeaseId = self.store.grant_lease(self.settings.worker_lease).await?;
        let record = WorkerRecord {
            id: id.to_string(),
            instance: instance.to_string(),
            lease,
            hosts: hosts.iter().map(|(host, _)| host.clone()).collect(),
            max_jobs: max_jobs.max(1),
            registered_unix_ms: now_ms(),
        };
        let guard = match &existing {
            Some(kv) => Compare::ModRevision(key.clone(), kv.mod_revision),
            None => Compare::Absent(key.clone()),
        };
        let mut ops = vec![Op::put_leased(key, json(&record), lease)];
        ops.extend(self.inventory_ops(&state, &hosts));
        if !self.write(vec![guard], ops).await? {
            let _ = self.store.revoke(lease).await;
            return Err(LeaderError::AlreadyExists(format!(
                "worker id {id:?} registered concurrently by another process"
            )));
        }
        if let Some(old) = state.workers.insert(id.to_string(), record.clone())
            && old.lease != lease
        {
            let _ = self.store.revoke(old.lease).await;
        }
        for (_, vms) in hosts {
            for vm in vms {
                state.vms.insert(vm.name.clone(), vm);
            }
        }
        Ok(record)
    }

    fn inventory_ops(&self, state: &State, hosts: &[(String, Vec<VmRecord>)]) -> Vec<Op> {
        hosts
            .iter()
            .flat_map(|(_, vms)| vms)
            .filter(|vm| state.vms.get(&vm.name) != Some(vm))
            .map(|vm| Op::put(model::vm_key(&vm.name), json(vm)))
            .collect()
    }

    /// Checks that `(id, instance, lease)` is the registered worker.
    fn check_worker(&self, state: &State, id: &str, instance: &str, lease: LeaseId) -> Result<()> {
        match state.workers.get(id) {
            Some(record) if record.instance == instance && record.lease == lease => Ok(()),
            Some(record) if record.instance != instance => Err(LeaderError::AlreadyExists(
                format!("worker id {id:?} belongs to another process"),
            )),
            _ => Err(LeaderError::NotFound(format!(
                "worker {id:?} has no live lease {lease}: register again"
            ))),
        }
    }

    /// Renews a worker's lease.
    pub async fn heartbeat(&self, id: &str, instance: &str, lease: LeaseId) -> Result<()> {
        {
            let state = self.state.lock().await;
            self.check_worker(&state, id, instance, lease)?;
        }
        match self.store.keep_alive(lease).await {
            Ok(()) => Ok(()),
            Err(StoreError::LeaseNotFound(_)) => {
                self.state.lock().await.workers.remove(id);
                Err(LeaderError::NotFound(format!(
                    "lease {lease} of worker {id:?} expired: register again"
                )))
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Records a worker's inventory.
    pub async fn report_inventory(
        &self,
        id: &str,
        instance: &str,
        lease: LeaseId,
        hosts: Vec<(String, Vec<VmRecord>)>,
    ) -> Result<()> {
        let mut state = self.state.lock().await;
        self.check_worker(&state, id, instance, lease)?;
        let mut record = state
            .workers
            .get(id)
            .cloned()
            .ok_or_else(|| LeaderError::NotFound(format!("worker {id:?} is not registered")))?;
        let mut ops = self.inventory_ops(&state, &hosts);
        let host_names: Vec<String> = hosts.iter().map(|(h, _)| h.clone()).collect();
        if record.hosts != host_names {
            record.hosts = host_names;
            ops.push(Op::put_leased(model::worker_key(id), json(&record), lease));
        }
        if ops.is_empty() {
            return Ok(());
        }
        self.write_batched(ops).await?;
        state.workers.insert(id.to_string(), record);
        for (_, vms) in hosts {
            for vm in vms {
                state.vms.insert(vm.name.clone(), vm);
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------------- policies

    /// Replaces the policy set.
    pub async fn apply_policies(&self, policies: Vec<Policy>) -> Result<Vec<String>> {
        let mut state = self.state.lock().await;
        let mut ops: Vec<Op> = state
            .policies
            .keys()
            .filter(|name| !policies.iter().any(|p| &p.name == *name))
            .map(|name| Op::Delete(model::policy_key(name)))
            .collect();
        let now = now_ms();
        for policy in &policies {
            ops.push(Op::put(model::policy_key(&policy.name), json(policy)));
            if !state.rounds.contains_key(&policy.name) {
                ops.push(Op::put(model::round_key(&policy.name), json(&now)));
            }
        }
        self.write_batched(ops).await?;
        state.policies = policies
            .iter()
            .map(|p| (p.name.clone(), p.clone()))
            .collect();
        for policy in &policies {
            state.rounds.entry(policy.name.clone()).or_insert(now);
        }
        Ok(policies.into_iter().map(|p| p.name).collect())
    }

    // -------------------------------------------------------------------- jobs

    /// Creates a job for `vm` now; the repository comes from the first policy that
    /// selects the VM unless given.
    pub async fn run_job(&self, vm: &str, repository: Option<String>) -> Result<String> {
        let mut state = self.state.lock().await;
        let record = state.vms.get(vm).cloned().ok_or_else(|| {
            LeaderError::NotFound(format!("unknown VM {vm:?}: see `haven vm list`"))
        })?;
        if let Some(job) = state
            .jobs
            .values()
            .find(|j| j.kind == JobKind::Backup && j.vm == vm && j.state.is_active())
        {
            return Err(LeaderError::Fenced(format!(
                "VM {vm:?} already has an active job {}",
                job.id
            )));
        }
        let policy = state
            .policies
            .values()
            .find(|p| p.select.matches(&record.name, &record.host, &record.labels))
            .cloned();
        let repository = match (repository, &policy) {
            (Some(url), _) => url,
            (None, Some(policy)) => policy.repository.clone(),
            (None, None) => {
                return Err(LeaderError::Invalid(format!(
                    "no policy selects VM {vm:?}; give a repository"
                )));
            }
        };
        let job = new_job(&record, policy.as_ref().map(|p| p.name.clone()), repository);
        let id = job.id.clone();
        self.write_batched(vec![Op::put(model::job_key(&id), json(&job))])
            .await?;
        state.jobs.insert(id.clone(), job);
        Ok(id)
    }

    /// Creates a GC job for `repository` now (none if one is already active there).
    pub async fn run_gc(&self, repository: &str, margin_seconds: u64) -> Result<String> {
        let mut state = self.state.lock().await;
        if let Some(job) = state
            .jobs
            .values()
            .find(|j| j.kind == JobKind::Gc && j.repository == repository && j.state.is_active())
        {
            return Err(LeaderError::Fenced(format!(
                "repository {repository} already has an active GC job {}",
                job.id
            )));
        }
        let job = new_repository_job(
            JobKind::Gc,
            "",
            "",
            None,
            repository.to_string(),
            JobParams {
                gc_margin_seconds: margin_seconds,
                ..JobParams::default()
            },
        );
        let id = job.id.clone();
        self.write_batched(vec![Op::put(model::job_key(&id), json(&job))])
            .await?;
        state.jobs.insert(id.clone(), job);
        Ok(id)
    }

    /// Jobs assigned to a worker's current lease, except those it says it runs.
    pub async fn poll(
        &self,
        id: &str,
        instance: &str,
        lease: LeaseId,
        running: &HashSet<String>,
    ) -> Result<Vec<Assignment>> {
        let state = self.state.lock().await;
        self.check_worker(&state, id, instance, lease)?;
        Ok(state
            .jobs
            .values()
            .filter(|job| job.state == JobState::Assigned && !running.contains(&job.id))
            .filter_map(|job| {
                let attempt = job.current()?;
                (attempt.worker == id && attempt.lease == lease).then(|| Assignment {
                    job: job.clone(),
                    token: attempt.token,
                })
            })
            .collect())
    }

    /// Checks that `token` is the live attempt of `job_id` run by `worker`.
    fn check_token<'a>(
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
                "job {job_id} moved: fencing token {token} of {worker} is stale (now {} of {})",
                attempt.token, attempt.worker
            )));
        }
        Ok(job)
    }

    /// Records progress; `Ok(true)` asks the worker to cancel.
    pub async fn progress(
        &self,
        worker: &str,
        job_id: &str,
        token: i64,
        progress: Progress,
    ) -> Result<bool> {
        let mut state = self.state.lock().await;
        let job = Self::check_token(&state, worker, job_id, token)?;
        if job.state != JobState::Assigned {
            return Ok(!matches!(job.state, JobState::Committing));
        }
        state.progress.insert(job_id.to_string(), progress);
        drop(state);
        self.changed.notify_waiters();
        Ok(false)
    }

    /// The fenced commit: accepts the manifest only while `token` owns the job, then
    /// publishes it create-only in the repository.
    pub async fn commit(&self, request: CommitRequest) -> Result<String> {
        let mut state = self.state.lock().await;
        let job =
            Self::check_token(&state, &request.worker, &request.job_id, request.token)?.clone();
        let snapshot = format!("{}@{}", request.snapshot.vm, request.snapshot.timestamp);
        match job.state {
            JobState::Assigned => {}
            JobState::Committing | JobState::Succeeded
                if job.commit.as_ref().map(|c| &c.manifest_key) == Some(&request.manifest_key)
                    || job.snapshot.as_deref() == Some(snapshot.as_str()) =>
            {
                // A retry of a commit that was accepted: finish it.
                drop(state);
                return self.finish_commit(&request.job_id).await;
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
        let catalog_key = model::snapshot_key(&id.vm, &id.timestamp);
        let accepted = self
            .write(
                vec![Compare::ModRevision(
                    model::owner_key(&job.id),
                    request.token,
                )],
                vec![
                    Op::put(model::job_key(&job.id), json(&updated)),
                    Op::put(catalog_key.clone(), json(&record)),
                ],
            )
            .await?;
        if !accepted {
            return Err(LeaderError::Fenced(format!(
                "job {} moved: its ownership no longer has revision {} (the worker's lease expired)",
                job.id, request.token
            )));
        }
        state.jobs.insert(job.id.clone(), updated);
        state.snapshots.insert(catalog_key, record);
        drop(state);
        self.finish_commit(&request.job_id).await
    }

    /// Publishes an accepted manifest (idempotent) and marks the job succeeded.
    async fn finish_commit(&self, job_id: &str) -> Result<String> {
        let job = {
            let state = self.state.lock().await;
            state
                .jobs
                .get(job_id)
                .cloned()
                .ok_or_else(|| LeaderError::NotFound(format!("unknown job {job_id:?}")))?
        };
        let snapshot = job.snapshot.clone().unwrap_or_default();
        if job.state == JobState::Succeeded {
            return Ok(snapshot);
        }
        let Some(commit) = job.commit.clone() else {
            return Err(LeaderError::Fenced(format!(
                "job {job_id} has no accepted commit"
            )));
        };
        let blob = hex::decode(&commit.manifest_hex)
            .map_err(|error| LeaderError::Repository(format!("stored manifest: {error}")))?;
        // Outside the lock: a repository write must not stall every other request.
        // Publishing is idempotent, so a concurrent retry of the same commit is harmless.
        let backend = self.backend(&job.repository).await?;
        self.set_publishing(job_id, true);
        let published = publish(&backend, &commit.manifest_key, blob).await;
        self.set_publishing(job_id, false);
        published?;
        let mut state = self.state.lock().await;
        if state
            .jobs
            .get(job_id)
            .is_some_and(|j| j.state == JobState::Succeeded)
        {
            return Ok(snapshot);
        }
        let mut done = job;
        let now = now_ms();
        done.state = JobState::Succeeded;
        done.finished_unix_ms = now;
        done.commit = None;
        done.end_attempt(now, "succeeded");
        self.write(
            vec![],
            vec![
                Op::put(model::job_key(job_id), json(&done)),
                Op::Delete(model::owner_key(job_id)),
            ],
        )
        .await?;
        state.jobs.insert(job_id.to_string(), done.clone());
        state.progress.remove(job_id);
        if let Err(error) = self.follow_ups(&mut state, &done).await {
            tracing::warn!(job = job_id, %error, "cannot create the prune/replication jobs");
        }
        drop(state);
        self.changed.notify_waiters();
        Ok(snapshot)
    }

    fn set_publishing(&self, job_id: &str, on: bool) {
        if let Ok(mut publishing) = self.publishing.lock() {
            if on {
                publishing.insert(job_id.to_string());
            } else {
                publishing.remove(job_id);
            }
        }
    }

    fn is_publishing(&self, job_id: &str) -> bool {
        self.publishing
            .lock()
            .map(|publishing| publishing.contains(job_id))
            .unwrap_or(false)
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
        let mut state = self.state.lock().await;
        let job = Self::check_token(&state, worker, job_id, token)?.clone();
        if job.state != JobState::Assigned {
            return Err(LeaderError::Fenced(format!(
                "job {job_id} is {:?}, not running",
                job.state
            )));
        }
        let mut updated = job;
        let now = now_ms();
        updated.end_attempt(now, format!("failed: {error}"));
        if retryable && (updated.attempts.len() as u32) < MAX_ATTEMPTS {
            updated.state = JobState::Pending;
        } else {
            updated.state = JobState::Failed;
            updated.finished_unix_ms = now;
            updated.error = Some(error.to_string());
        }
        self.write(
            vec![],
            vec![
                Op::put(model::job_key(job_id), json(&updated)),
                Op::Delete(model::owner_key(job_id)),
            ],
        )
        .await?;
        state.jobs.insert(job_id.to_string(), updated);
        state.progress.remove(job_id);
        drop(state);
        self.changed.notify_waiters();
        Ok(())
    }

    // --------------------------------------------------------------- the tick

    /// One scheduling pass: drop dead workers (their jobs go back to pending), start
    /// due policy rounds, finish interrupted commits, and place pending jobs.
    pub async fn tick(&self) -> Result<TickReport> {
        let mut report = TickReport::default();
        self.reap_workers(&mut report).await?;
        self.start_rounds(&mut report).await?;
        self.resume_commits().await?;
        self.assign(&mut report).await?;
        self.expire_jobs(&mut report).await?;
        if report.assigned > 0 {
            self.assigned.notify_waiters();
        }
        if report.assigned > 0 || report.requeued > 0 {
            self.changed.notify_waiters();
        }
        Ok(report)
    }

    async fn reap_workers(&self, report: &mut TickReport) -> Result<()> {
        let live: HashMap<String, WorkerRecord> = self
            .store
            .list(&model::prefix("workers/"))
            .await?
            .into_iter()
            .filter_map(|kv| serde_json::from_slice::<WorkerRecord>(&kv.value).ok())
            .map(|w| (w.id.clone(), w))
            .collect();
        let mut state = self.state.lock().await;
        state.workers = live;
        let now = now_ms();
        let mut ops = Vec::new();
        let mut requeued = Vec::new();
        for job in state.jobs.values() {
            if job.state != JobState::Assigned {
                continue;
            }
            let Some(attempt) = job.current() else {
                continue;
            };
            let alive = state
                .workers
                .get(&attempt.worker)
                .is_some_and(|w| w.lease == attempt.lease);
            if alive {
                continue;
            }
            let mut moved = job.clone();
            moved.end_attempt(now, "lease lost");
            moved.state = if (moved.attempts.len() as u32) < MAX_ATTEMPTS {
                JobState::Pending
            } else {
                moved.finished_unix_ms = now;
                moved.error = Some("worker lease lost too many times".into());
                JobState::Failed
            };
            ops.push(Op::put(model::job_key(&moved.id), json(&moved)));
            requeued.push(moved);
        }
        if ops.is_empty() {
            return Ok(());
        }
        self.write_batched(ops).await?;
        report.requeued += requeued.len();
        for job in requeued {
            tracing::info!(
                job = job.id,
                vm = job.vm,
                "worker lease lost; job goes back to pending"
            );
            state.progress.remove(&job.id);
            state.jobs.insert(job.id.clone(), job);
        }
        Ok(())
    }

    async fn start_rounds(&self, report: &mut TickReport) -> Result<()> {
        let mut state = self.state.lock().await;
        let now = now_ms();
        let due: Vec<String> = state
            .policies
            .values()
            .filter(|policy| {
                let Ok(schedule) = Schedule::parse(&policy.schedule) else {
                    return false;
                };
                let last = state.rounds.get(&policy.name).copied().unwrap_or(now);
                schedule
                    .next_after(unix_ms_time(last))
                    .is_some_and(|due| due <= unix_ms_time(now))
            })
            .map(|policy| policy.name.clone())
            .collect();
        if !due.is_empty() {
            report.created += self.create_rounds(&mut state, &due, now).await?.len();
        }
        report.created += self.start_gc_rounds(&mut state, now).await?;
        Ok(())
    }

    /// One GC job per repository whose policy's `gc_schedule` is due, unless one is
    /// already active there.
    async fn start_gc_rounds(&self, state: &mut State, now: u64) -> Result<usize> {
        let mut ops = Vec::new();
        let mut created = Vec::new();
        let mut fired = Vec::new();
        for policy in state.policies.values() {
            let Some(schedule) = policy
                .gc_schedule
                .as_deref()
                .and_then(|s| Schedule::parse(s).ok())
            else {
                continue;
            };
            let round = format!("{}#gc", policy.name);
            let last = state.rounds.get(&round).copied().unwrap_or(now);
            if schedule
                .next_after(unix_ms_time(last))
                .is_none_or(|due| due > unix_ms_time(now))
            {
                if !state.rounds.contains_key(&round) {
                    ops.push(Op::put(model::round_key(&round), json(&now)));
                    fired.push(round);
                }
                continue;
            }
            ops.push(Op::put(model::round_key(&round), json(&now)));
            fired.push(round);
            let busy = state.jobs.values().chain(created.iter()).any(|j| {
                j.kind == JobKind::Gc && j.repository == policy.repository && j.state.is_active()
            });
            if !busy {
                let job = new_repository_job(
                    JobKind::Gc,
                    "",
                    "",
                    Some(policy.name.clone()),
                    policy.repository.clone(),
                    JobParams {
                        gc_margin_seconds: policy.gc_margin_seconds,
                        ..JobParams::default()
                    },
                );
                ops.push(Op::put(model::job_key(&job.id), json(&job)));
                created.push(job);
            }
        }
        if ops.is_empty() {
            return Ok(0);
        }
        self.write_batched(ops).await?;
        for round in fired {
            state.rounds.insert(round, now);
        }
        let count = created.len();
        for job in created {
            state.jobs.insert(job.id.clone(), job);
        }
        Ok(count)
    }

    /// The follow-up jobs of a committed backup: prune of the VM by its policy's
    /// retention, and replication of the repository to the policy's secondary.
    async fn follow_ups(&self, state: &mut State, backup: &JobRecord) -> Result<()> {
        let Some(policy) = backup.policy.as_ref().and_then(|p| state.policies.get(p)) else {
            return Ok(());
        };
        let active = |kind: JobKind, vm: &str, to: Option<&String>| {
            state.jobs.values().any(|j| {
                j.kind == kind
                    && j.state.is_active()
                    && j.repository == backup.repository
                    && j.vm == vm
                    && j.params.replicate_to.as_ref() == to
            })
        };
        let mut jobs = Vec::new();
        if policy.retention.to_repo().keeps_something() && !active(JobKind::Prune, &backup.vm, None)
        {
            jobs.push(new_repository_job(
                JobKind::Prune,
                &backup.vm,
                "",
                Some(policy.name.clone()),
                backup.repository.clone(),
                JobParams {
                    retention: Some(policy.retention),
                    ..JobParams::default()
                },
            ));
        }
        if let Some(to) = &policy.replicate_to
            && !active(JobKind::Replicate, "", Some(to))
        {
            jobs.push(new_repository_job(
                JobKind::Replicate,
                "",
                "",
                Some(policy.name.clone()),
                backup.repository.clone(),
                JobParams {
                    replicate_to: Some(to.clone()),
                    ..JobParams::default()
                },
            ));
        }
        if jobs.is_empty() {
            return Ok(());
        }
        let ops = jobs
            .iter()
            .map(|job| Op::put(model::job_key(&job.id), json(job)))
            .collect();
        self.write_batched(ops).await?;
        for job in jobs {
            state.jobs.insert(job.id.clone(), job);
        }
        Ok(())
    }

    /// A prune, GC or replication job that ended well; fenced like a commit.
    pub async fn complete(
        &self,
        worker: &str,
        job_id: &str,
        token: i64,
        summary: &str,
        removed: &[String],
    ) -> Result<()> {
        let mut state = self.state.lock().await;
        let job = Self::check_token(&state, worker, job_id, token)?.clone();
        if job.kind == JobKind::Backup {
            return Err(LeaderError::Invalid(format!(
                "job {job_id} is a backup: it ends with CommitSnapshot"
            )));
        }
        if job.state != JobState::Assigned {
            return Err(LeaderError::Fenced(format!(
                "job {job_id} is {:?}, not running",
                job.state
            )));
        }
        let mut done = job;
        let now = now_ms();
        done.state = JobState::Succeeded;
        done.finished_unix_ms = now;
        done.summary = Some(summary.chars().take(1000).collect());
        done.end_attempt(now, "succeeded");
        // A prune's removed snapshots leave the catalog with the job's completion; only
        // the job's own VM can be named.
        let mut dropped = Vec::new();
        for snapshot in removed {
            let (vm, timestamp) = snapshot
                .split_once('@')
                .ok_or_else(|| LeaderError::Invalid(format!("bad snapshot name {snapshot:?}")))?;
            if done.kind != JobKind::Prune || vm != done.vm {
                return Err(LeaderError::Invalid(format!(
                    "job {job_id} cannot remove {snapshot} from the catalog"
                )));
            }
            dropped.push(model::snapshot_key(vm, timestamp));
        }
        let mut ops = vec![
            Op::put(model::job_key(job_id), json(&done)),
            Op::Delete(model::owner_key(job_id)),
        ];
        ops.extend(dropped.iter().cloned().map(Op::Delete));
        let accepted = self
            .write(
                vec![Compare::ModRevision(model::owner_key(job_id), token)],
                ops,
            )
            .await?;
        if !accepted {
            return Err(LeaderError::Fenced(format!(
                "job {job_id} moved: its ownership no longer has revision {token}"
            )));
        }
        state.jobs.insert(job_id.to_string(), done);
        state.progress.remove(job_id);
        for key in dropped {
            state.snapshots.remove(&key);
        }
        drop(state);
        self.changed.notify_waiters();
        Ok(())
    }

    /// What running backups into `repository` need a collection to keep: the newest
    /// catalogued snapshot of each such VM (the base its backup builds on) and the
    /// start of the oldest of them.
    pub async fn pins(&self, repository: &str) -> (Vec<String>, u64, Vec<String>) {
        let state = self.state.lock().await;
        let mut bases = Vec::new();
        let mut oldest = 0u64;
        let mut holders = Vec::new();
        for job in state.jobs.values().filter(|j| {
            j.kind == JobKind::Backup && j.repository == repository && j.state.is_active()
        }) {
            holders.push(format!("job {} ({})", job.id, job.vm));
            let started = job
                .attempts
                .first()
                .map(|a| a.assigned_unix_ms)
                .unwrap_or(job.created_unix_ms);
            oldest = if oldest == 0 {
                started
            } else {
                oldest.min(started)
            };
            if let Some(base) = state
                .snapshots
                .values()
                .filter(|s| s.vm == job.vm && s.repository == repository)
                .map(|s| &s.timestamp)
                .max()
            {
                bases.push(format!("{}@{base}", job.vm));
            }
        }
        (bases, oldest, holders)
    }

    /// Creates a job for every VM the policies select that has no active job, and
    /// records the round; returns the new job ids.
    async fn create_rounds(
        &self,
        state: &mut State,
        policies: &[String],
        now: u64,
    ) -> Result<Vec<String>> {
        let mut busy: HashSet<String> = state
            .jobs
            .values()
            .filter(|j| j.kind == JobKind::Backup && j.state.is_active())
            .map(|j| j.vm.clone())
            .collect();
        let mut ops = Vec::new();
        let mut created = Vec::new();
        for name in policies {
            let Some(policy) = state.policies.get(name) else {
                continue;
            };
            ops.push(Op::put(model::round_key(name), json(&now)));
            for vm in state.vms.values() {
                if policy.select.matches(&vm.name, &vm.host, &vm.labels)
                    && busy.insert(vm.name.clone())
                {
                    let job = new_job(vm, Some(name.clone()), policy.repository.clone());
                    ops.push(Op::put(model::job_key(&job.id), json(&job)));
                    created.push(job);
                }
            }
        }
        self.write_batched(ops).await?;
        for name in policies {
            state.rounds.insert(name.clone(), now);
        }
        let ids = created.iter().map(|job| job.id.clone()).collect();
        for job in created {
            state.jobs.insert(job.id.clone(), job);
        }
        Ok(ids)
    }

    /// Starts a round of `policy` now.
    pub async fn run_policy(&self, policy: &str) -> Result<Vec<String>> {
        let mut state = self.state.lock().await;
        if !state.policies.contains_key(policy) {
            return Err(LeaderError::NotFound(format!("unknown policy {policy:?}")));
        }
        self.create_rounds(&mut state, &[policy.to_string()], now_ms())
            .await
    }

    async fn resume_commits(&self) -> Result<()> {
        let stuck: Vec<String> = {
            let state = self.state.lock().await;
            state
                .jobs
                .values()
                .filter(|j| j.state == JobState::Committing && !self.is_publishing(&j.id))
                .map(|j| j.id.clone())
                .collect()
        };
        for job in stuck {
            if let Err(error) = self.finish_commit(&job).await {
                tracing::warn!(job, %error, "cannot finish an accepted commit yet");
            }
        }
        Ok(())
    }

    async fn assign(&self, report: &mut TickReport) -> Result<()> {
        let mut state = self.state.lock().await;
        let mut pending: Vec<&JobRecord> = state
            .jobs
            .values()
            .filter(|j| j.state == JobState::Pending)
            .collect();
        if pending.is_empty() || state.workers.is_empty() {
            return Ok(());
        }
        pending.sort_by(|a, b| (a.created_unix_ms, &a.id).cmp(&(b.created_unix_ms, &b.id)));
        let limits = |job: &JobRecord| {
            job.policy
                .as_ref()
                .and_then(|p| state.policies.get(p))
                .map(|p| (p.max_per_host, p.max_per_worker))
                .unwrap_or((
                    self.settings.default_max_per_host,
                    self.settings.default_max_per_worker,
                ))
        };
        let pending_jobs: Vec<PendingJob> = pending
            .iter()
            .map(|job| {
                let (max_per_host, max_per_worker) = limits(job);
                PendingJob {
                    id: job.id.clone(),
                    host: job.host.clone(),
                    max_per_host,
                    max_per_worker,
                    policy: job.policy.clone().unwrap_or_default(),
                }
            })
            .collect();
        let mut host_running: HashMap<String, u32> = HashMap::new();
        let mut worker_running: HashMap<String, (u32, HashMap<String, u32>)> = HashMap::new();
        for job in state
            .jobs
            .values()
            .filter(|j| matches!(j.state, JobState::Assigned | JobState::Committing))
        {
            *host_running.entry(job.host.clone()).or_default() += 1;
            if let Some(attempt) = job.current() {
                let entry = worker_running.entry(attempt.worker.clone()).or_default();
                entry.0 += 1;
                *entry
                    .1
                    .entry(job.policy.clone().unwrap_or_default())
                    .or_default() += 1;
            }
        }
        let workers: Vec<WorkerLoad> = state
            .workers
            .values()
            .map(|w| {
                let (running, by_policy) = worker_running.remove(&w.id).unwrap_or_default();
                WorkerLoad {
                    id: w.id.clone(),
                    hosts: w.hosts.clone(),
                    max_jobs: w.max_jobs,
                    running,
                    running_by_policy: by_policy,
                }
            })
            .collect();
        let placed = placement::place(&pending_jobs, &workers, &host_running);
        // One transaction per worker batch: the ownership keys go under the worker's
        // lease, each guarded by being absent.
        let mut by_worker: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (job, worker) in placed {
            by_worker.entry(worker).or_default().push(job);
        }
        let now = now_ms();
        for (worker, jobs) in by_worker {
            let Some(record) = state.workers.get(&worker).cloned() else {
                continue;
            };
            for chunk in jobs.chunks(OPS_PER_TXN / 2) {
                let mut compares = Vec::new();
                let mut ops = Vec::new();
                for id in chunk {
                    compares.push(Compare::Absent(model::owner_key(id)));
                    ops.push(Op::put_leased(
                        model::owner_key(id),
                        worker.clone(),
                        record.lease,
                    ));
                }
                // The token is the transaction's revision, known only afterwards: write
                // the ownership first, then the job records that name it.
                let outcome = {
                    let mut all = compares;
                    all.push(Compare::ModRevision(
                        model::leader_key(),
                        self.leader_revision,
                    ));
                    self.store.txn(all, ops).await?
                };
                if !outcome.succeeded {
                    match self.store.get(&model::leader_key()).await? {
                        Some(kv) if kv.mod_revision == self.leader_revision => {
                            let cleared = self.clear_stale_owners(&state, chunk).await?;
                            tracing::warn!(
                                worker,
                                cleared,
                                "ownership keys of pending jobs existed; cleared, retrying next tick"
                            );
                            continue;
                        }
                        _ => return Err(LeaderError::NotLeader),
                    }
                }
                let mut records = Vec::new();
                for id in chunk {
                    let Some(job) = state.jobs.get(id) else {
                        continue;
                    };
                    let mut job = job.clone();
                    job.state = JobState::Assigned;
                    job.attempts.push(Attempt {
                        number: job.attempts.len() as u32 + 1,
                        worker: worker.clone(),
                        lease: record.lease,
                        token: outcome.revision,
                        assigned_unix_ms: now,
                        ended_unix_ms: 0,
                        outcome: String::new(),
                    });
                    records.push(job);
                }
                let ops = records
                    .iter()
                    .map(|job| Op::put(model::job_key(&job.id), json(job)))
                    .collect();
                self.write_batched(ops).await?;
                report.assigned += records.len();
                for job in records {
                    state.jobs.insert(job.id.clone(), job);
                }
            }
        }
        Ok(())
    }

    /// Forgets jobs that ended longer than the history period ago, a bounded batch per
    /// pass so a long backlog never makes one pass slow.
    async fn expire_jobs(&self, report: &mut TickReport) -> Result<()> {
        let mut state = self.state.lock().await;
        let history = u64::try_from(self.settings.job_history.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now_ms().saturating_sub(history);
        let expired: Vec<String> = state
            .jobs
            .values()
            .filter(|job| {
                !job.state.is_active() && job.finished_unix_ms > 0 && job.finished_unix_ms < cutoff
            })
            .map(|job| job.id.clone())
            .take(OPS_PER_TXN)
            .collect();
        if expired.is_empty() {
            return Ok(());
        }
        let ops = expired
            .iter()
            .map(|id| Op::Delete(model::job_key(id)))
            .collect();
        self.write_batched(ops).await?;
        for id in &expired {
            state.jobs.remove(id);
            state.progress.remove(id);
        }
        report.expired += expired.len();
        Ok(())
    }

    /// Deletes the ownership keys of jobs that are still pending.
    ///
    /// Assignment takes two writes (the ownership keys, then the job records that name
    /// the token), and the store can fail between them, or fail to answer a write it
    /// applied. A pending job's ownership key then lives on under the worker's live
    /// lease and would block every later assignment of the job. No worker was ever
    /// given that token (polls serve only assigned jobs), so deleting the key, guarded
    /// by its revision, loses nothing.
    async fn clear_stale_owners(&self, state: &State, ids: &[String]) -> Result<usize> {
        let mut cleared = 0;
        for id in ids {
            if state.jobs.get(id).map(|job| job.state) != Some(JobState::Pending) {
                continue;
            }
            let key = model::owner_key(id);
            let Some(owner) = self.store.get(&key).await? else {
                continue;
            };
            if self
                .write(
                    vec![Compare::ModRevision(key.clone(), owner.mod_revision)],
                    vec![Op::Delete(key)],
                )
                .await?
            {
                cleared += 1;
            }
        }
        Ok(cleared)
    }

    // ----------------------------------------------------------------- queries

    /// Every known VM with the workers that reach its host.
    pub async fn vms(&self) -> Vec<(VmRecord, Vec<String>)> {
        let state = self.state.lock().await;
        state
            .vms
            .values()
            .map(|vm| {
                let mut workers: Vec<String> = state
                    .workers
                    .values()
                    .filter(|w| w.hosts.contains(&vm.host))
                    .map(|w| w.id.clone())
                    .collect();
                workers.sort();
                (vm.clone(), workers)
            })
            .collect()
    }

    /// Live workers with their running job counts.
    pub async fn workers(&self) -> Vec<(WorkerRecord, u32)> {
        let state = self.state.lock().await;
        let mut list: Vec<(WorkerRecord, u32)> = state
            .workers
            .values()
            .map(|w| {
                let running = state
                    .jobs
                    .values()
                    .filter(|j| j.state == JobState::Assigned)
                    .filter(|j| j.current().is_some_and(|a| a.worker == w.id))
                    .count() as u32;
                (w.clone(), running)
            })
            .collect();
        list.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        list
    }

    /// Jobs (newest first), optionally of one VM, with live progress.
    pub async fn jobs(&self, vm: Option<&str>, limit: usize) -> Vec<(JobRecord, Progress)> {
        let state = self.state.lock().await;
        let mut list: Vec<(JobRecord, Progress)> = state
            .jobs
            .values()
            .filter(|j| vm.is_none_or(|vm| j.vm == vm))
            .map(|j| {
                (
                    j.clone(),
                    state.progress.get(&j.id).copied().unwrap_or_default(),
                )
            })
            .collect();
        list.sort_by(|a, b| (b.0.created_unix_ms, &b.0.id).cmp(&(a.0.created_unix_ms, &a.0.id)));
        if limit > 0 {
            list.truncate(limit);
        }
        list
    }

    /// One job with its live progress.
    pub async fn job(&self, id: &str) -> Option<(JobRecord, Progress)> {
        let state = self.state.lock().await;
        let job = state.jobs.get(id)?.clone();
        let progress = state.progress.get(id).copied().unwrap_or_default();
        Some((job, progress))
    }

    /// The snapshot catalog, optionally of one VM.
    pub async fn snapshots(&self, vm: Option<&str>) -> Vec<SnapshotRecord> {
        let state = self.state.lock().await;
        state
            .snapshots
            .values()
            .filter(|s| vm.is_none_or(|vm| s.vm == vm))
            .cloned()
            .collect()
    }
}

/// What one tick did.
#[derive(Debug, Clone, Copy, Default)]
pub struct TickReport {
    /// Jobs created by due policy rounds.
    pub created: usize,
    /// Jobs given to workers.
    pub assigned: usize,
    /// Jobs whose worker lost its lease.
    pub requeued: usize,
    /// Finished jobs forgotten after the history period.
    pub expired: usize,
}

/// A Unix time in milliseconds as a UTC date-time.
fn unix_ms_time(ms: u64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn new_job(vm: &VmRecord, policy: Option<String>, repository: String) -> JobRecord {
    new_repository_job(
        JobKind::Backup,
        &vm.name,
        &vm.host,
        policy,
        repository,
        JobParams::default(),
    )
}

/// A job of any kind; `host` empty lets any worker run it.
fn new_repository_job(
    kind: JobKind,
    vm: &str,
    host: &str,
    policy: Option<String>,
    repository: String,
    params: JobParams,
) -> JobRecord {
    JobRecord {
        id: model::new_id("job"),
        kind,
        params,
        summary: None,
        vm: vm.to_string(),
        host: host.to_string(),
        policy,
        repository,
        state: JobState::Pending,
        attempts: Vec::new(),
        created_unix_ms: now_ms(),
        finished_unix_ms: 0,
        snapshot: None,
        error: None,
        bytes_uploaded: 0,
        commit: None,
    }
}

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Records are plain data (strings, numbers, maps with string keys): serializing
    // them cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Checks an id or name from a request.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 128
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(LeaderError::Invalid(format!(
            "{what} {name:?} must be 1-128 letters, digits, '-', '_' or '.'"
        )));
    }
    Ok(())
}

/// Writes a sealed manifest create-only; an identical existing one is success.
async fn publish(backend: &Backend, key: &str, blob: Vec<u8>) -> Result<()> {
    match backend
        .put_if_absent(key, blob.clone().into(), Durability::Immediate)
        .await
    {
        Ok(PutOutcome::Created) => Ok(()),
        Ok(PutOutcome::AlreadyExisted) => {
            let existing = backend
                .get(key, blob.len() as u64 + 1)
                .await
                .map_err(|error| LeaderError::Repository(error.to_string()))?;
            if existing.as_ref() == blob.as_slice() {
                Ok(())
            } else {
                Err(LeaderError::Repository(format!(
                    "{key} exists with other content"
                )))
            }
        }
        Err(error) => Err(LeaderError::Repository(error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::EmbeddedStore;

    /// A leader over an embedded store, leading at the revision of its leader key.
    async fn leader(dir: &std::path::Path) -> (Arc<dyn MetaStore>, Leader) {
        let store: Arc<dyn MetaStore> = EmbeddedStore::open(&dir.join("state.redb")).await.unwrap();
        let won = store
            .txn(
                vec![Compare::Absent(model::leader_key())],
                vec![Op::put(model::leader_key(), "http://127.0.0.1:1")],
            )
            .await
            .unwrap();
        let settings = LeaderSettings {
            worker_lease: Duration::from_secs(30),
            default_max_per_host: 2,
            default_max_per_worker: 2,
            job_history: Duration::from_secs(3600),
        };
        let leader = Leader::load(store.clone(), won.revision, settings)
            .await
            .unwrap();
        (store, leader)
    }

    fn vm(name: &str) -> VmRecord {
        VmRecord {
            name: name.into(),
            host: "h1".into(),
            disks: vec![("vda".into(), 1 << 20)],
            labels: BTreeMap::new(),
        }
    }

    #[tokio::test]
    async fn finished_jobs_are_forgotten_after_the_history_period() {
        let dir = tempfile::tempdir().unwrap();
        let (store, leader) = leader(dir.path()).await;
        leader
            .register(
                "w1",
                "instance-1",
                vec![("h1".into(), vec![vm("old"), vm("recent"), vm("running")])],
                2,
            )
            .await
            .unwrap();
        let mut ids = Vec::new();
        for name in ["old", "recent", "running"] {
            ids.push(
                leader
                    .run_job(name, Some("file:///tmp/r".into()))
                    .await
                    .unwrap(),
            );
        }
        let now = now_ms();
        {
            let mut state = leader.state.lock().await;
            for (id, ended) in [(&ids[0], now - 2 * 3600 * 1000), (&ids[1], now - 1000)] {
                let job = state.jobs.get_mut(id).unwrap();
                job.state = JobState::Succeeded;
                job.finished_unix_ms = ended;
            }
        }
        let report = leader.tick().await.unwrap();
        assert_eq!(report.expired, 1);
        assert!(store.get(&model::job_key(&ids[0])).await.unwrap().is_none());
        assert!(leader.job(&ids[0]).await.is_none());
        for id in &ids[1..] {
            assert!(leader.job(id).await.is_some(), "{id} must stay");
            assert!(store.get(&model::job_key(id)).await.unwrap().is_some());
        }
    }

    #[tokio::test]
    async fn a_pending_jobs_leftover_ownership_key_does_not_block_it_forever() {
        let dir = tempfile::tempdir().unwrap();
        let (store, leader) = leader(dir.path()).await;
        let worker = leader
            .register("w1", "instance-1", vec![("h1".into(), vec![vm("vm1")])], 2)
            .await
            .unwrap();
        let job = leader
            .run_job("vm1", Some("file:///tmp/r".into()))
            .await
            .unwrap();
        // The first of assignment's two writes went through, the second did not.
        store
            .txn(
                vec![],
                vec![Op::put_leased(
                    model::owner_key(&job),
                    "w1".to_string(),
                    worker.lease,
                )],
            )
            .await
            .unwrap();

        let blocked = leader.tick().await.unwrap();
        assert_eq!(blocked.assigned, 0, "the stale key blocks this pass");
        assert!(store.get(&model::owner_key(&job)).await.unwrap().is_none());

        let retried = leader.tick().await.unwrap();
        assert_eq!(retried.assigned, 1);
        let owner = store.get(&model::owner_key(&job)).await.unwrap().unwrap();
        let polled = leader
            .poll("w1", "instance-1", worker.lease, &HashSet::new())
            .await
            .unwrap();
        assert_eq!(polled.len(), 1);
        assert_eq!(polled[0].token, owner.mod_revision);
    }
}
