//! Random-access reads of one disk of a snapshot, straight from the repository.
//!
//! Instant recovery (`serve-nbd`) and file-level restore read a snapshot the way a
//! guest or a file system driver does: small reads anywhere, often the same chunk many
//! times, sometimes long sequential runs. This reader turns those into as few chunk
//! fetches as possible while never handing out a byte that was not verified:
//!
//! - every chunk goes through [`Repository::read_chunk`] (CRC, AEAD bound to its id,
//!   keyed digest, exact length), so a corrupt or missing chunk is an error, never
//!   wrong data;
//! - zero slots are answered from memory without any I/O;
//! - decoded chunks are kept in an LRU cache bounded by a number of chunks, keyed by
//!   chunk id (so slots sharing a chunk share the cache entry);
//! - concurrent reads of the same chunk share one fetch;
//! - a read that continues where the previous one ended starts fetching the next
//!   `read_ahead` chunks in the background.
//!
//! Memory is bounded by `cache_chunks + read_ahead + concurrent readers` chunks.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use haven_repo::{ChunkId, FixedIndex, RepoError, Repository, SnapshotId, SnapshotRef};

use crate::error::WorkerError;

/// Why a read of a snapshot failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SnapshotReadError {
    /// The chunk could not be fetched or did not verify; no byte of it is returned.
    #[error("chunk {chunk} at offset {offset}: {source}")]
    Chunk {
        /// Id of the chunk.
        chunk: ChunkId,
        /// First byte of the slot that needed it.
        offset: u64,
        /// What the repository reported (shared by every reader that waited for it).
        #[source]
        source: Arc<RepoError>,
    },
    /// The read goes past the end of the disk.
    #[error("read of {length} bytes at offset {offset} goes past the disk end {size}")]
    OutOfRange {
        /// First byte asked for.
        offset: u64,
        /// Bytes asked for.
        length: u64,
        /// Disk size.
        size: u64,
    },
    /// A background task died (runtime shutting down).
    #[error("chunk fetch task failed: {0}")]
    Task(String),
}

impl SnapshotReadError {
    /// Whether a later read of the same range may succeed (network trouble) rather than
    /// hit the same corruption again.
    pub fn is_retryable(&self) -> bool {
        match self {
            SnapshotReadError::Chunk { source, .. } => source.is_retryable(),
            SnapshotReadError::OutOfRange { .. } => false,
            SnapshotReadError::Task(_) => true,
        }
    }
}

impl From<SnapshotReadError> for std::io::Error {
    fn from(error: SnapshotReadError) -> Self {
        let kind = match error {
            SnapshotReadError::OutOfRange { .. } => std::io::ErrorKind::UnexpectedEof,
            _ => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, error)
    }
}

/// Tuning of a [`SnapshotReader`].
#[derive(Debug, Clone, Copy)]
pub struct ReaderOptions {
    /// Decoded chunks kept in memory (at least 1).
    pub cache_chunks: usize,
    /// Chunks fetched ahead of a sequential reader (0 disables read-ahead).
    pub read_ahead: usize,
}

impl Default for ReaderOptions {
    fn default() -> Self {
        Self {
            cache_chunks: 64,
            read_ahead: 4,
        }
    }
}

/// Counters of a reader, for reports and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReaderStats {
    /// Chunks fetched from the repository (each verified).
    pub chunks_fetched: u64,
    /// Chunk reads answered from the cache.
    pub cache_hits: u64,
    /// Chunk reads that joined a fetch already in flight.
    pub joined_fetches: u64,
    /// Slot reads answered as zeros without I/O.
    pub zero_reads: u64,
    /// Chunks fetched by read-ahead (included in `chunks_fetched`).
    pub read_ahead_fetches: u64,
}

type ChunkResult = Result<Arc<Vec<u8>>, SnapshotReadError>;
type ChunkFetch = Shared<BoxFuture<'static, ChunkResult>>;

#[derive(Default)]
struct Counters {
    chunks_fetched: AtomicU64,
    cache_hits: AtomicU64,
    joined_fetches: AtomicU64,
    zero_reads: AtomicU64,
    read_ahead_fetches: AtomicU64,
}

