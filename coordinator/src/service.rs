//! The gRPC face of a replica: request validation, conversion between protobuf
//! messages and stored records, and error codes. Decisions live in [`Leader`].
//!
//! One file because it is one `impl` per tonic service trait: tonic requires every RPC
//! of a service in a single `impl` block, and the conversions beside them are the ones
//! those RPCs use.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use haven_proto::LEADER_METADATA;
use haven_proto::v1::{
    self, admin_service_server::AdminService, worker_service_server::WorkerService,
};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::auth;
use crate::auth::AuditDetail;
use crate::auth::audit::AuditLog;
use crate::auth::tokens::{TokenError, Tokens};
use crate::leader::{CommitRequest, Leader, LeaderError, Progress, check_name};
use crate::model::{JobKind, JobRecord, JobState, SnapshotRecord, VmRecord};
use crate::policy::{RepositoryAllowlist, parse_policies};
use crate::replica::{Replica, Role};

/// Longest long-poll a worker may ask for.
const MAX_POLL_WAIT: Duration = Duration::from_secs(30);
/// `WatchJob` streams one caller may hold open at once: each costs a task on the
/// leader until its job ends.
const MAX_WATCHES_PER_CALLER: usize = 32;

/// Both gRPC services of one replica.
#[derive(Clone)]
pub struct CoordinatorService {
    replica: Arc<Replica>,
    allowlist: Arc<RepositoryAllowlist>,
    tokens: Arc<Tokens>,
    audit: Arc<AuditLog>,
    watches: Arc<std::sync::Mutex<HashMap<String, usize>>>,
}

/// One open `WatchJob` stream of a caller; gives its slot back when dropped.
struct WatchSlot {
    watches: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    caller: String,
}

impl WatchSlot {
    /// A slot for `caller`, or `RESOURCE_EXHAUSTED` at the limit.
    fn take(
        watches: &Arc<std::sync::Mutex<HashMap<String, usize>>>,
        caller: String,
    ) -> Result<Self, Status> {
        let mut open = watches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = open.entry(caller.clone()).or_default();
        if *count >= MAX_WATCHES_PER_CALLER {
            return Err(Status::resource_exhausted(format!(
                "{caller} already watches {MAX_WATCHES_PER_CALLER} jobs"
            )));
        }
        *count += 1;
        Ok(Self {
            watches: watches.clone(),
            caller,
        })
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut open = self
            .watches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.caller) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.caller);
            }
        }
    }
}

impl CoordinatorService {
    /// Serves `replica`; policies and jobs may name only `allowlist`'s repositories.
    pub fn new(
        replica: Arc<Replica>,
        allowlist: RepositoryAllowlist,
        tokens: Arc<Tokens>,
        audit: Arc<AuditLog>,
    ) -> Self {
        Self {
            replica,
            allowlist: Arc::new(allowlist),
            tokens,
            audit,
            watches: Arc::default(),
        }
    }

    /// The leader state, or `UNAVAILABLE` naming the leader.
    async fn leader(&self) -> Result<Arc<Leader>, Status> {
        match self.replica.role().await {
            Role::Leader(leader) => Ok(leader),
            Role::Follower(url) => {
                let mut status = Status::unavailable(match &url {
                    Some(url) => format!("not the leader; the leader is {url}"),
                    None => "not the leader; no leader elected yet".to_string(),
                });
                if let Some(url) = url
                    && let Ok(value) = url.parse()
                {
                    status.metadata_mut().insert(LEADER_METADATA, value);
                }
                Err(status)
            }
        }
    }
}

/// A reply carrying what the call did for its audit record.
fn audited<T>(reply: T, detail: String) -> Response<T> {
    let mut response = Response::new(reply);
    response.extensions_mut().insert(AuditDetail(detail));
    response
}

fn token_status(error: TokenError) -> Status {
    match error {
        TokenError::Store(error) => Status::unavailable(error.to_string()),
        TokenError::Exists(_) => Status::already_exists(error.to_string()),
        TokenError::Invalid(_) => Status::invalid_argument(error.to_string()),
        TokenError::Unreadable(_) => Status::internal(error.to_string()),
    }
}

