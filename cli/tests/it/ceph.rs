//! Haven on Ceph RGW (Debian's radosgw 16.2 on a one-host cluster), an S3
//! implementation other than its own storage node (issue 22): RGW honours
//! `If-None-Match: *`, so `repo init` accepts it, and a whole round runs through the
//! real `haven` binary — backups, verify, byte-identical restores, forget and GC, and
//! replication to a second bucket of the same gateway, verified and restored from.

use std::path::Path;
use std::time::Instant;

use haven_testkit::ceph::{self, Ceph};
use haven_testkit::s3_account::S3Account;

use crate::support::{
    haven::HavenClient,
    image::{MIB, noise, raw_image, write_at},
    process::assert_success,
    s3::S3Keys,
};

fn keys() -> S3Keys {
    S3Keys::new(ceph::ACCESS_KEY, ceph::SECRET_KEY)
}

/// A verify report without failures, over `snapshots` snapshots.
fn assert_verifies(client: &HavenClient, snapshots: usize) {
    let report = client.json(&["verify"]);
    assert!(
        report["failures"].as_array().unwrap().is_empty(),
        "{report}"
    );
    assert_eq!(
        report["snapshots"].as_array().unwrap().len(),
        snapshots,
        "{report}"
    );
}

fn restore_same(client: &HavenClient, snapshot: &str, expected: &Path, dir: &Path) {
    let out = dir.join("restored.raw");
    let _ = std::fs::remove_file(&out);
    client.restore_same(snapshot, &out, expected);
}

#[test]
fn backup_verify_restore_gc_and_replicate_on_ceph_rgw() {
    let ceph = Ceph::start().unwrap_or_else(|error| panic!("start ceph: {error}"));
    eprintln!("ceph cluster and RGW started in {:?}", ceph.started_in());
    let round = Instant::now();
    for bucket in ["haven", "haven-dr"] {
        ceph.create_bucket(bucket)
            .unwrap_or_else(|error| panic!("create bucket {bucket}: {error}"));
    }
    let from = ceph.repository_url("haven", "site-a");
    let to = ceph.repository_url("haven-dr", "site-b");
    let primary = HavenClient::on_node_as(from.as_str(), keys());
    let secondary = HavenClient::on_node_as(to.as_str(), keys());
    let dir = tempfile::tempdir().unwrap();

    // Not refused: a second create-only write of the key slot finds the first.
    primary.ok(&["repo", "init"]);

    // Two snapshots of one disk; the second rewrites a quarter of the data.
    let image = dir.path().join("disk.raw");
    raw_image(
        &image,
        32 * MIB,
        &[(0, 8 * MIB as usize), (20 * MIB, 8 * MIB as usize)],
    );
    let first_image = dir.path().join("disk-1.raw");
    std::fs::copy(&image, &first_image).unwrap();
    // RGW answers the storage node's extension queries `501 NotImplemented`: the
    // backup says once that it falls back to plain S3, and warns of nothing.
    let output = primary
        .command(&[
            "backup",
            "image",
            image.to_str().unwrap(),
            "--vm",
            "vm",
            "--json",
        ])
        .env("HAVEN_LOG", "haven_repo=info")
        .output()
        .unwrap();
    assert_success(&output, "first backup");
    let logs = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        logs.matches("server has no batch existence query").count(),
        1,
        "{logs}"
    );
    assert!(!logs.contains("WARN"), "{logs}");
    let first: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let first = first["snapshot"].as_str().unwrap().to_owned();
    write_at(&image, 2 * MIB, &noise(99, 4 * MIB as usize));
    let second = primary.backup("vm", &[&image]);
    let second = second["snapshot"].as_str().unwrap().to_owned();
    assert_ne!(first, second);

    assert_verifies(&primary, 2);
    restore_same(&primary, &first, &first_image, dir.path());
    restore_same(&primary, &second, &image, dir.path());

    // The first snapshot goes; collection frees the chunks only it used.
    primary.ok(&["forget", &first]);
    let gc = primary.json(&["gc", "--margin", "0s"]);
    let removed = gc["chunks_removed"].as_u64().unwrap();
    assert!(removed > 0, "{gc}");
    assert_verifies(&primary, 1);
    restore_same(&primary, &second, &image, dir.path());

    // Replication to another bucket of the same gateway: plain S3 at both ends.
    let output = HavenClient::with_keys(keys())
        .command(&["replicate", "--from", &from, "--to", &to, "--json"])
        .env_remove("HAVEN_PASSWORD")
        .output()
        .unwrap();
    assert_success(&output, "replicate");
    let replicated: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(replicated["repository_created"], true, "{replicated}");
    assert_eq!(replicated["manifests_copied"], 1, "{replicated}");
    assert_eq!(replicated["chunk_transfer"], "objects", "{replicated}");
    assert_verifies(&secondary, 1);
    let listed = secondary.json(&["snapshots"]);
    assert_eq!(listed[0]["snapshot"], second.as_str(), "{listed}");
    restore_same(&secondary, &second, &image, dir.path());
    eprintln!(
        "round on RGW (init, 2 backups, verify, 3 restores, forget, gc, replicate, verify, restore) in {:?}",
        round.elapsed()
    );
}
