//! The QEMU side of the incremental chain ([`crate::adapters::chain`]): the marker is
//! a persistent dirty bitmap on the disk's block node.
//!
//! A snapshot's manifest records, per disk, the bitmap started at its point in time
//! (`chain.bitmap`), the node it lives on and the disk size; the bitmap is usable only
//! while QEMU shows it consistent and not busy.

use super::graph::LiveDisk;
use crate::adapters::chain::{DiskNow, FactKind, MarkerKind, Previous, ReadMode};

pub use crate::adapters::chain::CHAIN_SIZE;

/// Manifest `chain` key: the bitmap that records changes since this snapshot.
pub const CHAIN_BITMAP: &str = "bitmap";
/// Manifest `chain` key: the block node the bitmap lives on.
pub const CHAIN_NODE: &str = "node";

/// Haven's bitmaps, `haven.VM.20261125T173402Z` (VM names cannot contain the compact
/// timestamp's form after a dot, so one VM's bitmaps are never taken for another's),
/// valid only on the block node they were started on.
pub const BITMAP: MarkerKind = MarkerKind {
    chain_key: CHAIN_BITMAP,
    noun: "dirty bitmap",
    separator: '.',
    depends_on: FactKind::required(CHAIN_NODE, node_changed),
};

fn node_changed(then: &str, now: &str) -> String {
    format!("the previous snapshot read node {then:?}, not {now:?}")
}

/// What the bitmap depends on: the disk's size and block node.
pub fn disk_now(disk: &LiveDisk) -> DiskNow {
    DiskNow {
        size: disk.size,
        fact: disk.node.clone(),
    }
}

/// Decides between incremental and full for one disk (see [`MarkerKind::decide`]); the
/// bitmap must be present, consistent and not busy on the disk's node.
pub fn decide(vm: &str, disk: &LiveDisk, previous: &Previous<'_>) -> ReadMode {
    let unusable = |bitmap: &str| {
        let Some(info) = disk.bitmaps.iter().find(|b| b.name == bitmap) else {
            return Some(format!(
                "bitmap {bitmap} is missing (qemu restarted without saving it?)"
            ));
        };
        if info.inconsistent {
            return Some(format!(
                "bitmap {bitmap} is inconsistent (qemu stopped without saving it)"
            ));
        }
        info.busy
            .then(|| format!("bitmap {bitmap} is in use by another operation"))
    };
    BITMAP.decide(vm, &disk_now(disk), previous, unusable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::chain::BaseFacts;
    use crate::adapters::qemu::graph::BitmapInfo;
    use std::collections::BTreeMap;

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
        let name = BITMAP.name("web", "2026-11-25T17:34:02Z");
        assert_eq!(name, GOOD);
        assert!(BITMAP.is_haven("web", &name));
        for foreign in [
            "bm0",
            "haven.web.2026",
            "haven.web.20261125T173402Zx",
            "haven.web.b.20261125T173402Z",
            "haven.we.20261125T173402Z",
            "backup-vda",
        ] {
            assert!(!BITMAP.is_haven("web", foreign), "{foreign}");
        }
        assert!(!BITMAP.is_haven("web", &BITMAP.name("web.b", "2026-11-25T17:34:02Z")));
    }

    #[test]
    fn every_doubt_means_a_full_read() {
        let chain = BITMAP.chain_entry(GOOD, &disk_now(&disk(100, vec![])));
        let base = Some(BaseFacts {
            size: 100,
            chunk_size: 64,
        });
        let ok = vec![bitmap(GOOD, false, false)];
        let foreign = BITMAP.chain_entry("bm0", &disk_now(&disk(100, vec![])));
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
            let previous = Previous {
                chain,
                base,
                chunk_size: 64,
            };
            let mode = decide("web", &disk, &previous);
            match (reason, mode) {
                (None, ReadMode::Incremental { marker }) => assert_eq!(marker, GOOD, "{case}"),
                (Some(expected), ReadMode::Full { reason }) => {
                    assert!(reason.contains(expected), "{case}: {reason}")
                }
                (expected, mode) => panic!("{case}: expected {expected:?}, got {mode:?}"),
            }
        }
    }
}
