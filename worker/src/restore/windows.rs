//! An index walked in windows of slots, each chunk fetched once per window however
//! many slots share it (cloned blocks, templates): the walk both restore writers (to a
//! file, into an NBD export) make.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use haven_repo::{ChunkId, FixedIndex, Progress, Repository};

use crate::error::{Result, WorkerError};

/// Slots grouped per pass, bounding the chunk-to-slots map.
const WINDOW_SLOTS: usize = 8192;

/// One window of an index's slots.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Window {
    /// The window's non-zero chunks, each once in the order of its first slot, with
    /// every slot that holds it.
    pub chunks: Vec<(ChunkId, Vec<usize>)>,
    /// The window's zero slots.
    pub zero_slots: Vec<usize>,
}

/// The index's slots in windows of [`WINDOW_SLOTS`].
pub(crate) fn windows(index: &FixedIndex) -> impl Iterator<Item = Window> + '_ {
    (0..index.len()).step_by(WINDOW_SLOTS).map(|start| {
        let end = (start + WINDOW_SLOTS).min(index.len());
        window(&index.slots()[start..end], start)
    })
}

/// Groups `slots` (the index's slots from `first` on) by chunk.
fn window(slots: &[ChunkId], first: usize) -> Window {
    let mut window = Window::default();
    let mut position_of: HashMap<ChunkId, usize> = HashMap::new();
    for (slot, id) in (first..).zip(slots) {
        if id.is_zero() {
            window.zero_slots.push(slot);
            continue;
        }
        let position = *position_of.entry(*id).or_insert_with(|| {
            window.chunks.push((*id, Vec::new()));
            window.chunks.len() - 1
        });
        window.chunks[position].1.push(slot);
    }
    window
}

/// What [`write_chunks`] did.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Written {
    /// Bytes handed to the writer (a chunk's length once per slot).
    pub bytes: u64,
    /// Distinct chunks fetched.
    pub chunks: u64,
}

/// Fetches each of a window's `chunks` once (verified by the repository), `in_flight`
/// at a time, and hands it to `write(slot, offset, data)` for every slot that holds it,
/// counting each slot's bytes as done in `progress`.
pub(crate) async fn write_chunks<W, F>(
    repo: &Arc<Repository>,
    index: &FixedIndex,
    chunks: Vec<(ChunkId, Vec<usize>)>,
    in_flight: usize,
    progress: &Arc<Progress>,
    write: W,
) -> Result<Written>
where
    W: Fn(usize, u64, Arc<Vec<u8>>) -> F,
    F: Future<Output = Result<()>>,
{
    let write = &write;
    let mut writes = futures::stream::iter(chunks)
        .map(|(id, slots)| async move {
            let Some(&first) = slots.first() else {
                return Ok(0);
            };
            let (start, end) = index.slot_range(first);
            let data = Arc::new(repo.read_chunk(id, Some(end - start)).await?);
            let mut bytes = 0;
            for slot in slots {
                let (offset, _) = index.slot_range(slot);
                write(slot, offset, data.clone()).await?;
                bytes += data.len() as u64;
                progress.add_done(data.len() as u64);
            }
            Ok::<u64, WorkerError>(bytes)
        })
        .buffer_unordered(in_flight.max(1));
    let mut written = Written::default();
    while let Some(bytes) = writes.next().await {
        written.bytes += bytes?;
        written.chunks += 1;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_names_each_chunk_once_in_order_and_keeps_zero_slots_apart() {
        let a = ChunkId([1; 32]);
        let b = ChunkId([2; 32]);
        let zero = ChunkId::ZERO;
        let window = window(&[b, zero, a, b, zero, a, b], 10);
        assert_eq!(
            window.chunks,
            vec![(b, vec![10, 13, 16]), (a, vec![12, 15])]
        );
        assert_eq!(window.zero_slots, vec![11, 14]);
    }
}
