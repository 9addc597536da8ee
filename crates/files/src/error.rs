//! Errors of file-level restore, shaped for one-line messages.

/// Why a file could not be listed or restored.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// Reading the disk failed (in Haven: a chunk missing or failing verification).
    #[error("reading the disk at offset {offset}: {source}")]
    Read {
        /// Byte offset on the disk.
        offset: u64,
        /// The device's error.
        #[source]
        source: std::io::Error,
    },
    /// The partition table is damaged.
    #[error("partition table: {0}")]
    PartitionTable(String),
    /// No supported file system was found.
    #[error("{0}")]
    Unsupported(String),
    /// The file system driver reported corrupt or unexpected structures.
    #[error("{fs} file system: {message}")]
    Driver {
        /// Which driver.
        fs: &'static str,
        /// Its message.
        message: String,
    },
    /// The path does not exist.
    #[error("{0}: no such file or directory")]
    NotFound(String),
    /// The path names something of the wrong type.
    #[error("{path}: {message}")]
    WrongType {
        /// The path.
        path: String,
        /// What was expected.
        message: &'static str,
    },
    /// A walk or a file exceeded a safety bound (loop, hostile sizes).
    #[error("{0}")]
    Limit(String),
    /// Writing the restored files failed.
    #[error("{context}: {source}")]
    Output {
        /// What was being written.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl FilesError {
    /// A file system driver's complaint about `path`.
    pub(crate) fn driver(fs: &'static str, path: &str, complaint: impl std::fmt::Display) -> Self {
        FilesError::Driver {
            fs,
            message: format!("{path}: {complaint}"),
        }
    }

    /// `path` was used as a directory but is something else.
    pub(crate) fn not_a_directory(path: &str) -> Self {
        FilesError::WrongType {
            path: path.to_string(),
            message: "not a directory",
        }
    }

    pub(crate) fn output(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| FilesError::Output { context, source }
    }
}

/// Result alias of this crate.
pub type Result<T, E = FilesError> = std::result::Result<T, E>;
