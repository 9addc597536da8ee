//! `haven worker`: the long-running worker of a cluster.
//!
//! ```text
//! discover VMs (QMP sockets) ─▶ Register (lease) ─┬─ Heartbeat every ttl/4 ── NOT_FOUND: lease
//!                                                 │                           lost ─▶ cancel all
//!                                                 ├─ PollJobs (long-poll) ─▶ run each job:
//!                                                 │     backup_qemu ─ progress every second
//!                                                 │     └─ manifest ─▶ CommitSnapshot (fenced)
//!                                                 └─ ReportInventory every interval
//! ```
//!
//! The worker never writes a manifest itself: it seals it and hands it to the
//! coordinator, which accepts it only while this worker's attempt still owns the job.
//! Chunks and indexes written by an attempt that loses its job are harmless (unlisted,
//! reused by the next attempt through the existence check, swept by GC).

pub mod config;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use haven_proto::LeaderClient;
use haven_proto::v1::{self, worker_service_client::WorkerServiceClient};
use haven_repo::{
    Backend, Manifest, PinSource, Pins, Progress, Repository, RepositoryLeases, SnapshotId,
};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tonic::Code;

pub use config::{HostConfig, WorkerConfig};

use crate::error::{Result, WorkerError};
use crate::libvirt::{LibvirtBackupRequest, backup_libvirt, discover_domains};
use crate::qemu::{QemuBackupRequest, backup_qemu, discover_disks};
use crate::snapshot::ManifestPublisher;

