//! Protected and locked snapshots on a real `haven storage-node` with Object Lock:
//! they survive prune, GC and a direct S3 delete with valid credentials; unprotect is
//! refused while the lock holds; GC skips a locked unreferenced chunk instead of
//! failing. Record-only protection (no lock) on `file://` is covered too.

use std::time::Duration;

use crate::support::{
    bed::Bed,
    haven::HavenClient,
    image::{MIB, assert_same_disk, noise, raw_image, write_at},
    storage_node::{Node, fails_with},
};

/// The snapshot name in a backup report.
fn snapshot_of(report: &serde_json::Value) -> String {
    report["snapshot"]
        .as_str()
        .expect("snapshot name")
        .to_string()
}

fn kept(report: &serde_json::Value) -> Vec<(String, bool, String)> {
    report["snapshots"]
        .as_array()
        .expect("snapshots")
        .iter()
        .map(|s| {
            (
                s["snapshot"].as_str().unwrap().to_string(),
                s["keep"].as_bool().unwrap(),
                s["reasons"].to_string(),
            )
        })
        .collect()
}

#[test]
fn locked_snapshots_survive_prune_gc_and_direct_deletes() {
    let node = Node::start();
    node.aws_ok(&[
        "s3api",
        "create-bucket",
        "--bucket",
        "locked",
        "--object-lock-enabled-for-bucket",
    ]);
    let client = HavenClient::on_node(format!("s3://locked/repo?endpoint={}", node.endpoint()));
    client.ok(&["repo", "init", "--chunk-size", "1048576"]);
    let image = node.path("disk.raw");
    raw_image(&image, 4 * MIB, &[(0, 2 * MIB as usize)]);
    let first = snapshot_of(&client.backup("vm", &[&image]));
    let first_copy = node.path("first.raw");
    std::fs::copy(&image, &first_copy).unwrap();
    write_at(&image, 0, &noise(9, MIB as usize));
    let second = snapshot_of(&client.backup("vm", &[&image]));

    // Lock the first snapshot for a day (COMPLIANCE).
    let report = client.json(&["protect", &first, "--days", "1", "--lock", "compliance"]);
    // Two chunks, one index, the manifest and the record.
    assert_eq!(report["objects_locked"], 5, "{report}");
    let timestamp = first.split_once('@').unwrap().1;
    let manifest_key = format!("repo/snapshots/vm/{timestamp}");
    let index_key = format!("repo/indexes/vm/{timestamp}/vda");
    let head = node.aws_ok(&[
        "s3api",
        "head-object",
        "--bucket",
        "locked",
        "--key",
        &manifest_key,
    ]);
    assert!(head.contains("COMPLIANCE"), "{head}");

    // Prune keeps it, with the reason.
    let pruned = client.json(&["prune", "--keep-last", "1"]);
    let decisions = kept(&pruned);
    assert!(
        decisions
            .iter()
            .any(|(name, keep, reasons)| name == &first && *keep && reasons.contains("protected")),
        "{pruned}"
    );
    assert!(
        decisions
            .iter()
            .any(|(name, keep, _)| name == &second && *keep)
    );

    // Unprotect is refused while the lock holds.
    let refused = client.run(&["unprotect", &first]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("locked in storage until"), "{stderr}");

    // Deleting with the storage credentials fails, even asking to bypass governance
    // with a key that may.
    for key in [&manifest_key, &index_key] {
        fails_with(
            node.aws(&["s3api", "delete-object", "--bucket", "locked", "--key", key]),
            "AccessDenied",
        );
        fails_with(
            node.aws(&[
                "s3api",
                "delete-object",
                "--bucket",
                "locked",
                "--key",
                key,
                "--bypass-governance-retention",
            ]),
            "AccessDenied",
        );
    }
    let chunks = node.aws_ok(&[
        "s3api",
        "list-objects-v2",
        "--bucket",
        "locked",
        "--prefix",
        "repo/chunks/",
        "--query",
        "Contents[].Key",
        "--output",
        "text",
    ]);
    let chunk_keys: Vec<&str> = chunks.split_whitespace().collect();
    assert_eq!(chunk_keys.len(), 3, "{chunks}");
    let locked: Vec<&str> = chunk_keys
        .iter()
        .copied()
        .filter(|key| {
            node.aws(&[
                "s3api",
                "get-object-retention",
                "--bucket",
                "locked",
                "--key",
                key,
            ])
            .status
            .success()
        })
        .collect();
    assert_eq!(
        locked.len(),
        2,
        "the first snapshot's two chunks are locked"
    );
    for key in locked {
        fails_with(
            node.aws(&["s3api", "delete-object", "--bucket", "locked", "--key", key]),
            "AccessDenied",
        );
    }

    // A locked chunk nothing references: GC skips it and succeeds.
    let orphan = format!("repo/chunks/ab/ab{}", "0".repeat(62));
    let body = node.path("orphan.bin");
    std::fs::write(&body, b"not a chunk anyone needs").unwrap();
    node.aws_ok(&[
        "s3api",
        "put-object",
        "--bucket",
        "locked",
        "--key",
        &orphan,
        "--body",
        body.to_str().unwrap(),
        "--object-lock-mode",
        "COMPLIANCE",
        "--object-lock-retain-until-date",
        "2099-01-01T00:00:00Z",
    ]);
    std::thread::sleep(Duration::from_millis(1100));
    let gc = client.json(&["gc", "--margin", "0s"]);
    assert_eq!(gc["chunks_locked"], 1, "{gc}");
    assert_eq!(gc["chunks_removed"], 0, "{gc}");
    assert_eq!(gc["chunks_missing"], 0, "{gc}");

    // The locked snapshot still verifies and restores.
    let verify = client.json(&["verify"]);
    assert!(
        verify["failures"].as_array().unwrap().is_empty(),
        "{verify}"
    );
    let out = node.path("first.restored");
    client.ok(&["restore", &first, "--to", out.to_str().unwrap()]);
    assert_same_disk(&first_copy, &out);
}

