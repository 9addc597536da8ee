//! Snapshot manifests and snapshot names.
//!
//! A manifest is the commit point of a backup: it is written last, only once every
//! chunk and index it names is stored, and it is written with "create only" semantics
//! so two writers can never both believe they committed the same snapshot.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::{RepoError, Result};

/// Version of the manifest document.
pub const MANIFEST_VERSION: u32 = 1;

/// The committed description of one snapshot of one VM.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Document version, [`MANIFEST_VERSION`].
    pub version: u32,
    /// VM name.
    pub vm: String,
    /// Snapshot time, RFC 3339 UTC with whole seconds; also the object name.
    pub timestamp: String,
    /// Program and version that wrote it.
    pub created_by: String,
    /// How the data was obtained.
    pub source: SourceInfo,
    /// What consistency the data has.
    pub consistency: Consistency,
    /// Why a snapshot of a running VM is only crash-consistent although a freeze was
    /// asked for (the guest agent did not answer, the freeze failed); none otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency_reason: Option<String>,
    /// Timestamp of the snapshot this one was based on (incremental), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Disks in the order the VM lists them.
    pub disks: Vec<DiskEntry>,
    /// The hypervisor's description of the VM, so a restore can recreate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_config: Option<VmConfig>,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Where the data of a snapshot came from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceInfo {
    /// `image`, `qemu` or `libvirt`.
    pub kind: String,
    /// Human-readable origin (a path, a socket, a domain name).
    pub origin: String,
}

/// Consistency of the disks' contents.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Consistency {
    /// An image that nothing was writing to.
    Offline,
    /// A point-in-time view of a running VM, as after a power cut.
    CrashConsistent,
    /// File systems were frozen by the guest agent at the snapshot point.
    ApplicationConsistent,
}

/// One disk of a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DiskEntry {
    /// Disk name (for example `vda`).
    pub name: String,
    /// Disk size in bytes.
    pub size: u64,
    /// Chunk size of its index in bytes.
    pub chunk_size: u32,
    /// Key of the index object.
    pub index: String,
    /// Keyed BLAKE3 of the index plaintext, hex: binds the index to this manifest.
    pub index_digest: String,
    /// Counters from the backup that wrote it, for reports.
    pub stats: DiskStats,
    /// Hypervisor-specific state needed by the next incremental (for example the dirty
    /// bitmap that starts at this snapshot).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub chain: BTreeMap<String, String>,
}

/// What a backup of one disk did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskStats {
    /// Bytes read from the disk.
    pub bytes_read: u64,
    /// Slots whose chunk is all zeros (not stored).
    pub zero_chunks: u64,
    /// Slots whose chunk was already known from the previous snapshot or this backup.
    pub reused_chunks: u64,
    /// Slots whose chunk the repository already had (found by an existence query).
    pub existing_chunks: u64,
    /// Chunks uploaded by this backup.
    pub new_chunks: u64,
    /// Plaintext bytes of the uploaded chunks.
    pub new_bytes: u64,
    /// Stored (compressed, encrypted, framed) bytes uploaded.
    pub uploaded_bytes: u64,
}

/// The hypervisor's description of a VM.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VmConfig {
    /// `libvirt-xml`, `qemu-block-graph`, ...
    pub kind: String,
    /// The document itself.
    pub data: String,
}

impl Manifest {
    /// The snapshot id this manifest commits.
    pub fn id(&self) -> Result<SnapshotId> {
        SnapshotId::new(&self.vm, &self.timestamp)
    }

    /// Checks what a reader relies on: names, sizes and index keys agree with the id.
    pub fn validate(&self, key: &str) -> Result<()> {
        let corrupt = |reason: String| RepoError::corrupt(key, reason);
        if self.version != MANIFEST_VERSION {
            return Err(corrupt(format!(
                "unsupported manifest version {}",
                self.version
            )));
        }
        let id = self.id().map_err(|error| corrupt(error.to_string()))?;
        if id.manifest_key() != key {
            return Err(corrupt("manifest names another snapshot".into()));
        }
        for disk in &self.disks {
            validate_name(&disk.name).map_err(|error| corrupt(error.to_string()))?;
            if disk.index != id.index_key(&disk.name) {
                return Err(corrupt(format!(
                    "disk {} has an unexpected index key",
                    disk.name
                )));
            }
        }
        Ok(())
    }

