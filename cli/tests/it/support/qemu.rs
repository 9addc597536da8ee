//! Harness for live-backup tests: real `qemu-storage-daemon` and `qemu-system-x86_64`
//! processes (killed by `Drop`), a blocking QMP client, guest writes, and `haven backup
//! qemu` runs whose stderr is watched for the snapshot point.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::image::convert;
use super::process::{Guard, wait_for_socket};
use super::report::entry;

/// A blocking QMP connection; events that arrive while it waits for a reply are kept
/// for [`Qmp::wait_event`].
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    events: Vec<Value>,
}

impl Qmp {
    /// Connects (waiting up to 10 s for the socket to accept) and negotiates
    /// capabilities.
    pub fn connect(socket: &Path) -> Self {
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match UnixStream::connect(socket) {
                Ok(stream) => break stream,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(error) => panic!("qmp socket: {error}"),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut qmp = Self {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            events: Vec::new(),
        };
        let greeting = qmp.line();
        assert!(greeting.get("QMP").is_some(), "{greeting}");
        qmp.run("qmp_capabilities", json!({}));
        qmp
    }

    fn line(&mut self) -> Value {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad qmp line {line:?}: {e}"))
    }

    /// Runs a command: Ok(return) or Err(desc).
    pub fn try_run(&mut self, command: &str, arguments: Value) -> Result<Value, String> {
        let request = json!({"execute": command, "arguments": arguments});
        writeln!(self.writer, "{request}").unwrap();
        loop {
            let reply = self.line();
            if reply.get("event").is_some() {
                self.events.push(reply);
                continue;
            }
            if let Some(value) = reply.get("return") {
                return Ok(value.clone());
            }
            return Err(reply["error"]["desc"].as_str().unwrap_or("?").to_string());
        }
    }

    /// Runs a command that must succeed; returns its `return`.
    pub fn run(&mut self, command: &str, arguments: Value) -> Value {
        self.try_run(command, arguments.clone())
            .unwrap_or_else(|e| panic!("{command} {arguments}: {e}"))
    }

    /// Waits for the next event called `name` (or takes one that arrived earlier).
    pub fn wait_event(&mut self, name: &str) -> Value {
        if let Some(position) = self.events.iter().position(|e| e["event"] == name) {
            return self.events.remove(position);
        }
        loop {
            let event = self.line();
            if event["event"] == name {
                return event;
            }
            self.events.push(event);
        }
    }

    /// Bitmaps of a node: (name, recording, inconsistent).
    pub fn bitmaps(&mut self, node: &str) -> Vec<(String, bool, bool)> {
        let nodes = self.run("query-named-block-nodes", json!({"flat": true}));
        let node = entry(&nodes, "node-name", node);
        node["dirty-bitmaps"]
            .as_array()
            .map(|list| {
                list.iter()
                    .filter_map(|b| {
                        Some((
                            b["name"].as_str()?.to_string(),
                            b["recording"].as_bool().unwrap_or(false),
                            b["inconsistent"].as_bool().unwrap_or(false),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Asserts nothing Haven creates temporarily is left in QEMU.
    pub fn assert_no_leftovers(&mut self) {
        let nodes = self.run("query-named-block-nodes", json!({"flat": true}));
        for node in nodes.as_array().unwrap() {
            let name = node["node-name"].as_str().unwrap_or_default();
            assert!(!name.starts_with("haven-"), "leftover node {name}");
        }
        let exports = self.run("query-block-exports", json!({}));
        for export in exports.as_array().unwrap() {
            assert!(
                !export["id"].as_str().unwrap().starts_with("haven-"),
                "leftover export {export}"
            );
        }
        let jobs = self.run("query-jobs", json!({}));
        assert_eq!(jobs, json!([]), "leftover jobs");
    }
}

/// A qemu-storage-daemon serving qcow2 disks `disk0`, `disk1`, ... with writable NBD
/// exports `vm0`, `vm1`, ... for "guest" writes.
pub struct StorageDaemon {
    pub guard: Guard,
    pub qmp: PathBuf,
    pub nbd: PathBuf,
    pub images: Vec<PathBuf>,
}

impl StorageDaemon {
    /// Starts the daemon on `images` with its sockets in `dir` and waits for both.
    pub fn start(dir: &Path, images: &[PathBuf]) -> Self {
        let qmp = dir.join("qsd-qmp.sock");
        let nbd = dir.join("qsd-nbd.sock");
        let _ = std::fs::remove_file(&qmp);
        let mut command = qemu_storage_daemon(&qmp);
        for (number, image) in images.iter().enumerate() {
            command
                .arg("--blockdev")
                .arg(format!(
                    "driver=file,filename={},node-name=file{number}",
                    image.display()
                ))
                .arg("--blockdev")
                .arg(format!(
                    "driver=qcow2,file=file{number},node-name=disk{number}"
                ));
        }
        command
            .arg("--nbd-server")
            .arg(format!("addr.type=unix,addr.path={}", nbd.display()));
        for number in 0..images.len() {
            command.arg("--export").arg(format!(
                "type=nbd,id=vm{number},node-name=disk{number},name=vm{number},writable=on"
            ));
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qemu-storage-daemon must be installed (scripts/install-deps.sh)");
        let mut guard = Guard::new(child);
        wait_for_socket(&qmp, &mut guard);
        wait_for_socket(&nbd, &mut guard);
        Self {
            guard,
            qmp,
            nbd,
            images: images.to_vec(),
        }
    }

    /// The NBD URI of disk `disk`'s writable export.
    pub fn uri(&self, disk: usize) -> String {
        format!("nbd+unix:///vm{disk}?socket={}", self.nbd.display())
    }

    /// Guest writes through the writable export: `(pattern, offset, len)` each.
    pub fn write(&self, disk: usize, writes: &[(u8, u64, u64)]) {
        let mut command = Command::new("qemu-io");
        command.args(["-f", "raw", &self.uri(disk)]);
        for (pattern, offset, len) in writes {
            command
                .arg("-c")
                .arg(format!("write -P {pattern} {offset} {len}"));
        }
        let output = command.output().expect("qemu-io must be installed");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(!text.contains("failed"), "{text}");
    }

    /// A raw copy of the disk as the guest sees it now.
    pub fn copy(&self, disk: usize, to: &Path) {
        convert(&self.uri(disk), "raw", to, "raw");
    }

    /// Clean `quit`: persistent bitmaps are written to the images.
    pub fn quit(mut self) {
        let mut qmp = Qmp::connect(&self.qmp);
        let _ = qmp.try_run("quit", json!({}));
        self.guard.wait();
    }
}

/// A `qemu-storage-daemon` with its QMP monitor at `qmp`; the caller adds block nodes,
/// an NBD server and exports.
pub fn qemu_storage_daemon(qmp: &Path) -> Command {
    let mut command = Command::new("qemu-storage-daemon");
    command
        .arg("--chardev")
        .arg(format!(
            "socket,path={},server=on,wait=off,id=m",
            qmp.display()
        ))
        .args(["--monitor", "chardev=m"]);
    command
}

/// A paused `qemu-system-x86_64` (TCG, no OS, no default devices, 64 MiB) of machine
/// type `machine` with its QMP monitor at `qmp`; the caller adds disks and devices.
pub fn qemu_system(machine: &str, qmp: &Path) -> Command {
    let mut command = Command::new("qemu-system-x86_64");
    command
        .args([
            "-machine",
            &format!("{machine},accel=tcg"),
            "-nodefaults",
            "-display",
            "none",
            "-S",
            "-m",
            "64",
        ])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()));
    command
}

/// Starts a [`qemu_system`] command and waits until its QMP socket `qmp` accepts.
pub fn start_qemu_system(command: &mut Command, qmp: &Path) -> Guard {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64 must be installed (scripts/install-qemu-system.sh)");
    let mut guard = Guard::new(child);
    wait_for_socket(qmp, &mut guard);
    guard
}
