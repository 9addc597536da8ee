//! `haven worker`: the long-running worker of a cluster.
//!
//! ```text
//! discover VMs (QMP sockets) ─▶ Register (lease) ─┬─ Heartbeat every ttl/4 ── NOT_FOUND, or none
//!                                                 │     succeeded for a whole ttl: lease
//!                                                 │     lost ─▶ cancel all
//!                                                 ├─ PollJobs (long-poll) ─▶ run each job:
//!                                                 │     backup_qemu / _libvirt / _vsphere
//!                                                 │       ─ progress every second
//!                                                 │     └─ manifest ─▶ CommitSnapshot (fenced)
//!                                                 │     prune, gc, replicate, boot_test
//!                                                 │     └─ CompleteJob (fenced)
//!                                                 └─ ReportInventory every interval
//! ```
//!
//! The worker never writes a manifest itself: it seals it and hands it to the
//! coordinator, which accepts it only while this worker's attempt still owns the job.
//! Chunks and indexes written by an attempt that loses its job are harmless (unlisted,
//! reused by the next attempt through the existence check, swept by GC).
//!
//! One file because it is the job loop's state machine (register, heartbeat, poll, run,
//! report) over one shared `Daemon`; its parts with a job of their own (configuration,
//! fenced commit, maintenance jobs, boot tests, metrics, pins, storage keys) are the
//! submodules.

mod boot_job;
pub mod config;
mod fenced_commit;
mod maintenance;
mod metrics;
mod pins;
mod storage_keys;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use haven_proto::v1::{self, worker_service_client::WorkerServiceClient};
use haven_proto::{Backoff, LeaderClient};
use haven_repo::{Backend, Progress, Repository};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tracing::Instrument;

pub use config::{BootTestsConfig, ClientTlsConfig, HostConfig, WorkerConfig};
pub use fenced_commit::snapshot_info;
pub use storage_keys::StorageKeysConfig;

use crate::adapters::driver::LiveBackupOptions;
use crate::adapters::libvirt::{LibvirtBackupRequest, backup_libvirt, discover_domains};
use crate::adapters::qemu::{QemuBackupRequest, backup_qemu, discover_disks};
use crate::adapters::vsphere::{VsphereBackupRequest, backup_vsphere, discover_vms};
use crate::error::{Result, WorkerError};
use fenced_commit::FencedCommit;
use maintenance::{Sites, run_maintenance};
use metrics::{JobResult, WorkerMetrics};
use pins::ClusterPins;
use storage_keys::{KeyUse, Site, StorageKeys};

