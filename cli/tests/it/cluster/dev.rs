//! The single-machine default, `haven dev` (coordinator on the embedded store plus a
//! worker), with a real `qemu-storage-daemon` VM: a policy's backups are followed by
//! prune and replication jobs, its GC schedule starts a GC job with the coordinator's
//! pins, the replica restores byte-identical, and malformed gRPC gets clean errors.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{
    cluster::{Cli, WebVm, init_repo, one_cluster_at_a_time},
    haven::{HAVEN, PASSWORD, haven},
    image::assert_raw_same_as_qcow2,
    process::{Guard, free_port, run, spawn_logged},
    s3::{S3Keys, with_keys},
};

/// How a test starts `haven dev`.
pub(super) struct Setup<'a> {
    /// Whether and with which admin key it runs a storage node.
    pub(super) storage: Storage,
    /// Give it the test password; otherwise it makes one in `STATE/password`.
    pub(super) password: bool,
    /// More arguments.
    pub(super) args: &'a [&'a str],
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Self {
            storage: Storage::TestKey,
            password: true,
            args: &[],
        }
    }
}

/// The storage node of a [`Setup`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Storage {
    /// None.
    None,
    /// On `DIR/storage`, with the admin key [`ACCESS_KEY`] given.
    TestKey,
    /// On `DIR/storage`, with the admin key `haven dev` makes.
    MadeKey,
}

/// A `haven dev` process (coordinator, worker and, as set up, a storage node) on free
/// loopback ports with its state in `DIR/state`, killed on drop.
pub(super) struct Dev {
    pub(super) url: String,
    /// The CLI as its admin (and with the storage node's admin key, if the test gave it).
    pub(super) cli: Cli,
    /// The coordinator's gRPC port.
    pub(super) port: u16,
    /// The coordinator's `/metrics` port.
    pub(super) http: u16,
    /// The storage node's port.
    pub(super) storage_port: u16,
    /// Where `haven dev` makes its CA and certificates.
    pub(super) pki: PathBuf,
    /// Its state folder.
    pub(super) state: PathBuf,
    /// Its standard output and error.
    pub(super) log: PathBuf,
    _process: Guard,
}

impl Dev {
    /// The URL of a repository `replica` on the storage node `haven dev` runs.
    pub(super) fn replica_url(&self) -> String {
        format!(
            "s3://haven/replica?endpoint=http://127.0.0.1:{}",
            self.storage_port
        )
    }

    /// Starts `haven dev` with a storage node and the test password, plus `extra`
    /// arguments; see [`Dev::launch`].
    pub(super) fn start(dir: &Path, vms: &Path, extra: &[&str]) -> Self {
        Self::launch(
            dir,
            vms,
            Setup {
                args: extra,
                ..Setup::default()
            },
        )
    }

