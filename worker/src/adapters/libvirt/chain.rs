//! The libvirt incremental chain: which checkpoint belongs to which snapshot, and
//! whether the next backup of a disk may be incremental.
//!
//! A snapshot's manifest records, per disk, the checkpoint created at its point in time
//! (`chain.checkpoint`) and the disk's capacity then. The next backup asks libvirt for
//! what changed since that checkpoint, and only when everything still matches; any
//! doubt means a full read (chunks are still deduplicated). Pure logic, tested by
//! tables.

use std::collections::BTreeMap;

/// Manifest `chain` key: the checkpoint that records changes since this snapshot.
pub const CHAIN_CHECKPOINT: &str = "checkpoint";
/// Manifest `chain` key: disk capacity in bytes at the snapshot point.
pub const CHAIN_SIZE: &str = "size";
/// Manifest `chain` key: the disk's source (file or block device) at the snapshot point.
pub const CHAIN_SOURCE: &str = "source";

/// Haven's checkpoint of `vm` taken at snapshot `timestamp` (RFC 3339):
/// `haven-VM-20261125T173402Z`. Other tools (virtnbdbackup's `virtnbdbackup.N`, a
/// plain `backup-begin`'s timestamps) never produce this shape.
pub fn checkpoint_name(vm: &str, timestamp: &str) -> String {
    crate::marker::marker_name('-', vm, timestamp)
}

/// Whether `name` is a checkpoint Haven made for `vm`. The suffix has a fixed shape,
/// so VM `a` never claims VM `a-b`'s checkpoints.
pub fn is_haven_checkpoint(vm: &str, name: &str) -> bool {
    crate::marker::is_marker('-', vm, name)
}

/// How one disk will be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadMode {
    /// Only what changed since this checkpoint.
    Incremental {
        /// The checkpoint of the previous snapshot.
        checkpoint: String,
    },
    /// Every allocated block.
    Full {
        /// Why, for the log and the report.
        reason: String,
    },
}

/// What is known about one disk now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskFacts<'a> {
    /// Capacity in bytes.
    pub size: u64,
    /// Source file or device.
    pub source: &'a str,
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
/// or no such disk in it), `checkpoints` the domain's checkpoints now, `base` the
/// previous index if it read back intact.
pub fn decide(
    vm: &str,
    disk: DiskFacts<'_>,
    chain: Option<&BTreeMap<String, String>>,
    checkpoints: &[String],
    base: Option<BaseFacts>,
    chunk_size: u32,
) -> ReadMode {
    let full = |reason: String| ReadMode::Full { reason };
    let Some(chain) = chain else {
        return full("no previous snapshot of this disk".into());
    };
    let Some(checkpoint) = chain.get(CHAIN_CHECKPOINT) else {
        return full("the previous snapshot records no libvirt checkpoint".into());
    };
    if !is_haven_checkpoint(vm, checkpoint) {
        return full(format!(
            "checkpoint {checkpoint:?} of the previous snapshot is not Haven's"
        ));
    }
    if !checkpoints.iter().any(|name| name == checkpoint) {
        return full(format!(
            "checkpoint {checkpoint} is missing from the domain (deleted, or the domain was redefined)"
        ));
    }
    if chain.get(CHAIN_SIZE) != Some(&disk.size.to_string()) {
        return full(format!(
            "disk size changed from {} to {}",
            chain.get(CHAIN_SIZE).map(String::as_str).unwrap_or("?"),
            disk.size
        ));
    }
    if let Some(source) = chain.get(CHAIN_SOURCE)
        && source != disk.source
    {
        return full(format!(
            "disk source changed from {source} to {}",
            disk.source
        ));
    }
    let Some(base) = base else {
        return full("the previous snapshot's index is unreadable".into());
    };
    if base.size != disk.size || base.chunk_size != chunk_size {
        return full("the previous snapshot's index does not match the disk".into());
    }
    ReadMode::Incremental {
        checkpoint: checkpoint.clone(),
    }
}

/// The chain entry a new snapshot records for one disk.
pub fn chain_entry(checkpoint: &str, disk: DiskFacts<'_>) -> BTreeMap<String, String> {
    BTreeMap::from([
        (CHAIN_CHECKPOINT.to_string(), checkpoint.to_string()),
        (CHAIN_SIZE.to_string(), disk.size.to_string()),
        (CHAIN_SOURCE.to_string(), disk.source.to_string()),
    ])
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
            ReadMode::Incremental {
                checkpoint: CP.into()
            }
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
