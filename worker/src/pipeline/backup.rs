//! The backup pipeline: one disk, read over NBD or in place, into chunks in a repository.
//!
//! ```text
//! planner ──jobs──▶ read (NBD connections or a local disk) ─▶ hash ─▶ known? ─▶ exists? ─▶ seal ─▶ put
//!  allocation      at most `in_flight` slots in these stages at once            upload window
//! ```
//!
//! The planner walks the disk in windows, asking which slots need reading
//! (`base:allocation` and, for an incremental, a dirty bitmap; for a raw file its
//! holes), so holes and zero extents are never read and clean slots keep the id they had
//! in the base snapshot. Reading, hashing, compression and encryption run for up to
//! `in_flight` slots concurrently (blocking threads on both cores). Sealed chunks bound
//! for a remote repository then wait for their upload in a window of their own
//! ([`UPLOAD_WINDOW_BYTES`]): a put into a storage node or S3 answers only once the
//! object is durable there, and with only `in_flight` chunks on their way the pipeline
//! would wait on that round trip instead of reading on. Memory is `in_flight` chunks
//! plus that window plus the index, whatever the disk size.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use futures::StreamExt;
use haven_nbd::{
    CONTEXT_BASE_ALLOCATION, Client, ConnectOptions, Endpoint, Extent, STATE_DIRTY, STATE_ZERO,
};
use haven_repo::{ChunkId, DiskStats, FixedIndex, Progress, PutOutcome, Repository, is_all_zero};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::error::{Result, WorkerError};
use crate::pipeline::local_disk::LocalDisk;
use crate::pipeline::pool::{BufferPool, ClientPool, PooledBuffer};
use crate::pipeline::ranged::{self, ByteArea, RangeRead};

/// Largest disk Haven backs up: its index (32 bytes per chunk) must stay small in memory.
pub const MAX_DISK_SIZE: u64 = 16 << 40;
/// Slots the planner classifies per allocation query.
const PLAN_WINDOW_SLOTS: u64 = 256;
/// Bytes of sealed chunks that may wait for their upload at once into a remote
/// repository (S3, storage nodes), whose puts answer once the object is durable
/// there: enough for a storage node's batches to fill (64 chunks of 512 KiB each)
/// while earlier ones are made durable. A local repository gets no window beyond
/// `in_flight`: its puts return once written, and a window would only fill with
/// chunks waiting behind the disk (100 MiB more memory for no speed, measured).
pub const UPLOAD_WINDOW_BYTES: u64 = 64 << 20;

/// How the pipeline learns which slots changed since the base snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeSource {
    /// Read every allocated slot: image files and full backups of live disks.
    Full,
    /// Read only slots this NBD meta context (`qemu:dirty-bitmap:NAME`) marks dirty;
    /// every other slot keeps its id from the base index.
    DirtyBitmap(String),
    /// Read only slots overlapping these areas (sorted, not overlapping), which the
    /// hypervisor says changed since the base snapshot (vSphere's changed block
    /// tracking); every other slot keeps its id from the base index.
    ChangedAreas(Arc<[ByteArea]>),
}

impl ChangeSource {
    /// Whether slots outside the changes keep their base ids (an incremental).
    fn is_incremental(&self) -> bool {
        !matches!(self, ChangeSource::Full)
    }
}

/// Where a disk's bytes come from.
#[derive(Debug)]
pub enum DiskSource {
    /// An NBD export: live disks (QEMU's own server) and images `qemu-nbd` translates.
    Nbd {
        /// Where the disk is exported.
        endpoint: Endpoint,
        /// NBD export name.
        export: String,
    },
    /// A disk read in place (a raw image, a Hyper-V checkpoint chain): nothing to
    /// translate or Haven translates it itself, so no server either.
    Local(Arc<dyn LocalDisk>),
    /// A disk read by byte ranges (a vSphere flat disk over HTTPS), of which only
    /// `allocated` (sorted, not overlapping) holds data: everything else reads as zeros.
    Ranged {
        /// The reader.
        reader: Arc<dyn RangeRead>,
        /// The areas that may hold data.
        allocated: Arc<[ByteArea]>,
    },
}

