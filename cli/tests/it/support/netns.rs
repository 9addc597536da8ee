//! Linux network namespaces a test makes (`ip netns add`, veth pairs, private
//! addresses) to partition its processes from each other: a hub namespace holding the
//! test's own thread and what it spawns, and spokes, each joined to the hub by one veth
//! pair that [`Star::cut`] brings down and [`Star::heal`] up again. Everything is
//! deleted on drop, also when the test fails.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

use super::process::run;

/// The address the hub answers on for every spoke (on the hub's loopback, so it stays
/// reachable over each spoke's link whatever happens to the others).
pub const HUB_ADDRESS: &str = "10.213.0.1";

/// One named network namespace, deleted (`ip netns del`) on drop.
pub struct Netns {
    name: String,
    /// `/run/netns/NAME`, open for `setns`.
    file: File,
}

impl Netns {
    /// `ip netns add NAME` with its loopback up.
    pub fn add(name: &str) -> Self {
        // A namespace of this name left by a killed earlier run is replaced.
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        run("ip", &["netns", "add", name]);
        let netns = Self {
            name: name.to_owned(),
            file: File::open(format!("/run/netns/{name}")).expect("open the namespace"),
        };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    /// `ip -n NAME ARGS`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all);
    }

    /// Makes `command` start inside this namespace.
    pub fn spawn_inside(&self, command: &mut Command) {
        let fd = self.file.as_raw_fd();
        // SAFETY: only `setns`, async-signal-safe, runs between fork and exec; `fd`
        // stays open in the parent (owned by `self`) until the child has started.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }

    /// Runs `f` on a thread inside this namespace (to reach a server listening on the
    /// namespace's own loopback).
    pub fn run_inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    set_thread_netns(&self.file);
                    f()
                })
                .join()
                .expect("the thread inside the namespace panicked")
        })
    }

    /// Moves the calling thread (and every process it spawns from now on) into this
    /// namespace until the returned guard is dropped.
    pub fn enter(&self) -> Entered {
        let previous = File::open("/proc/thread-self/ns/net").expect("the thread's namespace");
        set_thread_netns(&self.file);
        Entered { previous }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn set_thread_netns(file: &File) {
    // SAFETY: a plain system call on an open namespace file.
    let done = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(done, 0, "setns: {}", std::io::Error::last_os_error());
}

/// The calling thread inside a namespace; back in its previous one when dropped.
pub struct Entered {
    previous: File,
}

impl Drop for Entered {
    fn drop(&mut self) {
        set_thread_netns(&self.previous);
    }
}

/// A hub namespace and spokes joined to it by one veth pair each: spoke `i` (from 1)
/// has `10.213.i.2/24` with its default route through the hub's `10.213.i.1`, and the
/// hub also answers on [`HUB_ADDRESS`]. Spokes reach the hub, not each other.
pub struct Star {
    /// The spokes, in order.
    pub spokes: Vec<Netns>,
    /// The hub.
    pub hub: Netns,
}

impl Star {
    /// Makes the hub and `spokes` spokes, named `PREFIXh` and `PREFIXs1`...
    /// (`PREFIX` short: interface and namespace names are limited).
    pub fn new(prefix: &str, spokes: usize) -> Self {
        let hub = Netns::add(&format!("{prefix}h"));
        hub.ip(&["addr", "add", &format!("{HUB_ADDRESS}/32"), "dev", "lo"]);
        let mut star = Self {
            spokes: Vec::new(),
            hub,
        };
        for i in 1..=spokes {
            let spoke = Netns::add(&format!("{prefix}s{i}"));
            let (hub_end, spoke_end) = (Self::hub_end(i), "uplink");
            run(
                "ip",
                &[
                    "link",
                    "add",
                    &hub_end,
                    "netns",
                    &star.hub.name,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    spoke_end,
                    "netns",
                    &spoke.name,
                ],
            );
            star.hub
                .ip(&["addr", "add", &format!("10.213.{i}.1/24"), "dev", &hub_end]);
            star.hub.ip(&["link", "set", &hub_end, "up"]);
            spoke.ip(&["addr", "add", &format!("10.213.{i}.2/24"), "dev", spoke_end]);
            spoke.ip(&["link", "set", spoke_end, "up"]);
            spoke.ip(&["route", "add", "default", "via", &format!("10.213.{i}.1")]);
            star.spokes.push(spoke);
        }
        star
    }

    fn hub_end(spoke: usize) -> String {
        format!("spoke{spoke}")
    }

    /// Spoke `i` (from 1).
    pub fn spoke(&self, i: usize) -> &Netns {
        &self.spokes[i - 1]
    }

    /// Partitions spoke `i` from the hub: the hub's end of its link goes down, so what
    /// the spoke sends is dropped silently (no refusal, no reset), as on a cut cable.
    pub fn cut(&self, i: usize) {
        self.hub.ip(&["link", "set", &Self::hub_end(i), "down"]);
    }

    /// Ends [`Star::cut`]: the link is up again, with its route.
    pub fn heal(&self, i: usize) {
        self.hub.ip(&["link", "set", &Self::hub_end(i), "up"]);
    }
}
