//! Haven worker: moves disk data between hypervisors and repositories.
//!
//! The folders follow the data path:
//!
//! ```text
//! adapters/ (image, qemu, libvirt) ──NBD or raw file──▶ pipeline/ ──▶ repository
//!                                                          restore/ ◀──┘
//! daemon/: the cluster worker that runs adapters for the coordinator
//! ```
//!
//! Every hypervisor adapter ends in an NBD export (or, for a local raw image, the file
//! itself), so there is one reader ([`pipeline::backup::backup_disk`]) and one writer
//! ([`restore::restore_disk`]) for all of them. Adapters only decide how a disk is
//! exported and what the snapshot records. Publishing follows the repository's one
//! rule (chunks, then indexes, then the manifest as the commit point) in
//! [`pipeline::snapshot::commit_snapshot`].

#![warn(missing_docs)]

pub mod adapters;
pub mod boot;
pub mod daemon;
mod error;
pub mod export;
#[doc(hidden)]
pub mod fuzzing;
pub mod pipeline;
pub mod restore;

pub use adapters::driver::{CANCELLED_CLEANUP_LIMIT, LiveBackupOptions};
pub use adapters::hooks::SnapshotHooks;
pub use adapters::image::{ImageBackupRequest, ImageDisk, ImageReader, backup_images};
pub use adapters::libvirt::{LibvirtBackupReport, LibvirtBackupRequest, backup_libvirt};
pub use adapters::qemu::{QemuBackupReport, QemuBackupRequest, backup_qemu};
pub use adapters::vsphere::{
    VsphereBackupReport, VsphereBackupRequest, VsphereDiskMode, backup_vsphere,
};
pub use daemon::{HostConfig, WorkerConfig, run_worker};
pub use error::{Result, WorkerError};
pub use pipeline::pool::{ClientPool, PooledClient};
pub use pipeline::snapshot::{BackupReport, DirectPublisher, DiskReport, ManifestPublisher};
pub use restore::snapshot_device::{SnapshotDevice, SnapshotExport};
pub use restore::snapshot_reader::{ReaderOptions, ReaderStats, SnapshotReader};
