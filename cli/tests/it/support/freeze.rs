//! Instruments for the freeze around a live backup's snapshot point, where no booted
//! guest is needed or the timing must be forced:
//!
//! - [`FakeAgent`]: a `qemu-guest-agent` speaking its JSON protocol on a Unix socket,
//!   answering `guest-sync`, freezing (after a chosen delay) and thawing, and
//!   appending `freeze` / `thaw` to an event file with the time since it started;
//! - [`SlowQmp`]: a proxy in front of a real QMP socket that holds the `transaction`
//!   command (the snapshot point) for a chosen time before passing it on, so a real
//!   QEMU takes its snapshot point late (dropped if its client hangs up meanwhile).
//!
//! Both serve on background threads and stop (socket removed) when dropped.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A listener served by a thread until dropped.
struct Served {
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Served {
    /// Serves every connection to `socket` with `handle`, each on a thread of its own.
    fn start(socket: &Path, handle: impl Fn(UnixStream) + Send + Sync + 'static) -> Self {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let handle = Arc::new(handle);
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let handle = handle.clone();
                    std::thread::spawn(move || handle(stream));
                }
            })
        };
        Self {
            socket: socket.to_path_buf(),
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which then sees the flag.
        let _ = UnixStream::connect(&self.socket);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// A fake guest agent; its events go to a file, one `NAME SECONDS` line each.
pub struct FakeAgent {
    _served: Served,
    events: PathBuf,
}

impl FakeAgent {
    /// Serves at `socket`, answering a freeze after `freeze_delay`; events go to
    /// `events` (appended, so hooks may write to the same file).
    pub fn start(socket: &Path, events: &Path, freeze_delay: Duration) -> Self {
        let started = Instant::now();
        let log = events.to_path_buf();
        let served = Served::start(socket, move |stream| {
            serve_agent(stream, &log, started, freeze_delay);
        });
        Self {
            _served: served,
            events: events.to_path_buf(),
        }
    }

    /// The events so far: `(name, seconds since the agent started)`.
    pub fn events(&self) -> Vec<(String, f64)> {
        std::fs::read_to_string(&self.events)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let (name, seconds) = line.split_once(' ')?;
                Some((name.to_string(), seconds.parse().ok()?))
            })
            .filter(|(name, _)| name == "freeze" || name == "thaw")
            .collect()
    }
}

fn serve_agent(stream: UnixStream, log: &Path, started: Instant, freeze_delay: Duration) {
    let mut writer = stream.try_clone().unwrap();
    let record = |name: &str| {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        writeln!(file, "{name} {:.3}", started.elapsed().as_secs_f64()).unwrap();
    };
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        let Ok(request) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let reply = match request["execute"].as_str().unwrap_or_default() {
            "guest-sync" => json!({"return": request["arguments"]["id"]}),
            "guest-fsfreeze-freeze" => {
                record("freeze");
                std::thread::sleep(freeze_delay);
                json!({"return": 1})
            }
            "guest-fsfreeze-thaw" => {
                record("thaw");
                json!({"return": 1})
            }
            other => json!({"error": {"class": "CommandNotFound", "desc": other}}),
        };
        if writeln!(writer, "{reply}").is_err() {
            return;
        }
    }
}

/// Waits `delay`, or until the peer of `client` hangs up; whether it is still there.
fn hold(client: &UnixStream, delay: Duration) -> bool {
    let until = Instant::now() + delay;
    while Instant::now() < until {
        let mut poll = libc::pollfd {
            fd: client.as_raw_fd(),
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one pollfd on a descriptor `client` keeps open, no timeout.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        if ready > 0 && poll.revents & (libc::POLLRDHUP | libc::POLLHUP) != 0 {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    true
}

/// A QMP proxy that holds the snapshot point's `transaction` for a while.
pub struct SlowQmp {
    _served: Served,
}

impl SlowQmp {
    /// Serves at `socket`, passing everything to and from `upstream` line by line and
    /// holding a `transaction` command for `delay` first.
    pub fn start(socket: &Path, upstream: &Path, delay: Duration) -> Self {
        let upstream = upstream.to_path_buf();
        let served = Served::start(socket, move |client| {
            let Ok(server) = UnixStream::connect(&upstream) else {
                return;
            };
            let (mut to_client, mut to_server) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            let back = std::thread::spawn(move || {
                let _ = std::io::copy(&mut BufReader::new(server), &mut to_client);
            });
            let watched = client.try_clone().unwrap();
            for line in BufReader::new(client).lines() {
                let Ok(line) = line else { break };
                // A held command whose client left is dropped with the connection:
                // QEMU must not take a snapshot point for a backup that is gone.
                if line.contains("\"execute\":\"transaction\"") && !hold(&watched, delay) {
                    break;
                }
                if writeln!(to_server, "{line}").is_err() {
                    break;
                }
            }
            let _ = to_server.shutdown(std::net::Shutdown::Both);
            let _ = back.join();
        });
        Self { _served: served }
    }
}
