//! A TCP proxy that breaks the connections between Haven's processes and a storage
//! node, so that every client and the node's own pulls meet the faults a network and
//! a restarting server cause: connections refused, requests cut part-way (nothing or
//! part of a body arrives), replies cut part-way (the request was applied, its answer
//! lost or short), and delays. It also gives the node a port that stays the same
//! across its restarts, which the processes' repository URLs need.
//!
//! Faults are drawn per connection from a generator seeded from the soak's seed and
//! the connection's number; which request of a keep-alive connection a cut hits
//! depends on the processes' timing, so a replay repeats the schedule, not every byte.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use super::rng::Rng;

/// Faults injected so far, by kind.
#[derive(Default)]
pub struct FaultCounts {
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections closed at once (or whose node was down).
    pub refused: AtomicU64,
    /// Connections whose request stream was cut after some bytes.
    pub requests_cut: AtomicU64,
    /// Connections whose reply stream was cut after some bytes.
    pub replies_cut: AtomicU64,
    /// Reads held back before being forwarded.
    pub delays: AtomicU64,
}

impl FaultCounts {
    /// One line for the report.
    pub fn summary(&self) -> String {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        format!(
            "{} connections: {} refused, {} requests cut, {} replies cut, {} delays",
            get(&self.connections),
            get(&self.refused),
            get(&self.requests_cut),
            get(&self.replies_cut),
            get(&self.delays)
        )
    }

    /// Faults that break a connection (delays not counted).
    pub fn broken(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
            + self.requests_cut.load(Ordering::Relaxed)
            + self.replies_cut.load(Ordering::Relaxed)
    }
}

/// A proxy on a loopback port in front of the node listening on `upstream`.
pub struct FaultProxy {
    /// The port clients connect to.
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl FaultProxy {
    /// Starts relaying to the port `upstream` holds at each connection; with `faulty`,
    /// faults are drawn from `seed`, and counted in `counts`.
    pub fn start(
        upstream: Arc<AtomicU16>,
        faulty: bool,
        seed: u64,
        counts: Arc<FaultCounts>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        std::thread::spawn(move || {
            for (number, client) in listener.incoming().enumerate() {
                if stop_flag.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                counts.connections.fetch_add(1, Ordering::Relaxed);
                let plan = if faulty {
                    Plan::draw(&mut Rng::new(seed ^ (number as u64).wrapping_mul(0x9e37)))
                } else {
                    Plan::CLEAN
                };
                let (counts, port) = (counts.clone(), upstream.load(Ordering::SeqCst));
                std::thread::spawn(move || {
                    relay(client, port, plan, &counts, seed ^ number as u64)
                });
            }
        });
        Self { port, stop }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag and closes the listener.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// What one connection suffers.
#[derive(Clone, Copy)]
struct Plan {
    refuse: bool,
    /// Bytes of the request stream forwarded before it is cut.
    request_budget: Option<u64>,
    /// Bytes of the reply stream forwarded before it is cut.
    reply_budget: Option<u64>,
    /// Chance in 1/64 that a read is held back.
    delay_odds: u64,
}

impl Plan {
    const CLEAN: Plan = Plan {
        refuse: false,
        request_budget: None,
        reply_budget: None,
        delay_odds: 0,
    };

    /// 5% refused, 10% request cut, 10% reply cut, 15% slowed; each cut falls anywhere
    /// in the first 128 KiB of its stream (a later request of a kept-alive one, often).
    fn draw(rng: &mut Rng) -> Plan {
        let mut plan = Plan::CLEAN;
        match rng.below(100) {
            0..5 => plan.refuse = true,
            5..15 => plan.request_budget = Some(rng.below(128 * 1024)),
            15..25 => plan.reply_budget = Some(rng.below(128 * 1024)),
            _ => {}
        }
        if rng.below(100) < 15 {
            plan.delay_odds = 1 + rng.below(8);
        }
        plan
    }
}

fn relay(client: TcpStream, port: u16, plan: Plan, counts: &FaultCounts, seed: u64) {
    let upstream = match TcpStream::connect(("127.0.0.1", port)) {
        Ok(upstream) if !plan.refuse => upstream,
        _ => {
            counts.refused.fetch_add(1, Ordering::Relaxed);
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
    };
    let (Ok(client_writer), Ok(upstream_reader)) = (client.try_clone(), upstream.try_clone())
    else {
        return;
    };
    let replies = std::thread::spawn(move || {
        pump(
            upstream_reader,
            client_writer,
            plan.reply_budget,
            plan.delay_odds,
            seed,
        )
    });
    let requests = pump(
        client,
        upstream,
        plan.request_budget,
        plan.delay_odds,
        !seed,
    );
    let replies = replies.join().unwrap_or_default();
    counts
        .delays
        .fetch_add(requests.delays + replies.delays, Ordering::Relaxed);
    if requests.cut {
        counts.requests_cut.fetch_add(1, Ordering::Relaxed);
    }
    if replies.cut {
        counts.replies_cut.fetch_add(1, Ordering::Relaxed);
    }
}

/// What one direction of a connection went through.
#[derive(Default)]
struct Pumped {
    /// The stream was cut at its budget.
    cut: bool,
    /// Reads held back.
    delays: u64,
}

/// Copies `from` to `to` until the end of `from` (then half-closes `to`), an error, or
/// `budget` bytes (then both connections are cut).
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    budget: Option<u64>,
    delay_odds: u64,
    seed: u64,
) -> Pumped {
    let mut rng = Rng::new(seed);
    let mut pumped = Pumped::default();
    let mut left = budget.unwrap_or(u64::MAX);
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer) {
            Ok(0) | Err(_) => {
                let _ = to.shutdown(Shutdown::Write);
                return pumped;
            }
            Ok(read) => read,
        };
        if delay_odds > rng.below(64) {
            pumped.delays += 1;
            std::thread::sleep(Duration::from_millis(rng.below(30)));
        }
        let forward = (read as u64).min(left) as usize;
        if to.write_all(&buffer[..forward]).is_err() {
            let _ = from.shutdown(Shutdown::Both);
            return pumped;
        }
        left -= forward as u64;
        if left == 0 {
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
            pumped.cut = true;
            return pumped;
        }
    }
}
