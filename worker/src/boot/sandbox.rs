//! The sandbox a snapshot boots in: one `qemu-system-x86_64` reading every disk of
//! the snapshot from in-process NBD exports through throw-away qcow2 overlays.
//!
//! Nothing can reach the repository or the network: the exports are read-only, the
//! guest's writes land in overlays inside the sandbox folder, and QEMU has no network
//! device (`-nic none`). Only a check of a guest TCP port gives the guest a network,
//! and an isolated one: QEMU's user-mode stack with `restrict=on` (the guest gets an
//! address by DHCP and reaches neither the host nor anything beyond; nothing is routed)
//! and one forward, from an ephemeral port on the host's 127.0.0.1 to the checked
//! port. That forward's listening socket is QEMU's, so a connection to it is accepted
//! whether or not the guest port is open; [`Sandbox::guest_port_accepts`] therefore
//! asks QEMU's own stack (`info usernet`) whether the guest completed the handshake. Everything lives in one temporary folder and one process
//! group: dropping the [`Sandbox`] kills QEMU (it also dies with the worker, by
//! `PR_SET_PDEATHSIG`), stops the exports and removes the folder, so success, failure,
//! timeout and cancellation all clean up the same way.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use haven_nbd::{Endpoint, NbdServer, ServerConfig, ServerListener};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use crate::adapters::qemu::qmp::QmpClient;
use crate::boot::kernel::BootFiles;
use crate::boot::resources::Resources;
use crate::error::{Result, WorkerError};
use crate::restore::snapshot_device::SnapshotExport;
use crate::restore::snapshot_reader::SnapshotReader;

/// Most of the serial log kept as evidence (its tail).
pub const MAX_SERIAL_LOG: u64 = 256 * 1024;
/// Kernel command line besides `root=`: the console on the display (for the
/// screenshot) and on the serial port (for the log, and as `/dev/console`), and a
/// panic that ends the guest at once (a reboot, which [`STOP_ACTIONS`] turn into a
/// stop) instead of hanging until the timeout.
const KERNEL_ARGS: &str = "ro console=tty0 console=ttyS0 panic=1";

/// What QEMU does when the guest reboots, shuts down or panics (through the
/// `pvpanic` device): stop the guest and stay alive, so the check sees the stop
/// (`query-status`) at once and the screenshot still shows the console as the guest
/// left it (a QEMU that exited, as with `-no-reboot`, can take none).
const STOP_ACTIONS: &str = "reboot=shutdown,shutdown=pause,panic=pause";

/// How QEMU executes the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization (`/dev/kvm` opened read-write).
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

impl Accel {
    /// KVM when `/dev/kvm` opens read-write and a paused QEMU with `-accel kvm -cpu
    /// host` starts and quits cleanly, else TCG. Opening the device is not enough: a
    /// nested hypervisor may offer `/dev/kvm` and then refuse the vCPU's MSRs, which
    /// QEMU answers with an abort at the first reset.
    /// Probed once per process.
    pub async fn detect() -> Self {
        static DETECTED: tokio::sync::OnceCell<Accel> = tokio::sync::OnceCell::const_new();
        *DETECTED.get_or_init(Self::probe).await
    }

    async fn probe() -> Self {
        let opens = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        if opens && kvm_starts().await {
            Accel::Kvm
        } else {
            Accel::Tcg
        }
    }

    fn args(self) -> [&'static str; 4] {
        match self {
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => ["-accel", "tcg", "-cpu", "max"],
        }
    }

    /// `kvm` or `tcg`.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// A running guest and everything it needs; all of it ends on drop.
pub struct Sandbox {
    dir: tempfile::TempDir,
    qemu: Child,
    /// The QMP session, opened at the first state query.
    qmp: Option<QmpClient>,
    /// Dropping it stops every NBD export.
    _exports: watch::Sender<bool>,
    export_tasks: Vec<tokio::task::JoinHandle<()>>,
    /// (host port on 127.0.0.1, guest port) of the one forward, when the guest has
    /// the isolated network.
    forward: Option<(u16, u16)>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // SIGKILL now; tokio reaps the child in the background.
        let _ = self.qemu.start_kill();
        for task in &self.export_tasks {
            task.abort();
        }
    }
}

