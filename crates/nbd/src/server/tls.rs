//! TLS of the server: X.509 credentials read from QEMU's directory layout, so one
//! directory serves `qemu-nbd --tls-creds`, QEMU's NBD server and Haven alike.
//!
//! The directory holds `ca-cert.pem` (the CA client certificates must chain to),
//! `server-cert.pem` (the server's certificate, optionally followed by its chain),
//! `server-key.pem` (its unencrypted private key) and optionally `ca-crl.pem`
//! (revoked client certificates), as QEMU's `tls-creds-x509` with `endpoint=server`
//! reads them. Verifying clients is QEMU's `verify-peer=on`: a client without a
//! certificate from the CA fails the TLS handshake.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use haven_tls::reload::Reloading;

/// CA certificates clients must chain to (QEMU's file name).
pub const CA_CERT_FILE: &str = "ca-cert.pem";
/// Revoked client certificates, read when present (QEMU's file name).
pub const CA_CRL_FILE: &str = "ca-crl.pem";
/// The server's certificate chain (QEMU's file name).
pub const SERVER_CERT_FILE: &str = "server-cert.pem";
/// The server's private key (QEMU's file name).
pub const SERVER_KEY_FILE: &str = "server-key.pem";

/// Why TLS credentials could not be loaded; each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsCredentialsError {
    /// A PEM file is missing, unreadable or holds nothing of the expected kind.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the PEM parser found.
        source: rustls_pki_types::pem::Error,
    },
    /// A PEM file parsed but holds no certificate.
    #[error("{} holds no certificate", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A CA certificate or revocation list cannot be used to verify clients.
    #[error("cannot verify client certificates with {}: {reason}", path.display())]
    Verifier {
        /// The CA (or CRL) file.
        path: PathBuf,
        /// What rustls refused.
        reason: String,
    },
    /// The certificate and key do not make a usable identity (mismatched, unsupported).
    #[error("{} and {} are not a usable server identity: {source}", cert.display(), key.display())]
    Identity {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls refused.
        source: rustls::Error,
    },
}

/// Whether the server asks clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerVerification {
    /// Clients must present a certificate issued by the directory's CA (mutual TLS,
    /// QEMU's `verify-peer=on`).
    Required,
    /// Any client may connect; the connection is still encrypted and the server
    /// authenticated (QEMU's `verify-peer=off`).
    Off,
}

/// A server's TLS setup: what [`crate::ServerConfig::tls`] holds to require
/// `NBD_OPT_STARTTLS` on every connection.
#[derive(Clone)]
pub struct ServerTls {
    /// The configuration, rebuilt when a credential file changes (see [`ServerTls::watch`]).
    config: Arc<Reloading<rustls::ServerConfig>>,
    verification: PeerVerification,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("ServerTls")
            .field("verification", &self.verification)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Reads the credentials in `dir` (QEMU's layout, see the module doc). With
    /// [`PeerVerification::Off`] the CA file is not read.
    pub fn from_x509_dir(
        dir: &Path,
        verification: PeerVerification,
    ) -> Result<Self, TlsCredentialsError> {
        // The first build reports what is wrong with the files in their own terms;
        // later rebuilds (after a change) keep the previous configuration on error.
        build_config(dir, verification)?;
        let mut files = vec![dir.join(SERVER_CERT_FILE), dir.join(SERVER_KEY_FILE)];
        if verification == PeerVerification::Required {
            files.extend([dir.join(CA_CERT_FILE), dir.join(CA_CRL_FILE)]);
        }
        let owned = dir.to_path_buf();
        let config = Reloading::new("serve-nbd TLS credentials", files, move || {
            build_config(&owned, verification).map_err(|error| haven_tls::TlsError::Pem {
                path: owned.clone(),
                reason: error.to_string(),
            })
        })
        .map_err(|error| TlsCredentialsError::Verifier {
            path: dir.to_path_buf(),
            reason: error.to_string(),
        })?;
        Ok(Self {
            config,
            verification,
        })
    }

    /// Rebuilds the configuration when a credential file changes (checked every 2 s)
    /// or on SIGHUP, until `shutdown`: renewed certificates, a new CA bundle or CRL
    /// apply to new connections without a restart.
    pub fn watch(&self, shutdown: CancellationToken) {
        self.config.watch(shutdown);
    }
}

/// A rustls configuration from the credentials in `dir`.
fn build_config(
    dir: &Path,
    verification: PeerVerification,
) -> Result<rustls::ServerConfig, TlsCredentialsError> {
    let cert_path = dir.join(SERVER_CERT_FILE);
    let key_path = dir.join(SERVER_KEY_FILE);
    let chain = read_certificates(&cert_path)?;
    let key =
        PrivateKeyDer::from_pem_file(&key_path).map_err(|source| TlsCredentialsError::Read {
            path: key_path.clone(),
            source,
        })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsCredentialsError::Identity {
            cert: cert_path.clone(),
            key: key_path.clone(),
            source,
        })?;
    let builder = match verification {
        PeerVerification::Off => builder.with_no_client_auth(),
        PeerVerification::Required => {
            builder.with_client_cert_verifier(client_verifier(dir, provider)?)
        }
    };
    builder
        .with_single_cert(chain, key)
        .map_err(|source| TlsCredentialsError::Identity {
            cert: cert_path,
            key: key_path,
            source,
        })
}

impl ServerTls {
    /// Whether clients must present a certificate from the CA.
    pub fn verification(&self) -> PeerVerification {
        self.verification
    }

    /// Runs the server side of the TLS handshake on `stream`.
    pub(crate) async fn accept<T>(&self, stream: T) -> std::io::Result<TlsStream<T>>
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        tokio_rustls::TlsAcceptor::from(self.config.current())
            .accept(stream)
            .await
    }
}

/// Verifies client certificates against `ca-cert.pem` and, when present, `ca-crl.pem`.
fn client_verifier(
    dir: &Path,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsCredentialsError> {
    let ca_path = dir.join(CA_CERT_FILE);
    let mut roots = rustls::RootCertStore::empty();
    for certificate in read_certificates(&ca_path)? {
        roots
            .add(certificate)
            .map_err(|error| TlsCredentialsError::Verifier {
                path: ca_path.clone(),
                reason: error.to_string(),
            })?;
    }
    let mut builder =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    let crl_path = dir.join(CA_CRL_FILE);
    if crl_path.exists() {
        let crls = CertificateRevocationListDer::pem_file_iter(&crl_path)
            .and_then(|items| items.collect::<Result<Vec<_>, _>>())
            .map_err(|source| TlsCredentialsError::Read {
                path: crl_path.clone(),
                source,
            })?;
        builder = builder.with_crls(crls);
    }
    builder
        .build()
        .map_err(|error| TlsCredentialsError::Verifier {
            path: if crl_path.exists() { crl_path } else { ca_path },
            reason: error.to_string(),
        })
}

/// Every certificate of a PEM file, at least one.
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsCredentialsError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|items| items.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsCredentialsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
    if certificates.is_empty() {
        return Err(TlsCredentialsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certificates)
}