/// What to back up and against what.
pub struct DiskBackupInput<'a> {
    /// Where the disk is read from.
    pub source: DiskSource,
    /// Reads in flight at once (NBD connections, or threads reading a raw image).
    pub parallel_reads: usize,
    /// Index of the same disk in the previous snapshot: its ids are known to be stored
    /// (no existence query needed), and an incremental copies clean slots from it.
    pub base: Option<&'a FixedIndex>,
    /// How changed slots are found.
    pub changes: ChangeSource,
    /// Cap on the bytes read from the hypervisor per second, shared by every disk of a
    /// worker: so backups during business hours do not starve the VMs' storage.
    pub read_limit: Option<Arc<haven_repo::RateLimiter>>,
}

/// The result of backing up one disk.
#[derive(Debug)]
pub struct DiskBackup {
    /// Index of the new snapshot's disk.
    pub index: FixedIndex,
    /// What the pipeline did.
    pub stats: DiskStats,
}

/// What one slot needs.
#[derive(Debug, Clone, Copy)]
enum Action {
    Zero,
    Reuse(ChunkId),
    Read,
}

#[derive(Debug, Clone, Copy)]
struct SlotJob {
    slot: u64,
    offset: u64,
    len: usize,
    action: Action,
}

/// How a slot ended up in the index.
enum Outcome {
    Zero,
    Reused,
    Existing,
    New { stored_bytes: u64 },
}

struct SlotResult {
    slot: u64,
    id: ChunkId,
    bytes_read: u64,
    len: u64,
    outcome: Outcome,
}

/// A slot read, hashed and, if its chunk is new, sealed: all but the upload.
enum PreparedSlot {
    /// Nothing to upload.
    Done(SlotResult),
    /// A new chunk to put; `result` is the slot's outcome once it is stored.
    Upload { result: SlotResult, sealed: Vec<u8> },
}

/// Shared state of the processing stages.
struct Stages {
    repo: Arc<Repository>,
    reader: SlotReader,
    buffers: Arc<BufferPool>,
    known: Mutex<HashSet<ChunkId>>,
    progress: Arc<Progress>,
    read_limit: Option<Arc<haven_repo::RateLimiter>>,
    /// The disk's `upload` span, from its first upload to the end of the pipeline;
    /// only while traces are exported (it costs an enter and exit per upload).
    upload_span: OnceLock<tracing::Span>,
}

impl Stages {
    /// The span uploads run in, opened by the first (under the disk's span), or
    /// `None` when traces are off.
    fn upload_span(&self) -> Option<tracing::Span> {
        if !haven_telemetry::is_enabled() {
            return None;
        }
        let span = self.upload_span.get_or_init(|| {
            tracing::info_span!(
                "upload",
                chunks = tracing::field::Empty,
                bytes = tracing::field::Empty,
            )
        });
        Some(span.clone())
    }
}

/// Where the read stage gets a slot's bytes.
enum SlotReader {
    Nbd(ClientPool),
    Local(Arc<dyn LocalDisk>),
    Ranged(Arc<dyn RangeRead>),
}

/// Where the planner learns which slots hold data (and, for NBD, which are dirty).
enum AllocationMap {
    Nbd(Client),
    Local(Arc<dyn LocalDisk>),
    Areas(Arc<[ByteArea]>),
}

impl AllocationMap {
    /// Allocation of `[start, end)`, with `base:allocation`'s flags.
    async fn allocation(&mut self, start: u64, end: u64) -> Result<Vec<Extent>> {
        match self {
            Self::Nbd(control) => Ok(control
                .block_status(CONTEXT_BASE_ALLOCATION, start, end - start)
                .await?),
            Self::Local(image) => {
                let image = image.clone();
                tokio::task::spawn_blocking(move || image.allocation(start, end))
                    .await
                    .map_err(WorkerError::join)?
            }
            Self::Areas(areas) => {
                let (inside, outside) = ranged::ALLOCATION;
                Ok(ranged::extents(areas, start, end, inside, outside))
            }
        }
    }

    /// Dirty extents of `[start, end)` in the NBD meta context `context`.
    async fn dirty(&mut self, context: &str, start: u64, end: u64) -> Result<Vec<Extent>> {
        match self {
            Self::Nbd(control) => Ok(control.block_status(context, start, end - start).await?),
            Self::Local(_) | Self::Areas(_) => Err(no_dirty_bitmap()),
        }
    }

    async fn close(self) {
        if let Self::Nbd(control) = self {
            let _ = control.disconnect().await;
        }
    }
}

fn no_dirty_bitmap() -> WorkerError {
    WorkerError::InvalidInput("only an NBD export offers a dirty bitmap".into())
}

