//! Choosing a snapshot's name and base, and committing it.
//!
//! Shared by every adapter (image files, live QEMU, libvirt): they differ in how disks
//! are exported, not in how a snapshot is published.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use haven_repo::{
    BackupLease, Consistency, DiskEntry, DiskStats, FixedIndex, Manifest, RepoError, Repository,
    SnapshotId, SourceInfo, VmConfig,
};
use serde::Serialize;
use time::OffsetDateTime;

use crate::error::{Result, WorkerError};
use crate::pipeline::backup::DiskBackup;

/// The name of the snapshot being taken and the snapshot it builds on.
#[derive(Debug)]
pub struct SnapshotPlan {
    /// Id the manifest will have.
    pub id: SnapshotId,
    /// The newest committed snapshot of the VM, if it could be read.
    pub previous: Option<Manifest>,
    /// This backup's lease in the repository: pins the base against garbage collection
    /// and tells a collection that a backup is running (see `haven_repo::BackupLease`).
    pub lease: BackupLease,
}

/// Picks a timestamp (now, or one second after the newest snapshot if the clock has
/// not moved past it), takes the backup's lease naming the newest snapshot as base, and
/// loads that snapshot. The lease comes first: nothing may be read from the repository
/// to be reused before it is written.
pub async fn plan_snapshot(repo: &Repository, vm: &str) -> Result<SnapshotPlan> {
    let existing = repo.list_snapshots(Some(vm)).await?;
    let mut time = OffsetDateTime::now_utc();
    if let Some(latest) = existing.last() {
        let after_latest = latest.time() + Duration::from_secs(1);
        if time < after_latest {
            time = after_latest;
        }
    }
    let id = SnapshotId::at(vm, time)?;
    let base = existing.last().map(|latest| latest.timestamp.as_str());
    let lease = BackupLease::acquire(repo.backend(), vm, base).await?;
    let previous = match existing.last() {
        None => None,
        Some(latest) if !trusted_as_base(repo, latest).await => None,
        Some(latest) => match repo.read_manifest(latest).await {
            Ok(manifest) => Some(manifest),
            Err(error) => {
                tracing::warn!(snapshot = %latest, %error, "previous snapshot unreadable; not using it as a base");
                None
            }
        },
    };
    Ok(SnapshotPlan {
        id,
        previous,
        lease,
    })
}

/// Whether the latest verify record of `snapshot` allows building on it: a snapshot that
/// failed verification (or whose record cannot be read) is never a base, so the next
/// backup reads the whole disk instead of trusting chunk ids that may be bad.
async fn trusted_as_base(repo: &Repository, snapshot: &SnapshotId) -> bool {
    match haven_repo::latest_verify_record(repo, snapshot).await {
        Ok(None) => true,
        Ok(Some(record)) if !record.is_failed() => true,
        Ok(Some(record)) => {
            tracing::warn!(
                snapshot = %snapshot,
                verified_at = %record.verified_at,
                failures = record.failures_total,
                "previous snapshot failed verification; not using it as a base (full read)"
            );
            false
        }
        Err(error) => {
            tracing::warn!(snapshot = %snapshot, %error, "verify record of the previous snapshot unreadable; not using it as a base (full read)");
            false
        }
    }
}

/// The index of disk `name` in the previous snapshot, when it exists and reads back
/// intact; any problem means "no base", never a wrong base.
pub async fn base_index(
    repo: &Repository,
    previous: Option<&Manifest>,
    name: &str,
) -> Option<FixedIndex> {
    let manifest = previous?;
    let entry = manifest.disks.iter().find(|disk| disk.name == name)?;
    match repo.read_index(entry).await {
        Ok(index) => Some(index),
        Err(error) => {
            tracing::warn!(disk = name, %error, "previous index unreadable; not using it as a base");
            None
        }
    }
}

/// One disk ready to be committed.
pub struct CommittedDisk {
    /// Disk name.
    pub name: String,
    /// What the pipeline produced.
    pub backup: DiskBackup,
    /// Adapter state for the next incremental.
    pub chain: BTreeMap<String, String>,
}

/// Everything about a snapshot except its disks.
pub struct SnapshotMeta {
    /// Where the data came from.
    pub source: SourceInfo,
    /// Consistency of the data.
    pub consistency: Consistency,
    /// Why it is less consistent than asked for, if it is.
    pub consistency_reason: Option<String>,
    /// The base snapshot, if the disks were read incrementally or deduplicated against it.
    pub parent: Option<String>,
    /// Hypervisor configuration of the VM.
    pub vm_config: Option<VmConfig>,
}

