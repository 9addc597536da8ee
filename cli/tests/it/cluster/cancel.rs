//! Ending jobs that would not end by themselves: `haven job cancel` and a policy's
//! `job_timeout_seconds`. Either fails the job on the coordinator at once, and the
//! worker running it stops it at its next progress report; nothing is committed.

use std::time::Duration;

use serde_json::Value;

use super::one_worker::OneWorker;
use crate::support::cluster::{init_repo, one_cluster_at_a_time};

/// The VM's 2 MiB of data read at this rate: a backup of about 32 s, which the tests
/// end long before.
const SLOW: &str = "read_limit_bytes_per_second = 65536\n";

/// What the worker logs when it stopped the backup the coordinator asked it to stop.
const STOPPED: &str = "error=backup cancelled";

/// The snapshots of `vm0` in `repo`.
fn snapshots(bed: &OneWorker, repo: &str) -> Vec<Value> {
    serde_json::from_str(
        &bed.admin
            .ok(&["snapshots", "--repo", repo, "--vm", "vm0", "--json"]),
    )
    .unwrap()
}

#[test]
fn an_operator_cancels_a_running_job_and_its_worker_stops_it() {
    let _alone = one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let (bed, repo, id) = OneWorker::with_running_backup(dir.path(), SLOW);

    let cancelled: Value =
        serde_json::from_str(&bed.admin.ok(&["job", "cancel", &id, "--json"])).unwrap();
    assert_eq!(cancelled["state"], "failed", "{cancelled:#}");
    assert_eq!(
        cancelled["error"], "cancelled by admin admin",
        "{cancelled:#}"
    );
    assert_eq!(
        cancelled["attempts"][0]["outcome"], "cancelled",
        "{cancelled:#}"
    );

    bed.wait_for_log("w0.log", STOPPED, Duration::from_secs(15));
    let again = bed.admin.run(&["job", "cancel", &id]);
    assert!(
        !again.status.success(),
        "a job that ended cannot be cancelled"
    );
    let refusal = String::from_utf8_lossy(&again.stderr);
    assert!(refusal.contains("already ended (failed)"), "{refusal}");
    let unknown = bed.admin.run(&["job", "cancel", "job-0000000000000000"]);
    assert!(!unknown.status.success());

    // The job stays failed (the worker's own report of the stop changes nothing) and
    // nothing was committed.
    std::thread::sleep(Duration::from_secs(2));
    let job = bed.job(&id);
    assert_eq!(job["state"], "failed", "{job:#}");
    assert_eq!(job["attempts"].as_array().map(Vec::len), Some(1), "{job:#}");
    assert!(snapshots(&bed, &repo).is_empty());

    let audit: Vec<Value> =
        serde_json::from_str(&bed.admin.ok(&["audit", "--json", "--limit", "1000"])).unwrap();
    let cancels: Vec<&Value> = audit
        .iter()
        .filter(|r| r["method"] == "AdminService/CancelJob")
        .collect();
    assert_eq!(cancels.len(), 3, "{audit:#?}");
    assert!(
        cancels
            .iter()
            .any(|r| r["result"] == "Ok" && r["detail"].as_str().is_some_and(|d| d.contains(&id))),
        "{cancels:#?}"
    );
}

#[test]
fn a_job_past_its_policys_timeout_fails_and_its_worker_stops_it() {
    let _alone = one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut bed = OneWorker::start(dir.path(), &["vm0"], &[], &[]);
    let repo = dir.path().join("repo");
    init_repo(&repo, &[]);
    let repo = repo.to_str().unwrap().to_owned();
    let (cert, key) = bed.pki.issue("worker", "w0");
    bed.start_worker_with(&cert, &key, SLOW, "", &[]);
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[[policy]]\nname = \"quick\"\nschedule = \"0 0 1 1 *\"\nrepository = {repo:?}\n\
             job_timeout_seconds = 4\n"
        ),
    )
    .unwrap();
    bed.admin.ok(&["policy", "apply", policy.to_str().unwrap()]);
    let started: Value =
        serde_json::from_str(&bed.admin.ok(&["policy", "run", "quick", "--json"])).unwrap();
    let id = started["job_ids"][0].as_str().unwrap().to_owned();

    let ended = bed.wait_ended(&id, Duration::from_secs(30));
    assert_eq!(ended["state"], "failed", "{ended:#}");
    assert_eq!(
        ended["error"], "timed out: not done 4 s after it was created",
        "{ended:#}"
    );
    assert_eq!(ended["attempts"][0]["outcome"], "timed out", "{ended:#}");
    bed.wait_for_log("w0.log", STOPPED, Duration::from_secs(15));
    assert!(snapshots(&bed, &repo).is_empty());
}
