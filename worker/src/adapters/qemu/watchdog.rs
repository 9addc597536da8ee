//! A thaw that outlives the process that froze the guest.
//!
//! `qemu-guest-agent` has no freeze timeout: a guest frozen by a process that is then
//! killed (`kill -9`, the OOM killer, a crash) stays frozen until somebody thaws it,
//! and every write in it hangs. Nothing inside the dying process can help, so before
//! the freeze a [`ThawWatchdog`] forks a small child process that holds only the read
//! end of a pipe from its parent and the agent socket's address:
//!
//! ```text
//! parent ──pipe──▶ watchdog   one byte: the parent thawed, exit quietly
//!                             EOF (parent died, or gave up)  ─┐
//!                             the bound ran out               ─┴▶ connect to the agent,
//!                                                                 guest-sync, guest-fsfreeze-thaw
//! ```
//!
//! The agent's socket takes one client at a time (QEMU's chardev), so the watchdog
//! connects only when it acts: the parent's connection closes when the parent dies.
//!
//! Why a fork without exec: the guard lives in this library, which does not know the
//! binary it runs in, and needs nothing but a few system calls. The child of a
//! multi-threaded process may only make async-signal-safe calls, so everything it
//! needs (the address, the messages) is prepared before the fork, and the child
//! allocates nothing, takes no lock and only calls `libc` directly.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

/// How long after the freeze limit the watchdog waits, when its parent neither thawed
/// nor died, before it thaws by itself: the parent thaws at the limit, then has this
/// long for the thaw's round trip.
pub const WATCHDOG_GRACE: Duration = Duration::from_secs(10);

/// The least a watchdog's thaw (connect, sync, thaw) is given once it acts: a guest
/// that was mid-freeze answers the sync only after its freeze.
const MIN_THAW_BUDGET: Duration = Duration::from_secs(10);

/// Why no watchdog could be started (the backup then goes on guarded only by its own
/// process, as before).
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    /// A Unix socket address holds at most 107 bytes.
    #[error("the guest agent socket path {0} is too long for a Unix socket address")]
    PathTooLong(String),
    /// `pipe2` or `fork` failed.
    #[error("could not start the thaw watchdog: {0}")]
    Spawn(#[source] std::io::Error),
}

/// The parent's side of a running watchdog: dropping it without
/// [`release`](Self::release) makes the watchdog thaw the guest (the same as the
/// parent dying).
#[derive(Debug)]
pub struct ThawWatchdog {
    /// Write end of the pipe the watchdog waits on.
    pipe: Option<OwnedFd>,
    /// The watchdog's process id.
    pid: libc::pid_t,
}

/// Everything the child needs, prepared before the fork.
struct Plan {
    address: libc::sockaddr_un,
    address_len: libc::socklen_t,
    dev_null: CString,
    sync: Vec<u8>,
    token: Vec<u8>,
    thaw: Vec<u8>,
    bound_ms: i64,
    thaw_ms: i64,
}

impl ThawWatchdog {
    /// Starts a watchdog that thaws the guest behind the agent socket `socket` when
    /// this process dies or drops the guard, or, if neither happens, `bound` after now.
    /// Its thaw is given `thaw_budget` (at least 10 s) once it acts.
    pub fn spawn(
        socket: &Path,
        bound: Duration,
        thaw_budget: Duration,
    ) -> Result<Self, WatchdogError> {
        let plan = Plan::new(socket, bound, thaw_budget)?;
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a valid array of two ints.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(WatchdogError::Spawn(std::io::Error::last_os_error()));
        }
        // SAFETY: pipe2 returned two open descriptors that nothing else owns.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: the child runs only `watch`, which makes async-signal-safe calls on
        // memory prepared before the fork and ends in `_exit`.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(WatchdogError::Spawn(std::io::Error::last_os_error()));
        }
        if pid == 0 {
            watch(read.as_raw_fd(), &plan);
        }
        drop(read);
        // Reap it whenever it ends, without holding anything of the caller's.
        std::thread::Builder::new()
            .name("haven-thaw-watchdog".into())
            .spawn(move || {
                let mut status = 0;
                // SAFETY: waits for our own child.
                unsafe { libc::waitpid(pid, &mut status, 0) };
            })
            .map_err(WatchdogError::Spawn)?;
        Ok(Self {
            pipe: Some(write),
            pid,
        })
    }

    /// The watchdog's process id (for logs and tests).
    pub fn pid(&self) -> u32 {
        self.pid.unsigned_abs()
    }

    /// The guest was thawed: the watchdog exits without touching the agent.
    pub fn release(mut self) {
        if let Some(pipe) = self.pipe.take() {
            // SAFETY: writes one byte from a valid buffer to our own descriptor.
            let _ = unsafe { libc::write(pipe.as_raw_fd(), b"x".as_ptr().cast(), 1) };
        }
    }
}

