//! The disaster-recovery drill with real processes, step by step as `docs/dr.md`
//! tells an operator to do it:
//!
//! 1. Site A (a coordinator and a worker, a `qemu-storage-daemon` VM, a folder
//!    repository) backs up VM `web` by a policy that replicates to site B's storage
//!    node with B's own keys; the replica keeps fewer snapshots than the primary
//!    (`replica_retention`), pruned at B with B's delete key, and replication never
//!    brings a pruned snapshot back (tombstones).
//! 2. Site A is destroyed: its processes killed, its repository and state deleted.
//! 3. At site B a new coordinator rebuilds its catalog from the replica
//!    (`haven catalog rebuild`), restores `web` by name through it, starts the restored
//!    disk under `qemu-system-x86_64` (TCG), and a site-B worker resumes its backups
//!    into the replica.
//! 4. Failback: the replica is copied to a rebuilt site A, whose new coordinator
//!    rebuilds its catalog and restores the VM as it was last backed up at B.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::one_worker::OneWorker;
use super::storage_keys::{key_file, succeeded};
use crate::support::{
    cluster::{Cli, init_repo, one_cluster_at_a_time},
    haven::HavenClient,
    image::{assert_same_disk, convert},
    qemu::{qemu_system, start_qemu_system},
    s3::{ACCESS_KEY, SECRET_KEY},
    storage_node::{Node, object_keys},
};

/// Site B's own keys: replication and backups write with the append key, the
/// replica's prune and GC delete with the delete key.
const SITE_B_KEYS: &str = "[[keys]]\naccess_key = \"dr-append\"\nsecret_key = \"dr-append-secret-0123\"\naccess = \"append\"\n\
     [[keys]]\naccess_key = \"dr-delete\"\nsecret_key = \"dr-delete-secret-0123\"\naccess = \"delete\"\n";

/// `cli` with site B's admin key: restores and catalog rebuilds read the replica.
fn with_site_b_reader(cli: Cli) -> Cli {
    cli.with_env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .with_env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .with_env("AWS_REGION", "us-east-1")
}

/// The snapshots in the catalog of the coordinator at `url`.
fn catalog(cli: &Cli, url: &str) -> Vec<Value> {
    serde_json::from_str(&cli.ok(&["snapshots", "--coordinator", url, "--json"])).unwrap()
}

