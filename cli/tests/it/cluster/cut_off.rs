//! A worker cut off from every coordinator stops its jobs once a whole lease period
//! passed without a successful heartbeat: by then its lease may have expired and the
//! coordinator handed the jobs to other workers, so it must not carry on beside them.
//! When the coordinator is back, the job runs again and exactly one snapshot is
//! committed.

use std::time::{Duration, Instant};

use super::one_worker::OneWorker;
use crate::support::cluster::one_cluster_at_a_time;

/// The VM's 2 MiB of data read at this rate: a backup of about 16 s, far longer than
/// the bed's 5 s lease.
const SLOW: &str = "read_limit_bytes_per_second = 131072\n";

/// What the worker logs, once, when it gives up on its lease.
const STOPPING: &str = "no heartbeat reached a coordinator for a whole lease period";

#[test]
fn a_worker_that_reaches_no_coordinator_for_a_lease_period_stops_its_job() {
    let _alone = one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let (mut bed, repo, id) = OneWorker::with_running_backup(dir.path(), SLOW);
    bed.kill_coordinator();
    let killed = Instant::now();

    // The lease is 5 s and heartbeats go every 1.25 s: the worker gives up within a
    // lease period and a heartbeat of the kill, then its job ends as moved.
    bed.wait_for_log("w0.log", STOPPING, Duration::from_secs(20));
    let gave_up = killed.elapsed();
    assert!(
        gave_up < Duration::from_secs(9),
        "gave up {gave_up:?} after the kill"
    );
    let dropped = bed.wait_for_log("w0.log", "job moved", Duration::from_secs(10));
    assert!(
        dropped[0].contains("not renewed in time"),
        "{}",
        bed.log("w0.log")
    );
    std::thread::sleep(Duration::from_secs(2));
    let log = bed.log("w0.log");
    assert_eq!(log.matches(STOPPING).count(), 1, "said once:\n{log}");
    assert!(
        !log.contains("job finished"),
        "the cut-off job must not finish:\n{log}"
    );

    // The coordinator back, the job is handed out again and committed once.
    bed.start_coordinator();
    let ended = bed.wait_ended(&id, Duration::from_secs(120));
    assert_eq!(ended["state"], "succeeded", "{ended:#}");
    let attempts = ended["attempts"].as_array().cloned().unwrap_or_default();
    assert_eq!(attempts.len(), 2, "{ended:#}");
    assert_eq!(attempts[0]["outcome"], "lease lost", "{ended:#}");
    let snapshots: Vec<serde_json::Value> = serde_json::from_str(&bed.admin.ok(&[
        "snapshots",
        "--repo",
        &repo,
        "--vm",
        "vm0",
        "--json",
    ]))
    .unwrap();
    assert_eq!(snapshots.len(), 1, "{snapshots:#?}");
}
