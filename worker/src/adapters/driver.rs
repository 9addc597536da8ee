//! The one backup driver: plan → base index → back up each disk → commit, the same for
//! every [`HypervisorAdapter`].
//!
//! The adapter is torn down whatever happened (committed, failed, cancelled), and told
//! which: a hypervisor keeps a snapshot's marker only if the snapshot was committed.
//! After a cancellation the teardown gets at most [`CANCELLED_CLEANUP_LIMIT`]: whoever
//! cancelled (Ctrl-C, SIGTERM, the coordinator) waits for it, but not forever on a
//! hypervisor that stopped answering; what is left then is for the next run to remove.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use haven_repo::{Consistency, FixedIndex, Manifest, Phase, Progress, RateLimiter, Repository};
use tracing::Instrument;

use super::HypervisorAdapter;
use super::chain::{BaseFacts, Previous, ReadMode};
use super::hooks::{LateHook, PointResult, SnapshotHooks, wait_late_hook};
use crate::error::{Result, WorkerError};
use crate::pipeline::backup::{DiskBackup, DiskBackupInput, backup_disk};
use crate::pipeline::snapshot::{
    BackupReport, CommittedDisk, ManifestPublisher, SnapshotMeta, base_index, commit_snapshot,
    plan_snapshot,
};

/// How long a cancelled backup waits for its teardown in the hypervisor (removing a
/// vSphere snapshot, ending a libvirt job, stopping QEMU's NBD export) before it gives
/// up and leaves that to the next run.
pub const CANCELLED_CLEANUP_LIMIT: Duration = Duration::from_secs(60);

/// How the pipeline reads the disks and where the snapshot goes.
pub struct DriverOptions<'a> {
    /// VM name the snapshot is filed under.
    pub vm: &'a str,
    /// Reads in flight per disk (NBD connections, or threads reading a raw image).
    pub connections: usize,
    /// Cap on bytes read per second (shared across a worker's jobs).
    pub read_limit: Option<Arc<RateLimiter>>,
    /// Where the manifest goes (the repository, or the coordinator's fenced commit).
    pub publisher: &'a dyn ManifestPublisher,
    /// The worker's commands around the snapshot point.
    pub hooks: &'a SnapshotHooks,
}

/// What a backup of a running VM takes whatever its hypervisor: the QEMU, libvirt and
/// vSphere requests embed it, so the CLI and the worker daemon fill it in one place and
/// the driver's options come from one conversion.
#[derive(Debug, Clone)]
pub struct LiveBackupOptions {
    /// VM name the snapshot is filed under.
    pub vm: String,
    /// Disks to back up, by the hypervisor's names for them; empty: every disk.
    pub disks: Vec<String>,
    /// Reads in flight per disk (NBD connections, or ranged HTTPS reads).
    pub connections: usize,
    /// Where the manifest goes (the repository, or the coordinator's fenced commit).
    pub publisher: Arc<dyn ManifestPublisher>,
    /// Cap on bytes read per second (shared across a worker's jobs).
    pub read_limit: Option<Arc<RateLimiter>>,
    /// Commands run on this machine before and after the snapshot point.
    pub hooks: SnapshotHooks,
}

impl LiveBackupOptions {
    /// Checks the VM name and makes the backup's private scratch folder in `dir`
    /// (named `prefix…`), removed when dropped: the first step of a backup that leaves
    /// files beside the hypervisor.
    pub(crate) fn start(&self, dir: &Path, prefix: &str) -> Result<tempfile::TempDir> {
        haven_repo::validate_name(&self.vm)?;
        scratch_folder(dir, prefix)
    }

    /// The driver's view of these options.
    pub(crate) fn driver(&self) -> DriverOptions<'_> {
        DriverOptions {
            vm: &self.vm,
            connections: self.connections,
            read_limit: self.read_limit.clone(),
            publisher: self.publisher.as_ref(),
            hooks: &self.hooks,
        }
    }
}

/// A committed snapshot and how its disks were read.
pub struct VmBackup {
    /// The common report.
    pub report: BackupReport,
    /// The committed manifest.
    pub manifest: Manifest,
    /// How each disk was read, in the adapter's order.
    pub modes: Vec<ReadMode>,
    /// Consistency recorded in the manifest.
    pub consistency: Consistency,
}

