//! govmomi's vCenter simulator with change tracking, for the vSphere tests.
//!
//! Debian packages govmomi's `simulator` package as Go source but not the `vcsim`
//! command, and the simulator lacks `QueryChangedDiskAreas` and real disk contents, so
//! a small Go program kept here (`vcsim/main.go`, see its header) adds both. It is built
//! with Debian's Go and packages only (no network), once per version of its source for
//! every test process on the machine, and started per test: on 127.0.0.1 over TLS with
//! a CA of its own, its datastore folders under the fixture's temporary folder.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::FixtureError;
use crate::process::{ChildGuard, run, wait_until};

/// The harness's source, compiled in so the build needs nothing but this crate.
const SOURCE: &str = include_str!("../vcsim/main.go");
/// How to get what the build needs.
const GO_HINT: &str =
    "apt-get install golang-go golang-github-vmware-govmomi-dev (scripts/install-deps.sh)";

/// What the running simulator says about itself.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct VcsimInfo {
    /// The SOAP endpoint, `https://127.0.0.1:PORT/sdk`.
    pub url: String,
    /// PEM of the CA that signed the server's certificate.
    pub ca_file: PathBuf,
    /// The one user name the simulator accepts.
    pub user: String,
    /// Its password.
    pub password: String,
    /// Local folder of each datastore, by name.
    pub datastores: BTreeMap<String, PathBuf>,
    /// Names of the simulated VMs.
    pub vms: Vec<String>,
}

/// How the simulated VMs look.
#[derive(Debug, Clone, Copy)]
pub struct VcsimOptions {
    /// Size of every VM disk, in MiB.
    pub disk_mib: u64,
    /// Disks per VM (`disk1` … `diskN`).
    pub disks: u32,
    /// Whether every VM reports VMware Tools running (backups then quiesce).
    pub tools_running: bool,
}

impl VcsimOptions {
    /// One disk of `disk_mib` MiB per VM, no VMware Tools.
    pub fn disks_of(disk_mib: u64) -> Self {
        Self {
            disk_mib,
            disks: 1,
            tools_running: false,
        }
    }
}

/// One `CreateSnapshot_Task` request the simulator received.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct SnapshotRequest {
    /// The VM's name.
    pub vm: String,
    /// The snapshot's name.
    pub name: String,
    /// Whether a quiesced snapshot was asked for.
    pub quiesce: bool,
}

/// A running simulator, stopped (and its datastores removed) when dropped.
pub struct Vcsim {
    child: ChildGuard,
    /// What it says about itself.
    pub info: VcsimInfo,
    /// Holds the datastores, the CA and the log.
    dir: tempfile::TempDir,
}

impl Vcsim {
    /// Builds the harness if needed and starts it, every VM disk `disk_mib` MiB.
    pub fn start(disk_mib: u64) -> Result<Self, FixtureError> {
        Self::start_with(VcsimOptions::disks_of(disk_mib))
    }

