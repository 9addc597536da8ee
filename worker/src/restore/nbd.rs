//! Restore into an existing disk exported over NBD, optionally writing only what differs.
//!
//! The target is somebody else's disk (a `qemu-storage-daemon` export, a `qemu-nbd` of
//! an image, a hypervisor's NBD server), so there is no temporary file to rename: a
//! failed restore leaves the target partly written and the operator runs it again.
//!
//! With `only_changed`, each slot of the target is read and compared with the snapshot
//! before anything is written, which turns a restore over an older copy of the disk into
//! a write of the changed slots only. Zero slots are cheaper still: one
//! `base:allocation` query over the whole target tells which slots already read as
//! zeros, and those are neither read nor written.
//!
//! Every chunk is fetched once per window of slots and verified by the repository
//! before a single byte of it reaches the target.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures::StreamExt;
use haven_nbd::{CONTEXT_BASE_ALLOCATION, ConnectOptions, Endpoint, STATE_ZERO};
use haven_repo::{FixedIndex, Progress, Repository, SnapshotRef};
use serde::Serialize;

use crate::error::{Result, WorkerError};
use crate::pipeline::pool::ClientPool;
use crate::restore::windows::{windows, write_chunks};

/// Most connections opened to the target.
const MAX_CONNECTIONS: usize = 8;

/// What to restore into which NBD export.
#[derive(Debug, Clone)]
pub struct NbdRestoreRequest {
    /// `VM@TIME` or `VM@latest`.
    pub snapshot: SnapshotRef,
    /// Disk name; may be omitted when the snapshot has one disk.
    pub disk: Option<String>,
    /// `nbd+unix:///EXPORT?socket=PATH` or `nbd://HOST[:PORT]/EXPORT`.
    pub uri: String,
    /// Read every slot of the target first and write only slots that differ.
    pub only_changed: bool,
    /// Chunks fetched and slots compared or written concurrently.
    pub in_flight: usize,
}

/// A machine-readable summary of a restore into an NBD export.
#[derive(Debug, Clone, Serialize)]
pub struct NbdRestoreReport {
    /// `VM@TIME` restored.
    pub snapshot: String,
    /// Disk restored.
    pub disk: String,
    /// The target URI.
    pub to: String,
    /// Always `"nbd"`, so reports of file and NBD restores can be told apart.
    pub format: &'static str,
    /// Whether only differing slots were written.
    pub only_changed: bool,
    /// Disk size in bytes.
    pub size: u64,
    /// Bytes read from the target to compare with the snapshot.
    pub bytes_compared: u64,
    /// Bytes of data written to the target.
    pub bytes_written: u64,
    /// Bytes zeroed on the target (WRITE_ZEROES, no data sent).
    pub bytes_zeroed: u64,
    /// Bytes left alone because the target already held the snapshot's content.
    pub bytes_unchanged: u64,
    /// Distinct chunk fetches.
    pub chunks_fetched: u64,
    /// Wall-clock seconds.
    pub elapsed_seconds: f64,
}

/// Byte counters shared by the slot tasks.
#[derive(Default)]
struct Counters {
    compared: AtomicU64,
    written: AtomicU64,
    zeroed: AtomicU64,
    unchanged: AtomicU64,
    fetched: AtomicU64,
}

/// The target export: its connections and what it already holds.
struct Target {
    pool: ClientPool,
    /// Per slot: the target reads as zeros there (from `base:allocation`).
    known_zero: Vec<bool>,
    only_changed: bool,
}

