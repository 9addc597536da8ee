//! Power loss: every write not yet made durable is lost at once, not just the process
//! (`haven_testkit::power_loss`: the processes run with a shim that records what each
//! fsync made durable, and the tree a power loss leaves is rebuilt from that record at
//! chosen moments). What was acknowledged before the moment must be there after it:
//! every snapshot a `haven backup` reported committed restores byte-identical from a
//! `file://` repository, and every object a storage node answered 200 for reads back
//! whole.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use haven_testkit::power_loss::{Mark, PowerLoss};

use crate::support::bed::Bed;
use crate::support::haven::HavenClient;
use crate::support::image::{MIB, assert_same_disk, noise, raw_image, write_at};
use crate::support::process::{Guard, ok};
use crate::support::storage_node::{Node, NodeOptions, put_until_killed, verify_after_crash};
use crate::support::tree::files_below;

/// A snapshot a `haven backup` reported committed, and what it must restore to.
struct Acknowledged {
    /// The moment the backup exited successfully.
    at: Mark,
    snapshot: String,
    /// A copy of the image as it was backed up.
    image: PathBuf,
}

/// `haven ARGS --repo URL` of the bed, recorded by `power`.
fn watched(bed: &Bed, power: &PowerLoss, args: &[&str]) -> Command {
    let mut command = bed.haven(args);
    power.preload(&mut command);
    command
}

/// Backs up `image` under `power`; the acknowledged snapshot.
fn back_up(bed: &Bed, power: &PowerLoss, image: &Path, copy: &str) -> Acknowledged {
    let args = [
        "backup",
        "image",
        image.to_str().unwrap(),
        "--vm",
        "vm",
        "--json",
    ];
    let stdout = ok(watched(bed, power, &args).output().unwrap(), "backup");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let at = power.mark();
    let kept = bed.path(copy);
    std::fs::copy(image, &kept).unwrap();
    Acknowledged {
        at,
        snapshot: report["snapshot"].as_str().unwrap().to_owned(),
        image: kept,
    }
}

/// Starts a backup of `image` under `power` and kills it (SIGKILL) once it has
/// written `chunks` new chunk files, before it commits.
fn back_up_killed(bed: &Bed, power: &PowerLoss, image: &Path, chunks: usize) {
    let before = bed.chunk_files().len();
    let args = [
        "backup",
        "image",
        image.to_str().unwrap(),
        "--vm",
        "vm",
        "--connections",
        "1",
    ];
    let mut run = Guard::new(watched(bed, power, &args).spawn().unwrap());
    let started = Instant::now();
    while bed.chunk_files().len() < before + chunks {
        assert!(run.is_running(), "the backup ended before it was killed");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no chunks written"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(run.is_running(), "the backup ended before it was killed");
    run.kill9();
}

/// The moments to lose power at: every acknowledgement, the kill, the end, and
/// `spread` more evenly spread over the syncs recorded until `end`.
fn crash_points(power: &PowerLoss, end: Mark, named: &[Mark], spread: usize) -> Vec<Mark> {
    let all = power.marks_until(end).unwrap();
    let mut points: Vec<Mark> = (1..=spread)
        .map(|i| all[i * (all.len() - 1) / spread])
        .collect();
    points.extend_from_slice(named);
    points.push(end);
    points.sort();
    points.dedup();
    points
}

#[test]
fn a_local_repository_keeps_every_acknowledged_snapshot() {
    let bed = Bed::new();
    std::fs::create_dir(bed.repo_dir()).unwrap();
    let power = PowerLoss::watch(&bed.repo_dir()).unwrap();
    let init = ["repo", "init", "--chunk-size", "1048576"];
    ok(watched(&bed, &power, &init).output().unwrap(), "init");
    let initialised = power.mark();

    let image = bed.path("disk.raw");
    raw_image(&image, 24 * MIB, &[(0, 20 * MIB as usize)]);
    let mut acked = vec![back_up(&bed, &power, &image, "first.raw")];
    write_at(&image, 3 * MIB, &noise(40, 4096));
    write_at(&image, 11 * MIB, &noise(41, 4096));
    acked.push(back_up(&bed, &power, &image, "second.raw"));

    // New data everywhere; the run writing it is killed half-way. The next run finds
    // the chunks it left and uses them as they are.
    write_at(&image, 0, &noise(42, 20 * MIB as usize));
    back_up_killed(&bed, &power, &image, 6);
    let killed = power.mark();
    acked.push(back_up(&bed, &power, &image, "third.raw"));
    let end = power.mark();

    let mut named: Vec<Mark> = acked.iter().map(|ack| ack.at).collect();
    named.extend([initialised, killed]);
    let points = crash_points(&power, end, &named, 8);
    eprintln!(
        "{} syncs recorded; power lost at {} moments",
        power.syncs_until(end).unwrap(),
        points.len()
    );
    for (n, &point) in points.iter().enumerate() {
        if point < initialised {
            continue;
        }
        let after = bed.path(&format!("after-power-loss-{n}"));
        power.rebuild(point, &after).unwrap();
        let repo = HavenClient::new(format!("file://{}", after.display()));
        for ack in acked.iter().filter(|ack| ack.at <= point) {
            let out = bed.path("restored.raw");
            let _ = std::fs::remove_file(&out);
            let restored = repo.run(&["restore", &ack.snapshot, "--to", out.to_str().unwrap()]);
            assert!(
                restored.status.success(),
                "{} lost by a power loss after {} of {} syncs: {}",
                ack.snapshot,
                power.syncs_until(point).unwrap(),
                power.syncs_until(end).unwrap(),
                String::from_utf8_lossy(&restored.stderr)
            );
            assert_same_disk(&ack.image, &out);
        }
        std::fs::remove_dir_all(&after).unwrap();
    }
}

/// A storage node whose data directory a [`PowerLoss`] watches.
fn watched_node() -> (PowerLoss, Node) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    let power = PowerLoss::watch(&dir.path().join("data")).unwrap();
    let node = Node::start_in(
        dir,
        NodeOptions {
            env: power.env(),
            ..NodeOptions::default()
        },
    );
    (power, node)
}

