//! The libvirt side of the incremental chain ([`crate::adapters::chain`]): the marker
//! is a checkpoint of the domain.
//!
//! A snapshot's manifest records, per disk, the checkpoint created at its point in time
//! (`chain.checkpoint`), the disk's capacity and its source then; the checkpoint is
//! usable only while the domain still has it.

use crate::adapters::chain::{DiskNow, FactKind, MarkerKind, Previous, ReadMode};

pub use crate::adapters::chain::CHAIN_SIZE;

/// Manifest `chain` key: the checkpoint that records changes since this snapshot.
pub const CHAIN_CHECKPOINT: &str = "checkpoint";
/// Manifest `chain` key: the disk's source (file or block device) at the snapshot point.
pub const CHAIN_SOURCE: &str = "source";

/// Haven's checkpoints, `haven-VM-20261125T173402Z` (other tools, virtnbdbackup's
/// `virtnbdbackup.N` or a plain `backup-begin`'s timestamps, never produce this shape),
/// valid while the disk keeps its source (manifests older than the source key are
/// accepted without it).
pub const CHECKPOINT: MarkerKind = MarkerKind {
    chain_key: CHAIN_CHECKPOINT,
    noun: "libvirt checkpoint",
    separator: '-',
    depends_on: FactKind::optional(CHAIN_SOURCE, source_changed),
};

fn source_changed(then: &str, now: &str) -> String {
    format!("disk source changed from {then} to {now}")
}

/// Decides between incremental and full for one disk (see [`MarkerKind::decide`]);
/// `disk.fact` is its source, `checkpoints` are the domain's checkpoints now.
pub fn decide(
    vm: &str,
    disk: &DiskNow,
    previous: &Previous<'_>,
    checkpoints: &[String],
) -> ReadMode {
    let unusable = |checkpoint: &str| {
        (!checkpoints.iter().any(|name| name == checkpoint)).then(|| {
            format!(
                "checkpoint {checkpoint} is missing from the domain (deleted, or the domain was redefined)"
            )
        })
    };
    CHECKPOINT.decide(vm, disk, previous, unusable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::chain::BaseFacts;
    use std::collections::BTreeMap;

    const CP: &str = "haven-vm-20261125T173402Z";

    #[test]
    fn names_round_trip_and_are_not_confused() {
        assert_eq!(CHECKPOINT.name("vm", "2026-11-25T17:34:02Z"), CP);
        assert!(CHECKPOINT.is_haven("vm", CP));
        assert!(!CHECKPOINT.is_haven("v", CP));
        assert!(!CHECKPOINT.is_haven("vm-2", CP));
        assert!(!CHECKPOINT.is_haven("a", "haven-a-b-20261125T173402Z"));
        assert!(CHECKPOINT.is_haven("a-b", "haven-a-b-20261125T173402Z"));
        assert!(!CHECKPOINT.is_haven("vm", "virtnbdbackup.0"));
        assert!(!CHECKPOINT.is_haven("vm", "haven-vm-20261125T1734Z"));
    }

    /// The decision for `disk` given the previous snapshot's `chain`, the domain's
    /// `checkpoints`, the previous index's `base` and the chunk size now.
    fn decide_for(
        disk: &DiskNow,
        chain: Option<&BTreeMap<String, String>>,
        checkpoints: &[String],
        base: Option<BaseFacts>,
        chunk_size: u32,
    ) -> ReadMode {
        let previous = Previous {
            chain,
            base,
            chunk_size,
        };
        decide("vm", disk, &previous, checkpoints)
    }

    #[test]
    fn decisions() {
        let disk = DiskNow {
            size: 64 << 20,
            fact: "/d.qcow2".into(),
        };
        let chain = CHECKPOINT.chain_entry(CP, &disk);
        let base = Some(BaseFacts {
            size: 64 << 20,
            chunk_size: 1 << 20,
        });
        let present = vec![CP.to_string()];
        let is_full = |mode: ReadMode, words: &str| match mode {
            ReadMode::Full { reason } => assert!(reason.contains(words), "{reason}"),
            other => panic!("expected full ({words}), got {other:?}"),
        };
        assert_eq!(
            decide_for(&disk, Some(&chain), &present, base, 1 << 20),
            ReadMode::Incremental { marker: CP.into() }
        );
        is_full(
            decide_for(&disk, None, &present, base, 1 << 20),
            "no previous",
        );
        is_full(
            decide_for(&disk, Some(&chain), &[], base, 1 << 20),
            "missing",
        );
        let foreign = CHECKPOINT.chain_entry("virtnbdbackup.0", &disk);
        let foreign_present = vec!["virtnbdbackup.0".to_string()];
        is_full(
            decide_for(&disk, Some(&foreign), &foreign_present, base, 1 << 20),
            "not Haven's",
        );
        let grown = DiskNow {
            size: 128 << 20,
            ..disk.clone()
        };
        is_full(
            decide_for(&grown, Some(&chain), &present, base, 1 << 20),
            "size changed",
        );
        let moved = DiskNow {
            fact: "/other.qcow2".into(),
            ..disk.clone()
        };
        is_full(
            decide_for(&moved, Some(&chain), &present, base, 1 << 20),
            "source changed",
        );
        is_full(
            decide_for(&disk, Some(&chain), &present, None, 1 << 20),
            "unreadable",
        );
        is_full(
            decide_for(&disk, Some(&chain), &present, base, 1 << 18),
            "does not match",
        );
        is_full(
            decide_for(&disk, Some(&BTreeMap::new()), &present, base, 1 << 20),
            "no libvirt checkpoint",
        );
    }
}
