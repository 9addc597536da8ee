//! What the cluster tests start besides etcd: `qemu-storage-daemon` VMs and their
//! disks, repositories, and the `haven` CLI pointed at a coordinator; every process is
//! killed by `Drop` ([`Guard`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::bed::Bed;
use super::haven::{HavenClient, PASSWORD, haven};
use super::image::convert;
use super::pki::Pki;
use super::process::{Guard, free_port, spawn_logged, wait_for_socket};
use super::qemu::qemu_storage_daemon;

/// Serialises the cluster tests. Each starts a whole cluster (etcd members,
/// coordinators, workers, VMs) whose leases are a few seconds long and whose
/// scenarios wait for failovers and fencing; two of them at once on a small machine
/// starve each other's lease renewals and turn timing into flakes. As separate test
/// binaries they never overlapped; in one binary they take turns here.
static ONE_CLUSTER_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Waits until no other cluster test runs; hold the guard for the whole test.
pub fn one_cluster_at_a_time() -> MutexGuard<'static, ()> {
    // A test that failed while holding it leaves nothing behind (its guards ran).
    ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// `haven repo init [EXTRA] --repo REPO` with the test password; it must succeed.
pub fn init_repo(repo: &Path, extra: &[&str]) {
    let mut args = vec!["repo", "init"];
    args.extend_from_slice(extra);
    HavenClient::new(repo.display().to_string()).ok(&args);
}

/// A qcow2 image of `size_mib` with `data_mib` of random data at its start.
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
    let mut command = qemu_storage_daemon(qmp);
    command
        .arg("--blockdev")
        .arg(format!(
            "driver=file,filename={},node-name=file0",
            image.display()
        ))
        .args(["--blockdev", "driver=qcow2,file=file0,node-name=disk0"]);
    command
}

/// Starts a VM like [`vm_command`] and waits for its QMP socket.
pub fn start_vm(qmp: &Path, image: &Path, log: &Path) -> Guard {
    let mut guard = spawn_logged(&mut vm_command(qmp, image), log);
    wait_for_socket(qmp, &mut guard);
    guard
}

/// One VM `web` in `DIR/vms`, the folder of QMP sockets that `haven dev --qmp-dir`
/// and a worker's `qmp_dir` read: its qcow2 disk `DIR/web.qcow2`, made by `make`,
/// served by qemu-storage-daemon until dropped.
pub struct WebVm {
    /// The folder of QMP sockets.
    pub vms: PathBuf,
    /// The disk.
    pub image: PathBuf,
    _daemon: Guard,
}

impl WebVm {
    /// Makes the disk with `make` and starts the VM.
    pub fn start(dir: &Path, make: impl FnOnce(&Path)) -> Self {
        let vms = dir.join("vms");
        std::fs::create_dir_all(&vms).unwrap();
        let image = dir.join("web.qcow2");
        make(&image);
        let daemon = start_vm(&vms.join("web.qmp"), &image, &dir.join("web.log"));
        Self {
            vms,
            image,
            _daemon: daemon,
        }
    }
}

