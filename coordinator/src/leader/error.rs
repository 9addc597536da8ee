//! Why a leader operation fails, in the kinds the gRPC service maps to status codes.

use crate::store::StoreError;

/// Why a leader operation failed; mapped to gRPC codes by the service, so each variant
/// is a kind of answer a caller acts on differently.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// Leadership was lost: the caller should find the new leader.
    #[error("this replica no longer leads")]
    NotLeader,
    /// The store is unreachable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Unknown id.
    #[error("{0}")]
    NotFound(String),
    /// Malformed request.
    #[error("{0}")]
    Invalid(String),
    /// A worker id held by another live process.
    #[error("{0}")]
    AlreadyExists(String),
    /// A stale fencing token or a job in the wrong state.
    #[error("{0}")]
    Fenced(String),
    /// The repository could not be opened, or refused or failed the manifest's write
    /// or its read-back; kept typed so its cause chain survives.
    #[error("cannot publish the manifest: {0}")]
    Repository(#[from] haven_repo::RepoError),
    /// Another manifest already exists under the key: manifests are create-only, so
    /// it is never overwritten.
    #[error("cannot publish the manifest: {key} exists with other content")]
    ManifestConflict {
        /// The manifest's key in the repository.
        key: String,
    },
    /// The accepted manifest kept in the job record is not valid hex (the record was
    /// damaged in the store).
    #[error("cannot publish the manifest: stored manifest: {0}")]
    StoredManifest(#[source] hex::FromHexError),
    /// A record could not be encoded for the store; nothing was written.
    #[error("cannot encode a record: {0}")]
    Encode(#[from] serde_json::Error),
}
