//! The `haven` processes the soak runs, registered so that a killer thread can
//! `kill -9` any of them at any moment, and what each run ended in.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use super::rng::Rng;

/// The running processes, by run number. A process is only reaped while the lock is
/// held, so a pid the killer reads from here is never one the kernel reused.
#[derive(Default)]
pub struct Processes {
    running: Mutex<BTreeMap<u64, Running>>,
    next: Mutex<u64>,
}

struct Running {
    what: &'static str,
    child: Child,
    killed: bool,
}

/// How a run ended.
pub struct Run {
    /// Its exit status.
    pub status: ExitStatus,
    /// Whether the killer sent it SIGKILL.
    pub killed: bool,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl Run {
    /// Exited 0.
    pub fn succeeded(&self) -> bool {
        self.status.success()
    }

    /// The last line of its standard error, for tallies of failures.
    pub fn error_line(&self) -> String {
        let line = self.stderr.lines().rev().find(|l| !l.trim().is_empty());
        line.unwrap_or("(no error output)").to_owned()
    }
}

impl Processes {
    /// Runs `command` (`what` names it in the killer's tally) to its end, killable
    /// meanwhile.
    pub fn run(&self, what: &'static str, mut command: Command) -> Run {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start haven");
        let mut stdout = child.stdout.take().expect("stdout");
        let mut stderr = child.stderr.take().expect("stderr");
        let out = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        let err = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let number = {
            let mut next = self.next.lock().unwrap();
            *next += 1;
            *next
        };
        self.lock().insert(
            number,
            Running {
                what,
                child,
                killed: false,
            },
        );
        let (status, killed) = loop {
            {
                let mut running = self.lock();
                let entry = running.get_mut(&number).expect("registered");
                if let Ok(Some(status)) = entry.child.try_wait() {
                    // A kill that reached a process already exiting does not count.
                    let killed = entry.killed && status.signal() == Some(libc::SIGKILL);
                    running.remove(&number);
                    break (status, killed);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Run {
            status,
            killed,
            stdout: out.join().unwrap_or_default(),
            stderr: err.join().unwrap_or_default(),
        }
    }

    /// Sends SIGKILL to one running process drawn by `rng`; returns what it was, if
    /// any ran.
    pub fn kill_one(&self, rng: &mut Rng) -> Option<&'static str> {
        let mut running = self.lock();
        let live: Vec<u64> = running
            .iter()
            .filter(|(_, run)| !run.killed)
            .map(|(number, _)| *number)
            .collect();
        if live.is_empty() {
            return None;
        }
        let number = live[rng.below(live.len() as u64) as usize];
        let entry = running.get_mut(&number).expect("listed");
        // Not reaped (reaping happens under this lock), so the pid is still ours.
        let _ = entry.child.kill();
        entry.killed = true;
        Some(entry.what)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Running>> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, mut run) in std::mem::take(&mut *self.lock()) {
            let _ = run.child.kill();
            let _ = run.child.wait();
        }
    }
}
