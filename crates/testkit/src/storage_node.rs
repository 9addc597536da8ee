//! A Haven storage node served in-process, over real HTTP on a loopback port.
//!
//! The node is the `haven-storage-node` library's own entry point
//! (`haven_storage_node::run`, as `haven dev --storage-dir` runs it), on a runtime of
//! its own in a thread of its own: dropping the [`StorageNode`] stops the server and
//! ends every connection task with that runtime, whatever the test's runtime does.
//! Its data lives in a temporary directory removed on drop.
//!
//! `run` listens for Ctrl-C and SIGTERM to stop: while a node is running, those
//! signals stop the node rather than the test process.

use std::time::Duration;

use haven_repo::{Backend, OpenOptions, S3Credentials};
use tokio::sync::oneshot;

use crate::FixtureError;
use crate::process::{free_port, http_get, is_listening, wait_until};

/// The access key of the node's one read-write key.
pub const ACCESS_KEY: &str = "haven-testkit-key";
/// Its secret.
pub const SECRET_KEY: &str = "haven-testkit-secret-0123456789";
/// The bucket created at start.
pub const BUCKET: &str = "haven";

/// How long the node may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts with a new port when another process took the chosen one first.
const START_ATTEMPTS: usize = 3;

/// A running storage node; stopped, and its data removed, on drop.
#[derive(Debug)]
pub struct StorageNode {
    port: u16,
    /// Stops the node's runtime; `None` once sent.
    stop: Option<oneshot::Sender<()>>,
    /// The thread running the node's runtime, with the node's result.
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
    /// Declared last: removed after the node has stopped.
    dir: tempfile::TempDir,
}

impl StorageNode {
    /// Starts a node with one data directory, the key [`ACCESS_KEY`] for every
    /// bucket and the bucket [`BUCKET`], and waits until it accepts connections.
    /// Blocking.
    pub fn start() -> Result<Self, FixtureError> {
        quiet_logs();
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::Builder::new()
                .prefix("haven-node-")
                .tempdir()
                .map_err(FixtureError::io("cannot create a directory for the node"))?;
            let port = free_port()?;
            let args = haven_storage_node::StorageNodeArgs {
                config: None,
                listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], port))),
                data: vec![dir.path().join("data")],
                access_key: Some(ACCESS_KEY.into()),
                secret_key: Some(SECRET_KEY.into()),
                create_buckets: vec![BUCKET.into()],
                object_lock: false,
                default_retention: None,
                pull_sources: Vec::new(),
                insecure: false,
                check_config: false,
            };
            let (stop, stopped) = oneshot::channel();
            let thread = std::thread::Builder::new()
                .name(format!("storage-node-{port}"))
                .spawn(move || serve(args, stopped))
                .map_err(FixtureError::io("cannot start the node's thread"))?;
            let mut node = Self {
                port,
                stop: Some(stop),
                thread: Some(thread),
                dir,
            };
            match node.wait_listening() {
                Ok(()) => return Ok(node),
                // Most likely another process took the port: a new one, a new node.
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| FixtureError::NotReady {
            what: "storage node".into(),
            seconds: START_TIMEOUT.as_secs(),
            detail: "never started".into(),
        }))
    }

    fn wait_listening(&mut self) -> Result<(), FixtureError> {
        let port = self.port;
        let thread = &self.thread;
        wait_until("storage node", START_TIMEOUT, || {
            if thread.as_ref().is_none_or(|thread| thread.is_finished()) {
                return Err(format!("the node on port {port} stopped at start"));
            }
            Ok(is_listening(port))
        })
    }

    /// Stops the node and waits for its thread.
    fn shut_down(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The port the node listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The node's data directory.
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// The repository URL of `prefix` in [`BUCKET`] (path-style, explicit endpoint).
    pub fn repository_url(&self, prefix: &str) -> String {
        format!(
            "s3://{BUCKET}/{prefix}?endpoint={}&region=us-east-1",
            self.endpoint()
        )
    }

    /// The node's key as static S3 credentials.
    pub fn credentials(&self) -> S3Credentials {
        S3Credentials {
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: SECRET_KEY.into(),
            session_token: None,
        }
    }

    /// A backend on `prefix` that uses the node's extensions (the batched existence
    /// query), as Haven does with static keys, path-style addressing and an explicit
    /// endpoint.
    pub fn backend(&self, prefix: &str) -> Result<Backend, FixtureError> {
        self.open_backend(prefix, false)
    }

    /// A backend on `prefix` that treats the node as plain S3: no extension request
    /// is ever sent.
    pub fn plain_s3_backend(&self, prefix: &str) -> Result<Backend, FixtureError> {
        self.open_backend(prefix, true)
    }

    fn open_backend(&self, prefix: &str, plain_s3: bool) -> Result<Backend, FixtureError> {
        let url = self.repository_url(prefix);
        let options = OpenOptions {
            credentials: Some(self.credentials()),
            plain_s3,
            ..OpenOptions::default()
        };
        Backend::open(&url, &options).map_err(|source| FixtureError::Backend { url, source })
    }

    /// Requests the node has answered for S3 or extension operation `operation`
    /// (`PutObject`, `HavenExists`, ...), from its `/metrics`. Blocking.
    pub fn requests(&self, operation: &str) -> Result<u64, FixtureError> {
        let text = http_get(self.port, "/metrics").map_err(|error| FixtureError::NotReady {
            what: "storage node metrics".into(),
            seconds: 0,
            detail: error.to_string(),
        })?;
        let label = format!("op=\"{operation}\"");
        Ok(text
            .lines()
            .filter(|line| line.starts_with("haven_storage_requests_total{"))
            .filter(|line| line.contains(&label))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum())
    }
}

impl Drop for StorageNode {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// The node's thread: its own runtime, until `stopped` fires or the node fails.
fn serve(
    args: haven_storage_node::StorageNodeArgs,
    stopped: oneshot::Receiver<()>,
) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("storage-node")
        .enable_all()
        .build()
        .map_err(|error| format!("cannot build the node's runtime: {error}"))?;
    let result = runtime.block_on(async move {
        tokio::select! {
            result = haven_storage_node::run(args) => result.map_err(|error| format!("{error:#}")),
            _ = stopped => Ok(()),
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    result
}

/// Sends the node's logs through the test harness (shown only for failing tests), at
/// `HAVEN_LOG` or `warn` (the node installs no subscriber of its own).
fn quiet_logs() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("HAVEN_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
