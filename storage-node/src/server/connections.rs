//! How many connections the node keeps, and which one goes when it is full.
//!
//! Every accepted connection takes a slot of a fixed table (`limits.max_connections`).
//! A connection is *idle* while no request of it is being answered (a request counts
//! from the moment its head is parsed until its response body is dropped, so a long
//! upload or download is never idle). When the table is full, the next connection
//! evicts the one idle the longest and takes its place; only when every connection
//! is busy does accepting wait for one to finish. So a thousand clients that connect
//! and say nothing (or send headers a byte at a time) cannot keep a real client out:
//! they are the first to go. On its own, a connection idle for `limits.idle_timeout`
//! is closed too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The table of open connections.
pub struct ConnectionTable {
    slots: Arc<Semaphore>,
    open: Mutex<HashMap<u64, Arc<Activity>>>,
    next_id: AtomicU64,
    /// When the table was made; idle times are kept as milliseconds since then.
    epoch: Instant,
}

/// What one connection is doing, shared by its task, its requests and the table.
pub struct Activity {
    in_flight: AtomicUsize,
    /// Milliseconds since the table's epoch when the connection last became idle.
    idle_since_ms: AtomicU64,
    evict: Notify,
    epoch: Instant,
}

/// A connection's place in the table; dropping it frees the place.
pub struct Slot {
    table: Arc<ConnectionTable>,
    id: u64,
    activity: Arc<Activity>,
    _permit: OwnedSemaphorePermit,
}

/// A request being answered; the connection is busy while one exists.
pub struct InFlight(Arc<Activity>);

impl ConnectionTable {
    /// A table of `max_connections` places (at least one).
    pub fn new(max_connections: usize) -> Arc<Self> {
        Arc::new(Self {
            slots: Arc::new(Semaphore::new(max_connections.max(1))),
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// A place for a new connection: a free one, else the place of the connection
    /// idle the longest (which is told to close), else the first place a busy
    /// connection frees.
    pub async fn admit(self: &Arc<Self>) -> Slot {
        let permit = match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                self.evict_longest_idle();
                match Arc::clone(&self.slots).acquire_owned().await {
                    Ok(permit) => permit,
                    // The semaphore is never closed.
                    Err(_) => unreachable!("the connection semaphore is never closed"),
                }
            }
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            evict: Notify::new(),
            epoch: self.epoch,
        });
        activity.mark_idle();
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, Arc::clone(&activity));
        Slot {
            table: Arc::clone(self),
            id,
            activity,
            _permit: permit,
        }
    }

    /// Tells the connection idle the longest to close; returns whether there was one.
    fn evict_longest_idle(&self) -> bool {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let victim = open
            .values()
            .filter(|activity| activity.in_flight.load(Ordering::Acquire) == 0)
            .min_by_key(|activity| activity.idle_since_ms.load(Ordering::Acquire));
        match victim {
            Some(activity) => {
                activity.evict.notify_one();
                true
            }
            None => false,
        }
    }
}

impl Activity {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn mark_idle(&self) {
        self.idle_since_ms.store(self.now_ms(), Ordering::Release);
    }

    /// How long the connection has been idle (zero while a request is answered).
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        let since = self.idle_since_ms.load(Ordering::Acquire);
        Duration::from_millis(self.now_ms().saturating_sub(since))
    }
}

impl Slot {
    /// Marks a request of this connection as being answered until the returned
    /// guard is dropped (keep it in the response body).
    pub fn request(&self) -> InFlight {
        self.activity.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(&self.activity))
    }

    /// Resolves when the connection should close: it was evicted to make room,
    /// or it has been idle for `idle_timeout`.
    pub async fn closing(&self, idle_timeout: Duration) -> Closing {
        loop {
            let idle = self.activity.idle_for();
            if idle >= idle_timeout {
                return Closing::Idle;
            }
            tokio::select! {
                () = self.activity.evict.notified() => return Closing::Evicted,
                () = tokio::time::sleep(idle_timeout - idle) => {}
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.table
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.mark_idle();
        }
    }
}

/// Why a connection is being closed by the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closing {
    /// Its place was given to a new connection.
    Evicted,
    /// It was idle for the idle timeout.
    Idle,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_table_evicts_the_longest_idle_connection_and_never_a_busy_one() {
        let table = ConnectionTable::new(2);
        let busy = table.admit().await;
        let request = busy.request();
        let idle = table.admit().await;
        let admitting = tokio::spawn({
            let table = Arc::clone(&table);
            async move { table.admit().await }
        });
        let reason = idle.closing(Duration::from_secs(3600)).await;
        assert_eq!(reason, Closing::Evicted);
        drop(idle);
        let third = admitting.await.expect("admitted");
        // The busy connection keeps its place: with it busy and the third idle, a
        // fourth waits for the third to be evicted, not the busy one.
        let fourth = tokio::spawn({
            let table = Arc::clone(&table);
            async move { table.admit().await }
        });
        assert_eq!(
            third.closing(Duration::from_secs(3600)).await,
            Closing::Evicted
        );
        drop(third);
        let _fourth = fourth.await.expect("admitted");
        assert_eq!(busy.activity.idle_for(), Duration::ZERO);
        drop(request);
    }

    #[tokio::test]
    async fn an_idle_connection_closes_after_the_idle_timeout_and_never_while_busy() {
        let table = ConnectionTable::new(4);
        let slot = table.admit().await;
        let request = slot.request();
        let idle_timeout = Duration::from_millis(50);
        // Busy for many idle timeouts: still open.
        let waiting = tokio::time::timeout(Duration::from_millis(500), slot.closing(idle_timeout));
        assert!(
            waiting.await.is_err(),
            "closed while a request was in flight"
        );
        drop(request);
        assert_eq!(slot.closing(idle_timeout).await, Closing::Idle);
    }
}
