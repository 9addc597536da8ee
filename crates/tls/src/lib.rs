//! TLS for Haven's control plane.
//!
//! Every listener Haven opens off loopback is encrypted, and every caller is
//! authenticated. This crate holds the pieces the coordinator, the workers and the
//! CLI share so that each is written once:
//!
//! - [`pki`]: a private CA for small sites (`haven pki`), issuing certificates whose
//!   identity Haven reads back;
//! - [`identity`]: who a certificate names — a [`Role`] and a name, carried as the
//!   URI subject alternative name `haven://ROLE/NAME`;
//! - [`files`]: PEM files read into rustls types, with errors naming the file;
//! - [`reload`]: configurations rebuilt when their files change or on SIGHUP, so
//!   certificates rotate without a restart;
//! - [`listener`]: a TCP listener whose connections are TLS (or plain on loopback),
//!   handshaken off the accept loop, capped in number, each carrying its peer's
//!   identity to the gRPC handlers;
//! - [`connector`]: the client side for tonic, taking the current client
//!   configuration at every new connection.

#![warn(missing_docs)]

pub mod connector;
pub mod files;
pub mod identity;
pub mod listener;
pub mod pki;
pub mod reload;

pub use identity::{Identity, Role};

use std::path::PathBuf;

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no usable PEM item of the kind needed.
    #[error("{}: {reason}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the material (a key that does not match its certificate...).
    #[error("{context}: {source}")]
    Rustls {
        /// What was being built.
        context: String,
        /// Why.
        source: rustls::Error,
    },
    /// A certificate could not be made.
    #[error("cannot make the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A certificate names no usable identity.
    #[error("{0}")]
    Identity(String),
}

/// The crypto provider every configuration here uses (aws-lc-rs, as the rest of
/// Haven), passed explicitly so no process-wide default has to be installed.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}