/// Where the guest's devices are, inside the sandbox folder.
fn qmp_socket(dir: &Path) -> PathBuf {
    dir.join("qmp.sock")
}

/// Whether QEMU can start (and quit) a vCPU under KVM.
async fn kvm_starts() -> bool {
    use tokio::io::AsyncWriteExt;
    let mut command = Command::new("qemu-system-x86_64");
    command
        .args([
            "-accel",
            "kvm",
            "-cpu",
            "host",
            "-machine",
            "pc",
            "-nodefaults",
        ])
        .args(["-display", "none", "-S", "-m", "32", "-qmp", "stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let Ok(mut child) = command.spawn() else {
        return false;
    };
    let probe = async {
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin
                .write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"quit\"}\n")
                .await;
        }
        child.wait().await
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(20), probe).await,
        Ok(Ok(status)) if status.success()
    )
}

/// The guest agent's channel (a virtio-serial port named `org.qemu.guest_agent.0`).
pub fn agent_socket(dir: &Path) -> PathBuf {
    dir.join("qga.sock")
}

fn serial_log(dir: &Path) -> PathBuf {
    dir.join("serial.log")
}

impl Sandbox {
    /// Starts the guest: `readers` are the snapshot's disks in manifest order (the
    /// guest's vda, vdb, …), `boot` the kernel found on them, inside `dir` (which the
    /// sandbox owns from now on and removes).
    pub async fn start(
        dir: tempfile::TempDir,
        readers: &[SnapshotReader],
        boot: &BootFiles,
        resources: Resources,
        accel: Accel,
        guest_port: Option<u16>,
    ) -> Result<Self> {
        let (stop, stopped) = watch::channel(false);
        let mut export_tasks = Vec::with_capacity(readers.len());
        let mut drives = Vec::new();
        for (index, reader) in readers.iter().enumerate() {
            let socket = dir.path().join(format!("disk{index}.sock"));
            let listener = ServerListener::bind(&Endpoint::Unix(socket.clone())).await?;
            let mut config = ServerConfig::new(reader.disk());
            config.description = format!("haven boot test of {}", reader.snapshot());
            let server = NbdServer::new(Arc::new(SnapshotExport(reader.clone())), config);
            let shutdown = stopped.clone();
            export_tasks.push(tokio::spawn(async move {
                if let Err(error) = server.serve(listener, shutdown).await {
                    tracing::warn!(%error, "boot sandbox: NBD export ended");
                }
            }));
            let overlay = dir.path().join(format!("overlay{index}.qcow2"));
            // Its backing is given on QEMU's command line: qemu-img never opens the export.
            crate::export::create_qcow2(&overlay, reader.size()).await?;
            drives.extend(drive_args(index, reader.disk(), &socket, &overlay));
        }
        let mut command = Command::new("qemu-system-x86_64");
        command
            .args(["-nodefaults", "-no-user-config", "-machine", "pc"])
            .args(accel.args())
            .args(["-smp", &resources.cpus.to_string()])
            .args(["-m", &resources.memory_mib.to_string()])
            .args(["-display", "none", "-vga", "std"]);
        let forward = match guest_port {
            None => {
                command.args(["-nic", "none"]);
                None
            }
            Some(guest) => {
                let host = free_loopback_port()?;
                command.args([
                    "-netdev",
                    &format!("user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{host}-:{guest}"),
                    "-device",
                    "virtio-net-pci,netdev=net0",
                ]);
                Some((host, guest))
            }
        };
        command
            .args(["-device", "pvpanic", "-action", STOP_ACTIONS])
            .arg("-kernel")
            .arg(&boot.kernel)
            .arg("-initrd")
            .arg(&boot.initrd)
            .args(["-append", &format!("root={} {KERNEL_ARGS}", boot.root)])
            .arg("-chardev")
            .arg(format!(
                "file,id=serial0,path={}",
                serial_log(dir.path()).display()
            ))
            .args(["-serial", "chardev:serial0"])
            .arg("-qmp")
            .arg(format!(
                "unix:{},server=on,wait=off",
                qmp_socket(dir.path()).display()
            ))
            .arg("-chardev")
            .arg(format!(
                "socket,id=qga0,path={},server=on,wait=off",
                agent_socket(dir.path()).display()
            ))
            .args(["-device", "virtio-serial-pci"])
            .args([
                "-device",
                "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            ])
            .args(drives)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("qemu.stderr"))
                    .map_err(WorkerError::io("cannot create the sandbox's QEMU log"))?,
            ))
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe and touches only the child being set up.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let qemu = command.spawn().map_err(|source| WorkerError::Tool {
            program: "qemu-system-x86_64".into(),
            message: format!("cannot start it ({source}); install the qemu-system-x86 package"),
        })?;
        Ok(Self {
            dir,
            qemu,
            qmp: None,
            _exports: stop,
            export_tasks,
            forward,
        })
    }

    /// Whether the guest accepts a TCP connection on the forwarded port now: a
    /// connection to the forward, held at most `attempt` while QEMU's user-mode stack
    /// (`info usernet`) shows its connection to the guest port `ESTABLISHED`. A closed
    /// guest port answers QEMU's handshake with a reset (QEMU then closes the
    /// connection), a guest without a network never answers it (`SYN_SENT`); neither
    /// counts. `false` without a forward.
    pub async fn guest_port_accepts(&mut self, attempt: Duration) -> bool {
        let Some((host, guest)) = self.forward else {
            return false;
        };
        let deadline = tokio::time::Instant::now() + attempt;
        let connect = tokio::net::TcpStream::connect(("127.0.0.1", host));
        let Ok(Ok(_connection)) = tokio::time::timeout_at(deadline, connect).await else {
            return false;
        };
        while tokio::time::Instant::now() < deadline {
            if let Some(table) = self.monitor("info usernet").await
                && established(&table, guest)
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }

    /// The output of a human monitor command through QMP; `None` when QMP cannot be
    /// reached or the command fails.
    async fn monitor(&mut self, command_line: &str) -> Option<String> {
        if self.qmp.as_ref().is_none_or(QmpClient::is_poisoned) {
            self.qmp = QmpClient::connect(&qmp_socket(self.dir.path()), Duration::from_secs(5))
                .await
                .ok();
        }
        let reply = self
            .qmp
            .as_mut()?
            .execute(
                "human-monitor-command",
                serde_json::json!({"command-line": command_line}),
            )
            .await
            .ok()?;
        reply.as_str().map(str::to_string)
    }

    /// The sandbox folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `Some(description)` once QEMU has exited (the guest shut down or panicked, or
    /// QEMU refused to start: its own message is included).
    pub fn exited(&mut self) -> Option<String> {
        let status = match self.qemu.try_wait() {
            Ok(Some(status)) => status,
            Ok(None) => return None,
            Err(error) => return Some(format!("cannot wait for QEMU: {error}")),
        };
        let stderr =
            std::fs::read_to_string(self.dir.path().join("qemu.stderr")).unwrap_or_default();
        let stderr = stderr.trim();
        Some(if stderr.is_empty() {
            format!("QEMU exited ({status})")
        } else {
            format!("QEMU exited ({status}): {stderr}")
        })
    }

    /// `Some(state)` once the guest has stopped (shut down, rebooted, panicked, or
    /// halted on an error), as QMP `query-status` tells; `None` while it runs or QMP
    /// cannot be asked yet.
    pub async fn guest_stopped(&mut self) -> Option<String> {
        if self.qmp.as_ref().is_none_or(QmpClient::is_poisoned) {
            self.qmp = QmpClient::connect(&qmp_socket(self.dir.path()), Duration::from_secs(5))
                .await
                .ok();
        }
        let qmp = self.qmp.as_mut()?;
        let status = qmp
            .execute("query-status", serde_json::json!({}))
            .await
            .ok()?;
        let state = status.get("status")?.as_str()?.to_string();
        matches!(
            state.as_str(),
            "shutdown" | "guest-panicked" | "internal-error" | "io-error"
        )
        .then_some(state)
    }

    /// The serial log so far (its last [`MAX_SERIAL_LOG`] bytes).
    pub fn serial_log(&self) -> Vec<u8> {
        read_tail(&serial_log(self.dir.path()), MAX_SERIAL_LOG)
    }

    /// A PNG of the display, through QMP `screendump`; `Err` says why none was taken.
    pub async fn screenshot(&mut self) -> std::result::Result<Vec<u8>, String> {
        let path = self.dir.path().join("screen.png");
        if self.qmp.as_ref().is_none_or(QmpClient::is_poisoned) {
            self.qmp = Some(
                QmpClient::connect(&qmp_socket(self.dir.path()), Duration::from_secs(10))
                    .await
                    .map_err(|error| error.to_string())?,
            );
        }
        let Some(qmp) = self.qmp.as_mut() else {
            return Err("no QMP session".into());
        };
        qmp.execute(
            "screendump",
            serde_json::json!({"filename": path.display().to_string(), "format": "png"}),
        )
        .await
        .map_err(|error| error.to_string())?;
        std::fs::read(&path).map_err(|error| format!("cannot read the screenshot: {error}"))
    }
}

