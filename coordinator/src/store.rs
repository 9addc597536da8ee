//! The coordinator's metadata store: a small transactional key-value API that etcd
//! provides in a cluster and [`embedded::EmbeddedStore`] provides on one machine.
//!
//! Everything the coordinator keeps (workers, inventory, policies, jobs, ownership,
//! the snapshot catalog, the leader key) goes through this trait, so the single-machine
//! default and the cluster run the same scheduling and fencing code. The API is the
//! subset of etcd's that the fencing argument needs: per-key modification revisions,
//! compare-and-swap transactions over several keys, and leases that delete their keys
//! when they expire.

pub mod embedded;
pub mod etcd;
pub mod unreliable;

use std::time::Duration;

use async_trait::async_trait;

/// An etcd-style revision: a store-wide counter bumped by every write transaction.
pub type Revision = i64;

/// A lease id. Keys put under a lease vanish when it expires or is revoked.
pub type LeaseId = i64;

/// Errors of a metadata store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or lost quorum; the call may succeed later.
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
    /// The lease does not exist (expired or revoked).
    #[error("lease {0} not found (expired or revoked)")]
    LeaseNotFound(LeaseId),
    /// etcd refused Haven's credentials, or its role does not cover the key.
    #[error("etcd refused access (check [etcd_security] and the user's role): {0}")]
    Denied(String),
    /// The TLS settings or credentials of `[etcd_security]` cannot be used.
    #[error(transparent)]
    Credentials(#[from] etcd::CredentialsError),
    /// A request the store refused (too large, bad key).
    #[error("metadata store refused the request: {0}")]
    Invalid(String),
    /// The embedded store's file could not be read or written.
    #[error("embedded store {path}: {reason}")]
    Embedded {
        /// The database file.
        path: String,
        /// What failed.
        reason: String,
    },
}

/// Result of store calls.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A stored key with its value and the revision of its last modification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// Revision of the write that last changed the key: the fencing token of
    /// ownership keys.
    pub mod_revision: Revision,
    /// The lease the key lives under, 0 for none.
    pub lease: LeaseId,
}

/// A condition of a transaction.
#[derive(Debug, Clone)]
pub enum Compare {
    /// The key does not exist.
    Absent(String),
    /// The key exists and was last modified at this revision.
    ModRevision(String, Revision),
}

/// A write of a transaction.
#[derive(Debug, Clone)]
pub enum Op {
    /// Creates or replaces a key, optionally under a lease (0: none).
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Vec<u8>,
        /// Lease, 0 for none.
        lease: LeaseId,
    },
    /// Deletes a key (no error if absent).
    Delete(String),
}

impl Op {
    /// A put without lease.
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
        }
    }

    /// A put bound to `lease`.
    pub fn put_leased(key: impl Into<String>, value: impl Into<Vec<u8>>, lease: LeaseId) -> Self {
        Op::Put {
            key: key.into(),
            value: value.into(),
            lease,
        }
    }
}

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnOutcome {
    /// Every compare held and the writes were applied.
    pub succeeded: bool,
    /// The store's revision after the transaction: the `mod_revision` of every key it
    /// wrote when it succeeded.
    pub revision: Revision,
}

/// The transactional key-value API of the coordinator's state.
#[async_trait]
pub trait MetaStore: Send + Sync + 'static {
    /// Reads one key.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;

    /// Reads every key starting with `prefix`, in key order.
    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>>;

    /// Reads the keys from `start` (included) to `end` (excluded), in key order, at
    /// most `limit` (the first ones): a bounded read of a time-ordered log such as
    /// the audit trail, where `list` would read every record.
    async fn range(&self, start: &str, end: &str, limit: usize) -> Result<Vec<KeyValue>>;

    /// Applies `ops` atomically if every compare holds; nothing otherwise.
    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> Result<TxnOutcome>;

    /// Grants a lease that expires `ttl` after its last keep-alive.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId>;

    /// Renews a lease; [`StoreError::LeaseNotFound`] once it has expired.
    async fn keep_alive(&self, lease: LeaseId) -> Result<()>;

    /// Ends a lease now, deleting its keys.
    async fn revoke(&self, lease: LeaseId) -> Result<()>;

    /// Forgets the versions of keys older than the newest `keep` revisions and
    /// returns the revision compacted to, or `None` when there was nothing to do. A
    /// store that keeps every version (etcd) grows without bound otherwise; one that
    /// keeps only the current values (the embedded store) has nothing to forget.
    /// Compares see current values only, so fencing is unaffected.
    async fn compact_history(&self, keep: u64) -> Result<Option<Revision>> {
        let _ = keep;
        Ok(None)
    }

    /// Counters of requests made, for the scale benchmark and `/metrics`.
    fn stats(&self) -> StoreStats;
}

/// Requests a store has served since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Reads (get, list and range).
    pub reads: u64,
    /// Write transactions, successful or not.
    pub writes: u64,
    /// Lease grants, keep-alives and revokes.
    pub lease_calls: u64,
    /// Requests that failed: the store unreachable, timed out or refusing (etcd;
    /// the embedded store counts none). A missing lease is an answer, not an error.
    pub errors: u64,
}

/// Counts requests for [`MetaStore::stats`] without locking.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    reads: std::sync::atomic::AtomicU64,
    writes: std::sync::atomic::AtomicU64,
    lease_calls: std::sync::atomic::AtomicU64,
    errors: std::sync::atomic::AtomicU64,
}

impl Counters {
    pub(crate) fn read(&self) {
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn write(&self) {
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn lease(&self) {
        self.lease_calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts `result` if it is an error other than a missing lease, and returns it.
    pub(crate) fn outcome<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(error) = &result
            && !matches!(error, StoreError::LeaseNotFound(_))
        {
            self.errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    pub(crate) fn snapshot(&self) -> StoreStats {
        use std::sync::atomic::Ordering::Relaxed;
        StoreStats {
            reads: self.reads.load(Relaxed),
            writes: self.writes.load(Relaxed),
            lease_calls: self.lease_calls.load(Relaxed),
            errors: self.errors.load(Relaxed),
        }
    }
}
