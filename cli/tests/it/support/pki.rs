//! A private CA for the control plane's tests, made by `haven pki` itself, and the
//! configuration snippets and CLI environments that use it.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use haven_tls::pki::{CertificateAuthority, LeafRequest};
use haven_tls::{Identity, Role};

use super::cluster::Cli;
use super::haven::haven;

/// A CA in a test folder with a coordinator server certificate for 127.0.0.1 (and
/// one more address on request).
pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// `haven pki init` in `parent/pki`, and the coordinators' server certificate.
    pub fn new(parent: &Path) -> Self {
        Self::with_coordinator_ip(parent, "127.0.0.1")
    }

    /// [`Pki::new`] with the coordinators' certificate also valid for `ip` (a
    /// coordinator listening on a namespace's address).
    pub fn with_coordinator_ip(parent: &Path, ip: &str) -> Self {
        let dir = parent.join("pki");
        run(&["pki", "init", "--dir", dir.to_str().unwrap()]);
        let pki = Self { dir };
        let mut names = vec!["--ip", "127.0.0.1", "--dns", "localhost"];
        if ip != "127.0.0.1" {
            names.extend(["--ip", ip]);
        }
        pki.issue_with("server", "coordinator", &names);
        pki
    }

    /// The CA certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate of `kind` (worker, viewer, operator, admin, server) for `name`,
    /// issued once; its certificate and key files.
    pub fn issue(&self, kind: &str, name: &str) -> (PathBuf, PathBuf) {
        self.issue_with(kind, name, &[])
    }

    /// [`Pki::issue`] with more `haven pki issue` arguments (`--days -1`...).
    pub fn issue_with(&self, kind: &str, name: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
        let files = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}-key.pem")),
        );
        if !files.0.exists() {
            let mut args = vec![
                "pki",
                "issue",
                kind,
                name,
                "--dir",
                self.dir.to_str().unwrap(),
            ];
            args.extend_from_slice(extra);
            run(&args);
        }
        files
    }

    /// A client certificate for `role`/`name` that expires `valid_for` from now,
    /// written as `dir/STEM.pem` and `dir/STEM-key.pem` (replacing them); its files and
    /// its expiry (whole seconds, as the certificate says). `haven pki` counts in days,
    /// so this is made with the library behind it.
    pub fn issue_expiring(
        &self,
        role: Role,
        name: &str,
        valid_for: Duration,
        dir: &Path,
        stem: &str,
    ) -> (PathBuf, PathBuf, SystemTime) {
        let authority =
            CertificateAuthority::load(&self.ca(), &self.dir.join("ca-key.pem")).unwrap();
        let mut request = LeafRequest::client(Identity::new(role, name).unwrap(), 1);
        let now = time::OffsetDateTime::now_utc();
        request.not_after = now + valid_for;
        let (cert, key) = authority
            .issue(&request)
            .unwrap()
            .write(dir, stem, true)
            .unwrap();
        let expiry = SystemTime::UNIX_EPOCH
            + Duration::from_secs(request.not_after.unix_timestamp().try_into().unwrap());
        (cert, key, expiry)
    }

    /// The `[tls]` table of a coordinator.toml (put it after the top-level keys).
    pub fn coordinator_toml(&self) -> String {
        let (cert, key) = self.issue("server", "coordinator");
        format!(
            "[tls]\ncert = {cert:?}\nkey = {key:?}\nclient_ca = {:?}\n",
            self.ca()
        )
    }

    /// The `[tls]` table of worker `id`'s worker.toml, with its own certificate.
    pub fn worker_toml(&self, id: &str) -> String {
        let (cert, key) = self.issue("worker", id);
        format!(
            "[tls]\nca = {:?}\ncert = {cert:?}\nkey = {key:?}\n",
            self.ca()
        )
    }

    /// The `[metrics_tls]` table of worker `id`'s worker.toml: a server certificate
    /// for 127.0.0.1, scrapers' certificates checked against the CA.
    pub fn worker_metrics_toml(&self, id: &str) -> String {
        let (cert, key) =
            self.issue_with("server", &format!("{id}-metrics"), &["--ip", "127.0.0.1"]);
        format!(
            "[metrics_tls]\ncert = {cert:?}\nkey = {key:?}\nclient_ca = {:?}\n",
            self.ca()
        )
    }

    /// `GET https://127.0.0.1:PORT/PATH` with curl trusting the CA and presenting the
    /// certificate of `client` (kind, name) when given: the HTTP status and body.
    pub fn https_get(&self, port: u16, path: &str, client: Option<(&str, &str)>) -> (u16, String) {
        let mut curl = std::process::Command::new("curl");
        curl.args(["-s", "--max-time", "10", "-w", "\n%{http_code}", "--cacert"])
            .arg(self.ca());
        if let Some((kind, name)) = client {
            let (cert, key) = self.issue(kind, name);
            curl.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        let out = curl
            .arg(format!("https://127.0.0.1:{port}{path}"))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        (status.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// The CLI against `urls` with a certificate of `kind` named `name`.
    pub fn cli(&self, urls: &str, kind: &str, name: &str) -> Cli {
        let (cert, key) = self.issue(kind, name);
        self.cli_with_files(urls, &cert, &key)
    }

    /// The CLI against `urls` presenting the certificate and key in these files.
    pub fn cli_with_files(&self, urls: &str, cert: &Path, key: &Path) -> Cli {
        Cli::new(urls)
            .with_env("HAVEN_CA_FILE", self.ca().to_str().unwrap())
            .with_env("HAVEN_CERT_FILE", cert.to_str().unwrap())
            .with_env("HAVEN_KEY_FILE", key.to_str().unwrap())
    }

    /// The CLI as the cluster's administrator.
    pub fn admin(&self, urls: &str) -> Cli {
        self.cli(urls, "admin", "admin")
    }
}

fn run(args: &[&str]) {
    let out = haven(args).output().unwrap();
    assert!(
        out.status.success(),
        "haven {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