/// An LRU map of chunk id to decoded chunk, bounded by entry count.
struct ChunkCache {
    capacity: usize,
    tick: u64,
    entries: HashMap<ChunkId, (Arc<Vec<u8>>, u64)>,
    by_age: BTreeMap<u64, ChunkId>,
}

impl ChunkCache {
    fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            tick: 0,
            entries: HashMap::new(),
            by_age: BTreeMap::new(),
        }
    }

    fn get(&mut self, id: &ChunkId) -> Option<Arc<Vec<u8>>> {
        self.tick += 1;
        let tick = self.tick;
        let (data, age) = self.entries.get_mut(id)?;
        self.by_age.remove(age);
        *age = tick;
        self.by_age.insert(tick, *id);
        Some(data.clone())
    }

    fn contains(&self, id: &ChunkId) -> bool {
        self.entries.contains_key(id)
    }

    fn insert(&mut self, id: ChunkId, data: Arc<Vec<u8>>) {
        self.tick += 1;
        if let Some((_, age)) = self.entries.insert(id, (data, self.tick)) {
            self.by_age.remove(&age);
        }
        self.by_age.insert(self.tick, id);
        while self.entries.len() > self.capacity {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
        }
    }
}

enum Lookup {
    Cached(Arc<Vec<u8>>),
    InFlight(ChunkFetch),
    Missing,
}

struct State {
    cache: ChunkCache,
    in_flight: HashMap<ChunkId, ChunkFetch>,
    /// Slot just after the end of the previous read, to detect sequential access.
    next_expected_slot: Option<usize>,
}

struct Inner {
    repo: Arc<Repository>,
    index: FixedIndex,
    options: ReaderOptions,
    state: Mutex<State>,
    counters: Counters,
}

/// Random-access reader of one disk of a snapshot. Cheap to clone; clones share the
/// cache, the in-flight fetches and the counters.
#[derive(Clone)]
pub struct SnapshotReader {
    inner: Arc<Inner>,
    snapshot: SnapshotId,
    disk: String,
}

impl std::fmt::Debug for SnapshotReader {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SnapshotReader")
            .field("snapshot", &self.snapshot)
            .field("disk", &self.disk)
            .field("size", &self.size())
            .finish_non_exhaustive()
    }
}

impl SnapshotReader {
    /// Resolves `reference`, reads its manifest and the index of `disk` (which may be
    /// left out for a one-disk snapshot).
    pub async fn open(
        repo: Arc<Repository>,
        reference: &SnapshotRef,
        disk: Option<&str>,
        options: ReaderOptions,
    ) -> Result<Self, WorkerError> {
        let (snapshot, entry, index) = super::open_disk(&repo, reference, disk).await?;
        Ok(Self::from_index(repo, snapshot, entry.name, index, options))
    }

    /// Builds a reader over an index already read and checked.
    pub fn from_index(
        repo: Arc<Repository>,
        snapshot: SnapshotId,
        disk: String,
        index: FixedIndex,
        options: ReaderOptions,
    ) -> Self {
        let state = State {
            cache: ChunkCache::new(options.cache_chunks),
            in_flight: HashMap::new(),
            next_expected_slot: None,
        };
        Self {
            inner: Arc::new(Inner {
                repo,
                index,
                options,
                state: Mutex::new(state),
                counters: Counters::default(),
            }),
            snapshot,
            disk,
        }
    }

    /// Disk size in bytes.
    pub fn size(&self) -> u64 {
        self.inner.index.disk_size()
    }

    /// Chunk size of the snapshot's index.
    pub fn chunk_size(&self) -> u32 {
        self.inner.index.chunk_size()
    }

    /// The snapshot read.
    pub fn snapshot(&self) -> &SnapshotId {
        &self.snapshot
    }

    /// The disk read.
    pub fn disk(&self) -> &str {
        &self.disk
    }

    /// The index behind the reader, for callers that plan by slot.
    pub fn index(&self) -> &FixedIndex {
        &self.inner.index
    }

    /// Number of slots that hold data (not all-zero), i.e. the chunks a full read fetches
    /// at most.
    pub fn data_slots(&self) -> usize {
        self.inner
            .index
            .slots()
            .iter()
            .filter(|id| !id.is_zero())
            .count()
    }

