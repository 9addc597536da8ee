//! Haven repository format v1.
//!
//! A repository is a set of objects on any object store (a local directory, S3, a Haven
//! storage node) that holds deduplicated, compressed and encrypted VM disk snapshots and
//! describes itself completely: with the password alone, any site holding a copy can
//! list and restore every snapshot. The format is specified in `docs/format.md`.
//!
//! Invariants the rest of Haven relies on:
//! - objects are written create-only; a chunk is never rewritten once stored;
//! - publish order is chunks, then index, then manifest, with a durability barrier
//!   before the index; the manifest is the commit point, so a crash at any moment leaves
//!   either a complete snapshot or none;
//! - every object read is checked (frame checksum, AEAD tag bound to the object's name,
//!   and for chunks the keyed digest) before any byte of it is used.
//!
//! # Layers
//!
//! Each folder is one layer, and imports only go downwards:
//!
//! - `ops/`: operations over a whole repository (verify and repair, replication,
//!   retention and prune, garbage collection, leases and locks, protection, key slots);
//! - `repository.rs`: [`Repository`], the format applied to a backend — open with a
//!   password, read and write checked chunks, indexes and manifests;
//! - `format/`: what the bytes mean (framing, encryption, keys, config, ids, indexes,
//!   manifests), with no I/O;
//! - `storage/`: where the bytes live ([`Backend`]: memory, local disk, S3, Haven storage
//!   node), which knows nothing of the format.
//!
//! `error.rs` and `progress.rs` are shared by every layer. Modules are private; what
//! other crates use is the list below, so moving code between files never changes a
//! caller.

#![warn(missing_docs)]

mod error;
mod format;
mod ops;
mod progress;
mod repository;
mod storage;

#[doc(hidden)]
pub mod fuzzing;

pub use error::{RepoError, Result, S3Refusal};
pub use progress::{Phase, Progress};
pub use repository::Repository;

// The format.
pub use format::blob::check_frame_only;
pub use format::chunk::{ChunkId, is_all_zero};
pub use format::config::{
    DEFAULT_CHUNK_SIZE, FORMAT_VERSION, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, RepoConfig,
};
pub use format::index::{FixedIndex, slot_count, slot_range};
pub use format::keyfile::{KeyLabel, MIN_ITERATIONS, MIN_MEMORY_KIB};
pub use format::manifest::{
    Consistency, DiskEntry, DiskStats, Manifest, SnapshotId, SnapshotRef, SourceInfo, VmConfig,
    format_timestamp, parse_timestamp, validate_name,
};

// Storage.
pub use storage::backend::{
    Backend, BackendKind, Durability, OpenOptions, PutOutcome, RebalanceReport,
};
pub use storage::local::LocalIo;
pub use storage::node_client::{
    BatchReader, Credentials, KEYS_PER_REQUEST, NodeClient, NodeClientError, crc32_etag,
    exists_batch,
};
pub use storage::s3::S3Credentials;

// Operations.
pub use ops::boot_record::{
    BOOT_RECORD_VERSION, BootEvidence, BootOutcome, BootRecord, latest_boot_record,
    read_boot_evidence, write_boot_record,
};
pub use ops::diff::{ChangedRange, changed_ranges};
pub use ops::gc::{
    DEFAULT_MARGIN, DEFAULT_SORT_MEMORY, GcOptions, GcPhase, GcReport, PhaseHook, collect_garbage,
};
pub use ops::keys::{KeySlot, PasswordChange, add_key, change_password, list_keys, remove_key};
pub use ops::lease::{
    BackupLease, GcLock, LockRecord, PinSource, Pins, RepositoryLeases, STALE_AFTER, live_records,
};
pub use ops::protect::{
    LockMode, ProtectReport, Protection, protect_snapshot, protected_snapshots, unprotect_snapshot,
};
pub use ops::prune::{ReplicaPruneReport, forget_snapshot, prune_replica, prune_snapshots};
pub use ops::repair::check_same_repository;
pub use ops::replicate::{
    ChunkTransfer, RateLimiter, ReplicateOptions, ReplicateReport, VmReplicationStatus,
    compare_snapshots, list_snapshot_ids, list_tombstone_ids, parse_rate, replicate,
    replication_status,
};
pub use ops::retention::{Decision, RetentionPolicy, plan_retention};
pub use ops::stats::{RepositoryStats, StatsBuilder, VmStats, repository_stats};
pub use ops::verify::{
    SnapshotVerdict, VerifyFailure, VerifyOptions, VerifyReport, verify_snapshots,
};
pub use ops::verify_record::{
    VerifyOutcome, VerifyRecord, latest_verify_record, write_verify_record,
};