/// Restores one disk of a snapshot into an existing NBD export of the same size.
pub async fn restore_to_nbd(
    repo: Arc<Repository>,
    request: &NbdRestoreRequest,
    progress: Arc<Progress>,
) -> Result<NbdRestoreReport> {
    let started = Instant::now();
    let (endpoint, export) = Endpoint::parse_uri(&request.uri)?;
    let (id, disk, index) =
        super::open_disk(&repo, &request.snapshot, request.disk.as_deref()).await?;

    let target = open_target(&endpoint, &export, &index, request).await?;
    let counters = Counters::default();
    let restored = restore_slots(&repo, &index, &target, &counters, request, progress).await;
    let closed = target.pool.close(true).await;
    restored?;
    closed?;
    Ok(NbdRestoreReport {
        snapshot: id.to_string(),
        disk: disk.name,
        to: request.uri.clone(),
        format: "nbd",
        only_changed: request.only_changed,
        size: index.disk_size(),
        bytes_compared: counters.compared.load(Ordering::Relaxed),
        bytes_written: counters.written.load(Ordering::Relaxed),
        bytes_zeroed: counters.zeroed.load(Ordering::Relaxed),
        bytes_unchanged: counters.unchanged.load(Ordering::Relaxed),
        chunks_fetched: counters.fetched.load(Ordering::Relaxed),
        elapsed_seconds: started.elapsed().as_secs_f64(),
    })
}

/// Connects, checks size and writability, maps the target's zeros and opens the pool.
async fn open_target(
    endpoint: &Endpoint,
    export: &str,
    index: &FixedIndex,
    request: &NbdRestoreRequest,
) -> Result<Target> {
    let mut options = ConnectOptions::new(export);
    if request.only_changed {
        options.meta_contexts = vec![CONTEXT_BASE_ALLOCATION.to_string()];
    }
    // The first connection stays open until the pool replaces it: `qemu-nbd` without
    // `--persistent` exits when its last client leaves.
    let first = ClientPool::connect(endpoint, &options, 1).await?;
    let mut known_zero = vec![false; index.len()];
    let multi_conn = {
        let mut probe = first.checkout().await?;
        if probe.size() != index.disk_size() {
            return Err(WorkerError::InvalidInput(format!(
                "target export {export:?} at {endpoint} is {} bytes but the snapshot's disk is {} bytes",
                probe.size(),
                index.disk_size()
            )));
        }
        if probe.is_read_only() {
            return Err(WorkerError::InvalidInput(format!(
                "target export {export:?} at {endpoint} is read-only"
            )));
        }
        if request.only_changed && probe.has_meta_context(CONTEXT_BASE_ALLOCATION) {
            let extents = probe
                .block_status(CONTEXT_BASE_ALLOCATION, 0, index.disk_size())
                .await?;
            mark_zero_slots(index, &extents, &mut known_zero);
        }
        probe.can_multi_conn()
    };
    // Without the multi-connection promise, writes on one connection might not be seen
    // by a flush on another: stay on the first connection then.
    let connections = request.in_flight.clamp(1, MAX_CONNECTIONS);
    let pool = if multi_conn && connections > 1 {
        let pool = ClientPool::connect(endpoint, &options, connections).await?;
        first.close(false).await?;
        pool
    } else {
        first
    };
    Ok(Target {
        pool,
        known_zero,
        only_changed: request.only_changed,
    })
}

/// Sets `known_zero[slot]` for every slot wholly covered by extents that read as zeros.
fn mark_zero_slots(index: &FixedIndex, extents: &[haven_nbd::Extent], known_zero: &mut [bool]) {
    let mut extents = extents.iter().peekable();
    for (slot, zero) in known_zero.iter_mut().enumerate() {
        let (start, end) = index.slot_range(slot);
        // Skip extents that end before this slot.
        while extents.peek().is_some_and(|extent| extent.end() <= start) {
            extents.next();
        }
        let mut position = start;
        let mut lookahead = extents.clone();
        while position < end {
            match lookahead.next() {
                Some(extent) if extent.offset <= position && extent.flags & STATE_ZERO != 0 => {
                    position = extent.end();
                }
                _ => break,
            }
        }
        *zero = position >= end;
    }
}

