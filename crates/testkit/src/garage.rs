//! Garage (<https://garagehq.deuxfleurs.fr>), a real S3 implementation other than
//! Haven's own node: one `garage server` process on loopback ports with a temporary
//! metadata and data directory, laid out as a one-node cluster, with one key allowed on
//! the buckets the test creates. Stopped and removed on drop.
//!
//! The binary comes from `scripts/install-garage.sh` (crates.io `garage`, built once
//! and cached); `HAVEN_GARAGE` names another one.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::FixtureError;
use crate::process::{ChildGuard, free_port, is_listening, run, wait_until};
use crate::s3_account::S3Account;

/// The region Garage is configured with; requests signed for another are refused.
pub const REGION: &str = "garage";
/// The access key imported at start (Garage's format: `GK` and 24 hex digits).
pub const ACCESS_KEY: &str = "GK0123456789abcdef01234567";
/// Its secret (64 hex digits).
pub const SECRET_KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

const HINT: &str = "run scripts/install-garage.sh (builds crates.io `garage` once)";
/// How long the server may take to answer its first CLI request.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running one-node Garage cluster.
#[derive(Debug)]
pub struct Garage {
    binary: PathBuf,
    config: PathBuf,
    s3_port: u16,
    /// Declared before `dir`: the server stops before its files go.
    server: ChildGuard,
    dir: tempfile::TempDir,
}

impl Garage {
    /// Starts the server, assigns it the whole layout and imports [`ACCESS_KEY`].
    /// Blocking.
    pub fn start() -> Result<Self, FixtureError> {
        let binary = std::env::var_os("HAVEN_GARAGE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("garage"));
        let dir = tempfile::Builder::new()
            .prefix("haven-garage-")
            .tempdir()
            .map_err(FixtureError::io("cannot create a directory for garage"))?;
        let (s3_port, rpc_port) = (free_port()?, free_port()?);
        let config = dir.path().join("garage.toml");
        std::fs::write(&config, config_text(dir.path(), s3_port, rpc_port)).map_err(
            FixtureError::io(format!("cannot write {}", config.display())),
        )?;
        let mut command = Command::new(&binary);
        command.arg("-c").arg(&config).arg("server");
        let server = ChildGuard::spawn(&mut command, &dir.path().join("garage.log"), HINT)?;
        let mut garage = Self {
            binary,
            config,
            s3_port,
            server,
            dir,
        };
        garage.wait_ready(rpc_port)?;
        garage.set_up()?;
        Ok(garage)
    }

    fn wait_ready(&mut self, rpc_port: u16) -> Result<(), FixtureError> {
        let (s3_port, log) = (self.s3_port, self.log());
        let server = &mut self.server;
        wait_until("garage", START_TIMEOUT, || {
            if let Some(exit) = server.exit_status() {
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("{exit}: {}", last_lines(&tail, 20)));
            }
            Ok(is_listening(s3_port) && is_listening(rpc_port))
        })
    }

    /// Gives the node the whole layout and imports the test key.
    fn set_up(&self) -> Result<(), FixtureError> {
        let id = self.cli(&["node", "id", "-q"])?;
        let id = id.trim().split('@').next().unwrap_or_default().to_owned();
        self.cli(&["layout", "assign", "-z", "dc1", "-c", "1G", &id])?;
        self.cli(&["layout", "apply", "--version", "1"])?;
        self.cli(&[
            "key", "import", "--yes", "-n", "haven", ACCESS_KEY, SECRET_KEY,
        ])?;
        Ok(())
    }

    /// Creates `bucket` and allows [`ACCESS_KEY`] to read, write and own it.
    pub fn create_bucket(&self, bucket: &str) -> Result<(), FixtureError> {
        self.cli(&["bucket", "create", bucket])?;
        self.cli(&[
            "bucket", "allow", "--read", "--write", "--owner", bucket, "--key", ACCESS_KEY,
        ])?;
        Ok(())
    }

    /// Runs the `garage` command line against this server; its standard output.
    pub fn cli(&self, args: &[&str]) -> Result<String, FixtureError> {
        run(
            Command::new(&self.binary)
                .arg("-c")
                .arg(&self.config)
                .args(args),
            HINT,
        )
    }

    /// The server's log file.
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("garage.log")
    }
}

/// A one-node configuration: metadata in LMDB, data and metadata fsynced (as a
/// deployment that keeps backups should run it), everything on loopback.
fn config_text(dir: &Path, s3_port: u16, rpc_port: u16) -> String {
    format!(
        r#"metadata_dir = "{meta}"
data_dir = "{data}"
db_engine = "lmdb"
metadata_fsync = true
data_fsync = true
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3_port}"
root_domain = ".s3.garage.localhost"
"#,
        meta = dir.join("meta").display(),
        data = dir.join("data").display(),
        secret = "4425f5c26c5e11581d3223904324dcb5b5d5dfb14e5e7f35e38c595424f5f1e6",
    )
}

fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

impl S3Account for Garage {
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    fn region(&self) -> &'static str {
        REGION
    }

    fn keys(&self) -> (&'static str, &'static str) {
        (ACCESS_KEY, SECRET_KEY)
    }
}
