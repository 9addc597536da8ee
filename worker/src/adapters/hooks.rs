//! Commands the operator runs on the worker around a snapshot point: the pre hook
//! before the guest is frozen (an application flushes, a database enters backup
//! mode), the post hook after the thaw, on every path (the application resumes even
//! when the snapshot failed or the backup was cancelled).
//!
//! A hook is a shell command (`sh -c`), run in a process group of its own with the
//! VM's name and the phase in its environment (`HAVEN_VM`, `HAVEN_HOOK=pre|post`, and
//! for the post hook `HAVEN_RESULT=ok|failed|cancelled`). It must exit 0 within the
//! timeout; otherwise its whole group is killed and the failure, with the tail of its
//! output, is reported: a failed pre hook makes the snapshot crash-consistent (the
//! backup goes on, as when the guest agent does not answer: a crash-consistent backup
//! beats none), a failed post hook is a warning of the backup's report.

use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Duration;

/// The worker's hooks around a snapshot point; none configured: nothing runs.
#[derive(Debug, Clone, Default)]
pub struct SnapshotHooks {
    /// Shell command run before the freeze (or the snapshot point, without an agent).
    pub pre: Option<String>,
    /// Shell command run after the thaw, whatever happened.
    pub post: Option<String>,
    /// How long each hook may run before its process group is killed.
    pub timeout: Duration,
}

/// How the snapshot point went, as the post hook is told (`HAVEN_RESULT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointResult {
    /// The point-in-time view was taken.
    Ok,
    /// Taking it failed.
    Failed,
    /// The backup was cancelled while it was being taken.
    Cancelled,
}

impl PointResult {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// Output kept from a failed hook, for its message.
const OUTPUT_TAIL: usize = 400;

impl SnapshotHooks {
    /// Runs the pre hook, if any; the reason the snapshot is only crash-consistent
    /// when it failed or ran out of time.
    pub async fn pre(&self, vm: &str) -> Option<String> {
        let command = self.pre.as_deref()?;
        let result = run(command, vm, "pre", None, self.timeout).await;
        result.err().map(|error| {
            tracing::warn!(vm, %error, "pre-snapshot hook failed: the snapshot is only crash-consistent");
            format!("the pre-snapshot hook {error}")
        })
    }

    /// Runs the post hook, if any, telling it `result`; the warning to report when it
    /// failed or ran out of time.
    pub async fn post(&self, vm: &str, result: PointResult) -> Option<String> {
        let command = self.post.as_deref()?;
        let outcome = run(command, vm, "post", Some(result), self.timeout).await;
        outcome.err().map(|error| {
            tracing::warn!(vm, %error, "post-snapshot hook failed");
            format!("the post-snapshot hook {error}")
        })
    }

    /// A guard that runs the post hook from a task of its own if dropped before
    /// [`PostHookGuard::run`] (the backup was cancelled mid snapshot point), leaving
    /// the task in `late` for the caller to wait for.
    pub fn post_guard(&self, vm: &str, late: &LateHook) -> PostHookGuard {
        PostHookGuard {
            hooks: self.post.is_some().then(|| (self.clone(), vm.to_string())),
            late: late.clone(),
        }
    }
}

/// Where a [`PostHookGuard`] dropped mid snapshot point leaves the task running the
/// post hook, so the backup waits for it before returning (a `haven` that exits ends
/// the task, and kills the hook with it).
pub type LateHook = std::sync::Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>;

/// Waits for a post hook `late` holds, if any (bounded by the hook timeout).
pub async fn wait_late_hook(late: &LateHook) {
    let running = late
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take();
    if let Some(running) = running {
        let _ = running.await;
    }
}

/// Runs the post hook on drop unless [`PostHookGuard::run`] ran it.
pub struct PostHookGuard {
    hooks: Option<(SnapshotHooks, String)>,
    late: LateHook,
}

impl PostHookGuard {
    /// Runs the post hook now, telling it `result`; its warning if it failed.
    pub async fn run(mut self, result: PointResult) -> Option<String> {
        let (hooks, vm) = self.hooks.take()?;
        hooks.post(&vm, result).await
    }
}

impl Drop for PostHookGuard {
    fn drop(&mut self) {
        let Some((hooks, vm)) = self.hooks.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let task = runtime.spawn(async move {
            hooks.post(&vm, PointResult::Cancelled).await;
        });
        *self
            .late
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(task);
    }
}

/// Why a hook failed, in the words of its message ("the pre-snapshot hook …").
#[derive(Debug, thiserror::Error)]
enum HookError {
    #[error("could not start: {0}")]
    Start(std::io::Error),
    #[error("did not finish within {0:?} and was killed")]
    TimedOut(Duration),
    #[error("exited with {status}{output}")]
    Failed {
        status: std::process::ExitStatus,
        output: String,
    },
}

/// Runs `command` with `sh -c` in a process group of its own, killed whole when it
/// runs out of `timeout` or the caller stops waiting.
async fn run(
    command: &str,
    vm: &str,
    phase: &str,
    result: Option<PointResult>,
    timeout: Duration,
) -> Result<(), HookError> {
    let mut process = tokio::process::Command::new("/bin/sh");
    process
        .arg("-c")
        .arg(command)
        .env("HAVEN_VM", vm)
        .env("HAVEN_HOOK", phase)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(result) = result {
        process.env("HAVEN_RESULT", result.as_str());
    }
    process.as_std_mut().process_group(0);
    let child = process.spawn().map_err(HookError::Start)?;
    let mut group = KillGroup(child.id());
    let output = tokio::time::timeout(timeout, child.wait_with_output()).await;
    if output.is_ok() {
        // Ended in time (and its output closed): nothing left to kill.
        group.0 = None;
    }
    drop(group);
    let output = output
        .map_err(|_| HookError::TimedOut(timeout))?
        .map_err(HookError::Start)?;
    if output.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&output.stderr).trim().to_string();
    if text.is_empty() {
        text = String::from_utf8_lossy(&output.stdout).trim().to_string();
    }
    if text.len() > OUTPUT_TAIL {
        let mut start = text.len() - OUTPUT_TAIL;
        while !text.is_char_boundary(start) {
            start += 1;
        }
        text = format!("…{}", &text[start..]);
    }
    Err(HookError::Failed {
        status: output.status,
        output: if text.is_empty() {
            String::new()
        } else {
            format!(": {text}")
        },
    })
}

/// Kills a hook's process group when dropped while set: what the shell started (a
/// `sleep`, a client) must not outlive a hook that timed out or a cancelled backup.
struct KillGroup(Option<u32>);

impl Drop for KillGroup {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|pid| libc::pid_t::try_from(pid).ok()) {
            // SAFETY: killpg on the group this module created for its own child (the
            // group id is the child's pid); no memory is involved. A group already gone
            // answers ESRCH, which is ignored.
            unsafe {
                libc::killpg(pid, libc::SIGKILL);
            }
        }
    }
}