/// Runs the worker until `shutdown`.
pub async fn run_worker(
    config: WorkerConfig,
    password: Vec<u8>,
    shutdown: CancellationToken,
) -> Result<()> {
    let config_limit = config.read_limit_bytes_per_second;
    let storage_keys = StorageKeys::load(&config.storage).map_err(WorkerError::InvalidInput)?;
    let vcenters = config
        .vcenter_connections()
        .map_err(WorkerError::InvalidInput)?;
    let metrics = WorkerMetrics::new();
    // Sandboxes of boot tests a killed worker left (their QEMU died with it).
    crate::boot::remove_abandoned(&config.boot_dir());
    let boot_slots = Arc::new(tokio::sync::Semaphore::new(
        config.boot_tests.max_running as usize,
    ));
    if let Some(address) = config.metrics_listen {
        metrics
            .serve(address, config.metrics_tls.as_ref(), shutdown.clone())
            .await?;
    }
    let client = Arc::new(
        LeaderClient::new(
            config.coordinators.clone(),
            Duration::from_secs(30),
            config
                .security(&shutdown)
                .map_err(|error| WorkerError::InvalidInput(error.to_string()))?,
        )
        .map_err(|error| WorkerError::InvalidInput(error.to_string()))?,
    );
    let worker = Arc::new(Worker {
        config,
        password,
        client,
        instance: format!("{:016x}", rand::random::<u64>()),
        repos: Mutex::new(HashMap::new()),
        storage_keys,
        vcenters,
        read_limit: (config_limit > 0)
            .then(|| Arc::new(haven_repo::RateLimiter::new(config_limit))),
        metrics,
        boot_slots,
    });
    // Sessions that ended in a row without registering: the backoff's attempt number.
    let mut failures = 0;
    while !shutdown.is_cancelled() {
        match worker.clone().session(&shutdown).await {
            Ok(()) => failures = 1,
            Err(error) => {
                failures += 1;
                tracing::warn!(error = %error.chain(), "worker session ended");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(SESSION_BACKOFF.pause(failures)) => {}
        }
    }
    Ok(())
}

/// Pauses before registering again: up to 1 s after a session ended, doubling to at
/// most 30 s while registrations keep failing, with full jitter, so the workers that
/// one failover or lease loss cut off do not all register again at once.
const SESSION_BACKOFF: Backoff = Backoff {
    first: Duration::from_secs(1),
    max: Duration::from_secs(30),
};

/// Pauses between failed polls: up to 500 ms after the first, doubling to at most 5 s,
/// with full jitter.
const POLL_BACKOFF: Backoff = Backoff {
    first: Duration::from_millis(500),
    max: Duration::from_secs(5),
};

struct Worker {
    config: WorkerConfig,
    password: Vec<u8>,
    client: Arc<LeaderClient>,
    instance: String,
    /// Open repositories by URL and the key they were opened with.
    repos: Mutex<HashMap<(String, KeyUse, Site), Arc<Repository>>>,
    storage_keys: StorageKeys,
    /// How to reach each `vcenter` host, by host name (credentials read at start).
    vcenters: HashMap<String, haven_vsphere::ConnectOptions>,
    read_limit: Option<Arc<haven_repo::RateLimiter>>,
    metrics: WorkerMetrics,
    /// One permit per boot test allowed at once (`[boot_tests] max_running`).
    boot_slots: Arc<tokio::sync::Semaphore>,
}

/// Who this worker is in the current session.
#[derive(Clone)]
struct Session {
    identity: v1::WorkerIdentity,
    /// Cancelled when the lease is gone (or the session ends): its jobs belong to
    /// other attempts now, and heartbeats stop.
    lease_lost: CancellationToken,
    /// Cancelled when a drain ends with jobs still running (a child of `lease_lost`):
    /// they stop and are handed back while the lease still stands.
    stop_jobs: CancellationToken,
}

impl Worker {
    /// One registration: runs jobs until the lease is lost or shutdown.
    async fn session(self: Arc<Self>, shutdown: &CancellationToken) -> Result<()> {
        let hosts = self.inventory().await;
        let request = v1::RegisterRequest {
            worker_id: self.config.id.clone(),
            instance_id: self.instance.clone(),
            hosts,
            max_jobs: self.config.max_jobs,
            version: env!("CARGO_PKG_VERSION").to_string(),
            max_boot_tests: self.config.boot_tests.max_running,
        };
        // The lease is granted when the coordinator handles the call, after its last
        // try was sent: a lease period counted from that try ends no later than the
        // lease itself. Counted from the first try, a registration the client retried
        // through a partition was given up the moment it succeeded; a try that waited
        // long on its connection is renewed below.
        let mut asked = Instant::now();
        let registered = self
            .client
            .call(|channel| {
                asked = Instant::now();
                let request = request.clone();
                async move { WorkerServiceClient::new(channel).register(request).await }
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| WorkerError::from_coordinator("registration", &status))?;
        tracing::info!(
            worker = self.config.id,
            lease = registered.lease_id,
            "registered"
        );
        // Not a child of `shutdown`: on SIGTERM the session drains, keeping its lease
        // and heartbeats while running jobs finish.
        let lease_lost = CancellationToken::new();
        let session = Session {
            identity: v1::WorkerIdentity {
                worker_id: self.config.id.clone(),
                instance_id: self.instance.clone(),
                lease_id: registered.lease_id,
            },
            stop_jobs: lease_lost.child_token(),
            lease_lost,
        };
        let lease = Duration::from_secs(u64::from(registered.lease_ttl_seconds.max(1)));
        if asked.elapsed() >= lease / 2 {
            // The answered try may have waited on its connection through a partition
            // long before the coordinator handled it: renew once now rather than start
            // the session with a lease it already counts as run out.
            let renewing = Instant::now();
            let request = v1::HeartbeatRequest {
                worker: Some(session.identity.clone()),
            };
            let renewed = tokio::time::timeout(
                lease,
                self.client
                    .unary(WorkerServiceClient::new, request, |mut c, r| async move {
                        c.heartbeat(r).await
                    }),
            )
            .await;
            if matches!(renewed, Ok(Ok(_))) {
                asked = renewing;
            }
        }
        let heartbeat = tokio::spawn(self.clone().heartbeats(
            session.clone(),
            Duration::from_millis(u64::from(registered.heartbeat_interval_ms.max(100))),
            lease,
            asked,
        ));
        let inventory = tokio::spawn(self.clone().inventory_reports(session.clone()));
        let mut running: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
        let mut failed_polls = 0;
        while !session.lease_lost.is_cancelled() {
            running.retain(|_, task| !task.is_finished());
            let request = v1::PollJobsRequest {
                worker: Some(session.identity.clone()),
                wait_ms: 5_000,
                running_job_ids: running.keys().cloned().collect(),
            };
            let poll =
                self.client
                    .unary(WorkerServiceClient::new, request, |mut c, r| async move {
                        c.poll_jobs(r).await
                    });
            let reply = tokio::select! {
                _ = session.lease_lost.cancelled() => break,
                _ = shutdown.cancelled() => break,
                reply = poll => reply,
            };
            match reply {
                Ok(reply) => {
                    failed_polls = 0;
                    for job in reply.jobs {
                        if running.contains_key(&job.job_id) {
                            continue;
                        }
                        let id = job.job_id.clone();
                        let span = job_span(&job);
                        let task = tokio::spawn(
                            self.clone().run_job(session.clone(), job).instrument(span),
                        );
                        running.insert(id, task);
                    }
                }
                Err(status) if status.code() == Code::NotFound => {
                    tracing::warn!("lease lost: {}", status.message());
                    session.lease_lost.cancel();
                }
                Err(status) => {
                    tracing::warn!("poll failed: {}", status.message());
                    failed_polls += 1;
                    tokio::select! {
                        _ = session.lease_lost.cancelled() => break,
                        _ = tokio::time::sleep(POLL_BACKOFF.pause(failed_polls)) => {}
                    }
                }
            }
        }
        running.retain(|_, task| !task.is_finished());
        if shutdown.is_cancelled() && !session.lease_lost.is_cancelled() {
            self.drain(&session, running.into_values().collect()).await;
        } else {
            session.lease_lost.cancel();
            for task in running.into_values() {
                let _ = task.await;
            }
        }
        session.lease_lost.cancel();
        heartbeat.abort();
        inventory.abort();
        Ok(())
    }

    /// Shutdown with the lease still standing: lets `running` jobs finish for up to
    /// `drain_seconds` while heartbeats go on, then stops the rest, which report
    /// themselves failed as retryable ([`WorkerError::ShuttingDown`]) so the
    /// coordinator hands them out again at once instead of after the lease's expiry.
    async fn drain(&self, session: &Session, running: Vec<tokio::task::JoinHandle<()>>) {
        if running.is_empty() {
            return;
        }
        let grace = Duration::from_secs(self.config.drain_seconds);
        tracing::info!(
            jobs = running.len(),
            grace_seconds = grace.as_secs(),
            "shutting down: taking no new job, waiting for the running ones"
        );
        let mut all = futures::future::join_all(running);
        if tokio::time::timeout(grace, &mut all).await.is_err() {
            tracing::warn!("drain period over: handing the running jobs back");
            session.stop_jobs.cancel();
            all.await;
        }
    }

    /// Keeps the lease alive every `every`; cancels the session (its jobs stop) when
    /// the coordinator says the lease is gone, or when no heartbeat succeeded for one
    /// `lease` period since `renewed` (when the last successful renewal was asked):
    /// by then the lease may have expired and the jobs been handed to other workers,
    /// so carrying on would only race them.
    async fn heartbeats(
        self: Arc<Self>,
        session: Session,
        every: Duration,
        lease: Duration,
        mut renewed: Instant,
    ) {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = session.lease_lost.cancelled() => return,
                _ = tick.tick() => {}
            }
            let request = v1::HeartbeatRequest {
                worker: Some(session.identity.clone()),
            };
            let asked = Instant::now();
            // The client retries while no leader answers; the lease does not wait.
            let reply = tokio::time::timeout_at(
                (renewed + lease).into(),
                self.client.unary(
                    WorkerServiceClient::new,
                    request.clone(),
                    |mut c, r| async move { c.heartbeat(r).await },
                ),
            )
            .await;
            let error = match reply {
                Ok(Ok(_)) => {
                    renewed = asked;
                    continue;
                }
                Ok(Err(status))
                    if matches!(status.code(), Code::NotFound | Code::AlreadyExists) =>
                {
                    tracing::warn!(
                        "lease lost, stopping this session's jobs: {}",
                        status.message()
                    );
                    session.lease_lost.cancel();
                    return;
                }
                Ok(Err(status)) => status.message().to_string(),
                Err(_) => "no coordinator answered".to_string(),
            };
            if renewed.elapsed() < lease {
                tracing::warn!("heartbeat failed: {error}");
                continue;
            }
            tracing::warn!(
                lease_seconds = lease.as_secs(),
                "no heartbeat reached a coordinator for a whole lease period ({error}): \
                 stopping this session's jobs, which the coordinator hands to other workers"
            );
            session.lease_lost.cancel();
            return;
        }
    }

    async fn inventory_reports(self: Arc<Self>, session: Session) {
        let every = Duration::from_secs(self.config.inventory_interval_seconds.max(1));
        loop {
            tokio::select! {
                _ = session.lease_lost.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let request = v1::ReportInventoryRequest {
                worker: Some(session.identity.clone()),
                hosts: self.inventory().await,
            };
            let _ = self
                .client
                .unary(
                    WorkerServiceClient::new,
                    request.clone(),
                    |mut c, r| async move { c.report_inventory(r).await },
                )
                .await;
        }
    }

    /// The hosts and VMs this worker reaches now.
    async fn inventory(&self) -> Vec<v1::Host> {
        let mut hosts = Vec::new();
        for host in &self.config.hosts {
            let mut found: Vec<(String, Vec<(String, u64)>)> = Vec::new();
            for (name, socket) in host.vm_sockets() {
                match discover_disks(&socket, Duration::from_secs(5)).await {
                    Ok(disks) => found.push((name, disks)),
                    Err(error) => {
                        tracing::warn!(vm = name, socket = %socket.display(), error = %error.chain(), "VM not reachable");
                    }
                }
            }
            if let Some(connect) = self.vcenters.get(&host.name) {
                match discover_vms(connect).await {
                    Ok(vms) => found.extend(vms),
                    Err(error) => {
                        tracing::warn!(url = %connect.url, error = %error.chain(), "vCenter not reachable")
                    }
                }
            }
            if let Some(uri) = &host.libvirt {
                match discover_domains(Some(uri.clone()), Duration::from_secs(30)).await {
                    Ok(domains) => found.extend(domains),
                    Err(error) => {
                        tracing::warn!(uri, error = %error.chain(), "libvirt host not reachable")
                    }
                }
            }
            let vms = found
                .into_iter()
                .map(|(name, disks)| v1::Vm {
                    name,
                    host: host.name.clone(),
                    disks: disks
                        .into_iter()
                        .map(|(name, size_bytes)| v1::Disk { name, size_bytes })
                        .collect(),
                    labels: host.labels.clone().into_iter().collect(),
                    workers: Vec::new(),
                })
                .collect();
            hosts.push(v1::Host {
                name: host.name.clone(),
                vms,
            });
        }
        hosts
    }

    /// The repository at `url`, opened with the storage key of `key_use` (the
    /// `append` key for backups and replication, the `delete` key for prune and GC)
    /// of its site: the secondary's keys for a job at a replica.
    async fn repository(&self, url: &str, key_use: KeyUse, site: Site) -> Result<Arc<Repository>> {
        let mut repos = self.repos.lock().await;
        let cache_key = (url.to_string(), key_use, site);
        if let Some(repo) = repos.get(&cache_key) {
            return Ok(repo.clone());
        }
        let credentials = match site {
            Site::Primary => self.storage_keys.for_use(key_use).cloned(),
            Site::Secondary => self
                .storage_keys
                .at_secondary(key_use)
                .map_err(WorkerError::InvalidInput)?,
        };
        let backend = Backend::from_url_with_credentials(url, false, credentials.as_ref())?;
        let repo = Arc::new(Repository::open(backend, &self.password).await?);
        repos.insert(cache_key, repo.clone());
        Ok(repo)
    }

    /// Runs one job to its end: committed, failed (reported, retryable only when
    /// [`WorkerError::is_retryable`] says so), or moved to another worker (dropped).
    async fn run_job(self: Arc<Self>, session: Session, job: v1::JobAssignment) {
        let cancel = session.stop_jobs.child_token();
        let progress = Arc::new(Progress::new());
        // Bytes read already counted in the worker's metrics (by the reporter, live).
        let counted = Arc::new(AtomicU64::new(0));
        self.metrics.job_started();
        let reporter = tokio::spawn(
            self.clone()
                .report_progress(
                    session.clone(),
                    job.clone(),
                    progress.clone(),
                    counted.clone(),
                    cancel.clone(),
                )
                .instrument(tracing::Span::current()),
        );
        tracing::info!("job started");
        let maintenance = [v1::JobKind::Prune, v1::JobKind::Gc, v1::JobKind::Replicate]
            .iter()
            .any(|kind| *kind as i32 == job.kind);
        let outcome = if maintenance {
            match self
                .maintenance(&session, &job, progress.clone(), &cancel)
                .await
            {
                Ok((summary, removed)) => {
                    let done = Completion {
                        summary,
                        removed,
                        boot_verdict: v1::BootVerdict::Unspecified,
                    };
                    self.complete(&session, &job, done).await
                }
                Err(error) => Err(error),
            }
        } else if job.kind == v1::JobKind::BootTest as i32 {
            match self.boot_test(&job, &cancel).await {
                Ok(done) => self.complete(&session, &job, done).await,
                Err(error) => Err(error),
            }
        } else {
            self.backup(&session, &job, progress.clone(), &cancel).await
        };
        let (bytes_read, _) = progress.snapshot();
        self.metrics.read_progress(bytes_read, &counted);
        tracing::Span::current().record("bytes_read", bytes_read);
        let outcome = match outcome {
            Ok(done) => {
                reporter.abort();
                Ok(done)
            }
            Err(error) => Err(why_it_ended(error, reporter, &session, &cancel).await),
        };
        let result = match &outcome {
            Ok(_) => JobResult::Succeeded,
            Err(WorkerError::JobMoved(_)) => JobResult::Moved,
            Err(_) => JobResult::Failed,
        };
        self.metrics.job_ended(job.kind, result);
        match outcome {
            Ok(done) => tracing::info!(done, "job finished"),
            Err(WorkerError::JobMoved(reason)) => {
                tracing::warn!(reason, "job moved to another worker; dropped");
            }
            Err(error) => {
                self.metrics.job_error(&error);
                let message = error.chain();
                let retryable = error.is_retryable();
                tracing::Span::current().record("otel.status_code", "error");
                tracing::warn!(error = %message, retryable, "job failed");
                let request = v1::FailJobRequest {
                    worker: Some(session.identity.clone()),
                    job_id: job.job_id.clone(),
                    fencing_token: job.fencing_token,
                    error: message,
                    retryable,
                };
                let _ = self
                    .client
                    .unary(
                        WorkerServiceClient::new,
                        request.clone(),
                        |mut c, r| async move { c.fail_job(r).await },
                    )
                    .await;
            }
        }
    }

    /// Runs a prune, GC or replication job until it ends or `cancel` fires.
    async fn maintenance(
        &self,
        session: &Session,
        job: &v1::JobAssignment,
        progress: Arc<Progress>,
        cancel: &CancellationToken,
    ) -> Result<(String, Vec<String>)> {
        let site = Site::of_job(job);
        let repo = match self
            .repository(&job.repository, KeyUse::of_job(job.kind), site)
            .await
        {
            Ok(repo) => repo,
            // A replica's prune or GC may come before the first replication made it.
            Err(WorkerError::Repo(haven_repo::RepoError::NotARepository(_)))
                if site == Site::Secondary =>
            {
                let summary = "nothing to do at the replica: replication has not created it yet";
                return Ok((summary.to_string(), Vec::new()));
            }
            Err(error) => return Err(error),
        };
        let pins = ClusterPins {
            client: self.client.clone(),
            identity: session.identity.clone(),
            repository: job.repository.clone(),
        };
        // A replica's prune reads which snapshots the primary still has, with the
        // primary's read-only use of the append key.
        let primary = match site {
            Site::Secondary => Some(Backend::from_url_with_credentials(
                &job.replica_of,
                false,
                self.storage_keys.for_use(KeyUse::Append),
            )?),
            Site::Primary => None,
        };
        let sites = Sites {
            primary: primary.as_ref(),
            secondary_key: self.storage_keys.secondary(),
        };
        tokio::select! {
            result = run_maintenance(&repo, job, &pins, &progress, sites) => result,
            _ = cancel.cancelled() => Err(WorkerError::Cancelled("job")),
        }
    }

    /// Reports a finished prune, GC, replication or boot-test job (fenced like a
    /// commit).
    async fn complete(
        &self,
        session: &Session,
        job: &v1::JobAssignment,
        done: Completion,
    ) -> Result<String> {
        let summary = done.summary;
        let request = v1::CompleteJobRequest {
            worker: Some(session.identity.clone()),
            job_id: job.job_id.clone(),
            fencing_token: job.fencing_token,
            summary: summary.clone(),
            removed_snapshots: done.removed,
            boot_verdict: done.boot_verdict as i32,
        };
        match self
            .client
            .unary(
                WorkerServiceClient::new,
                request.clone(),
                |mut c, r| async move { c.complete_job(r).await },
            )
            .await
        {
            Ok(_) => Ok(summary),
            Err(status) => Err(WorkerError::from_coordinator("completion", &status)),
        }
    }

    async fn backup(
        &self,
        session: &Session,
        job: &v1::JobAssignment,
        progress: Arc<Progress>,
        cancel: &CancellationToken,
    ) -> Result<String> {
        let host = self
            .config
            .hosts
            .iter()
            .find(|host| host.name == job.host)
            .ok_or_else(|| {
                WorkerError::Unreachable(format!("host {} is not reachable from here", job.host))
            })?;
        let repo = self
            .repository(&job.repository, KeyUse::of_job(job.kind), Site::of_job(job))
            .await?;
        let publisher = Arc::new(FencedCommit {
            client: self.client.clone(),
            identity: session.identity.clone(),
            job_id: job.job_id.clone(),
            token: job.fencing_token,
            repository: job.repository.clone(),
            metrics: self.metrics.clone(),
        });
        let live = LiveBackupOptions {
            vm: job.vm.clone(),
            disks: Vec::new(),
            connections: self.config.connections.clamp(1, 16),
            publisher,
            read_limit: self.read_limit.clone(),
            hooks: self.config.snapshot.hooks(),
        };
        if let Some(vm) = host.vm_endpoints().into_iter().find(|vm| vm.name == job.vm) {
            let request = QemuBackupRequest {
                live,
                qmp: vm.qmp,
                guest_agent: vm.guest_agent,
                nbd_server: vm.nbd_server,
                scratch_dir: self.config.scratch_dir.clone(),
                qmp_timeout: Duration::from_secs(30),
                freeze_timeout: Duration::from_secs(self.config.snapshot.freeze_limit_seconds),
            };
            let report = backup_qemu(repo, &request, progress, cancel.cancelled()).await?;
            return Ok(report.backup.snapshot);
        }
        if let Some(connect) = self.vcenters.get(&host.name) {
            let request = VsphereBackupRequest {
                connect: connect.clone(),
                vm_name: job.vm.clone(),
                live,
            };
            let report = backup_vsphere(repo, &request, progress, cancel.cancelled()).await?;
            return Ok(report.backup.snapshot);
        }
        let Some(uri) = &host.libvirt else {
            return Err(WorkerError::Unreachable(format!(
                "VM {} on host {} is not reachable from here",
                job.vm, job.host
            )));
        };
        let request = LibvirtBackupRequest {
            live,
            domain: job.vm.clone(),
            uri: Some(uri.clone()),
            scratch_dir: self.config.scratch_dir.clone(),
            qemu_user: Some(host.qemu_user.clone()).filter(|user| !user.is_empty()),
            quiesce: false,
            virsh_timeout: Duration::from_secs(60),
        };
        let report = backup_libvirt(repo, &request, progress, cancel.cancelled()).await?;
        Ok(report.backup.snapshot)
    }

    /// Reports the job's progress every second until the coordinator asks to cancel
    /// it (returns `None`) or fences its token (cancels it and returns
    /// [`WorkerError::JobMoved`], the reason the job then ends).
    async fn report_progress(
        self: Arc<Self>,
        session: Session,
        job: v1::JobAssignment,
        progress: Arc<Progress>,
        counted: Arc<AtomicU64>,
        cancel: CancellationToken,
    ) -> Option<WorkerError> {
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let (done, total) = progress.snapshot();
            self.metrics.read_progress(done, &counted);
            let elapsed = started.elapsed().as_secs_f64().max(0.001);
            let request = v1::ReportProgressRequest {
                worker: Some(session.identity.clone()),
                job_id: job.job_id.clone(),
                fencing_token: job.fencing_token,
                phase: v1::JobPhase::Reading as i32,
                bytes_done: done,
                bytes_total: total,
                bytes_per_second: (done as f64 / elapsed) as u64,
                bytes_uploaded: 0,
            };
            let reply = self
                .client
                .unary(
                    WorkerServiceClient::new,
                    request.clone(),
                    |mut c, r| async move { c.report_progress(r).await },
                )
                .await;
            match reply {
                Ok(reply) if reply.cancel => {
                    cancel.cancel();
                    return None;
                }
                Ok(_) => {}
                Err(status) if status.code() == Code::FailedPrecondition => {
                    tracing::warn!("fenced: {}", status.message());
                    cancel.cancel();
                    return Some(WorkerError::from_coordinator("progress report", &status));
                }
                Err(status) => tracing::debug!("progress report failed: {}", status.message()),
            }
        }
    }
}

