//! A worker's certificate rotated while it runs backups. The first certificate
//! expires during the run; the coordinator refuses an expired certificate at the
//! handshake and closes a connection when its certificate expires. So every job
//! after the expiry succeeds only if the worker's connections by then present the new
//! certificate: a worker that kept the old one would lose its lease and its jobs.

use std::time::{Duration, SystemTime};

use haven_tls::Role;

use super::one_worker::OneWorker;
use crate::support::{cluster::init_repo, haven::haven, process::ok};

/// Life of the first certificate: enough for the worker to start and run a first
/// backup before the rotation.
const FIRST_CERTIFICATE: Duration = Duration::from_secs(45);

#[test]
fn a_worker_certificate_rotated_mid_run_is_used_by_new_connections_and_no_job_fails() {
    let _alone = crate::support::cluster::one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let mut bed = OneWorker::start(dir, &["vm0", "vm1"], &[], &[]);
    let repo = dir.join("repo");
    init_repo(&repo, &[]);
    let repo = repo.to_str().unwrap().to_owned();

    let tls = dir.join("worker-tls");
    std::fs::create_dir_all(&tls).unwrap();
    let (cert, key, old_expiry) =
        bed.pki
            .issue_expiring(Role::Worker, "w0", FIRST_CERTIFICATE, &tls, "w0");
    let old_copy = dir.join("old");
    std::fs::create_dir_all(&old_copy).unwrap();
    std::fs::copy(&cert, old_copy.join("w0.pem")).unwrap();
    std::fs::copy(&key, old_copy.join("w0-key.pem")).unwrap();
    bed.start_worker(&cert, &key, "", &[]);

    let run = |vm: &str| {
        bed.admin
            .ok(&["job", "run", vm, "--repo", &repo])
            .trim()
            .to_owned()
    };
    let first = run("vm0");
    let job = bed.wait_ended(&first, Duration::from_secs(60));
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert!(
        SystemTime::now() < old_expiry,
        "the first backup outlasted the first certificate; raise FIRST_CERTIFICATE"
    );

    // Rotation as an operator does it: new files beside the old, renamed over them
    // (the key first: the worker keeps its previous pair until both files match).
    let new = dir.join("new");
    ok(
        haven(&["pki", "issue", "worker", "w0", "--dir"])
            .arg(dir.join("pki"))
            .arg("--out")
            .arg(&new)
            .output()
            .unwrap(),
        "haven pki issue",
    );
    std::fs::rename(new.join("w0-key.pem"), &key).unwrap();
    std::fs::rename(new.join("w0.pem"), &cert).unwrap();

    // Backups back to back, through the old certificate's expiry and past a worker
    // lease after it.
    let mut jobs = vec![first];
    let until = old_expiry + Duration::from_secs(8);
    while SystemTime::now() < until {
        let vm = if jobs.len() % 2 == 0 { "vm0" } else { "vm1" };
        let id = run(vm);
        let job = bed.wait_ended(&id, Duration::from_secs(120));
        assert_eq!(job["state"], "succeeded", "{job:#}");
        jobs.push(id);
    }
    let last = run("vm1");
    let job = bed.wait_ended(&last, Duration::from_secs(120));
    assert_eq!(job["state"], "succeeded", "after the expiry: {job:#}");
    jobs.push(last);

    // No job failed, none was even retried: each ran once, on w0.
    for job in bed.wait_idle(Duration::from_secs(60), |_| true) {
        assert_eq!(job["state"], "succeeded", "{job:#}");
        assert_eq!(job["attempts"].as_array().unwrap().len(), 1, "{job:#}");
        assert_eq!(job["worker"], "w0", "{job:#}");
    }
    assert!(jobs.len() >= 3, "{jobs:?}");

    // The old certificate is refused now, so the worker's connections present the new
    // one; it moved before the old one expired (the coordinator never had to close a
    // connection of the worker's for an expired certificate).
    let old = bed
        .pki
        .cli_with_files(
            &bed.url,
            &old_copy.join("w0.pem"),
            &old_copy.join("w0-key.pem"),
        )
        .run(&["vm", "list"]);
    let refusal = String::from_utf8_lossy(&old.stderr);
    assert!(!old.status.success());
    assert!(refusal.contains("CertificateExpired"), "{refusal}");
    let worker_log = bed.log("w0.log");
    assert!(worker_log.contains("reloaded certificates"), "{worker_log}");
    assert!(
        worker_log.contains("client certificate reloaded; connecting to the coordinator again"),
        "{worker_log}"
    );
    let coordinator_log = bed.log("coordinator.log");
    assert!(
        !coordinator_log.contains("client certificate expired"),
        "{coordinator_log}"
    );
}
