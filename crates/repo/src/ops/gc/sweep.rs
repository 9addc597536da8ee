//! The sweep decision: one pass over two sorted streams.
//!
//! `referenced` is every chunk id named by a marked index, sorted and unique;
//! `listed` is every chunk object found in storage as a [`LISTED_LEN`]-byte record
//! (id, modification time, size), sorted by id. Walking both at once classifies each
//! stored chunk as referenced, unreferenced but too young to remove, or garbage, and
//! counts referenced ids that are not stored at all (damage worth reporting).

use std::io;

use crate::format::chunk::ChunkId;

/// Bytes of a listed-chunk record: id (32), modification time (8), size (8).
pub(crate) const LISTED_LEN: usize = 48;

/// Encodes a stored chunk so that records sort by id. Times before 1970 count as 0,
/// which only makes such a chunk look older, never younger.
pub(crate) fn listed_record(id: &ChunkId, modified_unix: i64, size: u64) -> [u8; LISTED_LEN] {
    let mut record = [0u8; LISTED_LEN];
    record[..32].copy_from_slice(&id.0);
    record[32..40].copy_from_slice(&(modified_unix.max(0) as u64).to_be_bytes());
    record[40..].copy_from_slice(&size.to_be_bytes());
    record
}

fn decode_listed(record: &[u8; LISTED_LEN]) -> (ChunkId, i64, u64) {
    let mut id = [0u8; 32];
    id.copy_from_slice(&record[..32]);
    let mut modified = [0u8; 8];
    modified.copy_from_slice(&record[32..40]);
    let mut size = [0u8; 8];
    size.copy_from_slice(&record[40..]);
    (
        ChunkId(id),
        i64::try_from(u64::from_be_bytes(modified)).unwrap_or(i64::MAX),
        u64::from_be_bytes(size),
    )
}

/// What the pass found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct SweepCounts {
    /// Stored chunks some marked index names.
    pub referenced: u64,
    /// Ids a marked index names that are not stored.
    pub missing: u64,
    /// Unreferenced chunks modified at or after the cutoff: kept.
    pub young: u64,
    /// Unreferenced chunks older than the cutoff: handed to `on_garbage`.
    pub garbage: u64,
    /// Stored bytes of the garbage.
    pub garbage_bytes: u64,
}

/// Walks both streams; calls `on_garbage(id, size)` for each unreferenced chunk whose
/// modification time (whole seconds, rounded down) is before `cutoff_unix` (whole
/// seconds, rounded down, so a chunk within the same second as the cutoff is kept).
/// `on_garbage` returns `false` to stop early (the consumer went away).
pub(crate) fn classify<R, L, F>(
    referenced: R,
    listed: L,
    cutoff_unix: i64,
    mut on_garbage: F,
) -> io::Result<SweepCounts>
where
    R: Iterator<Item = io::Result<[u8; 32]>>,
    L: Iterator<Item = io::Result<[u8; LISTED_LEN]>>,
    F: FnMut(ChunkId, u64) -> bool,
{
    let mut counts = SweepCounts::default();
    let mut referenced = referenced.peekable();
    for record in listed {
        let (id, modified, size) = decode_listed(&record?);
        let mut is_referenced = false;
        while let Some(next) = referenced.peek() {
            let next = match next {
                Ok(next) => *next,
                Err(_) => {
                    return Err(referenced
                        .next()
                        .and_then(Result::err)
                        .unwrap_or_else(|| io::Error::other("sorted run failed")));
                }
            };
            if next < id.0 {
                counts.missing += 1;
                referenced.next();
            } else {
                is_referenced = next == id.0;
                if is_referenced {
                    referenced.next();
                }
                break;
            }
        }
        if is_referenced {
            counts.referenced += 1;
        } else if modified < cutoff_unix {
            counts.garbage += 1;
            counts.garbage_bytes += size;
            if !on_garbage(id, size) {
                return Ok(counts);
            }
        } else {
            counts.young += 1;
        }
    }
    for rest in referenced {
        rest?;
        counts.missing += 1;
    }
    Ok(counts)
}

#[cfg(test)]
mod tests {
    use super::super::external_sort::RunWriter;
    use super::*;

    fn id(n: u16) -> ChunkId {
        let mut bytes = [0u8; 32];
        bytes[..2].copy_from_slice(&n.to_be_bytes());
        bytes[31] = 1;
        ChunkId(bytes)
    }

    /// Both sides go through the external sorter with a tiny buffer (two or three
    /// records per run, so the marks need a merge pass), fed out of order, as the collector does.
    #[test]
    fn classifies_through_multi_run_sorted_streams() {
        let dir = tempfile::tempdir().unwrap();
        let mut marks = RunWriter::<32>::new(dir.path(), "marks", 64);
        // Referenced: every multiple of 3 below 300, each pushed twice, plus 1000 and
        // 1001 which are not stored.
        for n in (0..300u16).rev().filter(|n| n % 3 == 0) {
            marks.push(id(n).0).unwrap();
            marks.push(id(n).0).unwrap();
        }
        marks.push(id(1001).0).unwrap();
        marks.push(id(1000).0).unwrap();
        assert!(marks.runs_written() > super::super::external_sort::MAX_FAN_IN);
        let mut listed = RunWriter::<LISTED_LEN>::new(dir.path(), "listed", 3 * LISTED_LEN);
        // Stored: 0..300; odd ones are old (time 100), even ones young (time 500).
        for n in (0..300u16).map(|n| (n * 7) % 300) {
            let time = if n % 2 == 1 { 100 } else { 500 };
            listed
                .push(listed_record(&id(n), time, u64::from(n) + 10))
                .unwrap();
        }
        let mut garbage = Vec::new();
        let counts = classify(
            marks.finish().unwrap(),
            listed.finish().unwrap(),
            200,
            |chunk, size| {
                garbage.push((chunk, size));
                true
            },
        )
        .unwrap();
        let expected: Vec<(ChunkId, u64)> = (0..300u16)
            .filter(|n| n % 3 != 0 && n % 2 == 1)
            .map(|n| (id(n), u64::from(n) + 10))
            .collect();
        assert_eq!(garbage, expected, "old unreferenced chunks, in id order");
        assert_eq!(counts.referenced, 100);
        assert_eq!(counts.missing, 2);
        assert_eq!(counts.garbage, expected.len() as u64);
        assert_eq!(
            counts.garbage_bytes,
            expected.iter().map(|(_, size)| size).sum::<u64>()
        );
        assert_eq!(counts.young, 300 - 100 - expected.len() as u64);
    }

    #[test]
    fn the_cutoff_second_is_kept_and_stopping_early_is_honoured() {
        let listed = vec![
            Ok(listed_record(&id(1), 199, 1)),
            Ok(listed_record(&id(2), 200, 1)),
            Ok(listed_record(&id(3), 10, 1)),
            Ok(listed_record(&id(4), 10, 1)),
        ];
        let mut seen = Vec::new();
        let counts = classify(std::iter::empty(), listed.into_iter(), 200, |chunk, _| {
            seen.push(chunk);
            seen.len() < 2
        })
        .unwrap();
        assert_eq!(seen, vec![id(1), id(3)], "id 2 is in the cutoff second");
        assert_eq!(counts.garbage, 2, "stopped before id 4");
        assert_eq!(counts.young, 1);
    }
}