/// The gRPC status of a leader error; also the result the console audits for an action.
pub(crate) fn status(error: LeaderError) -> Status {
    match error {
        LeaderError::NotLeader => Status::unavailable("leadership lost; retry on the new leader"),
        LeaderError::Store(error) => Status::unavailable(error.to_string()),
        LeaderError::NotFound(m) => Status::not_found(m),
        LeaderError::Invalid(m) => Status::invalid_argument(m),
        LeaderError::AlreadyExists(m) => Status::already_exists(m),
        LeaderError::Fenced(m) => Status::failed_precondition(m),
        error @ (LeaderError::Repository(_)
        | LeaderError::ManifestConflict { .. }
        | LeaderError::StoredManifest(_)
        | LeaderError::Encode(_)) => Status::internal(error.to_string()),
    }
}

/// The worker a request names, which must be the caller itself.
fn identity(
    caller: &auth::Caller,
    worker: Option<v1::WorkerIdentity>,
) -> Result<v1::WorkerIdentity, Status> {
    let worker = worker.ok_or_else(|| Status::invalid_argument("missing worker identity"))?;
    check_name("worker id", &worker.worker_id).map_err(status)?;
    auth::require_worker(caller, &worker.worker_id)?;
    Ok(worker)
}

/// Validates reported hosts into inventory records.
fn inventory(hosts: Vec<v1::Host>) -> Result<Vec<(String, Vec<VmRecord>)>, Status> {
    let mut seen = HashSet::new();
    hosts
        .into_iter()
        .map(|host| {
            check_name("host name", &host.name).map_err(status)?;
            let vms = host
                .vms
                .into_iter()
                .map(|vm| {
                    check_name("VM name", &vm.name).map_err(status)?;
                    if !seen.insert(vm.name.clone()) {
                        return Err(Status::invalid_argument(format!(
                            "VM {:?} reported twice",
                            vm.name
                        )));
                    }
                    Ok(VmRecord {
                        name: vm.name,
                        host: host.name.clone(),
                        disks: vm
                            .disks
                            .into_iter()
                            .map(|d| (d.name, d.size_bytes))
                            .collect(),
                        labels: vm.labels.into_iter().collect::<BTreeMap<_, _>>(),
                    })
                })
                .collect::<Result<Vec<_>, Status>>()?;
            Ok((host.name, vms))
        })
        .collect()
}

fn job_kind(kind: JobKind) -> v1::JobKind {
    match kind {
        JobKind::Backup => v1::JobKind::Backup,
        JobKind::Prune => v1::JobKind::Prune,
        JobKind::Gc => v1::JobKind::Gc,
        JobKind::Replicate => v1::JobKind::Replicate,
        JobKind::BootTest => v1::JobKind::BootTest,
    }
}

fn job_state(state: JobState) -> v1::JobState {
    match state {
        JobState::Pending => v1::JobState::Pending,
        JobState::Assigned => v1::JobState::Assigned,
        JobState::Committing => v1::JobState::Committing,
        JobState::Succeeded => v1::JobState::Succeeded,
        JobState::Failed => v1::JobState::Failed,
    }
}

/// A job record and its live progress as the API shows them.
pub fn job_status(job: &JobRecord, progress: Progress) -> v1::JobStatus {
    let phase = match job.state {
        JobState::Succeeded | JobState::Failed => v1::JobPhase::Done as i32,
        JobState::Committing => v1::JobPhase::Committing as i32,
        _ => progress.phase,
    };
    v1::JobStatus {
        job_id: job.id.clone(),
        vm: job.vm.clone(),
        host: job.host.clone(),
        policy: job.policy.clone().unwrap_or_default(),
        repository: job.repository.clone(),
        state: job_state(job.state) as i32,
        phase,
        worker: job.current().map(|a| a.worker.clone()).unwrap_or_default(),
        bytes_done: progress.bytes_done,
        bytes_total: progress.bytes_total,
        bytes_per_second: progress.bytes_per_second,
        bytes_uploaded: job.bytes_uploaded.max(progress.bytes_uploaded),
        created_unix_ms: job.created_unix_ms,
        finished_unix_ms: job.finished_unix_ms,
        snapshot: job.snapshot.clone().unwrap_or_default(),
        error: job.error.clone().unwrap_or_default(),
        attempts: job
            .attempts
            .iter()
            .map(|a| v1::JobAttempt {
                number: a.number,
                worker: a.worker.clone(),
                assigned_unix_ms: a.assigned_unix_ms,
                ended_unix_ms: a.ended_unix_ms,
                outcome: a.outcome.clone(),
            })
            .collect(),
        kind: job_kind(job.kind) as i32,
        summary: job.summary.clone().unwrap_or_default(),
        boot_verdict: match job.boot_passed {
            None => v1::BootVerdict::Unspecified,
            Some(true) => v1::BootVerdict::Passed,
            Some(false) => v1::BootVerdict::Failed,
        } as i32,
    }
}