/// Backs up one disk and returns its index; nothing is committed here.
pub async fn backup_disk(
    repo: Arc<Repository>,
    input: DiskBackupInput<'_>,
    progress: Arc<Progress>,
) -> Result<DiskBackup> {
    let chunk_size = repo.chunk_size();
    let parallel_reads = input.parallel_reads.max(1);
    let (map, reader, disk_size) = match input.source {
        DiskSource::Nbd { endpoint, export } => {
            let mut contexts = vec![CONTEXT_BASE_ALLOCATION.to_string()];
            if let ChangeSource::DirtyBitmap(context) = &input.changes {
                contexts.push(context.clone());
            }
            let control_options = ConnectOptions {
                meta_contexts: contexts,
                ..ConnectOptions::new(&export)
            };
            let control = Client::connect(&endpoint, &control_options).await?;
            if let ChangeSource::DirtyBitmap(context) = &input.changes
                && !control.has_meta_context(context)
            {
                return Err(WorkerError::InvalidInput(format!(
                    "the export does not offer {context}"
                )));
            }
            let disk_size = control.size();
            let pool =
                ClientPool::connect(&endpoint, &ConnectOptions::new(&export), parallel_reads)
                    .await?;
            (
                AllocationMap::Nbd(control),
                SlotReader::Nbd(pool),
                disk_size,
            )
        }
        DiskSource::Local(image) => {
            if matches!(input.changes, ChangeSource::DirtyBitmap(_)) {
                return Err(no_dirty_bitmap());
            }
            let disk_size = image.size();
            (
                AllocationMap::Local(image.clone()),
                SlotReader::Local(image),
                disk_size,
            )
        }
        DiskSource::Ranged { reader, allocated } => {
            if matches!(input.changes, ChangeSource::DirtyBitmap(_)) {
                return Err(no_dirty_bitmap());
            }
            let disk_size = reader.size();
            (
                AllocationMap::Areas(allocated),
                SlotReader::Ranged(reader),
                disk_size,
            )
        }
    };
    if disk_size > MAX_DISK_SIZE {
        return Err(WorkerError::InvalidInput(format!(
            "disk of {disk_size} bytes is larger than the supported {MAX_DISK_SIZE}"
        )));
    }
    if input.changes.is_incremental() {
        let usable_base = input
            .base
            .is_some_and(|base| base.disk_size() == disk_size && base.chunk_size() == chunk_size);
        if !usable_base {
            return Err(WorkerError::InvalidInput(
                "an incremental needs a base index of the same disk size and chunk size".into(),
            ));
        }
    }
    let known: HashSet<ChunkId> = input
        .base
        .map(|base| {
            base.slots()
                .iter()
                .copied()
                .filter(|id| !id.is_zero())
                .collect()
        })
        .unwrap_or_default();

    let in_flight = parallel_reads * 2 + 2;
    progress.add_total(disk_size);
    let stages = Arc::new(Stages {
        repo,
        reader,
        buffers: BufferPool::new(chunk_size as usize, in_flight),
        known: Mutex::new(known),
        progress,
        read_limit: input.read_limit.clone(),
        upload_span: OnceLock::new(),
    });

    let (job_sender, mut jobs) = mpsc::channel::<SlotJob>(in_flight * 4);
    let planner = plan_slots(
        map,
        disk_size,
        chunk_size,
        input.changes.clone(),
        input.base.cloned(),
        job_sender,
    );
    let planner = tokio::spawn(planner);

    let mut index = FixedIndex::new_zeroed(disk_size, chunk_size);
    let mut stats = DiskStats::default();
    let job_stream = futures::stream::poll_fn(move |cx| jobs.poll_recv(cx));
    let upload_window = if stages.repo.backend().kind().is_remote() {
        (UPLOAD_WINDOW_BYTES / u64::from(chunk_size)).max(in_flight as u64) as usize
    } else {
        in_flight
    };
    let upload_stages = stages.clone();
    let mut results = job_stream
        .map(|job| {
            let stages = stages.clone();
            async move { prepare_slot(&stages, job).await }
        })
        .buffer_unordered(in_flight)
        .map(move |prepared| {
            let stages = upload_stages.clone();
            async move { upload_slot(&stages, prepared?).await }
        })
        .buffer_unordered(upload_window);
    while let Some(result) = results.next().await {
        let result = result?;
        index.set(result.slot as usize, result.id);
        stats.bytes_read += result.bytes_read;
        stages.progress.add_done(result.len);
        match result.outcome {
            Outcome::Zero => stats.zero_chunks += 1,
            Outcome::Reused => stats.reused_chunks += 1,
            Outcome::Existing => stats.existing_chunks += 1,
            Outcome::New { stored_bytes } => {
                stats.new_chunks += 1;
                stats.new_bytes += result.len;
                stats.uploaded_bytes += stored_bytes;
            }
        }
    }
    drop(results);
    if let Some(upload) = stages.upload_span.get() {
        upload.record("chunks", stats.new_chunks);
        upload.record("bytes", stats.uploaded_bytes);
    }
    planner.await.map_err(WorkerError::join)??;
    if let Ok(Stages {
        reader: SlotReader::Nbd(pool),
        ..
    }) = Arc::try_unwrap(stages)
    {
        pool.close(false).await?;
    }
    Ok(DiskBackup { index, stats })
}