/// Backs up the disks `adapter` exports as one snapshot and commits it; `shutdown`
/// resolving (Ctrl-C, a cancelled job) cancels it. The adapter is torn down in every
/// case; a failed teardown after a commit is logged (the next backup retries it), after
/// a failure it is logged and the failure returned.
pub async fn back_up_vm(
    repo: &Arc<Repository>,
    adapter: &mut dyn HypervisorAdapter,
    options: &DriverOptions<'_>,
    progress: Arc<Progress>,
    shutdown: impl Future<Output = ()>,
) -> Result<VmBackup> {
    let started = Instant::now();
    let late_hook = LateHook::default();
    let outcome = tokio::select! {
        result = run(repo, &mut *adapter, options, progress, &late_hook) => result,
        () = shutdown => Err(WorkerError::Cancelled("backup")),
    };
    let cancelled = matches!(outcome, Err(WorkerError::Cancelled(_)));
    let cleanup = if cancelled {
        tokio::time::timeout(CANCELLED_CLEANUP_LIMIT, adapter.teardown(false))
            .await
            .unwrap_or_else(|_| {
                Err(WorkerError::Unreachable(format!(
                    "the hypervisor did not finish the clean-up within {} s",
                    CANCELLED_CLEANUP_LIMIT.as_secs()
                )))
            })
    } else {
        adapter.teardown(outcome.is_ok()).await
    };
    // After the teardown, which waits for a thaw the cancellation started; the post
    // hook is bounded by its own timeout.
    wait_late_hook(&late_hook).await;
    let kind = adapter.source().kind;
    match (outcome, cleanup) {
        (Ok((manifest, modes, consistency, warnings)), cleanup) => {
            if let Err(error) = cleanup {
                tracing::warn!(kind, error = %error.chain(), "snapshot committed, but cleanup in the hypervisor failed; the next backup retries it");
            }
            let mut report = BackupReport::new(&manifest, started.elapsed());
            report.warnings = warnings;
            Ok(VmBackup {
                report,
                manifest,
                modes,
                consistency,
            })
        }
        (Err(error), Err(cleanup)) if cancelled => {
            tracing::warn!(kind, error = %cleanup.chain(), "cleanup after the cancelled backup failed; the next backup retries it");
            Err(error)
        }
        (Err(error), Err(cleanup)) => {
            tracing::warn!(kind, error = %cleanup.chain(), "cleanup after a failed backup failed too");
            Err(error)
        }
        (Err(error), Ok(())) => Err(error),
    }
}

async fn run(
    repo: &Arc<Repository>,
    adapter: &mut dyn HypervisorAdapter,
    options: &DriverOptions<'_>,
    progress: Arc<Progress>,
    late_hook: &LateHook,
) -> Result<(Manifest, Vec<ReadMode>, Consistency, Vec<String>)> {
    adapter.prepare().await?;
    let plan = plan_snapshot(repo, options.vm).await?;
    let names = adapter.disks(&plan).await?;
    let mut bases = Vec::with_capacity(names.len());
    let mut modes = Vec::with_capacity(names.len());
    for (position, name) in names.iter().enumerate() {
        let base = base_index(repo, plan.previous.as_ref(), name).await;
        let chain = plan
            .previous
            .as_ref()
            .and_then(|manifest| manifest.disks.iter().find(|disk| disk.name == *name))
            .map(|disk| &disk.chain);
        let previous = Previous {
            chain,
            base: base.as_ref().map(BaseFacts::of),
            chunk_size: repo.chunk_size(),
        };
        let mode = match adapter.read_mode(position, &previous) {
            Some(mode) => {
                log_read_mode(name, &mode, plan.previous.is_none());
                mode
            }
            None => ReadMode::Full {
                reason: "the source does not track changes".into(),
            },
        };
        bases.push(base);
        modes.push(mode);
    }
    progress.set_phase(Phase::Snapshot);
    let snapshot = tracing::info_span!("snapshot", consistency = tracing::field::Empty);
    let (vm_config, point) = async {
        let vm_config = adapter.vm_config().await?;
        let point = hooked_snapshot_point(&mut *adapter, &modes, options, late_hook).await?;
        Ok::<_, WorkerError>((vm_config, point))
    }
    .instrument(snapshot.clone())
    .await?;
    let HookedPoint {
        consistency,
        reason,
        warnings,
    } = point;
    snapshot.record("consistency", tracing::field::debug(consistency));
    drop(snapshot);
    progress.set_phase(Phase::Read);
    let mut committed = Vec::with_capacity(names.len());
    for (position, (name, base)) in names.into_iter().zip(&bases).enumerate() {
        let read = tracing::info_span!(
            "read",
            disk = name,
            bytes_read = tracing::field::Empty,
            bytes_new = tracing::field::Empty,
            bytes_uploaded = tracing::field::Empty,
        );
        let backup = read_disk(
            &mut *adapter,
            position,
            base.as_ref(),
            repo,
            options,
            &progress,
        )
        .instrument(read.clone())
        .await?;
        read.record("bytes_read", backup.stats.bytes_read);
        read.record("bytes_new", backup.stats.new_bytes);
        read.record("bytes_uploaded", backup.stats.uploaded_bytes);
        committed.push(CommittedDisk {
            name,
            backup,
            chain: adapter.chain_entry(position),
        });
    }
    let meta = SnapshotMeta {
        source: adapter.source(),
        consistency,
        consistency_reason: reason,
        parent: plan
            .previous
            .as_ref()
            .map(|manifest| manifest.timestamp.clone()),
        vm_config,
    };
    progress.set_phase(Phase::Commit);
    let manifest = commit_snapshot(repo, &plan, committed, meta, options.publisher)
        .instrument(tracing::info_span!("commit"))
        .await?;
    Ok((manifest, modes, consistency, warnings))
}

