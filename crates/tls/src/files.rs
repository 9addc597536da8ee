//! PEM files into rustls types; every error names the file.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::TlsError;

/// Largest PEM file read: a certificate chain or CA bundle is a few KiB.
const MAX_PEM: u64 = 1 << 20;

/// Reads a whole PEM file, bounded.
pub fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let io = |source| TlsError::Io {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(io)?
        .take(MAX_PEM + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_PEM {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            reason: format!("larger than {MAX_PEM} bytes: not a PEM certificate file"),
        });
    }
    Ok(bytes)
}

/// The certificates of a PEM file (a chain, leaf first, or a CA bundle); at least one.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certificates = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::Pem {
            path: path.to_owned(),
            reason: format!("bad PEM: {error}"),
        })?;
    if certificates.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            reason: "no CERTIFICATE in it".into(),
        });
    }
    Ok(certificates)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|error| TlsError::Pem {
        path: path.to_owned(),
        reason: format!("no private key in it: {error}"),
    })
}

/// A root store of the CA certificates in `path`.
pub fn root_store(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in certificates(path)? {
        roots.add(certificate).map_err(|source| TlsError::Rustls {
            context: format!("CA certificate in {}", path.display()),
            source,
        })?;
    }
    Ok(roots)
}
