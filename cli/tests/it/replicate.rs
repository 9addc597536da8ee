//! Replication between two real `haven storage-node` processes with separate data
//! directories (the secondary pulling batches from the primary, or the copier
//! relaying them): `haven replicate` is killed with SIGKILL several times mid-transfer and
//! rerun; the secondary never lists a snapshot that does not verify; once it finishes,
//! the primary node is killed and its data directory deleted, and the secondary alone,
//! with only the password, serves `snapshots`, `restore`, `files` and `serve-nbd`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{
    haven::HavenClient,
    image::{MIB, assert_same_disk, convert, ext4_image, noise, raw_image, write_at},
    process::{Guard, assert_success, wait_for_line},
    storage_node::{Node, NodeOptions},
};

/// `haven` with the nodes' credentials and the password in the environment.
fn haven(args: &[&str]) -> Command {
    node().command(args)
}

fn ok(args: &[&str]) -> String {
    node().ok(args)
}

fn json(args: &[&str]) -> serde_json::Value {
    node().json(args)
}

/// `haven` with the nodes' credentials and the password in the environment; each run
/// names its repository.
fn node() -> HavenClient {
    HavenClient::with_node_keys()
}

/// Replication runs without the password.
fn replicate_command(from: &str, to: &str, extra: &[&str]) -> Command {
    let mut command = haven(&["replicate", "--from", from, "--to", to]);
    command.args(extra).env_remove("HAVEN_PASSWORD");
    command
}

fn snapshot_names(url: &str) -> Vec<String> {
    json(&["snapshots", "--repo", url])
        .as_array()
        .unwrap()
        .iter()
        .map(|line| line["snapshot"].as_str().unwrap().to_string())
        .collect()
}

/// Every snapshot the secondary lists verifies completely.
fn assert_listed_snapshots_verify(url: &str) {
    for name in snapshot_names(url) {
        let report = json(&["verify", &name, "--repo", url]);
        assert!(
            report["failures"].as_array().unwrap().is_empty(),
            "{name} is listed at the secondary but does not verify: {report}"
        );
    }
}

fn backup(url: &str, vm: &str, image: &Path) -> String {
    let report = json(&[
        "backup",
        "image",
        image.to_str().unwrap(),
        "--vm",
        vm,
        "--repo",
        url,
    ]);
    report["snapshot"].as_str().unwrap().to_string()
}

/// Keeps a copy of an image as it was at a snapshot.
fn keep(image: &Path, copy: PathBuf) -> PathBuf {
    std::fs::copy(image, &copy).unwrap();
    copy
}

fn files_image(node: &Node) -> (PathBuf, Vec<u8>) {
    let source = node.path("tree");
    std::fs::create_dir_all(source.join("srv/data")).unwrap();
    let big = noise(77, 6 * MIB as usize);
    std::fs::write(source.join("srv/data/blob.bin"), &big).unwrap();
    std::fs::write(source.join("srv/readme.txt"), b"replicated\n").unwrap();
    let image = node.path("files.img");
    ext4_image(&source, &image, "48M");
    (image, big)
}