impl Plan {
    fn new(socket: &Path, bound: Duration, thaw_budget: Duration) -> Result<Self, WatchdogError> {
        // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
        let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        address.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = socket.as_os_str().as_bytes();
        if bytes.is_empty() || bytes.len() >= address.sun_path.len() || bytes.contains(&0) {
            return Err(WatchdogError::PathTooLong(socket.display().to_string()));
        }
        for (slot, byte) in address.sun_path.iter_mut().zip(bytes) {
            *slot = *byte as libc::c_char;
        }
        let address_len =
            (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
        // A number unlikely to appear in any other reply; its first digit occurs once,
        // so the child's matcher need not backtrack.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or(0);
        let mut token = String::from("9");
        let mut seed = nanos ^ (u128::from(std::process::id()) << 40);
        for _ in 0..14 {
            token.push(char::from(b'0' + (seed % 9) as u8));
            seed /= 9;
        }
        let sync = format!("{{\"execute\":\"guest-sync\",\"arguments\":{{\"id\":{token}}}}}\n");
        Ok(Self {
            address,
            address_len,
            dev_null: CString::from(c"/dev/null"),
            sync: sync.into_bytes(),
            token: token.into_bytes(),
            thaw: b"{\"execute\":\"guest-fsfreeze-thaw\"}\n".to_vec(),
            bound_ms: millis(bound),
            thaw_ms: millis(thaw_budget.max(MIN_THAW_BUDGET)),
        })
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX / 2)
}

/// The child: waits on the pipe (fd `read`), then thaws unless released. Never returns.
fn watch(read: libc::c_int, plan: &Plan) -> ! {
    // SAFETY (whole function): only async-signal-safe calls on memory prepared before
    // the fork; nothing allocates.
    unsafe {
        // Out of the parent's process group (a terminal's Ctrl-C is for the parent,
        // which thaws by itself), deaf to the signals that stop a service: it must
        // outlive its parent, and ends by itself within its bound.
        libc::setpgid(0, 0);
        for signal in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGPIPE,
        ] {
            libc::signal(signal, libc::SIG_IGN);
        }
        // Keep only the pipe (as fd 3) and /dev/null as standard streams: inherited
        // descriptors (the parent's agent connection above all, and the test
        // harness's output pipes) must close when the parent dies.
        let pipe = libc::fcntl(read, libc::F_DUPFD, 3);
        let null = libc::open(plan.dev_null.as_ptr(), libc::O_RDWR);
        if null >= 0 {
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
        }
        if pipe != 3 {
            libc::dup2(pipe, 3);
        }
        if libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32) != 0 {
            for fd in 4..4096 {
                libc::close(fd);
            }
        }
        let deadline = now_ms() + plan.bound_ms;
        loop {
            let left = deadline - now_ms();
            if left <= 0 {
                break;
            }
            let mut poll = libc::pollfd {
                fd: 3,
                events: libc::POLLIN,
                revents: 0,
            };
            let ready = libc::poll(&mut poll, 1, left.min(i64::from(i32::MAX)) as libc::c_int);
            if ready < 0 {
                if errno() == libc::EINTR {
                    continue;
                }
                break;
            }
            if ready == 0 {
                break;
            }
            let mut byte = 0u8;
            let got = libc::read(3, (&mut byte as *mut u8).cast(), 1);
            if got == 1 {
                libc::_exit(0);
            }
            if got < 0 && errno() == libc::EINTR {
                continue;
            }
            break;
        }
        let deadline = now_ms() + plan.thaw_ms;
        while now_ms() < deadline {
            if thaw_once(plan, deadline) {
                libc::_exit(0);
            }
            let pause = libc::timespec {
                tv_sec: 0,
                tv_nsec: 200_000_000,
            };
            libc::nanosleep(&pause, std::ptr::null_mut());
        }
        libc::_exit(1);
    }
}

/// One connection: sync, thaw, wait for the thaw's reply line. Whether it got one.
unsafe fn thaw_once(plan: &Plan, deadline: i64) -> bool {
    // SAFETY (whole function): async-signal-safe calls on prepared memory.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return false;
        }
        let done = libc::connect(
            fd,
            (&plan.address as *const libc::sockaddr_un).cast(),
            plan.address_len,
        ) == 0
            && write_all(fd, &plan.sync)
            && read_until_token(fd, &plan.token, deadline)
            // The rest of the sync's reply line, so the next line is the thaw's.
            && read_line(fd, deadline)
            && write_all(fd, &plan.thaw)
            && read_line(fd, deadline);
        libc::close(fd);
        done
    }
}

