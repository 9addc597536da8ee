//! ListObjectsV2: a depth-first walk of the object tree in key order, with
//! pruning by prefix, by the resume point and by common prefixes, so a page
//! costs the directories it touches rather than the whole bucket. With
//! several data directories each is walked for one page and the walks are
//! merged in key order (a common prefix found in several is listed once).

use std::path::Path;

use super::Store;
use crate::error::StoreError;
use crate::keypath::{OBJECT_SUFFIX, unescape_segment};
use crate::object_file::{ObjectMeta, ObjectReader};

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct ListRequest {
    /// Only keys starting with this.
    pub prefix: String,
    /// Group keys by the first occurrence of this after the prefix.
    pub delimiter: Option<String>,
    /// Only keys (and common prefixes) after this (start-after or the
    /// continuation token, whichever is later).
    pub after: Option<String>,
    /// Page size.
    pub max_keys: usize,
}

/// One entry of a listing.
#[derive(Debug, Clone)]
pub enum ListEntry {
    /// An object with its metadata.
    Object(String, Box<ObjectMeta>),
    /// A common prefix (delimiter listings).
    Prefix(String),
}

impl ListEntry {
    /// The key or prefix, which is also the resume point after this entry.
    pub fn name(&self) -> &str {
        match self {
            Self::Object(key, _) => key,
            Self::Prefix(prefix) => prefix,
        }
    }
}

/// One page of a listing.
#[derive(Debug, Clone, Default)]
pub struct ListPage {
    /// Entries in key order.
    pub entries: Vec<ListEntry>,
    /// Whether more entries follow; resume after the last entry.
    pub truncated: bool,
}

enum Found {
    Object(String, std::path::PathBuf),
    Prefix(String),
}

impl Found {
    fn name(&self) -> &str {
        match self {
            Self::Object(key, _) => key,
            Self::Prefix(prefix) => prefix,
        }
    }
}

struct Walk<'a> {
    request: &'a ListRequest,
    found: Vec<Found>,
    last_prefix: Option<String>,
}

impl Walk<'_> {
    fn full(&self) -> bool {
        self.found.len() > self.request.max_keys
    }

    fn walk(&mut self, dir: &Path, key_prefix: &str) -> std::io::Result<()> {
        let mut entries = Vec::new();
        let read = match std::fs::read_dir(dir) {
            Ok(read) => read,
            // A directory pruned by a concurrent delete is simply empty.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(error),
        };
        for entry in read {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(stem) = name.strip_suffix(OBJECT_SUFFIX) {
                let Some(segment) = unescape_segment(stem) else {
                    continue;
                };
                entries.push((format!("{key_prefix}{segment}"), false, entry.path()));
            } else {
                let Some(segment) = unescape_segment(name) else {
                    continue;
                };
                entries.push((format!("{key_prefix}{segment}/"), true, entry.path()));
            }
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let prefix = self.request.prefix.as_str();
        for (name, is_dir, path) in entries {
            if self.full() {
                return Ok(());
            }
            if is_dir {
                if !(name.starts_with(prefix) || prefix.starts_with(&name)) {
                    continue;
                }
                if let Some(after) = &self.request.after
                    && name.as_str() <= after.as_str()
                    && !after.starts_with(&name)
                {
                    continue;
                }
                if let Some(last) = &self.last_prefix
                    && name.starts_with(last.as_str())
                {
                    continue;
                }
                self.walk(&path, &name)?;
            } else {
                self.visit_key(name, path);
            }
        }
        Ok(())
    }

    fn visit_key(&mut self, key: String, path: std::path::PathBuf) {
        let prefix = self.request.prefix.as_str();
        if !key.starts_with(prefix) {
            return;
        }
        if let Some(after) = &self.request.after
            && key.as_str() <= after.as_str()
        {
            return;
        }
        if let Some(delimiter) = self.request.delimiter.as_deref().filter(|d| !d.is_empty())
            && let Some(position) = key[prefix.len()..].find(delimiter)
        {
            let common = key[..prefix.len() + position + delimiter.len()].to_owned();
            if self.last_prefix.as_deref() == Some(common.as_str()) {
                return;
            }
            if let Some(after) = &self.request.after
                && (common.as_str() <= after.as_str() || after.starts_with(&common))
            {
                return;
            }
            self.last_prefix = Some(common.clone());
            self.found.push(Found::Prefix(common));
            return;
        }
        self.found.push(Found::Object(key, path));
    }
}

