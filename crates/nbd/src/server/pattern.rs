//! A synthetic export whose every byte is known without storing it: for the server's
//! own tests, hostile-peer tests and benchmarks, which need data, holes and a failing
//! read in one small, predictable disk.

use super::ExportSource;
use crate::{STATE_HOLE, STATE_ZERO};

/// Size of the pattern's blocks: data in even blocks, holes in odd ones.
pub const PATTERN_BLOCK: u64 = 64 * 1024;

/// `blocks` blocks of [`PATTERN_BLOCK`] bytes; even blocks hold `position % 251`,
/// odd ones are holes (reported as such by block status). A read at the start of
/// block `corrupt`, if any, fails as a damaged chunk would.
#[derive(Debug, Clone, Copy)]
pub struct PatternExport {
    /// Blocks in the export.
    pub blocks: u64,
    /// The block whose reads fail, if any.
    pub corrupt: Option<u64>,
}

impl PatternExport {
    /// The bytes the export holds at `offset..offset + length`.
    pub fn expected(offset: u64, length: usize) -> Vec<u8> {
        let mut buf = vec![0u8; length];
        fill(offset, &mut buf);
        buf
    }
}

fn fill(offset: u64, buf: &mut [u8]) {
    for (index, byte) in buf.iter_mut().enumerate() {
        let position = offset + index as u64;
        *byte = if (position / PATTERN_BLOCK).is_multiple_of(2) {
            (position % 251) as u8
        } else {
            0
        };
    }
}

impl ExportSource for PatternExport {
    fn size(&self) -> u64 {
        self.blocks * PATTERN_BLOCK
    }

    async fn read(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        if self
            .corrupt
            .is_some_and(|block| offset == block * PATTERN_BLOCK)
        {
            return Err(std::io::Error::other(format!(
                "chunk {} is corrupt",
                offset / PATTERN_BLOCK
            )));
        }
        fill(offset, buf);
        Ok(())
    }

    fn allocation(&self, offset: u64, length: u32) -> Vec<(u32, u32)> {
        let end = offset + u64::from(length);
        let mut runs = Vec::new();
        let mut position = offset;
        while position < end {
            let block_end = (position / PATTERN_BLOCK + 1) * PATTERN_BLOCK;
            let piece = block_end.min(end) - position;
            let flags = if (position / PATTERN_BLOCK).is_multiple_of(2) {
                0
            } else {
                STATE_HOLE | STATE_ZERO
            };
            runs.push((piece as u32, flags));
            position += piece;
        }
        runs
    }
}
