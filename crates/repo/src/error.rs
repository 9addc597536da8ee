//! Errors of the repository layer.
//!
//! Callers branch on these: a missing object is not the same as a corrupt one, and a
//! wrong password is not the same as a repository of another version.

pub use crate::storage::s3_refusal::S3Refusal;

/// Everything that can go wrong while reading or writing a repository.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// The repository URL could not be understood.
    #[error("invalid repository url {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given by the user.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// There is no repository at this location (no `config` object).
    #[error("no haven repository at {0} (run `haven repo init` first)")]
    NotARepository(String),
    /// `repo init` found an existing repository.
    #[error("a repository already exists at {0}")]
    AlreadyInitialized(String),
    /// `repo init` found a store that ignores create-only writes (`If-None-Match: *`
    /// on S3): Haven publishes snapshots, indexes and the configuration create-only, so
    /// on such a store two writers could both "create" the same object and one of them
    /// would silently lose.
    #[error(
        "the store at {0} does not honour create-only writes (`If-None-Match: *`): a second create-only write of the same object succeeded. Haven needs them to publish backups safely; use a store that supports conditional writes (AWS S3, Ceph RGW, MinIO, a Haven storage node)"
    )]
    NoCreateOnlyWrites(String),
    /// The repository was written by a format version this build cannot read.
    #[error(
        "repository format version {found} is not supported (this haven reads version {supported})"
    )]
    UnsupportedVersion {
        /// Version found in the repository.
        found: u32,
        /// Version this build understands.
        supported: u32,
    },
    /// The password does not open the repository key.
    #[error("wrong password: the repository key could not be decrypted")]
    WrongPassword,
    /// A key file asks for less Argon2id work than Haven ever writes: it was not made
    /// by Haven, and a password typed into it would be cheap to guess offline.
    #[error(
        "key slot {key_id} uses Argon2id with {memory_kib} KiB memory and {iterations} passes, below the minimum {min_memory_kib} KiB and {min_iterations} passes: a weak key file planted in the repository?"
    )]
    WeakKeyFile {
        /// The key slot's id (`keys/ID`).
        key_id: String,
        /// Its memory cost.
        memory_kib: u32,
        /// Its number of passes.
        iterations: u32,
        /// The least memory accepted.
        min_memory_kib: u32,
        /// The fewest passes accepted.
        min_iterations: u32,
    },
    /// A key management request that would lock the repository or its user out.
    #[error("{0}")]
    KeyRefused(String),
    /// An object is absent.
    #[error("object {0} is missing")]
    NotFound(String),
    /// No committed snapshot matches `VM@TIME` or `VM@latest` (named as given): a
    /// question about the catalog, unlike [`RepoError::NotFound`], an object that
    /// should be there and is not.
    #[error("no snapshot {0} in the repository")]
    NoSuchSnapshot(String),
    /// An object exists but its content is not what it must be.
    #[error("object {key} is corrupt: {reason}")]
    Corrupt {
        /// Key of the object relative to the repository root.
        key: String,
        /// What check failed.
        reason: String,
    },
    /// A name given by the user is not usable as a VM, disk or snapshot name.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The offending name.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// An object that must be written only once already exists.
    #[error("object {0} already exists")]
    AlreadyExists(String),
    /// The storage backend failed. Said in one line: a refusal by an S3 server that
    /// the user must fix in their terms ([`S3Refusal`]), anything else with the
    /// backend's own text, which already holds every cause (so it is not a source
    /// to be printed again after it).
    #[error("{}", storage_message(key, bucket.as_deref(), error))]
    Storage {
        /// Key of the object relative to the repository root.
        key: String,
        /// The bucket of an `s3://` repository, named in refusals.
        bucket: Option<String>,
        /// The backend's error (boxed: it is large, and this error is returned
        /// everywhere).
        error: Box<object_store::Error>,
    },
    /// The storage refused the request because the access key lacks the permission
    /// (a storage node's `append` key deleting or overwriting), as opposed to Object
    /// Lock refusing a change to a protected object.
    #[error(
        "the storage access key may not change {key} (an append-only key creates objects but never deletes or overwrites them; prune, gc and repair need a key with access = \"delete\"): {source}"
    )]
    NotPermitted {
        /// Key of the object relative to the repository root.
        key: String,
        /// The backend's error, with the storage's own explanation (boxed: it is
        /// large and rare).
        #[source]
        source: Box<object_store::Error>,
    },
    /// A request to a storage node's extensions (a batch transfer) failed.
    #[error("storage node at {location}")]
    Node {
        /// The repository URL.
        location: String,
        /// The client's error.
        #[source]
        source: crate::storage::node_client::NodeClientError,
    },
    /// A local I/O operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An option given by the caller is out of range (for example a sample percentage).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A cryptographic primitive failed for a reason other than bad data.
    #[error("cryptography failure: {0}")]
    Crypto(&'static str),
    /// Another process holds what this one needs (a garbage collection lock), or this
    /// process could not keep its own lease fresh.
    #[error("repository busy: {0}")]
    Busy(String),
    /// A garbage collection removed chunks a running backup relied on; running the
    /// backup again stores them anew. Nothing committed is affected.
    #[error("a concurrent garbage collection removed chunks: {0}; run the backup again")]
    ConcurrentGc(String),
    /// The operation would remove or unprotect a protected snapshot.
    #[error("snapshot {0} is protected")]
    Protected(String),
}

impl RepoError {
    /// Whether retrying the same operation may succeed (network trouble), as opposed to
    /// a permanent condition such as corruption or a wrong password.
    pub fn is_retryable(&self) -> bool {
        match self {
            RepoError::Node { source, .. } => source.is_retryable(),
            RepoError::Storage { error, .. } => !matches!(
                **error,
                object_store::Error::NotFound { .. }
                    | object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. }
                    | object_store::Error::NotSupported { .. }
                    | object_store::Error::InvalidPath { .. }
                    | object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
            ),
            RepoError::Io { .. } | RepoError::Busy(_) | RepoError::ConcurrentGc(_) => true,
            _ => false,
        }
    }

    /// The refusal by an S3 server behind a storage error, if it is one the user
    /// must fix (a missing bucket, refused credentials, ...).
    pub fn s3_refusal(&self) -> Option<S3Refusal> {
        match self {
            RepoError::Storage {
                key,
                bucket: Some(bucket),
                error,
            } => S3Refusal::of(error, bucket, key),
            _ => None,
        }
    }

    pub(crate) fn corrupt(key: impl Into<String>, reason: impl Into<String>) -> Self {
        RepoError::Corrupt {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// The one line of a [`RepoError::Storage`].
fn storage_message(key: &str, bucket: Option<&str>, error: &object_store::Error) -> String {
    match bucket.and_then(|bucket| S3Refusal::of(error, bucket, key)) {
        Some(refusal) => refusal.to_string(),
        None => format!("storage error on {key}: {error}"),
    }
}

/// Result alias of this crate.
pub type Result<T, E = RepoError> = std::result::Result<T, E>;

/// The error of a blocking or spawned task that panicked or was cancelled: every
/// layer moves CPU and file work to such tasks, and each reports the failure the same way.
pub(crate) fn join_error(error: tokio::task::JoinError) -> RepoError {
    RepoError::Io {
        context: "worker task failed".into(),
        source: std::io::Error::other(error),
    }
}
