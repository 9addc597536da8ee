//! X.509 credentials for tests, made with the `openssl` command line.
//!
//! A [`TestCa`] is a private certificate authority in a directory; it issues server
//! certificates (valid for `127.0.0.1`, `::1` and `localhost`) and client certificates,
//! and writes them in QEMU's x509 directory layout, which libnbd (`nbdcopy`, `nbdinfo`)
//! and Haven's `--tls-creds` read too:
//!
//! - server: `ca-cert.pem`, `server-cert.pem`, `server-key.pem`;
//! - client: `ca-cert.pem`, `client-cert.pem`, `client-key.pem`.
//!
//! Certificates carry the extensions GnuTLS (QEMU, libnbd) and webpki (rustls) check:
//! `basicConstraints`, `keyUsage` and `extendedKeyUsage` (`serverAuth` or
//! `clientAuth`). Keys are ECDSA P-256, quick to make.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::FixtureError;

/// Days every test certificate is valid.
const VALID_DAYS: &str = "3650";

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A TLS server on the loopback interface (SANs `127.0.0.1`, `::1`, `localhost`).
    Server,
    /// A TLS client; its identity is the common name.
    Client,
}

/// A private certificate authority whose key and certificate live in one directory.
#[derive(Debug)]
pub struct TestCa {
    dir: PathBuf,
}

impl TestCa {
    /// Makes a CA named `common_name` in `dir` (created if missing): `ca-key.pem` and
    /// `ca-cert.pem`.
    pub fn create(dir: impl Into<PathBuf>, common_name: &str) -> Result<Self, FixtureError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)
            .map_err(FixtureError::io(format!("cannot create {}", dir.display())))?;
        let ca = Self { dir };
        openssl(
            Command::new("openssl")
                .args(["req", "-x509", "-nodes", "-days", VALID_DAYS])
                .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"])
                .arg("-keyout")
                .arg(ca.key())
                .arg("-out")
                .arg(ca.cert())
                .arg("-subj")
                .arg(format!("/CN={common_name}"))
                .args(["-addext", "basicConstraints=critical,CA:TRUE"])
                .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]),
            "make a test CA",
        )?;
        Ok(ca)
    }

    /// The CA's certificate (PEM), what peers trust.
    pub fn cert(&self) -> PathBuf {
        self.dir.join("ca-cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("ca-key.pem")
    }

    /// Issues a certificate for `purpose` named `common_name`, writing its PEM to `cert`
    /// and its unencrypted PKCS#8 key to `key`.
    pub fn issue(
        &self,
        purpose: Purpose,
        common_name: &str,
        cert: &Path,
        key: &Path,
    ) -> Result<(), FixtureError> {
        let request = cert.with_extension("csr");
        openssl(
            Command::new("openssl")
                .args(["req", "-new", "-nodes"])
                .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"])
                .arg("-keyout")
                .arg(key)
                .arg("-out")
                .arg(&request)
                .arg("-subj")
                .arg(format!("/CN={common_name}")),
            "make a test certificate request",
        )?;
        let extensions = cert.with_extension("ext");
        let usage = match purpose {
            Purpose::Server => {
                "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\n"
            }
            Purpose::Client => "extendedKeyUsage=clientAuth\n",
        };
        let text = format!(
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\n{usage}"
        );
        std::fs::write(&extensions, text).map_err(FixtureError::io(format!(
            "cannot write {}",
            extensions.display()
        )))?;
        openssl(
            Command::new("openssl")
                .args(["x509", "-req", "-days", VALID_DAYS, "-in"])
                .arg(&request)
                .arg("-CA")
                .arg(self.cert())
                .arg("-CAkey")
                .arg(self.key())
                .arg("-CAcreateserial")
                .arg("-CAserial")
                .arg(self.dir.join("serial"))
                .arg("-extfile")
                .arg(&extensions)
                .arg("-out")
                .arg(cert),
            "sign a test certificate",
        )?;
        let _ = std::fs::remove_file(request);
        let _ = std::fs::remove_file(extensions);
        Ok(())
    }

    /// A server directory in QEMU's layout at `dir` (created if missing):
    /// `ca-cert.pem` (this CA), `server-cert.pem`, `server-key.pem`.
    pub fn server_dir(&self, dir: &Path) -> Result<PathBuf, FixtureError> {
        self.layout(dir, Purpose::Server, "localhost", "server")
    }

    /// A client directory in QEMU's layout at `dir` (created if missing):
    /// `ca-cert.pem` (this CA), `client-cert.pem`, `client-key.pem` for `common_name`.
    pub fn client_dir(&self, dir: &Path, common_name: &str) -> Result<PathBuf, FixtureError> {
        self.layout(dir, Purpose::Client, common_name, "client")
    }

    fn layout(
        &self,
        dir: &Path,
        purpose: Purpose,
        common_name: &str,
        prefix: &str,
    ) -> Result<PathBuf, FixtureError> {
        std::fs::create_dir_all(dir)
            .map_err(FixtureError::io(format!("cannot create {}", dir.display())))?;
        let ca_copy = dir.join("ca-cert.pem");
        std::fs::copy(self.cert(), &ca_copy).map_err(FixtureError::io(format!(
            "cannot write {}",
            ca_copy.display()
        )))?;
        self.issue(
            purpose,
            common_name,
            &dir.join(format!("{prefix}-cert.pem")),
            &dir.join(format!("{prefix}-key.pem")),
        )?;
        Ok(dir.to_path_buf())
    }
}