fn snapshot_info(record: &SnapshotRecord) -> v1::SnapshotInfo {
    v1::SnapshotInfo {
        vm: record.vm.clone(),
        timestamp: record.timestamp.clone(),
        repository: record.repository.clone(),
        disks: record
            .disks
            .iter()
            .map(|(name, size)| v1::Disk {
                name: name.clone(),
                size_bytes: *size,
            })
            .collect(),
        bytes_uploaded: record.bytes_uploaded,
        job_id: record.job_id.clone(),
        bytes_read: record.bytes_read,
        bytes_new: record.bytes_new,
    }
}

/// A catalog entry from what `haven catalog rebuild` read in a manifest.
fn snapshot_record(info: v1::SnapshotInfo) -> SnapshotRecord {
    SnapshotRecord {
        vm: info.vm,
        timestamp: info.timestamp,
        repository: info.repository,
        disks: info
            .disks
            .into_iter()
            .map(|disk| (disk.name, disk.size_bytes))
            .collect(),
        bytes_uploaded: info.bytes_uploaded,
        job_id: info.job_id,
        bytes_read: info.bytes_read,
        bytes_new: info.bytes_new,
        committed_unix_ms: 0,
    }
}

#[tonic::async_trait]
impl WorkerService for CoordinatorService {
    async fn register(
        &self,
        request: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterResponse>, Status> {
        let caller = auth::caller(&request)?.clone();
        let leader = self.leader().await?;
        let request = request.into_inner();
        auth::require_worker(&caller, &request.worker_id)?;
        let hosts = inventory(request.hosts)?;
        let record = leader
            .register(
                &request.worker_id,
                &request.instance_id,
                hosts,
                request.max_jobs,
                request.max_boot_tests,
            )
            .await
            .map_err(status)?;
        let ttl = leader_settings_ttl(&self.replica);
        Ok(Response::new(v1::RegisterResponse {
            lease_id: record.lease,
            lease_ttl_seconds: u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX),
            heartbeat_interval_ms: u32::try_from((ttl / 4).as_millis())
                .unwrap_or(1000)
                .max(100),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let leader = self.leader().await?;
        let caller = auth::caller(&request)?.clone();
        let worker = identity(&caller, request.into_inner().worker)?;
        leader
            .heartbeat(&worker.worker_id, &worker.instance_id, worker.lease_id)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::HeartbeatResponse {}))
    }

    async fn report_inventory(
        &self,
        request: Request<v1::ReportInventoryRequest>,
    ) -> Result<Response<v1::ReportInventoryResponse>, Status> {
        let caller = auth::caller(&request)?.clone();
        let leader = self.leader().await?;
        let request = request.into_inner();
        let worker = identity(&caller, request.worker)?;
        let hosts = inventory(request.hosts)?;
        leader
            .report_inventory(
                &worker.worker_id,
                &worker.instance_id,
                worker.lease_id,
                hosts,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(v1::ReportInventoryResponse {}))
    }

    async fn poll_jobs(
        &self,
        request: Request<v1::PollJobsRequest>,
    ) -> Result<Response<v1::PollJobsResponse>, Status> {
        let caller = auth::caller(&request)?.clone();
        let leader = self.leader().await?;
        let request = request.into_inner();
        let worker = identity(&caller, request.worker)?;
        let wait = Duration::from_millis(u64::from(request.wait_ms)).min(MAX_POLL_WAIT);
        let deadline = tokio::time::Instant::now() + wait;
        let running: HashSet<String> = request.running_job_ids.into_iter().collect();
        loop {
            let notified = leader.assigned.notified();
            let jobs = leader
                .poll(
                    &worker.worker_id,
                    &worker.instance_id,
                    worker.lease_id,
                    &running,
                )
                .await
                .map_err(status)?;
            if !jobs.is_empty() || tokio::time::Instant::now() >= deadline {
                let jobs = jobs
                    .into_iter()
                    .map(|a| {
                        let retention = a.job.params.retention.map(|r| v1::Retention {
                            keep_last: r.keep_last,
                            keep_hourly: r.keep_hourly,
                            keep_daily: r.keep_daily,
                            keep_weekly: r.keep_weekly,
                            keep_monthly: r.keep_monthly,
                            keep_yearly: r.keep_yearly,
                        });
                        let boot = a.job.params.boot.as_ref();
                        v1::JobAssignment {
                            job_id: a.job.id.clone(),
                            vm: a.job.vm.clone(),
                            host: a.job.host.clone(),
                            repository: a.job.repository.clone(),
                            fencing_token: a.token,
                            attempt: a.job.attempts.len() as u32,
                            kind: job_kind(a.job.kind) as i32,
                            retention,
                            replicate_to: a.job.params.replicate_to.clone().unwrap_or_default(),
                            gc_margin_seconds: a.job.params.gc_margin_seconds,
                            replica_of: a.job.params.replica_of.clone().unwrap_or_default(),
                            boot_snapshot: boot.map(|b| b.snapshot.clone()).unwrap_or_default(),
                            boot_check: boot.map(|b| b.check.clone()).unwrap_or_default(),
                            boot_timeout_seconds: boot.map_or(0, |b| b.timeout_seconds),
                            traceparent: a
                                .job
                                .current()
                                .map(|attempt| attempt.traceparent.clone())
                                .unwrap_or_default(),
                        }
                    })
                    .collect();
                return Ok(Response::new(v1::PollJobsResponse { jobs }));
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
            // Leadership may have moved while waiting.
            if !matches!(self.replica.role().await, Role::Leader(_)) {
                return Err(self
                    .leader()
                    .await
                    .err()
                    .unwrap_or_else(|| Status::unavailable("leadership moved")));
            }
        }
    }

    async fn report_progress(
        &self,
        request: Request<v1::ReportProgressRequest>,
    ) -> Result<Response<v1::ReportProgressResponse>, Status> {
        let caller = auth::caller(&request)?.clone();
        let leader = self.leader().await?;
        let request = request.into_inner();
        let worker = identity(&caller, request.worker)?;
        let cancel = leader
            .progress(
                &worker.worker_id,
                &request.job_id,
                request.fencing_token,
                Progress {
                    phase: request.phase,
                    bytes_done: request.bytes_done,
                    bytes_total: request.bytes_total,
                    bytes_per_second: request.bytes_per_second,
                    bytes_uploaded: request.bytes_uploaded,
                },
            )
            .await
            .map_err(status)?;
        Ok(Response::new(v1::ReportProgressResponse { cancel }))
    }

    async fn commit_snapshot(
        &self,
        request: Request<v1::CommitSnapshotRequest>,
    ) -> Result<Response<v1::CommitSnapshotResponse>, Status> {
        // The fenced commit, inside the job's trace when the worker sent its context.
        let span = tracing::info_span!(
            parent: None,
            "commit",
            job = request.get_ref().job_id,
            vm = request
                .get_ref()
                .snapshot
                .as_ref()
                .map(|s| s.vm.as_str())
                .unwrap_or_default(),
        );
        continue_trace(&span, &request);
        let caller = auth::caller(&request)?.clone();
        let leader = self.leader().await?;
        let request = request.into_inner();
        let worker = identity(&caller, request.worker)?;
        let snapshot = request
            .snapshot
            .ok_or_else(|| Status::invalid_argument("missing snapshot info"))?;
        let snapshot = leader
            .commit(CommitRequest {
                worker: worker.worker_id,
                job_id: request.job_id,
                token: request.fencing_token,
                manifest_key: request.manifest_key,
                manifest_blob: request.manifest_blob,
                snapshot: SnapshotRecord {
                    vm: snapshot.vm,
                    timestamp: snapshot.timestamp,
                    repository: snapshot.repository,
                    disks: snapshot
                        .disks
                        .into_iter()
                        .map(|d| (d.name, d.size_bytes))
                        .collect(),
                    bytes_uploaded: snapshot.bytes_uploaded,
                    job_id: snapshot.job_id,
                    bytes_read: snapshot.bytes_read,
                    bytes_new: snapshot.bytes_new,
                    committed_unix_ms: 0,
                },
            })
            .instrument(span)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::CommitSnapshotResponse { snapshot }))
    }

