//! Application-consistent live backups with a real guest agent: the test guest
//! (`haven_testkit::guest`) boots under `qemu-system-x86_64` with a QMP monitor and a
//! virtio-serial channel to its `qemu-guest-agent`, which runs the guest's fsfreeze
//! hook. A live backup whose agent does not answer is crash-consistent, with the
//! reason recorded, and its ext4 file system needs its journal replayed; one through the agent is recorded
//! application-consistent, the hook's `freeze` and `thaw` are seen on the guest's
//! console, the hook's `freeze` line is in the snapshot, and e2fsck finds the file
//! system clean with no journal to replay. A backup cancelled, held past its freeze
//! limit, or killed with `kill -9` while the guest is frozen leaves it thawed.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use haven_testkit::guest::{FSFREEZE_LOG, FSFREEZE_MARKER, PARTITION_START};

use crate::support::{
    bed::Bed,
    freeze::SlowQmp,
    guest::{
        Booted, GuestPaths, assert_guest_writes, boot, children_running_the_same_binary,
        one_guest_at_a_time, wait_for_console, wait_for_console_times, wait_gone,
    },
    haven::RunningBackup,
};

/// `haven backup qemu` of the guest's disk, with `extra` arguments; the JSON report.
fn back_up(bed: &Bed, qmp: &Path, extra: &[&str]) -> serde_json::Value {
    let scratch = bed.path("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let mut args = vec![
        "backup",
        "qemu",
        "--qmp",
        qmp.to_str().unwrap(),
        "--vm",
        "guest",
        "--scratch-dir",
        scratch.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = bed.ok(&args);
    serde_json::from_str(&out).unwrap_or_else(|error| panic!("{error}: {out}"))
}

/// The guest's root file system in `disk` (a raw GPT disk), as e2fsprogs names it.
fn root_partition(disk: &Path) -> String {
    format!("{}?offset={PARTITION_START}", disk.display())
}

/// Restores the snapshot's one disk to `to` (raw).
fn restore(bed: &Bed, snapshot: &str, to: &Path) {
    bed.ok(&["restore", snapshot, "--to", to.to_str().unwrap(), "--force"]);
}

/// `dumpe2fs -h` of the root file system in `disk`: its features line.
fn features(disk: &Path) -> String {
    let out = Command::new("dumpe2fs")
        .arg("-h")
        .arg(root_partition(disk))
        .output()
        .expect("dumpe2fs (e2fsprogs)");
    assert!(
        out.status.success(),
        "dumpe2fs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|line| line.starts_with("Filesystem features:"))
        .unwrap_or_default()
        .to_string()
}

/// Boots the test guest with its disk, sockets and console log in `bed`.
fn boot_in(bed: &Bed) -> Booted {
    boot(
        &bed.path("guest.qcow2"),
        GuestPaths {
            qmp: bed.path("qmp.sock"),
            agent: bed.path("qga.sock"),
            serial: bed.path("serial.log"),
        },
    )
}

#[test]
fn a_live_backup_through_the_guest_agent_is_application_consistent() {
    let _guest = one_guest_at_a_time();
    let bed = Bed::initialised();
    let booted = boot_in(&bed);
    let GuestPaths { qmp, agent, serial } = &booted.paths;
    let (qmp, agent, serial) = (qmp.as_path(), agent.as_path(), serial.as_path());

    // An agent that does not answer: a power cut's view, recorded with the reason,
    // and the journal to replay.
    let nobody = bed.path("nobody.sock");
    let crash = back_up(
        &bed,
        qmp,
        &[
            "--guest-agent",
            nobody.to_str().unwrap(),
            "--freeze-timeout",
            "2",
        ],
    );
    assert_eq!(crash["consistency"], "crash-consistent", "{crash}");
    let crash_snapshot = crash["snapshot"].as_str().unwrap();
    let listed = bed.json(&["snapshots", "--vm", "guest"]);
    assert!(
        listed[0]["consistency_reason"]
            .as_str()
            .is_some_and(|reason| reason.starts_with("the guest agent did not answer")),
        "{listed}"
    );
    let restored = bed.path("restored.raw");
    restore(&bed, crash_snapshot, &restored);
    let dirty = features(&restored);
    assert!(dirty.contains("needs_recovery"), "{dirty}");

    // Through the agent: frozen at the snapshot point by the guest itself.
    let frozen = back_up(&bed, qmp, &["--guest-agent", agent.to_str().unwrap()]);
    assert_eq!(frozen["consistency"], "application-consistent", "{frozen}");
    eprintln!(
        "application-consistent backup: guest i/o held {} ms (freeze, transaction, thaw)",
        frozen["io_blocked_ms"]
    );
    wait_for_console(
        serial,
        &format!("{FSFREEZE_MARKER} freeze"),
        Duration::from_secs(10),
    );
    wait_for_console(
        serial,
        &format!("{FSFREEZE_MARKER} thaw"),
        Duration::from_secs(10),
    );
    let snapshot = frozen["snapshot"].as_str().unwrap();
    let listed = bed.json(&["snapshots", "--vm", "guest"]);
    let shown = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| snapshot.ends_with(entry["timestamp"].as_str().unwrap_or("?")))
        .unwrap_or_else(|| panic!("{snapshot} not listed: {listed}"));
    assert_eq!(shown["consistency"], "application-consistent", "{shown}");

    restore(&bed, snapshot, &restored);
    let clean = features(&restored);
    assert!(!clean.contains("needs_recovery"), "{clean}");
    let check = Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(root_partition(&restored))
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(check.status.success(), "e2fsck -fn: {report}");
    assert!(!report.contains("journal"), "{report}");
    // The hook's line written before the freeze is in the snapshot.
    let log = Command::new("debugfs")
        .args(["-R", &format!("cat {FSFREEZE_LOG}")])
        .arg(root_partition(&restored))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&log.stdout);
    assert!(log.contains(&format!("{FSFREEZE_MARKER} freeze")), "{log}");
}

