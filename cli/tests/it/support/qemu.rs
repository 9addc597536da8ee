//! Harness for live-backup tests: real `qemu-storage-daemon` and `qemu-system-x86_64`
//! processes (killed by `Drop`), a blocking QMP client, guest writes, and `haven backup
//! qemu` runs whose stderr is watched for the snapshot point.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Guard(pub Option<Child>);

impl Guard {
    pub fn pid(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }

    /// kill -9 and reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for a clean exit.
    pub fn wait(&mut self) {
        if let Some(mut child) = self.0.take() {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                assert!(Instant::now() < deadline, "process did not exit");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A blocking QMP connection.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    pub fn connect(socket: &Path) -> Self {
        let stream = UnixStream::connect(socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut qmp = Self {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
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
                continue;
            }
            if let Some(value) = reply.get("return") {
                return Ok(value.clone());
            }
            return Err(reply["error"]["desc"].as_str().unwrap_or("?").to_string());
        }
    }

    pub fn run(&mut self, command: &str, arguments: Value) -> Value {
        self.try_run(command, arguments.clone())
            .unwrap_or_else(|e| panic!("{command} {arguments}: {e}"))
    }

    /// Bitmaps of a node: (name, recording, inconsistent).
    pub fn bitmaps(&mut self, node: &str) -> Vec<(String, bool, bool)> {
        let nodes = self.run("query-named-block-nodes", json!({"flat": true}));
        let node = nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node-name"] == node)
            .unwrap_or_else(|| panic!("no node {node}"));
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

/// Waits until a Unix socket accepts connections.
pub fn wait_for_socket(path: &Path, child: &mut Guard) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if UnixStream::connect(path).is_ok() {
            return;
        }
        if let Some(child) = child.0.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            panic!("process exited with {status}: {stderr}");
        }
        assert!(
            Instant::now() < deadline,
            "{} never came up",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
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
    pub fn start(dir: &Path, images: &[PathBuf]) -> Self {
        let qmp = dir.join("qsd-qmp.sock");
        let nbd = dir.join("qsd-nbd.sock");
        let _ = std::fs::remove_file(&qmp);
        let mut command = Command::new("qemu-storage-daemon");
        command
            .arg("--chardev")
            .arg(format!(
                "socket,path={},server=on,wait=off,id=m",
                qmp.display()
            ))
            .args(["--monitor", "chardev=m"]);
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
        let mut guard = Guard(Some(child));
        wait_for_socket(&qmp, &mut guard);
        wait_for_socket(&nbd, &mut guard);
        Self {
            guard,
            qmp,
            nbd,
            images: images.to_vec(),
        }
    }

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
        let output = Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw", &self.uri(disk)])
            .arg(to)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Clean `quit`: persistent bitmaps are written to the images.
    pub fn quit(mut self) {
        let mut qmp = Qmp::connect(&self.qmp);
        let _ = qmp.try_run("quit", json!({}));
        self.guard.wait();
    }
}

/// A running `haven backup qemu` whose stderr is watched.
pub struct RunningBackup {
    pub guard: Guard,
    point_taken: mpsc::Receiver<()>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl RunningBackup {
    pub fn start(mut command: Command) -> Self {
        command
            .env("HAVEN_LOG", "haven_worker=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let pipe = child.stderr.take().unwrap();
        let (sender, point_taken) = mpsc::channel();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { return };
                if line.contains("point-in-time view taken") {
                    let _ = sender.send(());
                }
                log.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        Self {
            guard: Guard(Some(child)),
            point_taken,
            stderr,
        }
    }

    /// Blocks until the snapshot point is taken (writes after this must not leak).
    pub fn wait_point_taken(&self) {
        self.point_taken
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no snapshot point: {}", self.stderr()));
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.guard.0.as_mut().unwrap().try_wait(), Ok(None))
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for success and parses the JSON report.
    pub fn finish(mut self) -> Value {
        let mut child = self.guard.0.take().unwrap();
        let mut stdout = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        let status = child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            status.success(),
            "haven backup qemu failed: {}{}",
            stdout,
            self.stderr()
        );
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    }
}

/// Disk figures of a report by name.
pub fn disk<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == name)
        .unwrap_or_else(|| panic!("no disk {name} in {report}"))
}

/// Mode (`full`/`incremental`) and reason of a disk in a report.
pub fn mode(report: &Value, name: &str) -> (String, String) {
    let mode = report["modes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == name)
        .unwrap_or_else(|| panic!("no mode for {name} in {report}"));
    (
        mode["mode"].as_str().unwrap().to_string(),
        mode["reason"].as_str().unwrap_or_default().to_string(),
    )
}