    /// Counters so far.
    pub fn stats(&self) -> ReaderStats {
        let counters = &self.inner.counters;
        ReaderStats {
            chunks_fetched: counters.chunks_fetched.load(Ordering::Relaxed),
            cache_hits: counters.cache_hits.load(Ordering::Relaxed),
            joined_fetches: counters.joined_fetches.load(Ordering::Relaxed),
            zero_reads: counters.zero_reads.load(Ordering::Relaxed),
            read_ahead_fetches: counters.read_ahead_fetches.load(Ordering::Relaxed),
        }
    }

    /// Whether `[offset, offset + length)` lies entirely in zero slots, so servers can
    /// report holes without reading.
    pub fn is_zero_range(&self, offset: u64, length: u64) -> bool {
        self.extents(offset, length)
            .iter()
            .all(|&(_, is_zero)| is_zero)
    }

    /// Runs of data and zero slots covering `[offset, offset + length)` clamped to the
    /// disk, as `(length, is_zero)`, merged; at most one entry per slot boundary change.
    pub fn extents(&self, offset: u64, length: u64) -> Vec<(u64, bool)> {
        let index = &self.inner.index;
        let end = offset.saturating_add(length).min(self.size());
        let chunk = u64::from(index.chunk_size());
        let mut runs: Vec<(u64, bool)> = Vec::new();
        let mut position = offset;
        while position < end {
            let slot = (position / chunk) as usize;
            let (_, slot_end) = index.slot_range(slot);
            let piece = slot_end.min(end) - position;
            let is_zero = index.slots()[slot].is_zero();
            match runs.last_mut() {
                Some((run, zero)) if *zero == is_zero => *run += piece,
                _ => runs.push((piece, is_zero)),
            }
            position += piece;
        }
        runs
    }

