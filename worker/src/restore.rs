//! Restores: the data path run backwards (repository → disk, NBD target or hypervisor).
//!
//! [`file`] writes one disk to a raw file or a qcow2 image, [`nbd`] into a disk exported
//! over NBD, [`vm`] restores every disk of a snapshot and recreates the VM (a libvirt
//! domain, or the QEMU arguments that attach the disks), and [`snapshot_reader`] serves
//! random reads of a snapshot (instant recovery, file-level restore).

pub mod file;
pub mod nbd;
mod raw_file;
pub mod snapshot_device;
pub mod snapshot_reader;
pub mod vm;
mod windows;

pub use file::{RestoreFormat, RestoreReport, RestoreRequest, restore_disk};

/// Resolves `reference`, reads its manifest and the index of `disk` (which may be left
/// out for a one-disk snapshot): what every restore and the snapshot reader start from.
pub(crate) async fn open_disk(
    repo: &haven_repo::Repository,
    reference: &haven_repo::SnapshotRef,
    disk: Option<&str>,
) -> crate::error::Result<(
    haven_repo::SnapshotId,
    haven_repo::DiskEntry,
    haven_repo::FixedIndex,
)> {
    let id = repo.resolve(reference).await?;
    let manifest = repo.read_manifest(&id).await?;
    let entry = manifest
        .disk(disk)
        .map_err(crate::error::WorkerError::InvalidInput)?
        .clone();
    let index = repo.read_index(&entry).await?;
    Ok((id, entry, index))
}
