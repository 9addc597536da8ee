//! One file system on one partition, behind a small driver-neutral API.

use std::io::Write;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use crate::device::{BlockDevice, DeviceSlice};
use crate::entry::{Entry, EntryKind, Limits};
use crate::error::{FilesError, Result};
use crate::filesystem::{ext, fat, ntfs};
use crate::partition::{Partition, looks_like_boot_sector_fs};

/// Supported file systems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FsKind {
    /// ext2, ext3 or ext4 (`ext4-view`).
    Ext,
    /// FAT12/16/32 (`fatfs`).
    Fat,
    /// NTFS (`ntfs`); files only, no Unix metadata.
    Ntfs,
}

pub(crate) enum Driver {
    Ext(Box<ext4_view::Ext4>),
    Fat(Box<fatfs::FileSystem<DeviceSlice>>),
    Ntfs(Box<ntfs::NtfsVolume>),
}

/// An opened file system.
pub struct Volume {
    driver: Driver,
    size: u64,
    limits: Limits,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Volume")
            .field("kind", &self.kind())
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// Runs driver code, turning a panic on corrupt data into an error.
pub(crate) fn guarded<T>(fs: &'static str, work: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(work)) {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|text| text.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "driver failed".into());
            Err(FilesError::Driver {
                fs,
                message: format!("driver failed on corrupt data: {message}"),
            })
        }
    }
}

impl Volume {
    /// Detects and opens the file system of `partition`.
    pub fn open(device: Arc<dyn BlockDevice>, partition: &Partition) -> Result<Self> {
        let slice = DeviceSlice::new(device, partition.start, partition.size);
        let mut head = vec![0u8; 4096.min(slice.len() as usize)];
        slice
            .read_exact_at(0, &mut head)
            .map_err(|source| FilesError::Read {
                offset: partition.start,
                source,
            })?;
        let which = format!("partition {}", partition.number);
        let driver = if head.len() >= 1082 && head[1080] == 0x53 && head[1081] == 0xEF {
            Driver::Ext(Box::new(guarded("ext4", || ext::open(slice.clone()))?))
        } else if head.len() >= 512 && &head[3..11] == b"NTFS    " {
            Driver::Ntfs(Box::new(guarded("ntfs", || ntfs::open(slice.clone()))?))
        } else if head.len() >= 512 && looks_like_boot_sector_fs(&head) {
            Driver::Fat(Box::new(guarded("fat", || fat::open(slice.clone()))?))
        } else if head.starts_with(b"XFSB") {
            return Err(FilesError::Unsupported(format!(
                "{which} holds XFS, which file-level restore does not support yet"
            )));
        } else if head.len() >= 520 && &head[512..520] == b"LABELONE" {
            return Err(FilesError::Unsupported(format!(
                "{which} is an LVM physical volume, which file-level restore does not support yet"
            )));
        } else {
            return Err(FilesError::Unsupported(format!(
                "{which}: no supported file system found (ext2/3/4, FAT and NTFS are supported)"
            )));
        };
        Ok(Self {
            driver,
            size: slice.len(),
            limits: Limits::default(),
        })
    }

    /// Replaces the walk bounds.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// The walk bounds in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Which file system this is.
    pub fn kind(&self) -> FsKind {
        match self.driver {
            Driver::Ext(_) => FsKind::Ext,
            Driver::Fat(_) => FsKind::Fat,
            Driver::Ntfs(_) => FsKind::Ntfs,
        }
    }

    /// Size of the file system's partition; files claiming more are refused.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Metadata of `path` itself (a symlink is not followed).
    pub fn stat(&self, path: &str) -> Result<Entry> {
        let path = normalize(path)?;
        match &self.driver {
            Driver::Ext(fs) => guarded("ext4", || ext::stat(fs, &path)),
            Driver::Fat(fs) => guarded("fat", || fat::stat(fs, &path)),
            Driver::Ntfs(fs) => guarded("ntfs", || ntfs::stat(fs, &path)),
        }
    }

