//! The smallest secured cluster, shared by the tests that need one worker whose files
//! they control: a coordinator on the embedded store with mutual TLS (`haven pki`),
//! `qemu-storage-daemon` VMs on one host folder, and one worker `w0` started with the
//! certificate files and extra `worker.toml` tables each test chooses.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    cluster::{Cli, init_repo, make_image, start_vm},
    haven::{PASSWORD, haven},
    pki::Pki,
    process::{Guard, free_port, spawn_logged},
};

/// Log filter of every process here: Haven's own crates at `info`, so the tests can
/// read reloads and closed connections in the logs.
const LOG: &str = "haven_worker=info,haven_coordinator=info,haven_tls=info,haven_proto=info";

/// A coordinator, its CA, an admin CLI, VMs and (once started) the worker.
pub struct OneWorker {
    pub dir: PathBuf,
    pub pki: Pki,
    pub url: String,
    pub admin: Cli,
    worker: Option<Guard>,
    coordinator: Option<Guard>,
    /// `coordinator.toml` and the coordinator's extra environment, to start it again.
    coordinator_config: PathBuf,
    coordinator_env: Vec<(String, String)>,
    /// Coordinator processes started so far, which name their logs.
    coordinator_starts: usize,
    _vms: Vec<Guard>,
}

impl OneWorker {
    /// Starts the coordinator (allowing repositories under `dir` and `extra_allowed`,
    /// with `env` added to its environment: the storage key it publishes manifests
    /// with) and one VM per name in `dir/h0`, and waits until the coordinator answers.
    pub fn start(dir: &Path, vms: &[&str], extra_allowed: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_with_tables(dir, vms, extra_allowed, env, "")
    }

    /// [`OneWorker::start`] with `tables` appended to `coordinator.toml` (tables
    /// only, such as `[notify]`).
    pub fn start_with_tables(
        dir: &Path,
        vms: &[&str],
        extra_allowed: &[&str],
        env: &[(&str, &str)],
        tables: &str,
    ) -> Self {
        let images = vms
            .iter()
            .map(|name| {
                let image = dir.join(format!("{name}.qcow2"));
                make_image(&image, 16, 2);
                (name.to_string(), image)
            })
            .collect();
        Self::launch(dir, images, extra_allowed, env, "", tables)
    }

    /// A bed whose VMs serve the given qcow2 disks (name, image), with top-level
    /// `settings` in `coordinator.toml` (`http_listen = ...`).
    pub fn start_with_images(dir: &Path, images: &[(&str, &Path)], settings: &str) -> Self {
        let images = images
            .iter()
            .map(|(name, image)| (name.to_string(), image.to_path_buf()))
            .collect();
        Self::launch(dir, images, &[], &[], settings, "")
    }

    /// A bed whose VMs the caller started in [`OneWorker::host_dir`] (their QMP
    /// sockets `NAME.qmp` there); `vms` are their processes, killed with the bed.
    pub fn start_with_vms(dir: &Path, vms: Vec<Guard>) -> Self {
        Self::assemble(dir, vms, &[], &[], "", "")
    }

    /// The worker's one host folder (its `qmp_dir`), created if missing.
    pub fn host_dir(dir: &Path) -> PathBuf {
        let hosts = dir.join("h0");
        std::fs::create_dir_all(&hosts).unwrap();
        hosts
    }

    /// Starts one VM per (name, qcow2 image) in `dir/h0` and the coordinator, and
    /// waits until it answers.
    fn launch(
        dir: &Path,
        images: Vec<(String, PathBuf)>,
        extra_allowed: &[&str],
        env: &[(&str, &str)],
        settings: &str,
        tables: &str,
    ) -> Self {
        let hosts = Self::host_dir(dir);
        let vms = images
            .iter()
            .map(|(name, image)| {
                start_vm(
                    &hosts.join(format!("{name}.qmp")),
                    image,
                    &dir.join(format!("{name}.log")),
                )
            })
            .collect();
        Self::assemble(dir, vms, extra_allowed, env, settings, tables)
    }