/// Runs the worker until `shutdown`.
pub async fn run_worker(
    config: WorkerConfig,
    password: Vec<u8>,
    shutdown: CancellationToken,
) -> Result<()> {
    let config_limit = config.read_limit_bytes_per_second;
    let client = Arc::new(
        LeaderClient::new(config.coordinators.clone(), Duration::from_secs(30))
            .map_err(|error| WorkerError::Invalid(error.to_string()))?,
    );
    let worker = Arc::new(Worker {
        config,
        password,
        client,
        instance: format!("{:016x}", rand::random::<u64>()),
        repos: Mutex::new(HashMap::new()),
        read_limit: (config_limit > 0)
            .then(|| Arc::new(haven_repo::RateLimiter::new(config_limit))),
    });
    while !shutdown.is_cancelled() {
        match worker.clone().session(&shutdown).await {
            Ok(()) => {}
            Err(error) => tracing::warn!(%error, "worker session ended"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
    Ok(())
}

struct Worker {
    config: WorkerConfig,
    password: Vec<u8>,
    client: Arc<LeaderClient>,
    instance: String,
    repos: Mutex<HashMap<String, Arc<Repository>>>,
    read_limit: Option<Arc<haven_repo::RateLimiter>>,
}

/// Who this worker is in the current session.
#[derive(Clone)]
struct Session {
    identity: v1::WorkerIdentity,
    lease_lost: CancellationToken,
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
        };
        let registered = self
            .client
            .unary(
                WorkerServiceClient::new,
                request.clone(),
                |mut c, r| async move { c.register(r).await },
            )
            .await
            .map_err(|status| {
                WorkerError::Invalid(format!("cannot register: {}", status.message()))
            })?;
        tracing::info!(
            worker = self.config.id,
            lease = registered.lease_id,
            "registered"
        );
        let session = Session {
            identity: v1::WorkerIdentity {
                worker_id: self.config.id.clone(),
                instance_id: self.instance.clone(),
                lease_id: registered.lease_id,
            },
            lease_lost: shutdown.child_token(),
        };
        let heartbeat = tokio::spawn(self.clone().heartbeats(
            session.clone(),
            Duration::from_millis(u64::from(registered.heartbeat_interval_ms.max(100))),
        ));
        let inventory = tokio::spawn(self.clone().inventory_reports(session.clone()));
        let mut running: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
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
                reply = poll => reply,
            };
            match reply {
                Ok(reply) => {
                    for job in reply.jobs {
                        if running.contains_key(&job.job_id) {
                            continue;
                        }
                        let id = job.job_id.clone();
                        let task = tokio::spawn(self.clone().run_job(session.clone(), job));
                        running.insert(id, task);
                    }
                }
                Err(status) if status.code() == Code::NotFound => {
                    tracing::warn!("lease lost: {}", status.message());
                    session.lease_lost.cancel();
                }
                Err(status) => {
                    tracing::warn!("poll failed: {}", status.message());
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        session.lease_lost.cancel();
        heartbeat.abort();
        inventory.abort();
        for (_, task) in running {
            let _ = task.await;
        }
        Ok(())
    }

    /// Keeps the lease alive; cancels the session when the coordinator says it is gone.
    async fn heartbeats(self: Arc<Self>, session: Session, every: Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = session.lease_lost.cancelled() => return,
                _ = tick.tick() => {}
            }
            let request = v1::HeartbeatRequest {
                worker: Some(session.identity.clone()),
            };
            let reply = self
                .client
                .unary(
                    WorkerServiceClient::new,
                    request.clone(),
                    |mut c, r| async move { c.heartbeat(r).await },
                )
                .await;
            match reply {
                Ok(_) => {}
                Err(status) if matches!(status.code(), Code::NotFound | Code::AlreadyExists) => {
                    tracing::warn!(
                        "lease lost, stopping this session's jobs: {}",
                        status.message()
                    );
                    session.lease_lost.cancel();
                    return;
                }
                Err(status) => tracing::warn!("heartbeat failed: {}", status.message()),
            }
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
                        tracing::warn!(vm = name, socket = %socket.display(), %error, "VM not reachable");
                    }
                }
            }
            if let Some(uri) = &host.libvirt {
                match discover_domains(Some(uri.clone()), Duration::from_secs(30)).await {
                    Ok(domains) => found.extend(domains),
                    Err(error) => tracing::warn!(uri, %error, "libvirt host not reachable"),
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

    async fn repository(&self, url: &str) -> Result<Arc<Repository>> {
        let mut repos = self.repos.lock().await;
        if let Some(repo) = repos.get(url) {
            return Ok(repo.clone());
        }
        let backend = Backend::from_url(url, false)?;
        let repo = Arc::new(Repository::open(backend, &self.password).await?);
        repos.insert(url.to_string(), repo.clone());
        Ok(repo)
    }

    /// Runs one job to its end: committed, failed (reported), or fenced (dropped).
    async fn run_job(self: Arc<Self>, session: Session, job: v1::JobAssignment) {
        let cancel = session.lease_lost.child_token();
        let fenced = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(Progress::new());
        let reporter = tokio::spawn(self.clone().report_progress(
            session.clone(),
            job.clone(),
            progress.clone(),
            cancel.clone(),
            fenced.clone(),
        ));
        tracing::info!(
            job = job.job_id,
            vm = job.vm,
            attempt = job.attempt,
            kind = job.kind,
            "job started"
        );
        let maintenance = [v1::JobKind::Prune, v1::JobKind::Gc, v1::JobKind::Replicate]
            .iter()
            .any(|kind| *kind as i32 == job.kind);
        let outcome = if maintenance {
            match self.maintenance(&session, &job, progress, &cancel).await {
                Ok((summary, removed)) => {
                    self.complete(&session, &job, summary, removed, &fenced)
                        .await
                }
                Err(error) => Err(error),
            }
        } else {
            self.backup(&session, &job, progress, &cancel, fenced.clone())
                .await
        };
        reporter.abort();
        match outcome {
            Ok(done) => tracing::info!(job = job.job_id, done, "job finished"),
            Err(_) if fenced.load(Ordering::SeqCst) || session.lease_lost.is_cancelled() => {
                tracing::warn!(job = job.job_id, "job moved to another worker; dropped");
            }
            Err(error) => {
                tracing::warn!(job = job.job_id, %error, "job failed");
                let request = v1::FailJobRequest {
                    worker: Some(session.identity.clone()),
                    job_id: job.job_id.clone(),
                    fencing_token: job.fencing_token,
                    error: error.to_string(),
                    retryable: true,
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

    /// Runs a prune, GC or replication job; returns its summary and, for a prune, the
    /// snapshots it removed.
    async fn maintenance(
        &self,
        session: &Session,
        job: &v1::JobAssignment,
        progress: Arc<Progress>,
        cancel: &CancellationToken,
    ) -> Result<(String, Vec<String>)> {
        let repo = self.repository(&job.repository).await?;
        let pins = ClusterPins {
            client: self.client.clone(),
            identity: session.identity.clone(),
            repository: job.repository.clone(),
        };
        let work = async {
            if job.kind == v1::JobKind::Prune as i32 {
                let rules = job.retention.unwrap_or_default();
                let policy = haven_repo::RetentionPolicy::from_counts([
                    rules.keep_last,
                    rules.keep_hourly,
                    rules.keep_daily,
                    rules.keep_weekly,
                    rules.keep_monthly,
                    rules.keep_yearly,
                ]);
                let decisions =
                    haven_repo::prune_snapshots(&repo, Some(&job.vm), &policy, &pins, false)
                        .await?;
                let removed: Vec<String> = decisions
                    .iter()
                    .filter(|d| !d.keep)
                    .map(|d| d.id.to_string())
                    .collect();
                let summary = format!(
                    "pruned {}: kept {}, removed {} ({})",
                    job.vm,
                    decisions.len() - removed.len(),
                    removed.len(),
                    policy.describe()
                );
                Ok((summary, removed))
            } else if job.kind == v1::JobKind::Gc as i32 {
                let options = haven_repo::GcOptions {
                    margin: Duration::from_secs(job.gc_margin_seconds),
                    ..haven_repo::GcOptions::default()
                };
                let report = haven_repo::collect_garbage(&repo, &pins, &options).await?;
                Ok((
                    format!(
                        "gc: removed {} chunks ({} bytes) and {} indexes; {} referenced, {} too young, {} missing",
                        report.chunks_removed,
                        report.bytes_removed,
                        report.indexes_removed,
                        report.chunks_referenced,
                        report.chunks_too_young,
                        report.chunks_missing
                    ),
                    Vec::new(),
                ))
            } else {
                // The secondary site may have keys of its own, as for `haven replicate`.
                let secondary = haven_repo::S3Credentials::secondary_from_env()?;
                let to = Backend::from_url_with_credentials(
                    &job.replicate_to,
                    true,
                    secondary.as_ref(),
                )?;
                let report = haven_repo::replicate(
                    repo.backend(),
                    &to,
                    &haven_repo::ReplicateOptions::default(),
                    &progress,
                )
                .await?;
                Ok((
                    format!(
                        "replicated to {}: {} chunks, {} indexes, {} manifests copied",
                        job.replicate_to,
                        report.chunks_copied,
                        report.indexes_copied,
                        report.manifests_copied
                    ),
                    Vec::new(),
                ))
            }
        };
        tokio::select! {
            result = work => result,
            _ = cancel.cancelled() => Err(WorkerError::Invalid("job cancelled".into())),
        }
    }

    /// Reports a finished prune, GC or replication job (fenced like a commit).
    async fn complete(
        &self,
        session: &Session,
        job: &v1::JobAssignment,
        summary: String,
        removed_snapshots: Vec<String>,
        fenced: &AtomicBool,
    ) -> Result<String> {
        let request = v1::CompleteJobRequest {
            worker: Some(session.identity.clone()),
            job_id: job.job_id.clone(),
            fencing_token: job.fencing_token,
            summary: summary.clone(),
            removed_snapshots,
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
            Err(status) => {
                if status.code() == Code::FailedPrecondition {
                    fenced.store(true, Ordering::SeqCst);
                }
                Err(WorkerError::Invalid(format!(
                    "completion refused by the coordinator: {}",
                    status.message()
                )))
            }
        }
    }

    async fn backup(
        &self,
        session: &Session,
        job: &v1::JobAssignment,
        progress: Arc<Progress>,
        cancel: &CancellationToken,
        fenced: Arc<AtomicBool>,
    ) -> Result<String> {
        let host = self
            .config
            .hosts
            .iter()
            .find(|host| host.name == job.host)
            .ok_or_else(|| {
                WorkerError::Invalid(format!("host {} is not reachable from here", job.host))
            })?;
        let repo = self.repository(&job.repository).await?;
        let publisher = Arc::new(FencedCommit {
            client: self.client.clone(),
            identity: session.identity.clone(),
            job_id: job.job_id.clone(),
            token: job.fencing_token,
            repository: job.repository.clone(),
            fenced,
        });
        if let Some(vm) = host.vm_endpoints().into_iter().find(|vm| vm.name == job.vm) {
            let request = QemuBackupRequest {
                vm: job.vm.clone(),
                qmp: vm.qmp,
                disks: Vec::new(),
                guest_agent: None,
                nbd_server: vm.nbd_server,
                scratch_dir: self.config.scratch_dir.clone(),
                connections: self.config.connections.clamp(1, 16),
                qmp_timeout: Duration::from_secs(30),
                freeze_timeout: Duration::from_secs(10),
                publisher,
                read_limit: self.read_limit.clone(),
            };
            let report = backup_qemu(repo, &request, progress, cancel.cancelled()).await?;
            return Ok(report.backup.snapshot);
        }
        let Some(uri) = &host.libvirt else {
            return Err(WorkerError::Invalid(format!(
                "VM {} on host {} is not reachable from here",
                job.vm, job.host
            )));
        };
        let request = LibvirtBackupRequest {
            vm: job.vm.clone(),
            domain: job.vm.clone(),
            uri: Some(uri.clone()),
            disks: Vec::new(),
            scratch_dir: self.config.scratch_dir.clone(),
            qemu_user: Some(host.qemu_user.clone()).filter(|user| !user.is_empty()),
            quiesce: false,
            connections: self.config.connections.clamp(1, 16),
            virsh_timeout: Duration::from_secs(60),
            publisher,
            read_limit: self.read_limit.clone(),
        };
        let report = backup_libvirt(repo, &request, progress, cancel.cancelled()).await?;
        Ok(report.backup.snapshot)
    }

    async fn report_progress(
        self: Arc<Self>,
        session: Session,
        job: v1::JobAssignment,
        progress: Arc<Progress>,
        cancel: CancellationToken,
        fenced: Arc<AtomicBool>,
    ) {
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let (done, total) = progress.snapshot();
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
                    return;
                }
                Ok(_) => {}
                Err(status) if status.code() == Code::FailedPrecondition => {
                    tracing::warn!(job = job.job_id, "fenced: {}", status.message());
                    fenced.store(true, Ordering::SeqCst);
                    cancel.cancel();
                    return;
                }
                Err(status) => tracing::debug!("progress report failed: {}", status.message()),
            }
        }
    }
}

/// A GC or prune job's pins: the repository's own backup leases plus what the
/// coordinator's job records say running backups build on (the etcd pins). Either
/// alone keeps running backups safe; both together also cover a backup that has not
/// written its lease yet.
struct ClusterPins {
    client: Arc<LeaderClient>,
    identity: v1::WorkerIdentity,
    repository: String,
}

impl PinSource for ClusterPins {
    fn pins<'a>(&'a self, repo: &'a Repository) -> BoxFuture<'a, haven_repo::Result<Pins>> {
        Box::pin(async move {
            let mut pins = RepositoryLeases.pins(repo).await?;
            let request = v1::ListPinsRequest {
                worker: Some(self.identity.clone()),
                repository: self.repository.clone(),
            };
            let reply = self
                .client
                .unary(
                    WorkerServiceClient::new,
                    request.clone(),
                    |mut c, r| async move { c.list_pins(r).await },
                )
                .await
                .map_err(|status| {
                    haven_repo::RepoError::Busy(format!(
                        "cannot learn the coordinator's pins: {}",
                        status.message()
                    ))
                })?;
            for base in &reply.bases {
                if let Some((vm, timestamp)) = base.split_once('@')
                    && let Ok(id) = SnapshotId::new(vm, timestamp)
                {
                    pins.bases.insert(id);
                }
            }
            if reply.oldest_start_unix_ms > 0 {
                let start = time::OffsetDateTime::from_unix_timestamp_nanos(
                    i128::from(reply.oldest_start_unix_ms) * 1_000_000,
                )
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
                pins.oldest_start = Some(pins.oldest_start.map_or(start, |s| s.min(start)));
            }
            pins.holders.extend(reply.holders);
            Ok(pins)
        })
    }
}

/// The cluster's [`ManifestPublisher`]: the coordinator's fenced commit.
#[derive(Debug)]
struct FencedCommit {
    client: Arc<LeaderClient>,
    identity: v1::WorkerIdentity,
    job_id: String,
    token: i64,
    repository: String,
    fenced: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl ManifestPublisher for FencedCommit {
    async fn publish(&self, repo: &Repository, manifest: &Manifest) -> Result<()> {
        let (id, blob) = repo.seal_manifest(manifest)?;
        let request = v1::CommitSnapshotRequest {
            worker: Some(self.identity.clone()),
            job_id: self.job_id.clone(),
            fencing_token: self.token,
            manifest_key: id.manifest_key(),
            manifest_blob: blob,
            snapshot: Some(v1::SnapshotInfo {
                vm: id.vm.clone(),
                timestamp: id.timestamp.clone(),
                repository: self.repository.clone(),
                disks: manifest
                    .disks
                    .iter()
                    .map(|disk| v1::Disk {
                        name: disk.name.clone(),
                        size_bytes: disk.size,
                    })
                    .collect(),
                bytes_uploaded: manifest.disks.iter().map(|d| d.stats.uploaded_bytes).sum(),
                job_id: self.job_id.clone(),
            }),
        };
        let reply = self
            .client
            .unary(
                WorkerServiceClient::new,
                request.clone(),
                |mut c, r| async move { c.commit_snapshot(r).await },
            )
            .await;
        match reply {
            Ok(_) => Ok(()),
            Err(status) => {
                if status.code() == Code::FailedPrecondition {
                    self.fenced.store(true, Ordering::SeqCst);
                }
                Err(WorkerError::Invalid(format!(
                    "commit refused by the coordinator: {}",
                    status.message()
                )))
            }
        }
    }
}