    /// Finds a disk by name, or the only disk when `name` is `None`.
    pub fn disk(&self, name: Option<&str>) -> Result<&DiskEntry, String> {
        match name {
            Some(name) => self
                .disks
                .iter()
                .find(|disk| disk.name == name)
                .ok_or_else(|| format!("snapshot has no disk {name:?}")),
            None if self.disks.len() == 1 => Ok(&self.disks[0]),
            None => Err(format!(
                "snapshot has {} disks ({}): choose one with --disk",
                self.disks.len(),
                self.disks
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

/// A committed snapshot: VM name and timestamp.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SnapshotId {
    /// VM name.
    pub vm: String,
    /// RFC 3339 UTC timestamp with whole seconds.
    pub timestamp: String,
}

impl SnapshotId {
    /// Validates both parts.
    pub fn new(vm: &str, timestamp: &str) -> Result<Self> {
        validate_name(vm)?;
        let time = parse_timestamp(timestamp)?;
        let canonical = format_timestamp(time);
        if canonical != timestamp {
            return Err(RepoError::InvalidName {
                name: timestamp.to_string(),
                reason: "timestamps are stored as RFC 3339 UTC with whole seconds",
            });
        }
        Ok(Self {
            vm: vm.to_string(),
            timestamp: canonical,
        })
    }

    /// A snapshot id for time `time` (truncated to whole seconds).
    pub fn at(vm: &str, time: OffsetDateTime) -> Result<Self> {
        validate_name(vm)?;
        Ok(Self {
            vm: vm.to_string(),
            timestamp: format_timestamp(time),
        })
    }

    /// The snapshot time.
    pub fn time(&self) -> OffsetDateTime {
        parse_timestamp(&self.timestamp).unwrap_or(OffsetDateTime::UNIX_EPOCH)
    }

    /// `snapshots/VM/TIMESTAMP`.
    pub fn manifest_key(&self) -> String {
        format!("snapshots/{}/{}", self.vm, self.timestamp)
    }

    /// `indexes/VM/TIMESTAMP/DISK`.
    pub fn index_key(&self, disk: &str) -> String {
        format!("indexes/{}/{}/{}", self.vm, self.timestamp, disk)
    }

    /// Parses a manifest key back into an id; `None` for anything else.
    pub fn from_manifest_key(key: &str) -> Option<Self> {
        Self::under("snapshots/", key)
    }

    /// `pruned/VM/TIMESTAMP`: left by a replica's prune so that replication never
    /// copies the snapshot there again while the primary still keeps it.
    pub fn tombstone_key(&self) -> String {
        format!("pruned/{}/{}", self.vm, self.timestamp)
    }

    /// Parses a tombstone key back into an id; `None` for anything else.
    pub fn from_tombstone_key(key: &str) -> Option<Self> {
        Self::under("pruned/", key)
    }

    /// The id in `PREFIX/VM/TIMESTAMP`.
    fn under(prefix: &str, key: &str) -> Option<Self> {
        let rest = key.strip_prefix(prefix)?;
        let (vm, timestamp) = rest.split_once('/')?;
        Self::new(vm, timestamp).ok()
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.vm, self.timestamp)
    }
}

/// What a user names on the command line: `VM@TIMESTAMP`, `VM@latest` or `VM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRef {
    /// VM name.
    pub vm: String,
    /// `None` means the newest snapshot.
    pub timestamp: Option<String>,
}

impl std::str::FromStr for SnapshotRef {
    type Err = RepoError;

    fn from_str(text: &str) -> Result<Self> {
        let (vm, when) = match text.split_once('@') {
            Some((vm, when)) => (vm, Some(when)),
            None => (text, None),
        };
        validate_name(vm)?;
        let timestamp = match when {
            None | Some("latest") => None,
            Some(when) => Some(format_timestamp(parse_timestamp(when)?)),
        };
        Ok(Self {
            vm: vm.to_string(),
            timestamp,
        })
    }
}

/// Refuses names that would not make safe, unambiguous object keys or command
/// arguments: the one check of every name a user gives a VM, disk, policy, worker or
/// host. The first character is a letter or digit, so `.`, `..` and hidden names
/// cannot walk paths, and no name starting with `-` can pass for an option of a tool
/// (`virsh`, `qemu-img`) it is handed to.
pub fn validate_name(name: &str) -> Result<()> {
    let invalid = |reason| {
        Err(RepoError::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 128 {
        return invalid("names are 1 to 128 characters");
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return invalid("names start with a letter or digit");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return invalid("names use only letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// Formats a time as stored: RFC 3339, UTC, whole seconds.
pub fn format_timestamp(time: OffsetDateTime) -> String {
    let utc = time.to_offset(time::UtcOffset::UTC);
    let whole = utc.replace_nanosecond(0).unwrap_or(utc);
    whole
        .format(&Rfc3339)
        .unwrap_or_else(|_| whole.unix_timestamp().to_string())
}

/// Parses any RFC 3339 time.
pub fn parse_timestamp(text: &str) -> Result<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|_| RepoError::InvalidName {
        name: text.to_string(),
        reason: "expected an RFC 3339 time such as 2026-11-25T17:15:07Z, or latest",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_refs() {
        let latest: SnapshotRef = "web1@latest".parse().unwrap();
        assert_eq!(latest.timestamp, None);
        let bare: SnapshotRef = "web1".parse().unwrap();
        assert_eq!(bare, latest);
        let at: SnapshotRef = "web1@2026-11-25T18:15:07+01:00".parse().unwrap();
        assert_eq!(at.timestamp.as_deref(), Some("2026-11-25T17:15:07Z"));
        assert!("web1@yesterday".parse::<SnapshotRef>().is_err());
        assert!("../etc@latest".parse::<SnapshotRef>().is_err());
        assert!("a/b".parse::<SnapshotRef>().is_err());
    }

    #[test]
    fn ids_and_keys() {
        let id = SnapshotId::new("web1", "2026-11-25T17:15:07Z").unwrap();
        assert_eq!(id.manifest_key(), "snapshots/web1/2026-11-25T17:15:07Z");
        assert_eq!(id.index_key("vda"), "indexes/web1/2026-11-25T17:15:07Z/vda");
        assert_eq!(SnapshotId::from_manifest_key(&id.manifest_key()), Some(id));
        assert!(SnapshotId::new("web1", "2026-11-25T17:15:07.5Z").is_err());
        assert!(SnapshotId::from_manifest_key("snapshots/web1/x").is_none());
    }

    #[test]
    fn names() {
        assert!(validate_name("vm-01.prod_a").is_ok());
        for bad in [
            "",
            ".hidden",
            "a b",
            "a/b",
            "ä",
            &"x".repeat(129),
            "-",
            "-x",
            "--force",
            ".",
            "..",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }
}
