//! A network partition, not a dead process: etcd and a coordinator in one network
//! namespace, two workers in two others, each joined to it by a veth pair the test
//! brings down mid-backup. The cut-off worker sees no refusal and no reset, only
//! silence; it must stop its job by itself once a lease period passed without a
//! successful heartbeat, the coordinator must hand the job to the other worker, and
//! exactly one snapshot is committed, which verifies and restores byte-identical.
//! Healed, the worker registers again and commits nothing of its own.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    cluster::{Cli, init_repo, make_image, one_cluster_at_a_time, start_vm},
    etcd::Etcd,
    haven::{PASSWORD, haven},
    metrics::scrape,
    netns::{HUB_ADDRESS, Netns, Star},
    pki::Pki,
    process::{Guard, free_port, spawn_logged},
};

/// The coordinator's worker lease; heartbeats go every quarter of it.
const LEASE: Duration = Duration::from_secs(3);

/// The VM's 2 MiB of data read at this rate: a backup of about 16 s, long enough to
/// cut it off in the middle.
const READ_LIMIT: u64 = 128 << 10;

/// What a worker logs, once, when it gives up on its lease.
const STOPPING: &str = "no heartbeat reached a coordinator for a whole lease period";

/// The plain `/metrics` port of each worker, on its own namespace's loopback.
const METRICS_PORT: u16 = 9464;

