//! The storage-node fixture: the real `haven storage-node` binary on a free loopback
//! port with a fresh data directory, killed on drop, with awscli and Haven's own client
//! pointed at it, and the crash scenario several tests share.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::haven::haven;
use super::metrics;
use super::process::{Guard, ok};
pub use super::s3::{ACCESS_KEY, SECRET_KEY};
use super::tree::files_below;

/// Haven's client of the node's extensions, for `bucket` at `endpoint`.
pub fn node_client(
    endpoint: &str,
    bucket: &str,
    access_key: &str,
    secret_key: &str,
) -> haven_repo::NodeClient {
    let credentials = haven_repo::Credentials {
        access_key: access_key.to_owned(),
        secret_key: secret_key.to_owned(),
        region: "us-east-1".to_owned(),
    };
    haven_repo::NodeClient::new(endpoint, bucket, credentials).expect("client")
}

/// How to configure a node beyond the defaults.
#[derive(Default)]
pub struct NodeOptions {
    /// Extra `[[keys]]` TOML appended to the config.
    pub extra_keys: String,
    /// Number of data directories (`data_dirs = [data-0, data-1, …]`); 0
    /// means the single `data_dir = data`.
    pub data_dirs: usize,
    /// PEM certificate chain and key for `[tls]`; with them the node speaks
    /// https and awscli is given `ca_bundle`.
    pub tls: Option<TlsFiles>,
    /// `replication.pull_sources`: nodes this one may pull batches from.
    pub pull_sources: Vec<String>,
    /// `replication.pull_ca_file`: CAs trusted for https pull sources.
    pub pull_ca_file: Option<PathBuf>,
    /// Extra TOML tables appended to the config (`[limits]`, say).
    pub extra_toml: String,
    /// Extra command-line arguments after `--config FILE`.
    pub args: Vec<String>,
    /// Extra environment variables of the node process.
    pub env: Vec<(String, String)>,
}

/// Files of a TLS setup.
#[derive(Clone)]
pub struct TlsFiles {
    /// Certificate chain the node presents.
    pub cert: PathBuf,
    /// The node's private key.
    pub key: PathBuf,
    /// CA certificate clients trust.
    pub ca_bundle: PathBuf,
}

