//! Errors of the worker's data paths.

use haven_nbd::NbdError;
use haven_repo::RepoError;

/// Why a backup or restore did not complete.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The repository refused or failed an operation.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// The disk could not be read or written over NBD.
    #[error("nbd: {0}")]
    Nbd(#[from] NbdError),
    /// A helper program (`qemu-nbd`, `qemu-img`) could not be run or failed.
    #[error("{program}: {message}")]
    Tool {
        /// The program.
        program: String,
        /// What went wrong, including its stderr when useful.
        message: String,
    },
    /// The request cannot be carried out as asked.
    #[error("{0}")]
    Invalid(String),
    /// A local file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl WorkerError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| WorkerError::Io { context, source }
    }

    pub(crate) fn join(error: tokio::task::JoinError) -> Self {
        WorkerError::Io {
            context: "pipeline task failed".into(),
            source: std::io::Error::other(error),
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = WorkerError> = std::result::Result<T, E>;