/// Walks the disk window by window and sends one job per slot, in order.
async fn plan_slots(
    mut map: AllocationMap,
    disk_size: u64,
    chunk_size: u32,
    changes: ChangeSource,
    base: Option<FixedIndex>,
    jobs: mpsc::Sender<SlotJob>,
) -> Result<()> {
    let chunk = u64::from(chunk_size);
    let slots = haven_repo::slot_count(disk_size, chunk_size);
    let mut first = 0;
    while first < slots {
        let last = (first + PLAN_WINDOW_SLOTS).min(slots);
        let start = first * chunk;
        let end = (last * chunk).min(disk_size);
        let allocation = map.allocation(start, end).await?;
        let dirty = match &changes {
            ChangeSource::Full => None,
            ChangeSource::DirtyBitmap(context) => Some(map.dirty(context, start, end).await?),
            ChangeSource::ChangedAreas(areas) => {
                let (inside, outside) = ranged::DIRTY;
                Some(ranged::extents(areas, start, end, inside, outside))
            }
        };
        for slot in first..last {
            let (offset, slot_end) = haven_repo::slot_range(disk_size, chunk_size, slot);
            let clean = dirty
                .as_deref()
                .is_some_and(|dirty| !any_overlap(dirty, offset, slot_end, STATE_DIRTY));
            let action = if clean {
                let base_id = base
                    .as_ref()
                    .and_then(|base| base.get(slot as usize))
                    .unwrap_or(ChunkId::ZERO);
                Action::Reuse(base_id)
            } else if all_overlap(&allocation, offset, slot_end, STATE_ZERO) {
                Action::Zero
            } else {
                Action::Read
            };
            let job = SlotJob {
                slot,
                offset,
                len: (slot_end - offset) as usize,
                action,
            };
            if jobs.send(job).await.is_err() {
                // The consumer stopped (it failed); its error is the one to report.
                return Ok(());
            }
        }
        first = last;
    }
    map.close().await;
    Ok(())
}

/// Whether any extent overlapping `[start, end)` has `flag`.
fn any_overlap(extents: &[Extent], start: u64, end: u64, flag: u32) -> bool {
    extents
        .iter()
        .filter(|extent| extent.offset < end && extent.end() > start)
        .any(|extent| extent.flags & flag != 0)
}

/// Whether `[start, end)` is covered by extents that all have `flag`.
fn all_overlap(extents: &[Extent], start: u64, end: u64, flag: u32) -> bool {
    let mut covered = start;
    for extent in extents.iter().filter(|e| e.offset < end && e.end() > start) {
        if extent.flags & flag == 0 || extent.offset > covered {
            return false;
        }
        covered = covered.max(extent.end());
    }
    covered >= end
}