/// A VM like [`start_vm`] whose daemon also runs an NBD server at `nbd` with a
/// writable export `guest` of the disk: the "guest" writes through it, and Haven adds
/// its own exports to the same server (QEMU runs only one).
pub fn start_vm_with_nbd(qmp: &Path, nbd: &Path, image: &Path, log: &Path) -> Guard {
    let mut guard = spawn_logged(
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
    let guest = format!("nbd+unix:///guest?socket={}", nbd.display());
    convert(&guest, "raw", to, "raw");
}

/// The `haven` CLI pointed at a coordinator (`HAVEN_COORDINATOR`), with the test
/// password and any extra environment.
#[derive(Clone)]
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

    /// The CLI as the admin of a `haven dev` listening at `url`, with the certificates
    /// it made in `STATE_DIR/pki`.
    pub fn dev_admin(url: impl Into<String>, state_dir: &Path) -> Self {
        let pki = state_dir.join("pki");
        let file = |name: &str| pki.join(name).to_str().unwrap().to_string();
        Self::new(url)
            .with_env("HAVEN_CA_FILE", file("ca.pem"))
            .with_env("HAVEN_CERT_FILE", file("admin.pem"))
            .with_env("HAVEN_KEY_FILE", file("admin-key.pem"))
    }

    /// Adds a variable to every run's environment.
    pub fn with_env(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.env.push((key, value.into()));
        self
    }

    /// Runs `haven ARGS`.
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        let mut command = haven(args);
        command
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

    /// Waits (30 s at most) until a coordinator answers `haven vm list`: it has come up.
    pub fn wait_until_answering(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !self.run(&["vm", "list"]).status.success() {
            assert!(
                std::time::Instant::now() < deadline,
                "the coordinator did not come up"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// Writes the policy file `file` holding `toml` and applies it (`haven policy
    /// apply`), which must succeed; returns what the command printed.
    pub fn apply_policy(&self, file: &Path, toml: &str) -> String {
        std::fs::write(file, toml).unwrap();
        self.ok(&["policy", "apply", file.to_str().unwrap()])
    }

    /// Starts a backup of `vm` into `repo` now (`haven job run`); returns the job id.
    pub fn start_backup(&self, vm: &str, repo: &str) -> String {
        self.ok(&["job", "run", vm, "--repo", repo])
            .trim()
            .to_owned()
    }

    /// Every snapshot in the repository `repo`, as `haven snapshots --json` prints them.
    pub fn snapshots(&self, repo: &Path) -> Vec<serde_json::Value> {
        let list = self.ok(&["snapshots", "--repo", repo.to_str().unwrap(), "--json"]);
        serde_json::from_str(&list).unwrap()
    }

    /// Waits until at least `count` jobs of `kind` have succeeded and none is pending or
    /// running; those jobs. Any failed job fails the test.
    pub fn wait_for(
        &self,
        kind: &str,
        count: usize,
        timeout: std::time::Duration,
    ) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let jobs = self.jobs();
            let done: Vec<serde_json::Value> = jobs
                .iter()
                .filter(|j| j["kind"] == kind && j["state"] == "succeeded")
                .cloned()
                .collect();
            let failed: Vec<&serde_json::Value> =
                jobs.iter().filter(|j| j["state"] == "failed").collect();
            assert!(failed.is_empty(), "failed jobs: {failed:#?}");
            let active = jobs
                .iter()
                .any(|j| j["state"] != "succeeded" && j["state"] != "failed");
            if done.len() >= count && !active {
                return done;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {count} {kind} jobs: {jobs:#?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    }

    /// Every job, newest first, as `haven job list --json` prints them.
    pub fn jobs(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ok(&["job", "list", "--limit", "0", "--json"])).unwrap()
    }
}

/// The smallest whole cluster: one `haven coordinator` (embedded store, allowed to
/// write `bed`'s repository) and one `haven worker` `w1` reaching the hosts of
/// `hosts_toml` (`[[hosts]]` tables), with mutual TLS from a CA of their own; both
/// processes log into the bed and are killed on drop. For the tests of one host kind
/// scheduled end to end (libvirt, vCenter).
pub struct OneWorker {
    /// The CLI as the cluster's admin.
    pub cli: Cli,
    log: PathBuf,
    _coordinator: Guard,
    _worker: Guard,
}

impl OneWorker {
    /// Starts both processes in `bed`'s folder.
    pub fn start(bed: &Bed, hosts_toml: &str) -> Self {
        let port = free_port();
        let url = format!("https://127.0.0.1:{port}");
        let pki = Pki::new(bed.dir.path());
        let coordinator_config = bed.path("coordinator.toml");
        std::fs::write(
            &coordinator_config,
            format!(
                "listen = \"127.0.0.1:{port}\"\nstate_path = {:?}\nworker_lease_seconds = 5\n\
                 allowed_repositories = [{:?}]\n{}",
                bed.path("state.redb").to_str().unwrap(),
                bed.repo_url(),
                pki.coordinator_toml()
            ),
        )
        .unwrap();
        let worker_config = bed.path("worker.toml");
        std::fs::write(
            &worker_config,
            format!(
                "id = \"w1\"\ncoordinators = [{url:?}]\nscratch_dir = {:?}\n\
                 inventory_interval_seconds = 2\n{}\n{hosts_toml}",
                bed.path("scratch").to_str().unwrap(),
                pki.worker_toml("w1")
            ),
        )
        .unwrap();
        let spawn = |args: &[&str], log: &str| {
            spawn_logged(haven(args).env("HAVEN_PASSWORD", PASSWORD), &bed.path(log))
        };
        let coordinator = spawn(
            &[
                "coordinator",
                "--config",
                coordinator_config.to_str().unwrap(),
            ],
            "coordinator.log",
        );
        let worker = spawn(
            &["worker", "--config", worker_config.to_str().unwrap()],
            "worker.log",
        );
        Self {
            cli: pki.admin(&url),
            log: bed.path("worker.log"),
            _coordinator: coordinator,
            _worker: worker,
        }
    }

    /// The worker's log so far.
    pub fn worker_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (60 s at most) until the worker has reported VM `name`; its record as
    /// `haven vm list --json` prints it.
    pub fn wait_for_vm(&self, name: &str) -> serde_json::Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let out = self.cli.run(&["vm", "list", "--json"]);
            if out.status.success() {
                let vms: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                if let Some(vm) = vms
                    .as_array()
                    .and_then(|vms| vms.iter().find(|vm| vm["name"] == name))
                {
                    return vm.clone();
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the worker did not report VM {name}: {}",
                self.worker_log()
            );
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    }
}