/// A node started on the tree a power loss at `mark` leaves of `power`'s directory.
fn node_after_power_loss(power: &PowerLoss, mark: Mark) -> Node {
    let after = tempfile::tempdir().unwrap();
    power.rebuild(mark, &after.path().join("data")).unwrap();
    assert!(!files_below(&after.path().join("data")).is_empty());
    Node::start_in(after, NodeOptions::default())
}

#[test]
fn a_storage_node_keeps_every_acknowledged_object() {
    let (power, mut node) = watched_node();
    // Objects from 16 writers; the node is killed mid-stream, and the power goes with
    // it: whatever the node had not made durable is gone.
    let acked = put_until_killed(&mut node);
    let end = power.mark();
    eprintln!(
        "{} objects acknowledged, {} syncs recorded",
        acked.len(),
        power.syncs_until(end).unwrap()
    );
    let node = node_after_power_loss(&power, end);
    verify_after_crash(&node, &acked);
}

/// A node killed (not powered off) can leave objects renamed into place whose
/// directory entry is not durable yet; once it is restarted it serves them, and a
/// client told they exist relies on them (a backup's existence query skips uploading
/// such a chunk). The restarted node makes its data durable before it serves, so a
/// power loss after the restart keeps every object the node then listed.
#[test]
fn a_restarted_storage_node_keeps_every_object_it_serves() {
    let (power, mut node) = watched_node();
    let acked = put_until_killed(&mut node);
    node.restart();
    let listing = node.aws_ok(&[
        "s3api",
        "list-objects-v2",
        "--bucket",
        "crash",
        "--query",
        "Contents[].Key",
        "--output",
        "text",
    ]);
    let served: Vec<String> = listing.split_whitespace().map(str::to_owned).collect();
    assert!(
        acked.iter().all(|key| served.contains(key)),
        "the restarted node lost acknowledged objects"
    );
    eprintln!(
        "{} objects acknowledged before the kill, {} served after the restart",
        acked.len(),
        served.len()
    );
    let end = power.mark();
    node.kill9();
    let node = node_after_power_loss(&power, end);
    verify_after_crash(&node, &served);
}
