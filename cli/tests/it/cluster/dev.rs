//! The single-machine default, `haven dev` (coordinator on the embedded store plus a
//! worker), with a real `qemu-storage-daemon` VM: a policy's backups are followed by
//! prune and replication jobs, its GC schedule starts a GC job with the coordinator's
//! pins, the replica restores byte-identical, and malformed gRPC gets clean errors.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    cluster::{Cli, init_repo, one_cluster_at_a_time, start_vm},
    haven::{PASSWORD, haven},
    process::{Guard, free_port, spawn_logged},
    s3::{S3Keys, with_keys},
};

/// A `haven dev` process (coordinator, worker and storage node) on free loopback
/// ports, killed on drop.
pub(super) struct Dev {
    pub(super) url: String,
    pub(super) cli: Cli,
    /// The coordinator's gRPC port.
    pub(super) port: u16,
    /// The coordinator's `/metrics` port.
    pub(super) http: u16,
    /// The storage node's port.
    pub(super) storage_port: u16,
    /// Where `haven dev` makes its CA and certificates.
    pub(super) pki: std::path::PathBuf,
    _process: Guard,
}

impl Dev {
    /// Starts `haven dev` with its state in `dir`, the VMs of `vms` and a storage node
    /// on `dir/storage`, plus `extra` arguments; returns once it lists a VM.
    pub(super) fn start(dir: &Path, vms: &Path, extra: &[&str]) -> Self {
        let storage_port = free_port();
        let port = free_port();
        let http = free_port();
        let url = format!("https://127.0.0.1:{port}");
        // `haven dev` makes its CA and certificates here at start.
        let pki = dir.join("state").join("pki");
        let dev = Dev {
            cli: Cli::new(url.clone())
                .with_env("HAVEN_CA_FILE", pki.join("ca.pem").to_str().unwrap())
                .with_env("HAVEN_CERT_FILE", pki.join("admin.pem").to_str().unwrap())
                .with_env(
                    "HAVEN_KEY_FILE",
                    pki.join("admin-key.pem").to_str().unwrap(),
                )
                .with_env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
                .with_env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
                .with_env("AWS_REGION", "us-east-1"),
            url,
            port,
            http,
            storage_port,
            pki,
            _process: spawn_logged(
                with_s3_keys(
                    haven(&["dev", "--state-dir"])
                        .arg(dir.join("state"))
                        .arg("--qmp-dir")
                        .arg(vms)
                        .args(["--listen", &format!("127.0.0.1:{port}")])
                        .args(["--http-listen", &format!("127.0.0.1:{http}")])
                        .arg("--storage-dir")
                        .arg(dir.join("storage"))
                        .args(["--storage-listen", &format!("127.0.0.1:{storage_port}")])
                        .args(extra),
                ),
                &dir.join("dev.log"),
            ),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !String::from_utf8_lossy(&dev.cli.run(&["vm", "list"]).stdout).contains("web") {
            assert!(Instant::now() < deadline, "haven dev did not come up");
            std::thread::sleep(Duration::from_millis(200));
        }
        dev
    }

    /// Waits until every job is finished and `count` jobs of `kind` succeeded.
    pub(super) fn wait_for(&self, kind: &str, count: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let jobs = self.cli.jobs();
            let done: Vec<Value> = jobs
                .iter()
                .filter(|j| j["kind"] == kind && j["state"] == "succeeded")
                .cloned()
                .collect();
            let failed: Vec<&Value> = jobs.iter().filter(|j| j["state"] == "failed").collect();
            assert!(failed.is_empty(), "failed jobs: {failed:#?}");
            let active = jobs
                .iter()
                .any(|j| j["state"] != "succeeded" && j["state"] != "failed");
            if done.len() >= count && !active {
                return done;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {count} {kind} jobs: {jobs:#?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// Keys of the storage node `haven dev` runs in-process.
const ACCESS_KEY: &str = "dev-access";
const SECRET_KEY: &str = "dev-secret-key";

/// The password and the storage node's admin key, for the `haven dev` process, and
/// no `AWS_*` key: its jobs can reach the node only with the least-privilege keys
/// `haven dev` makes (the primary repository is a folder, so the coordinator, which
/// publishes manifests there, needs none).
fn with_s3_keys(command: &mut Command) -> &mut Command {
    with_keys(command, &S3Keys::new(ACCESS_KEY, SECRET_KEY))
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("HAVEN_PASSWORD", PASSWORD)
        .env("HAVEN_STORAGE_ACCESS_KEY", ACCESS_KEY)
        .env("HAVEN_STORAGE_SECRET_KEY", SECRET_KEY)
}

/// POSTs a gRPC-typed HTTP/2 request to `METHOD` on the coordinator over TLS as
/// `identity` (a certificate of `haven dev`'s CA: `admin` or `dev-worker`); returns
/// the response headers, lower-cased.
fn grpc_post(port: u16, pki: &Path, identity: &str, method: &str, extra: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-D", "-", "--http2"])
        .arg("--cacert")
        .arg(pki.join("ca.pem"))
        .arg("--cert")
        .arg(pki.join(format!("{identity}.pem")))
        .arg("--key")
        .arg(pki.join(format!("{identity}-key.pem")))
        .args(["-X", "POST", "-H", "content-type: application/grpc"])
        .args(extra)
        .arg(format!("https://127.0.0.1:{port}/{method}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_lowercase()
}

/// A 32 MiB qcow2 image with 3 MiB and 64 KiB of data.
pub(super) fn make_image(path: &Path) {
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg("32M")
        .status()
        .unwrap();
    assert!(status.success());
    let status = Command::new("qemu-io")
        .args([
            "-f",
            "qcow2",
            "-c",
            "write -P 0x5a 1M 3M",
            "-c",
            "write -P 0x11 20M 64k",
        ])
        .arg(path)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn dev_runs_policies_with_prune_replication_and_gc() {
    let _alone = one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let vms = dir.path().join("vms");
    std::fs::create_dir_all(&vms).unwrap();
    let image = dir.path().join("web.qcow2");
    make_image(&image);
    let qmp = vms.join("web.qmp");
    let _qsd = start_vm(&qmp, &image, &dir.path().join("web.log"));

    let primary = dir.path().join("primary");
    init_repo(&primary, &[]);
    let dev = Dev::start(dir.path(), &vms, &[]);
    let (port, pki) = (dev.port, dev.pki.clone());
    // The replica lives on the storage node `haven dev` runs in-process.
    let replica = format!(
        "s3://haven/replica?endpoint=http://127.0.0.1:{}",
        dev.storage_port
    );

    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[[policy]]\nname = \"web\"\nschedule = \"0 0 1 1 *\"\nrepository = {:?}\n\
             retention = {{ keep_last = 1 }}\nreplicate_to = {:?}\n\
             gc_schedule = \"* * * * *\"\ngc_margin_seconds = 0\n",
            primary.to_str().unwrap(),
            replica
        ),
    )
    .unwrap();
    dev.cli.ok(&["policy", "apply", policy.to_str().unwrap()]);

    // Two rounds: each backup is followed by a prune (keep 1) and a replication.
    dev.cli.ok(&["policy", "run", "web"]);
    dev.wait_for("backup", 1, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(1)); // distinct snapshot timestamps
    dev.cli.ok(&["policy", "run", "web"]);
    dev.wait_for("backup", 2, Duration::from_secs(60));
    let prunes = dev.wait_for("prune", 2, Duration::from_secs(60));
    assert!(
        prunes
            .iter()
            .any(|j| j["summary"].as_str().unwrap().contains("removed 1")),
        "{prunes:#?}"
    );
    dev.wait_for("replicate", 1, Duration::from_secs(60));
    let snapshots: Vec<Value> = serde_json::from_str(&dev.cli.ok(&[
        "snapshots",
        "--repo",
        primary.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    assert_eq!(snapshots.len(), 1, "retention keeps 1: {snapshots:#?}");

    // The GC schedule fires within a minute; the collection runs with the pins.
    let gcs = dev.wait_for("gc", 1, Duration::from_secs(90));
    assert!(
        gcs[0]["summary"]
            .as_str()
            .unwrap()
            .starts_with("gc: removed"),
        "{gcs:#?}"
    );
    dev.cli.ok(&["verify", "--repo", primary.to_str().unwrap()]);

    // The replica, with only the password, restores the newest snapshot exactly.
    let restored = dir.path().join("restored.raw");
    dev.cli.ok(&[
        "restore",
        "web@latest",
        "--repo",
        &replica,
        "--to",
        restored.to_str().unwrap(),
    ]);
    let compare = Command::new("qemu-img")
        .args(["compare", "-U", "-f", "raw", "-F", "qcow2"])
        .arg(&restored)
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        compare.status.success(),
        "{}",
        String::from_utf8_lossy(&compare.stdout)
    );

    // Restore through the coordinator: the catalog names the repository.
    let through = dir.path().join("through-coordinator.raw");
    dev.cli.ok(&[
        "restore",
        "web@latest",
        "--coordinator",
        &dev.url,
        "--to",
        through.to_str().unwrap(),
    ]);
    assert_eq!(
        std::fs::read(&through).unwrap(),
        std::fs::read(&restored).unwrap()
    );
    // Replication wrote the replica with the append key `haven dev` made, which can
    // neither delete nor overwrite what it wrote.
    let append =
        std::fs::read_to_string(dir.path().join("state/storage-keys/append.toml")).unwrap();
    let secret = append
        .lines()
        .find_map(|line| line.strip_prefix("secret_access_key = "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let manifest = Command::new("aws")
        .args(["s3api", "list-objects-v2", "--bucket", "haven", "--prefix"])
        .arg("replica/snapshots/")
        .args(["--query", "Contents[0].Key", "--output", "text"])
        .args([
            "--endpoint-url",
            &format!("http://127.0.0.1:{}", dev.storage_port),
        ])
        .env("AWS_ACCESS_KEY_ID", "dev-append")
        .env("AWS_SECRET_ACCESS_KEY", &secret)
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    let manifest = String::from_utf8_lossy(&manifest.stdout).trim().to_owned();
    assert!(manifest.starts_with("replica/snapshots/web/"), "{manifest}");
    let delete = Command::new("aws")
        .args([
            "s3api",
            "delete-object",
            "--bucket",
            "haven",
            "--key",
            &manifest,
        ])
        .args([
            "--endpoint-url",
            &format!("http://127.0.0.1:{}", dev.storage_port),
        ])
        .env("AWS_ACCESS_KEY_ID", "dev-append")
        .env("AWS_SECRET_ACCESS_KEY", &secret)
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&delete.stderr).contains("AccessDenied"),
        "{delete:?}"
    );

    let catalog = dev.cli.ok(&["snapshots", "--coordinator", &dev.url]);
    assert_eq!(
        catalog.lines().filter(|l| l.starts_with("web@")).count(),
        1,
        "the pruned snapshot left the catalog: {catalog}"
    );

    // Malformed input: garbage bytes on the gRPC port, an unknown method, an empty
    // worker identity. Clear errors, and the coordinator keeps serving.
    let mut garbage = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let _ = garbage.write_all(b"\x00\x01GET / HTTP/9.9\r\n\r\n\xff\xfe garbage");
    drop(garbage);
    let headers = grpc_post(
        port,
        &pki,
        "admin",
        "haven.v1.AdminService/NoSuchMethod",
        &[],
    );
    assert!(
        headers.contains("grpc-status: 12"),
        "unknown method: {headers}"
    );
    // Not a gRPC frame (curl sends the backslashes literally): a bad compression flag.
    let headers = grpc_post(
        port,
        &pki,
        "dev-worker",
        "haven.v1.WorkerService/Heartbeat",
        &["--data-binary", "\\x00\\x00\\x00\\x00\\x09garbage!!"],
    );
    assert!(
        headers.contains("grpc-status: 3") || headers.contains("grpc-status: 13"),
        "malformed message: {headers}"
    );
    dev.cli.ok(&["vm", "list"]);
}
