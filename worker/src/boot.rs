//! Boot tests: does a snapshot still boot? (`haven verify --boot`).
//!
//! [`boot_test`] starts the snapshot in a [`sandbox::Sandbox`] (QEMU on read-only NBD
//! exports of the snapshot under throw-away overlays, no network unless the check is a
//! TCP port), with the kernel and
//! initrd read from the snapshot's own file system ([`kernel`]) and CPUs and memory
//! from its recorded configuration within limits ([`resources`]), then waits for a
//! [`BootCheck`] until a timeout. The verdict, the serial log and a screenshot are
//! stored as a sealed boot record beside the snapshot (`haven_repo::write_boot_record`).
//! A failed boot only records a failure; nothing is deleted.

pub mod kernel;
pub mod resources;
pub mod sandbox;
mod sweep;

pub use sweep::remove_abandoned;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use haven_files::BlockDevice;
use haven_repo::{
    BOOT_RECORD_VERSION, BootEvidence, BootOutcome, BootRecord, Repository, SnapshotId,
    SnapshotRef, write_boot_record,
};

use crate::adapters::qemu::qmp::GuestAgent;
use crate::error::{Result, WorkerError};
use crate::restore::snapshot_device::SnapshotDevice;
use crate::restore::snapshot_reader::{ReaderOptions, SnapshotReader};
use kernel::find_boot_files;
use resources::{Limits, resources};
use sandbox::{Accel, Sandbox, agent_socket};

/// How often the check looks at the guest.
const POLL: Duration = Duration::from_millis(500);
/// How long one attempt to reach the guest agent may take.
const AGENT_ATTEMPT: Duration = Duration::from_secs(3);

/// What decides that the guest came up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootCheck {
    /// The QEMU guest agent answers `guest-ping` on its virtio-serial channel.
    Agent,
    /// The serial console printed this text.
    Serial(String),
    /// A TCP port of the guest accepts connections: the sandbox then gives the guest
    /// an isolated network (see [`sandbox`]) with this port forwarded.
    Tcp(u16),
}

impl BootCheck {
    /// The guest port the check connects to, when it needs the sandbox network.
    pub fn tcp_port(&self) -> Option<u16> {
        match self {
            BootCheck::Tcp(port) => Some(*port),
            _ => None,
        }
    }
}

impl FromStr for BootCheck {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        match text.split_once(':') {
            _ if text == "agent" => Ok(BootCheck::Agent),
            Some(("serial", pattern)) if !pattern.is_empty() => {
                Ok(BootCheck::Serial(pattern.to_string()))
            }
            Some(("tcp", port)) => match port.parse::<u16>() {
                Ok(port) if port > 0 => Ok(BootCheck::Tcp(port)),
                _ => Err(format!(
                    "{text:?}: expected `tcp:PORT`, PORT from 1 to 65535"
                )),
            },
            _ => Err(format!(
                "{text:?}: expected `agent` (the guest agent answers guest-ping), \
                 `serial:TEXT` (the serial console prints TEXT) or `tcp:PORT` (a TCP port \
                 of the guest accepts connections)"
            )),
        }
    }
}

impl std::fmt::Display for BootCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BootCheck::Agent => f.write_str("agent"),
            BootCheck::Serial(pattern) => write!(f, "serial:{pattern}"),
            BootCheck::Tcp(port) => write!(f, "tcp:{port}"),
        }
    }
}

/// One boot test.
#[derive(Debug, Clone)]
pub struct BootRequest {
    /// The snapshot.
    pub snapshot: SnapshotRef,
    /// What decides.
    pub check: BootCheck,
    /// How long the guest has to pass the check, from the moment QEMU starts.
    pub timeout: Duration,
    /// Upper bounds of CPUs and memory.
    pub limits: Limits,
    /// Where the sandbox folder is made (`None`: the system's temporary folder).
    pub work_dir: Option<PathBuf>,
    /// KVM or TCG (`None`: KVM when usable).
    pub accel: Option<Accel>,
}