#[test]
fn protection_records_keep_snapshots_from_prune_until_unprotected() {
    let bed = Bed::new();
    bed.init();
    let image = bed.path("disk.raw");
    raw_image(&image, 2 * MIB, &[(0, MIB as usize)]);
    let mut names = Vec::new();
    for round in 0..3u64 {
        write_at(&image, 0, &noise(round, 4096));
        names.push(
            bed.backup("vm", &[&image])["snapshot"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    bed.ok(&["protect", &names[0]]);
    let expired = bed.ok(&["protect", &names[1], "--until", "2099-01-01T00:00:00Z"]);
    assert!(expired.contains("until 2099-01-01T00:00:00Z"), "{expired}");
    // A lock needs an end date and an s3:// repository.
    let error = bed.fails(&["protect", &names[1], "--lock", "governance"]);
    assert!(error.contains("--lock needs --until or --days"), "{error}");
    let error = bed.fails(&["protect", &names[1], "--days", "1", "--lock", "governance"]);
    assert!(error.contains("object lock"), "{error}");

    let dry = bed.json(&["prune", "--keep-last", "1", "--dry-run"]);
    let removed: Vec<String> = kept(&dry)
        .into_iter()
        .filter(|(_, keep, _)| !keep)
        .map(|(name, _, _)| name)
        .collect();
    assert!(removed.is_empty(), "{dry}");

    bed.ok(&["unprotect", &names[0]]);
    let again = bed.ok(&["unprotect", &names[0]]);
    assert!(again.contains("not protected"), "{again}");
    let done = bed.json(&["prune", "--keep-last", "1"]);
    let removed: Vec<String> = kept(&done)
        .into_iter()
        .filter(|(_, keep, _)| !keep)
        .map(|(name, _, _)| name)
        .collect();
    assert_eq!(removed, vec![names[0].clone()]);
}
