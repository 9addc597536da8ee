//! The image adapter: back up disk image files that nothing is writing to.
//!
//! Covers offline KVM disks and VMware/Hyper-V disks copied off their hosts (vmdk,
//! vhdx): `qemu-nbd` exports each file read-only and the common pipeline reads it.
//! Without a dirty bitmap every allocated block is read; the previous snapshot's index
//! still spares the upload (and the existence query) of every unchanged chunk.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use haven_repo::{Consistency, Progress, Repository, SourceInfo};

use crate::backup::{ChangeSource, DiskBackupInput, backup_disk};
use crate::error::{Result, WorkerError};
use crate::export::{Access, EXPORT_NAME, ImageExport};
use crate::snapshot::{
    BackupReport, CommittedDisk, SnapshotMeta, base_index, commit_snapshot, plan_snapshot,
};

/// One image file and the disk name it is stored under.
#[derive(Debug, Clone)]
pub struct ImageDisk {
    /// Path of the image file.
    pub path: PathBuf,
    /// Disk name in the snapshot (for example `vda`).
    pub name: String,
    /// Image format; probed when `None`.
    pub format: Option<String>,
}

/// A backup of a VM made of image files.
#[derive(Debug, Clone)]
pub struct ImageBackupRequest {
    /// VM name.
    pub vm: String,
    /// Its disks, in order.
    pub disks: Vec<ImageDisk>,
    /// Parallel NBD connections per disk.
    pub connections: usize,
}

/// Backs up image files as one snapshot and commits it.
pub async fn backup_images(
    repo: Arc<Repository>,
    request: &ImageBackupRequest,
    progress: Arc<Progress>,
) -> Result<BackupReport> {
    let started = Instant::now();
    if request.disks.is_empty() {
        return Err(WorkerError::Invalid("no disk to back up".into()));
    }
    for disk in &request.disks {
        haven_repo::validate_name(&disk.name)?;
    }
    let mut names: Vec<&str> = request.disks.iter().map(|d| d.name.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    if names.len() != request.disks.len() {
        return Err(WorkerError::Invalid("disk names must be unique".into()));
    }

    let plan = plan_snapshot(&repo, &request.vm).await?;
    let mut committed = Vec::with_capacity(request.disks.len());
    let mut origins = Vec::new();
    for disk in &request.disks {
        let base = base_index(&repo, plan.previous.as_ref(), &disk.name).await;
        let export = ImageExport::start(
            &disk.path,
            disk.format.as_deref(),
            Access::ReadOnly,
            request.connections + 1,
        )
        .await?;
        let input = DiskBackupInput {
            read_limit: None,
            endpoint: export.endpoint(),
            export: EXPORT_NAME.into(),
            connections: request.connections,
            base: base.as_ref(),
            changes: ChangeSource::Full,
        };
        let backup = backup_disk(repo.clone(), input, progress.clone()).await;
        export.stop().await?;
        committed.push(CommittedDisk {
            name: disk.name.clone(),
            backup: backup?,
            chain: Default::default(),
        });
        origins.push(disk.path.display().to_string());
    }
    let meta = SnapshotMeta {
        source: SourceInfo {
            kind: "image".into(),
            origin: origins.join(", "),
        },
        consistency: Consistency::Offline,
        parent: plan.previous.as_ref().map(|m| m.timestamp.clone()),
        vm_config: None,
    };
    let manifest = commit_snapshot(
        &repo,
        &plan,
        committed,
        meta,
        &crate::snapshot::DirectPublisher,
    )
    .await?;
    Ok(BackupReport::new(&manifest, started.elapsed()))
}