    async fn complete_job(
        &self,
        request: Request<v1::CompleteJobRequest>,
    ) -> Result<Response<v1::CompleteJobResponse>, Status> {
        let caller = auth::caller(&request)?.clone();
        let leader = self.leader().await?;
        let request = request.into_inner();
        let worker = identity(&caller, request.worker)?;
        leader
            .complete(
                &worker.worker_id,
                &request.job_id,
                request.fencing_token,
                &request.summary,
                &request.removed_snapshots,
                match v1::BootVerdict::try_from(request.boot_verdict) {
                    Ok(v1::BootVerdict::Passed) => Some(true),
                    Ok(v1::BootVerdict::Failed) => Some(false),
                    _ => None,
                },
            )
            .await
            .map_err(status)?;
        Ok(Response::new(v1::CompleteJobResponse {}))
    }

    async fn list_pins(
        &self,
        request: Request<v1::ListPinsRequest>,
    ) -> Result<Response<v1::ListPinsResponse>, Status> {
        let leader = self.leader().await?;
        let caller = auth::caller(&request)?.clone();
        let request = request.into_inner();
        identity(&caller, request.worker)?;
        let (bases, oldest_start_unix_ms, holders) = leader.pins(&request.repository).await;
        Ok(Response::new(v1::ListPinsResponse {
            bases,
            oldest_start_unix_ms,
            holders,
        }))
    }

