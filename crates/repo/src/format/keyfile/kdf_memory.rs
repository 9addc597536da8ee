//! Argon2id's working memory on transparent huge pages.
//!
//! Argon2id fills its memory (64 MiB by default) and then reads it back at
//! pseudo-random places. From `argon2`'s own allocation that is 16,384 page faults
//! before the first pass and a TLB miss on most later accesses: about 0.15 s of every
//! command that opens a repository, a tenth of an incremental backup. Mapped here at a
//! 2 MiB boundary with `MADV_HUGEPAGE`, the kernel backs it with 2 MiB pages where it
//! can; where it cannot, this is ordinary zeroed memory and nothing is lost.

use argon2::Block;

/// Size and alignment of a huge page on x86-64 and arm64 (4 KiB base pages).
const HUGE_PAGE: usize = 2 << 20;

/// Zeroed, page-aligned memory for `blocks` Argon2 blocks, unmapped on drop (the
/// kernel zeroes the pages before anyone else gets them).
pub(super) struct KdfMemory {
    base: *mut libc::c_void,
    mapped: usize,
    offset: usize,
    blocks: usize,
}

impl KdfMemory {
    /// Maps the memory, or `None` if the mapping fails (the caller then lets
    /// `argon2` allocate).
    pub(super) fn new(blocks: usize) -> Option<Self> {
        let bytes = blocks.checked_mul(Block::SIZE)?;
        let mapped = bytes.checked_add(HUGE_PAGE)?;
        // SAFETY: an anonymous private mapping at an address of the kernel's choice
        // touches no existing memory.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let offset = (HUGE_PAGE - base as usize % HUGE_PAGE) % HUGE_PAGE;
        // SAFETY: `offset + bytes <= mapped`, inside the mapping made above. The
        // advice is a hint; its failure changes nothing but the page size.
        unsafe {
            libc::madvise(
                base.cast::<u8>().add(offset).cast(),
                bytes,
                libc::MADV_HUGEPAGE,
            );
        }
        Some(Self {
            base,
            mapped,
            offset,
            blocks,
        })
    }
}

impl AsMut<[Block]> for KdfMemory {
    fn as_mut(&mut self) -> &mut [Block] {
        // SAFETY: the mapping holds `offset + blocks * Block::SIZE` bytes, is aligned
        // to a page (more than `Block`'s 64 bytes), zeroed by the kernel (a valid
        // `Block` is any 128 `u64`s), and owned by `self` alone.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.base.cast::<u8>().add(self.offset).cast::<Block>(),
                self.blocks,
            )
        }
    }
}

impl Drop for KdfMemory {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`, which nothing borrows
        // any more (borrows end with `&mut self`).
        unsafe {
            libc::munmap(self.base, self.mapped);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_zeroed_aligned_and_writable() {
        let mut memory = KdfMemory::new(4096).expect("mapping");
        let blocks = memory.as_mut();
        assert_eq!(blocks.len(), 4096);
        assert_eq!(blocks.as_ptr() as usize % HUGE_PAGE, 0);
        let zero = Block::new();
        assert!(blocks.iter().all(|block| block.as_ref() == zero.as_ref()));
        blocks[4095] = Block::new();
    }
}