/// Fetches every non-zero slot's chunk once per window and brings each slot of the
/// target in line with it; zero slots are zeroed unless already zero.
async fn restore_slots(
    repo: &Arc<Repository>,
    index: &FixedIndex,
    target: &Target,
    counters: &Counters,
    request: &NbdRestoreRequest,
    progress: Arc<Progress>,
) -> Result<()> {
    progress.add_total(index.disk_size());
    let in_flight = request.in_flight.max(1);
    for window in windows(index) {
        let mut zeroes = futures::stream::iter(window.zero_slots)
            .map(|slot| {
                let progress = progress.clone();
                async move {
                    let (start, end) = index.slot_range(slot);
                    zero_slot(target, counters, slot, start, end).await?;
                    progress.add_done(end - start);
                    Ok::<(), WorkerError>(())
                }
            })
            .buffer_unordered(in_flight);
        while let Some(done) = zeroes.next().await {
            done?;
        }
        let written =
            write_chunks(
                repo,
                index,
                window.chunks,
                in_flight,
                &progress,
                |slot, offset, data| async move {
                    data_slot(target, counters, slot, offset, &data).await
                },
            )
            .await?;
        counters
            .fetched
            .fetch_add(written.chunks, Ordering::Relaxed);
    }
    Ok(())
}

/// Makes slot `[start, end)` of the target zero.
async fn zero_slot(
    target: &Target,
    counters: &Counters,
    slot: usize,
    start: u64,
    end: u64,
) -> Result<()> {
    let length = end - start;
    if target.only_changed {
        if target.known_zero[slot] {
            counters.unchanged.fetch_add(length, Ordering::Relaxed);
            return Ok(());
        }
        let mut current = vec![0u8; length as usize];
        target
            .pool
            .checkout()
            .await?
            .read(start, &mut current)
            .await?;
        counters.compared.fetch_add(length, Ordering::Relaxed);
        if current.iter().all(|&byte| byte == 0) {
            counters.unchanged.fetch_add(length, Ordering::Relaxed);
            return Ok(());
        }
    }
    // Slots are at most 16 MiB (format limit), so the length fits in u32.
    let length32 = u32::try_from(length).map_err(|_| {
        WorkerError::InvalidInput(format!("slot {slot} is too large: {length} bytes"))
    })?;
    target
        .pool
        .checkout()
        .await?
        .write_zeroes(start, length32)
        .await?;
    counters.zeroed.fetch_add(length, Ordering::Relaxed);
    Ok(())
}

/// Makes slot `slot` at `offset` of the target hold `data`.
async fn data_slot(
    target: &Target,
    counters: &Counters,
    slot: usize,
    offset: u64,
    data: &[u8],
) -> Result<()> {
    let length = data.len() as u64;
    if target.only_changed && !target.known_zero[slot] {
        let mut current = vec![0u8; data.len()];
        target
            .pool
            .checkout()
            .await?
            .read(offset, &mut current)
            .await?;
        counters.compared.fetch_add(length, Ordering::Relaxed);
        if current == data {
            counters.unchanged.fetch_add(length, Ordering::Relaxed);
            return Ok(());
        }
    }
    target.pool.checkout().await?.write(offset, data).await?;
    counters.written.fetch_add(length, Ordering::Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use haven_nbd::{Extent, STATE_HOLE};

    #[test]
    fn zero_slots_need_full_zero_coverage() {
        let size = 4 * 1024 * 1024 + 100;
        let index = FixedIndex::new_zeroed(size, 1024 * 1024);
        let extents = [
            Extent {
                offset: 0,
                length: 1024 * 1024,
                flags: STATE_HOLE | STATE_ZERO,
            },
            Extent {
                offset: 1024 * 1024,
                length: 512 * 1024,
                flags: STATE_ZERO,
            },
            Extent {
                offset: 1536 * 1024,
                length: 512 * 1024 + 4096,
                flags: 0,
            },
            Extent {
                offset: 2048 * 1024 + 4096,
                length: size - 2048 * 1024 - 4096,
                flags: STATE_ZERO,
            },
        ];
        let mut known_zero = vec![false; index.len()];
        mark_zero_slots(&index, &extents, &mut known_zero);
        assert_eq!(known_zero, [true, false, false, true, true]);
    }
}