    async fn fail_job(
        &self,
        request: Request<v1::FailJobRequest>,
    ) -> Result<Response<v1::FailJobResponse>, Status> {
        let caller = auth::caller(&request)?.clone();
        let leader = self.leader().await?;
        let request = request.into_inner();
        let worker = identity(&caller, request.worker)?;
        leader
            .fail(
                &worker.worker_id,
                &request.job_id,
                request.fencing_token,
                &request.error,
                request.retryable,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(v1::FailJobResponse {}))
    }
}

/// Makes `span` a child of the caller's span when the call carries a `traceparent`
/// (a worker exporting traces sends it with every call).
fn continue_trace<T>(span: &tracing::Span, request: &Request<T>) {
    if let Some(traceparent) = request
        .metadata()
        .get(haven_telemetry::TRACEPARENT)
        .and_then(|value| value.to_str().ok())
    {
        haven_telemetry::set_parent_from_traceparent(span, traceparent);
    }
}

fn leader_settings_ttl(replica: &Replica) -> Duration {
    replica.settings().leader.worker_lease
}

type JobStream = Pin<Box<dyn Stream<Item = Result<v1::JobStatus, Status>> + Send>>;

#[tonic::async_trait]
impl AdminService for CoordinatorService {
    async fn get_leader(
        &self,
        _request: Request<v1::GetLeaderRequest>,
    ) -> Result<Response<v1::GetLeaderResponse>, Status> {
        let settings = self.replica.settings();
        let (leader_url, is_leader) = match self.replica.role().await {
            Role::Leader(_) => (settings.advertise_url.clone(), true),
            Role::Follower(url) => (url.unwrap_or_default(), false),
        };
        Ok(Response::new(v1::GetLeaderResponse {
            leader_url,
            is_leader,
            replica_id: settings.id.clone(),
        }))
    }

    async fn list_vms(
        &self,
        _request: Request<v1::ListVmsRequest>,
    ) -> Result<Response<v1::ListVmsResponse>, Status> {
        let leader = self.leader().await?;
        let vms = leader
            .vms()
            .await
            .into_iter()
            .map(|(vm, workers)| v1::Vm {
                name: vm.name,
                host: vm.host,
                disks: vm
                    .disks
                    .into_iter()
                    .map(|(name, size_bytes)| v1::Disk { name, size_bytes })
                    .collect(),
                labels: vm.labels.into_iter().collect(),
                workers,
            })
            .collect();
        Ok(Response::new(v1::ListVmsResponse { vms }))
    }

    async fn list_workers(
        &self,
        _request: Request<v1::ListWorkersRequest>,
    ) -> Result<Response<v1::ListWorkersResponse>, Status> {
        let leader = self.leader().await?;
        let workers = leader
            .workers()
            .await
            .into_iter()
            .map(|(w, running)| v1::WorkerInfo {
                worker_id: w.id,
                hosts: w.hosts,
                max_jobs: w.max_jobs,
                running_jobs: running,
                registered_unix_ms: w.registered_unix_ms,
            })
            .collect();
        Ok(Response::new(v1::ListWorkersResponse { workers }))
    }