    /// Fills `buf` with the disk's bytes at `offset`.
    pub async fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), SnapshotReadError> {
        let length = buf.len() as u64;
        let size = self.size();
        if offset.checked_add(length).is_none_or(|end| end > size) {
            return Err(SnapshotReadError::OutOfRange {
                offset,
                length,
                size,
            });
        }
        if buf.is_empty() {
            return Ok(());
        }
        let chunk = u64::from(self.chunk_size());
        let first_slot = (offset / chunk) as usize;
        let last_slot = ((offset + length - 1) / chunk) as usize;
        self.maybe_read_ahead(first_slot, last_slot);
        let mut done = 0usize;
        for slot in first_slot..=last_slot {
            let (slot_start, slot_end) = self.inner.index.slot_range(slot);
            let from = (offset + done as u64).max(slot_start);
            let to = (offset + length).min(slot_end);
            let piece = (to - from) as usize;
            let target = &mut buf[done..done + piece];
            let id = self.inner.index.slots()[slot];
            if id.is_zero() {
                self.inner
                    .counters
                    .zero_reads
                    .fetch_add(1, Ordering::Relaxed);
                target.fill(0);
            } else {
                let data = self.chunk(slot, id).await?;
                let within = (from - slot_start) as usize;
                target.copy_from_slice(&data[within..within + piece]);
            }
            done += piece;
        }
        Ok(())
    }

    /// Reads `length` bytes at `offset` into a new buffer.
    pub async fn read_vec(&self, offset: u64, length: usize) -> Result<Vec<u8>, SnapshotReadError> {
        let mut buf = vec![0u8; length];
        self.read_at(offset, &mut buf).await?;
        Ok(buf)
    }

    /// Blocking form of [`Self::read_at`] for synchronous code (file system drivers)
    /// running on a blocking thread of the runtime `handle`.
    pub fn blocking_read_at(
        &self,
        handle: &tokio::runtime::Handle,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), SnapshotReadError> {
        handle.block_on(self.read_at(offset, buf))
    }

    /// Starts background fetches of the chunks after `last_slot` when this read
    /// continues the previous one.
    fn maybe_read_ahead(&self, first_slot: usize, last_slot: usize) {
        let read_ahead = self.inner.options.read_ahead;
        let sequential = {
            let Ok(mut state) = self.inner.state.lock() else {
                return;
            };
            let expected = state.next_expected_slot;
            // The next read may start in the same slot (small reads) or the one after.
            state.next_expected_slot = Some(last_slot);
            expected.is_some_and(|slot| first_slot == slot || first_slot == slot + 1)
        };
        if read_ahead == 0 || !sequential {
            return;
        }
        let slots = self.inner.index.slots();
        let end = (last_slot + 1 + read_ahead).min(slots.len());
        let ahead = slots.get(last_slot + 1..end).unwrap_or_default();
        for (slot, &id) in (last_slot + 1..).zip(ahead) {
            if id.is_zero() {
                continue;
            }
            let fetch = self.start_fetch(slot, id, true);
            if let Some(fetch) = fetch {
                // Runs to completion on its own and fills the cache.
                tokio::spawn(fetch.map(|_| ()));
            }
        }
    }

    /// Returns the chunk of `slot`, from the cache, a fetch in flight or a new fetch.
    async fn chunk(&self, slot: usize, id: ChunkId) -> ChunkResult {
        loop {
            let fetch = match self.lookup(&id)? {
                Lookup::Cached(data) => return Ok(data),
                Lookup::InFlight(fetch) => fetch,
                Lookup::Missing => match self.start_fetch(slot, id, false) {
                    Some(fetch) => fetch,
                    // Another reader finished it in between: look again.
                    None => continue,
                },
            };
            return fetch.await;
        }
    }

    fn lookup(&self, id: &ChunkId) -> Result<Lookup, SnapshotReadError> {
        let mut state = self
            .inner
            .state
            .lock()
            .map_err(|_| SnapshotReadError::Task("reader state poisoned".into()))?;
        let counters = &self.inner.counters;
        if let Some(data) = state.cache.get(id) {
            counters.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Lookup::Cached(data));
        }
        if let Some(fetch) = state.in_flight.get(id) {
            counters.joined_fetches.fetch_add(1, Ordering::Relaxed);
            return Ok(Lookup::InFlight(fetch.clone()));
        }
        Ok(Lookup::Missing)
    }

    /// Registers and returns a fetch of `id`, unless it is cached or already in flight.
    fn start_fetch(&self, slot: usize, id: ChunkId, read_ahead: bool) -> Option<ChunkFetch> {
        let mut state = self.inner.state.lock().ok()?;
        if state.cache.contains(&id) || state.in_flight.contains_key(&id) {
            return None;
        }
        let (slot_start, slot_end) = self.inner.index.slot_range(slot);
        let inner = self.inner.clone();
        // The fetch runs as its own task so a reader that gives up (a client that
        // disconnects) does not cancel it for the others waiting on it.
        let task = tokio::spawn(async move {
            let result = inner
                .repo
                .read_chunk(id, Some(slot_end - slot_start))
                .await
                .map(Arc::new)
                .map_err(|source| SnapshotReadError::Chunk {
                    chunk: id,
                    offset: slot_start,
                    source: Arc::new(source),
                });
            inner
                .counters
                .chunks_fetched
                .fetch_add(1, Ordering::Relaxed);
            if read_ahead {
                inner
                    .counters
                    .read_ahead_fetches
                    .fetch_add(1, Ordering::Relaxed);
            }
            if let Ok(mut state) = inner.state.lock() {
                if let Ok(data) = &result {
                    state.cache.insert(id, data.clone());
                }
                state.in_flight.remove(&id);
            }
            result
        });
        let fetch: ChunkFetch = async move {
            match task.await {
                Ok(result) => result,
                Err(error) => Err(SnapshotReadError::Task(error.to_string())),
            }
        }
        .boxed()
        .shared();
        state.in_flight.insert(id, fetch.clone());
        Some(fetch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(byte: u8) -> ChunkId {
        ChunkId([byte; 32])
    }

    #[test]
    fn cache_evicts_least_recently_used() {
        let mut cache = ChunkCache::new(2);
        cache.insert(id(1), Arc::new(vec![1]));
        cache.insert(id(2), Arc::new(vec![2]));
        assert!(cache.get(&id(1)).is_some());
        cache.insert(id(3), Arc::new(vec![3]));
        assert!(cache.contains(&id(1)));
        assert!(!cache.contains(&id(2)));
        assert!(cache.contains(&id(3)));
        cache.insert(id(3), Arc::new(vec![4]));
        assert_eq!(cache.entries.len(), 2);
        assert_eq!(cache.by_age.len(), 2);
    }
}
