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

mod backend;
mod blob;
mod chunk;
mod config;
mod crypto;
mod error;
mod exists_batcher;
mod gc;
mod index;
mod keyfile;
mod lease;
mod local_direct;
mod local_sync;
mod manifest;
mod node_client;
mod progress;
mod protect;
mod prune;
mod repair;
mod replicate;
mod repository;
mod retention;
mod verify;
mod verify_record;

pub use backend::{Backend, Durability, PutOutcome, S3Credentials};
pub use blob::check_frame_only;
pub use chunk::{ChunkId, is_all_zero};
pub use config::{DEFAULT_CHUNK_SIZE, FORMAT_VERSION, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, RepoConfig};
pub use error::{RepoError, Result};
pub use gc::{
    DEFAULT_MARGIN, DEFAULT_SORT_MEMORY, GcOptions, GcPhase, GcReport, PhaseHook, collect_garbage,
};
pub use index::{FixedIndex, slot_count, slot_range};
pub use lease::{
    BackupLease, GcLock, LockRecord, PinSource, Pins, RepositoryLeases, STALE_AFTER, live_records,
};
pub use manifest::{
    Consistency, DiskEntry, DiskStats, Manifest, SnapshotId, SnapshotRef, SourceInfo, VmConfig,
    format_timestamp, parse_timestamp, validate_name,
};
pub use node_client::{
    BatchReader, Credentials, KEYS_PER_REQUEST, NodeClient, NodeClientError, exists_batch,
};
pub use progress::Progress;
pub use protect::{
    LockMode, ProtectReport, Protection, protect_snapshot, protected_snapshots, unprotect_snapshot,
};
pub use prune::prune_snapshots;
pub use repair::check_same_repository;
pub use replicate::{
    ChunkTransfer, RateLimiter, ReplicateOptions, ReplicateReport, VmReplicationStatus,
    compare_snapshots, list_snapshot_ids, parse_rate, replicate, replication_status,
};
pub use repository::Repository;
pub use retention::{Decision, RetentionPolicy, plan_retention};
pub use verify::{SnapshotVerdict, VerifyFailure, VerifyOptions, VerifyReport, verify_snapshots};
pub use verify_record::{VerifyOutcome, VerifyRecord, latest_verify_record, write_verify_record};