/// `haven backup qemu` of the booted guest through the guest agent, its QMP reached
/// through `qmp` (a proxy), with `extra` arguments; started.
fn start_backup(bed: &Bed, qmp: &Path, agent: &Path, extra: &[&str]) -> RunningBackup {
    let scratch = bed.path("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let mut args = vec![
        "backup",
        "qemu",
        "--qmp",
        qmp.to_str().unwrap(),
        "--vm",
        "guest",
        "--guest-agent",
        agent.to_str().unwrap(),
        "--scratch-dir",
        scratch.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    RunningBackup::start(bed.haven(&args))
}

#[test]
fn a_live_backup_that_fails_after_the_freeze_still_thaws_the_guest() {
    let _guest = one_guest_at_a_time();
    let bed = Bed::initialised();
    let booted = boot_in(&bed);
    let guest = &booted.paths;
    let freeze = format!("{FSFREEZE_MARKER} freeze");
    let thaw = format!("{FSFREEZE_MARKER} thaw");
    // QEMU's snapshot point is held 60 s by a proxy on its QMP socket (dropped when
    // the backup goes): the guest stays frozen until Haven thaws it.
    let slow = bed.path("slow-qmp.sock");
    let _proxy = SlowQmp::start(&slow, &guest.qmp, Duration::from_secs(60));

    // Cancelled (Ctrl-C) while the guest is frozen: the backup fails, the guest is
    // thawed by the cancellation, long before the freeze limit.
    let mut cancelled = start_backup(
        &bed,
        &slow,
        &guest.agent,
        &["--freeze-timeout", "50", "--qmp-timeout", "5"],
    );
    wait_for_console_times(&guest.serial, &freeze, 1, Duration::from_secs(120));
    let frozen = Instant::now();
    let pid = cancelled.guard.pid().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_for_console_times(&guest.serial, &thaw, 1, Duration::from_secs(40));
    let held = frozen.elapsed();
    assert!(held < Duration::from_secs(30), "thawed after {held:?}");
    // It exits once its QMP commands behind the held one time out (5 s each).
    let deadline = Instant::now() + Duration::from_secs(180);
    while cancelled.is_running() {
        assert!(Instant::now() < deadline, "{}", cancelled.stderr());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_guest_writes(&guest.agent);
    let listed = bed.json(&["snapshots", "--vm", "guest"]);
    assert_eq!(
        listed,
        serde_json::json!([]),
        "a cancelled backup commits nothing"
    );
    eprintln!("backup cancelled while the guest was frozen: thawed {held:.1?} later");

    // The freeze limit runs out before the held snapshot point (20 s): the guest is
    // thawed at the limit while the backup waits for QEMU, then commits a
    // crash-consistent snapshot that says why.
    let slower = bed.path("slower-qmp.sock");
    let _proxy = SlowQmp::start(&slower, &guest.qmp, Duration::from_secs(20));
    let limited = start_backup(&bed, &slower, &guest.agent, &["--freeze-timeout", "3"]);
    wait_for_console_times(&guest.serial, &freeze, 2, Duration::from_secs(120));
    let frozen = Instant::now();
    wait_for_console_times(&guest.serial, &thaw, 2, Duration::from_secs(40));
    let held = frozen.elapsed();
    assert!(held < Duration::from_secs(15), "thawed after {held:?}");
    let mut limited = limited;
    assert!(limited.is_running(), "thawed only when the backup ended");
    assert_guest_writes(&guest.agent);
    let report = limited.finish();
    assert_eq!(report["consistency"], "crash-consistent", "{report}");
    let listed = bed.json(&["snapshots", "--vm", "guest"]);
    assert_eq!(
        listed[0]["consistency_reason"],
        "the snapshot point was not taken within the freeze limit (3s): the guest was thawed first",
        "{listed}"
    );
    eprintln!("freeze limit 3 s, snapshot point held 20 s: thaw seen {held:.1?} after the freeze");

    // Killed (kill -9) while the guest is frozen: no code of the backup runs again.
    // Its watchdog, a process it forked before the freeze, sees the pipe from it
    // close and thaws the guest long before the freeze limit (50 s), then exits.
    let slowest = bed.path("slowest-qmp.sock");
    let _proxy = SlowQmp::start(&slowest, &guest.qmp, Duration::from_secs(60));
    let mut killed = start_backup(&bed, &slowest, &guest.agent, &["--freeze-timeout", "50"]);
    wait_for_console_times(&guest.serial, &freeze, 3, Duration::from_secs(120));
    let watchdogs = children_running_the_same_binary(killed.guard.pid());
    assert_eq!(watchdogs.len(), 1, "one watchdog per freeze: {watchdogs:?}");
    let frozen = Instant::now();
    killed.guard.kill9();
    wait_for_console_times(&guest.serial, &thaw, 3, Duration::from_secs(40));
    let held = frozen.elapsed();
    assert!(held < Duration::from_secs(30), "thawed after {held:?}");
    assert_guest_writes(&guest.agent);
    wait_gone(&watchdogs, Duration::from_secs(30));
    eprintln!("backup killed (kill -9) while the guest was frozen: thawed {held:.1?} later");
}
