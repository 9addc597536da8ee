//! Which entries differ between two listings of a file system (two snapshots of one
//! disk): added, removed, and modified with what changed. A pure function over
//! [`Entry`] lists; reading contents, where that is worth it, is the caller's.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::entry::{Entry, EntryKind};

/// Whether an entry is new, gone, or different.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Only in the newer listing.
    Added,
    /// Only in the older listing.
    Removed,
    /// In both, with different metadata.
    Modified,
}

/// Whether a modified file's bytes differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Content {
    /// They differ (a different size says so without reading).
    Changed,
    /// Read and found equal: only metadata changed.
    Same,
}

/// One entry that differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileChange {
    /// Absolute path.
    pub path: String,
    /// Added, removed or modified.
    pub change: Change,
    /// Its type (in the newer listing when modified).
    pub kind: EntryKind,
    /// For a modified entry, what differs: `kind`, `size`, `mtime`, `mode`, `owner`,
    /// `target`. A directory's size and time are left out: they change with every
    /// entry added or removed in it, which is listed itself.
    pub differs: Vec<&'static str>,
    /// Whether a modified regular file's bytes differ; `None`: not known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
}

/// The entries of `new` not in `old` (added), of `old` not in `new` (removed) and in
/// both with different metadata (modified), by path.
pub fn diff_entries(old: &[Entry], new: &[Entry]) -> Vec<FileChange> {
    let old: BTreeMap<&str, &Entry> = old.iter().map(|e| (e.path.as_str(), e)).collect();
    let new: BTreeMap<&str, &Entry> = new.iter().map(|e| (e.path.as_str(), e)).collect();
    let mut changes = Vec::new();
    for (path, before) in &old {
        if !new.contains_key(path) {
            changes.push(simple(before, Change::Removed));
        }
    }
    for (path, after) in &new {
        let Some(before) = old.get(path) else {
            changes.push(simple(after, Change::Added));
            continue;
        };
        let differs = differences(before, after);
        if differs.is_empty() {
            continue;
        }
        let content = (after.kind == EntryKind::File
            && before.kind == EntryKind::File
            && before.size != after.size)
            .then_some(Content::Changed);
        changes.push(FileChange {
            path: after.path.clone(),
            change: Change::Modified,
            kind: after.kind,
            differs,
            content,
        });
    }
    changes.sort_by(|a, b| a.path.cmp(&b.path));
    changes
}

fn simple(entry: &Entry, change: Change) -> FileChange {
    FileChange {
        path: entry.path.clone(),
        change,
        kind: entry.kind,
        differs: Vec::new(),
        content: None,
    }
}

fn differences(before: &Entry, after: &Entry) -> Vec<&'static str> {
    if before.kind != after.kind {
        return vec!["kind"];
    }
    let directory = after.kind == EntryKind::Dir;
    let mut differs = Vec::new();
    if !directory && before.size != after.size {
        differs.push("size");
    }
    if !directory && (before.mtime, before.mtime_nanos) != (after.mtime, after.mtime_nanos) {
        differs.push("mtime");
    }
    if before.mode != after.mode {
        differs.push("mode");
    }
    if (before.uid, before.gid) != (after.uid, after.gid) {
        differs.push("owner");
    }
    if before.target != after.target {
        differs.push("target");
    }
    differs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: EntryKind, size: u64, mtime: i64) -> Entry {
        Entry {
            name: path.rsplit('/').next().unwrap_or("/").to_string(),
            path: path.to_string(),
            kind,
            size,
            mode: Some(0o644),
            uid: Some(0),
            gid: Some(0),
            mtime: Some(mtime),
            mtime_nanos: 0,
            atime: Some(mtime),
            target: None,
        }
    }

    fn file(path: &str, size: u64, mtime: i64) -> Entry {
        entry(path, EntryKind::File, size, mtime)
    }

    fn dir(path: &str, size: u64, mtime: i64) -> Entry {
        entry(path, EntryKind::Dir, size, mtime)
    }

    #[test]
    fn added_removed_and_what_was_modified() {
        let mut chmod = file("/c", 5, 1);
        chmod.mode = Some(0o600);
        let mut read = file("/r", 5, 1);
        read.atime = Some(99);
        let old = vec![
            dir("/d", 4096, 1),
            file("/gone", 1, 1),
            file("/a", 10, 1),
            file("/t", 10, 1),
            file("/c", 5, 1),
            file("/r", 5, 1),
            file("/k", 5, 1),
        ];
        let new = vec![
            dir("/d", 8192, 2),
            file("/new", 1, 1),
            file("/a", 11, 2),
            file("/t", 10, 2),
            chmod,
            read,
            dir("/k", 5, 1),
        ];
        let changes = diff_entries(&old, &new);
        let changes: Vec<(&str, Change, Vec<&str>, Option<Content>)> = changes
            .iter()
            .map(|c| (c.path.as_str(), c.change, c.differs.clone(), c.content))
            .collect();
        assert_eq!(
            changes,
            vec![
                (
                    "/a",
                    Change::Modified,
                    vec!["size", "mtime"],
                    Some(Content::Changed)
                ),
                ("/c", Change::Modified, vec!["mode"], None),
                ("/gone", Change::Removed, vec![], None),
                ("/k", Change::Modified, vec!["kind"], None),
                ("/new", Change::Added, vec![], None),
                ("/t", Change::Modified, vec!["mtime"], None),
            ]
        );
    }
}
