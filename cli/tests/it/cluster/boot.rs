//! Boot tests scheduled by a policy's `boot_test`: a real Debian guest (built by
//! `haven_testkit::guest`) served by a `qemu-storage-daemon` "hypervisor" is backed up
//! by a policy, and the coordinator hands the boot test of the new snapshot to the
//! worker, which boots it under its `[boot_tests]` limits. A worker killed with
//! `kill -9` mid boot test leaves no QEMU behind, and its next start removes the
//! sandbox folder; a cancelled boot test stops its sandbox. A snapshot that does not
//! boot moves the coordinator's metrics and fires the shipped alert in a real
//! Prometheus. The console, fetched over HTTPS, shows each verdict. A policy's
//! `tcp:PORT` check passes on the port the guest listens on and fails at its timeout
//! on one it does not, with the guest up, both verdicts stored with their evidence.

use std::path::{Path, PathBuf};
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use haven_testkit::guest::{GUEST_TCP_PORT, GuestImages, READY_MARKER};
use serde_json::Value;

use super::one_worker::OneWorker;
use crate::boot::processes_using;
use crate::support::{
    cluster::{init_repo, one_cluster_at_a_time},
    guest::{images, one_guest_at_a_time},
    image::convert,
    process::free_port,
    prometheus::{Prometheus, Target, sample_value},
};

/// A cluster of one worker whose VMs each serve a copy of a guest image, with a
/// policy that backs them up and boot-tests each new snapshot.
struct BootBed {
    bed: OneWorker,
    /// The policy's repository.
    repo: String,
    /// The worker's `[boot_tests] dir`.
    sandboxes: PathBuf,
    /// The VMs' disks (qcow2 copies of the guest image).
    disks: Vec<PathBuf>,
    /// `coordinator.toml`'s `http_listen` port (`/metrics` over TLS).
    http_port: u16,
    _guest: MutexGuard<'static, ()>,
}

/// A policy of a [`BootBed`]: it backs up the VMs it selects and boot-tests each new
/// snapshot with `check` within `timeout`.
struct BootPolicy<'a> {
    name: &'a str,
    /// The VMs' names (`select = { names = ... }`); every VM when empty.
    vms: &'a [&'a str],
    check: &'a str,
    timeout: &'a str,
}

impl BootPolicy<'_> {
    /// Its `[[policy]]` table, writing into `repo`.
    fn toml(&self, repo: &str) -> String {
        let select = if self.vms.is_empty() {
            String::new()
        } else {
            format!("select = {{ names = {:?} }}\n", self.vms)
        };
        format!(
            "[[policy]]\nname = {:?}\nschedule = \"0 0 1 1 *\"\nrepository = {repo:?}\n{select}\
             boot_test = {{ every = \"0s\", timeout = {:?}, check = {:?} }}\n",
            self.name, self.timeout, self.check
        )
    }
}

/// The policy of most tests here: every VM, the guest agent's answer within 10 minutes.
const PROVEN: BootPolicy = BootPolicy {
    name: "proven",
    vms: &[],
    check: "agent",
    timeout: "10m",
};

impl BootBed {
    /// Starts the bed with VMs `vms`, each on a copy of the image `pick` names, and a
    /// worker with `limits` in its `[boot_tests]`, applies [`PROVEN`], which boot-tests
    /// every new snapshot, and starts its round.
    fn start(dir: &Path, pick: fn(&GuestImages) -> &PathBuf, vms: &[&str], limits: &str) -> Self {
        Self::start_with_policies(dir, pick, vms, limits, &[PROVEN])
    }

