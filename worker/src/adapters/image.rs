//! The image adapter: back up disk image files that nothing is writing to.
//!
//! Covers offline KVM disks and VMware/Hyper-V disks copied off their hosts (vmdk,
//! vhdx). A raw image is read in place ([`crate::pipeline::raw_image`]), and so is a
//! Hyper-V checkpoint (a differencing `.avhdx` with its parents,
//! [`crate::pipeline::vhdx`]), which QEMU cannot open; every other format is
//! exported read-only by `qemu-nbd`, which understands it, and read over NBD. Either way
//! the image is locked as QEMU locks images ([`crate::adapters::image::lock`]), so a running VM's
//! disk is refused and no VM starts on a disk being read. Without a dirty bitmap every
//! allocated block is read; the previous snapshot's index still spares the upload (and
//! the existence query) of every unchanged chunk.

pub mod lock;

use std::path::PathBuf;
use std::sync::Arc;

use haven_repo::{Consistency, Progress, Repository, SourceInfo};

use super::HypervisorAdapter;
use super::chain::ReadMode;
use super::driver::{DriverOptions, back_up_vm};
use super::hooks::SnapshotHooks;
use crate::error::{Result, WorkerError};
use crate::export::{Access, EXPORT_NAME, ImageExport, probe_format};
use crate::pipeline::backup::{ChangeSource, DiskSource};
use crate::pipeline::local_disk::LocalDisk;
use crate::pipeline::raw_image::RawImage;
use crate::pipeline::snapshot::{BackupReport, DirectPublisher, SnapshotPlan};
use crate::pipeline::vhdx;
use lock::LockedImage;

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
    /// for comparison or where reading in place is not wanted. A VHDX with a parent,
    /// which `qemu-nbd` cannot open, is still read by Haven.
    Nbd,
}

/// Backs up image files as one snapshot and commits it.
pub async fn backup_images(
    repo: Arc<Repository>,
    request: &ImageBackupRequest,
    progress: Arc<Progress>,
) -> Result<BackupReport> {
    let mut adapter = ImageAdapter {
        request,
        opened: Vec::new(),
        export: None,
    };
    let options = DriverOptions {
        vm: &request.vm,
        connections: request.connections,
        read_limit: None,
        publisher: &DirectPublisher,
        // An image file is not running: nothing to quiesce.
        hooks: &SnapshotHooks::default(),
    };
    let backup = back_up_vm(
        &repo,
        &mut adapter,
        &options,
        progress,
        std::future::pending(),
    )
    .await?;
    Ok(backup.report)
}

/// Image files as a [`HypervisorAdapter`]: nothing tracks changes, the snapshot point
/// is the moment every image is locked, and each image is exported (or read in place)
/// only while the pipeline reads it.
struct ImageAdapter<'a> {
    request: &'a ImageBackupRequest,
    /// Every image, locked, from the snapshot point until the adapter is dropped: a VM
    /// started between two disks would otherwise leave a snapshot of disks from
    /// different moments.
    opened: Vec<OpenedImage>,
    /// The `qemu-nbd` of the disk being read, if it is not read in place.
    export: Option<ImageExport>,
}

#[async_trait::async_trait]
impl HypervisorAdapter for ImageAdapter<'_> {
    fn source(&self) -> SourceInfo {
        let origins: Vec<String> = self
            .request
            .disks
            .iter()
            .map(|disk| disk.path.display().to_string())
            .collect();
        SourceInfo {
            kind: "image".into(),
            origin: origins.join(", "),
        }
    }

    async fn prepare(&mut self) -> Result<()> {
        let disks = &self.request.disks;
        if disks.is_empty() {
            return Err(WorkerError::InvalidInput("no disk to back up".into()));
        }
        for disk in disks {
            haven_repo::validate_name(&disk.name)?;
        }
        let mut names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        if names.len() != disks.len() {
            return Err(WorkerError::InvalidInput(
                "disk names must be unique".into(),
            ));
        }
        Ok(())
    }

    async fn disks(&mut self, _plan: &SnapshotPlan) -> Result<Vec<String>> {
        Ok(self.request.disks.iter().map(|d| d.name.clone()).collect())
    }

    async fn snapshot_point(&mut self, _modes: &[ReadMode]) -> Result<Consistency> {
        for disk in &self.request.disks {
            self.opened
                .push(open_image(disk, self.request.reader).await?);
        }
        Ok(Consistency::Offline)
    }

    async fn export(&mut self, position: usize) -> Result<(DiskSource, ChangeSource)> {
        let source = match &self.opened[position] {
            OpenedImage::InPlace(disk) => DiskSource::Local(disk.clone()),
            OpenedImage::ThroughNbd { format, .. } => {
                let export = ImageExport::start(
                    &self.request.disks[position].path,
                    format,
                    Access::ReadOnly,
                    self.request.connections + 1,
                )
                .await?;
                let source = DiskSource::Nbd {
                    endpoint: export.endpoint(),
                    export: EXPORT_NAME.into(),
                };
                self.export = Some(export);
                source
            }
        };
        Ok((source, ChangeSource::Full))
    }

    async fn end_export(&mut self, _position: usize) -> Result<()> {
        match self.export.take() {
            Some(export) => export.stop().await,
            None => Ok(()),
        }
    }

    async fn teardown(&mut self, _committed: bool) -> Result<()> {
        self.end_export(0).await?;
        self.opened.clear();
        Ok(())
    }
}

/// An image locked for reading, and how it will be read.
enum OpenedImage {
    /// A raw image or a VHDX checkpoint chain (every link locked), read in place.
    InPlace(Arc<dyn LocalDisk>),
    /// Any other format (or raw with [`ImageReader::Nbd`]): `qemu-nbd` exports it while
    /// Haven holds the lock.
    ThroughNbd { _lock: LockedImage, format: String },
}

/// An image file once locked: a VHDX checkpoint chain opened link by link, or any
/// other image, whose format is learnt next.
enum Locked {
    Chain(vhdx::VhdxChain),
    Image(LockedImage),
}

/// Locks `disk`, then learns its format (probed only once locked, so an image in use
/// gets Haven's message rather than `qemu-img`'s). A VHDX with a parent is recognised
/// before `qemu-img` is asked, which cannot open one.
async fn open_image(disk: &ImageDisk, reader: ImageReader) -> Result<OpenedImage> {
    let path = disk.path.clone();
    let may_be_vhdx = disk.format.as_deref().is_none_or(|format| format == "vhdx");
    // Locking and reading VHDX headers block, so they run off the async threads.
    let locked = tokio::task::spawn_blocking(move || -> Result<Locked> {
        let lock = LockedImage::open(&path)?;
        if may_be_vhdx && vhdx::is_differencing(&lock)? {
            return Ok(Locked::Chain(vhdx::open_chain(lock)?));
        }
        Ok(Locked::Image(lock))
    })
    .await
    .map_err(WorkerError::join)??;
    let lock = match locked {
        Locked::Image(lock) => lock,
        Locked::Chain(chain) => {
            tracing::info!(links = ?chain.names().collect::<Vec<_>>(), "reading a VHDX checkpoint chain");
            return Ok(OpenedImage::InPlace(Arc::new(chain)));
        }
    };
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