/// A CA with a server directory and the client directories TLS tests need, below one
/// directory, each in QEMU's layout.
#[derive(Debug)]
pub struct Credentials {
    /// The CA every directory's `ca-cert.pem` is.
    pub ca: TestCa,
    /// `ca-cert.pem`, `server-cert.pem`, `server-key.pem` (valid for `127.0.0.1`, `::1`,
    /// `localhost`).
    pub server: PathBuf,
    /// `ca-cert.pem`, `client-cert.pem`, `client-key.pem`, issued by [`Self::ca`] to
    /// `client`.
    pub client: PathBuf,
    /// A client whose certificate comes from another CA: one a verifying server must
    /// refuse. Its `ca-cert.pem` holds both CAs, so the server's certificate and its
    /// own validate on its side (QEMU checks its own certificate before connecting):
    /// only the server can refuse it.
    pub stranger: PathBuf,
    /// Only `ca-cert.pem`: a client that trusts the server and has no certificate.
    pub anonymous: PathBuf,
}

impl Credentials {
    /// Makes every directory below `dir`.
    pub fn new(dir: &Path) -> Result<Self, FixtureError> {
        let ca = TestCa::create(dir.join("ca"), "haven test ca")?;
        let server = ca.server_dir(&dir.join("server"))?;
        let client = ca.client_dir(&dir.join("client"), "client")?;
        let other = TestCa::create(dir.join("other-ca"), "another ca")?;
        let stranger = other.client_dir(&dir.join("stranger"), "stranger")?;
        let anonymous = dir.join("anonymous");
        std::fs::create_dir_all(&anonymous).map_err(FixtureError::io(format!(
            "cannot create {}",
            anonymous.display()
        )))?;
        let read = |path: PathBuf| {
            std::fs::read(&path)
                .map_err(FixtureError::io(format!("cannot read {}", path.display())))
        };
        let (ours, theirs) = (read(ca.cert())?, read(other.cert())?);
        for (trusting, bundle) in [
            (&stranger, [ours.clone(), theirs].concat()),
            (&anonymous, ours),
        ] {
            let copy = trusting.join("ca-cert.pem");
            std::fs::write(&copy, bundle)
                .map_err(FixtureError::io(format!("cannot write {}", copy.display())))?;
        }
        Ok(Self {
            ca,
            server,
            client,
            stranger,
            anonymous,
        })
    }
}

/// Runs one `openssl` command; its standard error becomes the error's text.
fn openssl(command: &mut Command, what: &str) -> Result<(), FixtureError> {
    let output = command.output().map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => FixtureError::MissingProgram {
            program: "openssl".into(),
            hint: "Debian package openssl",
            source,
        },
        _ => FixtureError::Io {
            context: format!("cannot run openssl to {what}"),
            source,
        },
    })?;
    if output.status.success() {
        return Ok(());
    }
    Err(FixtureError::Io {
        context: format!("openssl failed to {what} ({})", output.status),
        source: std::io::Error::other(String::from_utf8_lossy(&output.stderr).into_owned()),
    })
}
