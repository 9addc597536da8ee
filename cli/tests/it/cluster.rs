//! The cluster with real processes: a 3-member etcd (TLS, client certificates and auth),
//! 2 coordinator replicas, 3 workers and `qemu-storage-daemon` "hypervisors" (one
//! process per VM, grouped in host folders), all started here and killed by `Drop`.
//!
//! One cluster serves every scenario in sequence (set-up dominates the cost): a policy
//! over 20 VMs on 4 hosts with a per-host limit; kill -9 of a worker mid-backup;
//! SIGSTOP of a worker past its lease (fencing); kill -9 of the leader; loss of one
//! etcd member, then of quorum; bad input. The submodules cover `haven dev`, GC racing
//! backups, a worker on libvirt, and webhook notifications.

mod auth;
mod boot;
mod cancel;
mod console;
mod cut_off;
mod dev;
mod dr;
mod drain;
mod freeze;
mod gc;
mod libvirt;
mod logs;
mod notify;
mod one_worker;
mod partition;
mod prometheus;
mod rotation;
mod secured_etcd;
mod storage_keys;
mod vsphere;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    cluster::{Cli, init_repo, make_image, one_cluster_at_a_time, start_vm},
    etcd::Etcd,
    haven::{PASSWORD, haven},
    pki::Pki,
    process::{Guard, free_port, spawn_logged},
};

struct Cluster {
    dir: PathBuf,
    etcd: Etcd,
    /// The cluster's CA: coordinators, workers and the CLI use mutual TLS.
    pki: Pki,
    coordinators: Vec<Guard>,
    coordinator_urls: Vec<String>,
    workers: Vec<Guard>,
    /// The `metrics_listen` port of every worker started, in start order.
    worker_metrics_ports: std::cell::RefCell<Vec<u16>>,
    /// The VMs' qemu-storage-daemon processes, killed on drop.
    _vms: Vec<Guard>,
    repo: String,
    /// VM name → source image.
    images: HashMap<String, PathBuf>,
}

impl Cluster {
    fn haven(&self, args: &[&str]) -> Output {
        self.cli().run(args)
    }

    fn haven_ok(&self, args: &[&str]) -> String {
        self.cli().ok(args)
    }

    fn jobs(&self) -> Vec<Value> {
        self.cli().jobs()
    }

    fn cli(&self) -> Cli {
        self.pki.admin(&self.coordinator_urls.join(","))
    }

