//! What a secured test etcd needs: a private CA with server and client certificates
//! (made with the `openssl` command), and the users and role that etcd auth checks,
//! made by the very script compose and the Helm chart run
//! (`deploy/helm/haven/files/etcd-auth-init.sh`, with `etcdctl`), so every test on a
//! secured etcd also tests that script.
//!
//! The role `haven` may read and write Haven's prefix ([`HAVEN_PREFIX`]) and nothing
//! else; the user `haven` holds it. `root` exists because etcd refuses to enable auth
//! without it, and tests use it to plant keys outside the prefix.
//!
//! The client certificate's common name is `haven-coordinator`, which is no etcd user:
//! etcd takes the common name as the user of a request that carries no token, so a
//! certificate named after a user would be a credential by itself.

use std::path::{Path, PathBuf};
use std::process::Command;

use haven_coordinator::config::EtcdSecurity;

use crate::FixtureError;
use crate::process::run;

/// Haven's key prefix: the whole of the `haven` role's permission.
pub const HAVEN_PREFIX: &str = haven_coordinator::model::ROOT;
/// The etcd user Haven connects as.
pub const HAVEN_USER: &str = "haven";
/// Common name of the client certificate (no etcd user has it).
pub const CLIENT_COMMON_NAME: &str = "haven-coordinator";
const ROOT_USER: &str = "root";
const HAVEN_PASSWORD: &str = "haven-etcd-test-password";
const ROOT_PASSWORD: &str = "root-etcd-test-password";

/// Arguments of `openssl req` that make a new P-256 key, unencrypted.
const NEW_KEY: [&str; 5] = [
    "-newkey",
    "ec",
    "-pkeyopt",
    "ec_paramgen_curve:prime256v1",
    "-nodes",
];

/// How to install openssl, for the error when it is missing.
const OPENSSL_HINT: &str = "apt-get install openssl";
/// How to install etcdctl, for the error when it is missing.
pub(crate) const ETCDCTL_HINT: &str = "apt-get install etcd-client";

/// Who `etcdctl` acts as on a secured cluster (it always presents the client
/// certificate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtcdctlUser {
    /// etcd's `root`: every key, and user management.
    Root,
    /// No user: what a client holding only a certificate can do (nothing, with auth on).
    Nobody,
}

/// The files of a secured cluster, in its temporary directory.
#[derive(Debug, Clone)]
pub struct EtcdCredentialFiles {
    /// The CA that signed every certificate (server and client).
    pub ca_file: PathBuf,
    /// The members' server certificate (loopback addresses) and key.
    pub server_cert: PathBuf,
    /// Key of [`Self::server_cert`].
    pub server_key: PathBuf,
    /// A client certificate etcd accepts (`--client-cert-auth`).
    pub client_cert: PathBuf,
    /// Key of [`Self::client_cert`].
    pub client_key: PathBuf,
    /// File holding the `haven` user's password.
    pub password_file: PathBuf,
    /// File holding etcd's `root` password.
    root_password_file: PathBuf,
    /// The CA's key, to issue more certificates.
    ca_key: PathBuf,
}

