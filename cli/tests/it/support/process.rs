//! Child processes of the tests: a guard that kills and reaps them, runs that must
//! succeed, waits for readiness, and free loopback ports.

use std::fmt::Debug;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// A child process killed (SIGKILL) and reaped when dropped, so a failing test leaves
/// nothing running.
pub struct Guard(pub Option<Child>);

impl Guard {
    /// Takes charge of a running child.
    pub fn new(child: Child) -> Self {
        Self(Some(child))
    }

    /// The child's process id; the child must not be reaped yet.
    pub fn pid(&self) -> u32 {
        self.0.as_ref().expect("the child is not reaped yet").id()
    }

    /// kill -9 and reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.0
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Waits for a clean exit.
    pub fn wait(&mut self) {
        if let Some(mut child) = self.0.take() {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                assert!(Instant::now() < deadline, "process did not exit");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Starts `command` with its standard output and error appended to the file `log`.
pub fn spawn_logged(command: &mut Command, log: &Path) -> Guard {
    let log = std::fs::File::create(log).unwrap();
    Guard::new(
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// Asserts that a finished command succeeded, showing its output otherwise.
pub fn assert_success(output: &Output, what: impl Debug) {
    assert!(
        output.status.success(),
        "{what:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Asserts success and returns standard output.
pub fn ok(output: Output, what: impl Debug) -> String {
    assert_success(&output, what);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs a program that must succeed (a missing tool fails the test); returns stdout.
pub fn run(program: &str, args: &[&str]) -> String {
    haven_testkit::process::run(
        Command::new(program).args(args),
        "scripts/test.sh installs it",
    )
    .unwrap_or_else(|error| panic!("{error}"))
}

/// Waits until `child` prints a line starting with `prefix` on its (piped) standard
/// output, as a server does once it listens: a Unix socket file exists from bind(), a
/// moment before listen(), so its existence is no sign of readiness. Returns the
/// thread that keeps collecting the output until the child exits.
pub fn wait_for_line(child: &mut Child, prefix: &'static str) -> std::thread::JoinHandle<String> {
    use std::io::BufRead;
    let (seen, ready) = std::sync::mpsc::channel();
    let lines = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
    let collector = std::thread::spawn(move || {
        let mut text = String::new();
        for line in lines.lines().map_while(Result::ok) {
            if line.starts_with(prefix) {
                let _ = seen.send(());
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    match ready.recv_timeout(Duration::from_secs(20)) {
        Ok(()) => collector,
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            panic!("the server exited without printing {prefix:?}")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("the server did not print {prefix:?} within 20 s")
        }
    }
}

/// Waits until a Unix socket accepts connections.
pub fn wait_for_socket(path: &Path, child: &mut Guard) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if UnixStream::connect(path).is_ok() {
            return;
        }
        if let Some(child) = child.0.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            panic!("process exited with {status}: {stderr}");
        }
        assert!(
            Instant::now() < deadline,
            "{} never came up",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A loopback port nobody listens on now (`haven_testkit::process::free_port`: one
/// counter below the kernel's ephemeral range for every fixture of this binary).
pub fn free_port() -> u16 {
    haven_testkit::process::free_port().expect("a free loopback port")
}

/// Runs `command` with its standard error piped and standard output discarded, killing
/// it and failing the test if it runs longer than `limit` (a hang is a bug too);
/// returns its exit status and standard error.
pub fn stderr_within(command: &mut Command, limit: Duration) -> (ExitStatus, String) {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                pipe.read_to_string(&mut stderr).unwrap();
            }
            return (status, stderr);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