/// How a job other than a backup ended well, as `CompleteJob` reports it.
struct Completion {
    /// What it did, in a line.
    summary: String,
    /// Prune: `VM@TIMESTAMP` of the snapshots it removed.
    removed: Vec<String>,
    /// Boot test: the verdict.
    boot_verdict: v1::BootVerdict,
}

/// The span a job runs in: its id, VM, kind and attempt are fields of every line
/// logged for it (top-level keys of `--log-format json` lines), and it continues the
/// trace the coordinator's assignment began (`traceparent`), with the bytes read
/// recorded when it ends.
fn job_span(job: &v1::JobAssignment) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "job",
        job = job.job_id,
        vm = job.vm,
        kind = metrics::kind_name(job.kind),
        attempt = job.attempt,
        bytes_read = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    haven_telemetry::set_parent_from_traceparent(&span, &job.traceparent);
    span
}

/// Why a job that failed with `error` really ended: it moved to another worker when
/// the session lost its lease or the progress reporter was fenced (and cancelled the
/// job); otherwise `error` itself. Stops the reporter either way.
async fn why_it_ended(
    error: WorkerError,
    reporter: JoinHandle<Option<WorkerError>>,
    session: &Session,
    cancel: &CancellationToken,
) -> WorkerError {
    if session.lease_lost.is_cancelled() {
        reporter.abort();
        return match error {
            WorkerError::JobMoved(_) => error,
            _ => WorkerError::JobMoved("this worker's lease lost or not renewed in time".into()),
        };
    }
    if session.stop_jobs.is_cancelled() {
        reporter.abort();
        return WorkerError::ShuttingDown;
    }
    // Only the reporter cancels a job of a live session, and it returns right after.
    let fenced = if cancel.is_cancelled() {
        reporter.await.ok().flatten()
    } else {
        reporter.abort();
        None
    };
    match (error, fenced) {
        (error @ WorkerError::JobMoved(_), _) => error,
        (_, Some(moved)) => moved,
        (error, None) => error,
    }
}
