//! The image adapter: back up disk image files that nothing is writing to.
//!
//! Covers offline KVM disks and VMware/Hyper-V disks copied off their hosts (vmdk,
//! vhdx). A raw image is read in place ([`crate::raw_image`]); every other format is
//! exported read-only by `qemu-nbd`, which understands it, and read over NBD. Either way
//! the image is locked as QEMU locks images ([`crate::image_lock`]), so a running VM's
//! disk is refused and no VM starts on a disk being read. Without a dirty bitmap every
//! allocated block is read; the previous snapshot's index still spares the upload (and
//! the existence query) of every unchanged chunk.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use haven_repo::{Consistency, Progress, Repository, SourceInfo};

use crate::backup::{ChangeSource, DiskBackupInput, DiskSource, backup_disk};
use crate::error::{Result, WorkerError};
use crate::export::{Access, EXPORT_NAME, ImageExport, probe_format};
use crate::image_lock::LockedImage;
use crate::raw_image::RawImage;
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
    /// Reads in flight per disk (NBD connections, or threads reading a raw image).
    pub connections: usize,
    /// How images are read.
    pub reader: ImageReader,
}

/// How image files are read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ImageReader {
    /// Raw images in place, every other format through `qemu-nbd`.
    #[default]
    Auto,
    /// Every format through `qemu-nbd`, raw included: the one path for all formats,
    /// for comparison or where reading in place is not wanted.
    Nbd,
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
    // Every disk is locked before any is read, and stays locked until the snapshot is
    // committed: a VM started between two disks would otherwise leave a snapshot of
    // disks from different moments.
    let mut opened = Vec::with_capacity(request.disks.len());
    for disk in &request.disks {
        opened.push(open_image(disk, request.reader).await?);
    }
    let mut committed = Vec::with_capacity(request.disks.len());
    let mut origins = Vec::new();
    for (disk, image) in request.disks.iter().zip(&opened) {
        let base = base_index(&repo, plan.previous.as_ref(), &disk.name).await;
        let backup = match image {
            OpenedImage::InPlace(image) => {
                let source = DiskSource::RawImage(image.clone());
                let input = image_input(source, request, base.as_ref());
                backup_disk(repo.clone(), input, progress.clone()).await?
            }
            OpenedImage::ThroughNbd { format, .. } => {
                let export = ImageExport::start(
                    &disk.path,
                    format,
                    Access::ReadOnly,
                    request.connections + 1,
                )
                .await?;
                let source = DiskSource::Nbd {
                    endpoint: export.endpoint(),
                    export: EXPORT_NAME.into(),
                };
                let input = image_input(source, request, base.as_ref());
                let backup = backup_disk(repo.clone(), input, progress.clone()).await;
                export.stop().await?;
                backup?
            }
        };
        committed.push(CommittedDisk {
            name: disk.name.clone(),
            backup,
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

/// An image locked for reading, and how it will be read.
enum OpenedImage {
    /// A raw image, read in place.
    InPlace(Arc<RawImage>),
    /// Any other format (or raw with [`ImageReader::Nbd`]): `qemu-nbd` exports it while
    /// Haven holds the lock.
    ThroughNbd { _lock: LockedImage, format: String },
}

/// Locks `disk`, then learns its format (probed only once locked, so an image in use
/// gets Haven's message rather than `qemu-img`'s).
async fn open_image(disk: &ImageDisk, reader: ImageReader) -> Result<OpenedImage> {
    let lock = LockedImage::open(&disk.path)?;
    let format = match &disk.format {
        Some(format) => format.clone(),
        None => probe_format(&disk.path).await?,
    };
    Ok(if format == "raw" && reader == ImageReader::Auto {
        OpenedImage::InPlace(Arc::new(RawImage::new(lock)?))
    } else {
        OpenedImage::ThroughNbd {
            _lock: lock,
            format,
        }
    })
}

/// The pipeline's input for one image: a full read, deduplicated against `base`.
fn image_input<'a>(
    source: DiskSource,
    request: &ImageBackupRequest,
    base: Option<&'a haven_repo::FixedIndex>,
) -> DiskBackupInput<'a> {
    DiskBackupInput {
        source,
        parallel_reads: request.connections,
        base,
        changes: ChangeSource::Full,
        read_limit: None,
    }
}
