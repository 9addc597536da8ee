//! The `haven` binary under test: one command builder whose environment nothing on the
//! machine can redirect, and a client that runs it against one repository.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::process::{Guard, ok};
use super::s3::{self, S3Keys};

/// Path of the binary cargo built for these tests.
pub const HAVEN: &str = env!("CARGO_BIN_EXE_haven");
/// The repository password every test uses.
pub const PASSWORD: &str = "correct horse battery staple";

/// `haven ARGS` without a password file, password command or default repository from
/// the environment.
pub fn haven(args: &[&str]) -> Command {
    let mut command = Command::new(HAVEN);
    command
        .args(args)
        .env_remove("HAVEN_PASSWORD_FILE")
        .env_remove("HAVEN_PASSWORD_COMMAND")
        .env_remove("HAVEN_REPO");
    command
}

/// Runs `haven ARGS --repo URL` with the test password, and with S3 keys when the
/// repository lives on a storage node; without a URL, `--repo` is among the arguments.
pub struct HavenClient {
    url: Option<String>,
    keys: Option<S3Keys>,
}

impl HavenClient {
    /// A client of the repository at `url` (`file://` or anything needing no keys).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: Some(url.into()),
            keys: None,
        }
    }

    /// A client of a repository on a storage node, signing with the node's test key.
    pub fn on_node(url: impl Into<String>) -> Self {
        Self {
            url: Some(url.into()),
            keys: Some(S3Keys::node()),
        }
    }

    /// A client of a repository on a storage node, signing with `keys`.
    pub fn on_node_as(url: impl Into<String>, keys: S3Keys) -> Self {
        Self {
            url: Some(url.into()),
            keys: Some(keys),
        }
    }

    /// A client signing with the node's test key, for runs naming their repositories
    /// in the arguments.
    pub fn with_node_keys() -> Self {
        Self::with_keys(S3Keys::node())
    }

    /// A client signing with `keys`, for runs naming their repositories in the
    /// arguments.
    pub fn with_keys(keys: S3Keys) -> Self {
        Self {
            url: None,
            keys: Some(keys),
        }
    }

    /// `haven ARGS [--repo URL]` with the password in the environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = haven(args);
        if let Some(url) = &self.url {
            command.arg("--repo").arg(url);
        }
        command.env("HAVEN_PASSWORD", PASSWORD);
        if let Some(keys) = &self.keys {
            s3::with_keys(&mut command, keys);
        }
        command
    }

    /// Runs and returns the output, whatever the exit status.
    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run haven")
    }

    /// Runs and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        ok(self.run(args), args)
    }

    /// Runs with `--json` and parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut args = args.to_vec();
        args.push("--json");
        let stdout = self.ok(&args);
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    }

    /// Runs and expects a failure printed as one `error: ` line; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            !output.status.success(),
            "haven {args:?} succeeded but should fail: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(
            stderr.starts_with("error: "),
            "not a one-line error: {stderr}"
        );
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "not one line: {stderr}"
        );
        stderr
    }

    /// Restores `snapshot` (`VM@TIME`) to the file `to` and asserts it holds the same
    /// bytes as the disk image `expected`.
    pub fn restore_same(&self, snapshot: &str, to: &Path, expected: &Path) {
        self.ok(&["restore", snapshot, "--to", &to.display().to_string()]);
        crate::support::image::assert_same_disk(expected, to);
    }

    /// Backs up images as VM `vm`; returns the report.
    pub fn backup(&self, vm: &str, images: &[&Path]) -> serde_json::Value {
        let output = self.backup_output(vm, images);
        let stdout = ok(output, ("backup", vm));
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    }

    /// Runs `haven backup image IMAGES --vm VM --json` and returns its output whatever
    /// the exit status, for tests that read its standard error or expect a refusal.
    pub fn backup_output(&self, vm: &str, images: &[&Path]) -> Output {
        let mut args = vec!["backup", "image"];
        let paths: Vec<String> = images.iter().map(|p| p.display().to_string()).collect();
        args.extend(paths.iter().map(String::as_str));
        args.extend(["--vm", vm, "--json"]);
        self.run(&args)
    }
}

/// A running `haven backup qemu` or `haven backup libvirt` whose stderr is watched for
/// the moment its point-in-time view is taken.
pub struct RunningBackup {
    pub guard: Guard,
    point_taken: mpsc::Receiver<()>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl RunningBackup {
    /// Starts `command` with worker logs on its piped stderr.
    pub fn start(mut command: Command) -> Self {
        command
            .env("HAVEN_LOG", "haven_worker=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let pipe = child.stderr.take().unwrap();
        let (sender, point_taken) = mpsc::channel();
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { return };
                if line.contains("point-in-time view taken") {
                    let _ = sender.send(());
                }
                log.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        Self {
            guard: Guard::new(child),
            point_taken,
            stderr,
        }
    }

    /// Blocks until the snapshot point is taken (writes after this must not leak).
    pub fn wait_point_taken(&self) {
        self.point_taken
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no snapshot point: {}", self.stderr()));
    }

    /// Whether the backup has not exited yet.
    pub fn is_running(&mut self) -> bool {
        matches!(self.guard.0.as_mut().unwrap().try_wait(), Ok(None))
    }

    /// Its standard error so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends `signal` (SIGINT as Ctrl-C does, SIGTERM as a service manager does) and
    /// waits for the exit, at most `limit`: its status and how long it took.
    pub fn stop_with(&mut self, signal: libc::c_int, limit: Duration) -> (ExitStatus, Duration) {
        let child = self.guard.0.as_mut().expect("the backup is not reaped yet");
        let sent = Instant::now();
        // SAFETY: a signal to a child this test started and has not reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                // The stderr reader thread sees the pipe close.
                std::thread::sleep(Duration::from_millis(50));
                self.guard.0 = None;
                return (status, sent.elapsed());
            }
            assert!(
                sent.elapsed() < limit,
                "haven did not exit within {limit:?} of signal {signal}: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for success and parses the JSON report.
    pub fn finish(mut self) -> Value {
        let mut child = self.guard.0.take().unwrap();
        let mut stdout = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        let status = child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            status.success(),
            "haven backup failed: {}{}",
            stdout,
            self.stderr()
        );
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    }
}