/// A port of 127.0.0.1 free now, for the forward (the kernel picks it; QEMU binds it
/// a moment later, and fails to start in the rare case another process took it).
fn free_loopback_port() -> Result<u16> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(WorkerError::io(
            "cannot find a free port for the sandbox network",
        ))
}

/// Whether `table` (QEMU's `info usernet`) shows a TCP connection to guest port `port`
/// established. Its rows read `TCP[STATE] FD SRC-ADDRESS SRC-PORT DST-ADDRESS DST-PORT
/// RECV-Q SEND-Q`; the forward's own listening row is `TCP[HOST_FORWARD]`.
fn established(table: &str, port: u16) -> bool {
    table.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.first() == Some(&"TCP[ESTABLISHED]")
            && fields.get(5).and_then(|field| field.parse::<u16>().ok()) == Some(port)
    })
}

/// `-blockdev` and `-device` arguments of disk `index`: the NBD export, read-only,
/// as the backing of a qcow2 overlay that takes every write.
fn drive_args(index: usize, name: &str, socket: &Path, overlay: &Path) -> Vec<String> {
    vec![
        "-blockdev".into(),
        format!(
            "driver=nbd,node-name=snap{index},server.type=unix,server.path={},export={name},read-only=on",
            socket.display()
        ),
        "-blockdev".into(),
        format!(
            "driver=file,node-name=overlay-file{index},filename={}",
            overlay.display()
        ),
        "-blockdev".into(),
        format!("driver=qcow2,node-name=disk{index},file=overlay-file{index},backing=snap{index}"),
        "-device".into(),
        format!("virtio-blk-pci,drive=disk{index}"),
    ]
}

/// The last `max` bytes of `path` (empty when it cannot be read).
fn read_tail(path: &Path, max: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let length = file.metadata().map(|metadata| metadata.len()).unwrap_or(0);
    if file
        .seek(SeekFrom::Start(length.saturating_sub(max)))
        .is_err()
    {
        return Vec::new();
    }
    let mut tail = Vec::new();
    let _ = file.take(max).read_to_end(&mut tail);
    tail
}

#[cfg(test)]
mod tests {
    use super::established;

    /// `info usernet` as QEMU 10.0 prints it, a connection to a paused guest pending.
    const TABLE: &str = "Hub -1 (net0):\r
  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\r
  TCP[SYN_SENT]       8       127.0.0.1 45998       10.0.2.15  7777     0     0\r
  TCP[HOST_FORWARD]   3       127.0.0.1 45998       10.0.2.15  7777     0     0\r
";

    #[test]
    fn only_an_established_connection_to_the_port_counts() {
        assert!(!established(TABLE, 7777), "listening and connecting only");
        let open = TABLE.replace("TCP[SYN_SENT]   ", "TCP[ESTABLISHED]");
        assert!(established(&open, 7777));
        assert!(!established(&open, 22), "another port");
        assert!(!established("", 7777));
    }
}
