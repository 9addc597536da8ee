//! Restores: the data path run backwards (repository → disk, NBD target or hypervisor).
//!
//! [`file`] writes one disk to a raw file or a qcow2 image, [`nbd`] into a disk exported
//! over NBD, [`vm`] restores every disk of a snapshot and recreates the VM (a libvirt
//! domain, or the QEMU arguments that attach the disks), and [`snapshot_reader`] serves
//! random reads of a snapshot (instant recovery, file-level restore).

pub mod file;
pub mod nbd;
mod raw_file;
pub mod snapshot_reader;
pub mod vm;

pub use file::{RestoreFormat, RestoreReport, RestoreRequest, restore_disk};
