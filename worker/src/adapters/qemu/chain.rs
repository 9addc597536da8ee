//! The incremental chain: which dirty bitmap belongs to which snapshot, and whether the
//! next backup of a disk may be incremental.
//!
//! A snapshot's manifest records, per disk, the bitmap started at its point in time
//! (`chain.bitmap`), the node it lives on and the disk size. The next backup reads only
//! what that bitmap marks dirty, and only when everything still matches; any doubt
//! means a full read (chunks are still deduplicated), never an incremental on a wrong
//! base. Pure logic, tested by tables.

use std::collections::BTreeMap;

use super::graph::{BitmapInfo, LiveDisk};

/// Manifest `chain` key: the bitmap that records changes since this snapshot.
pub const CHAIN_BITMAP: &str = "bitmap";
/// Manifest `chain` key: the block node the bitmap lives on.
pub const CHAIN_NODE: &str = "node";
/// Manifest `chain` key: disk size in bytes when the bitmap was started.
pub const CHAIN_SIZE: &str = "size";

/// Haven's bitmap for `vm` started at snapshot `timestamp` (RFC 3339):
/// `haven.VM.20261125T173402Z`. VM names cannot contain the compact timestamp's form
/// after a dot, so one VM's bitmaps are never taken for another's.
pub fn bitmap_name(vm: &str, timestamp: &str) -> String {
    crate::marker::marker_name('.', vm, timestamp)
}

/// Whether `name` is a bitmap Haven made for `vm`.
pub fn is_haven_bitmap(vm: &str, name: &str) -> bool {
    crate::marker::is_marker('.', vm, name)
}

/// How one disk will be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadMode {
    /// Only what this bitmap marks dirty.
    Incremental {
        /// The bitmap of the previous snapshot.
        bitmap: String,
    },
    /// Every allocated block.
    Full {
        /// Why, for the log and the report.
        reason: String,
    },
}

/// The base the previous snapshot offers for one disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseFacts {
    /// Disk size of the previous index.
    pub size: u64,
    /// Chunk size of the previous index.
    pub chunk_size: u32,
}

/// Decides between incremental and full for one disk.
///
/// `chain` is the disk's chain in the previous manifest (`None`: no previous snapshot
/// or no such disk in it); `base` the previous index if it read back intact.
pub fn decide(
    vm: &str,
    disk: &LiveDisk,
    chain: Option<&BTreeMap<String, String>>,
    base: Option<BaseFacts>,
    chunk_size: u32,
) -> ReadMode {
    let full = |reason: String| ReadMode::Full { reason };
    let Some(chain) = chain else {
        return full("no previous snapshot of this disk".into());
    };
    let Some(bitmap) = chain.get(CHAIN_BITMAP) else {
        return full("the previous snapshot records no dirty bitmap".into());
    };
    if !is_haven_bitmap(vm, bitmap) {
        return full(format!(
            "bitmap {bitmap:?} of the previous snapshot is not Haven's"
        ));
    }
    if chain.get(CHAIN_NODE) != Some(&disk.node) {
        return full(format!(
            "the previous snapshot read node {:?}, not {:?}",
            chain.get(CHAIN_NODE).map(String::as_str).unwrap_or("?"),
            disk.node
        ));
    }
    if chain.get(CHAIN_SIZE) != Some(&disk.size.to_string()) {
        return full(format!(
            "disk size changed from {} to {}",
            chain.get(CHAIN_SIZE).map(String::as_str).unwrap_or("?"),
            disk.size
        ));
    }
    let Some(info): Option<&BitmapInfo> = disk.bitmaps.iter().find(|b| b.name == *bitmap) else {
        return full(format!(
            "bitmap {bitmap} is missing (qemu restarted without saving it?)"
        ));
    };
    if info.inconsistent {
        return full(format!(
            "bitmap {bitmap} is inconsistent (qemu stopped without saving it)"
        ));
    }
    if info.busy {
        return full(format!("bitmap {bitmap} is in use by another operation"));
    }
    match base {
        None => full("the previous snapshot's index is missing or failed verification".into()),
        Some(base) if base.size != disk.size || base.chunk_size != chunk_size => {
            full("the previous snapshot's index has another disk or chunk size".into())
        }
        Some(_) => ReadMode::Incremental {
            bitmap: bitmap.clone(),
        },
    }
}

