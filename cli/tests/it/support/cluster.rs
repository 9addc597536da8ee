//! Processes the cluster tests start: etcd members, `qemu-storage-daemon` VMs, and
//! the `haven` binary; all killed by `Drop` ([`Guard`]).

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::qemu::{Guard, wait_for_socket};

pub const HAVEN: &str = env!("CARGO_BIN_EXE_haven");
pub const PASSWORD: &str = "cluster-test-password";

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn spawn(command: &mut Command, log: &Path) -> Guard {
    let log = std::fs::File::create(log).unwrap();
    Guard(Some(
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    ))
}

pub struct Etcd {
    members: Vec<(String, u16, u16)>,
    guards: Vec<Guard>,
    dir: PathBuf,
}

impl Etcd {
    pub fn start(dir: &Path, count: usize) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let members: Vec<(String, u16, u16)> = (0..count)
            .map(|i| (format!("e{i}"), free_port(), free_port()))
            .collect();
        let mut etcd = Self {
            guards: Vec::new(),
            members,
            dir: dir.to_path_buf(),
        };
        for i in 0..count {
            let guard = etcd.spawn_member(i);
            etcd.guards.push(guard);
        }
        etcd
    }

    fn spawn_member(&self, i: usize) -> Guard {
        let cluster: Vec<String> = self
            .members
            .iter()
            .map(|(name, _, peer)| format!("{name}=http://127.0.0.1:{peer}"))
            .collect();
        let (name, client, peer) = &self.members[i];
        spawn(
            Command::new("etcd")
                .arg("--name")
                .arg(name)
                .arg("--data-dir")
                .arg(self.dir.join(name))
                .arg("--listen-client-urls")
                .arg(format!("http://127.0.0.1:{client}"))
                .arg("--advertise-client-urls")
                .arg(format!("http://127.0.0.1:{client}"))
                .arg("--listen-peer-urls")
                .arg(format!("http://127.0.0.1:{peer}"))
                .arg("--initial-advertise-peer-urls")
                .arg(format!("http://127.0.0.1:{peer}"))
                .arg("--initial-cluster")
                .arg(cluster.join(","))
                .args([
                    "--initial-cluster-state",
                    "new",
                    "--initial-cluster-token",
                    "haven-test",
                ]),
            &self.dir.join(format!("{name}.log")),
        )
    }

    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|(_, client, _)| format!("http://127.0.0.1:{client}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn kill(&mut self, i: usize) {
        self.guards[i].kill9();
    }

    pub fn restart(&mut self, i: usize) {
        self.guards[i] = self.spawn_member(i);
    }
}

/// A qcow2 image of `size_mib` with `data_mib` of random data at its start.
/// `haven repo init [EXTRA] --repo REPO` with the test password; it must succeed.
pub fn init_repo(repo: &Path, extra: &[&str]) {
    let out = Command::new(HAVEN)
        .args(["repo", "init"])
        .args(extra)
        .arg("--repo")
        .arg(repo)
        .env("HAVEN_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn make_image(path: &Path, size_mib: u64, data_mib: u64) {
    let raw = path.with_extension("raw");
    let status = Command::new("dd")
        .args(["if=/dev/urandom", "bs=1M", "status=none"])
        .arg(format!("of={}", raw.display()))
        .arg(format!("count={data_mib}"))
        .status()
        .unwrap();
    assert!(status.success());
    let status = Command::new("truncate")
        .arg(format!("--size={size_mib}M"))
        .arg(&raw)
        .status()
        .unwrap();
    assert!(status.success());
    let status = Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::remove_file(raw).unwrap();
}

/// A `qemu-storage-daemon` "hypervisor" with one qcow2 disk `disk0` and its QMP monitor
/// at `qmp`.
fn vm_command(qmp: &Path, image: &Path) -> Command {
    let mut command = Command::new("qemu-storage-daemon");
    command
        .arg("--chardev")
        .arg(format!(
            "socket,path={},server=on,wait=off,id=m",
            qmp.display()
        ))
        .args(["--monitor", "chardev=m", "--blockdev"])
        .arg(format!(
            "driver=file,filename={},node-name=file0",
            image.display()
        ))
        .args(["--blockdev", "driver=qcow2,file=file0,node-name=disk0"]);
    command
}

pub fn start_vm(qmp: &Path, image: &Path, log: &Path) -> Guard {
    let mut guard = spawn(&mut vm_command(qmp, image), log);
    wait_for_socket(qmp, &mut guard);
    guard
}

/// A VM like [`start_vm`] whose daemon also runs an NBD server at `nbd` with a
/// writable export `guest` of the disk: the "guest" writes through it, and Haven adds
/// its own exports to the same server (QEMU runs only one).
pub fn start_vm_with_nbd(qmp: &Path, nbd: &Path, image: &Path, log: &Path) -> Guard {
    let mut guard = spawn(
        vm_command(qmp, image)
            .arg("--nbd-server")
            .arg(format!("addr.type=unix,addr.path={}", nbd.display()))
            .args([
                "--export",
                "type=nbd,id=guest,node-name=disk0,name=guest,writable=on",
            ]),
        log,
    );
    wait_for_socket(qmp, &mut guard);
    wait_for_socket(nbd, &mut guard);
    guard
}

/// `qemu-io` commands on the `guest` export of a VM started by [`start_vm_with_nbd`].
pub fn guest_io(nbd: &Path, commands: &[String]) {
    let mut command = Command::new("qemu-io");
    command.args([
        "-f",
        "raw",
        &format!("nbd+unix:///guest?socket={}", nbd.display()),
    ]);
    for c in commands {
        command.arg("-c").arg(c);
    }
    let out = command.stdout(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "qemu-io: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The disk as the guest sees it now, as a raw file (read through the export, so the
/// daemon's caches cannot hide anything).
pub fn guest_copy(nbd: &Path, to: &Path) {
    let out = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "raw"])
        .arg(format!("nbd+unix:///guest?socket={}", nbd.display()))
        .arg(to)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img convert: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The `haven` CLI pointed at a coordinator (`HAVEN_COORDINATOR`), with the test
/// password and any extra environment.
pub struct Cli {
    coordinators: String,
    env: Vec<(&'static str, String)>,
}

impl Cli {
    /// `haven` against these coordinator URLs (comma-separated).
    pub fn new(coordinators: impl Into<String>) -> Self {
        Self {
            coordinators: coordinators.into(),
            env: Vec::new(),
        }
    }

    /// Adds a variable to every run's environment.
    pub fn with_env(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.env.push((key, value.into()));
        self
    }

    /// Runs `haven ARGS`.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        let mut command = Command::new(HAVEN);
        command
            .args(args)
            .env("HAVEN_PASSWORD", PASSWORD)
            .env("HAVEN_COORDINATOR", &self.coordinators);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command.output().unwrap()
    }

    /// Runs `haven ARGS`, which must succeed; returns its standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "haven {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Every job, newest first, as `haven job list --json` prints them.
    pub fn jobs(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["job", "list", "--limit", "0", "--json"])).unwrap()
    }
}