/// Where a finished snapshot's manifest goes.
///
/// On one machine the worker writes it into the repository itself ([`DirectPublisher`]);
/// in a cluster it hands the sealed manifest to the coordinator, which accepts it only
/// while the worker still owns the job (the fenced commit) and then writes it.
#[async_trait::async_trait]
pub trait ManifestPublisher: Send + Sync + std::fmt::Debug {
    /// Publishes `manifest`; fails if the snapshot must not exist.
    async fn publish(&self, repo: &Repository, manifest: &Manifest) -> Result<()>;
}

/// Writes the manifest straight into the repository, create-only.
#[derive(Debug, Clone, Copy, Default)]
pub struct DirectPublisher;

#[async_trait::async_trait]
impl ManifestPublisher for DirectPublisher {
    async fn publish(&self, repo: &Repository, manifest: &Manifest) -> Result<()> {
        match repo.commit_manifest(manifest).await {
            Ok(_) => Ok(()),
            Err(RepoError::AlreadyExists(key)) => Err(WorkerError::AlreadyCommitted(key)),
            Err(error) => Err(error.into()),
        }
    }
}

/// Publishes a snapshot in the one safe order: chunks made durable, then the indexes,
/// then the lease's check that no concurrent garbage collection removed a chunk they
/// name, then the manifest (create-only: the commit point) through `publisher`; the
/// lease is released last.
pub async fn commit_snapshot(
    repo: &Arc<Repository>,
    plan: &SnapshotPlan,
    disks: Vec<CommittedDisk>,
    meta: SnapshotMeta,
    publisher: &dyn ManifestPublisher,
) -> Result<Manifest> {
    let id = &plan.id;
    repo.barrier().await?;
    let mut written = Vec::with_capacity(disks.len());
    for disk in &disks {
        written.push(repo.write_index(id, &disk.name, &disk.backup.index).await?);
    }
    let indexes: Vec<&FixedIndex> = disks.iter().map(|disk| &disk.backup.index).collect();
    plan.lease.confirm_chunks(repo, &indexes).await?;
    let mut entries = Vec::with_capacity(disks.len());
    for (disk, (index_key, index_digest)) in disks.into_iter().zip(written) {
        entries.push(DiskEntry {
            name: disk.name,
            size: disk.backup.index.disk_size(),
            chunk_size: disk.backup.index.chunk_size(),
            index: index_key,
            index_digest,
            stats: disk.backup.stats,
            chain: disk.chain,
        });
    }
    let manifest = Manifest {
        version: haven_repo::FORMAT_VERSION,
        vm: id.vm.clone(),
        timestamp: id.timestamp.clone(),
        created_by: format!("haven {}", env!("CARGO_PKG_VERSION")),
        source: meta.source,
        consistency: meta.consistency,
        consistency_reason: meta.consistency_reason,
        parent: meta.parent,
        disks: entries,
        vm_config: meta.vm_config,
        labels: BTreeMap::new(),
    };
    publisher.publish(repo, &manifest).await?;
    if let Err(error) = plan.lease.release().await {
        tracing::warn!(%error, "cannot remove the backup's lease; it expires by age");
    }
    Ok(manifest)
}

/// A machine-readable summary of a finished backup.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    /// `VM@TIME` of the new snapshot.
    pub snapshot: String,
    /// The base snapshot, if any.
    pub parent: Option<String>,
    /// Per-disk figures.
    pub disks: Vec<DiskReport>,
    /// Wall-clock seconds.
    pub elapsed_seconds: f64,
    /// What went wrong without failing the backup (a post-snapshot hook that failed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Figures of one disk.
#[derive(Debug, Clone, Serialize)]
pub struct DiskReport {
    /// Disk name.
    pub name: String,
    /// Disk size in bytes.
    pub size: u64,
    /// Pipeline counters.
    #[serde(flatten)]
    pub stats: DiskStats,
}

impl BackupReport {
    /// Builds the report of a committed manifest.
    pub fn new(manifest: &Manifest, elapsed: Duration) -> Self {
        Self {
            snapshot: format!("{}@{}", manifest.vm, manifest.timestamp),
            parent: manifest.parent.clone(),
            disks: manifest
                .disks
                .iter()
                .map(|disk| DiskReport {
                    name: disk.name.clone(),
                    size: disk.size,
                    stats: disk.stats.clone(),
                })
                .collect(),
            elapsed_seconds: elapsed.as_secs_f64(),
            warnings: Vec::new(),
        }
    }
}
