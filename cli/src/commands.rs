//! One module per verb.

pub mod admin;
pub mod backup;
pub mod backup_libvirt;
pub mod backup_qemu;
pub mod backup_vsphere;
pub mod catalog;
pub mod cluster;
pub mod dev;
pub mod diff;
pub mod files;
pub mod forget;
pub mod gc;
pub mod key;
pub mod live_backup;
pub mod manual;
pub mod protect;
pub mod prune;
pub mod replicate;
pub mod repo;
pub mod restore;
pub mod security;
pub mod serve_nbd;
pub mod snapshots;
pub mod stats;
pub mod verify;