impl EtcdCredentialFiles {
    /// Makes the CA, the certificates and the password file in `dir`.
    pub(crate) fn create(dir: &Path) -> Result<Self, FixtureError> {
        std::fs::create_dir_all(dir)
            .map_err(FixtureError::io(format!("cannot create {}", dir.display())))?;
        let files = Self {
            ca_file: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server-key.pem"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client-key.pem"),
            password_file: dir.join("haven-password"),
            root_password_file: dir.join("root-password"),
            ca_key: dir.join("ca-key.pem"),
        };
        let mut ca = openssl(dir);
        ca.args([
            "req",
            "-x509",
            "-days",
            "2",
            "-subj",
            "/CN=haven test etcd CA",
        ])
        .args(NEW_KEY)
        .arg("-keyout")
        .arg(&files.ca_key)
        .arg("-out")
        .arg(&files.ca_file);
        run(&mut ca, OPENSSL_HINT)?;
        // The members also use it as a client certificate towards each other.
        files.sign(
            "/CN=etcd",
            &[
                "subjectAltName=IP:127.0.0.1,DNS:localhost",
                "extendedKeyUsage=serverAuth,clientAuth",
            ],
            &files.server_cert,
            &files.server_key,
        )?;
        files.issue_client(CLIENT_COMMON_NAME, &files.client_cert, &files.client_key)?;
        for (file, password) in [
            (&files.password_file, HAVEN_PASSWORD),
            (&files.root_password_file, ROOT_PASSWORD),
        ] {
            std::fs::write(file, format!("{password}\n"))
                .map_err(FixtureError::io(format!("cannot write {}", file.display())))?;
        }
        Ok(files)
    }

    /// Issues a client certificate of this CA named `common_name` (etcd takes it as
    /// the user of a request without a token) to `cert` and `key`.
    pub fn issue_client(
        &self,
        common_name: &str,
        cert: &Path,
        key: &Path,
    ) -> Result<(), FixtureError> {
        self.sign(
            &format!("/CN={common_name}"),
            &["extendedKeyUsage=clientAuth"],
            cert,
            key,
        )
    }

    /// Signs a new P-256 key for `subject` with `extensions` by this CA.
    fn sign(
        &self,
        subject: &str,
        extensions: &[&str],
        cert: &Path,
        key: &Path,
    ) -> Result<(), FixtureError> {
        let dir = cert.parent().unwrap_or(Path::new("."));
        let request = cert.with_extension("csr");
        let mut new = openssl(dir);
        new.args(["req", "-new", "-subj", subject])
            .args(NEW_KEY)
            .arg("-keyout")
            .arg(key)
            .arg("-out")
            .arg(&request);
        for extension in extensions {
            new.args(["-addext", extension]);
        }
        run(&mut new, OPENSSL_HINT)?;
        let mut signed = openssl(dir);
        signed
            .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
            .args(["-copy_extensions", "copyall"])
            .arg("-in")
            .arg(&request)
            .arg("-CA")
            .arg(&self.ca_file)
            .arg("-CAkey")
            .arg(&self.ca_key)
            .arg("-out")
            .arg(cert);
        run(&mut signed, OPENSSL_HINT).map(drop)
    }

    /// Adds the members' TLS arguments to `command`: https clients with a certificate
    /// of this CA only.
    pub(crate) fn add_server_args(&self, command: &mut Command) {
        command
            .arg("--client-cert-auth")
            .arg("--trusted-ca-file")
            .arg(&self.ca_file)
            .arg("--cert-file")
            .arg(&self.server_cert)
            .arg("--key-file")
            .arg(&self.server_key);
    }

    /// Haven's full credentials: CA, client certificate, user and password.
    pub fn haven_security(&self) -> EtcdSecurity {
        EtcdSecurity {
            ca_file: Some(self.ca_file.clone()),
            cert_file: Some(self.client_cert.clone()),
            key_file: Some(self.client_key.clone()),
            user: Some(HAVEN_USER.to_string()),
            password_file: Some(self.password_file.clone()),
            insecure: false,
        }
    }

    /// [`Self::haven_security`] as the `[etcd_security]` table of `coordinator.toml`.
    pub fn coordinator_toml(&self) -> String {
        format!(
            "[etcd_security]\nca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n\
             user = {HAVEN_USER:?}\npassword_file = {:?}\n",
            path(&self.ca_file),
            path(&self.client_cert),
            path(&self.client_key),
            path(&self.password_file),
        )
    }

    /// `etcdctl` against `endpoints` with the client certificate, as `user`.
    pub(crate) fn etcdctl(&self, endpoints: &[String], user: EtcdctlUser) -> Command {
        let mut command = Command::new("etcdctl");
        command
            .arg("--endpoints")
            .arg(endpoints.join(","))
            .args(["--dial-timeout", "5s", "--command-timeout", "10s"])
            .arg("--cacert")
            .arg(&self.ca_file)
            .arg("--cert")
            .arg(&self.client_cert)
            .arg("--key")
            .arg(&self.client_key);
        if user == EtcdctlUser::Root {
            command.arg(format!("--user={ROOT_USER}:{ROOT_PASSWORD}"));
        }
        command
    }

    /// Creates `root`, the role `haven` on [`HAVEN_PREFIX`] and its user, and enables
    /// auth, with the deployment's `etcd-auth-init.sh`.
    pub(crate) fn enable_auth(&self, endpoints: &[String]) -> Result<(), FixtureError> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/helm/haven/files/etcd-auth-init.sh");
        let mut command = Command::new("sh");
        command
            .arg(script)
            .env("ETCDCTL_ENDPOINTS", endpoints.join(","))
            .env("ETCDCTL_CACERT", &self.ca_file)
            .env("ETCDCTL_CERT", &self.client_cert)
            .env("ETCDCTL_KEY", &self.client_key)
            .env("ROOT_PASSWORD_FILE", &self.root_password_file)
            .env("HAVEN_PASSWORD_FILE", &self.password_file)
            .env("HAVEN_ETCD_USER", HAVEN_USER)
            .env("HAVEN_ETCD_PREFIX", HAVEN_PREFIX);
        run(&mut command, ETCDCTL_HINT)?;
        Ok(())
    }
}

/// The path as a `&str`, for the TOML text (the fixture's temporary paths are UTF-8).
fn path(path: &Path) -> &str {
    path.to_str().unwrap_or_default()
}

/// `openssl` working in `dir`.
fn openssl(dir: &Path) -> Command {
    let mut command = Command::new("openssl");
    command.current_dir(dir);
    command
}