#[test]
fn replication_survives_kill9_and_the_secondary_alone_restores_everything() {
    let started = Instant::now();
    let mut primary = Node::start();
    // The secondary fetches batches from the primary itself.
    let secondary = Node::start_with(NodeOptions {
        pull_sources: vec![primary.endpoint()],
        ..NodeOptions::default()
    });
    primary.aws_ok(&["s3", "mb", "s3://haven"]);
    secondary.aws_ok(&["s3", "mb", "s3://haven-dr"]);
    let from = format!("s3://haven/site-a?endpoint={}", primary.endpoint());
    let to = format!("s3://haven-dr/site-b?endpoint={}", secondary.endpoint());
    ok(&["repo", "init", "--repo", &from]);

    // Round 1: two VMs, replicated in one go.
    let web = primary.path("web1.raw");
    raw_image(&web, 192 * MIB, &[(0, 120 * MIB as usize)]);
    let mut versions = vec![(
        backup(&from, "web1", &web),
        keep(&web, primary.path("web1-a")),
    )];
    let (files_image, big_file) = files_image(&primary);
    versions.push((
        backup(&from, "files", &files_image),
        keep(&files_image, primary.path("files-a")),
    ));
    let status = json(&["replicate", "status", "--from", &from, "--to", &to]);
    assert!(
        status
            .as_array()
            .unwrap()
            .iter()
            .all(|vm| vm["lag_seconds"].as_u64() > Some(0)),
        "{status}"
    );
    let output = replicate_command(&from, &to, &["--json"]).output().unwrap();
    assert_success(&output, ["replicate"]);
    let first: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(first["repository_created"], true, "{first}");
    assert_eq!(first["manifests_copied"], 2, "{first}");
    assert_eq!(first["chunk_transfer"], "pulled", "{first}");

    // Round 2: new data, replicated at a limited rate and killed three times.
    write_at(&web, 130 * MIB, &noise(5, 50 * MIB as usize));
    versions.push((
        backup(&from, "web1", &web),
        keep(&web, primary.path("web1-b")),
    ));
    let db = primary.path("db.raw");
    // Seeded apart from web1 (raw_image seeds by offset), so nothing deduplicates.
    raw_image(&db, 64 * MIB, &[(MIB, 56 * MIB as usize)]);
    versions.push((backup(&from, "db", &db), keep(&db, primary.path("db-a"))));
    let objects_before = secondary.object_files().len();
    let mut objects_seen = objects_before;
    for round in 0..3 {
        let child = replicate_command(&from, &to, &["--limit-rate", "20M", "--parallel", "8"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(primary.path("replicate.err")).unwrap())
            .spawn()
            .unwrap();
        let mut running = Guard::new(child);
        // At 20 MiB/s, three rounds copy at most ~96 of the 106 new MiB: each kill lands
        // mid-transfer.
        std::thread::sleep(Duration::from_millis(1500));
        let exited = running.0.as_mut().unwrap().try_wait().unwrap();
        assert!(
            exited.is_none(),
            "replication finished before kill {round} ({exited:?}): {}",
            std::fs::read_to_string(primary.path("replicate.err")).unwrap_or_default()
        );
        drop(running);
        // The secondary lists only snapshots that verify, and each run got further.
        assert_listed_snapshots_verify(&to);
        let objects = secondary.object_files().len();
        assert!(
            objects > objects_seen,
            "round {round}: no progress ({objects})"
        );
        objects_seen = objects;
    }
    assert_eq!(
        snapshot_names(&to).len(),
        2,
        "manifests before their chunks"
    );
    let output = replicate_command(&from, &to, &["--json", "--limit-rate", "200M"])
        .output()
        .unwrap();
    assert_success(&output, ["replicate"]);
    let last: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(last["manifests_copied"], 2, "{last}");
    assert_eq!(last["snapshots_missing"], 2, "{last}");
    let resumed = last["chunks_copied"].as_u64().unwrap();
    assert!(resumed > 0 && resumed < 200, "{last}");

    let status = json(&["replicate", "status", "--from", &from, "--to", &to]);
    for vm in status.as_array().unwrap() {
        assert_eq!(vm["lag_seconds"], 0, "{status}");
        assert_eq!(vm["missing_snapshots"], 0, "{status}");
    }
    let verify = json(&["verify", "--repo", &to]);
    assert!(
        verify["failures"].as_array().unwrap().is_empty(),
        "{verify}"
    );
    assert_eq!(verify["snapshots"].as_array().unwrap().len(), 4, "{verify}");
    eprintln!("replicated and verified after {:?}", started.elapsed());

    // Disaster: the primary node and its data are gone.
    primary.kill9();
    std::fs::remove_dir_all(primary.data()).unwrap();
    let names = snapshot_names(&to);
    assert_eq!(
        names.iter().collect::<std::collections::BTreeSet<_>>(),
        versions.iter().map(|(name, _)| name).collect()
    );
    for (name, copy) in &versions {
        let out = primary.path("restored.raw");
        let _ = std::fs::remove_file(&out);
        ok(&[
            "restore",
            name,
            "--to",
            out.to_str().unwrap(),
            "--repo",
            &to,
        ]);
        assert_same_disk(copy, &out);
    }
    let listing = json(&["files", "ls", "files@latest:/srv/data", "--repo", &to]);
    assert_eq!(
        listing["entries"][0]["path"], "/srv/data/blob.bin",
        "{listing}"
    );
    let fetched = primary.path("blob.bin");
    ok(&[
        "files",
        "get",
        "files@latest:/srv/data/blob.bin",
        "--to",
        fetched.to_str().unwrap(),
        "--repo",
        &to,
    ]);
    assert!(std::fs::read(&fetched).unwrap() == big_file, "file differs");

    let socket = primary.path("nbd.sock");
    let spec = format!("unix:{}", socket.display());
    let mut child = haven(&["serve-nbd", "web1@latest", "--listen", &spec, "--repo", &to])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let _stdout = wait_for_line(&mut child, "serving ");
    let served = Guard::new(child);
    let uri = format!("nbd+unix:///vda?socket={}", socket.display());
    let converted = primary.path("served.raw");
    convert(&uri, "raw", &converted, "raw");
    drop(served);
    assert_same_disk(&versions[2].1, &converted);
    eprintln!("disaster recovery checked after {:?}", started.elapsed());
}

#[test]
fn each_site_uses_its_own_credentials() {
    replicate_with_a_key_per_site(false);
}

#[test]
fn a_pulling_secondary_uses_its_own_credentials_too() {
    replicate_with_a_key_per_site(true);
}

/// Replicates between two nodes that share no key: the copier signs the primary's
/// reads with the primary's key and talks to the secondary with the secondary's,
/// whether it relays the batches or the secondary pulls them (`pull`).
fn replicate_with_a_key_per_site(pull: bool) {
    let site_a = "[[keys]]\naccess_key = \"site-a\"\nsecret_key = \"site-a-secret-0123456789\"\n";
    let site_b = "[[keys]]\naccess_key = \"site-b\"\nsecret_key = \"site-b-secret-0123456789\"\n";
    let primary = Node::start_with_keys(site_a);
    let secondary = Node::start_with(NodeOptions {
        extra_keys: site_b.to_owned(),
        pull_sources: if pull {
            vec![primary.endpoint()]
        } else {
            Vec::new()
        },
        ..NodeOptions::default()
    });
    primary.aws_ok(&["s3", "mb", "s3://haven"]);
    secondary.aws_ok(&["s3", "mb", "s3://haven-dr"]);
    let from = format!("s3://haven/r?endpoint={}", primary.endpoint());
    let to = format!("s3://haven-dr/r?endpoint={}", secondary.endpoint());
    // AWS_* holds a key only the primary knows; the secondary's comes from
    // HAVEN_SECONDARY_AWS_*.
    let with_site_a = |command: &mut Command| {
        command
            .env("AWS_ACCESS_KEY_ID", "site-a")
            .env("AWS_SECRET_ACCESS_KEY", "site-a-secret-0123456789");
    };
    let mut init = haven(&["repo", "init", "--repo", &from]);
    with_site_a(&mut init);
    assert_success(&init.output().unwrap(), ["repo init"]);
    let image = primary.path("small.raw");
    raw_image(&image, 4 * MIB, &[(0, 2 * MIB as usize)]);
    let image_arg = image.to_str().unwrap();
    let mut backup = haven(&[
        "backup", "image", image_arg, "--vm", "small", "--repo", &from,
    ]);
    with_site_a(&mut backup);
    assert_success(&backup.output().unwrap(), ["backup"]);

    let mut wrong = replicate_command(&from, &to, &[]);
    with_site_a(&mut wrong);
    wrong
        .env("HAVEN_SECONDARY_AWS_ACCESS_KEY_ID", "site-b")
        .env("HAVEN_SECONDARY_AWS_SECRET_ACCESS_KEY", "not-the-secret");
    let output = wrong.output().unwrap();
    assert!(
        !output.status.success(),
        "a wrong secondary key was accepted"
    );

    let mut right = replicate_command(&from, &to, &["--json"]);
    with_site_a(&mut right);
    right
        .env("HAVEN_SECONDARY_AWS_ACCESS_KEY_ID", "site-b")
        .env(
            "HAVEN_SECONDARY_AWS_SECRET_ACCESS_KEY",
            "site-b-secret-0123456789",
        );
    let output = right.output().unwrap();
    assert_success(&output, ["replicate with per-site keys"]);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["manifests_copied"], 1, "{report}");
    let transfer = if pull { "pulled" } else { "relayed" };
    assert_eq!(report["chunk_transfer"], transfer, "{report}");

    // The secondary alone, with its own key and the password.
    let mut restore = haven(&["restore", "small@latest", "--repo", &to, "--to"]);
    let out = primary.path("small.restored");
    restore
        .arg(&out)
        .env("AWS_ACCESS_KEY_ID", "site-b")
        .env("AWS_SECRET_ACCESS_KEY", "site-b-secret-0123456789");
    assert_success(&restore.output().unwrap(), ["restore from site b"]);
    assert_same_disk(&image, &out);
}