/// The snapshot point as the driver records it.
struct HookedPoint {
    consistency: Consistency,
    /// Why it is less consistent than asked for.
    reason: Option<String>,
    /// Failures that do not change the snapshot (the post hook's).
    warnings: Vec<String>,
}

/// The adapter's snapshot point between the worker's hooks: the pre hook first (its
/// failure makes the snapshot crash-consistent, recorded with the reason), the post
/// hook after it on every path: also when it failed, and from a task of its own when
/// the backup is cancelled during it (left in `late_hook`, which the caller awaits).
async fn hooked_snapshot_point(
    adapter: &mut dyn HypervisorAdapter,
    modes: &[ReadMode],
    options: &DriverOptions<'_>,
    late_hook: &LateHook,
) -> Result<HookedPoint> {
    let pre_failed = options.hooks.pre(options.vm).await;
    let post = options.hooks.post_guard(options.vm, late_hook);
    let point = adapter.snapshot_point(modes).await;
    let result = match point {
        Ok(_) => PointResult::Ok,
        Err(_) => PointResult::Failed,
    };
    let warnings = post.run(result).await.into_iter().collect();
    let mut consistency = point?;
    let mut reason = adapter.consistency_reason();
    if let Some(failed) = pre_failed {
        consistency = Consistency::CrashConsistent;
        reason = Some(match reason {
            Some(adapter) => format!("{failed}; {adapter}"),
            None => failed,
        });
    }
    Ok(HookedPoint {
        consistency,
        reason,
        warnings,
    })
}

/// Backs up the disk at `position`: exported, read through the pipeline, and the
/// export ended whether the pipeline succeeded or not.
async fn read_disk(
    adapter: &mut dyn HypervisorAdapter,
    position: usize,
    base: Option<&FixedIndex>,
    repo: &Arc<Repository>,
    options: &DriverOptions<'_>,
    progress: &Arc<Progress>,
) -> Result<DiskBackup> {
    let (source, changes) = adapter.export(position).await?;
    let input = DiskBackupInput {
        source,
        parallel_reads: options.connections,
        base,
        changes,
        read_limit: options.read_limit.clone(),
    };
    let backup = backup_disk(repo.clone(), input, progress.clone()).await;
    adapter.end_export(position).await?;
    backup
}

/// Says how a disk is read: a full read after a previous snapshot is a fallback,
/// worth a warning with its reason.
fn log_read_mode(disk: &str, mode: &ReadMode, first_backup: bool) {
    match mode {
        ReadMode::Incremental { marker } => {
            tracing::info!(
                disk,
                marker,
                "incremental: reading only what changed since the marker"
            )
        }
        ReadMode::Full { reason } if first_backup => tracing::info!(disk, reason, "full read"),
        ReadMode::Full { reason } => {
            tracing::warn!(disk, reason, "falling back to a full read")
        }
    }
}

/// A private folder in `dir` for what one backup creates beside the hypervisor
/// (overlays, scratch files, sockets), removed when dropped.
fn scratch_folder(dir: &Path, prefix: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(dir)
        .map_err(WorkerError::io(format!(
            "cannot create a scratch folder in {}",
            dir.display()
        )))
}

/// A duration in milliseconds, as reports print it.
pub(crate) fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}