    /// Starts the coordinator of a bed whose VMs `vms` run, and waits until it answers.
    fn assemble(
        dir: &Path,
        vms: Vec<Guard>,
        extra_allowed: &[&str],
        env: &[(&str, &str)],
        settings: &str,
        tables: &str,
    ) -> Self {
        let pki = Pki::new(dir);
        let mut allowed = vec![format!("{}*", dir.to_str().unwrap())];
        allowed.extend(extra_allowed.iter().map(|url| url.to_string()));
        let port = free_port();
        let config = dir.join("coordinator.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\nstate_path = {:?}\nworker_lease_seconds = 5\n\
                 tick_ms = 200\nallowed_repositories = {allowed:?}\n{settings}{}{tables}",
                dir.join("state.redb"),
                pki.coordinator_toml()
            ),
        )
        .unwrap();
        let url = format!("https://127.0.0.1:{port}");
        let admin = pki.admin(&url);
        let mut bed = Self {
            dir: dir.to_path_buf(),
            pki,
            url,
            admin,
            worker: None,
            coordinator: None,
            coordinator_config: config,
            coordinator_env: env
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            coordinator_starts: 0,
            _vms: vms,
        };
        bed.start_coordinator();
        bed
    }

    /// Starts the coordinator (again) on the same configuration and store, logging to
    /// `coordinator.log` the first time and `coordinator-N.log` after, and waits until
    /// it answers.
    pub fn start_coordinator(&mut self) {
        let config = self.coordinator_config.to_str().unwrap();
        let mut command = haven(&["coordinator", "--config", config]);
        command.env("HAVEN_LOG", LOG);
        for (key, value) in &self.coordinator_env {
            command.env(key, value);
        }
        self.coordinator_starts += 1;
        let log = match self.coordinator_starts {
            1 => "coordinator.log".to_string(),
            n => format!("coordinator-{n}.log"),
        };
        self.coordinator = Some(spawn_logged(&mut command, &self.dir.join(log)));
        self.admin.wait_until_answering();
    }

    /// kill -9 of the coordinator: the worker can reach none until
    /// [`OneWorker::start_coordinator`].
    pub fn kill_coordinator(&mut self) {
        if let Some(mut coordinator) = self.coordinator.take() {
            coordinator.kill9();
        }
    }

    /// Starts worker `w0` (stopping the one running) presenting `cert` and `key`, with
    /// `extra` appended to its `worker.toml` (tables only) and `env` added to its
    /// environment, which holds no storage key; waits until it reported every VM.
    pub fn start_worker(&mut self, cert: &Path, key: &Path, extra: &str, env: &[(&str, &str)]) {
        self.start_worker_with(cert, key, "", extra, env);
    }

    /// [`OneWorker::start_worker`] with top-level `settings` in its `worker.toml`
    /// (`drain_seconds = 1\n`...).
    pub fn start_worker_with(
        &mut self,
        cert: &Path,
        key: &Path,
        settings: &str,
        extra: &str,
        env: &[(&str, &str)],
    ) {
        self.worker = None;
        let path = self.dir.join("w0.toml");
        std::fs::write(
            &path,
            format!(
                "id = \"w0\"\ncoordinators = [{:?}]\nmax_jobs = 2\nscratch_dir = {:?}\n\
                 inventory_interval_seconds = 2\n{settings}[[hosts]]\nname = \"h0\"\nqmp_dir = {:?}\n\
                 [tls]\nca = {:?}\ncert = {cert:?}\nkey = {key:?}\n{extra}",
                self.url,
                self.dir,
                self.dir.join("h0"),
                self.pki.ca(),
            ),
        )
        .unwrap();
        let mut command = haven(&["worker", "--config", path.to_str().unwrap()]);
        command
            .env("HAVEN_PASSWORD", PASSWORD)
            .env("HAVEN_LOG", LOG);
        for (key, value) in env {
            command.env(key, value);
        }
        self.worker = Some(spawn_logged(&mut command, &self.dir.join("w0.log")));
        let count = self._vms.len();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.admin.run(&["vm", "list", "--json"]);
            if out.status.success() {
                let vms: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
                if vms.len() == count {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the worker did not report the VMs"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The running worker's process id.
    pub fn worker_pid(&self) -> u32 {
        self.worker.as_ref().expect("a worker was started").pid()
    }

    /// kill -9 of the worker: its process ends at once, without any cleanup of its own.
    pub fn kill_worker(&mut self) {
        if let Some(mut worker) = self.worker.take() {
            worker.kill9();
        }
    }

    /// Sends the worker SIGTERM (as `docker stop` and Kubernetes do) and hands its
    /// process to the caller, to watch it drain and exit.
    pub fn terminate_worker(&mut self) -> Guard {
        let worker = self.worker.take().expect("a worker was started");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &worker.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM");
        worker
    }

    /// Waits until the coordinator lists VM `name` (a VM started after the worker,
    /// found at its next inventory report).
    pub fn wait_for_vm(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.admin.run(&["vm", "list", "--json"]);
            if out.status.success() {
                let vms: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
                if vms.iter().any(|vm| vm["name"] == name) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the worker did not report {name}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The job `id` once it has ended (succeeded or failed).
    pub fn wait_ended(&self, id: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let job = self
                .admin
                .jobs()
                .into_iter()
                .find(|job| job["job_id"] == id);
            if let Some(job) = &job
                && (job["state"] == "succeeded" || job["state"] == "failed")
            {
                return job.clone();
            }
            assert!(
                Instant::now() < deadline,
                "job {id} did not end; last seen: {job:#?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Every job once none is pending or running and `until` holds for them.
    pub fn wait_idle(&self, timeout: Duration, until: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let jobs = self.admin.jobs();
            if jobs
                .iter()
                .all(|job| job["state"] == "succeeded" || job["state"] == "failed")
                && until(&jobs)
            {
                return jobs;
            }
            assert!(Instant::now() < deadline, "jobs did not end: {jobs:#?}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// A bed with one VM `vm0`, a repository `DIR/repo` and worker `w0` with top-level
    /// `settings` in its `worker.toml`; returns it, the repository and the id of a
    /// backup job of the VM once that job runs.
    pub fn with_running_backup(dir: &Path, settings: &str) -> (Self, String, String) {
        let mut bed = Self::start(dir, &["vm0"], &[], &[]);
        let repo = dir.join("repo");
        init_repo(&repo, &[]);
        let repo = repo.to_str().unwrap().to_owned();
        let (cert, key) = bed.pki.issue("worker", "w0");
        bed.start_worker_with(&cert, &key, settings, "", &[]);
        let id = bed
            .admin
            .ok(&["job", "run", "vm0", "--repo", &repo])
            .trim()
            .to_owned();
        let deadline = Instant::now() + Duration::from_secs(60);
        while bed.job(&id)["state"] != "running" {
            assert!(Instant::now() < deadline, "job {id} never ran");
            std::thread::sleep(Duration::from_millis(200));
        }
        (bed, repo, id)
    }

    /// Job `id` as `haven job list --json` shows it (`null` if not listed).
    pub fn job(&self, id: &str) -> Value {
        self.admin
            .jobs()
            .into_iter()
            .find(|job| job["job_id"] == id)
            .unwrap_or(Value::Null)
    }

    /// The lines of log `name` that contain `needle`, once there is at least one,
    /// waiting up to `timeout`.
    pub fn wait_for_log(&self, name: &str, needle: &str, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines: Vec<String> = self
                .log(name)
                .lines()
                .filter(|line| line.contains(needle))
                .map(str::to_owned)
                .collect();
            if !lines.is_empty() {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not say {needle:?} within {timeout:?}:\n{}",
                self.log(name)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A log file of this bed (`coordinator.log`, `w0.log`) as text.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }
}
