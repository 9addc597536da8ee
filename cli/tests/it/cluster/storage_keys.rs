//! Least-privilege storage keys in the cluster: a real `haven storage-node` with an
//! `append` key and a `delete` key, and a worker whose `worker.toml` names them in
//! `[storage]` (and has no other key: no `AWS_*` in its environment); the coordinator,
//! which publishes each backup's manifest, holds the append key only. Backups run by
//! the coordinator succeed with the append key; the prune jobs that follow them and a
//! GC job succeed with the delete key and really delete. Then the worker's append key
//! file names a read-only key and a backup is refused naming that key: backups take
//! the append key file, never the delete key the worker also holds.

use std::time::Duration;

use serde_json::Value;

use super::one_worker::OneWorker;
use crate::support::{
    haven::HavenClient,
    s3::S3Keys,
    storage_node::{Node, fails_with, object_keys},
};

const KEYS: &str = "[[keys]]\naccess_key = \"backup\"\nsecret_key = \"backup-secret-0123456789\"\naccess = \"append\"\n\
     [[keys]]\naccess_key = \"pruner\"\nsecret_key = \"pruner-secret-0123456789\"\naccess = \"delete\"\n\
     [[keys]]\naccess_key = \"reader\"\nsecret_key = \"reader-secret-0123456789\"\naccess = \"read\"\n";

/// A worker's key file for `access`/`secret` in `dir`.
pub(super) fn key_file(dir: &std::path::Path, access: &str, secret: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{access}.toml"));
    std::fs::write(
        &path,
        format!("access_key_id = {access:?}\nsecret_access_key = {secret:?}\n"),
    )
    .unwrap();
    path
}

/// The `[storage]` table naming the append and delete key files.
fn storage_table(append: &std::path::Path, delete: &std::path::Path) -> String {
    format!("[storage]\nappend_key_file = {append:?}\ndelete_key_file = {delete:?}\n")
}

/// The job of `kind` among `jobs`, which must all have succeeded; how many there are.
pub(super) fn succeeded(jobs: &[Value], kind: &str) -> usize {
    for job in jobs {
        assert_eq!(job["state"], "succeeded", "{job:#}");
    }
    jobs.iter().filter(|job| job["kind"] == kind).count()
}

#[test]
fn cluster_jobs_use_the_append_key_for_backups_and_the_delete_key_for_prune_and_gc() {
    let _alone = crate::support::cluster::one_cluster_at_a_time();
    let node = Node::start_with_keys(KEYS);
    node.aws_ok(&["s3", "mb", "s3://haven"]);
    let url = format!("s3://haven/r?endpoint={}", node.endpoint());
    HavenClient::on_node_as(&url, S3Keys::new("backup", "backup-secret-0123456789"))
        .ok(&["repo", "init"]);

    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    // The coordinator publishes each backup's manifest, create-only: the append key.
    let mut bed = OneWorker::start(
        dir,
        &["vm0"],
        &[&url],
        &[
            ("AWS_ACCESS_KEY_ID", "backup"),
            ("AWS_SECRET_ACCESS_KEY", "backup-secret-0123456789"),
            ("AWS_REGION", "us-east-1"),
        ],
    );
    let append = key_file(dir, "backup", "backup-secret-0123456789");
    let delete = key_file(dir, "pruner", "pruner-secret-0123456789");
    let (cert, key) = bed.pki.issue("worker", "w0");
    let environment = [("AWS_REGION", "us-east-1")];
    bed.start_worker(&cert, &key, &storage_table(&append, &delete), &environment);

    // Two policy rounds: each backup is followed by a prune keeping one snapshot.
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[[policy]]\nname = \"p\"\nschedule = \"0 0 1 1 *\"\nrepository = {url:?}\n\
             retention = {{ keep_last = 1 }}\n"
        ),
    )
    .unwrap();
    bed.admin.ok(&["policy", "apply", policy.to_str().unwrap()]);
    for round in 1..=2 {
        bed.admin.ok(&["policy", "run", "p"]);
        let jobs = bed.wait_idle(Duration::from_secs(120), |jobs| {
            jobs.iter().filter(|job| job["kind"] == "prune").count() == round
        });
        assert_eq!(succeeded(&jobs, "backup"), round, "{jobs:#?}");
        assert_eq!(succeeded(&jobs, "prune"), round, "{jobs:#?}");
    }
    // The second prune deleted the first snapshot's manifest.
    assert_eq!(object_keys(&node, "r/snapshots/").len(), 1);
    assert!(!object_keys(&node, "r/locks/").is_empty());

    // GC, run by the coordinator on the worker, deletes the released leases.
    let gc = bed
        .admin
        .ok(&["job", "gc", "--repo", &url, "--margin-seconds", "0"])
        .trim()
        .to_owned();
    let job = bed.wait_ended(&gc, Duration::from_secs(120));
    assert_eq!(job["state"], "succeeded", "{job:#}");
    assert_eq!(object_keys(&node, "r/locks/"), Vec::<String>::new());

    // The append key cannot delete what the backups wrote: those deletions were the
    // delete key's, the only other key the worker has.
    let manifest = object_keys(&node, "r/snapshots/").remove(0);
    fails_with(
        node.aws_as(
            "backup",
            "backup-secret-0123456789",
            &[
                "s3api",
                "delete-object",
                "--bucket",
                "haven",
                "--key",
                &manifest,
            ],
        ),
        "AccessDenied",
    );

    // With a read-only key in the append key file, a backup is refused by the node
    // naming that key, although the worker holds the delete key too.
    let reader = key_file(dir, "reader", "reader-secret-0123456789");
    bed.start_worker(&cert, &key, &storage_table(&reader, &delete), &environment);
    let refused = bed
        .admin
        .ok(&["job", "run", "vm0", "--repo", &url])
        .trim()
        .to_owned();
    let job = bed.wait_ended(&refused, Duration::from_secs(180));
    assert_eq!(job["state"], "failed", "{job:#}");
    let error = job["error"].as_str().unwrap();
    assert!(error.contains("access key reader has access"), "{error}");
    assert_eq!(object_keys(&node, "r/snapshots/").len(), 1);
}
