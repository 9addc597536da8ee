//! Bookkeeping that proves a structured READ reply covered the whole request
//! exactly once: chunks must be non-empty, inside the request and disjoint,
//! and together they must cover every byte.

use std::collections::BTreeMap;

use crate::error::NbdError;

/// Most disjoint pieces tracked for one READ. Chunks that arrive in order
/// merge into one piece, so only a server scattering tiny chunks out of
/// order reaches this; it bounds memory against such a server.
const MAX_PIECES: usize = 64 * 1024;

/// The byte ranges of one READ request already filled by chunks.
#[derive(Debug)]
pub(crate) struct Coverage {
    start: u64,
    end: u64,
    covered: u64,
    /// Disjoint, non-adjacent pieces: start -> end.
    pieces: BTreeMap<u64, u64>,
}

impl Coverage {
    pub(crate) fn new(start: u64, length: u64) -> Self {
        Coverage {
            start,
            end: start.saturating_add(length),
            covered: 0,
            pieces: BTreeMap::new(),
        }
    }

    /// Records a chunk covering `[offset, offset + length)`.
    pub(crate) fn add(&mut self, offset: u64, length: u64) -> Result<(), NbdError> {
        if length == 0 {
            return Err(NbdError::Protocol(format!(
                "empty read chunk at offset {offset}"
            )));
        }
        let chunk_end = offset.checked_add(length).filter(|end| *end <= self.end);
        let chunk_end = match chunk_end {
            Some(chunk_end) if offset >= self.start => chunk_end,
            _ => {
                return Err(NbdError::Protocol(format!(
                    "read chunk [{offset}, +{length}) lies outside the request [{}, {})",
                    self.start, self.end
                )));
            }
        };
        let mut merged_start = offset;
        let mut merged_end = chunk_end;
        if let Some((&before_start, &before_end)) = self.pieces.range(..=offset).next_back() {
            if before_end > offset {
                return Err(overlap(offset, length));
            }
            if before_end == offset {
                merged_start = before_start;
            }
        }
        if let Some((&after_start, &after_end)) = self.pieces.range(offset..).next() {
            if after_start < chunk_end {
                return Err(overlap(offset, length));
            }
            if after_start == chunk_end {
                merged_end = after_end;
                self.pieces.remove(&after_start);
            }
        }
        self.pieces.insert(merged_start, merged_end);
        if self.pieces.len() > MAX_PIECES {
            return Err(NbdError::Protocol(format!(
                "read reply scattered into more than {MAX_PIECES} pieces"
            )));
        }
        self.covered += length;
        Ok(())
    }

    /// Fails unless every byte of the request was covered.
    pub(crate) fn finish(&self) -> Result<(), NbdError> {
        let length = self.end - self.start;
        if self.covered != length {
            return Err(NbdError::Protocol(format!(
                "read reply covered {} of {length} bytes at offset {}",
                self.covered, self.start
            )));
        }
        Ok(())
    }
}

fn overlap(offset: u64, length: u64) -> NbdError {
    NbdError::Protocol(format!(
        "read chunk [{offset}, +{length}) overlaps an earlier chunk"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(start: u64, length: u64, chunks: &[(u64, u64)]) -> Result<(), NbdError> {
        let mut coverage = Coverage::new(start, length);
        for &(offset, chunk_length) in chunks {
            coverage.add(offset, chunk_length)?;
        }
        coverage.finish()
    }

    #[test]
    fn table() {
        type Case<'a> = (u64, u64, &'a [(u64, u64)], bool);
        // (request start, request length, chunks, complete)
        let table: &[Case] = &[
            (0, 100, &[(0, 100)], true),
            (100, 100, &[(150, 50), (100, 50)], true),
            (0, 30, &[(10, 10), (0, 10), (20, 10)], true),
            (0, 100, &[(0, 50)], false),
            (0, 100, &[(0, 60), (50, 50)], false),
            (0, 100, &[(10, 10), (5, 10)], false),
            (0, 100, &[(10, 10), (15, 2)], false),
            (100, 100, &[(90, 20)], false),
            (100, 100, &[(150, 51)], false),
            (0, 100, &[(0, 0)], false),
            (0, 100, &[(u64::MAX, 2)], false),
        ];
        for (start, length, chunks, complete) in table {
            assert_eq!(
                run(*start, *length, chunks).is_ok(),
                *complete,
                "{start} {length} {chunks:?}"
            );
        }
    }

    #[test]
    fn in_order_chunks_merge() {
        let mut coverage = Coverage::new(0, 1 << 20);
        for index in 0..(1 << 10) {
            coverage.add(index * 1024, 1024).unwrap();
        }
        assert_eq!(coverage.pieces.len(), 1);
        coverage.finish().unwrap();
    }

    #[test]
    fn scattered_chunks_are_bounded() {
        let mut coverage = Coverage::new(0, 1 << 20);
        let mut result = Ok(());
        for index in 0..(1 << 19) {
            result = coverage.add(index * 2, 1);
            if result.is_err() {
                break;
            }
        }
        assert!(
            matches!(result, Err(NbdError::Protocol(message)) if message.contains("scattered"))
        );
    }
}