    /// Entries of directory `path`, without `.` and `..`, sorted by name.
    pub fn list(&self, path: &str) -> Result<Vec<Entry>> {
        let path = normalize(path)?;
        let mut entries = match &self.driver {
            Driver::Ext(fs) => guarded("ext4", || ext::list(fs, &path, self.limits)),
            Driver::Fat(fs) => guarded("fat", || fat::list(fs, &path, self.limits)),
            Driver::Ntfs(fs) => guarded("ntfs", || ntfs::list(fs, &path, self.limits)),
        }?;
        entries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(entries)
    }

    /// Copies regular file `path` to `out`; returns the bytes copied.
    pub fn copy_file(&self, path: &str, out: &mut dyn Write) -> Result<u64> {
        let entry = self.stat(path)?;
        if entry.kind != EntryKind::File {
            return Err(FilesError::WrongType {
                path: entry.path,
                message: "not a regular file",
            });
        }
        if entry.size > self.size {
            return Err(FilesError::Limit(format!(
                "{}: claims {} bytes, more than its whole file system ({} bytes)",
                entry.path, entry.size, self.size
            )));
        }
        let copied = match &self.driver {
            Driver::Ext(fs) => guarded("ext4", || ext::copy(fs, &entry.path, out)),
            Driver::Fat(fs) => guarded("fat", || fat::copy(fs, &entry.path, out)),
            Driver::Ntfs(fs) => guarded("ntfs", || ntfs::copy(fs, &entry.path, out)),
        }?;
        if copied != entry.size {
            return Err(FilesError::Driver {
                fs: "file",
                message: format!(
                    "{}: read {copied} bytes of {} claimed",
                    entry.path, entry.size
                ),
            });
        }
        Ok(copied)
    }

    /// Every entry under `root` (depth first, bounded) whose name matches `pattern`
    /// (`*` and `?` wildcards, case-sensitive).
    pub fn find(&self, root: &str, pattern: &str) -> Result<Vec<Entry>> {
        let mut found = Vec::new();
        let mut visited = 0u64;
        let mut stack = vec![(normalize(root)?, 0usize)];
        while let Some((directory, depth)) = stack.pop() {
            if depth > self.limits.max_depth {
                return Err(FilesError::Limit(format!(
                    "{directory}: nested deeper than {} levels (a directory loop?)",
                    self.limits.max_depth
                )));
            }
            for entry in self.list(&directory)? {
                visited += 1;
                if visited > self.limits.max_entries {
                    return Err(FilesError::Limit(format!(
                        "more than {} entries under {root}",
                        self.limits.max_entries
                    )));
                }
                if entry.kind == EntryKind::Dir {
                    stack.push((entry.path.clone(), depth + 1));
                }
                if matches_pattern(pattern.as_bytes(), entry.name.as_bytes()) {
                    found.push(entry);
                }
            }
        }
        found.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(found)
    }
}

/// `/a//b/` → `/a/b`; relative paths are taken from the root.
fn normalize(path: &str) -> Result<String> {
    let mut out = String::new();
    for part in path
        .split('/')
        .filter(|part| !part.is_empty() && *part != ".")
    {
        if part == ".." {
            return Err(FilesError::NotFound(format!(
                "{path}: '..' is not allowed in paths"
            )));
        }
        out.push('/');
        out.push_str(part);
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Glob match with `*` and `?`, iterative (no exponential backtracking).
pub(crate) fn matches_pattern(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if let Some((star_p, star_n)) = star {
            p = star_p + 1;
            n = star_n + 1;
            star = Some((star_p, star_n + 1));
        } else {
            return false;
        }
    }
    while p < pattern.len() && pattern[p] == b'*' {
        p += 1;
    }
    p == pattern.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_and_paths() {
        assert!(matches_pattern(b"*.txt", b"notes.txt"));
        assert!(matches_pattern(b"a?c*", b"abcdef"));
        assert!(!matches_pattern(b"*.txt", b"notes.md"));
        assert!(matches_pattern(b"*", b""));
        assert_eq!(normalize("//etc/./passwd/").unwrap(), "/etc/passwd");
        assert_eq!(normalize("").unwrap(), "/");
        assert!(normalize("/a/../b").is_err());
    }
}
