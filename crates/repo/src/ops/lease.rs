//! Who is working on a repository right now: backup leases, garbage-collection locks
//! and the sweep generation. The protocol they implement is argued in
//! `ARCHITECTURE.md` ("Garbage collection and concurrent backups").
//!
//! ```text
//! locks/backup-ID/0000000000   a running backup: start, last refresh, VM, base snapshot;
//! locks/backup-ID/0000000001   each refresh is a new object, the newest one counts
//! locks/backup-ID/released     written (create-only) when the backup ends
//! locks/gc-ID/…                a running garbage collection, in the same form (several
//!                              may be written; the oldest live one proceeds, the others
//!                              back off)
//! gc/generation                the id of the last collection that started deleting
//! locks/backup-ID              the older single-object form (rewritten in place, deleted
//!                              at release), still read so running older writers count
//! ```
//!
//! Every write of a lease is create-only, so a backup needs a storage key that may
//! create objects but neither overwrite nor delete them (a storage node's `append`
//! key). Readers take the newest record of each lease and skip released ones; a
//! garbage collection, which holds a key that may delete, removes the objects of
//! released and dead leases (the `released` marker last, so a half-removed lease
//! still reads as released).
//!
//! Records are refreshed every [`REFRESH_INTERVAL`]; one whose refresh is older than
//! [`STALE_AFTER`], or that names a process on this host that no longer exists, is
//! dead. A backup takes its lease before it reads its base or asks whether any chunk
//! exists, and before its manifest it calls [`BackupLease::confirm_chunks`], which
//! re-checks its chunks whenever a collection may have deleted concurrently.
//!
//! One file because backup leases and GC locks are one protocol: each side's reads and
//! writes are only correct against the other's, and reviewing them apart would hide that.

mod pins;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{RepoError, Result};
use crate::format::chunk::ChunkId;
use crate::format::index::FixedIndex;
use crate::format::manifest::{format_timestamp, parse_timestamp};
use crate::repository::Repository;
use crate::storage::backend::{Backend, Durability, PutOutcome};

pub use pins::{PinSource, Pins, RepositoryLeases};

/// Folder of lease and lock objects.
pub const LOCKS_PREFIX: &str = "locks";
/// Object naming the last collection that started deleting.
pub const GC_GENERATION_KEY: &str = "gc/generation";
/// How often a holder rewrites its record.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(60);
/// A record not refreshed for this long is dead (its holder hung or lost the storage).
pub const STALE_AFTER: Duration = Duration::from_secs(15 * 60);
/// Tries of a lock's `released` marker before the lock is left to expire by age.
const RELEASE_ATTEMPTS: u32 = 4;
/// Wait before the first retry of a `released` marker (then twice, three times...).
const RELEASE_RETRY_DELAY: Duration = Duration::from_millis(50);
/// How often a backup waiting for a collection to finish looks again.
const WAIT_POLL: Duration = Duration::from_millis(250);
/// How long a backup waits for a running collection before giving up.
const MAX_WAIT: Duration = Duration::from_secs(3600);
/// Existence checks in flight when a backup re-checks its chunks.
const RECHECK_CONCURRENCY: usize = 32;
/// Largest lock record read.
const MAX_RECORD: u64 = 64 * 1024;
/// Last part of the key of the marker a holder writes when it lets go.
const RELEASED: &str = "released";

/// The content of a lease or lock object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LockRecord {
    /// `backup` or `gc`.
    pub kind: String,
    /// Random id, also in the object's key.
    pub id: String,
    /// Host name of the holder.
    pub host: String,
    /// Process id of the holder.
    pub pid: u32,
    /// Start time of that process in clock ticks since boot (tells a reused pid apart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_start: Option<u64>,
    /// When the holder started, RFC 3339.
    pub started: String,
    /// When the holder last rewrote the record, RFC 3339.
    pub refreshed: String,
    /// VM being backed up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    /// Timestamp of the base snapshot (same VM) whose index the backup reuses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// Set in the `released` marker (readers go by the marker's key; the field
    /// tells a human, or an older reader that takes every object for a record).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub released: bool,
}