/// Reads, names and (when its chunk is new) seals one slot. Its id counts as known
/// from here on, before its upload ends: a failed upload fails the whole backup, so a
/// later slot with the same chunk may already point at it.
async fn prepare_slot(stages: &Stages, job: SlotJob) -> Result<PreparedSlot> {
    let result = |id, bytes_read, outcome| SlotResult {
        slot: job.slot,
        id,
        bytes_read,
        len: job.len as u64,
        outcome,
    };
    match job.action {
        Action::Zero => return Ok(PreparedSlot::Done(result(ChunkId::ZERO, 0, Outcome::Zero))),
        Action::Reuse(id) => return Ok(PreparedSlot::Done(result(id, 0, Outcome::Reused))),
        Action::Read => {}
    }

    if let Some(limit) = &stages.read_limit {
        limit.acquire(job.len as u64).await;
    }
    let data = stages.buffers.take(job.len);
    let (data, id) = read_and_identify(stages, job.offset, data).await?;
    let read = job.len as u64;
    let Some(id) = id else {
        return Ok(PreparedSlot::Done(result(
            ChunkId::ZERO,
            read,
            Outcome::Zero,
        )));
    };

    // The set of ids seen stays whole whatever panicked while it was locked: a
    // poisoned lock is taken over, not a reason to upload again.
    let newly_seen = stages
        .known
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(id);
    if !newly_seen {
        return Ok(PreparedSlot::Done(result(id, read, Outcome::Reused)));
    }
    if stages.repo.chunk_exists(&id).await? {
        return Ok(PreparedSlot::Done(result(id, read, Outcome::Existing)));
    }
    let repo = stages.repo.clone();
    let sealed = tokio::task::spawn_blocking(move || repo.seal_chunk(&id, &data))
        .await
        .map_err(WorkerError::join)??;
    let stored_bytes = sealed.len() as u64;
    Ok(PreparedSlot::Upload {
        result: result(id, read, Outcome::New { stored_bytes }),
        sealed,
    })
}

/// Stores a prepared slot's new chunk, if it has one.
async fn upload_slot(stages: &Stages, prepared: PreparedSlot) -> Result<SlotResult> {
    let (mut result, sealed) = match prepared {
        PreparedSlot::Done(result) => return Ok(result),
        PreparedSlot::Upload { result, sealed } => (result, sealed),
    };
    let put = stages.repo.put_chunk(&result.id, sealed);
    let put = match stages.upload_span() {
        Some(span) => put.instrument(span).await,
        None => put.await,
    };
    if put? == PutOutcome::AlreadyExisted {
        result.outcome = Outcome::Existing;
    }
    Ok(result)
}

/// Reads a slot into `data` and names its chunk (`None`: all zeros). A raw image is
/// read on the blocking thread that hashes, which saves a hand-over per slot.
async fn read_and_identify(
    stages: &Stages,
    offset: u64,
    mut data: PooledBuffer,
) -> Result<(PooledBuffer, Option<ChunkId>)> {
    let repo = stages.repo.clone();
    let identify = move |data: &[u8]| (!is_all_zero(data)).then(|| repo.chunk_id(data));
    match &stages.reader {
        SlotReader::Nbd(pool) => {
            pool.checkout().await?.read(offset, &mut data).await?;
            tokio::task::spawn_blocking(move || {
                let id = identify(&data);
                (data, id)
            })
            .await
            .map_err(WorkerError::join)
        }
        SlotReader::Local(image) => {
            let image = image.clone();
            tokio::task::spawn_blocking(move || {
                image.read_exact_at(offset, &mut data)?;
                let id = identify(&data);
                Ok((data, id))
            })
            .await
            .map_err(WorkerError::join)?
        }
        SlotReader::Ranged(reader) => {
            reader.read_at(offset, &mut data).await?;
            tokio::task::spawn_blocking(move || {
                let id = identify(&data);
                (data, id)
            })
            .await
            .map_err(WorkerError::join)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extent(offset: u64, length: u64, flags: u32) -> Extent {
        Extent {
            offset,
            length,
            flags,
        }
    }

    #[test]
    fn zero_slots_need_full_zero_coverage() {
        let extents = [extent(0, 100, 3), extent(100, 50, 0), extent(150, 50, 2)];
        assert!(all_overlap(&extents, 0, 100, STATE_ZERO));
        assert!(all_overlap(&extents, 10, 90, STATE_ZERO));
        assert!(!all_overlap(&extents, 50, 120, STATE_ZERO));
        assert!(all_overlap(&extents, 150, 200, STATE_ZERO));
        // Not covered at all: unknown, so it must be read.
        assert!(!all_overlap(&extents, 150, 250, STATE_ZERO));
        assert!(!all_overlap(&[], 0, 10, STATE_ZERO));
    }

    #[test]
    fn dirty_slots_need_one_dirty_extent() {
        let extents = [extent(0, 100, 0), extent(100, 10, 1), extent(110, 90, 0)];
        assert!(!any_overlap(&extents, 0, 100, STATE_DIRTY));
        assert!(any_overlap(&extents, 0, 101, STATE_DIRTY));
        assert!(any_overlap(&extents, 105, 106, STATE_DIRTY));
        assert!(!any_overlap(&extents, 110, 200, STATE_DIRTY));
    }
}
