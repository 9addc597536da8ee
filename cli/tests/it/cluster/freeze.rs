//! A worker daemon killed with `kill -9` while a real guest's file systems are frozen
//! for its backup: the test guest (`support/guest.rs`, real Debian with
//! `qemu-guest-agent`) runs under QEMU on the worker's host folder (`NAME.qmp`, and
//! `NAME.qga` beside it, so the worker freezes the guest), its QMP reached through a
//! proxy that holds the snapshot point. The thaw watchdog the worker forked before the
//! freeze thaws the guest (seen on the guest's console), nothing is committed for the
//! killed attempt, and the job, back to pending with the dead worker's lease, ends on
//! the restarted worker with an application-consistent snapshot, after that attempt
//! removed what the killed one left in QEMU and in the scratch folder.

use std::time::{Duration, Instant};

use haven_testkit::guest::FSFREEZE_MARKER;

use super::one_worker::OneWorker;
use crate::support::{
    cluster::{init_repo, one_cluster_at_a_time},
    freeze::SlowQmp,
    guest::{
        GuestPaths, assert_guest_writes, boot, children_running_the_same_binary,
        one_guest_at_a_time, wait_for_console_times, wait_gone,
    },
};

/// The worker's freeze limit: far above the thaw expected from the watchdog, so a
/// thaw seen before it is the watchdog's, not the limit's.
const FREEZE_LIMIT_SECONDS: u64 = 50;

/// Starts worker `w0` with the freeze limit above.
fn start_worker(bed: &mut OneWorker) {
    let (cert, key) = bed.pki.issue("worker", "w0");
    bed.start_worker(
        &cert,
        &key,
        &format!("[snapshot]\nfreeze_limit_seconds = {FREEZE_LIMIT_SECONDS}\n"),
        &[],
    );
}

#[test]
fn a_worker_killed_while_the_guest_is_frozen_leaves_it_thawed_and_the_job_ends_consistent() {
    let _alone = one_cluster_at_a_time();
    let _guest = one_guest_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let host = OneWorker::host_dir(dir);
    // QEMU's own monitor stays outside the host folder; the worker reaches it through
    // the proxy at `guest.qmp`. The agent's socket is the worker's `guest.qga`.
    let booted = boot(
        &dir.join("guest.qcow2"),
        GuestPaths {
            qmp: dir.join("guest-monitor.sock"),
            agent: host.join("guest.qga"),
            serial: dir.join("guest-serial.log"),
        },
    );
    let guest = booted.paths;
    let (freeze, thaw) = (
        format!("{FSFREEZE_MARKER} freeze"),
        format!("{FSFREEZE_MARKER} thaw"),
    );
    let qmp = host.join("guest.qmp");
    let held = SlowQmp::start(&qmp, &guest.qmp, Duration::from_secs(300));
    let mut bed = OneWorker::start_with_vms(dir, vec![booted.vm]);
    let repo = dir.join("repo");
    init_repo(&repo, &[]);
    start_worker(&mut bed);

    // The worker freezes the guest, then waits for the held snapshot point.
    let started = Instant::now();
    let id = bed.admin.start_backup("guest", repo.to_str().unwrap());
    wait_for_console_times(&guest.serial, &freeze, 1, Duration::from_secs(120));
    let watchdogs = children_running_the_same_binary(bed.worker_pid());
    assert_eq!(watchdogs.len(), 1, "one watchdog per freeze: {watchdogs:?}");
    eprintln!(
        "the worker froze the guest {:.1?} after the job was created",
        started.elapsed()
    );

    // kill -9: no code of the worker runs again. The watchdog sees the pipe from it
    // close and thaws the guest, long before the freeze limit, then exits.
    let killed = Instant::now();
    bed.kill_worker();
    wait_for_console_times(&guest.serial, &thaw, 1, Duration::from_secs(40));
    let held_for = killed.elapsed();
    assert!(
        held_for < Duration::from_secs(FREEZE_LIMIT_SECONDS),
        "thawed only {held_for:?} after the kill"
    );
    eprintln!("worker killed (kill -9) while the guest was frozen: thawed {held_for:.1?} later");
    assert_guest_writes(&guest.agent);
    wait_gone(&watchdogs, Duration::from_secs(30));
    assert_eq!(bed.admin.snapshots(&repo), Vec::<serde_json::Value>::new());

    // The restarted worker takes the job again; its snapshot point now passes at
    // once, within the freeze limit: application-consistent.
    drop(held);
    let _passing = SlowQmp::start(&qmp, &guest.qmp, Duration::ZERO);
    start_worker(&mut bed);
    let job = bed.wait_ended(&id, Duration::from_secs(300));
    assert_eq!(job["state"], "succeeded", "{job:#}");
    let attempts = job["attempts"].as_array().unwrap();
    assert!(attempts.len() >= 2, "{job:#}");
    let snapshots = bed.admin.snapshots(&repo);
    assert_eq!(snapshots.len(), 1, "{snapshots:#?}");
    assert_eq!(
        snapshots[0]["consistency"], "application-consistent",
        "{snapshots:#?}"
    );
    assert_eq!(
        job["snapshot"].as_str().unwrap(),
        format!("guest@{}", snapshots[0]["timestamp"].as_str().unwrap()),
        "{job:#}"
    );
    // What the killed attempt left in QEMU (its fleece node) and in the scratch
    // folder (the node's overlay) was removed by the next attempt.
    bed.wait_for_log(
        "w0.log",
        "removing what an interrupted backup left in qemu",
        Duration::from_secs(1),
    );
    let scratch: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name.starts_with("haven-fleece-"))
        .collect();
    assert!(
        scratch.is_empty(),
        "left in the scratch folder: {scratch:?}"
    );
    // The guest saw the second freeze and its thaw.
    wait_for_console_times(&guest.serial, &thaw, 2, Duration::from_secs(10));
    let console = std::fs::read_to_string(&guest.serial).unwrap();
    assert_eq!(console.matches(&freeze).count(), 2, "{console}");
    assert_guest_writes(&guest.agent);
    eprintln!(
        "from the job's creation to its application-consistent snapshot, through the kill \
         and the restart: {:.1?}",
        started.elapsed()
    );
}
