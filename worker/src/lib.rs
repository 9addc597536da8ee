//! Haven worker: moves disk data between hypervisors and repositories.
//!
//! Every hypervisor adapter ends in an NBD export (or, for a local raw image, the file
//! itself), so there is one reader ([`backup::backup_disk`]) and one writer
//! ([`restore::restore_disk`]) for all of them.
//! Adapters only decide how a disk is exported and what the snapshot records:
//! - [`image`]: offline image files: raw ones read in place ([`raw_image`]), others
//!   through `qemu-nbd`; either way locked against running VMs ([`image_lock`]).
//! - [`qemu`]: running QEMU / qemu-storage-daemon through [`qmp`] (fleecing, dirty bitmaps).
//! - [`libvirt`]: libvirt domains through `virsh` (checkpoints, pull-mode backups).
//!
//! Restores go the other way: [`restore`] writes raw, qcow2 or into an NBD disk,
//! [`snapshot_reader`] serves random reads (instant recovery, file-level restore), and
//! `restore_vm` recreates a libvirt domain or prints how to attach disks to QEMU.
//!
//! Publishing follows the repository's one rule (chunks, then indexes, then the
//! manifest as the commit point) in [`snapshot::commit_snapshot`].

pub mod backup;
pub mod daemon;
mod error;
pub mod export;
pub mod image;
pub mod image_lock;
pub mod libvirt;
mod marker;
mod pool;
pub mod qemu;
pub mod qmp;
mod raw_file;
pub mod raw_image;
pub mod restore;
pub mod restore_vm;
pub mod snapshot;
pub mod snapshot_reader;

pub use error::{Result, WorkerError};
pub use pool::{ClientPool, PooledClient};