    /// Starts `haven dev` on the VMs of `vms` as `setup` says; returns once it lists a
    /// VM and has made its defaults (so they cannot replace a policy the test applies).
    pub(super) fn launch(dir: &Path, vms: &Path, setup: Setup) -> Self {
        let storage_port = free_port();
        let port = free_port();
        let http = free_port();
        let url = format!("https://127.0.0.1:{port}");
        let state = dir.join("state");
        let log = dir.join("dev.log");
        let mut command = haven(&["dev", "--state-dir"]);
        // Nothing of the machine's AWS settings, and no key: its jobs reach the node
        // only with the least-privilege keys it makes.
        with_keys(&mut command, &S3Keys::new("", ""))
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .arg(&state)
            .arg("--qmp-dir")
            .arg(vms)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--http-listen", &format!("127.0.0.1:{http}")])
            .args(setup.args)
            // Its log format and filter are the defaults unless `args` say otherwise.
            .env_remove("HAVEN_LOG")
            .env_remove("HAVEN_LOG_FORMAT")
            .env_remove("HAVEN_STORAGE_ACCESS_KEY")
            .env_remove("HAVEN_STORAGE_SECRET_KEY");
        if setup.storage != Storage::None {
            command
                .arg("--storage-dir")
                .arg(dir.join("storage"))
                .args(["--storage-listen", &format!("127.0.0.1:{storage_port}")]);
        }
        if setup.storage == Storage::TestKey {
            command
                .env("HAVEN_STORAGE_ACCESS_KEY", ACCESS_KEY)
                .env("HAVEN_STORAGE_SECRET_KEY", SECRET_KEY);
        }
        if setup.password {
            command.env("HAVEN_PASSWORD", PASSWORD);
        } else {
            command.env_remove("HAVEN_PASSWORD");
        }
        let process = spawn_logged(&mut command, &log);
        let mut cli = Cli::dev_admin(url.clone(), &state);
        if setup.storage == Storage::TestKey {
            cli = cli
                .with_env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
                .with_env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
                .with_env("AWS_REGION", "us-east-1");
        }
        if !setup.password {
            // Read before `HAVEN_PASSWORD`, which `Cli` sets to the test password.
            let file = state.join("password");
            cli = cli.with_env("HAVEN_PASSWORD_FILE", file.to_str().unwrap());
        }
        let dev = Dev {
            cli,
            url,
            port,
            http,
            storage_port,
            pki: state.join("pki"),
            state,
            log,
            _process: process,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !String::from_utf8_lossy(&dev.cli.run(&["vm", "list"]).stdout).contains("web")
            || dev.state.join("defaults-pending").exists()
        {
            assert!(
                Instant::now() < deadline,
                "haven dev did not come up: {}",
                dev.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        dev
    }

    /// What it printed and logged so far.
    pub(super) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    /// Waits until every job is finished and `count` jobs of `kind` succeeded.
    pub(super) fn wait_for(&self, kind: &str, count: usize, timeout: Duration) -> Vec<Value> {
        self.cli.wait_for(kind, count, timeout)
    }
}

/// The admin key the tests give `haven dev`'s storage node.
const ACCESS_KEY: &str = "dev-access";
const SECRET_KEY: &str = "dev-secret-key";

/// `aws s3api ARGS` against `haven dev`'s storage node on `port`, signed with the key
/// `access`, `secret`.
fn s3api(port: u16, access: &str, secret: &str, args: &[&str]) -> Output {
    with_keys(&mut Command::new("aws"), &S3Keys::new(access, secret))
        .arg("s3api")
        .args(args)
        .args(["--endpoint-url", &format!("http://127.0.0.1:{port}")])
        .output()
        .unwrap()
}

/// The secret of the key file `path` (`access_key_id`, `secret_access_key`).
fn key_file_secret(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .find_map(|line| line.strip_prefix("secret_access_key = "))
        .unwrap()
        .trim_matches('"')
        .to_owned()
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
    haven_testkit::image::create_qcow2(path, 32 << 20).unwrap();
    run(
        "qemu-io",
        &[
            "-f",
            "qcow2",
            "-c",
            "write -P 0x5a 1M 3M",
            "-c",
            "write -P 0x11 20M 64k",
            path.to_str().unwrap(),
        ],
    );
}

#[test]
fn dev_runs_policies_with_prune_replication_and_gc() {
    let _alone = one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let vm = WebVm::start(dir.path(), make_image);
    let (vms, image) = (&vm.vms, &vm.image);

    let primary = dir.path().join("primary");
    init_repo(&primary, &[]);
    let dev = Dev::start(dir.path(), vms, &[]);
    let (port, pki) = (dev.port, dev.pki.clone());
    // The replica lives on the storage node `haven dev` runs in-process.
    let replica = dev.replica_url();

    dev.cli.apply_policy(
        &dir.path().join("policy.toml"),
        &format!(
            "[[policy]]\nname = \"web\"\nschedule = \"0 0 1 1 *\"\nrepository = {:?}\n\
         retention = {{ keep_last = 1 }}\nreplicate_to = {:?}\n\
         gc_schedule = \"* * * * *\"\ngc_margin_seconds = 0\n",
            primary.to_str().unwrap(),
            replica
        ),
    );

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
    let snapshots: Vec<Value> = dev.cli.snapshots(&primary);
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
    assert_raw_same_as_qcow2(&restored, image);

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
    let append = key_file_secret(&dev.state.join("storage-keys/append.toml"));
    let listed = s3api(
        dev.storage_port,
        "dev-append",
        &append,
        &[
            "list-objects-v2",
            "--bucket",
            "haven",
            "--prefix",
            "replica/snapshots/",
            "--query",
            "Contents[0].Key",
            "--output",
            "text",
        ],
    );
    let manifest = String::from_utf8_lossy(&listed.stdout).trim().to_owned();
    assert!(manifest.starts_with("replica/snapshots/web/"), "{manifest}");
    let delete = s3api(
        dev.storage_port,
        "dev-append",
        &append,
        &["delete-object", "--bucket", "haven", "--key", &manifest],
    );
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

/// The mode bits of `path`.
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn dev_with_no_configuration_backs_up_at_once_and_keeps_its_state_across_starts() {
    let _alone = one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let vm = WebVm::start(dir.path(), make_image);
    let vms = &vm.vms;
    // As the README shows it: no password, no keys, no repository, no policy.
    let zero = || Setup {
        storage: Storage::MadeKey,
        password: false,
        args: &[],
    };
    let dev = Dev::launch(dir.path(), vms, zero());
    let state = dev.state.clone();
    let banner = dev.log_text();
    for said in [
        format!(
            "repository password in {} (made now",
            state.join("password").display()
        ),
        format!(
            "admin key in {} (made now)",
            state.join("storage-keys/admin.toml").display()
        ),
        format!("made repository {}", state.join("repository").display()),
        format!("the CLI as admin: . {}", state.join("env").display()),
    ] {
        assert!(banner.contains(&said), "no {said:?} in:\n{banner}");
    }
    // Secrets readable by their owner only, in a private folder.
    assert_eq!(mode(&state), 0o700);
    for file in [
        "password",
        "env",
        "default-policy.toml",
        "storage-keys/admin.toml",
        "storage-keys/append.toml",
        "pki/admin-key.pem",
    ] {
        assert_eq!(mode(&state.join(file)), 0o600, "{file}");
    }

    // `haven job run VM` at once, with only the variables of STATE/env: the default
    // policy names the default repository.
    let script = format!(
        ". {} && exec {HAVEN} job run web --watch --json",
        state.join("env").display()
    );
    let run = Command::new("sh")
        .args(["-c", &script])
        .env_remove("HAVEN_PASSWORD")
        .env_remove("HAVEN_PASSWORD_COMMAND")
        .env_remove("HAVEN_TOKEN_FILE")
        .output()
        .unwrap();
    assert!(run.status.success(), "{run:?}");
    let backups = dev.wait_for("backup", 1, Duration::from_secs(60));
    assert_eq!(
        backups[0]["repository"],
        state.join("repository").to_str().unwrap(),
        "{backups:#?}"
    );
    let repository = state.join("repository");
    let snapshots: Vec<Value> = dev.cli.snapshots(&repository);
    assert_eq!(snapshots.len(), 1, "{snapshots:#?}");
    // The storage node takes the admin key it made.
    let admin = key_file_secret(&state.join("storage-keys/admin.toml"));
    let buckets = s3api(dev.storage_port, "dev-admin", &admin, &["list-buckets"]);
    assert!(
        String::from_utf8_lossy(&buckets.stdout).contains("\"haven\""),
        "{buckets:?}"
    );

    // A policy of the user's own replaces the default; the next start changes none
    // of it, nor any secret, certificate or the repository.
    let other = dir.path().join("other");
    dev.cli
        .ok(&["repo", "init", "--repo", other.to_str().unwrap()]);
    dev.cli.apply_policy(
        &dir.path().join("mine.toml"),
        &format!(
            "[[policy]]\nname = \"mine\"\nschedule = \"0 0 1 1 *\"\nrepository = {:?}\n",
            other.to_str().unwrap()
        ),
    );
    let kept = [
        "password",
        "default-policy.toml",
        "storage-keys/admin.toml",
        "storage-keys/append.toml",
        "pki/ca.pem",
        "repository/config",
    ]
    .map(|file| (file, std::fs::read(state.join(file)).unwrap()));
    drop(dev);

    let dev = Dev::launch(dir.path(), vms, zero());
    for (file, before) in &kept {
        assert_eq!(&std::fs::read(state.join(file)).unwrap(), before, "{file}");
    }
    let banner = dev.log_text();
    assert!(!banner.contains("made now"), "{banner}");
    assert!(!banner.contains("made repository"), "{banner}");
    dev.cli.ok(&["job", "run", "web"]);
    let backups = dev.wait_for("backup", 2, Duration::from_secs(60));
    assert_eq!(
        backups[0]["repository"],
        other.to_str().unwrap(),
        "the user's policy stays: {backups:#?}"
    );
}