/// A running storage node.
pub struct Node {
    process: Guard,
    /// Port it listens on.
    pub port: u16,
    /// `http` or `https`, as printed by the node.
    pub scheme: String,
    /// CA bundle given to awscli (TLS nodes).
    pub ca_bundle: Option<PathBuf>,
    /// Temporary directory holding data, config and scratch files.
    pub dir: tempfile::TempDir,
    config: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Node {
    /// Starts a node with one read-write key for all buckets.
    pub fn start() -> Node {
        Self::start_with_keys("")
    }

    /// Starts a node with the default key plus extra `[[keys]]` TOML.
    pub fn start_with_keys(extra_keys: &str) -> Node {
        Self::start_with(NodeOptions {
            extra_keys: extra_keys.to_owned(),
            ..NodeOptions::default()
        })
    }

    /// Starts a node in a fresh temporary directory.
    pub fn start_with(options: NodeOptions) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, options)
    }

    /// Starts a node whose config, data and scratch files live in `dir`
    /// (which may already hold certificates the options point to).
    pub fn start_in(dir: tempfile::TempDir, options: NodeOptions) -> Node {
        let config = dir.path().join("storage.toml");
        let data = if options.data_dirs == 0 {
            format!("data_dir = \"{}\"\n", dir.path().join("data").display())
        } else {
            let dirs: Vec<String> = (0..options.data_dirs)
                .map(|i| format!("\"{}\"", dir.path().join(format!("data-{i}")).display()))
                .collect();
            format!("data_dirs = [{}]\n", dirs.join(", "))
        };
        let tls = match &options.tls {
            Some(files) => format!(
                "\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
                files.cert.display(),
                files.key.display()
            ),
            None => String::new(),
        };
        let sources: Vec<String> = options
            .pull_sources
            .iter()
            .map(|source| format!("\"{source}\""))
            .collect();
        let ca_file = options
            .pull_ca_file
            .as_ref()
            .map(|path| format!("pull_ca_file = \"{}\"\n", path.display()))
            .unwrap_or_default();
        let replication = format!(
            "\n[replication]\npull_sources = [{}]\n{ca_file}",
            sources.join(", ")
        );
        let text = format!(
            "listen = \"127.0.0.1:0\"\n{data}\n[[keys]]\naccess_key = \"{ACCESS_KEY}\"\nsecret_key = \"{SECRET_KEY}\"\nbypass_governance = true\n{}\n{tls}{replication}\n{}",
            options.extra_keys, options.extra_toml
        );
        std::fs::write(&config, text).expect("write config");
        // Sign everything, presigned URLs included, with SigV4.
        let aws_config = "[default]\ns3 =\n    signature_version = s3v4\n";
        std::fs::write(dir.path().join("aws-config"), aws_config).expect("write aws config");
        let mut node = Node {
            process: Guard(None),
            port: 0,
            scheme: String::new(),
            ca_bundle: options.tls.map(|files| files.ca_bundle),
            dir,
            config,
            args: options.args,
            env: options.env,
        };
        node.launch();
        node
    }

    fn launch(&mut self) {
        let mut child = haven(&["storage-node", "--config"])
            .arg(&self.config)
            .args(&self.args)
            .env("HAVEN_LOG", "warn")
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start haven storage-node");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = sender.send(line);
        });
        let line = receiver
            .recv_timeout(Duration::from_secs(30))
            .expect("node printed its address");
        let url = line
            .trim()
            .rsplit(' ')
            .next()
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        let (scheme, address) = url
            .split_once("://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        let port = address
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        self.port = port;
        self.scheme = scheme.to_owned();
        self.process = Guard::new(child);
    }

    /// `http://127.0.0.1:PORT` (or `https://`).
    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    /// The data directory (the single `data_dir`).
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The `index`-th of several data directories (`data_dirs`).
    pub fn data_n(&self, index: usize) -> PathBuf {
        self.dir.path().join(format!("data-{index}"))
    }

    /// A scratch path inside the test's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Stops the node with SIGTERM, as an operator does, and waits for it to exit.
    pub fn terminate(&mut self) {
        if self.process.0.is_some() {
            // SAFETY: kill(2) on our own child's pid, not yet reaped.
            unsafe { libc::kill(self.process.pid() as libc::pid_t, libc::SIGTERM) };
            self.process.wait();
        }
    }

    /// Kills the node with SIGKILL (no cleanup, no flush).
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// Starts the node again on the same data directory (new port).
    pub fn restart(&mut self) {
        self.kill9();
        self.launch();
    }

    /// Runs `aws --endpoint-url … ARGS` with the test key.
    pub fn aws(&self, args: &[&str]) -> Output {
        self.aws_as(ACCESS_KEY, SECRET_KEY, args)
    }

    /// Runs awscli with the given key pair.
    pub fn aws_as(&self, access: &str, secret: &str, args: &[&str]) -> Output {
        self.aws_command(access, secret, self.ca_bundle.as_deref(), args)
            .output()
            .expect("awscli must be installed (apt-get install awscli)")
    }

    /// Runs awscli with the test key, trusting only the CAs in `bundle`.
    pub fn aws_trusting(&self, bundle: &Path, args: &[&str]) -> Output {
        self.aws_command(ACCESS_KEY, SECRET_KEY, Some(bundle), args)
            .output()
            .expect("awscli must be installed (apt-get install awscli)")
    }

    fn aws_command(
        &self,
        access: &str,
        secret: &str,
        ca_bundle: Option<&Path>,
        args: &[&str],
    ) -> Command {
        let mut command = Command::new("aws");
        if let Some(bundle) = ca_bundle {
            command.env("AWS_CA_BUNDLE", bundle);
        }
        command
            .arg("--endpoint-url")
            .arg(self.endpoint())
            .args(args)
            .env("AWS_ACCESS_KEY_ID", access)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", self.path("aws-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.path("no-aws-credentials"),
            )
            .env("AWS_MAX_ATTEMPTS", "1");
        command
    }

    /// Runs awscli and fails the test unless it succeeds; returns stdout.
    pub fn aws_ok(&self, args: &[&str]) -> String {
        ok(self.aws(args), ("aws", args))
    }

    /// `python3 -u -c SCRIPT ENDPOINT ARGS` with the test key in `KEY` and `SECRET`, for
    /// the boto3 scripts the tests drive the node with.
    pub fn python(&self, script: &str, args: &[&str]) -> Command {
        let mut command = Command::new("python3");
        command
            .args(["-u", "-c", script, &self.endpoint()])
            .args(args)
            .env("KEY", ACCESS_KEY)
            .env("SECRET", SECRET_KEY);
        if let Some(bundle) = &self.ca_bundle {
            // boto3 trusts the node's CA through this variable.
            command.env("AWS_CA_BUNDLE", bundle);
        }
        command
    }

    /// [`Node::python`] with the shared boto3 prelude (`storage_node/s3_api/common.py`:
    /// `client()`, `s3`, `refusal`, `code_of`, `expect`) before `script`.
    pub fn boto3(&self, script: &str, args: &[&str]) -> Command {
        self.python(&format!("{BOTO3_PRELUDE}\n{script}"), args)
    }

    /// The node's `/metrics`.
    pub fn metrics(&self) -> String {
        metrics::scrape(self.port)
    }

    /// The object files below the data directory (for fault injection).
    pub fn object_files(&self) -> Vec<PathBuf> {
        object_files_in(&self.data())
    }
}

