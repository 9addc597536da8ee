//! Child processes and loopback ports of tests.
//!
//! A test that starts a real server must never leave it running: every child is held
//! by a [`ChildGuard`], which kills it (SIGKILL) and reaps it when the test ends,
//! however the test ends.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicU32, Ordering};

use crate::FixtureError;

/// First port [`free_port`] tries: below Linux's ephemeral range (32768–60999), so a
/// port handed out here is never also picked by the kernel for another test's
/// `127.0.0.1:0` listener or outgoing connection between our check and the server's
/// bind.
const FIRST_TEST_PORT: u16 = 20_000;
/// Ports [`free_port`] cycles through.
const TEST_PORTS: u32 = 12_000;

/// A loopback port nobody listens on now, for a server the test starts next with a
/// fixed port. Every fixture in a test process shares one counter, so no two tests are
/// handed the same port however they overlap; the bind check skips ports other
/// processes hold.
pub fn free_port() -> Result<u16, FixtureError> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Processes running at the same time start at different places.
    let start = std::process::id() % TEST_PORTS;
    for _ in 0..TEST_PORTS {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed) % TEST_PORTS) % TEST_PORTS;
        let port = FIRST_TEST_PORT + offset as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(FixtureError::io("no free loopback port")(
        std::io::ErrorKind::AddrInUse.into(),
    ))
}

/// Whether something accepts TCP connections on `127.0.0.1:port`.
pub fn is_listening(port: u16) -> bool {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok()
}

/// A child process killed and reaped when dropped.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    program: String,
}

impl ChildGuard {
    /// Starts `command` with standard input closed and both outputs appended to
    /// `log`. `hint` says how to install the program if it is missing.
    pub fn spawn(
        command: &mut Command,
        log: &Path,
        hint: &'static str,
    ) -> Result<Self, FixtureError> {
        let program = command.get_program().to_string_lossy().into_owned();
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(FixtureError::io(format!("cannot open {}", log.display())))?;
        let stderr = log_file
            .try_clone()
            .map_err(FixtureError::io(format!("cannot reopen {}", log.display())))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(stderr)
            .spawn()
            .map_err(FixtureError::starting(&program, hint))?;
        Ok(Self {
            child: Some(child),
            program,
        })
    }

    /// The process id, while the child has not been killed.
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `Some(description)` once the child has exited by itself.
    pub fn exit_status(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(format!("{} exited: {status}", self.program)),
            Ok(None) => None,
            Err(error) => Some(format!("cannot wait for {}: {error}", self.program)),
        }
    }

    /// Kills the child with SIGKILL (no shutdown, no flush) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `command` to completion; its standard output, or an error with its standard
/// error. `hint` says how to install the program if it is missing.
pub fn run(command: &mut Command, hint: &'static str) -> Result<String, FixtureError> {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command
        .output()
        .map_err(FixtureError::starting(&program, hint))?;
    if !output.status.success() {
        let arguments: Vec<_> = command
            .get_args()
            .map(|arg| arg.to_string_lossy())
            .collect();
        return Err(FixtureError::Io {
            context: format!("{program} {}", arguments.join(" ")),
            source: std::io::Error::other(format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Polls `ready` every 50 ms until it returns `Ok(true)`, at most `timeout`.
///
/// `ready` returns `Err(detail)` when waiting longer is pointless (the process died);
/// `what` names the service in the error. Blocking.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> Result<bool, String>,
) -> Result<(), FixtureError> {
    let started = Instant::now();
    let not_ready = |detail: String| FixtureError::NotReady {
        what: what.to_string(),
        seconds: timeout.as_secs(),
        detail,
    };
    loop {
        match ready() {
            Ok(true) => return Ok(()),
            Ok(false) if started.elapsed() >= timeout => {
                return Err(not_ready("still not answering".into()));
            }
            Ok(false) => std::thread::sleep(Duration::from_millis(50)),
            Err(detail) => return Err(not_ready(detail)),
        }
    }
}

/// The body of `GET path` from `127.0.0.1:port` over plain HTTP/1.1, for health and
/// metrics endpoints (no client library, no proxy settings). Blocking.
pub fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    if !head.starts_with("HTTP/1.1 200") {
        let status = head.lines().next().unwrap_or_default();
        return Err(std::io::Error::other(format!("GET {path}: {status}")));
    }
    Ok(body.to_string())
}
