//! What a live backup does around its snapshot point, on a real qemu-storage-daemon
//! with a fake guest agent (`support::freeze`; the booted guest is in `agent.rs`):
//! the worker-side pre and post hooks (real shell processes writing to the same event
//! file as the agent, so their order is seen), their failures and timeouts as recorded
//! in the snapshot and the report, and the freeze limit: the guest is thawed when it
//! runs out, whether the agent's freeze or QEMU's snapshot point is late.

use std::time::{Duration, Instant};

use super::live::{backup_command, setup};
use crate::support::{
    bed::Bed,
    freeze::{FakeAgent, SlowQmp},
    haven::RunningBackup,
    image::MIB,
    qemu::StorageDaemon,
};

/// The lines of the shared event file.
fn lines(events: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(events)
        .unwrap_or_default()
        .lines()
        .map(|line| match line.split_once(' ') {
            // The agent's lines end with a time.
            Some((event @ ("freeze" | "thaw"), _)) => event.to_string(),
            _ => line.to_string(),
        })
        .collect()
}

/// The consistency reason `haven snapshots` shows for `snapshot`.
fn reason(bed: &Bed, snapshot: &str) -> String {
    let listed = bed.json(&["snapshots", "--vm", "vm"]);
    let shown = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| snapshot.ends_with(entry["timestamp"].as_str().unwrap_or("?")))
        .unwrap_or_else(|| panic!("{snapshot} not listed: {listed}"));
    shown["consistency_reason"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Processes whose command line holds `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .filter(|command| command.contains(needle))
        .collect()
}

#[test]
fn hooks_run_around_the_freeze_and_their_failures_are_recorded() {
    let (bed, images) = setup(1, 4 * MIB);
    let daemon = StorageDaemon::start(bed.dir.path(), &images);
    let events = bed.path("events");
    let socket = bed.path("qga.sock");
    let _agent = FakeAgent::start(&socket, &events, Duration::ZERO);
    let log = events.display().to_string();
    let post = format!("echo post $HAVEN_RESULT $HAVEN_HOOK >> {log}");
    let back_up = |pre: &str, post: &str, extra: &[&str]| {
        let mut args = vec![
            "--guest-agent",
            socket.to_str().unwrap(),
            "--pre-hook",
            pre,
            "--post-hook",
            post,
        ];
        args.extend_from_slice(extra);
        RunningBackup::start(backup_command(&bed, &daemon.qmp, Some(&daemon.nbd), &args)).finish()
    };

    // Both hooks succeed: pre, freeze, thaw, post, in that order.
    let first = back_up(
        &format!("echo pre $HAVEN_VM $HAVEN_HOOK >> {log}"),
        &post,
        &[],
    );
    assert_eq!(first["consistency"], "application-consistent", "{first}");
    assert_eq!(
        lines(&events),
        ["pre vm pre", "freeze", "thaw", "post ok post"],
        "{first}"
    );
    assert!(first.get("warnings").is_none(), "{first}");

    // A pre hook that fails: the snapshot is taken, crash-consistent, and says why;
    // the post hook still runs.
    std::fs::remove_file(&events).unwrap();
    let refused = back_up("echo the database is not ready >&2; exit 3", &post, &[]);
    assert_eq!(refused["consistency"], "crash-consistent", "{refused}");
    let why = reason(&bed, refused["snapshot"].as_str().unwrap());
    assert_eq!(
        why, "the pre-snapshot hook exited with exit status: 3: the database is not ready",
        "{refused}"
    );
    assert_eq!(lines(&events), ["freeze", "thaw", "post ok post"]);

    // A pre hook that hangs is killed with what it started when its time is up; a
    // post hook that fails is a warning of the committed backup.
    std::fs::remove_file(&events).unwrap();
    let started = Instant::now();
    let hung = back_up(
        "sleep 30.25; echo late >> /dev/null",
        "exit 1",
        &["--hook-timeout", "1"],
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(20), "{took:?}: {hung}");
    assert_eq!(hung["consistency"], "crash-consistent", "{hung}");
    let why = reason(&bed, hung["snapshot"].as_str().unwrap());
    assert_eq!(
        why, "the pre-snapshot hook did not finish within 1s and was killed",
        "{hung}"
    );
    assert!(processes_with("sleep 30.25").is_empty());
    assert_eq!(
        hung["warnings"],
        serde_json::json!(["the post-snapshot hook exited with exit status: 1"]),
        "{hung}"
    );
    daemon.quit();
}

#[test]
fn the_guest_is_thawed_when_the_freeze_limit_runs_out() {
    let (bed, images) = setup(1, 4 * MIB);
    let daemon = StorageDaemon::start(bed.dir.path(), &images);
    let events = bed.path("events");
    let socket = bed.path("qga.sock");
    let limit = ["--freeze-timeout", "1"];

    // The agent answers the freeze late: the guest is thawed at the limit.
    let agent = FakeAgent::start(&socket, &events, Duration::from_secs(5));
    let mut args = vec!["--guest-agent", socket.to_str().unwrap()];
    args.extend_from_slice(&limit);
    let late_freeze =
        RunningBackup::start(backup_command(&bed, &daemon.qmp, Some(&daemon.nbd), &args)).finish();
    let seen = agent.events();
    drop(agent);
    assert_eq!(
        late_freeze["consistency"], "crash-consistent",
        "{late_freeze}"
    );
    let why = reason(&bed, late_freeze["snapshot"].as_str().unwrap());
    assert!(
        why.starts_with("the guest's file systems could not be frozen"),
        "{why}"
    );
    let held = thawed_after(&seen);
    assert!(held < 3.0, "thawed {held:.2} s after the freeze: {seen:?}");

    // QEMU takes the snapshot point late (its transaction held 6 s): the guest is
    // thawed at the limit, before the point, which is then only crash-consistent.
    std::fs::remove_file(&events).unwrap();
    let agent = FakeAgent::start(&socket, &events, Duration::ZERO);
    let slow = bed.path("slow-qmp.sock");
    let _proxy = SlowQmp::start(&slow, &daemon.qmp, Duration::from_secs(6));
    let late_point =
        RunningBackup::start(backup_command(&bed, &slow, Some(&daemon.nbd), &args)).finish();
    let seen = agent.events();
    assert_eq!(
        late_point["consistency"], "crash-consistent",
        "{late_point}"
    );
    let why = reason(&bed, late_point["snapshot"].as_str().unwrap());
    assert_eq!(
        why,
        "the snapshot point was not taken within the freeze limit (1s): the guest was thawed first",
        "{late_point}"
    );
    let held = thawed_after(&seen);
    assert!(held < 3.0, "thawed {held:.2} s after the freeze: {seen:?}");
    let blocked = late_point["io_blocked_ms"].as_f64().unwrap();
    assert!(blocked < 3000.0, "{late_point}");
    eprintln!("freeze limit 1 s, snapshot point held 6 s: guest thawed after {held:.2} s");
    daemon.quit();
}

/// Seconds from the freeze to the thaw in `events` (one of each).
fn thawed_after(events: &[(String, f64)]) -> f64 {
    let at = |name: &str| {
        let found: Vec<f64> = events
            .iter()
            .filter(|(event, _)| event == name)
            .map(|(_, seconds)| *seconds)
            .collect();
        assert_eq!(found.len(), 1, "{name} in {events:?}");
        found[0]
    };
    at("thaw") - at("freeze")
}