/// The object files below one data directory.
pub fn object_files_in(data: &Path) -> Vec<PathBuf> {
    let mut out = files_below(&data.join("buckets"));
    out.retain(|p| p.to_string_lossy().ends_with('@'));
    out
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Runs a program with extra environment and returns its output, whatever its exit
/// status; panics if the tool is missing.
pub fn output_with_env(program: &str, args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("{program} must be installed: {e}"))
}

/// Asserts failure with an S3 error code in stderr.
pub fn fails_with(output: Output, code: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "expected {code}, but the command succeeded"
    );
    assert!(stderr.contains(code), "expected {code}, got: {stderr}");
}

/// Serialises [`put_until_killed`]: two crash scenarios at once would share one small
/// machine's disk and CPU, and each wants its node busy when it is killed.
static ONE_CRASH_WRITER_AT_A_TIME: Mutex<()> = Mutex::new(());

/// How many acknowledged writes make the crash scenario meaningful.
const ACKS_BEFORE_KILL: usize = 21;

/// Creates bucket `crash`, writes objects into it from 16 threads, and kills the node
/// with SIGKILL mid-stream once it has written for four seconds and acknowledged at
/// least [`ACKS_BEFORE_KILL`] writes (a loaded machine takes longer, never less);
/// returns the keys whose PUT was acknowledged before the kill.
pub fn put_until_killed(node: &mut Node) -> Vec<String> {
    let _alone = ONE_CRASH_WRITER_AT_A_TIME
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    node.aws_ok(&["s3", "mb", "s3://crash"]);
    let mut writer = node
        .python(CRASH_WRITER, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 with boto3 must be installed");
    let stdout = writer.stdout.take().expect("stdout");
    let (acks, acked_keys) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(key) = line.strip_prefix("ACK ") {
                let _ = acks.send(key.to_string());
            }
        }
    });
    let started = Instant::now();
    let mut acked = Vec::new();
    while started.elapsed() < Duration::from_secs(4) || acked.len() < ACKS_BEFORE_KILL {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "too few acknowledged writes before the kill: {}",
            acked.len()
        );
        match acked_keys.recv_timeout(Duration::from_millis(100)) {
            Ok(key) => acked.push(key),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    node.kill9();
    let _ = writer.wait();
    let _ = reader.join();
    acked.extend(acked_keys.try_iter());
    assert!(
        acked.len() >= ACKS_BEFORE_KILL,
        "too few acknowledged writes before the kill: {}",
        acked.len()
    );
    acked
}

