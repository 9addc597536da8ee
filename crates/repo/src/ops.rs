//! Operations over whole repositories, built on [`crate::Repository`]: the changed
//! ranges of two snapshots, verify and repair, replication, retention, prune and forget, statistics, garbage collection with the leases and
//! locks that make it safe beside running backups, protected snapshots, and the
//! repository's key slots (one per password).
//!
//! Decisions that can be pure functions are (`retention::plan_retention`); the modules
//! around them do the listing, reading and deleting.

pub(crate) mod boot_record;
pub(crate) mod diff;
pub(crate) mod gc;
pub(crate) mod keys;
pub(crate) mod lease;
pub(crate) mod protect;
pub(crate) mod prune;
pub(crate) mod repair;
pub(crate) mod replicate;
pub(crate) mod retention;
pub(crate) mod stats;
pub(crate) mod verify;
pub(crate) mod verify_record;