    fn wait_job(
        &self,
        id: &str,
        what: &str,
        until: impl Fn(&Value) -> bool,
        timeout: Duration,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.haven(&["job", "list", "--limit", "0", "--json"]);
            let mut seen = Value::Null;
            if out.status.success() {
                let jobs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
                if let Some(job) = jobs.into_iter().find(|job| job["job_id"] == id) {
                    if until(&job) {
                        return job;
                    }
                    seen = job;
                }
            }
            assert!(
                Instant::now() < deadline,
                "job {id}: timed out waiting for {what}; last seen: {seen:#}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    fn run_job(&self, vm: &str) -> String {
        self.haven_ok(&["job", "run", vm, "--repo", &self.repo])
            .trim()
            .to_string()
    }

    fn snapshots_of(&self, vm: &str) -> Vec<Value> {
        serde_json::from_str(&self.haven_ok(&[
            "snapshots",
            "--repo",
            &self.repo,
            "--vm",
            vm,
            "--json",
        ]))
        .unwrap()
    }

    /// Index of the worker process that runs `id` now.
    fn worker_index(&self, job: &Value) -> usize {
        let worker = job["worker"].as_str().unwrap();
        worker.trim_start_matches('w').parse().unwrap()
    }

    /// The HTTP port (`/metrics`, `/healthz`, `/readyz`) of coordinator `i`.
    fn http_port(&self, i: usize) -> u16 {
        let port = std::fs::read_to_string(self.dir.join(format!("c{i}.port"))).unwrap();
        port.trim().parse().unwrap()
    }

    /// Which replica leads, from their `/healthz`.
    fn leader_index(&self) -> usize {
        for i in 0..self.coordinator_urls.len() {
            // Probes carry no client certificate: /healthz answers them.
            let (_, body) = self.pki.https_get(self.http_port(i), "/healthz", None);
            if body.contains("ok: leader") {
                return i;
            }
        }
        panic!("no coordinator leads");
    }

    fn restore_matches(&self, vm: &str) {
        let restored = self.dir.join(format!("{vm}-restored.raw"));
        let _ = std::fs::remove_file(&restored);
        self.haven_ok(&[
            "restore",
            &format!("{vm}@latest"),
            "--repo",
            &self.repo,
            "--to",
            restored.to_str().unwrap(),
        ]);
        let compare = Command::new("qemu-img")
            .args(["compare", "-U", "-f", "raw", "-F", "qcow2"])
            .arg(&restored)
            .arg(&self.images[vm])
            .output()
            .unwrap();
        assert!(
            compare.status.success(),
            "{vm}: restore differs: {}",
            String::from_utf8_lossy(&compare.stdout)
        );
    }
}

fn start_cluster(dir: &Path) -> Cluster {
    // etcd as production runs it: TLS with client certificates, and auth with a user
    // whose role covers only /haven/ (so the member losses below also cover logging in
    // again to a restarted member).
    let etcd = Etcd::start_secured(3).expect("start a secured 3-member etcd");
    let etcd_security = etcd.credentials().expect("secured etcd").coordinator_toml();
    let pki = Pki::new(dir);
    let repo = dir.join("repo");
    init_repo(&repo, &[]);

    // 4 hosts × 5 small VMs, plus 3 big VMs on host h0 for the fault scenarios.
    let mut vms = Vec::new();
    let mut images = HashMap::new();
    for host in 0..4 {
        let host_dir = dir.join(format!("h{host}"));
        std::fs::create_dir_all(&host_dir).unwrap();
        for n in 0..5 {
            let name = format!("vm{host}{n}");
            let image = dir.join(format!("{name}.qcow2"));
            make_image(&image, 16, 2);
            vms.push(start_vm(
                &host_dir.join(format!("{name}.qmp")),
                &image,
                &dir.join(format!("{name}.log")),
            ));
            images.insert(name, image);
        }
    }
    for n in 0..3 {
        let name = format!("big{n}");
        let image = dir.join(format!("{name}.qcow2"));
        make_image(&image, 96, 48);
        vms.push(start_vm(
            &dir.join("h0").join(format!("{name}.qmp")),
            &image,
            &dir.join(format!("{name}.log")),
        ));
        images.insert(name, image);
    }

    let mut coordinators = Vec::new();
    let mut coordinator_urls = Vec::new();
    for i in 0..2 {
        let port = free_port();
        let http = free_port();
        std::fs::write(dir.join(format!("c{i}.port")), http.to_string()).unwrap();
        let config = dir.join(format!("c{i}.toml"));
        std::fs::write(
            &config,
            format!(
                "id = \"c{i}\"\nlisten = \"127.0.0.1:{port}\"\nhttp_listen = \"127.0.0.1:{http}\"\n\
                 worker_lease_seconds = 3\nleader_lease_seconds = 3\ntick_ms = 200\n\
                 allowed_repositories = [{:?}]\n{etcd_security}{}",
                format!("{}*", dir.to_str().unwrap()),
                pki.coordinator_toml()
            ),
        )
        .unwrap();
        coordinators.push(spawn_logged(
            haven(&[
                "coordinator",
                "--config",
                config.to_str().unwrap(),
                "--etcd",
                &etcd.endpoints().join(","),
            ])
            .env("HAVEN_LOG", "haven_coordinator=info"),
            &dir.join(format!("c{i}.log")),
        ));
        coordinator_urls.push(format!("https://127.0.0.1:{port}"));
    }
    // Every host is reached by two workers.
    let reach = [[0, 1, 2], [1, 2, 3], [2, 3, 0]];
    let mut cluster = Cluster {
        dir: dir.to_path_buf(),
        etcd,
        pki,
        coordinators,
        coordinator_urls,
        workers: Vec::new(),
        worker_metrics_ports: std::cell::RefCell::new(Vec::new()),
        _vms: vms,
        repo: repo.to_str().unwrap().to_string(),
        images,
    };
    for (i, hosts) in reach.iter().enumerate() {
        let worker = cluster.spawn_worker(i, hosts, &format!("w{i}"));
        cluster.workers.push(worker);
    }
    cluster
}

impl Cluster {
    fn spawn_worker(&self, i: usize, hosts: &[usize], id: &str) -> Guard {
        let metrics_port = free_port();
        self.worker_metrics_ports.borrow_mut().push(metrics_port);
        let mut config = format!(
            "id = \"{id}\"\ncoordinators = [{}]\nmax_jobs = 3\nconnections = 2\n\
             read_limit_bytes_per_second = 16777216\ninventory_interval_seconds = 5\nscratch_dir = {:?}\n\
             metrics_listen = \"127.0.0.1:{metrics_port}\"\n{}{}",
            self.coordinator_urls
                .iter()
                .map(|u| format!("{u:?}"))
                .collect::<Vec<_>>()
                .join(","),
            self.dir.to_str().unwrap(),
            self.pki.worker_toml(id),
            self.pki.worker_metrics_toml(id),
        );
        for host in hosts {
            config.push_str(&format!(
                "[[hosts]]\nname = \"h{host}\"\nqmp_dir = {:?}\n",
                self.dir.join(format!("h{host}")).to_str().unwrap()
            ));
        }
        let path = self.dir.join(format!("{id}-{i}.toml"));
        std::fs::write(&path, config).unwrap();
        spawn_logged(
            haven(&["worker", "--config", path.to_str().unwrap()])
                .env("HAVEN_PASSWORD", PASSWORD)
                .env("HAVEN_LOG", "haven_worker=info"),
            &self.dir.join(format!("{id}-{i}.log")),
        )
    }