    /// Builds the harness if needed and starts it with VMs as `options` says.
    pub fn start_with(options: VcsimOptions) -> Result<Self, FixtureError> {
        let binary = build()?;
        let dir = tempfile::Builder::new()
            .prefix("haven-vcsim-")
            .tempdir()
            .map_err(FixtureError::io("cannot create the simulator's folder"))?;
        let info_file = dir.path().join("info.json");
        let ca_file = dir.path().join("ca.pem");
        let log = dir.path().join("vcsim.log");
        let mut command = Command::new(&binary);
        command
            .arg("-disk-mib")
            .arg(options.disk_mib.to_string())
            .arg("-disks")
            .arg(options.disks.to_string())
            .arg("-snapshot-log")
            .arg(dir.path().join("snapshots.jsonl"))
            .arg("-ca-file")
            .arg(&ca_file)
            .arg("-info")
            .arg(&info_file)
            .env("TMPDIR", dir.path());
        if options.tools_running {
            command.arg("-tools-running");
        }
        let mut child = ChildGuard::spawn(&mut command, &log, GO_HINT)?;
        wait_until("vcsim", Duration::from_secs(60), || {
            if let Some(exit) = child.exit_status() {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("{exit}: {}", log.trim()));
            }
            Ok(info_file.exists())
        })?;
        let text = std::fs::read_to_string(&info_file).map_err(FixtureError::io(format!(
            "cannot read {}",
            info_file.display()
        )))?;
        let info = serde_json::from_str(&text).map_err(|error| {
            FixtureError::io(format!("{} is not the harness's JSON", info_file.display()))(
                std::io::Error::other(error),
            )
        })?;
        Ok(Self { child, info, dir })
    }

    /// The host and port, as `HOST:PORT`.
    pub fn authority(&self) -> &str {
        let rest = self.info.url.trim_start_matches("https://");
        rest.split('/').next().unwrap_or(rest)
    }

    /// The local path of the flat disk file of `vm`'s first disk (`disk1-flat.vmdk` in
    /// the VM's folder of datastore `LocalDS_0`), which tests write their data into.
    pub fn flat_file(&self, vm: &str) -> Option<PathBuf> {
        self.disk_file(vm, 1)
    }

    /// The local path of the flat file of `vm`'s disk `n` (from 1: `diskN-flat.vmdk`).
    pub fn disk_file(&self, vm: &str, n: u32) -> Option<PathBuf> {
        let datastore = self.info.datastores.get("LocalDS_0")?;
        Some(datastore.join(vm).join(format!("disk{n}-flat.vmdk")))
    }

    /// Every snapshot request received so far, oldest first.
    pub fn snapshot_requests(&self) -> Result<Vec<SnapshotRequest>, FixtureError> {
        let file = self.dir.path().join("snapshots.jsonl");
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(error) => {
                return Err(FixtureError::io(format!("cannot read {}", file.display()))(
                    error,
                ));
            }
        };
        text.lines()
            .map(|line| {
                serde_json::from_str(line).map_err(|error| {
                    FixtureError::io(format!("{} holds {line:?}", file.display()))(
                        std::io::Error::other(error),
                    )
                })
            })
            .collect()
    }

    /// Stops the simulator now (SIGKILL).
    pub fn stop(&mut self) {
        self.child.kill();
    }
}

/// The built harness: compiled once per version of its source, under a lock so that
/// test processes started together build it once.
fn build() -> Result<PathBuf, FixtureError> {
    let root = std::env::temp_dir().join("haven-vcsim-build");
    let dir = root.join(format!("{:016x}", fnv1a(SOURCE.as_bytes())));
    let binary = dir.join("vcsim");
    if binary.exists() {
        return Ok(binary);
    }
    std::fs::create_dir_all(&dir)
        .map_err(FixtureError::io(format!("cannot create {}", dir.display())))?;
    let _lock = FileLock::take(&dir.join("lock"))?;
    if binary.exists() {
        return Ok(binary);
    }
    let source_dir = dir.join("src");
    std::fs::create_dir_all(&source_dir).map_err(FixtureError::io(format!(
        "cannot create {}",
        source_dir.display()
    )))?;
    std::fs::write(source_dir.join("main.go"), SOURCE)
        .map_err(FixtureError::io("cannot write the harness's source"))?;
    let partial = dir.join("vcsim.partial");
    run(
        Command::new("go")
            .arg("build")
            .arg("-o")
            .arg(&partial)
            .arg(".")
            .current_dir(&source_dir)
            .env("GO111MODULE", "off")
            .env("GOPATH", "/usr/share/gocode")
            .env("GOCACHE", root.join("gocache")),
        GO_HINT,
    )?;
    std::fs::rename(&partial, &binary).map_err(FixtureError::io(format!(
        "cannot rename {}",
        partial.display()
    )))?;
    Ok(binary)
}

/// FNV-1a, to name a build after its source without another dependency.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// An exclusive `flock` on a file, released when dropped (the file is closed).
struct FileLock {
    _file: std::fs::File,
}

impl FileLock {
    fn take(path: &Path) -> Result<Self, FixtureError> {
        let file = std::fs::File::create(path)
            .map_err(FixtureError::io(format!("cannot open {}", path.display())))?;
        // SAFETY: flock on a descriptor open for the whole call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(FixtureError::io(format!("cannot lock {}", path.display()))(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Self { _file: file })
    }
}
