//! Page-aligned 1 MiB block buffers for `O_DIRECT` writes, recycled.
//!
//! Object data is written with `O_DIRECT` (see `object_file`): on the
//! machines measured, a buffered write plus fsync spent more time copying
//! into fresh page-cache pages than anything else, while a direct write goes
//! from this buffer to the device. `O_DIRECT` needs the address, length and
//! file offset aligned to the logical block size; these buffers are aligned
//! to 4096 and hold exactly one object block. They are recycled through a
//! small pool because touching freshly allocated memory is itself costly.

use std::sync::Mutex;

use crate::object_file::BLOCK_SIZE;

/// Alignment of every buffer (covers 512 and 4096-byte sector devices).
pub const ALIGNMENT: usize = 4096;
/// Buffers kept for reuse; more concurrent writers allocate.
const POOL_LIMIT: usize = 64;
const PAGES: usize = BLOCK_SIZE as usize / ALIGNMENT;
const _: () = assert!((BLOCK_SIZE as usize).is_multiple_of(ALIGNMENT));

#[repr(C, align(4096))]
#[derive(Clone, Copy)]
struct Page([u8; ALIGNMENT]);
const _: () = assert!(std::mem::size_of::<Page>() == ALIGNMENT);

static POOL: Mutex<Vec<Vec<Page>>> = Mutex::new(Vec::new());

/// One block's worth of aligned memory and how much of it is filled.
pub struct AlignedBlock {
    pages: Vec<Page>,
    len: usize,
}

impl AlignedBlock {
    /// An empty block, recycled when possible.
    pub fn new() -> Self {
        Self {
            pages: pages(),
            len: 0,
        }
    }

    /// The whole block, writable (memory taken again after a release).
    fn all_mut(&mut self) -> &mut [u8] {
        if self.pages.len() != PAGES {
            self.pages = pages();
        }
        // SAFETY: `pages` is a contiguous allocation of PAGES plain byte
        // arrays without padding (size == alignment, asserted above), and
        // `&mut self` makes the access exclusive.
        unsafe {
            std::slice::from_raw_parts_mut(self.pages.as_mut_ptr().cast::<u8>(), PAGES * ALIGNMENT)
        }
    }

    /// The filled part.
    pub fn filled(&self) -> &[u8] {
        // SAFETY: `pages` is a contiguous allocation of PAGES plain byte
        // arrays without padding (size == alignment, asserted above), and
        // `len <= PAGES * ALIGNMENT` is kept by `push` (0 after a release,
        // when `pages` is empty but its pointer still aligned and non-null).
        unsafe { std::slice::from_raw_parts(self.pages.as_ptr().cast::<u8>(), self.len) }
    }

    /// Whether the block is full.
    pub fn is_full(&self) -> bool {
        self.len == PAGES * ALIGNMENT
    }

    /// Whether nothing is filled.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies as much of `data` as fits; returns how many bytes were taken.
    pub fn push(&mut self, data: &[u8]) -> usize {
        let take = (PAGES * ALIGNMENT - self.len).min(data.len());
        let len = self.len;
        self.all_mut()[len..len + take].copy_from_slice(&data[..take]);
        self.len += take;
        take
    }

    /// Lets `read` fill the block from its start (the whole block is offered,
    /// aligned for `O_DIRECT`); keeps as filled the length it returns.
    pub fn fill_with(
        &mut self,
        read: impl FnOnce(&mut [u8]) -> std::io::Result<usize>,
    ) -> std::io::Result<()> {
        let filled = read(self.all_mut())?;
        self.len = filled.min(PAGES * ALIGNMENT);
        Ok(())
    }

    /// Keeps only the first `len` filled bytes.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Gives the memory back to the pool now, for a holder that lives on
    /// without needing it (a sealed writer waiting for its fsync). The block
    /// must not be filled again.
    pub fn release(&mut self) {
        recycle(std::mem::take(&mut self.pages));
        self.len = 0;
    }

    /// Empties the block for the next one.
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

/// The filled part, so a block can back a `Bytes` (`Bytes::from_owner`) and
/// return to the pool when the last reference goes.
impl AsRef<[u8]> for AlignedBlock {
    fn as_ref(&self) -> &[u8] {
        self.filled()
    }
}

impl Drop for AlignedBlock {
    fn drop(&mut self) {
        recycle(std::mem::take(&mut self.pages));
    }
}

/// One block's pages, from the pool when it has some.
fn pages() -> Vec<Page> {
    let recycled = POOL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .pop();
    recycled.unwrap_or_else(|| vec![Page([0; ALIGNMENT]); PAGES])
}

/// Returns a block's pages to the pool (released blocks have none).
fn recycle(pages: Vec<Page>) {
    if pages.len() != PAGES {
        return;
    }
    let mut pool = POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if pool.len() < POOL_LIMIT {
        pool.push(pages);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_to_one_block_and_stays_aligned() {
        let mut block = AlignedBlock::new();
        assert_eq!(block.filled().as_ptr() as usize % ALIGNMENT, 0);
        assert_eq!(block.push(&[7; 1000]), 1000);
        let big = vec![9u8; BLOCK_SIZE as usize];
        assert_eq!(block.push(&big), BLOCK_SIZE as usize - 1000);
        assert!(block.is_full());
        assert_eq!(&block.filled()[998..1002], &[7, 7, 9, 9]);
        block.clear();
        assert!(block.is_empty());
        block.release();
        assert!(block.filled().is_empty());
        assert_eq!(block.push(&[3; 10]), 10);
        assert_eq!(block.filled(), &[3; 10]);
    }
}