    async fn apply_policies(
        &self,
        request: Request<v1::ApplyPoliciesRequest>,
    ) -> Result<Response<v1::ApplyPoliciesResponse>, Status> {
        let leader = self.leader().await?;
        let request = request.into_inner();
        let name = if request.file_name.is_empty() {
            "policy.toml"
        } else {
            request.file_name.as_str()
        };
        let policies = parse_policies(name, &request.policy_toml, &self.allowlist)
            .map_err(|errors| Status::invalid_argument(errors.join("\n")))?;
        let policies = leader.apply_policies(policies).await.map_err(status)?;
        let detail = format!("{name}: {}", policies.join(", "));
        Ok(audited(v1::ApplyPoliciesResponse { policies }, detail))
    }

    async fn run_job(
        &self,
        request: Request<v1::RunJobRequest>,
    ) -> Result<Response<v1::RunJobResponse>, Status> {
        let leader = self.leader().await?;
        let request = request.into_inner();
        if !request.repository.is_empty() {
            self.allowlist
                .check(&request.repository)
                .map_err(Status::invalid_argument)?;
        }
        if request.kind == v1::JobKind::Gc as i32 {
            if request.repository.is_empty() {
                return Err(Status::invalid_argument("a GC job needs a repository"));
            }
            let job_id = leader
                .run_gc(&request.repository, request.gc_margin_seconds)
                .await
                .map_err(status)?;
            let detail = format!("GC job {job_id} of {}", request.repository);
            return Ok(audited(v1::RunJobResponse { job_id }, detail));
        }
        check_name("VM name", &request.vm).map_err(status)?;
        let repository = (!request.repository.is_empty()).then_some(request.repository);
        let job_id = leader
            .run_job(&request.vm, repository)
            .await
            .map_err(status)?;
        let detail = format!("backup job {job_id} of VM {}", request.vm);
        Ok(audited(v1::RunJobResponse { job_id }, detail))
    }

    async fn run_policy(
        &self,
        request: Request<v1::RunPolicyRequest>,
    ) -> Result<Response<v1::RunPolicyResponse>, Status> {
        let leader = self.leader().await?;
        let policy = request.into_inner().policy;
        check_name("policy name", &policy).map_err(status)?;
        let job_ids = leader.run_policy(&policy).await.map_err(status)?;
        let detail = format!("policy {policy}: {} jobs", job_ids.len());
        Ok(audited(v1::RunPolicyResponse { job_ids }, detail))
    }

    async fn cancel_job(
        &self,
        request: Request<v1::CancelJobRequest>,
    ) -> Result<Response<v1::CancelJobResponse>, Status> {
        let by = auth::caller(&request)?.identity.to_string();
        let leader = self.leader().await?;
        let job_id = request.into_inner().job_id;
        check_name("job id", &job_id).map_err(status)?;
        let job = leader.cancel(&job_id, &by).await.map_err(status)?;
        let detail = format!("job {job_id} ({} of {:?})", job.kind.as_str(), job.vm);
        let job = Some(job_status(&job, Progress::default()));
        Ok(audited(v1::CancelJobResponse { job }, detail))
    }

    async fn list_jobs(
        &self,
        request: Request<v1::ListJobsRequest>,
    ) -> Result<Response<v1::ListJobsResponse>, Status> {
        let leader = self.leader().await?;
        let request = request.into_inner();
        let vm = (!request.vm.is_empty()).then_some(request.vm.as_str());
        let jobs = leader
            .jobs(vm, request.limit as usize)
            .await
            .iter()
            .map(|(job, progress)| job_status(job, *progress))
            .collect();
        Ok(Response::new(v1::ListJobsResponse { jobs }))
    }

    type WatchJobStream = JobStream;