unsafe fn write_all(fd: libc::c_int, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        // SAFETY: a valid buffer of `bytes.len()` bytes.
        let written = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if written < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return false;
        }
        bytes = &bytes[written.unsigned_abs()..];
    }
    true
}

/// Reads one byte before `deadline`; `None` on EOF, error or timeout.
unsafe fn read_byte(fd: libc::c_int, deadline: i64) -> Option<u8> {
    loop {
        let left = deadline - now_ms();
        if left <= 0 {
            return None;
        }
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready =
            unsafe { libc::poll(&mut poll, 1, left.min(i64::from(i32::MAX)) as libc::c_int) };
        if ready < 0 && errno() == libc::EINTR {
            continue;
        }
        if ready <= 0 {
            return None;
        }
        let mut byte = 0u8;
        // SAFETY: reads one byte into a valid buffer.
        let got = unsafe { libc::read(fd, (&mut byte as *mut u8).cast(), 1) };
        match got {
            1 => return Some(byte),
            n if n < 0 && errno() == libc::EINTR => continue,
            _ => return None,
        }
    }
}

/// Skips whatever the channel holds (a late reply to the dead parent) until `token`.
unsafe fn read_until_token(fd: libc::c_int, token: &[u8], deadline: i64) -> bool {
    let mut matched = 0;
    // SAFETY: forwarded.
    while let Some(byte) = unsafe { read_byte(fd, deadline) } {
        matched = if byte == token[matched] {
            matched + 1
        } else {
            usize::from(byte == token[0])
        };
        if matched == token.len() {
            return true;
        }
    }
    false
}

/// Waits for the end of one reply line.
unsafe fn read_line(fd: libc::c_int, deadline: i64) -> bool {
    // SAFETY: forwarded.
    while let Some(byte) = unsafe { read_byte(fd, deadline) } {
        if byte == b'\n' {
            return true;
        }
    }
    false
}

fn now_ms() -> i64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec; clock_gettime is async-signal-safe.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec * 1000 + now.tv_nsec / 1_000_000
}

fn errno() -> libc::c_int {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;
    use std::time::Instant;

    /// A fake agent that answers one client's sync and records its next command
    /// (waiting at most `wait`): what a watchdog sent, if anything.
    fn agent_heard(listener: &UnixListener, wait: Duration) -> Option<String> {
        listener.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + wait;
        let stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(_) => return None,
            }
        };
        stream.set_nonblocking(false).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let sync: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(sync["execute"], "guest-sync", "{line}");
        // A stale reply to the dead parent's freeze comes first.
        writeln!(writer, "{{\"return\": 1}}").unwrap();
        writeln!(writer, "{{\"return\": {}}}", sync["arguments"]["id"]).unwrap();
        line.clear();
        reader.read_line(&mut line).unwrap();
        writeln!(writer, "{{\"return\": 1}}").unwrap();
        Some(line)
    }

    fn listener() -> (tempfile::TempDir, std::path::PathBuf, UnixListener) {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("qga.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        (dir, socket, listener)
    }

    #[test]
    fn a_dropped_guard_is_a_dead_parent_and_thaws() {
        let (_dir, socket, listener) = listener();
        let guard = ThawWatchdog::spawn(&socket, Duration::from_secs(600), Duration::ZERO).unwrap();
        drop(guard);
        let heard = agent_heard(&listener, Duration::from_secs(20)).expect("no thaw");
        assert_eq!(heard.trim(), "{\"execute\":\"guest-fsfreeze-thaw\"}");
    }

    #[test]
    fn a_released_guard_leaves_the_agent_alone() {
        let (_dir, socket, listener) = listener();
        let guard = ThawWatchdog::spawn(&socket, Duration::from_secs(2), Duration::ZERO).unwrap();
        let pid = guard.pid();
        guard.release();
        // Past the bound too: released, it exited without acting.
        assert_eq!(agent_heard(&listener, Duration::from_secs(4)), None);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() {
            assert!(Instant::now() < deadline, "the watchdog {pid} did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    #[test]
    fn a_parent_that_neither_thaws_nor_dies_is_thawed_at_the_bound() {
        let (_dir, socket, listener) = listener();
        let guard = ThawWatchdog::spawn(&socket, Duration::from_secs(1), Duration::ZERO).unwrap();
        let heard = agent_heard(&listener, Duration::from_secs(20)).expect("no thaw");
        assert_eq!(heard.trim(), "{\"execute\":\"guest-fsfreeze-thaw\"}");
        guard.release();
    }

    #[test]
    fn a_socket_path_too_long_for_an_address_is_refused() {
        let long = Path::new("/tmp").join("x".repeat(200));
        let error = ThawWatchdog::spawn(&long, Duration::from_secs(1), Duration::ZERO).unwrap_err();
        assert!(matches!(error, WatchdogError::PathTooLong(_)), "{error}");
    }
}
