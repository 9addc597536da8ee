//! What can go wrong talking to vSphere, in the user's terms.

use std::path::PathBuf;

/// An error of the vSphere client.
#[derive(Debug, thiserror::Error)]
pub enum VsphereError {
    /// The CA file cannot be read or holds no certificate.
    #[error("CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The request could not be sent or its reply not received (connection, TLS).
    #[error("{call}: cannot reach vSphere")]
    Http {
        /// The SOAP method or URL.
        call: String,
        /// The transport's error.
        #[source]
        source: reqwest::Error,
    },
    /// vSphere answered with an HTTP status that is not a SOAP reply.
    #[error("{call}: vSphere answered HTTP {status}")]
    Status {
        /// The SOAP method or URL.
        call: String,
        /// The HTTP status.
        status: u16,
    },
    /// vSphere refused the call with a SOAP fault.
    #[error("{call} refused: {fault}: {message}")]
    Fault {
        /// The SOAP method.
        call: String,
        /// The fault's type (`InvalidLogin`, `InvalidArgument`, ...).
        fault: String,
        /// vSphere's message.
        message: String,
    },
    /// A task ended in error.
    #[error("{task} failed: {fault}: {message}")]
    Task {
        /// The task (`CreateSnapshot_Task`, ...).
        task: String,
        /// The fault's type.
        fault: String,
        /// vSphere's message.
        message: String,
    },
    /// A task still running when Haven stopped waiting for it.
    #[error("{task} still running after {after:?}; Haven stopped waiting")]
    TaskTimeout {
        /// The task (`CreateSnapshot_Task`, ...).
        task: String,
        /// How long Haven waited.
        after: std::time::Duration,
    },
    /// The reply is not what the call returns (truncated, too large, wrong types).
    #[error("{call}: unusable reply: {reason}")]
    Reply {
        /// The SOAP method or URL.
        call: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Something asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request itself is wrong.
    #[error("{0}")]
    InvalidInput(String),
}

impl VsphereError {
    /// A [`VsphereError::Reply`] for `call`.
    pub(crate) fn reply(call: &str, reason: impl Into<String>) -> Self {
        Self::Reply {
            call: call.to_string(),
            reason: reason.into(),
        }
    }

    /// Whether trying again unchanged may succeed: transport failures, unusable replies
    /// and failed tasks may; a refused login, a missing VM or a bad request do not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Fault { fault, .. } => !matches!(
                fault.as_str(),
                "InvalidLogin" | "NoPermission" | "NotAuthenticated"
            ),
            Self::Http { .. }
            | Self::Status { .. }
            | Self::Task { .. }
            | Self::TaskTimeout { .. }
            | Self::Reply { .. } => true,
            Self::CaFile { .. } | Self::NotFound(_) | Self::InvalidInput(_) => false,
        }
    }

    /// Whether this is a SOAP fault of type `fault`.
    pub fn is_fault(&self, fault: &str) -> bool {
        matches!(self, Self::Fault { fault: f, .. } if f == fault)
    }
}

/// The client's result.
pub type Result<T, E = VsphereError> = std::result::Result<T, E>;