impl LockRecord {
    fn new(kind: &str, vm: Option<&str>, base: Option<&str>) -> Result<Self> {
        let now = format_timestamp(OffsetDateTime::now_utc());
        let mut random = [0u8; 8];
        crate::format::crypto::fill_random(&mut random)?;
        Ok(Self {
            kind: kind.to_string(),
            id: hex::encode(random),
            host: host_name(),
            pid: std::process::id(),
            process_start: process_start(std::process::id()),
            started: now.clone(),
            refreshed: now,
            vm: vm.map(str::to_string),
            base: base.map(str::to_string),
            released: false,
        })
    }

    /// The lease's name, `locks/KIND-ID`: the folder of its records (the key of the
    /// single object in the older form).
    pub fn key(&self) -> String {
        format!("{LOCKS_PREFIX}/{}-{}", self.kind, self.id)
    }

    /// The key of the `sequence`-th record written by the holder (0 at creation).
    fn record_key(&self, sequence: u64) -> String {
        format!("{}/{sequence:010}", self.key())
    }

    /// The key of the marker written at release.
    fn released_key(&self) -> String {
        format!("{}/{RELEASED}", self.key())
    }

    /// Start time; unreadable times count as the epoch (oldest possible: conservative).
    pub fn started_at(&self) -> OffsetDateTime {
        parse_timestamp(&self.started).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// Whether the holder may still be working: refreshed within `stale_after` and, on
    /// this host, its process still exists.
    pub fn is_live(&self, now: OffsetDateTime, stale_after: Duration) -> bool {
        if self.host == host_name() && !process_alive(self.pid, self.process_start) {
            return false;
        }
        match parse_timestamp(&self.refreshed) {
            Ok(refreshed) => refreshed + stale_after > now,
            // A record we cannot date is treated as live until it is removed by hand:
            // wrongly thinking a backup is dead could cost data.
            Err(_) => true,
        }
    }

    fn encode(&self) -> Result<Bytes> {
        serde_json::to_vec_pretty(self)
            .map(Bytes::from)
            .map_err(|error| RepoError::Io {
                context: "cannot encode a lock record".into(),
                source: std::io::Error::other(error),
            })
    }
}

/// The objects of one lease or lock, as listed.
#[derive(Debug, Default)]
struct LeaseObjects {
    /// Every object of the lease (records, marker, or the single older-form object).
    keys: Vec<String>,
    /// The record that counts: the highest sequence number, or the older-form object.
    newest: Option<String>,
    /// Whether the `released` marker exists.
    released: bool,
}

impl LeaseObjects {
    /// The keys in the order a removal must follow: the marker last, so that a
    /// removal cut short leaves a lease that still reads as released.
    fn removal_order(&self) -> impl Iterator<Item = &String> {
        let is_marker = |key: &&String| key.ends_with(&format!("/{RELEASED}"));
        let records = self.keys.iter().filter(move |key| !is_marker(key));
        records.chain(self.keys.iter().filter(is_marker))
    }
}

/// Every lease or lock of `kind`, by name (`locks/KIND-ID`), from one listing.
async fn list_leases(
    backend: &Backend,
    kind: &str,
) -> Result<std::collections::BTreeMap<String, LeaseObjects>> {
    let prefix = format!("{LOCKS_PREFIX}/{kind}-");
    let mut leases = std::collections::BTreeMap::<String, LeaseObjects>::new();
    for key in backend.list(LOCKS_PREFIX).await? {
        let Some(rest) = key.strip_prefix(&prefix) else {
            continue;
        };
        let (id, part) = match rest.split_once('/') {
            Some((id, part)) => (id, Some(part)),
            None => (rest, None),
        };
        let lease = leases.entry(format!("{prefix}{id}")).or_default();
        lease.keys.push(key.clone());
        match part {
            Some(RELEASED) => lease.released = true,
            // Sequence numbers are zero-padded: the greatest key is the newest.
            Some(_) | None => {
                if lease.newest.as_ref().is_none_or(|newest| *newest < key) {
                    lease.newest = Some(key);
                }
            }
        }
    }
    Ok(leases)
}

async fn read_record(backend: &Backend, key: &str) -> Result<Option<LockRecord>> {
    let bytes = match backend.get(key, MAX_RECORD).await {
        Ok(bytes) => bytes,
        // Removed between the listing and the read.
        Err(RepoError::NotFound(_)) => return Ok(None),
        Err(error) => return Err(error),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|error| RepoError::corrupt(key, format!("bad lock record: {error}")))
}

/// The newest record of every lease or lock of `kind` not released (a live holder's
/// record is never partial: writes are atomic).
pub async fn read_records(backend: &Backend, kind: &str) -> Result<Vec<LockRecord>> {
    let mut records = Vec::new();
    for lease in list_leases(backend, kind).await?.into_values() {
        if lease.released {
            continue;
        }
        let Some(newest) = &lease.newest else {
            continue;
        };
        if let Some(record) = read_record(backend, newest).await? {
            records.push(record);
        }
    }
    Ok(records)
}

/// The live records of `kind`.
pub async fn live_records(backend: &Backend, kind: &str) -> Result<Vec<LockRecord>> {
    let now = OffsetDateTime::now_utc();
    Ok(read_records(backend, kind)
        .await?
        .into_iter()
        .filter(|record| record.is_live(now, STALE_AFTER))
        .collect())
}

async fn read_generation(backend: &Backend) -> Result<Option<String>> {
    match backend.get(GC_GENERATION_KEY, MAX_RECORD).await {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(RepoError::NotFound(_)) => Ok(None),
        Err(error) => Err(error),
    }
}

/// A lease or lock this process holds: its first record written at creation, a new
/// record every [`REFRESH_INTERVAL`] by a background task, the `released` marker at
/// release (or, best effort, on drop). Every write is create-only.
#[derive(Debug)]
struct Held {
    backend: Backend,
    record: LockRecord,
    /// When the last refresh succeeded.
    last_refresh: Arc<Mutex<Instant>>,
    refresher: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Writes `key` only if absent, durably; an existing object is an error (the keys
/// are random or sequence-numbered, so it means another writer used the same name).
async fn create_record(backend: &Backend, key: &str, record: &LockRecord) -> Result<()> {
    match backend
        .put_if_absent(key, record.encode()?, Durability::Immediate)
        .await?
    {
        PutOutcome::Created => Ok(()),
        PutOutcome::AlreadyExisted => Err(RepoError::AlreadyExists(key.to_owned())),
    }
}

impl Held {
    async fn create(backend: &Backend, record: LockRecord) -> Result<Self> {
        let key = record.record_key(0);
        match create_record(backend, &key, &record).await {
            Ok(()) => {}
            // The key holds a random id: what is stored there is this very record
            // when a delivery of the write was duplicated; anything else is another
            // writer's, not ours to release.
            Err(error @ RepoError::AlreadyExists(_)) => {
                if backend.get(&key, MAX_RECORD).await.ok() != Some(record.encode()?) {
                    return Err(error);
                }
            }
            Err(error) => {
                // The write may have been stored with its reply lost: a record nobody
                // holds would stay live until it goes stale (a collection's lock
                // stops every backup's commit meanwhile), so release it now.
                if let Err(release) = write_released(backend, &record).await {
                    tracing::warn!(lease = %record.key(), error = %release, "cannot release a lock record whose creation failed; it expires by age");
                }
                return Err(error);
            }
        }
        let last_refresh = Arc::new(Mutex::new(Instant::now()));
        let refresher = tokio::spawn(refresh_loop(
            backend.clone(),
            record.clone(),
            last_refresh.clone(),
        ));
        Ok(Self {
            backend: backend.clone(),
            record,
            last_refresh,
            refresher: Mutex::new(Some(refresher)),
        })
    }

    /// Whether the record was rewritten recently enough that nobody can judge it stale
    /// before `STALE_AFTER / 2` more has passed.
    fn is_fresh(&self) -> bool {
        self.last_refresh
            .lock()
            .map(|last| last.elapsed() < STALE_AFTER / 2)
            .unwrap_or(false)
    }

    /// Whether the lease's first record is still stored: a collection that judged the
    /// holder dead removed it.
    async fn still_stored(&self) -> Result<bool> {
        self.backend.exists(&self.record.record_key(0)).await
    }

    fn stop_refreshing(&self) -> bool {
        match self.refresher.lock() {
            Ok(mut refresher) => match refresher.take() {
                Some(task) => {
                    task.abort();
                    true
                }
                None => false,
            },
            Err(_) => false,
        }
    }

    /// Stops refreshing and writes the `released` marker.
    async fn release(&self) -> Result<()> {
        self.stop_refreshing();
        write_released(&self.backend, &self.record).await
    }

    /// [`Self::release`], then removes every object of the lease (a holder whose key
    /// may delete: garbage collection). The removal is best effort: objects Object
    /// Lock keeps, say, are released all the same and removed by a later collection.
    async fn release_and_remove(&self) -> Result<()> {
        self.release().await?;
        let removed = match list_leases(&self.backend, &self.record.kind)
            .await?
            .remove(&self.record.key())
        {
            Some(lease) => remove_lease(&self.backend, &lease).await,
            None => Ok(()),
        };
        if let Err(error) = removed {
            tracing::warn!(lease = %self.record.key(), %error, "cannot remove a released lock");
        }
        Ok(())
    }
}

/// Writes the `released` marker of `record`, retrying storage errors a few times: a
/// lock left unreleased by one failed request blocks others until it goes stale, and
/// the marker is create-only, so a retry after a lost reply is harmless.
async fn write_released(backend: &Backend, record: &LockRecord) -> Result<()> {
    let mut marker = record.clone();
    marker.released = true;
    let mut attempt = 1;
    loop {
        marker.refreshed = format_timestamp(OffsetDateTime::now_utc());
        match create_record(backend, &record.released_key(), &marker).await {
            // Released twice (an explicit release, then a retry): the same outcome.
            Ok(()) | Err(RepoError::AlreadyExists(_)) => return Ok(()),
            Err(error) if attempt >= RELEASE_ATTEMPTS => return Err(error),
            Err(error) => {
                tracing::debug!(lease = %record.key(), %error, attempt, "releasing a lock record failed; retrying");
                tokio::time::sleep(RELEASE_RETRY_DELAY * attempt).await;
                attempt += 1;
            }
        }
    }
}

async fn remove_lease(backend: &Backend, lease: &LeaseObjects) -> Result<()> {
    for key in lease.removal_order() {
        backend.delete(key).await?;
    }
    Ok(())
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.stop_refreshing() {
            return;
        }
        // Not released explicitly (an error path): mark the lease released if a runtime
        // is still there; otherwise it dies with this process (same-host check) or by
        // age.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let backend = self.backend.clone();
            let record = self.record.clone();
            runtime.spawn(async move {
                let _ = write_released(&backend, &record).await;
            });
        }
    }
}

async fn refresh_loop(backend: Backend, mut record: LockRecord, last: Arc<Mutex<Instant>>) {
    for sequence in 1.. {
        tokio::time::sleep(REFRESH_INTERVAL).await;
        match refresh(&backend, &mut record, sequence).await {
            Ok(()) => {
                if let Ok(mut last) = last.lock() {
                    *last = Instant::now();
                }
            }
            Err(error) => tracing::warn!(key = %record.key(), %error, "cannot refresh lock record"),
        }
    }
}

/// Writes the `sequence`-th record of a lease, refreshed now. A failed write is not
/// retried under the same number (it may have been stored after all).
async fn refresh(backend: &Backend, record: &mut LockRecord, sequence: u64) -> Result<()> {
    record.refreshed = format_timestamp(OffsetDateTime::now_utc());
    create_record(backend, &record.record_key(sequence), record).await
}

/// The lease of one running backup.
///
/// Taken by `plan_snapshot` before the base index is read or any chunk's existence is
/// asked; [`Self::confirm_chunks`] runs after the indexes are written and before the
/// manifest; [`Self::release`] after the manifest.
#[derive(Debug)]
pub struct BackupLease {
    held: Held,
    /// `gc/generation` when the lease was taken.
    generation_at_start: Option<String>,
    /// Whether a live collection held its lock when the lease was taken.
    gc_running_at_start: bool,
}

impl BackupLease {
    /// Writes the lease of a backup of `vm` building on snapshot `base` (a timestamp of
    /// the same VM), then notes the collection state (generation first, then locks:
    /// the order the safety argument needs).
    pub async fn acquire(backend: &Backend, vm: &str, base: Option<&str>) -> Result<Self> {
        let record = LockRecord::new("backup", Some(vm), base)?;
        let held = Held::create(backend, record).await?;
        let generation_at_start = read_generation(backend).await?;
        let gc_running_at_start = !live_records(backend, "gc").await?.is_empty();
        Ok(Self {
            held,
            generation_at_start,
            gc_running_at_start,
        })
    }

