//! Disks read by byte ranges from a remote file, with a known map of their data.
//!
//! A vSphere disk is read from its `-flat.vmdk` over the datastore's HTTPS interface,
//! one ranged request per slot, and vSphere itself says which areas hold data
//! (`QueryChangedDiskAreas` with `"*"`) or changed since a previous point (with a
//! `changeId`). Reading the ranges natively keeps one process and one copy; the areas
//! feed the planner as an NBD server's `base:allocation` and dirty bitmap would.

use haven_nbd::{Extent, STATE_DIRTY, STATE_HOLE, STATE_ZERO};

use crate::error::Result;

/// A disk read by byte ranges.
#[async_trait::async_trait]
pub trait RangeRead: Send + Sync + std::fmt::Debug {
    /// Size of the disk in bytes.
    fn size(&self) -> u64;

    /// Fills `buf` with the disk's bytes at `offset`; a short read is an error.
    async fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
}

/// One area of a disk, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteArea {
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
}

/// The extents of `[start, end)` as `areas` (sorted, not overlapping) cover it: each area
/// flagged `inside`, the gaps `outside`.
pub fn extents(areas: &[ByteArea], start: u64, end: u64, inside: u32, outside: u32) -> Vec<Extent> {
    let mut extents = Vec::new();
    let mut position = start;
    let first = areas.partition_point(|area| area.start + area.length <= start);
    for area in &areas[first..] {
        if area.start >= end {
            break;
        }
        let area_start = area.start.max(position);
        let area_end = (area.start + area.length).min(end);
        if area_start > position {
            extents.push(Extent {
                offset: position,
                length: area_start - position,
                flags: outside,
            });
        }
        if area_end > area_start {
            extents.push(Extent {
                offset: area_start,
                length: area_end - area_start,
                flags: inside,
            });
            position = area_end;
        }
    }
    if position < end {
        extents.push(Extent {
            offset: position,
            length: end - position,
            flags: outside,
        });
    }
    extents
}

/// Allocation flags, as `base:allocation` gives them: data inside the areas, holes of
/// zeros outside.
pub const ALLOCATION: (u32, u32) = (0, STATE_HOLE | STATE_ZERO);
/// Dirty-bitmap flags: dirty inside the areas, clean outside.
pub const DIRTY: (u32, u32) = (STATE_DIRTY, 0);

#[cfg(test)]
mod tests {
    use super::*;

    fn area(start: u64, length: u64) -> ByteArea {
        ByteArea { start, length }
    }

    #[test]
    fn areas_become_extents_of_a_window() {
        let areas = [area(10, 10), area(30, 5), area(100, 50)];
        let got: Vec<(u64, u64, u32)> = extents(&areas, 0, 40, 1, 2)
            .into_iter()
            .map(|e| (e.offset, e.length, e.flags))
            .collect();
        assert_eq!(
            got,
            [(0, 10, 2), (10, 10, 1), (20, 10, 2), (30, 5, 1), (35, 5, 2)]
        );
        let got: Vec<(u64, u64, u32)> = extents(&areas, 120, 200, 1, 2)
            .into_iter()
            .map(|e| (e.offset, e.length, e.flags))
            .collect();
        assert_eq!(got, [(120, 30, 1), (150, 50, 2)]);
        assert_eq!(extents(&[], 0, 8, 1, 2).len(), 1);
    }
}
