//! The files `[etcd_security]` names, read when the store is opened, and the
//! connection options they become.
//!
//! Each file is read and parsed here rather than handed to the TLS stack as bytes: a
//! wrong path or a key in the certificate's place would otherwise surface as an opaque
//! handshake failure on the first request, far from the setting at fault.

use std::path::{Path, PathBuf};

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{EtcdSecurity, EtcdTransport};

/// Why the etcd settings could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The settings contradict each other or the endpoints.
    #[error("{0}")]
    Settings(String),
    /// A file could not be read.
    #[error("etcd_security.{field} {}: {source}", path.display())]
    Unreadable {
        /// The setting naming the file.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file does not hold what the setting needs.
    #[error("etcd_security.{field} {}: {what}", path.display())]
    Malformed {
        /// The setting naming the file.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: &'static str,
    },
}

/// What the coordinator presents to etcd, loaded from the files of [`EtcdSecurity`].
pub struct EtcdCredentials {
    transport: EtcdTransport,
    tls: Option<TlsOptions>,
    user: Option<(String, String)>,
}

impl std::fmt::Debug for EtcdCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the password.
        f.debug_struct("EtcdCredentials")
            .field("transport", &self.transport)
            .field("tls", &self.tls.is_some())
            .field("user", &self.user.as_ref().map(|(user, _)| user))
            .finish()
    }
}

impl EtcdCredentials {
    /// Checks `security` against `endpoints` and reads its files.
    pub fn load(security: &EtcdSecurity, endpoints: &[String]) -> Result<Self, CredentialsError> {
        let transport = security
            .check(endpoints)
            .map_err(CredentialsError::Settings)?;
        let tls = match &security.ca_file {
            None => None,
            Some(ca_file) => {
                let ca = read_certificates("ca_file", ca_file)?;
                let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
                if let (Some(cert_file), Some(key_file)) = (&security.cert_file, &security.key_file)
                {
                    let cert = read_certificates("cert_file", cert_file)?;
                    let key = read_private_key("key_file", key_file)?;
                    tls = tls.identity(Identity::from_pem(cert, key));
                }
                Some(tls)
            }
        };
        let user = match (&security.user, &security.password_file) {
            (Some(user), Some(password_file)) => {
                Some((user.clone(), read_password("password_file", password_file)?))
            }
            _ => None,
        };
        Ok(Self {
            transport,
            tls,
            user,
        })
    }

    /// How the endpoints are reached (the caller warns about [`EtcdTransport::Insecure`]).
    pub fn transport(&self) -> &EtcdTransport {
        &self.transport
    }

    /// `options` with the TLS settings and the user added. With a user, the auth token
    /// is renewed whenever etcd says it expired (a restarted member forgets the tokens
    /// it issued).
    pub fn apply(self, mut options: ConnectOptions) -> ConnectOptions {
        if let Some(tls) = self.tls {
            options = options.with_tls(tls);
        }
        if let Some((user, password)) = self.user {
            options = options
                .with_user(user, password)
                .with_auto_token_refresh(true);
        }
        options
    }
}

fn read(field: &'static str, path: &Path) -> Result<Vec<u8>, CredentialsError> {
    std::fs::read(path).map_err(|source| CredentialsError::Unreadable {
        field,
        path: path.to_path_buf(),
        source,
    })
}

/// The file's bytes, after checking it holds at least one PEM certificate and nothing
/// unparsable.
fn read_certificates(field: &'static str, path: &Path) -> Result<Vec<u8>, CredentialsError> {
    let pem = read(field, path)?;
    let malformed = |what| CredentialsError::Malformed {
        field,
        path: path.to_path_buf(),
        what,
    };
    let mut count = 0;
    for certificate in CertificateDer::pem_slice_iter(&pem) {
        certificate.map_err(|_| malformed("is not valid PEM"))?;
        count += 1;
    }
    if count == 0 {
        return Err(malformed("holds no PEM certificate"));
    }
    Ok(pem)
}

/// The file's bytes, after checking it holds a PEM private key.
fn read_private_key(field: &'static str, path: &Path) -> Result<Vec<u8>, CredentialsError> {
    let pem = read(field, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| CredentialsError::Malformed {
        field,
        path: path.to_path_buf(),
        what: "holds no PEM private key",
    })?;
    Ok(pem)
}

/// The password: the file's first line, without its line ending.
fn read_password(field: &'static str, path: &Path) -> Result<String, CredentialsError> {
    let bytes = read(field, path)?;
    let malformed = |what| CredentialsError::Malformed {
        field,
        path: path.to_path_buf(),
        what,
    };
    let text = String::from_utf8(bytes).map_err(|_| malformed("is not UTF-8"))?;
    let password = text.lines().next().unwrap_or_default();
    if password.is_empty() {
        return Err(malformed("is empty"));
    }
    Ok(password.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints() -> Vec<String> {
        vec!["https://etcd:2379".to_string()]
    }

    #[test]
    fn errors_name_the_setting_and_the_file() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello\n").expect("write");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").expect("write");
        let missing = dir.path().join("missing.pem");
        let cases = [
            (
                EtcdSecurity {
                    ca_file: Some(missing.clone()),
                    ..EtcdSecurity::default()
                },
                format!("etcd_security.ca_file {}: ", missing.display()),
            ),
            (
                EtcdSecurity {
                    ca_file: Some(not_pem.clone()),
                    ..EtcdSecurity::default()
                },
                format!(
                    "etcd_security.ca_file {}: holds no PEM certificate",
                    not_pem.display()
                ),
            ),
        ];
        for (security, expected) in cases {
            let error = EtcdCredentials::load(&security, &endpoints())
                .expect_err("must be refused")
                .to_string();
            assert!(
                error.starts_with(&expected),
                "{error:?} should start with {expected:?}"
            );
        }
        let error = read_password("password_file", &empty).expect_err("empty password");
        assert_eq!(
            error.to_string(),
            format!("etcd_security.password_file {}: is empty", empty.display())
        );
        let error = read_private_key("key_file", &not_pem).expect_err("no key");
        assert!(error.to_string().ends_with("holds no PEM private key"));
    }

    #[test]
    fn password_is_the_first_line() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("password");
        std::fs::write(&path, "s3cret\n").expect("write");
        assert_eq!(
            read_password("password_file", &path).expect("read"),
            "s3cret"
        );
    }
}
