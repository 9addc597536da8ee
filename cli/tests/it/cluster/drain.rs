//! A worker stopped with SIGTERM (`docker stop`, a rolling update) drains: it takes
//! no new job, its running job finishes while its lease and heartbeats go on, and then
//! it exits. A job still running when `drain_seconds` runs out is handed back at once
//! (failed as retryable), not left to the lease's expiry.

use std::time::Duration;

use super::one_worker::OneWorker;
use crate::support::cluster::one_cluster_at_a_time;

/// The VM's 2 MiB of data read at this rate: a backup of about 8 s.
const SLOW: &str = "read_limit_bytes_per_second = 262144\n";

#[test]
fn a_terminated_worker_finishes_its_running_job_then_exits() {
    let _alone = one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let (mut bed, _repo, id) =
        OneWorker::with_running_backup(dir.path(), &format!("{SLOW}drain_seconds = 120\n"));
    let mut worker = bed.terminate_worker();
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        worker.is_running(),
        "the worker must drain, not exit at once"
    );
    let ended = bed.wait_ended(&id, Duration::from_secs(60));
    assert_eq!(ended["state"], "succeeded", "{ended:#}");
    assert_eq!(
        ended["attempts"].as_array().map(Vec::len),
        Some(1),
        "finished by the draining worker: {ended:#}"
    );
    worker.wait();
}

#[test]
fn a_job_still_running_when_the_drain_ends_is_handed_back_at_once() {
    let _alone = one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let (mut bed, _repo, id) =
        OneWorker::with_running_backup(dir.path(), &format!("{SLOW}drain_seconds = 1\n"));
    let mut worker = bed.terminate_worker();
    worker.wait();
    // Handed back by the worker itself, with its reason, the moment the drain ended:
    // no lease had to expire for the attempt to end.
    let handed_back = bed.job(&id);
    let first = &handed_back["attempts"][0];
    assert!(
        first["outcome"]
            .as_str()
            .is_some_and(|outcome| outcome.contains("shutting down")),
        "{handed_back:#}"
    );
    assert_ne!(handed_back["state"], "failed", "{handed_back:#}");
    // The worker back (restarted, without the rate limit) finishes it.
    let (cert, key) = bed.pki.issue("worker", "w0");
    bed.start_worker(&cert, &key, "", &[]);
    let ended = bed.wait_ended(&id, Duration::from_secs(60));
    assert_eq!(ended["state"], "succeeded", "{ended:#}");
}