/// The outcome of [`boot_test`].
#[derive(Debug, Clone)]
pub struct BootReport {
    /// The snapshot tested.
    pub snapshot: SnapshotId,
    /// The verdict as stored.
    pub record: BootRecord,
    /// Its key in the repository.
    pub record_key: String,
    /// The evidence as stored.
    pub evidence: BootEvidence,
}

/// Boot-tests one snapshot and stores the verdict. `Err` only when the test itself
/// could not be run or recorded (no such snapshot, repository unreachable, QEMU not
/// installed); a guest that does not come up is an `Ok` with a failed record.
pub async fn boot_test(repo: Arc<Repository>, request: &BootRequest) -> Result<BootReport> {
    let started = Instant::now();
    let id = repo.resolve(&request.snapshot).await?;
    let manifest = repo.read_manifest(&id).await?;
    let resources = resources(&manifest, request.limits);
    let accel = match request.accel {
        Some(accel) => accel,
        None => Accel::detect().await,
    };
    let reference = SnapshotRef {
        vm: id.vm.clone(),
        timestamp: Some(id.timestamp.clone()),
    };
    let chunk_size = u64::from(repo.chunk_size());
    let options = ReaderOptions {
        cache_chunks: (128 * 1024 * 1024 / chunk_size).max(1) as usize,
        read_ahead: 4,
    };
    let mut readers = Vec::with_capacity(manifest.disks.len());
    for disk in &manifest.disks {
        readers
            .push(SnapshotReader::open(repo.clone(), &reference, Some(&disk.name), options).await?);
    }
    let parent = request.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    sweep::remove_abandoned(&parent);
    let (dir, sandbox_lock) = sweep::create_locked(&parent)?;

    let devices: Vec<Arc<dyn BlockDevice>> = readers
        .iter()
        .map(|reader| {
            Arc::new(SnapshotDevice::new(
                reader.clone(),
                tokio::runtime::Handle::current(),
            )) as Arc<dyn BlockDevice>
        })
        .collect();
    let boot_dir = dir.path().to_path_buf();
    let found = tokio::task::spawn_blocking(move || find_boot_files(&devices, &boot_dir))
        .await
        .map_err(|error| WorkerError::InvalidInput(format!("kernel lookup failed: {error}")))?;
    let base_record = BootRecord {
        version: BOOT_RECORD_VERSION,
        vm: id.vm.clone(),
        snapshot: id.timestamp.clone(),
        booted_at: String::new(),
        outcome: BootOutcome::Failed,
        check: request.check.to_string(),
        duration_ms: 0,
        detail: String::new(),
        sandbox: String::new(),
        evidence: Vec::new(),
    };
    let (record, evidence) = match found {
        Err(reason) => {
            let record = BootRecord {
                duration_ms: started.elapsed().as_millis() as u64,
                detail: haven_proto::error_chain(&reason),
                sandbox: "not started".into(),
                ..base_record
            };
            (record, BootEvidence::default())
        }
        Ok(boot) => {
            let sandbox_text = format!(
                "{} kernel {} root={}, {} CPU(s), {} MiB",
                accel.name(),
                boot.version,
                boot.root,
                resources.cpus,
                resources.memory_mib
            );
            tracing::info!(snapshot = %id, sandbox = %sandbox_text, "boot test: starting");
            let mut sandbox = Sandbox::start(
                dir,
                &readers,
                &boot,
                resources,
                accel,
                request.check.tcp_port(),
            )
            .await?;
            let (outcome, detail) =
                wait_for_check(&mut sandbox, &request.check, request.timeout).await;
            let screenshot = match sandbox.screenshot().await {
                Ok(png) => Some(png),
                Err(error) => {
                    tracing::info!(%error, "boot test: no screenshot");
                    None
                }
            };
            let evidence = BootEvidence {
                serial_log: sandbox.serial_log(),
                screenshot_png: screenshot,
            };
            drop(sandbox);
            drop(sandbox_lock);
            let record = BootRecord {
                outcome,
                duration_ms: started.elapsed().as_millis() as u64,
                detail,
                sandbox: sandbox_text,
                ..base_record
            };
            (record, evidence)
        }
    };
    let record_key = write_boot_record(&repo, &id, record.clone(), &evidence).await?;
    tracing::info!(snapshot = %id, outcome = ?record.outcome, detail = %record.detail, "boot test: recorded");
    // The stored record carries its time and evidence keys; read them back as written.
    let record = haven_repo::latest_boot_record(&repo, &id)
        .await?
        .unwrap_or(record);
    Ok(BootReport {
        snapshot: id,
        record,
        record_key,
        evidence,
    })
}