    async fn watch_job(
        &self,
        request: Request<v1::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let caller = auth::caller(&request)?.identity.to_string();
        let leader = self.leader().await?;
        let job_id = request.into_inner().job_id;
        if leader.job(&job_id).await.is_none() {
            return Err(Status::not_found(format!("unknown job {job_id:?}")));
        }
        let slot = WatchSlot::take(&self.watches, caller)?;
        let stream = futures::stream::unfold(
            (leader, job_id, None::<v1::JobStatus>, false),
            |(leader, job_id, last, ended)| async move {
                if ended {
                    return None;
                }
                loop {
                    let waiter = leader.clone();
                    let notified = waiter.changed.notified();
                    let Some((job, progress)) = leader.job(&job_id).await else {
                        return Some((
                            Err(Status::not_found("job vanished (leadership moved?)")),
                            (leader, job_id, last, true),
                        ));
                    };
                    let now = job_status(&job, progress);
                    if last.as_ref() != Some(&now) {
                        let done = !job.state.is_active();
                        return Some((Ok(now.clone()), (leader, job_id, Some(now), done)));
                    }
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            },
        )
        .map(move |status| {
            let _held = &slot;
            status
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_snapshots(
        &self,
        request: Request<v1::ListSnapshotsRequest>,
    ) -> Result<Response<v1::ListSnapshotsResponse>, Status> {
        let leader = self.leader().await?;
        let vm = request.into_inner().vm;
        let vm = (!vm.is_empty()).then_some(vm.as_str());
        let snapshots = leader
            .snapshots(vm)
            .await
            .iter()
            .map(snapshot_info)
            .collect();
        Ok(Response::new(v1::ListSnapshotsResponse { snapshots }))
    }

    async fn import_snapshots(
        &self,
        request: Request<v1::ImportSnapshotsRequest>,
    ) -> Result<Response<v1::ImportSnapshotsResponse>, Status> {
        let leader = self.leader().await?;
        let snapshots = request.into_inner().snapshots;
        for snapshot in &snapshots {
            self.allowlist
                .check(&snapshot.repository)
                .map_err(Status::invalid_argument)?;
        }
        let records = snapshots.into_iter().map(snapshot_record).collect();
        let report = leader.import_snapshots(records).await.map_err(status)?;
        let detail = format!("{} added, {} present", report.added, report.present);
        Ok(audited(
            v1::ImportSnapshotsResponse {
                added: report.added as u64,
                present: report.present as u64,
            },
            detail,
        ))
    }

    async fn create_token(
        &self,
        request: Request<v1::CreateTokenRequest>,
    ) -> Result<Response<v1::CreateTokenResponse>, Status> {
        let by = auth::caller(&request)?.identity.to_string();
        let request = request.into_inner();
        let role = request.role.parse().map_err(Status::invalid_argument)?;
        let token = self
            .tokens
            .create(&request.name, role, &by)
            .await
            .map_err(token_status)?;
        let detail = format!("token {:?} with role {role}", request.name);
        Ok(audited(v1::CreateTokenResponse { token }, detail))
    }

    async fn revoke_token(
        &self,
        request: Request<v1::RevokeTokenRequest>,
    ) -> Result<Response<v1::RevokeTokenResponse>, Status> {
        let name = request.into_inner().name;
        let existed = self.tokens.revoke(&name).await.map_err(token_status)?;
        if !existed {
            return Err(Status::not_found(format!("no token named {name:?}")));
        }
        let detail = format!("token {name:?}");
        Ok(audited(v1::RevokeTokenResponse { existed }, detail))
    }

    async fn list_tokens(
        &self,
        _request: Request<v1::ListTokensRequest>,
    ) -> Result<Response<v1::ListTokensResponse>, Status> {
        let tokens = self
            .tokens
            .list()
            .await
            .map_err(token_status)?
            .into_iter()
            .map(|record| v1::TokenInfo {
                name: record.name,
                role: record.role,
                created_unix_ms: record.created_unix_ms,
                created_by: record.created_by,
            })
            .collect();
        Ok(Response::new(v1::ListTokensResponse { tokens }))
    }

    async fn list_audit(
        &self,
        request: Request<v1::ListAuditRequest>,
    ) -> Result<Response<v1::ListAuditResponse>, Status> {
        let request = request.into_inner();
        let limit = match request.limit {
            0 => 1000,
            limit => limit.min(100_000) as usize,
        };
        let entries = self
            .audit
            .list(request.since_unix_ms, limit)
            .await
            .map_err(|error| Status::unavailable(error.to_string()))?
            .into_iter()
            .map(|record| v1::AuditEntry {
                unix_ms: record.unix_ms,
                who: record.who,
                credential: record.credential,
                remote: record.remote,
                method: record.method,
                result: record.result,
                detail: record.detail,
            })
            .collect();
        Ok(Response::new(v1::ListAuditResponse { entries }))
    }
}
