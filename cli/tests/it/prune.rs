//! `haven prune` and `haven forget` through the real binary. Backups are stamped "now", one second apart,
//! so the calendar rules are covered by the table tests of the pure function
//! (`crates/repo/tests/retention.rs`); here `--keep-last` drives the end-to-end path.

use std::collections::BTreeSet;

use crate::support::{
    bed::Bed,
    image::{MIB, assert_same_disk, noise, write_at},
    tree::files_below,
};

fn snapshot_names(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["snapshot"].as_str().unwrap().to_string())
        .collect()
}

fn with_keep(report: &serde_json::Value, keep: bool) -> BTreeSet<String> {
    report["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["keep"].as_bool().unwrap() == keep)
        .map(|s| s["snapshot"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn dry_run_lists_exactly_what_prune_removes_and_the_rest_restores() {
    let bed = Bed::initialised();
    let image = bed.raw_image("disk.raw", 4 * MIB, &[(0, MIB as usize)]);
    // Five snapshots of vm-a, each of a different version of the disk, and two of vm-b.
    let mut versions = Vec::new();
    for round in 0..5u64 {
        write_at(&image, 2 * MIB + round * 4096, &noise(round, 4096));
        let report = bed.backup("vm-a", &[&image]);
        let copy = bed.path(&format!("disk-{round}.raw"));
        std::fs::copy(&image, &copy).unwrap();
        versions.push((report["snapshot"].as_str().unwrap().to_string(), copy));
    }
    bed.backup("vm-b", &[&image]);
    bed.backup("vm-b", &[&image]);
    let chunks_before = bed.chunk_files();

    let args = ["prune", "--keep-last", "2", "--vm", "vm-a"];
    let dry = bed.json(&[&args[..], &["--dry-run"]].concat());
    assert_eq!(dry["dry_run"], true);
    let would_remove = with_keep(&dry, false);
    let would_keep = with_keep(&dry, true);
    let expected_removed: BTreeSet<String> = versions[..3].iter().map(|v| v.0.clone()).collect();
    let expected_kept: BTreeSet<String> = versions[3..].iter().map(|v| v.0.clone()).collect();
    assert_eq!(would_remove, expected_removed);
    assert_eq!(would_keep, expected_kept);
    // The dry run removed nothing.
    assert_eq!(
        snapshot_names(&bed.json(&["snapshots", "--vm", "vm-a"])).len(),
        5
    );

    let done = bed.json(&args);
    assert_eq!(done["dry_run"], false);
    assert_eq!(
        with_keep(&done, false),
        would_remove,
        "prune removed what the dry run listed"
    );
    assert_eq!(done["removed"], 3);
    assert!(
        done["note"]
            .as_str()
            .unwrap()
            .contains("chunks are not removed")
    );
    let left: BTreeSet<String> = snapshot_names(&bed.json(&["snapshots", "--vm", "vm-a"]))
        .into_iter()
        .collect();
    assert_eq!(left, expected_kept);
    // Another VM is untouched by --vm.
    assert_eq!(
        snapshot_names(&bed.json(&["snapshots", "--vm", "vm-b"])).len(),
        2
    );

    // Manifests and indexes of the removed snapshots are gone; chunks are untouched.
    let repo = bed.repo_dir();
    for (name, _) in &versions[..3] {
        let timestamp = name.split_once('@').unwrap().1;
        assert!(!repo.join("snapshots/vm-a").join(timestamp).exists());
        assert!(files_below(&repo.join("indexes/vm-a").join(timestamp)).is_empty());
    }
    for (name, _) in &versions[3..] {
        let timestamp = name.split_once('@').unwrap().1;
        assert!(!files_below(&repo.join("indexes/vm-a").join(timestamp)).is_empty());
    }
    assert_eq!(bed.chunk_files(), chunks_before);

    // What is left verifies and restores byte-identical.
    let verify = bed.json(&["verify"]);
    assert!(
        verify["failures"].as_array().unwrap().is_empty(),
        "{verify}"
    );
    for (name, copy) in &versions[3..] {
        let out = bed.path(&format!("{}.restored", name.replace([':', '@'], "_")));
        bed.ok(&["restore", name, "--to", out.to_str().unwrap()]);
        assert_same_disk(copy, &out);
    }

    // Pruning again with the same rule is a no-op.
    let again = bed.json(&args);
    assert_eq!(again["removed"], 0);
}

#[test]
fn prune_without_a_rule_is_refused_and_removes_nothing() {
    let bed = Bed::initialised();
    let image = bed.raw_image("disk.raw", MIB, &[(0, 4096)]);
    bed.backup("vm", &[&image]);
    for args in [
        &["prune"][..],
        &["prune", "--dry-run"],
        &["prune", "--keep-last", "0", "--keep-daily", "0"],
    ] {
        let error = bed.fails(args);
        assert!(error.contains("refusing to prune"), "{error}");
    }
    assert_eq!(snapshot_names(&bed.json(&["snapshots"])).len(), 1);
}

/// The exit code of a failed `haven ARGS` on the bed, and its one-line error.
fn exit_code(bed: &Bed, args: &[&str]) -> (i32, String) {
    let output = bed.haven(args).output().unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(!output.status.success(), "{args:?} succeeded");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    (output.status.code().unwrap(), stderr)
}

#[test]
fn forget_removes_one_named_snapshot_unless_it_is_protected() {
    let bed = Bed::initialised();
    let image = bed.raw_image("disk.raw", 4 * MIB, &[(0, MIB as usize)]);
    let first = bed.backup("web", &[&image])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let first_copy = bed.path("first.raw");
    std::fs::copy(&image, &first_copy).unwrap();
    write_at(&image, 2 * MIB, &noise(7, 4096));
    let second = bed.backup("web", &[&image])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let other = bed.backup("db", &[&image])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let chunks_before = bed.chunk_files();
    let all = || -> BTreeSet<String> {
        snapshot_names(&bed.json(&["snapshots"]))
            .into_iter()
            .collect()
    };

    // `latest` is never picked for a removal; a name that is not there is not found.
    let (code, error) = exit_code(&bed, &["forget", "web@latest"]);
    assert_eq!(code, 2, "{error}");
    assert!(error.contains("web@TIME"), "{error}");
    let (code, error) = exit_code(&bed, &["forget", "web@2001-01-01T00:00:00Z"]);
    assert_eq!(code, 4, "{error}");

    // A protected snapshot stays (exit code 5, locked) until unprotected.
    bed.ok(&["protect", &first]);
    let (code, error) = exit_code(&bed, &["forget", &first]);
    assert_eq!(code, 5, "{error}");
    assert!(error.contains("protected"), "{error}");

    let done = bed.json(&["forget", &second]);
    assert_eq!(done["forgotten"], second.as_str());
    let expected: BTreeSet<String> = [first.clone(), other.clone()].into();
    assert_eq!(all(), expected);
    let timestamp = second.split_once('@').unwrap().1;
    let repo = bed.repo_dir();
    assert!(files_below(&repo.join("indexes/web").join(timestamp)).is_empty());
    assert_eq!(bed.chunk_files(), chunks_before, "chunks wait for gc");
    let (code, error) = exit_code(&bed, &["forget", &second]);
    assert_eq!(code, 4, "forgotten twice: {error}");

    // The protected one still restores; once unprotected it can be forgotten.
    let out = bed.path("restored.raw");
    bed.ok(&["restore", &first, "--to", out.to_str().unwrap()]);
    assert_same_disk(&first_copy, &out);
    bed.ok(&["unprotect", &first]);
    bed.ok(&["forget", &first]);
    assert_eq!(all(), [other].into());
}
