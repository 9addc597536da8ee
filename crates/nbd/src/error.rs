//! The one error type of the crate, shaped so callers can branch on it.

use std::time::Duration;

use crate::wire;

/// Everything that can go wrong while talking to an NBD server.
///
/// Callers branch on it: a [`NbdError::Server`] error leaves the connection
/// usable, everything that breaks framing (I/O, timeout, protocol violation)
/// poisons the [`crate::Client`], and [`NbdError::is_retryable`] tells a
/// worker whether opening a fresh connection may help.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    /// The socket failed (connect, read or write).
    #[error("nbd i/o error: {0}")]
    Io(#[from] std::io::Error),

    /// The TLS handshake with a client failed (no certificate, one from another CA,
    /// or bytes that are not TLS).
    #[error("nbd tls handshake failed: {0}")]
    TlsHandshake(std::io::Error),

    /// The server closed the connection in the middle of a message.
    #[error("nbd server closed the connection")]
    Closed,

    /// A handshake step or a request did not finish within the configured timeout.
    #[error("nbd {operation} timed out after {after:?}")]
    Timeout {
        /// What was being done when the timeout hit.
        operation: &'static str,
        /// The configured timeout.
        after: Duration,
    },

    /// The server sent something the protocol does not allow; the connection is unusable.
    #[error("nbd protocol violation: {0}")]
    Protocol(String),

    /// The server answered a request with an error (the connection stays usable).
    #[error("nbd server error {errno} ({}): {message}", wire::errno_name(*errno))]
    Server {
        /// The NBD error value (a subset of POSIX errno values).
        errno: u32,
        /// The message from a structured error chunk, empty for simple replies.
        message: String,
    },

    /// The server refused a handshake option the client needs.
    #[error("nbd server rejected {option} with {} ({code:#x}): {message}", wire::option_error_name(*code))]
    OptionRejected {
        /// The option that was rejected, e.g. `NBD_OPT_GO`.
        option: &'static str,
        /// The `NBD_REP_ERR_*` reply type.
        code: u32,
        /// The optional message the server attached.
        message: String,
    },

    /// The server does not know the export that was asked for.
    #[error("nbd export {export:?} does not exist on the server: {message}")]
    UnknownExport {
        /// The export name that was requested.
        export: String,
        /// The optional message the server attached.
        message: String,
    },

    /// The server lacks a protocol feature this client requires.
    #[error("nbd server does not support {0}")]
    Unsupported(String),

    /// An `nbd://` or `nbd+unix://` URI could not be understood.
    #[error("invalid nbd uri: {0}")]
    InvalidUri(String),

    /// The caller asked for something impossible (range outside the export, name too long, ...).
    #[error("invalid nbd request: {0}")]
    InvalidArgument(String),

    /// A write was attempted on an export the server marked read-only.
    #[error("nbd export is read-only")]
    ReadOnly,

    /// Block status was asked for a metadata context the server did not grant.
    #[error("nbd meta context {0:?} was not negotiated")]
    MetaContextNotNegotiated(String),

    /// An earlier failure left the connection in an unknown state; open a new client.
    #[error("nbd connection is unusable after an earlier failure")]
    ConnectionBroken,
}

impl NbdError {
    /// Whether retrying the operation on a fresh connection may succeed.
    ///
    /// Transport failures and a server that is shutting down are transient;
    /// protocol violations, rejected options and most server errors are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            NbdError::Io(_)
            | NbdError::Closed
            | NbdError::Timeout { .. }
            | NbdError::ConnectionBroken => true,
            NbdError::Server { errno, .. } => {
                matches!(*errno, wire::ENOMEM | wire::ESHUTDOWN | wire::EAGAIN)
            }
            NbdError::OptionRejected { code, .. } => *code == wire::REP_ERR_SHUTDOWN,
            NbdError::Protocol(_)
            | NbdError::TlsHandshake(_)
            | NbdError::UnknownExport { .. }
            | NbdError::Unsupported(_)
            | NbdError::InvalidUri(_)
            | NbdError::InvalidArgument(_)
            | NbdError::ReadOnly
            | NbdError::MetaContextNotNegotiated(_) => false,
        }
    }

    /// Whether this error leaves the byte stream in an unknown state.
    pub(crate) fn breaks_connection(&self) -> bool {
        matches!(
            self,
            NbdError::Io(_)
                | NbdError::Closed
                | NbdError::Timeout { .. }
                | NbdError::Protocol(_)
                | NbdError::TlsHandshake(_)
                | NbdError::ConnectionBroken
        )
    }

    /// Maps socket errors, turning an early end of stream into [`NbdError::Closed`].
    pub(crate) fn from_io(error: std::io::Error) -> NbdError {
        if error.kind() == std::io::ErrorKind::UnexpectedEof {
            NbdError::Closed
        } else {
            NbdError::Io(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_classification() {
        assert!(NbdError::Closed.is_retryable());
        assert!(
            NbdError::Timeout {
                operation: "read",
                after: Duration::from_secs(1)
            }
            .is_retryable()
        );
        assert!(!NbdError::Protocol("x".into()).is_retryable());
        assert!(
            !NbdError::Server {
                errno: wire::EIO,
                message: String::new()
            }
            .is_retryable()
        );
        assert!(
            NbdError::Server {
                errno: wire::ESHUTDOWN,
                message: String::new()
            }
            .is_retryable()
        );
        assert!(!NbdError::ReadOnly.breaks_connection());
        assert!(NbdError::Protocol("x".into()).breaks_connection());
    }

    #[test]
    fn messages_are_readable() {
        let error = NbdError::Server {
            errno: wire::EIO,
            message: "disk on fire".into(),
        };
        assert_eq!(error.to_string(), "nbd server error 5 (EIO): disk on fire");
        let error = NbdError::OptionRejected {
            option: "NBD_OPT_GO",
            code: wire::REP_ERR_POLICY,
            message: "no".into(),
        };
        assert_eq!(
            error.to_string(),
            "nbd server rejected NBD_OPT_GO with NBD_REP_ERR_POLICY (0x80000002): no"
        );
    }
}