    /// The lease's record.
    pub fn record(&self) -> &LockRecord {
        &self.held.record
    }

    /// Call after the snapshot's indexes are written and before its manifest: returns
    /// once every chunk the indexes name is known to stay, or an error if a concurrent
    /// collection removed one (the backup must then be run again; nothing is lost).
    ///
    /// If no collection ran between the lease and now, nothing is checked. Otherwise
    /// this waits until no collection is running (any later one marks from these
    /// indexes) and checks that every chunk still exists.
    pub async fn confirm_chunks(&self, repo: &Repository, indexes: &[&FixedIndex]) -> Result<()> {
        let backend = repo.backend();
        let mut must_check = self.gc_running_at_start;
        let waited_since = Instant::now();
        while !live_records(backend, "gc").await?.is_empty() {
            must_check = true;
            if waited_since.elapsed() > MAX_WAIT {
                return Err(RepoError::Busy(
                    "a garbage collection has been running for over an hour; the backup cannot commit meanwhile".into(),
                ));
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
        if read_generation(backend).await? != self.generation_at_start {
            must_check = true;
        }
        if !self.held.is_fresh() || !self.held.still_stored().await? {
            return Err(RepoError::Busy(format!(
                "the backup's lease {} could not be kept fresh; not committing",
                self.held.record.key()
            )));
        }
        if !must_check {
            return Ok(());
        }
        let mut ids: Vec<ChunkId> = indexes
            .iter()
            .flat_map(|index| index.slots().iter().copied())
            .filter(|id| !id.is_zero())
            .collect();
        ids.sort_unstable_by_key(|id| id.0);
        ids.dedup();
        tracing::info!(
            chunks = ids.len(),
            "a garbage collection ran during this backup; checking its chunks are still stored"
        );
        let mut checks = futures::stream::iter(ids)
            .map(|id| async move { (id, repo.chunk_exists(&id).await) })
            .buffer_unordered(RECHECK_CONCURRENCY);
        let mut missing = 0u64;
        let mut first_missing = None;
        while let Some((id, exists)) = checks.next().await {
            if !exists? {
                missing += 1;
                first_missing.get_or_insert(id);
            }
        }
        match first_missing {
            None => Ok(()),
            Some(id) => Err(RepoError::ConcurrentGc(format!(
                "{missing} chunk(s) this backup relied on were removed (first: {})",
                id.object_key()
            ))),
        }
    }

    /// Marks the lease released (after the manifest is written, or when giving up);
    /// its objects stay until a garbage collection removes them.
    pub async fn release(&self) -> Result<()> {
        self.held.release().await
    }
}

/// The lock of one running garbage collection.
#[derive(Debug)]
pub struct GcLock {
    held: Held,
}

impl GcLock {
    /// Writes this collection's lock, then backs off (removing it again) if any other
    /// live collection lock exists. Of several collections that start at once at most
    /// one proceeds: each lists after writing its own lock, so of any two the later
    /// listing sees both locks (both may back off; then none runs, which is safe).
    pub async fn acquire(backend: &Backend) -> Result<Self> {
        let record = LockRecord::new("gc", None, None)?;
        let held = Held::create(backend, record).await?;
        let now = OffsetDateTime::now_utc();
        for other in read_records(backend, "gc").await? {
            if other.id == held.record.id || !other.is_live(now, STALE_AFTER) {
                continue;
            }
            held.release_and_remove().await?;
            return Err(RepoError::Busy(format!(
                "another garbage collection is running ({} on {}, pid {}, since {})",
                other.key(),
                other.host,
                other.pid,
                other.started
            )));
        }
        remove_dead_records(backend, now).await;
        Ok(Self { held })
    }

    /// The lock's record.
    pub fn record(&self) -> &LockRecord {
        &self.held.record
    }

    /// Fails unless the lock is fresh: checked before every deletion, so a collection
    /// that lost its lock (and may be judged dead by backups) stops deleting.
    pub fn ensure_fresh(&self) -> Result<()> {
        if self.held.is_fresh() {
            Ok(())
        } else {
            Err(RepoError::Busy(
                "the garbage collection lock could not be refreshed; stopping".into(),
            ))
        }
    }

    /// Records that this collection is about to delete: backups that began before
    /// will see the generation change and re-check their chunks.
    pub async fn announce_deletions(&self, backend: &Backend) -> Result<()> {
        backend
            .put_lock_object(
                GC_GENERATION_KEY,
                Bytes::from(self.held.record.id.clone().into_bytes()),
            )
            .await
    }

    /// Releases the lock and removes its objects.
    pub async fn release(&self) -> Result<()> {
        self.held.release_and_remove().await
    }
}

/// Removes the objects of released leases and of dead holders (killed processes,
/// hung ones): harmless, since a released or dead holder no longer acts and a hung one
/// checks that its first record is still there before it commits. Best effort:
/// failures only leave objects that are ignored anyway.
async fn remove_dead_records(backend: &Backend, now: OffsetDateTime) {
    for kind in ["gc", "backup"] {
        let Ok(leases) = list_leases(backend, kind).await else {
            continue;
        };
        for (name, lease) in leases {
            if !lease.released {
                let newest = match &lease.newest {
                    Some(newest) => read_record(backend, newest).await,
                    None => Ok(None),
                };
                match newest {
                    Ok(Some(record)) if !record.is_live(now, STALE_AFTER) => {
                        tracing::info!(lease = %name, host = %record.host, pid = record.pid, "removing a dead lock record");
                    }
                    _ => continue,
                }
            }
            if let Err(error) = remove_lease(backend, &lease).await {
                tracing::warn!(lease = %name, %error, "cannot remove an ended lease");
            }
        }
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Field 22 of `/proc/PID/stat` (start time in ticks), read after the last `)` because
/// the command name may contain anything.
fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether process `pid` (started at `start` ticks, when known) still runs here. Where
/// `/proc` is unavailable every process counts as alive (only age then ends a record).
fn process_alive(pid: u32, start: Option<u64>) -> bool {
    if !std::path::Path::new("/proc/self/stat").exists() {
        return true;
    }
    match (process_start(pid), start) {
        (None, _) => false,
        (Some(now), Some(then)) => now == then,
        (Some(_), None) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_of_a_dead_process_on_this_host_is_dead_and_age_kills_any() {
        let now = OffsetDateTime::now_utc();
        let mut record = LockRecord::new("backup", Some("vm"), None).unwrap();
        assert!(record.is_live(now, STALE_AFTER));
        // Same pid, other start time: the pid was reused.
        record.process_start = record.process_start.map(|start| start + 1);
        assert!(!record.is_live(now, STALE_AFTER));
        let mut other_host = LockRecord::new("backup", Some("vm"), None).unwrap();
        other_host.host = "elsewhere".into();
        other_host.pid = u32::MAX;
        assert!(other_host.is_live(now, STALE_AFTER));
        other_host.refreshed = format_timestamp(now - STALE_AFTER - Duration::from_secs(1));
        assert!(!other_host.is_live(now, STALE_AFTER));
    }

    #[tokio::test]
    async fn the_oldest_collection_wins_and_leases_become_pins() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::from_url(dir.path().to_str().unwrap(), true).unwrap();
        let first = GcLock::acquire(&backend).await.unwrap();
        let error = GcLock::acquire(&backend).await.unwrap_err();
        assert!(matches!(error, RepoError::Busy(_)), "{error}");
        assert_eq!(live_records(&backend, "gc").await.unwrap().len(), 1);
        first.release().await.unwrap();
        let second = GcLock::acquire(&backend).await.unwrap();
        second.release().await.unwrap();
        assert!(read_records(&backend, "gc").await.unwrap().is_empty());

        let lease = BackupLease::acquire(&backend, "web1", Some("2026-01-02T03:04:05Z"))
            .await
            .unwrap();
        let records = live_records(&backend, "backup").await.unwrap();
        assert_eq!(records, vec![lease.record().clone()]);
        lease.release().await.unwrap();
        assert!(live_records(&backend, "backup").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn leases_are_written_create_only_and_a_collection_removes_released_ones() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::from_url(dir.path().to_str().unwrap(), true).unwrap();
        let lease = BackupLease::acquire(&backend, "web1", None).await.unwrap();
        let mut record = lease.record().clone();
        refresh(&backend, &mut record, 1).await.unwrap();
        let error = refresh(&backend, &mut record, 1).await.unwrap_err();
        assert!(matches!(error, RepoError::AlreadyExists(_)), "{error}");
        assert_eq!(
            live_records(&backend, "backup").await.unwrap(),
            vec![record.clone()],
            "the newest record counts"
        );
        lease.release().await.unwrap();
        assert!(live_records(&backend, "backup").await.unwrap().is_empty());
        let mut objects = backend.list(&record.key()).await.unwrap();
        objects.sort();
        assert_eq!(
            objects,
            [
                record.record_key(0),
                record.record_key(1),
                record.released_key()
            ]
        );
        let collection = GcLock::acquire(&backend).await.unwrap();
        collection.release().await.unwrap();
        assert!(backend.list(LOCKS_PREFIX).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn older_single_object_leases_count_until_dead_and_are_then_removed() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::from_url(dir.path().to_str().unwrap(), true).unwrap();
        let mut record = LockRecord::new("backup", Some("vm"), None).unwrap();
        record.host = "elsewhere".into();
        let write = |record: &LockRecord| {
            let (backend, record) = (backend.clone(), record.clone());
            async move {
                backend
                    .put_lock_object(&record.key(), record.encode().unwrap())
                    .await
                    .unwrap()
            }
        };
        write(&record).await;
        assert_eq!(
            live_records(&backend, "backup").await.unwrap(),
            vec![record.clone()]
        );
        let now = OffsetDateTime::now_utc();
        record.refreshed = format_timestamp(now - STALE_AFTER - Duration::from_secs(1));
        write(&record).await;
        assert!(live_records(&backend, "backup").await.unwrap().is_empty());
        assert_eq!(read_records(&backend, "backup").await.unwrap().len(), 1);
        let collection = GcLock::acquire(&backend).await.unwrap();
        collection.release().await.unwrap();
        assert!(backend.list(LOCKS_PREFIX).await.unwrap().is_empty());
    }
}
