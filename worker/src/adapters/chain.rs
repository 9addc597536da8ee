//! The incremental chain, for every hypervisor that marks snapshot points: which marker
//! (a QEMU dirty bitmap, a libvirt checkpoint) belongs to which snapshot, and whether
//! the next backup of a disk may read only what changed since it.
//!
//! A snapshot's manifest records, per disk, the marker started at its point in time
//! and the facts the marker is only valid with (the disk's size, and its block node or
//! source). The next backup reads only what the marker says changed, and only when
//! everything still matches; any doubt means a full read (chunks are still
//! deduplicated), never an incremental on a wrong base. Pure logic, tested by tables;
//! each adapter supplies its marker kind, its facts and what the hypervisor says about
//! the marker now.

use std::collections::BTreeMap;

use super::marker::is_marker;

/// Manifest `chain` key: disk size in bytes at the snapshot point (every adapter).
pub const CHAIN_SIZE: &str = "size";

/// How one disk will be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadMode {
    /// Only what changed since this marker of the previous snapshot.
    Incremental {
        /// The marker's name (bitmap or checkpoint).
        marker: String,
    },
    /// Every allocated block.
    Full {
        /// Why, for the log and the report.
        reason: String,
    },
}

impl ReadMode {
    /// `incremental` or `full`, as reports print it.
    pub fn label(&self) -> &'static str {
        match self {
            ReadMode::Incremental { .. } => "incremental",
            ReadMode::Full { .. } => "full",
        }
    }

    /// Why the disk is read in full; `None` for an incremental.
    pub fn reason(&self) -> Option<&str> {
        match self {
            ReadMode::Incremental { .. } => None,
            ReadMode::Full { reason } => Some(reason),
        }
    }

    /// The marker an incremental reads changes since.
    pub fn marker(&self) -> Option<&str> {
        match self {
            ReadMode::Incremental { marker } => Some(marker),
            ReadMode::Full { .. } => None,
        }
    }
}

/// The kind of object a hypervisor marks snapshot points with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkerKind {
    /// Manifest `chain` key of the marker's name; also its short name in messages
    /// (`bitmap`, `checkpoint`).
    pub chain_key: &'static str,
    /// What the object is called in full (`dirty bitmap`, `libvirt checkpoint`).
    pub noun: &'static str,
    /// Separator of Haven's names for it (see `marker.rs`).
    pub separator: char,
}

/// A fact the previous snapshot recorded next to its marker that must still hold.
pub struct RecordedFact<'a> {
    /// Manifest `chain` key.
    pub key: &'static str,
    /// Its value now.
    pub now: String,
    /// Whether a chain without this key is a doubt (`false`: older manifests did not
    /// record it, so its absence is accepted).
    pub required: bool,
    /// The reason of a full read when the recorded value (`?` when absent) differs.
    pub changed: &'a dyn Fn(&str, &str) -> String,
}

/// The disk's size now and the other facts its marker depends on.
pub struct DiskNow<'a> {
    /// Size in bytes.
    pub size: u64,
    /// Facts besides the size (block node, source).
    pub facts: Vec<RecordedFact<'a>>,
}

/// The base the previous snapshot offers for one disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseFacts {
    /// Disk size of the previous index.
    pub size: u64,
    /// Chunk size of the previous index.
    pub chunk_size: u32,
}

impl BaseFacts {
    /// The facts of a base index.
    pub fn of(index: &haven_repo::FixedIndex) -> Self {
        Self {
            size: index.disk_size(),
            chunk_size: index.chunk_size(),
        }
    }
}

/// Decides between incremental and full for one disk.
///
/// `chain` is the disk's chain in the previous manifest (`None`: no previous snapshot
/// or no such disk in it); `marker_unusable` says why the hypervisor's marker of that
/// name cannot be used now (missing, inconsistent, busy), if so; `base` is the previous
/// index if it read back intact.
pub fn decide(
    vm: &str,
    kind: MarkerKind,
    disk: &DiskNow<'_>,
    chain: Option<&BTreeMap<String, String>>,
    marker_unusable: impl FnOnce(&str) -> Option<String>,
    base: Option<BaseFacts>,
    chunk_size: u32,
) -> ReadMode {
    let full = |reason: String| ReadMode::Full { reason };
    let Some(chain) = chain else {
        return full("no previous snapshot of this disk".into());
    };
    let Some(marker) = chain.get(kind.chain_key) else {
        return full(format!("the previous snapshot records no {}", kind.noun));
    };
    if !is_marker(kind.separator, vm, marker) {
        return full(format!(
            "{} {marker:?} of the previous snapshot is not Haven's",
            kind.chain_key
        ));
    }
    let recorded = |key: &str| chain.get(key).map(String::as_str);
    for fact in &disk.facts {
        match recorded(fact.key) {
            Some(then) if then == fact.now => {}
            None if !fact.required => {}
            then => return full((fact.changed)(then.unwrap_or("?"), &fact.now)),
        }
    }
    let size = disk.size.to_string();
    if recorded(CHAIN_SIZE) != Some(size.as_str()) {
        return full(format!(
            "disk size changed from {} to {size}",
            recorded(CHAIN_SIZE).unwrap_or("?")
        ));
    }
    if let Some(reason) = marker_unusable(marker) {
        return full(reason);
    }
    match base {
        None => full(
            "the previous snapshot's index is unreadable, missing or failed verification".into(),
        ),
        Some(base) if base.size != disk.size || base.chunk_size != chunk_size => full(
            "the previous snapshot's index does not match the disk (another disk or chunk size)"
                .into(),
        ),
        Some(_) => ReadMode::Incremental {
            marker: marker.clone(),
        },
    }
}

/// The chain to record for a disk in the new manifest: its new marker, its size and
/// the facts the marker depends on.
pub fn chain_entry(kind: MarkerKind, marker: &str, disk: &DiskNow<'_>) -> BTreeMap<String, String> {
    let mut chain = BTreeMap::from([
        (kind.chain_key.to_string(), marker.to_string()),
        (CHAIN_SIZE.to_string(), disk.size.to_string()),
    ]);
    for fact in &disk.facts {
        chain.insert(fact.key.to_string(), fact.now.clone());
    }
    chain
}