    /// [`BootBed::start`] with `policies` applied, and each one's round started.
    fn start_with_policies(
        dir: &Path,
        pick: fn(&GuestImages) -> &PathBuf,
        vms: &[&str],
        limits: &str,
        policies: &[BootPolicy],
    ) -> Self {
        let images = images();
        let guest = one_guest_at_a_time();
        let disks: Vec<PathBuf> = vms
            .iter()
            .map(|vm| {
                let disk = dir.join(format!("{vm}.qcow2"));
                convert(pick(&images).to_str().unwrap(), "raw", &disk, "qcow2");
                disk
            })
            .collect();
        let http_port = free_port();
        let named: Vec<(&str, &Path)> = vms
            .iter()
            .zip(&disks)
            .map(|(vm, disk)| (*vm, disk.as_path()))
            .collect();
        let mut bed = OneWorker::start_with_images(
            dir,
            &named,
            &format!("http_listen = \"127.0.0.1:{http_port}\"\n"),
        );
        let repo = dir.join("repo");
        init_repo(&repo, &[]);
        let repo = repo.to_str().unwrap().to_owned();
        let sandboxes = dir.join("sandboxes");
        std::fs::create_dir(&sandboxes).unwrap();
        let (cert, key) = bed.pki.issue("worker", "w0");
        bed.start_worker_with(
            &cert,
            &key,
            "",
            &format!("[boot_tests]\n{limits}dir = {sandboxes:?}\n"),
            &[],
        );
        let tables: String = policies.iter().map(|policy| policy.toml(&repo)).collect();
        bed.admin.apply_policy(&dir.join("policy.toml"), &tables);
        for policy in policies {
            bed.admin.ok(&["policy", "run", policy.name]);
        }
        Self {
            bed,
            repo,
            sandboxes,
            disks,
            http_port,
            _guest: guest,
        }
    }

    /// Every job once the backup and its boot test have ended.
    fn wait_for_boot_test(&self) -> Vec<Value> {
        self.bed.wait_idle(Duration::from_secs(20 * 60), |jobs| {
            jobs.iter().any(|job| job["kind"] == "boot_test")
        })
    }

    /// How many boot tests run a QEMU now.
    fn running_guests(&self) -> usize {
        self.sandbox_folders()
            .iter()
            .filter(|folder| {
                processes_using(folder)
                    .iter()
                    .any(|command| command.contains("qemu-system-x86_64"))
            })
            .count()
    }

