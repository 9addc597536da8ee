//! What a listing returns and the bounds of a walk: the vocabulary every file-system
//! driver speaks, kept apart from [`crate::Volume`] so the drivers below it need nothing
//! from the layer above.

/// What a directory entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A device node, fifo or socket (listed, not restored).
    Special,
}

/// One file or directory with the metadata a restore needs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    /// Name within its directory (`/` for the root).
    pub name: String,
    /// Absolute path in the file system.
    pub path: String,
    /// Type.
    pub kind: EntryKind,
    /// Size in bytes (for a symlink, the length of its target).
    pub size: u64,
    /// Permission bits (`0o7777`), when the file system has them.
    pub mode: Option<u32>,
    /// Owner user id, when the file system has one.
    pub uid: Option<u32>,
    /// Owner group id, when the file system has one.
    pub gid: Option<u32>,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: Option<i64>,
    /// Nanoseconds part of `mtime`.
    pub mtime_nanos: u32,
    /// Access time, seconds since the Unix epoch.
    pub atime: Option<i64>,
    /// Target of a symlink.
    pub target: Option<String>,
}

/// Safety bounds of walks over untrusted trees.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Deepest directory nesting followed (directory loops stop here).
    pub max_depth: usize,
    /// Most entries visited by one walk.
    pub max_entries: u64,
    /// Most entries listed from one directory.
    pub max_dir_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_depth: 256,
            max_entries: 10_000_000,
            max_dir_entries: 1_000_000,
        }
    }
}

impl Limits {
    /// Refuses one more entry of the directory `path` once it has listed `listed`
    /// ([`Limits::max_dir_entries`]).
    pub(crate) fn admit_dir_entry(&self, path: &str, listed: usize) -> crate::error::Result<()> {
        if listed >= self.max_dir_entries {
            return Err(crate::error::FilesError::Limit(format!(
                "{path}: more than {} entries",
                self.max_dir_entries
            )));
        }
        Ok(())
    }
}

/// Joins a directory path and a name.
pub(crate) fn join(directory: &str, name: &str) -> String {
    if directory == "/" {
        format!("/{name}")
    } else {
        format!("{directory}/{name}")
    }
}
