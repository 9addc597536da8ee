//! The libvirt side of the incremental chain ([`crate::adapters::chain`]): the marker
//! is a checkpoint of the domain.
//!
//! A snapshot's manifest records, per disk, the checkpoint created at its point in time
//! (`chain.checkpoint`), the disk's capacity and its source then; the checkpoint is
//! usable only while the domain still has it.

use std::collections::BTreeMap;

use crate::adapters::chain::{self, BaseFacts, DiskNow, MarkerKind, ReadMode, RecordedFact};

pub use crate::adapters::chain::CHAIN_SIZE;

/// Manifest `chain` key: the checkpoint that records changes since this snapshot.
pub const CHAIN_CHECKPOINT: &str = "checkpoint";
/// Manifest `chain` key: the disk's source (file or block device) at the snapshot point.
pub const CHAIN_SOURCE: &str = "source";

/// Haven's checkpoints: `haven-VM-20261125T173402Z`.
const CHECKPOINT: MarkerKind = MarkerKind {
    chain_key: CHAIN_CHECKPOINT,
    noun: "libvirt checkpoint",
    separator: '-',
};

/// Haven's checkpoint of `vm` taken at snapshot `timestamp` (RFC 3339):
/// `haven-VM-20261125T173402Z`. Other tools (virtnbdbackup's `virtnbdbackup.N`, a
/// plain `backup-begin`'s timestamps) never produce this shape.
pub fn checkpoint_name(vm: &str, timestamp: &str) -> String {
    crate::adapters::marker::marker_name(CHECKPOINT.separator, vm, timestamp)
}

/// Whether `name` is a checkpoint Haven made for `vm`. The suffix has a fixed shape,
/// so VM `a` never claims VM `a-b`'s checkpoints.
pub fn is_haven_checkpoint(vm: &str, name: &str) -> bool {
    crate::adapters::marker::is_marker(CHECKPOINT.separator, vm, name)
}

/// What is known about one disk now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskFacts<'a> {
    /// Capacity in bytes.
    pub size: u64,
    /// Source file or device.
    pub source: &'a str,
}

fn source_changed(then: &str, now: &str) -> String {
    format!("disk source changed from {then} to {now}")
}

/// What the checkpoint depends on: the disk's capacity and source (manifests older
/// than the source key are accepted without it).
fn disk_now(disk: DiskFacts<'_>) -> DiskNow<'static> {
    DiskNow {
        size: disk.size,
        facts: vec![RecordedFact {
            key: CHAIN_SOURCE,
            now: disk.source.to_string(),
            required: false,
            changed: &source_changed,
        }],
    }
}

/// Decides between incremental and full for one disk (see [`chain::decide`]);
/// `checkpoints` are the domain's checkpoints now.
pub fn decide(
    vm: &str,
    disk: DiskFacts<'_>,
    chain: Option<&BTreeMap<String, String>>,
    checkpoints: &[String],
    base: Option<BaseFacts>,
    chunk_size: u32,
) -> ReadMode {
    let unusable = |checkpoint: &str| {
        (!checkpoints.iter().any(|name| name == checkpoint)).then(|| {
            format!(
                "checkpoint {checkpoint} is missing from the domain (deleted, or the domain was redefined)"
            )
        })
    };
    chain::decide(
        vm,
        CHECKPOINT,
        &disk_now(disk),
        chain,
        unusable,
        base,
        chunk_size,
    )
}

/// The chain entry a new snapshot records for one disk.
pub fn chain_entry(checkpoint: &str, disk: DiskFacts<'_>) -> BTreeMap<String, String> {
    chain::chain_entry(CHECKPOINT, checkpoint, &disk_now(disk))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CP: &str = "haven-vm-20261125T173402Z";

    #[test]
    fn names_round_trip_and_are_not_confused() {
        assert_eq!(checkpoint_name("vm", "2026-11-25T17:34:02Z"), CP);
        assert!(is_haven_checkpoint("vm", CP));
        assert!(!is_haven_checkpoint("v", CP));
        assert!(!is_haven_checkpoint("vm-2", CP));
        assert!(!is_haven_checkpoint("a", "haven-a-b-20261125T173402Z"));
        assert!(is_haven_checkpoint("a-b", "haven-a-b-20261125T173402Z"));
        assert!(!is_haven_checkpoint("vm", "virtnbdbackup.0"));
        assert!(!is_haven_checkpoint("vm", "haven-vm-20261125T1734Z"));
    }

    #[test]
    fn decisions() {
        let disk = DiskFacts {
            size: 64 << 20,
            source: "/d.qcow2",
        };
        let chain = chain_entry(CP, disk);
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
            decide("vm", disk, Some(&chain), &present, base, 1 << 20),
            ReadMode::Incremental { marker: CP.into() }
        );
        is_full(
            decide("vm", disk, None, &present, base, 1 << 20),
            "no previous",
        );
        is_full(
            decide("vm", disk, Some(&chain), &[], base, 1 << 20),
            "missing",
        );
        let foreign = chain_entry("virtnbdbackup.0", disk);
        let foreign_present = vec!["virtnbdbackup.0".to_string()];
        is_full(
            decide("vm", disk, Some(&foreign), &foreign_present, base, 1 << 20),
            "not Haven's",
        );
        let grown = DiskFacts {
            size: 128 << 20,
            ..disk
        };
        is_full(
            decide("vm", grown, Some(&chain), &present, base, 1 << 20),
            "size changed",
        );
        let moved = DiskFacts {
            source: "/other.qcow2",
            ..disk
        };
        is_full(
            decide("vm", moved, Some(&chain), &present, base, 1 << 20),
            "source changed",
        );
        is_full(
            decide("vm", disk, Some(&chain), &present, None, 1 << 20),
            "unreadable",
        );
        is_full(
            decide("vm", disk, Some(&chain), &present, base, 1 << 18),
            "does not match",
        );
        is_full(
            decide("vm", disk, Some(&BTreeMap::new()), &present, base, 1 << 20),
            "no libvirt checkpoint",
        );
    }
}