#[test]
fn site_a_lost_site_b_rebuilds_its_catalog_restores_boots_and_backs_up_then_fails_back() {
    let _alone = one_cluster_at_a_time();
    let node = Node::start_with_keys(SITE_B_KEYS);
    node.aws_ok(&["s3", "mb", "s3://haven"]);
    let replica = format!("s3://haven/replica?endpoint={}", node.endpoint());
    let root = tempfile::tempdir().unwrap();

    // 1. Site A: backups replicated to B, the replica pruned by its own retention.
    let site_a = root.path().join("site-a");
    std::fs::create_dir_all(&site_a).unwrap();
    let primary = site_a.join("primary");
    init_repo(&primary, &[]);
    let mut bed = OneWorker::start(&site_a, &["web"], &[&replica], &[]);
    let dr_append = key_file(&site_a, "dr-append", "dr-append-secret-0123");
    let dr_delete = key_file(&site_a, "dr-delete", "dr-delete-secret-0123");
    let (cert, key) = bed.pki.issue("worker", "w0");
    bed.start_worker(
        &cert,
        &key,
        &format!(
            "[storage]\nsecondary_key_file = {dr_append:?}\nsecondary_delete_key_file = {dr_delete:?}\n"
        ),
        &[("AWS_REGION", "us-east-1")],
    );
    let policy = site_a.join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[[policy]]\nname = \"web\"\nschedule = \"0 0 1 1 *\"\nrepository = {:?}\n\
             retention = {{ keep_last = 3 }}\nreplicate_to = {replica:?}\n\
             replica_retention = {{ keep_last = 1 }}\n",
            primary.to_str().unwrap()
        ),
    )
    .unwrap();
    bed.admin.ok(&["policy", "apply", policy.to_str().unwrap()]);
    for round in 1..=3 {
        if round > 1 {
            std::thread::sleep(Duration::from_secs(1)); // distinct timestamps
        }
        bed.admin.ok(&["policy", "run", "web"]);
        let jobs = bed.wait_idle(Duration::from_secs(120), |jobs| {
            let count = |kind: &str| jobs.iter().filter(|job| job["kind"] == kind).count();
            count("prune") == 2 * round && count("replicate") == round
        });
        assert_eq!(succeeded(&jobs, "backup"), round, "{jobs:#?}");
    }
    let at_primary = HavenClient::new(primary.to_str().unwrap()).json(&["snapshots"]);
    assert_eq!(at_primary.as_array().unwrap().len(), 3, "keep_last = 3");
    let at_replica = object_keys(&node, "replica/snapshots/");
    let tombstones = object_keys(&node, "replica/pruned/");
    // The replica's prune trails its replication by one backup: 1 or 2 remain.
    assert!(
        (1..=2).contains(&at_replica.len()),
        "replica_retention keeps 1: {at_replica:?}"
    );
    assert_eq!(
        at_replica.len() + tombstones.len(),
        3,
        "every snapshot the primary keeps is at the replica or pruned there: \
         {at_replica:?} {tombstones:?}"
    );
    // Replication now finds nothing to copy: what B pruned stays pruned, and B is
    // not behind.
    let copied = HavenClient::with_node_keys().json(&[
        "replicate",
        "--from",
        primary.to_str().unwrap(),
        "--to",
        &replica,
    ]);
    assert_eq!(copied["manifests_copied"], 0, "{copied:#}");
    let status = HavenClient::with_node_keys().json(&[
        "replicate",
        "status",
        "--from",
        primary.to_str().unwrap(),
        "--to",
        &replica,
    ]);
    assert_eq!(status[0]["missing_snapshots"], 0, "{status:#}");
    assert_eq!(object_keys(&node, "replica/snapshots/"), at_replica);

    // 2. Site A is destroyed. Its disk as last backed up is what B must bring back.
    drop(bed);
    let expected = root.path().join("expected.raw");
    let disk = site_a.join("web.qcow2");
    convert(disk.to_str().unwrap(), "qcow2", &expected, "raw");
    std::fs::remove_dir_all(&site_a).unwrap();

    // 3. Site B: a coordinator whose catalog is rebuilt from the replica.
    let site_b = root.path().join("site-b");
    std::fs::create_dir_all(&site_b).unwrap();
    let dr_publish = [
        ("AWS_ACCESS_KEY_ID", "dr-append"),
        ("AWS_SECRET_ACCESS_KEY", "dr-append-secret-0123"),
        ("AWS_REGION", "us-east-1"),
    ];
    let mut bed = OneWorker::start(&site_b, &[], &[&replica], &dr_publish);
    let admin = with_site_b_reader(bed.admin.clone());
    let started = Instant::now();
    let rebuilt = admin.ok(&["catalog", "rebuild", "--repo", &replica]);
    assert!(
        rebuilt.contains(&format!("{} added", at_replica.len())),
        "{rebuilt}"
    );
    assert_eq!(catalog(&admin, &bed.url).len(), at_replica.len());
    let restored = site_b.join("web.qcow2");
    admin.ok(&[
        "restore",
        "web@latest",
        "--coordinator",
        &bed.url,
        "--format",
        "qcow2",
        "--to",
        restored.to_str().unwrap(),
    ]);
    eprintln!(
        "DR: catalog rebuilt and web restored at site B in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_same_disk(&restored, &expected);

    // B's worker (no VM there yet), then the restored disk attached to a QEMU at B,
    // which the worker finds at its next inventory and backs up again.
    let append = key_file(&site_b, "dr-append", "dr-append-secret-0123");
    let delete = key_file(&site_b, "dr-delete", "dr-delete-secret-0123");
    let (cert, key) = bed.pki.issue("worker", "w0");
    bed.start_worker(
        &cert,
        &key,
        &format!("[storage]\nappend_key_file = {append:?}\ndelete_key_file = {delete:?}\n"),
        &[("AWS_REGION", "us-east-1")],
    );
    let qmp = site_b.join("h0").join("web.qmp");
    std::fs::create_dir_all(qmp.parent().unwrap()).unwrap();
    let _vm = start_qemu_system(
        qemu_system("q35", &qmp)
            .arg("-blockdev")
            .arg(format!(
                "driver=file,filename={},node-name=file0",
                restored.display()
            ))
            .args(["-blockdev", "driver=qcow2,file=file0,node-name=disk0"])
            .args(["-device", "virtio-blk-pci,drive=disk0,id=vda"]),
        &qmp,
    );
    bed.wait_for_vm("web");
    let policy = site_b.join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[[policy]]\nname = \"web\"\nschedule = \"0 0 1 1 *\"\nrepository = {replica:?}\n\
             retention = {{ keep_last = 3 }}\n"
        ),
    )
    .unwrap();
    bed.admin.ok(&["policy", "apply", policy.to_str().unwrap()]);
    bed.admin.ok(&["policy", "run", "web"]);
    let jobs = bed.wait_idle(Duration::from_secs(120), |jobs| {
        jobs.iter().any(|job| job["kind"] == "prune")
    });
    assert_eq!(succeeded(&jobs, "backup"), 1, "{jobs:#?}");
    assert_eq!(catalog(&admin, &bed.url).len(), at_replica.len() + 1);

    // 4. Failback: the replica copied to a rebuilt site A, whose new coordinator
    // learns the snapshots and restores the VM as B last backed it up.
    let site_a = root.path().join("site-a-rebuilt");
    std::fs::create_dir_all(&site_a).unwrap();
    let rebuilt_primary = site_a.join("primary");
    HavenClient::with_node_keys().ok(&[
        "replicate",
        "--from",
        &replica,
        "--to",
        rebuilt_primary.to_str().unwrap(),
    ]);
    let rebuilt_a = OneWorker::start(&site_a, &[], &[], &[]);
    let rebuilt = rebuilt_a.admin.ok(&[
        "catalog",
        "rebuild",
        "--repo",
        rebuilt_primary.to_str().unwrap(),
    ]);
    assert!(
        rebuilt.contains(&format!("{} added", at_replica.len() + 1)),
        "{rebuilt}"
    );
    let back = site_a.join("web.qcow2");
    rebuilt_a.admin.ok(&[
        "restore",
        "web@latest",
        "--coordinator",
        &rebuilt_a.url,
        "--format",
        "qcow2",
        "--to",
        back.to_str().unwrap(),
    ]);
    assert_same_disk(&back, &expected);
    drop(rebuilt_a);
    drop(bed);
}