/// After a restart: every acknowledged key reads back intact, the listing is in
/// order without duplicates, and every listed object is complete.
pub fn verify_after_crash(node: &Node, acked: &[String]) {
    let output = node
        .python(CRASH_VERIFIER, &[&acked.join(",")])
        .output()
        .expect("python3 with boto3 must be installed");
    let stdout = ok(output, "verify after crash");
    assert!(stdout.contains("ALL OK"), "{stdout}");
}

/// Writes objects from 16 threads until the server dies; prints `ACK key`
/// after each acknowledged PUT. Content is derived from the key.
pub const CRASH_WRITER: &str = r#"
import sys, os, threading, hashlib, boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=sys.argv[1], aws_access_key_id=os.environ["KEY"], aws_secret_access_key=os.environ["SECRET"],
                  region_name="us-east-1", config=Config(retries={"max_attempts": 1}, max_pool_connections=32, s3={"addressing_style": "path"}))
lock = threading.Lock()
def body(key):
    seed = hashlib.sha256(key.encode()).digest()
    size = 1000 + int.from_bytes(seed[:3], "big") % 3_000_000
    return (seed * (size // 32 + 1))[:size]
def worker(t):
    i = 0
    while True:
        key = f"w{t}/obj{i}"
        try:
            s3.put_object(Bucket="crash", Key=key, Body=body(key))
        except Exception:
            return
        with lock:
            print("ACK " + key, flush=True)
        i += 1
threads = [threading.Thread(target=worker, args=(t,)) for t in range(16)]
for t in threads: t.start()
for t in threads: t.join()
"#;

/// Checks that every acknowledged key reads back intact, that the listing
/// is in key order, and that every listed object is complete.
pub const CRASH_VERIFIER: &str = r#"
import sys, os, hashlib, boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=sys.argv[1], aws_access_key_id=os.environ["KEY"], aws_secret_access_key=os.environ["SECRET"],
                  region_name="us-east-1", config=Config(retries={"max_attempts": 1}, s3={"addressing_style": "path"}))
def body(key):
    seed = hashlib.sha256(key.encode()).digest()
    size = 1000 + int.from_bytes(seed[:3], "big") % 3_000_000
    return (seed * (size // 32 + 1))[:size]
acked = sys.argv[2].split(",")
for key in acked:
    assert s3.get_object(Bucket="crash", Key=key)["Body"].read() == body(key), key
listed = []
for page in s3.get_paginator("list_objects_v2").paginate(Bucket="crash", PaginationConfig={"PageSize": 50}):
    listed += [o["Key"] for o in page.get("Contents", [])]
assert listed == sorted(listed), "listing out of order"
assert len(listed) == len(set(listed)), "key listed twice"
assert set(acked) <= set(listed)
for key in listed:
    data = s3.get_object(Bucket="crash", Key=key)["Body"].read()
    assert data == body(key), "partial object listed: " + key
print(f"acked {len(acked)}, listed {len(listed)}")
print("ALL OK")
"#;

/// Clients of the node and checks of S3 errors, shared by the boto3 scripts.
pub const BOTO3_PRELUDE: &str = include_str!("../storage_node/s3_api/common.py");

/// Keys of the objects below `prefix` in bucket `haven`, listed with the fixture's key.
pub fn object_keys(node: &Node, prefix: &str) -> Vec<String> {
    let listing = node.aws_ok(&[
        "s3api",
        "list-objects-v2",
        "--bucket",
        "haven",
        "--prefix",
        prefix,
        "--output",
        "json",
    ]);
    listed_keys(&listing)
}

/// The keys of an awscli `list-objects(-v2)` JSON reply, in its order (an empty reply
/// or one without `Contents`: none).
pub fn listed_keys(listing: &str) -> Vec<String> {
    if listing.trim().is_empty() {
        return Vec::new();
    }
    let listing: serde_json::Value = serde_json::from_str(listing).expect("listing json");
    listing["Contents"]
        .as_array()
        .map(|objects| {
            objects
                .iter()
                .map(|object| object["Key"].as_str().expect("key").to_owned())
                .collect()
        })
        .unwrap_or_default()
}