/// Reads one sample of the worker's `/metrics` inside `netns`.
fn sample(netns: &Netns, name: &str) -> f64 {
    let text = netns.run_inside(|| scrape(METRICS_PORT));
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

/// Starts worker `wI` inside spoke `i`, reaching host `h0` and the coordinator at
/// `url`, reading at most [`READ_LIMIT`] per second, with `dir` as its scratch folder.
fn spawn_worker(dir: &Path, pki: &Pki, star: &Star, i: usize, url: &str) -> Guard {
    let id = format!("w{i}");
    let config = dir.join(format!("{id}.toml"));
    std::fs::write(
        &config,
        format!(
            "id = {id:?}\ncoordinators = [{url:?}]\nmax_jobs = 2\n\
             read_limit_bytes_per_second = {READ_LIMIT}\ninventory_interval_seconds = 2\n\
             scratch_dir = {:?}\nmetrics_listen = \"127.0.0.1:{METRICS_PORT}\"\n{}\
             [[hosts]]\nname = \"h0\"\nqmp_dir = {:?}\n",
            dir,
            pki.worker_toml(&id),
            dir.join("h0"),
        ),
    )
    .unwrap();
    let mut command = haven(&["worker", "--config", config.to_str().unwrap()]);
    command
        .env("HAVEN_PASSWORD", PASSWORD)
        .env("HAVEN_LOG", "haven_worker=info");
    star.spoke(i).spawn_inside(&mut command);
    spawn_logged(&mut command, &dir.join(format!("{id}.log")))
}

fn log(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

/// How many times the worker logging to `name` registered (a session began).
fn registrations(dir: &Path, name: &str) -> usize {
    log(dir, name)
        .lines()
        .filter(|line| line.contains("registered") && line.contains("lease="))
        .count()
}

/// Waits until `until` holds for `what`, failing with `describe` after `timeout`.
fn wait(timeout: Duration, what: &str, until: impl Fn() -> bool, describe: impl Fn() -> String) {
    let deadline = Instant::now() + timeout;
    while !until() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {}",
            describe()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn job(cli: &Cli, id: &str) -> Value {
    cli.jobs()
        .into_iter()
        .find(|job| job["job_id"] == id)
        .unwrap_or(Value::Null)
}

/// The workers `haven vm list` says reach `vm`.
fn workers_of(cli: &Cli, vm: &str) -> Vec<String> {
    let out = cli.run(&["vm", "list", "--json"]);
    if !out.status.success() {
        return Vec::new();
    }
    let vms: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut workers: Vec<String> = vms
        .iter()
        .filter(|v| v["name"] == vm)
        .flat_map(|v| v["workers"].as_array().cloned().unwrap_or_default())
        .filter_map(|w| w.as_str().map(str::to_owned))
        .collect();
    workers.sort();
    workers
}

#[test]
fn a_worker_partitioned_mid_backup_stops_and_the_job_commits_once_elsewhere() {
    let _alone = one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    // Declared first, dropped last: the namespaces outlive the processes inside.
    let star = Star::new("hvpart", 2);
    // This thread and everything it starts (etcd, the coordinator, the CLI, the VM)
    // live in the hub; each worker in its spoke.
    let _inside = star.hub.enter();
    let etcd = Etcd::start(1).expect("start etcd");
    let pki = Pki::with_coordinator_ip(dir, HUB_ADDRESS);
    let repo = dir.join("repo");
    init_repo(&repo, &[]);
    let repo = repo.to_str().unwrap().to_owned();
    let image = dir.join("vm0.qcow2");
    make_image(&image, 16, 2);
    std::fs::create_dir_all(dir.join("h0")).unwrap();
    let _vm = start_vm(&dir.join("h0/vm0.qmp"), &image, &dir.join("vm0.log"));

    let port = free_port();
    let url = format!("https://{HUB_ADDRESS}:{port}");
    let config = dir.join("c0.toml");
    std::fs::write(
        &config,
        format!(
            "id = \"c0\"\nlisten = \"{HUB_ADDRESS}:{port}\"\nworker_lease_seconds = {}\n\
             leader_lease_seconds = 3\ntick_ms = 200\nallowed_repositories = [{:?}]\n{}",
            LEASE.as_secs(),
            format!("{}*", dir.to_str().unwrap()),
            pki.coordinator_toml()
        ),
    )
    .unwrap();
    let _coordinator = spawn_logged(
        haven(&[
            "coordinator",
            "--config",
            config.to_str().unwrap(),
            "--etcd",
            &etcd.endpoints().join(","),
        ])
        .env("HAVEN_LOG", "haven_coordinator=info"),
        &dir.join("c0.log"),
    );
    let cli = pki.admin(&url);
    cli.wait_until_answering();
    let mut workers = [1, 2].map(|i| spawn_worker(dir, &pki, &star, i, &url));
    let both = vec!["w1".to_owned(), "w2".to_owned()];
    wait(
        Duration::from_secs(60),
        "both workers to report vm0 from their namespaces",
        || workers_of(&cli, "vm0") == both,
        || log(dir, "w1.log") + &log(dir, "w2.log"),
    );

    // A backup under way on one worker: that worker is cut off.
    let id = cli.start_backup("vm0", &repo);
    wait(
        Duration::from_secs(60),
        "the backup to read",
        || job(&cli, &id)["bytes_done"].as_u64() > Some(256 << 10),
        || format!("{:#}", job(&cli, &id)),
    );
    let running = job(&cli, &id);
    let cut: usize = running["worker"].as_str().unwrap()[1..].parse().unwrap();
    let other = 3 - cut;
    let (cut_log, cut_spoke) = (format!("w{cut}.log"), star.spoke(cut));
    assert_eq!(sample(cut_spoke, "haven_worker_jobs_running"), 1.0);
    star.cut(cut);
    let cut_at = Instant::now();

    // It stops by itself after one lease period without a successful heartbeat: not
    // before (its last renewal was at most a heartbeat before the cut), not much after.
    wait(
        Duration::from_secs(20),
        "the cut-off worker to give up its lease",
        || log(dir, &cut_log).contains(STOPPING),
        || log(dir, &cut_log),
    );
    let gave_up = cut_at.elapsed();
    eprintln!("the cut-off worker gave up its lease {gave_up:?} after the cut");
    assert!(
        gave_up >= LEASE - LEASE / 4 && gave_up < LEASE * 2 + Duration::from_secs(1),
        "gave up {gave_up:?} after the cut:\n{}",
        log(dir, &cut_log)
    );
    wait(
        Duration::from_secs(10),
        "the cut-off worker to drop its job",
        || log(dir, &cut_log).contains("job moved"),
        || log(dir, &cut_log),
    );
    // Its process lives on and reads and uploads nothing more.
    assert!(workers[cut - 1].is_running(), "the cut-off worker exited");
    assert_eq!(sample(cut_spoke, "haven_worker_jobs_running"), 0.0);
    let counters = [
        "haven_worker_read_bytes_total",
        "haven_worker_uploaded_bytes_total",
    ];
    let before = counters.map(|name| sample(cut_spoke, name));
    assert!(before[0] > 0.0, "it had read before the cut: {before:?}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        counters.map(|name| sample(cut_spoke, name)),
        before,
        "the cut-off worker still moves data"
    );

    // The coordinator hands the job to the other worker, which commits it.
    wait(
        Duration::from_secs(90),
        "the job to end",
        || {
            let state = job(&cli, &id)["state"].clone();
            state == "succeeded" || state == "failed"
        },
        || format!("{:#}", job(&cli, &id)),
    );
    let ended = job(&cli, &id);
    assert_eq!(ended["state"], "succeeded", "{ended:#}");
    let attempts = ended["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{ended:#}");
    assert_eq!(attempts[0]["worker"], format!("w{cut}"), "{ended:#}");
    assert_eq!(attempts[0]["outcome"], "lease lost", "{ended:#}");
    assert_eq!(attempts[1]["worker"], format!("w{other}"), "{ended:#}");
    let snapshots = cli.snapshots(Path::new(&repo));
    assert_eq!(snapshots.len(), 1, "{snapshots:#?}");
    cli.ok(&["verify", "--repo", &repo]);
    let restored = dir.join("vm0-restored.raw");
    cli.ok(&[
        "restore",
        "vm0@latest",
        "--repo",
        &repo,
        "--to",
        restored.to_str().unwrap(),
    ]);
    let compare = Command::new("qemu-img")
        .args(["compare", "-U", "-f", "raw", "-F", "qcow2"])
        .arg(&restored)
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        compare.status.success(),
        "restore differs: {}",
        String::from_utf8_lossy(&compare.stdout)
    );

    // Healed, the worker registers again and reports its VMs; nothing of the old job
    // comes back: still one job, one snapshot, and no commit by the healed worker.
    let registered = registrations(dir, &cut_log);
    assert_eq!(registered, 1, "{}", log(dir, &cut_log));
    star.heal(cut);
    wait(
        Duration::from_secs(60),
        "the healed worker to register again",
        || registrations(dir, &cut_log) > registered,
        || log(dir, &cut_log),
    );
    wait(
        Duration::from_secs(30),
        "the healed worker to report vm0 again",
        || workers_of(&cli, "vm0") == both,
        || format!("{:?}", workers_of(&cli, "vm0")),
    );
    std::thread::sleep(LEASE * 2);
    assert_eq!(cli.jobs().len(), 1, "{:#?}", cli.jobs());
    assert_eq!(cli.snapshots(Path::new(&repo)).len(), 1);
    let healed = log(dir, &cut_log);
    assert!(!healed.contains("job finished"), "{healed}");
    assert_eq!(healed.matches(STOPPING).count(), 1, "said once:\n{healed}");
    assert_eq!(job(&cli, &id)["state"], "succeeded");
    for worker in &mut workers {
        worker.kill9();
    }
}
