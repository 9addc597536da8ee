//! `haven gc` through the real binary, single-machine mode: racing backups, prune and
//! itself; killed with SIGKILL at several points; and what it frees.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::{
    bed::Bed,
    image::{MIB, assert_same_disk, noise, write_at},
};

/// Runs `haven backup image` until it commits; a backup may be refused because a
/// concurrent collection removed a chunk it relied on (it must then say so), and is
/// run again. Returns the snapshot name and how many attempts were refused.
fn backup_retrying(bed: &Bed, vm: &str, image: &Path) -> (String, u64) {
    let mut refused = 0;
    loop {
        let output = bed.backup_output(vm, &[image]);
        if output.status.success() {
            let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
            return (report["snapshot"].as_str().unwrap().to_string(), refused);
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("concurrent garbage collection removed chunks"),
            "backup of {vm} failed: {stderr}"
        );
        refused += 1;
        assert!(refused < 5, "refused too often: {stderr}");
    }
}

fn gc_json(bed: &Bed, extra: &[&str]) -> serde_json::Value {
    bed.json(&[&["gc", "--margin", "0s"], extra].concat())
}

fn chunk_names(bed: &Bed) -> BTreeSet<String> {
    bed.chunk_files()
        .iter()
        .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn restore_and_compare(bed: &Bed, snapshot: &str, expected: &Path) {
    let out = bed.path(&format!("{}.restored", snapshot.replace([':', '@'], "_")));
    bed.ok(&["restore", snapshot, "--to", out.to_str().unwrap()]);
    assert_same_disk(expected, &out);
    std::fs::remove_file(out).unwrap();
}

/// Backups per VM in the race.
const ROUNDS: u64 = 8;

#[test]
fn gc_racing_backups_and_prune_keeps_every_snapshot_and_frees_garbage() {
    let started = Instant::now();
    let bed = Arc::new(Bed::new());
    bed.init();
    let stop = Arc::new(AtomicBool::new(false));
    let collections = Arc::new(AtomicU64::new(0));
    let removed = Arc::new(AtomicU64::new(0));
    let collector = {
        let (bed, stop, collections, removed) = (
            bed.clone(),
            stop.clone(),
            collections.clone(),
            removed.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let report = gc_json(&bed, &[]);
                collections.fetch_add(1, Ordering::SeqCst);
                // A backup refused because of this very collection may have written an
                // index naming a removed chunk, so "missing" is not asserted here.
                removed.fetch_add(report["chunks_removed"].as_u64().unwrap(), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    // Three VMs, eight rounds each: every round rewrites one extent, cycling through
    // three versions, so with prune keeping two snapshots each backup puts back a chunk
    // a pruned snapshot left as garbage: backups find those by existence check while
    // collections sweep them.
    let mut writers = Vec::new();
    for vm in 0..3u64 {
        let bed = bed.clone();
        writers.push(std::thread::spawn(move || {
            let name = format!("vm{vm}");
            let image = bed.raw_image(&format!("{name}.raw"), 6 * MIB, &[(0, 2 * MIB as usize)]);
            let mut kept = Vec::new();
            let mut refused = 0;
            for round in 0..ROUNDS {
                // Seeds 0 and 1 would repeat the data `raw_image` wrote (same stream).
                let seed = 10 + vm * 100 + round % 3;
                write_at(&image, 3 * MIB, &noise(seed, MIB as usize));
                let (snapshot, refusals) = backup_retrying(&bed, &name, &image);
                refused += refusals;
                let copy = bed.path(&format!("{name}-{round}.raw"));
                std::fs::copy(&image, &copy).unwrap();
                kept.push((snapshot, copy));
            }
            (kept, refused)
        }));
    }
    // Meanwhile prune, so that collections have garbage to remove during the backups
    // (and backups of odd rounds find chunks pruned snapshots left by existence check).
    let mut prunes = 0;
    while !writers.iter().all(|writer| writer.is_finished()) {
        std::thread::sleep(Duration::from_millis(300));
        bed.ok(&["prune", "--keep-last", "2"]);
        prunes += 1;
    }

    let mut snapshots: Vec<(String, PathBuf)> = Vec::new();
    let mut refused = 0;
    for writer in writers {
        let (kept, refusals) = writer.join().unwrap();
        snapshots.extend(kept);
        refused += refusals;
    }
    stop.store(true, Ordering::SeqCst);
    collector.join().unwrap();
    let collections = collections.load(Ordering::SeqCst);
    let removed = removed.load(Ordering::SeqCst);
    eprintln!(
        "{collections} collections removed {removed} chunks during {} backups and {prunes} \
         prunes ({refused} backups refused and retried)",
        3 * ROUNDS
    );
    assert!(collections >= 3, "only {collections} collections ran");
    assert!(
        removed > 0,
        "no collection ran into garbage: the race proves nothing"
    );

    // Every snapshot that exists verifies and restores byte-identical.
    let listed: BTreeSet<String> = bed
        .json(&["snapshots"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["snapshot"].as_str().unwrap().to_string())
        .collect();
    let verify = bed.json(&["verify"]);
    assert!(
        verify["failures"].as_array().unwrap().is_empty(),
        "{verify}"
    );
    let mut restored = 0;
    for (snapshot, copy) in &snapshots {
        if listed.contains(snapshot) {
            restore_and_compare(&bed, snapshot, copy);
            restored += 1;
        }
    }
    assert!(restored >= 6, "the two newest of each VM at least");

    // A final collection leaves exactly the referenced chunks (after a second, so
    // that the indexes of refused backups are older than the cutoff).
    std::thread::sleep(Duration::from_millis(1100));
    let report = gc_json(&bed, &[]);
    assert_eq!(report["chunks_missing"], 0, "{report}");
    let again = gc_json(&bed, &["--dry-run"]);
    assert_eq!(again["chunks_removed"], 0, "{again}");
    assert_eq!(again["indexes_removed"], 0, "{again}");
    assert_eq!(
        again["chunks_stored"], again["chunks_referenced"],
        "only referenced chunks remain: {again}"
    );
    assert_eq!(
        chunk_names(&bed).len() as u64,
        again["chunks_referenced"].as_u64().unwrap()
    );

    // Pruning a snapshot frees exactly the chunks only it used: vm0's oldest kept one
    // holds a 1 MiB extent no other snapshot has.
    let image = bed.path("vm0.raw");
    write_at(&image, 3 * MIB, &noise(777, MIB as usize));
    let (newest, _) = backup_retrying(&bed, "vm0", &image);
    let newest_copy = bed.path("vm0-newest.raw");
    std::fs::copy(&image, &newest_copy).unwrap();
    snapshots.push((newest, newest_copy));
    let before = chunk_names(&bed);
    bed.ok(&["prune", "--keep-last", "2", "--vm", "vm0"]);
    let dry = gc_json(&bed, &["--dry-run"]);
    let freed = gc_json(&bed, &[]);
    assert_eq!(dry["chunks_removed"], freed["chunks_removed"]);
    assert_eq!(dry["bytes_removed"], freed["bytes_removed"]);
    let after = chunk_names(&bed);
    let gone = before.difference(&after).count() as u64;
    assert_eq!(gone, freed["chunks_removed"].as_u64().unwrap());
    assert!(
        gone >= 1,
        "the pruned snapshot's own extent was freed: {freed}"
    );
    assert!(freed["bytes_removed"].as_u64().unwrap() > MIB / 2);
    assert!(after.is_subset(&before));
    // What is left of vm0 still restores.
    let left: Vec<String> = bed
        .json(&["snapshots", "--vm", "vm0"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["snapshot"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left.len(), 2);
    for (snapshot, copy) in snapshots.iter().filter(|(name, _)| left.contains(name)) {
        restore_and_compare(&bed, snapshot, copy);
    }
    let verify = bed.json(&["verify"]);
    assert!(
        verify["failures"].as_array().unwrap().is_empty(),
        "{verify}"
    );
    assert!(started.elapsed() < Duration::from_secs(90));
}

#[test]
fn a_margin_keeps_young_garbage_and_in_flight_indexes_then_both_go() {
    let bed = Bed::initialised();
    let image = bed.raw_image("disk.raw", 4 * MIB, &[(0, 2 * MIB as usize)]);
    let first = bed.backup("vm", &[&image]);
    write_at(&image, 0, &noise(5, MIB as usize));
    bed.backup("vm", &[&image]);
    // The first snapshot loses its manifest but keeps its index: what a backup between
    // writing its index and its manifest looks like, or one killed there.
    let timestamp = first["snapshot"]
        .as_str()
        .unwrap()
        .split_once('@')
        .unwrap()
        .1;
    let repo = bed.repo_dir();
    std::fs::remove_file(repo.join("snapshots/vm").join(timestamp)).unwrap();
    let index = repo.join("indexes/vm").join(timestamp).join("vda");
    assert!(index.exists());

    let young = bed.json(&["gc", "--margin", "1h"]);
    assert_eq!(young["indexes_in_flight"], 1, "{young}");
    assert_eq!(young["chunks_removed"], 0, "{young}");
    assert_eq!(young["indexes_removed"], 0, "{young}");
    assert_eq!(
        young["chunks_too_young"], 0,
        "marked from the index: {young}"
    );
    assert!(index.exists());

    std::thread::sleep(Duration::from_millis(1100));
    let old = bed.json(&["gc", "--margin", "0s"]);
    assert_eq!(old["chunks_removed"], 1, "{old}");
    assert_eq!(old["indexes_removed"], 1, "{old}");
    assert!(!index.exists());
    let verify = bed.json(&["verify"]);
    assert!(verify["failures"].as_array().unwrap().is_empty());
}

/// Starts `haven gc --margin 0s` that pauses at `phase` (test hook; for `resume_after`
/// seconds, or for good) and returns once it has paused there.
fn gc_paused_at(bed: &Bed, phase: &str, resume_after: Option<u64>) -> std::process::Child {
    let mut command = bed.haven(&["gc", "--margin", "0s", "--concurrency", "1", "--json"]);
    command
        .env("HAVEN_GC_TEST_PAUSE", phase)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(seconds) = resume_after {
        command.env("HAVEN_GC_TEST_PAUSE_SECONDS", seconds.to_string());
    }
    let mut child = command.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let _ = sender.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match receiver.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains("haven gc paused") => return child,
            Ok(_) => {}
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("gc never paused at {phase}");
            }
        }
    }
}

/// Kills a collection with SIGKILL at `phase`.
fn gc_killed_at(bed: &Bed, phase: &str) {
    let mut child = gc_paused_at(bed, phase, None);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The race made deterministic: a collection has marked (a pruned snapshot's chunk is
/// garbage) and pauses before deleting; a backup of that very content finds the chunk
/// by existence check and writes its index while the collection holds its lock; the
/// collection then deletes the chunk. The backup must notice and refuse to commit
/// (a snapshot naming a deleted chunk would be lost data); run again, it stores the
/// chunk anew.
#[test]
fn a_backup_relying_on_a_chunk_being_collected_is_refused_and_its_retry_is_whole() {
    let bed = Bed::initialised();
    let image = bed.raw_image("disk.raw", 4 * MIB, &[(0, MIB as usize)]);
    write_at(&image, 2 * MIB, &noise(31, MIB as usize));
    let old_copy = bed.path("old.raw");
    std::fs::copy(&image, &old_copy).unwrap();
    bed.backup("vm", &[&image]);
    write_at(&image, 2 * MIB, &noise(32, MIB as usize));
    bed.backup("vm", &[&image]);
    bed.ok(&["prune", "--keep-last", "1"]);
    std::thread::sleep(Duration::from_millis(1100));

    let collector = gc_paused_at(&bed, "marked", Some(4));
    // Back to the old content: its 1 MiB extent is the garbage the collection holds.
    std::fs::copy(&old_copy, &image).unwrap();
    let output = bed
        .haven(&["backup", "image", image.to_str().unwrap(), "--vm", "vm"])
        .output()
        .unwrap();
    let collected = collector.wait_with_output().unwrap();
    assert!(collected.status.success());
    let report: serde_json::Value = serde_json::from_slice(&collected.stdout).unwrap();
    assert_eq!(report["chunks_removed"], 1, "{report}");
    assert!(
        !output.status.success(),
        "the backup committed a snapshot naming a chunk the collection removed"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("concurrent garbage collection removed chunks"),
        "{stderr}"
    );

    let (snapshot, refused) = backup_retrying(&bed, "vm", &image);
    assert_eq!(refused, 0);
    let verify = bed.json(&["verify"]);
    assert!(
        verify["failures"].as_array().unwrap().is_empty(),
        "{verify}"
    );
    restore_and_compare(&bed, &snapshot, &old_copy);
}

#[test]
fn gc_killed_at_any_point_loses_nothing_and_the_next_one_completes() {
    let bed = Bed::initialised();
    let image = bed.raw_image("disk.raw", 8 * MIB, &[(0, MIB as usize)]);
    let mut versions = Vec::new();
    for round in 0..4u64 {
        // Four fresh 1 MiB chunks per round: three rounds of garbage after the prune.
        write_at(&image, 2 * MIB, &noise(50 + round, 4 * MIB as usize));
        let report = bed.backup("vm", &[&image]);
        let copy = bed.path(&format!("v{round}.raw"));
        std::fs::copy(&image, &copy).unwrap();
        versions.push((report["snapshot"].as_str().unwrap().to_string(), copy));
    }
    bed.ok(&["prune", "--keep-last", "1"]);
    std::thread::sleep(Duration::from_millis(1100));
    let garbage = gc_json(&bed, &["--dry-run"])["chunks_removed"]
        .as_u64()
        .unwrap();
    assert_eq!(garbage, 12);

    for phase in ["marked", "deleted:1", "deleted:7", "swept"] {
        gc_killed_at(&bed, phase);
        // The dead collection's lock does not block a backup (its process is gone) ...
        let (snapshot, _) = backup_retrying(&bed, "vm", &image);
        versions.push((snapshot, versions[3].1.clone()));
        // ... and everything referenced is still there.
        let verify = bed.json(&["verify"]);
        assert!(
            verify["failures"].as_array().unwrap().is_empty(),
            "after a kill at {phase}: {verify}"
        );
    }
    let report = gc_json(&bed, &[]);
    assert_eq!(report["chunks_missing"], 0, "{report}");
    let dry = gc_json(&bed, &["--dry-run"]);
    assert_eq!(dry["chunks_removed"], 0, "{dry}");
    assert_eq!(dry["chunks_stored"], dry["chunks_referenced"], "{dry}");
    assert_eq!(
        chunk_names(&bed).len() as u64,
        dry["chunks_referenced"].as_u64().unwrap()
    );
    for (snapshot, copy) in &versions[3..] {
        restore_and_compare(&bed, snapshot, copy);
    }
}