/// The chain to record for a disk in the new manifest.
pub fn chain_entry(bitmap: &str, disk: &LiveDisk) -> BTreeMap<String, String> {
    BTreeMap::from([
        (CHAIN_BITMAP.to_string(), bitmap.to_string()),
        (CHAIN_NODE.to_string(), disk.node.clone()),
        (CHAIN_SIZE.to_string(), disk.size.to_string()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "haven.web.20261125T173402Z";

    fn bitmap(name: &str, inconsistent: bool, busy: bool) -> BitmapInfo {
        BitmapInfo {
            name: name.into(),
            recording: true,
            busy,
            persistent: true,
            inconsistent,
        }
    }

    fn disk(size: u64, bitmaps: Vec<BitmapInfo>) -> LiveDisk {
        LiveDisk {
            name: "vda".into(),
            node: "disk0".into(),
            size,
            bitmaps,
        }
    }

    #[test]
    fn names_round_trip_and_foreign_names_are_not_ours() {
        let name = bitmap_name("web", "2026-11-25T17:34:02Z");
        assert_eq!(name, GOOD);
        assert!(is_haven_bitmap("web", &name));
        for foreign in [
            "bm0",
            "haven.web.2026",
            "haven.web.20261125T173402Zx",
            "haven.web.b.20261125T173402Z",
            "haven.we.20261125T173402Z",
            "backup-vda",
        ] {
            assert!(!is_haven_bitmap("web", foreign), "{foreign}");
        }
        assert!(!is_haven_bitmap(
            "web",
            &bitmap_name("web.b", "2026-11-25T17:34:02Z")
        ));
    }

    #[test]
    fn every_doubt_means_a_full_read() {
        let chain = chain_entry(GOOD, &disk(100, vec![]));
        let base = Some(BaseFacts {
            size: 100,
            chunk_size: 64,
        });
        let ok = vec![bitmap(GOOD, false, false)];
        let foreign = chain_entry("bm0", &disk(100, vec![]));
        let other_node = {
            let mut chain = chain.clone();
            chain.insert(CHAIN_NODE.into(), "disk9".into());
            chain
        };
        type Case<'a> = (
            &'a str,
            Option<&'a BTreeMap<String, String>>,
            LiveDisk,
            Option<BaseFacts>,
            Option<&'a str>,
        );
        let table: Vec<Case> = vec![
            (
                "incremental",
                Some(&chain),
                disk(100, ok.clone()),
                base,
                None,
            ),
            (
                "first backup",
                None,
                disk(100, ok.clone()),
                base,
                Some("no previous snapshot"),
            ),
            (
                "foreign bitmap",
                Some(&foreign),
                disk(100, vec![bitmap("bm0", false, false)]),
                base,
                Some("not Haven's"),
            ),
            (
                "node changed",
                Some(&other_node),
                disk(100, ok.clone()),
                base,
                Some("read node"),
            ),
            (
                "size changed",
                Some(&chain),
                disk(200, ok.clone()),
                base,
                Some("size changed"),
            ),
            (
                "missing bitmap",
                Some(&chain),
                disk(100, vec![]),
                base,
                Some("missing"),
            ),
            (
                "inconsistent",
                Some(&chain),
                disk(100, vec![bitmap(GOOD, true, false)]),
                base,
                Some("inconsistent"),
            ),
            (
                "busy",
                Some(&chain),
                disk(100, vec![bitmap(GOOD, false, true)]),
                base,
                Some("in use"),
            ),
            (
                "no base index",
                Some(&chain),
                disk(100, ok.clone()),
                None,
                Some("failed verification"),
            ),
            (
                "other chunk size",
                Some(&chain),
                disk(100, ok.clone()),
                Some(BaseFacts {
                    size: 100,
                    chunk_size: 128,
                }),
                Some("chunk size"),
            ),
        ];
        for (case, chain, disk, base, reason) in table {
            let mode = decide("web", &disk, chain, base, 64);
            match (reason, mode) {
                (None, ReadMode::Incremental { bitmap }) => assert_eq!(bitmap, GOOD, "{case}"),
                (Some(expected), ReadMode::Full { reason }) => {
                    assert!(reason.contains(expected), "{case}: {reason}")
                }
                (expected, mode) => panic!("{case}: expected {expected:?}, got {mode:?}"),
            }
        }
    }
}