    /// The sandbox folders in the worker's `[boot_tests] dir`.
    fn sandbox_folders(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.sandboxes)
            .unwrap()
            .flatten()
            .map(|entry| entry.path())
            .collect()
    }

    /// Waits until a boot test's QEMU runs in a sandbox folder; that folder.
    fn wait_for_running_sandbox(&self, timeout: Duration) -> PathBuf {
        let deadline = Instant::now() + timeout;
        loop {
            for folder in self.sandbox_folders() {
                if processes_using(&folder)
                    .iter()
                    .any(|command| command.contains("qemu-system-x86_64"))
                {
                    return folder;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no boot test started; jobs: {:#?}",
                self.bed.admin.jobs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Whether a running boot test whose sandbox network forwards to the guest's port
    /// `port` has a guest up: its console (`serial.log` in its folder) shows the
    /// guest's ready marker.
    fn guest_up_behind_port(&self, port: u16) -> bool {
        let forward = format!("-:{port}");
        self.sandbox_folders().iter().any(|folder| {
            processes_using(folder)
                .iter()
                .any(|command| command.contains("qemu-system-x86_64") && command.contains(&forward))
                && std::fs::read_to_string(folder.join("serial.log"))
                    .unwrap_or_default()
                    .contains(READY_MARKER)
        })
    }

    /// The files stored in the repository for the boot tests of `vm` (their records
    /// and evidence), by name.
    fn boot_files(&self, vm: &str) -> Vec<String> {
        let mut found = Vec::new();
        let mut folders = vec![Path::new(&self.repo).join("boot").join(vm)];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(&folder).into_iter().flatten().flatten() {
                if entry.path().is_dir() {
                    folders.push(entry.path());
                } else {
                    found.push(entry.file_name().to_string_lossy().into_owned());
                }
            }
        }
        found.sort();
        found
    }

    /// Waits until no process names the sandboxes folder.
    fn wait_no_sandbox_process(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = processes_using(&self.sandboxes);
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sandbox processes left: {left:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The coordinator's `/metrics` as an admin reads it.
    fn coordinator_metrics(&self) -> String {
        let (status, body) =
            self.bed
                .pki
                .https_get(self.http_port, "/metrics", Some(("admin", "admin")));
        assert_eq!(status, 200, "{body}");
        body
    }

    /// A page of the coordinator's web console (same listener), as an admin's
    /// browser holding its client certificate gets it.
    fn console_page(&self, path: &str) -> String {
        let (status, body) = self
            .bed
            .pki
            .https_get(self.http_port, path, Some(("admin", "admin")));
        assert_eq!(status, 200, "{path}: {body}");
        body
    }

    /// The snapshots of the repository as `haven snapshots --json` lists them.
    fn snapshots(&self) -> Vec<Value> {
        self.bed.admin.snapshots(Path::new(&self.repo))
    }
}

/// The one job of `kind` among `jobs`.
fn only<'a>(jobs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = jobs.iter().filter(|job| job["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "{jobs:#?}");
    found[0]
}

#[test]
fn a_policy_boot_tests_its_new_snapshot_on_a_worker_within_its_limits() {
    let _alone = one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let bed = BootBed::start(
        dir.path(),
        |images| &images.bootable,
        &["guest"],
        "max_running = 1\nmax_cpus = 1\nmax_memory_mib = 512\n",
    );
    let jobs = bed.wait_for_boot_test();
    let backup = only(&jobs, "backup");
    assert_eq!(backup["state"], "succeeded", "{backup:#}");
    // Only the snapshot is left to boot from.
    std::fs::remove_file(&bed.disks[0]).unwrap();

    let boot = only(&jobs, "boot_test");
    assert_eq!(boot["state"], "succeeded", "{boot:#}");
    assert_eq!(boot["boot_verdict"], "passed", "{boot:#}");
    assert_eq!(boot["worker"], "w0", "{boot:#}");
    assert_eq!(boot["policy"], "proven", "{boot:#}");
    let summary = boot["summary"].as_str().unwrap();
    let snapshot = backup["snapshot"].as_str().unwrap();
    assert!(
        summary.starts_with(&format!("boot test of {snapshot}: passed")),
        "{summary}"
    );
    assert!(summary.contains("guest-ping"), "{summary}");
    // Within the worker's limits, whatever the guest would ask for.
    assert!(summary.contains("1 CPU(s), 512 MiB"), "{summary}");
    let seconds = |field: &str| boot[field].as_u64().unwrap() as f64 / 1000.0;
    eprintln!(
        "boot test job: {:.1} s from creation to verdict, {:.1} s from assignment",
        seconds("finished_unix_ms") - seconds("created_unix_ms"),
        (boot["finished_unix_ms"].as_u64().unwrap()
            - boot["attempts"][0]["assigned_unix_ms"].as_u64().unwrap()) as f64
            / 1000.0
    );

    // The verdict is stored beside the snapshot and shown with it.
    let listed = bed.snapshots();
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["boot"]["outcome"], "passed", "{listed:#?}");
    // Nothing of the sandbox is left.
    assert!(bed.sandbox_folders().is_empty());
    bed.wait_no_sandbox_process(Duration::from_secs(5));

    // The coordinator exports the newest boot-verified snapshot and the verdict.
    let metrics = bed.coordinator_metrics();
    let snapshot_seconds = haven_repo::parse_timestamp(snapshot.split_once('@').unwrap().1)
        .unwrap()
        .unix_timestamp();
    for line in [
        format!(
            "haven_vm_last_boot_verified_timestamp_seconds{{vm=\"guest\",policy=\"proven\"}} \
             {snapshot_seconds}\n"
        ),
        "haven_vm_last_boot_test_passed{vm=\"guest\",policy=\"proven\"} 1\n".to_string(),
        "haven_boot_tests_total{result=\"passed\"} 1\n".to_string(),
        "haven_jobs_total{kind=\"boot_test\",result=\"succeeded\"} 1\n".to_string(),
    ] {
        assert!(metrics.contains(&line), "missing {line:?} in\n{metrics}");
    }

    // The console shows the verdict: on the VM's page, in the VM list, on the job.
    let verified = format!(
        "{}Z",
        snapshot
            .split_once('@')
            .unwrap()
            .1
            .trim_end_matches('Z')
            .replace('T', " ")
    );
    let passed = "<span class=\"badge boot-passed\" data-boot=\"passed\">boot passed</span>";
    let page = bed.console_page("/vm/guest");
    assert!(
        page.contains(&format!(
            "<dt>Last boot-verified snapshot</dt><dd>{verified}</dd>\
             <dt>Last boot test</dt><dd id=\"last-boot-test\">{passed}</dd>"
        )),
        "{page}"
    );
    let page = bed.console_page("/vms");
    assert!(
        page.contains(&format!(
            "<td class=\"boot-verified\">{verified}<td class=\"boot\">{passed}</tr>"
        )),
        "{page}"
    );
    let page = bed.console_page("/jobs");
    let id = boot["job_id"].as_str().unwrap();
    let row = page
        .split(&format!("<tr data-job=\"{id}\">"))
        .nth(1)
        .and_then(|rest| rest.split("</tr>").next())
        .unwrap_or_else(|| panic!("{id} not on {page}"));
    assert!(
        row.ends_with(&format!("{passed} {}", snapshot.split_once('@').unwrap().1)),
        "{row}"
    );
    let page = bed.console_page("/");
    assert!(
        page.contains("1 VMs with a boot-verified snapshot · 0 whose last boot test failed"),
        "{page}"
    );
}

#[test]
fn a_worker_killed_mid_boot_test_leaves_no_sandbox_and_a_cancelled_test_stops() {
    let _alone = one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut bed = BootBed::start(dir.path(), |images| &images.bootable, &["guest"], "");
    let folder = bed.wait_for_running_sandbox(Duration::from_secs(10 * 60));
    assert!(folder.join("overlay0.qcow2").is_file());

    // QEMU dies with its worker; the folder stays until the worker starts again.
    bed.bed.kill_worker();
    bed.wait_no_sandbox_process(Duration::from_secs(10));
    assert!(folder.is_dir(), "kill -9 cannot remove anything");
    let (cert, key) = bed.bed.pki.issue("worker", "w0");
    let limits = format!("[boot_tests]\ndir = {:?}\n", bed.sandboxes);
    bed.bed.start_worker_with(&cert, &key, "", &limits, &[]);
    bed.bed.wait_for_log(
        "w0.log",
        "removed an abandoned boot sandbox",
        Duration::from_secs(30),
    );
    assert!(!folder.exists(), "the restarted worker left {folder:?}");

    // The boot test goes back to pending with the lost lease and runs again; a
    // cancellation stops its sandbox.
    let again = bed.wait_for_running_sandbox(Duration::from_secs(120));
    let jobs = bed.bed.admin.jobs();
    let boot = only(&jobs, "boot_test");
    let id = boot["job_id"].as_str().unwrap();
    assert!(boot["attempts"].as_array().unwrap().len() >= 2, "{boot:#}");
    bed.bed.admin.ok(&["job", "cancel", id]);
    bed.wait_no_sandbox_process(Duration::from_secs(15));
    let deadline = Instant::now() + Duration::from_secs(10);
    while again.exists() {
        assert!(Instant::now() < deadline, "{again:?} left after the cancel");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(bed.sandbox_folders().is_empty());
    let ended = bed.bed.wait_ended(id, Duration::from_secs(10));
    assert_eq!(ended["state"], "failed", "{ended:#}");
    bed.bed
        .wait_for_log("w0.log", "boot test cancelled", Duration::from_secs(15));
}

#[test]
fn a_snapshot_that_does_not_boot_fails_its_test_and_fires_the_alert() {
    let _alone = one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let bed = BootBed::start(dir.path(), |images| &images.no_root, &["broken"], "");
    let (cert, key) = bed.bed.pki.issue("admin", "admin");
    let ca = bed.bed.pki.ca();
    let rules =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/haven-rules.yaml");
    let prometheus = Prometheus::start_with_rules(
        &dir.path().join("prometheus"),
        &[Target {
            job: "coordinator",
            port: bed.http_port,
            tls: Some((&ca, &cert, &key)),
        }],
        Some(&rules),
    );

    let jobs = bed.wait_for_boot_test();
    let boot = only(&jobs, "boot_test");
    // The test ran and reached its verdict: the job succeeded, the snapshot failed.
    assert_eq!(boot["state"], "succeeded", "{boot:#}");
    assert_eq!(boot["boot_verdict"], "failed", "{boot:#}");
    assert!(
        boot["summary"].as_str().unwrap().contains(": failed ("),
        "{boot:#}"
    );
    // Recorded with the snapshot, which is kept.
    let listed = bed.snapshots();
    assert_eq!(listed.len(), 1, "{listed:#?}");
    assert_eq!(listed[0]["boot"]["outcome"], "failed", "{listed:#?}");

    let failed = prometheus.wait_for(
        "haven_boot_tests_total{result=\"failed\"}",
        Duration::from_secs(30),
    );
    assert_eq!(sample_value(&failed[0]), 1.0);
    let verdict = prometheus.wait_for(
        "haven_vm_last_boot_test_passed{vm=\"broken\"}",
        Duration::from_secs(30),
    );
    assert_eq!(sample_value(&verdict[0]), 0.0);
    let firing = prometheus.wait_for(
        "ALERTS{alertname=\"HavenBootTestFailed\",alertstate=\"firing\"}",
        Duration::from_secs(30),
    );
    assert_eq!(firing[0]["metric"]["vm"], "broken", "{firing:#?}");
    assert!(
        prometheus
            .query("haven_vm_last_boot_verified_timestamp_seconds{vm=\"broken\"}")
            .is_empty(),
        "a snapshot that never booted is not boot-verified"
    );
    // The console's overview lists the VM under its failed boot test.
    let page = bed.console_page("/");
    assert!(
        page.contains(
            "<ul id=\"boot-failed\"><li data-vm=\"broken\"><a href=\"/vm/broken\">broken</a> \
             (last boot-verified snapshot: never)</li></ul>"
        ),
        "{page}"
    );
    let page = bed.console_page("/vm/broken");
    assert!(
        page.contains("<dd id=\"last-boot-test\"><span class=\"badge boot-failed\""),
        "{page}"
    );
}

#[test]
fn boot_tests_wait_for_the_workers_boot_slot_without_holding_its_jobs() {
    let _alone = one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    // Two VMs, so two boot tests, on a worker of two jobs and one boot test at a time.
    let bed = BootBed::start(
        dir.path(),
        |images| &images.bootable,
        &["one", "two"],
        "max_running = 1\nmax_cpus = 1\nmax_memory_mib = 512\n",
    );
    let deadline = Instant::now() + Duration::from_secs(25 * 60);
    let mut most_at_once = 0;
    let jobs = loop {
        most_at_once = most_at_once.max(bed.running_guests());
        let jobs = bed.bed.admin.jobs();
        let boots: Vec<&Value> = jobs
            .iter()
            .filter(|job| job["kind"] == "boot_test")
            .collect();
        let ended = |job: &&Value| matches!(job["state"].as_str(), Some("succeeded" | "failed"));
        if boots.len() == 2 && boots.iter().all(ended) {
            break jobs;
        }
        assert!(Instant::now() < deadline, "boot tests not done: {jobs:#?}");
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(most_at_once, 1, "boot tests' QEMUs overlapped");
    let mut boots: Vec<&Value> = jobs
        .iter()
        .filter(|job| job["kind"] == "boot_test")
        .collect();
    for boot in &boots {
        assert_eq!(boot["state"], "succeeded", "{boot:#}");
        assert_eq!(boot["boot_verdict"], "passed", "{boot:#}");
        assert_eq!(boot["attempts"].as_array().unwrap().len(), 1, "{boot:#}");
    }
    // The second was handed to the worker only when the first had ended: it waited
    // at the coordinator, pending, not on the worker in one of its two job slots.
    let assigned = |job: &Value| job["attempts"][0]["assigned_unix_ms"].as_u64().unwrap();
    boots.sort_by_key(|job| assigned(job));
    let first_ended = boots[0]["finished_unix_ms"].as_u64().unwrap();
    assert!(
        assigned(boots[1]) >= first_ended,
        "the second boot test was assigned {} ms before the first ended: {boots:#?}",
        first_ended - assigned(boots[1])
    );
}

#[test]
fn a_policy_checks_a_guest_port_through_the_sandbox_network() {
    let _alone = one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    // Two VMs of the guest, each under a policy of its own: one checks the port the
    // guest's socket unit listens on, the other a port nothing listens on. Both boot
    // at once on a worker of two boot slots.
    let (open, closed) = (
        format!("tcp:{GUEST_TCP_PORT}"),
        format!("tcp:{}", GUEST_TCP_PORT + 1),
    );
    let bed = BootBed::start_with_policies(
        dir.path(),
        |images| &images.bootable,
        &["open", "closed"],
        "max_running = 2\nmax_cpus = 1\nmax_memory_mib = 512\n",
        &[
            BootPolicy {
                name: "listening",
                vms: &["open"],
                check: &open,
                timeout: "10m",
            },
            BootPolicy {
                name: "refusing",
                vms: &["closed"],
                check: &closed,
                timeout: "150s",
            },
        ],
    );
    // While the closed port's test runs, its guest comes up all the same: it fails
    // on the port, not on a guest that never booted.
    let mut closed_guest_up = false;
    let deadline = Instant::now() + Duration::from_secs(20 * 60);
    let jobs = loop {
        closed_guest_up = closed_guest_up || bed.guest_up_behind_port(GUEST_TCP_PORT + 1);
        let jobs = bed.bed.admin.jobs();
        let ended = |job: &&Value| matches!(job["state"].as_str(), Some("succeeded" | "failed"));
        let boots = jobs.iter().filter(|job| job["kind"] == "boot_test");
        if boots.clone().count() == 2 && boots.clone().all(|job| ended(&job)) {
            break jobs;
        }
        assert!(Instant::now() < deadline, "boot tests not done: {jobs:#?}");
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(closed_guest_up, "the closed port's guest never came up");
    let boot_of = |policy: &str| {
        jobs.iter()
            .find(|job| job["kind"] == "boot_test" && job["policy"] == policy)
            .unwrap_or_else(|| panic!("no boot test of {policy}: {jobs:#?}"))
    };

    // The open port: passed, through the sandbox network.
    let passed = boot_of("listening");
    assert_eq!(passed["state"], "succeeded", "{passed:#}");
    assert_eq!(passed["boot_verdict"], "passed", "{passed:#}");
    let summary = passed["summary"].as_str().unwrap();
    assert!(
        summary.contains(&format!(
            "the guest accepted a TCP connection on port {GUEST_TCP_PORT}"
        )),
        "{summary}"
    );
    // The closed port: the test ran to its timeout, a failed verdict.
    let failed = boot_of("refusing");
    assert_eq!(failed["state"], "succeeded", "{failed:#}");
    assert_eq!(failed["boot_verdict"], "failed", "{failed:#}");
    let summary = failed["summary"].as_str().unwrap();
    assert!(
        summary.contains(&format!("the check {closed} did not pass within 150 s")),
        "{summary}"
    );
    let seconds = |job: &Value| {
        (job["finished_unix_ms"].as_u64().unwrap()
            - job["attempts"][0]["assigned_unix_ms"].as_u64().unwrap()) as f64
            / 1000.0
    };
    eprintln!(
        "tcp boot checks in the cluster: open port passed {:.1} s after assignment, \
         closed port failed {:.1} s after",
        seconds(passed),
        seconds(failed)
    );

    // Both verdicts are stored beside their snapshots, with the evidence, and shown.
    let listed = bed.snapshots();
    assert_eq!(listed.len(), 2, "{listed:#?}");
    for (vm, outcome, check) in [("open", "passed", &open), ("closed", "failed", &closed)] {
        let snapshot = listed
            .iter()
            .find(|snapshot| snapshot["vm"] == vm)
            .unwrap_or_else(|| panic!("no snapshot of {vm}: {listed:#?}"));
        assert_eq!(snapshot["boot"]["outcome"], outcome, "{snapshot:#}");
        assert_eq!(snapshot["boot"]["check"], check.as_str(), "{snapshot:#}");
        assert_eq!(
            bed.boot_files(vm),
            ["record", "screen.png", "serial.log"],
            "{vm}"
        );
    }
    let text = bed
        .bed
        .admin
        .ok(&["snapshots", "--repo", &bed.repo, "--vm", "closed"]);
    assert!(text.contains("boot FAILED"), "{text}");
    // Nothing of either sandbox is left.
    assert!(bed.sandbox_folders().is_empty());
    bed.wait_no_sandbox_process(Duration::from_secs(5));
}
