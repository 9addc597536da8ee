//! Which byte ranges of a disk differ between two snapshots, from their indexes alone:
//! a slot whose chunk id is the same in both holds the same bytes (ids are keyed
//! hashes of the plaintext), so no data is read. A pure function, table-tested.

use serde::Serialize;

use crate::format::index::FixedIndex;

/// Bytes `[offset, offset + length)` of a disk that differ between two snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ChangedRange {
    /// First byte.
    pub offset: u64,
    /// Number of bytes.
    pub length: u64,
}

/// The ranges, in disk order and merged where adjacent, where `new` differs from
/// `old`: slots with different ids, and everything past the end of the shorter disk
/// (a disk that grew or shrank). Indexes of different chunk sizes share no slot
/// boundaries to compare, so the whole of the larger disk differs.
pub fn changed_ranges(old: &FixedIndex, new: &FixedIndex) -> Vec<ChangedRange> {
    let larger = old.disk_size().max(new.disk_size());
    if old.chunk_size() != new.chunk_size() {
        return whole(larger);
    }
    let chunk = u64::from(new.chunk_size());
    let common = old.len().min(new.len());
    let mut ranges: Vec<ChangedRange> = Vec::new();
    let mut add = |offset: u64, end: u64| match ranges.last_mut() {
        Some(last) if last.offset + last.length == offset => last.length = end - last.offset,
        _ => ranges.push(ChangedRange {
            offset,
            length: end - offset,
        }),
    };
    for slot in 0..common {
        let start = slot as u64 * chunk;
        // The last common slot may be partial in one disk and full in the other.
        let (old_end, new_end) = (old.slot_range(slot).1, new.slot_range(slot).1);
        if old.slots()[slot] != new.slots()[slot] || old_end != new_end {
            add(start, old_end.max(new_end));
        }
    }
    let compared = common as u64 * chunk;
    if larger > compared {
        add(compared, larger);
    }
    ranges
}

fn whole(size: u64) -> Vec<ChangedRange> {
    if size == 0 {
        return Vec::new();
    }
    vec![ChangedRange {
        offset: 0,
        length: size,
    }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::chunk::ChunkId;

    const CHUNK: u32 = 65536;

    /// An index of `size` bytes whose slot `i` holds the id `ids[i]` (0: zero chunk).
    fn index(size: u64, ids: &[u8]) -> FixedIndex {
        let mut index = FixedIndex::new_zeroed(size, CHUNK);
        for (slot, id) in ids.iter().enumerate() {
            if *id != 0 {
                index.set(slot, ChunkId([*id; 32]));
            }
        }
        index
    }

    fn range(offset: u64, length: u64) -> ChangedRange {
        ChangedRange { offset, length }
    }

    #[test]
    fn ranges_from_indexes() {
        let c = u64::from(CHUNK);
        let cases: Vec<(&str, FixedIndex, FixedIndex, Vec<ChangedRange>)> = vec![
            (
                "same",
                index(4 * c, &[1, 2, 0, 4]),
                index(4 * c, &[1, 2, 0, 4]),
                vec![],
            ),
            (
                "one slot",
                index(4 * c, &[1, 2, 3, 4]),
                index(4 * c, &[1, 9, 3, 4]),
                vec![range(c, c)],
            ),
            (
                "adjacent slots merge",
                index(4 * c, &[1, 2, 3, 4]),
                index(4 * c, &[1, 9, 9, 4]),
                vec![range(c, 2 * c)],
            ),
            (
                "apart",
                index(4 * c, &[1, 2, 3, 4]),
                index(4 * c, &[9, 2, 3, 9]),
                vec![range(0, c), range(3 * c, c)],
            ),
            (
                "zeroed",
                index(2 * c, &[1, 2]),
                index(2 * c, &[1, 0]),
                vec![range(c, c)],
            ),
            (
                "grew, partial last slot",
                index(2 * c, &[1, 2]),
                index(3 * c + 10, &[1, 2, 3, 4]),
                vec![range(2 * c, c + 10)],
            ),
            (
                "shrank inside a slot",
                index(2 * c, &[1, 2]),
                index(c + 10, &[1, 2]),
                vec![range(c, c)],
            ),
            ("both empty", index(0, &[]), index(0, &[]), vec![]),
        ];
        for (name, old, new, expected) in cases {
            assert_eq!(changed_ranges(&old, &new), expected, "{name}");
        }
    }

    #[test]
    fn different_chunk_sizes_differ_everywhere() {
        let old = FixedIndex::new_zeroed(100_000, CHUNK);
        let new = FixedIndex::new_zeroed(200_000, 2 * CHUNK);
        assert_eq!(changed_ranges(&old, &new), vec![range(0, 200_000)]);
    }
}