impl Store {
    /// Lists one page of a bucket.
    pub async fn list(&self, bucket: &str, request: ListRequest) -> Result<ListPage, StoreError> {
        if !self.objects_dir(bucket)?.exists() {
            return Err(StoreError::NoSuchBucket);
        }
        let objects: Vec<std::path::PathBuf> = (0..self.dirs.len())
            .map(|index| self.objects_dir_in(index, bucket))
            .collect::<Result<_, _>>()?;
        tokio::task::spawn_blocking(move || list_blocking(&objects, &request))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
    }
}

/// Walks one objects directory: at most `max_keys + 1` entries in key order.
fn walk_one(objects: &Path, request: &ListRequest) -> std::io::Result<Vec<Found>> {
    let mut walk = Walk {
        request,
        found: Vec::new(),
        last_prefix: None,
    };
    walk.walk(objects, "")?;
    Ok(walk.found)
}

/// Merges per-directory walks (each sorted, each distinct) into one sorted,
/// distinct list of at most `limit` entries. Every entry of the first
/// `limit` overall is among the first `limit` of its own directory, so
/// walking each directory for one page is enough.
fn merge(walks: Vec<Vec<Found>>, limit: usize) -> Vec<Found> {
    let mut queues: Vec<std::collections::VecDeque<Found>> =
        walks.into_iter().map(Into::into).collect();
    let mut out: Vec<Found> = Vec::new();
    while out.len() < limit {
        let mut smallest: Option<(usize, &str)> = None;
        for (index, queue) in queues.iter().enumerate() {
            let Some(candidate) = queue.front() else {
                continue;
            };
            if smallest.is_none_or(|(_, name)| candidate.name() < name) {
                smallest = Some((index, candidate.name()));
            }
        }
        let Some((index, _)) = smallest else { break };
        let Some(next) = queues[index].pop_front() else {
            break;
        };
        if out.last().is_some_and(|last| last.name() == next.name()) {
            // The same common prefix in two directories (a key is placed in
            // exactly one directory, so only prefixes repeat).
            continue;
        }
        out.push(next);
    }
    out
}