/// Polls the guest until `check` passes, QEMU exits or `timeout` runs out.
async fn wait_for_check(
    sandbox: &mut Sandbox,
    check: &BootCheck,
    timeout: Duration,
) -> (BootOutcome, String) {
    let started = Instant::now();
    let deadline = started + timeout;
    loop {
        if let Some(passed) = check_once(sandbox, check).await {
            return (
                BootOutcome::Passed,
                format!("{passed} after {:.1} s", started.elapsed().as_secs_f64()),
            );
        }
        if let Some(state) = sandbox.guest_stopped().await {
            return (
                BootOutcome::Failed,
                format!(
                    "the guest stopped ({state}) after {:.1} s before the check passed",
                    started.elapsed().as_secs_f64()
                ),
            );
        }
        if let Some(exit) = sandbox.exited() {
            return (
                BootOutcome::Failed,
                format!(
                    "QEMU ended after {:.1} s before the check passed: {exit}",
                    started.elapsed().as_secs_f64()
                ),
            );
        }
        if Instant::now() >= deadline {
            return (
                BootOutcome::Failed,
                format!(
                    "the check {check} did not pass within {} s",
                    timeout.as_secs()
                ),
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `Some(what passed)` when the check passes now.
async fn check_once(sandbox: &mut Sandbox, check: &BootCheck) -> Option<String> {
    match check {
        BootCheck::Serial(pattern) => {
            let log = sandbox.serial_log();
            let found = log
                .windows(pattern.len())
                .any(|window| window == pattern.as_bytes());
            found.then(|| format!("the serial console printed {pattern:?}"))
        }
        BootCheck::Agent => {
            let socket = agent_socket(sandbox.dir());
            let mut agent = GuestAgent::connect(&socket, AGENT_ATTEMPT).await.ok()?;
            agent
                .execute("guest-ping", serde_json::json!({}))
                .await
                .ok()
                .map(|_| "the guest agent answered guest-ping".to_string())
        }
        BootCheck::Tcp(port) => sandbox
            .guest_port_accepts(AGENT_ATTEMPT)
            .await
            .then(|| format!("the guest accepted a TCP connection on port {port}")),
    }
}

#[cfg(test)]
mod tests {
    use super::BootCheck;

    #[test]
    fn checks_parse_and_print_back() {
        for (text, check) in [
            ("agent", BootCheck::Agent),
            ("serial:login:", BootCheck::Serial("login:".into())),
            ("tcp:22", BootCheck::Tcp(22)),
            ("tcp:65535", BootCheck::Tcp(65535)),
        ] {
            assert_eq!(text.parse::<BootCheck>(), Ok(check.clone()), "{text}");
            assert_eq!(check.to_string(), text);
        }
        assert_eq!(BootCheck::Tcp(22).tcp_port(), Some(22));
        assert_eq!(BootCheck::Agent.tcp_port(), None);
        for bad in ["tcp:", "tcp:0", "tcp:65536", "tcp:ssh", "serial:", "ping"] {
            assert!(bad.parse::<BootCheck>().is_err(), "{bad}");
        }
    }
}