    fn wait_vms(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.haven(&["vm", "list", "--json"]);
            if out.status.success() {
                let vms: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
                if vms.len() >= count
                    && vms
                        .iter()
                        .all(|vm| vm["workers"].as_array().is_some_and(|w| w.len() >= 2))
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "workers did not report {count} VMs"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// A cron schedule that fires once, at the next minute (UTC): one round, no repeats
/// that would crowd the later scenarios.
fn next_minute() -> String {
    let out = Command::new("date")
        .args(["-u", "-d", "+1 min", "+%M %H %d %m *"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Largest number of attempts that overlapped in time on one host.
fn max_concurrency_per_host(jobs: &[Value]) -> HashMap<String, usize> {
    let mut events: HashMap<String, Vec<(u64, i32)>> = HashMap::new();
    for job in jobs {
        let host = job["host"].as_str().unwrap().to_string();
        for attempt in job["attempts"].as_array().unwrap() {
            let start = attempt["assigned_unix_ms"].as_u64().unwrap();
            let end = match attempt["ended_unix_ms"].as_u64().unwrap() {
                0 => u64::MAX,
                end => end,
            };
            events.entry(host.clone()).or_default().push((start, 1));
            events.entry(host.clone()).or_default().push((end, -1));
        }
    }
    events
        .into_iter()
        .map(|(host, mut list)| {
            // Ends sort before starts at the same millisecond.
            list.sort();
            let (mut now, mut max) = (0i32, 0i32);
            for (_, delta) in list {
                now += delta;
                max = max.max(now);
            }
            (host, max as usize)
        })
        .collect()
}

#[test]
fn cluster_schedules_fences_and_fails_over() {
    let _alone = one_cluster_at_a_time();
    let keep = std::env::var_os("HAVEN_KEEP_TEST_DIR").is_some();
    let dir = tempfile::Builder::new()
        .disable_cleanup(keep)
        .tempdir()
        .unwrap();
    if keep {
        eprintln!("test folder kept: {}", dir.path().display());
    }
    let mut cluster = start_cluster(dir.path());
    cluster.wait_vms(23);

    // --- Bad input: a policy file with errors is refused with lines; nothing changes.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[policy]]\nname = \"p\"\nschedule = \"* * * *\"\nrepository = \"ftp://x\"\n",
    )
    .unwrap();
    let out = cluster.haven(&["policy", "apply", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.toml:3:") && stderr.contains("bad.toml:4:"),
        "{stderr}"
    );
    // Nothing of the bad file was applied: its policy does not exist.
    let run = cluster.haven(&["policy", "run", "p"]);
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("unknown policy"),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(cluster.haven(&["job", "run", "no-such-vm"]).status.code() != Some(0));
    assert!(!cluster.haven(&["job", "run", "../../etc"]).status.success());

    // --- A policy over the 20 small VMs on 4 hosts, at most 2 jobs per host.
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[[policy]]\nname = \"small\"\nschedule = {:?}\nrepository = {:?}\n\
             select = {{ names = [\"vm*\"] }}\nmax_per_host = 2\nmax_per_worker = 3\n",
            next_minute(),
            cluster.repo
        ),
    )
    .unwrap();
    cluster.haven_ok(&["policy", "apply", policy.to_str().unwrap()]);
    let deadline = Instant::now() + Duration::from_secs(150);
    let jobs = loop {
        let jobs: Vec<Value> = cluster
            .jobs()
            .into_iter()
            .filter(|job| job["policy"] == "small")
            .collect();
        if jobs.len() == 20 && jobs.iter().all(|job| job["state"] == "succeeded") {
            break jobs;
        }
        assert!(
            Instant::now() < deadline,
            "policy round did not complete: {jobs:#?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    for (host, max) in max_concurrency_per_host(&jobs) {
        assert!(max <= 2, "host {host} ran {max} jobs at once");
    }
    assert_eq!(cluster.snapshots_of("vm00").len(), 1);
    cluster.restore_matches("vm31");
    // Every worker counts what it ran on its own /metrics: together, the round's 20.
    let backups: u64 = cluster
        .worker_metrics_ports
        .borrow()
        .iter()
        .map(|port| {
            let (status, response) =
                cluster
                    .pki
                    .https_get(*port, "/metrics", Some(("viewer", "prometheus")));
            assert_eq!(status, 200, "{response}");
            response
                .lines()
                .find_map(|line| {
                    line.strip_prefix(
                        "haven_worker_jobs_total{kind=\"backup\",result=\"succeeded\"} ",
                    )
                })
                .map_or(0, |count| count.parse().expect("a count"))
        })
        .sum();
    assert_eq!(backups, 20, "backups the workers' metrics count");
    // Over TLS, /metrics needs a certificate whose role covers viewer; /healthz none.
    let leader_http: u16 = std::fs::read_to_string(
        cluster
            .dir
            .join(format!("c{}.port", cluster.leader_index())),
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    let worker_port = cluster.worker_metrics_ports.borrow()[0];
    for port in [leader_http, worker_port] {
        let (status, text) =
            cluster
                .pki
                .https_get(port, "/metrics", Some(("viewer", "prometheus")));
        assert_eq!(status, 200, "{text}");
        assert!(text.contains("haven_"), "{text}");
        for client in [None, Some(("worker", "w0"))] {
            let (status, text) = cluster.pki.https_get(port, "/metrics", client);
            assert_eq!(status, 403, "{client:?} read /metrics: {text}");
        }
        assert_eq!(cluster.pki.https_get(port, "/healthz", None).0, 200);
    }
    // Both replicas are ready (Kubernetes' probe, no certificate): the store answers
    // and they know the leader.
    for i in 0..cluster.coordinator_urls.len() {
        let (status, text) = cluster.pki.https_get(cluster.http_port(i), "/readyz", None);
        assert_eq!(status, 200, "coordinator {i} /readyz: {text}");
        assert!(text.starts_with("ready: leader is "), "{text}");
    }
    // The web console on the same listeners: the leader shows the cluster to a viewer's
    // certificate; the follower says it follows and names the leader.
    let (status, page) = cluster
        .pki
        .https_get(leader_http, "/", Some(("viewer", "prometheus")));
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("id=\"count-protected\""), "{page}");
    let follower = 1 - cluster.leader_index();
    let follower_http: u16 = std::fs::read_to_string(cluster.dir.join(format!("c{follower}.port")))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (status, page) = cluster
        .pki
        .https_get(follower_http, "/", Some(("viewer", "prometheus")));
    assert_eq!(status, 503, "{page}");
    let leader_url = &cluster.coordinator_urls[1 - follower];
    assert!(
        page.contains("id=\"follower\"") && page.contains(leader_url.as_str()),
        "{page}"
    );

    // --- kill -9 of a worker mid-backup: the job finishes elsewhere, resumes cheaply.
    let id = cluster.run_job("big0");
    let job = cluster.wait_job(
        &id,
        "progress",
        |j| j["bytes_done"].as_u64() > Some(16 << 20),
        Duration::from_secs(60),
    );
    let victim = cluster.worker_index(&job);
    cluster.workers[victim].kill9();
    let job = cluster.wait_job(
        &id,
        "success",
        |j| j["state"] == "succeeded",
        Duration::from_secs(90),
    );
    let attempts = job["attempts"].as_array().unwrap();
    assert!(attempts.len() >= 2, "{job:#}");
    assert_eq!(attempts[0]["outcome"], "lease lost", "{job:#}");
    assert_ne!(
        attempts[0]["worker"],
        attempts[attempts.len() - 1]["worker"]
    );
    assert!(
        job["bytes_uploaded"].as_u64().unwrap() < 48 << 20,
        "the second worker re-uploaded everything: {job:#}"
    );
    assert_eq!(
        cluster.snapshots_of("big0").len(),
        1,
        "exactly one snapshot"
    );
    cluster.restore_matches("big0");
    cluster.workers[victim] = cluster.spawn_worker(
        victim,
        &[[0, 1, 2], [1, 2, 3], [2, 3, 0]][victim],
        &format!("w{victim}"),
    );

    // --- SIGSTOP past the lease: the frozen worker is fenced; one commit only.
    let id = cluster.run_job("big1");
    let job = cluster.wait_job(
        &id,
        "progress",
        |j| j["bytes_done"].as_u64() > Some(8 << 20),
        Duration::from_secs(60),
    );
    let frozen = cluster.worker_index(&job);
    let pid = cluster.workers[frozen].pid() as i32;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let moved = cluster.wait_job(
        &id,
        "reassignment",
        |j| j["attempts"].as_array().is_some_and(|a| a.len() >= 2),
        Duration::from_secs(30),
    );
    assert_eq!(moved["attempts"][0]["outcome"], "lease lost");
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let job = cluster.wait_job(
        &id,
        "success",
        |j| j["state"] == "succeeded",
        Duration::from_secs(120),
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        cluster.snapshots_of("big1").len(),
        1,
        "committed exactly once: {job:#}"
    );
    let frozen_log =
        std::fs::read_to_string(dir.path().join(format!("w{frozen}-{frozen}.log"))).unwrap();
    assert!(
        frozen_log.contains("lease lost")
            || frozen_log.contains("fenced")
            || frozen_log.contains("moved"),
        "the resumed worker did not notice it was fenced:\n{frozen_log}"
    );
    cluster.restore_matches("big1");

    // --- kill -9 of the leader during a job: the other replica leads, the job ends.
    let id = cluster.run_job("big2");
    cluster.wait_job(
        &id,
        "progress",
        |j| j["bytes_done"].as_u64() > Some(4 << 20),
        Duration::from_secs(60),
    );
    let leader = cluster.leader_index();
    cluster.coordinators[leader].kill9();
    cluster.wait_job(
        &id,
        "success after failover",
        |j| j["state"] == "succeeded",
        Duration::from_secs(120),
    );
    assert_eq!(cluster.snapshots_of("big2").len(), 1);
    cluster.restore_matches("big2");

    // --- One etcd member lost: nothing changes. Quorum lost: scheduling pauses, and
    // resumes when it returns, with no job lost.
    cluster.etcd.kill(0);
    let id = cluster.run_job("vm10");
    cluster.wait_job(
        &id,
        "success with 2 of 3 members",
        |j| j["state"] == "succeeded",
        Duration::from_secs(60),
    );
    let before: Vec<Value> = cluster.jobs().iter().map(|j| j["job_id"].clone()).collect();
    cluster.etcd.kill(1);
    std::thread::sleep(Duration::from_secs(4));
    // Without quorum no replica is ready, and every one is still alive.
    for i in 0..cluster.coordinator_urls.len() {
        if cluster.coordinators[i].0.is_none() {
            continue;
        }
        let (status, text) = cluster.pki.https_get(cluster.http_port(i), "/readyz", None);
        assert_eq!(
            status, 503,
            "coordinator {i} /readyz without quorum: {text}"
        );
        assert!(text.starts_with("not ready: store unreachable"), "{text}");
        assert_eq!(
            cluster
                .pki
                .https_get(cluster.http_port(i), "/healthz", None)
                .0,
            200
        );
    }
    assert!(
        !cluster
            .haven(&["job", "run", "vm11", "--repo", &cluster.repo])
            .status
            .success(),
        "no job may be accepted without quorum"
    );
    cluster.etcd.restart(0).expect("restart etcd member 0");
    cluster.etcd.restart(1).expect("restart etcd member 1");
    let id = {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = cluster.haven(&["job", "run", "vm11", "--repo", &cluster.repo]);
            if out.status.success() {
                break String::from_utf8(out.stdout).unwrap().trim().to_string();
            }
            assert!(
                Instant::now() < deadline,
                "scheduling did not resume: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    };
    cluster.wait_job(
        &id,
        "success after quorum returned",
        |j| j["state"] == "succeeded",
        Duration::from_secs(60),
    );
    let after: Vec<Value> = cluster.jobs().iter().map(|j| j["job_id"].clone()).collect();
    for job in &before {
        assert!(after.contains(job), "job {job} was lost with quorum");
    }

    // --- A second process with a live worker's id is refused. Workers whose leases ran
    // out while quorum was lost register again first: until then their ids are free.
    cluster.wait_vms(23);
    let live = (0..3).find(|i| cluster.workers[*i].0.is_some()).unwrap();
    let mut duplicate = cluster.spawn_worker(9, &[0], &format!("w{live}"));
    std::thread::sleep(Duration::from_secs(3));
    duplicate.kill9();
    let log = std::fs::read_to_string(dir.path().join(format!("w{live}-9.log"))).unwrap();
    assert!(log.contains("held by another live process"), "{log}");
    drop(cluster);
}
