//! The test guest (`haven_testkit::guest`, a real Debian bookworm) booted under
//! `qemu-system-x86_64` (TCG) as a live VM: its QMP monitor, its `qemu-guest-agent`
//! on a virtio-serial channel and its serial console in a file, where the guest's
//! fsfreeze hook prints each freeze and thaw. Shared by the tests that back up a
//! booted guest through the CLI (`qemu/agent.rs`) and through a worker daemon
//! (`cluster/freeze.rs`), and by the boot tests, which take the guest slot here.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use haven_testkit::guest::{GuestImages, KERNEL_ROOT, READY_MARKER, test_guest};

use super::image::convert;
use super::process::Guard;
use super::qemu::start_qemu_system;

/// Guests run one at a time: each takes a CPU for tens of seconds under TCG.
static ONE_GUEST_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Waits until no other test runs a guest; hold the guard while the guest runs.
pub fn one_guest_at_a_time() -> MutexGuard<'static, ()> {
    ONE_GUEST_AT_A_TIME
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// The test guest's images (built on first use).
pub fn images() -> GuestImages {
    test_guest().expect("the test guest could not be built (scripts/install-deps.sh)")
}

/// Where a booted guest's sockets and console log are.
pub struct GuestPaths {
    /// QEMU's QMP monitor.
    pub qmp: PathBuf,
    /// The guest agent's channel (QEMU's end of it).
    pub agent: PathBuf,
    /// The serial console's log.
    pub serial: PathBuf,
}

/// The test guest booted from a qcow2 copy of its image, up and its agent answering.
pub struct Booted {
    pub paths: GuestPaths,
    /// The QEMU process, killed when dropped.
    pub vm: Guard,
}

/// Boots the test guest (1 vCPU, 512 MiB) on a qcow2 copy of its image at `disk`,
/// with its sockets and console log at `paths`; returns once the guest printed its
/// ready marker and its agent answers.
pub fn boot(disk: &Path, paths: GuestPaths) -> Booted {
    let images = images();
    convert(images.bootable.to_str().unwrap(), "raw", disk, "qcow2");
    let GuestPaths { qmp, agent, serial } = &paths;
    let mut command = Command::new("qemu-system-x86_64");
    command
        .args([
            "-machine",
            "pc",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-nodefaults",
        ])
        .args(["-display", "none", "-m", "512", "-smp", "1"])
        .arg("-kernel")
        .arg(&images.kernel)
        .arg("-initrd")
        .arg(&images.initrd)
        .args(["-append", &format!("{KERNEL_ROOT} console=ttyS0")])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .arg("-chardev")
        .arg(format!(
            "socket,id=qga0,path={},server=on,wait=off",
            agent.display()
        ))
        .args(["-device", "virtio-serial-pci"])
        .args([
            "-device",
            "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
        ])
        .arg("-blockdev")
        .arg(format!(
            "driver=file,filename={},node-name=file0",
            disk.display()
        ))
        .args(["-blockdev", "driver=qcow2,file=file0,node-name=disk0"])
        .args(["-device", "virtio-blk-pci,drive=disk0,id=vda"]);
    let vm = start_qemu_system(&mut command, qmp);
    wait_for_console(serial, READY_MARKER, Duration::from_secs(600));
    let deadline = Instant::now() + Duration::from_secs(120);
    while !agent_answers(agent) {
        assert!(Instant::now() < deadline, "the guest agent never answered");
        std::thread::sleep(Duration::from_secs(1));
    }
    Booted { paths, vm }
}

/// Waits until `serial` (the guest's console log) holds `text`.
pub fn wait_for_console(serial: &Path, text: &str, timeout: Duration) {
    wait_for_console_times(serial, text, 1, timeout);
}

/// Waits until `serial` holds `text` at least `times` times.
pub fn wait_for_console_times(serial: &Path, text: &str, times: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let log = std::fs::read_to_string(serial).unwrap_or_default();
        if log.matches(text).count() >= times {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the guest did not print {text:?} within {timeout:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether the guest agent at `socket` answers `guest-sync` now.
fn agent_answers(socket: &Path) -> bool {
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
    let request = b"{\"execute\":\"guest-sync\",\"arguments\":{\"id\":4242}}\n";
    if stream.write_all(request).is_err() {
        return false;
    }
    let mut line = String::new();
    let _ = BufReader::new(stream).read_line(&mut line);
    line.contains("4242")
}

/// Runs `command` on the guest agent at `socket` (a connection of its own, synced
/// first); its `return`. A frozen guest cannot write, so the agent stops answering a
/// write: a read timeout ends the wait.
pub fn agent_command(
    socket: &Path,
    command: &str,
    arguments: serde_json::Value,
) -> serde_json::Value {
    let stream = UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut exchange = |request: serde_json::Value| {
        writeln!(writer, "{request}").unwrap();
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .unwrap_or_else(|error| panic!("no answer to {request}: {error}"));
        serde_json::from_str::<serde_json::Value>(&line).unwrap()
    };
    let mut synced =
        exchange(serde_json::json!({"execute": "guest-sync", "arguments": {"id": 77}}));
    while synced["return"] != 77 {
        synced = exchange(serde_json::json!({"execute": "guest-sync", "arguments": {"id": 77}}));
    }
    let reply = exchange(serde_json::json!({"execute": command, "arguments": arguments}));
    assert!(reply.get("error").is_none(), "{command}: {reply}");
    reply["return"].clone()
}

/// Asserts that the guest's file systems are thawed and take a write (through the
/// agent, into a file of the guest).
pub fn assert_guest_writes(agent: &Path) {
    let status = agent_command(agent, "guest-fsfreeze-status", serde_json::json!({}));
    assert_eq!(status, "thawed");
    let handle = agent_command(
        agent,
        "guest-file-open",
        serde_json::json!({"path": "/var/tmp/after-the-backup", "mode": "w"}),
    );
    let written = agent_command(
        agent,
        "guest-file-write",
        serde_json::json!({"handle": handle, "buf-b64": "aGF2ZW4K"}),
    );
    assert_eq!(written["count"], 6, "{written}");
    agent_command(
        agent,
        "guest-file-flush",
        serde_json::json!({"handle": handle}),
    );
    agent_command(
        agent,
        "guest-file-close",
        serde_json::json!({"handle": handle}),
    );
}

/// Whether process `pid` still runs (an exited one its new parent has not reaped yet
/// is a zombie: `Z` in its `stat`).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, rest) = stat.rsplit_once(')')?;
            rest.split_whitespace().next().map(|state| state != "Z")
        })
        .unwrap_or(false)
}

/// The processes whose parent is `parent` and that run the same executable: the
/// thaw watchdogs a backup forked.
pub fn children_running_the_same_binary(parent: u32) -> Vec<u32> {
    let exe = std::fs::read_link(format!("/proc/{parent}/exe")).unwrap();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // After the command name in parentheses: state, then the parent's id.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            ppid == Some(parent)
                && std::fs::read_link(format!("/proc/{pid}/exe")).ok().as_ref() == Some(&exe)
        })
        .collect()
}

/// Waits until none of `pids` runs (the watchdogs exit once they thawed).
pub fn wait_gone(pids: &[u32], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while pids.iter().any(|pid| alive(*pid)) {
        assert!(Instant::now() < deadline, "{pids:?} still run");
        std::thread::sleep(Duration::from_millis(200));
    }
}
