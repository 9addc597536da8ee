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

use super::marker::{is_marker, marker_name};

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

/// How one disk was read, as the adapters' reports print it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReadSummary {
    /// `incremental` or `full`.
    pub mode: &'static str,
    /// Why it was a full read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `incremental`, or `full (why)` when an incremental was not possible.
impl std::fmt::Display for ReadSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.reason {
            Some(reason) => write!(f, "full ({reason})"),
            None => f.write_str(self.mode),
        }
    }
}

impl From<&ReadMode> for ReadSummary {
    fn from(mode: &ReadMode) -> Self {
        Self {
            mode: mode.label(),
            reason: mode.reason().map(str::to_string),
        }
    }
}

/// The kind of object a hypervisor marks snapshot points with, and the one fact besides
/// the disk size that such a marker is only valid with.
#[derive(Debug, Clone, Copy)]
pub struct MarkerKind {
    /// Manifest `chain` key of the marker's name; also its short name in messages
    /// (`bitmap`, `checkpoint`).
    pub chain_key: &'static str,
    /// What the object is called in full (`dirty bitmap`, `libvirt checkpoint`).
    pub noun: &'static str,
    /// Separator of Haven's names for it (see `marker.rs`).
    pub separator: char,
    /// The fact the previous snapshot recorded next to its marker that must still hold.
    pub depends_on: FactKind,
}

/// A fact a marker depends on (the disk's block node, its source), recorded in the
/// manifest's chain next to the marker.
#[derive(Debug, Clone, Copy)]
pub struct FactKind {
    /// Manifest `chain` key.
    pub key: &'static str,
    /// Whether a chain without this key is a doubt (`false`: older manifests did not
    /// record it, so its absence is accepted).
    pub required: bool,
    /// The reason of a full read when the recorded value (`?` when absent) differs from
    /// the value now.
    pub changed: fn(&str, &str) -> String,
}

impl FactKind {
    /// A fact every chain records: a chain without it is a doubt.
    pub const fn required(key: &'static str, changed: fn(&str, &str) -> String) -> Self {
        Self {
            key,
            required: true,
            changed,
        }
    }

    /// A fact added to the chain later: older manifests without it are accepted.
    pub const fn optional(key: &'static str, changed: fn(&str, &str) -> String) -> Self {
        Self {
            key,
            required: false,
            changed,
        }
    }
}

/// The disk's size now and the value now of the fact its marker depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskNow {
    /// Size in bytes.
    pub size: u64,
    /// The value of the marker kind's [`MarkerKind::depends_on`] fact.
    pub fact: String,
}

/// What the previous snapshot offers one disk, with the repository's chunk size now
/// that its base must match: the input of every read-mode decision.
#[derive(Debug, Clone, Copy)]
pub struct Previous<'a> {
    /// The disk's chain in the previous manifest (`None`: no previous snapshot or no
    /// such disk in it).
    pub chain: Option<&'a BTreeMap<String, String>>,
    /// The previous index's facts, if it read back intact.
    pub base: Option<BaseFacts>,
    /// The repository's chunk size now.
    pub chunk_size: u32,
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

impl MarkerKind {
    /// Haven's marker for `vm` at snapshot `timestamp` (RFC 3339):
    /// `haven<sep>VM<sep>20261125T173402Z`.
    pub fn name(&self, vm: &str, timestamp: &str) -> String {
        marker_name(self.separator, vm, timestamp)
    }

    /// Whether `name` is a marker of this kind Haven made for `vm`. The suffix has a
    /// fixed shape, so VM `a` never claims VM `a-b`'s markers.
    pub fn is_haven(&self, vm: &str, name: &str) -> bool {
        is_marker(self.separator, vm, name)
    }

    /// Decides between incremental and full for one disk.
    ///
    /// `marker_unusable` says why the hypervisor's marker of that name cannot be used
    /// now (missing, inconsistent, busy), if so.
    pub fn decide(
        &self,
        vm: &str,
        disk: &DiskNow,
        previous: &Previous<'_>,
        marker_unusable: impl FnOnce(&str) -> Option<String>,
    ) -> ReadMode {
        let full = |reason: String| ReadMode::Full { reason };
        let Some(chain) = previous.chain else {
            return full("no previous snapshot of this disk".into());
        };
        let Some(marker) = chain.get(self.chain_key) else {
            return full(format!("the previous snapshot records no {}", self.noun));
        };
        if !self.is_haven(vm, marker) {
            return full(format!(
                "{} {marker:?} of the previous snapshot is not Haven's",
                self.chain_key
            ));
        }
        let recorded = |key: &str| chain.get(key).map(String::as_str);
        let fact = &self.depends_on;
        match recorded(fact.key) {
            Some(then) if then == disk.fact => {}
            None if !fact.required => {}
            then => return full((fact.changed)(then.unwrap_or("?"), &disk.fact)),
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
        match previous.base {
            None => full(
                "the previous snapshot's index is unreadable, missing or failed verification"
                    .into(),
            ),
            Some(base) if base.size != disk.size || base.chunk_size != previous.chunk_size => {
                full(
                    "the previous snapshot's index does not match the disk (another disk or chunk size)"
                        .into(),
                )
            }
            Some(_) => ReadMode::Incremental {
                marker: marker.clone(),
            },
        }
    }

    /// The chain to record for a disk in the new manifest: its new marker, its size and
    /// the fact the marker depends on.
    pub fn chain_entry(&self, marker: &str, disk: &DiskNow) -> BTreeMap<String, String> {
        BTreeMap::from([
            (self.chain_key.to_string(), marker.to_string()),
            (CHAIN_SIZE.to_string(), disk.size.to_string()),
            (self.depends_on.key.to_string(), disk.fact.clone()),
        ])
    }
}
