//! Shared harness for the storage-node integration tests: starts the real
//! `haven storage-node` binary on a free loopback port with a fresh data
//! directory, and kills it on drop. Included by the other
//! `storage_node_*.rs` tests with `#[path]`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// Access key of the default read-write test key.
pub const ACCESS_KEY: &str = "haven-test-key";
/// Secret of the default test key.
pub const SECRET_KEY: &str = "haven-test-secret-0123456789";

/// A running storage node.
pub struct Node {
    child: Option<Child>,
    /// Port it listens on.
    pub port: u16,
    /// Temporary directory holding data, config and scratch files.
    pub dir: tempfile::TempDir,
    config: PathBuf,
}

impl Node {
    /// Starts a node with one read-write key for all buckets.
    pub fn start() -> Node {
        Self::start_with_keys("")
    }

    /// Starts a node with the default key plus extra `[[keys]]` TOML.
    pub fn start_with_keys(extra_keys: &str) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("storage.toml");
        let text = format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n\n[[keys]]\naccess_key = \"{ACCESS_KEY}\"\nsecret_key = \"{SECRET_KEY}\"\nbypass_governance = true\n{extra_keys}\n",
            dir.path().join("data").display()
        );
        std::fs::write(&config, text).expect("write config");
        // Sign everything, presigned URLs included, with SigV4.
        let aws_config = "[default]\ns3 =\n    signature_version = s3v4\n";
        std::fs::write(dir.path().join("aws-config"), aws_config).expect("write aws config");
        let mut node = Node {
            child: None,
            port: 0,
            dir,
            config,
        };
        node.launch();
        node
    }

    fn launch(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_haven"))
            .args(["storage-node", "--config"])
            .arg(&self.config)
            .env("HAVEN_LOG", "warn")
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
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        self.port = port;
        self.child = Some(child);
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The data directory.
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A scratch path inside the test's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Kills the node with SIGKILL (no cleanup, no flush).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
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
        Command::new("aws")
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
            .env("AWS_MAX_ATTEMPTS", "1")
            .output()
            .expect("awscli must be installed (apt-get install awscli)")
    }

    /// Runs awscli and fails the test unless it succeeds; returns stdout.
    pub fn aws_ok(&self, args: &[&str]) -> String {
        let output = self.aws(args);
        assert!(
            output.status.success(),
            "aws {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Scrapes `/metrics` with curl-free plain HTTP.
    pub fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .expect("send");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("read");
        text
    }

    /// The object files below the data directory (for fault injection).
    pub fn object_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        collect(&self.data().join("buckets"), &mut out);
        out.retain(|p| p.to_string_lossy().ends_with('@'));
        out
    }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(read) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in read.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out);
        } else {
            out.push(path);
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
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

/// Runs a command and returns its output; panics if the tool is missing.
pub fn run(program: &str, args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("{program} must be installed: {e}"))
}

/// Asserts success and returns stdout.
pub fn ok(output: Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
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