fn list_blocking(
    objects: &[std::path::PathBuf],
    request: &ListRequest,
) -> Result<ListPage, StoreError> {
    if request.max_keys == 0 {
        return Ok(ListPage::default());
    }
    let walks = objects
        .iter()
        .map(|dir| walk_one(dir, request))
        .collect::<Result<Vec<_>, _>>()?;
    let limit = request.max_keys.saturating_add(1);
    let mut found = match walks.len() {
        1 => walks.into_iter().next().unwrap_or_default(),
        _ => merge(walks, limit),
    };
    let truncated = found.len() > request.max_keys;
    found.truncate(request.max_keys);
    let mut entries = Vec::with_capacity(found.len());
    for found in found {
        match found {
            Found::Prefix(prefix) => entries.push(ListEntry::Prefix(prefix)),
            Found::Object(key, path) => match ObjectReader::open(&path) {
                Ok(reader) => entries.push(ListEntry::Object(key, Box::new(reader.meta))),
                // Deleted between the walk and now.
                Err(crate::object_file::ObjectFileError::Io(e))
                    if e.kind() == std::io::ErrorKind::NotFound => {}
                // A corrupt object is still listed (its name is intact) so an
                // operator sees it; GET reports the corruption.
                Err(_) => entries.push(ListEntry::Object(key, Box::default())),
            },
        }
    }
    Ok(ListPage { entries, truncated })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object_file::ObjectWriter;

    fn put(root: &Path, key: &str) {
        let relative = crate::keypath::key_to_path(key).expect("key");
        let path = root.join(relative);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let mut writer = ObjectWriter::create(path).expect("create");
        writer.write(key.as_bytes()).expect("write");
        let (_, _) = writer.finish(ObjectMeta::default()).expect("finish");
    }

    fn names(page: &ListPage) -> Vec<&str> {
        page.entries.iter().map(ListEntry::name).collect()
    }

    #[test]
    fn lists_in_key_order_with_prefixes_and_pages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = ["a", "a-c", "a/b", "a/c/d", "b", "b/x", "c/%", "dir/"];
        for key in keys {
            put(dir.path(), key);
        }
        let all = |after: Option<&str>, max| ListRequest {
            after: after.map(str::to_owned),
            max_keys: max,
            ..Default::default()
        };
        let page = list_blocking(&[dir.path().to_owned()], &all(None, 1000)).expect("list");
        assert_eq!(names(&page), keys);
        assert!(!page.truncated);

        let page = list_blocking(&[dir.path().to_owned()], &all(None, 3)).expect("list");
        assert_eq!(names(&page), ["a", "a-c", "a/b"]);
        assert!(page.truncated);
        let page = list_blocking(&[dir.path().to_owned()], &all(Some("a/b"), 3)).expect("list");
        assert_eq!(names(&page), ["a/c/d", "b", "b/x"]);

        let delimited = |prefix: &str, after: Option<&str>, max| ListRequest {
            prefix: prefix.to_owned(),
            delimiter: Some("/".to_owned()),
            after: after.map(str::to_owned),
            max_keys: max,
        };
        let page =
            list_blocking(&[dir.path().to_owned()], &delimited("", None, 1000)).expect("list");
        assert_eq!(names(&page), ["a", "a-c", "a/", "b", "b/", "c/", "dir/"]);
        let page =
            list_blocking(&[dir.path().to_owned()], &delimited("a/", None, 1000)).expect("list");
        assert_eq!(names(&page), ["a/b", "a/c/"]);
        let page =
            list_blocking(&[dir.path().to_owned()], &delimited("", Some("a/"), 2)).expect("list");
        assert_eq!(names(&page), ["b", "b/"]);
        assert!(page.truncated);
        let page =
            list_blocking(&[dir.path().to_owned()], &delimited("a", None, 1000)).expect("list");
        assert_eq!(names(&page), ["a", "a-c", "a/"]);
    }

    #[test]
    fn several_directories_list_like_one() {
        let single = tempfile::tempdir().expect("tempdir");
        let split = [
            tempfile::tempdir().expect("tempdir"),
            tempfile::tempdir().expect("tempdir"),
            tempfile::tempdir().expect("tempdir"),
        ];
        let mut keys = Vec::new();
        for i in 0..60 {
            keys.push(format!("chunks/{:02x}/{i}", i % 7));
            keys.push(format!("index/{i}"));
            keys.push(format!("k{i}"));
        }
        keys.push("chunks".to_owned());
        keys.push("chunks-x".to_owned());
        for key in &keys {
            put(single.path(), key);
            let index = crate::store::placement::place("bucket", key, split.len());
            put(split[index].path(), key);
        }
        let one = [single.path().to_owned()];
        let many: Vec<std::path::PathBuf> = split.iter().map(|d| d.path().to_owned()).collect();
        for delimiter in [None, Some("/")] {
            for prefix in ["", "chunks", "chunks/", "chunks/03/", "k", "index/1"] {
                for after in [None, Some("chunks/01/"), Some("index/3"), Some("k5")] {
                    for max_keys in [1, 2, 7, 1000] {
                        let request = ListRequest {
                            prefix: prefix.to_owned(),
                            delimiter: delimiter.map(str::to_owned),
                            after: after.map(str::to_owned),
                            max_keys,
                        };
                        let expected = list_blocking(&one, &request).expect("list one");
                        let merged = list_blocking(&many, &request).expect("list many");
                        assert_eq!(names(&merged), names(&expected), "{request:?}");
                        assert_eq!(merged.truncated, expected.truncated, "{request:?}");
                    }
                }
            }
        }
        // Every directory holds some of the keys.
        for dir in &split {
            let page = list_blocking(
                &[dir.path().to_owned()],
                &ListRequest {
                    max_keys: 1000,
                    ..Default::default()
                },
            )
            .expect("list");
            assert!(page.entries.len() > 20, "{}", page.entries.len());
        }
    }
}
