//! Counting the objects and bytes each bucket holds, for `/metrics`: a walk of every
//! data directory's `buckets/NAME/objects/` tree that counts object files (the names
//! ending in [`OBJECT_SUFFIX`]) and sums their sizes on disk (data plus the object
//! file's header). The walk is as costly as the object count, so the metrics run it
//! in the background at most once per interval ([`crate::metrics`]).

use std::collections::BTreeMap;
use std::path::Path;

use super::Store;
use super::buckets::is_valid_bucket_name;
use crate::keypath::OBJECT_SUFFIX;

/// Objects of one bucket over every data directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BucketUsage {
    /// Bucket name.
    pub bucket: String,
    /// Object files.
    pub objects: u64,
    /// Their sizes on disk.
    pub bytes: u64,
}

impl Store {
    /// Counts each bucket's objects and bytes (blocking: run it off the async
    /// threads). Files that vanish during the walk (a concurrent delete) are skipped.
    pub fn bucket_usage(&self) -> std::io::Result<Vec<BucketUsage>> {
        let mut usage: BTreeMap<String, BucketUsage> = BTreeMap::new();
        for dir in &self.dirs {
            let buckets = match std::fs::read_dir(dir.join("buckets")) {
                Ok(read) => read,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                Err(error) => return Err(error),
            };
            for entry in buckets {
                let entry = entry?;
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                if !is_valid_bucket_name(&name) {
                    continue;
                }
                let bucket = usage.entry(name.clone()).or_insert_with(|| BucketUsage {
                    bucket: name,
                    ..BucketUsage::default()
                });
                add_objects(&entry.path().join("objects"), bucket)?;
            }
        }
        Ok(usage.into_values().collect())
    }
}

/// Adds the object files under `dir` to `usage`.
fn add_objects(dir: &Path, usage: &mut BucketUsage) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(read) => read,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    for entry in entries {
        let entry = entry?;
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            add_objects(&entry.path(), usage)?;
        } else if entry.file_name().to_string_lossy().ends_with(OBJECT_SUFFIX)
            && let Ok(metadata) = entry.metadata()
        {
            usage.objects += 1;
            usage.bytes += metadata.len();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::object_file::{ObjectMeta, ObjectWriter};

    /// Writes object `key` of `bucket` with `size` bytes into data directory `dir`.
    fn put(dir: &Path, bucket: &str, key: &str, size: usize) -> u64 {
        let path = dir
            .join("buckets")
            .join(bucket)
            .join("objects")
            .join(crate::keypath::key_to_path(key).expect("key"));
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        let mut writer = ObjectWriter::create(path.clone()).expect("create");
        writer.write(&vec![7u8; size]).expect("write");
        writer.finish(ObjectMeta::default()).expect("finish");
        std::fs::metadata(path).expect("stat").len()
    }

    #[test]
    fn objects_and_their_bytes_are_counted_per_bucket_over_every_directory() {
        let dirs = [
            tempfile::tempdir().expect("tempdir"),
            tempfile::tempdir().expect("tempdir"),
        ];
        let paths: Vec<_> = dirs.iter().map(|d| d.path().to_owned()).collect();
        let store = Store::open(&paths, Arc::default()).expect("open");
        let mut bytes = put(&paths[0], "chunks", "a/b/c", 100);
        bytes += put(&paths[1], "chunks", "a/d", 5000);
        let other = put(&paths[1], "other", "x", 1);
        // Not objects: a file being written, and a folder marker's directory.
        std::fs::write(paths[0].join("tmp").join("partial"), b"xx").expect("tmp");
        std::fs::create_dir_all(paths[0].join("buckets/empty/objects/dir")).expect("mkdir");
        assert!(bytes > 5100, "object files hold data and a header: {bytes}");
        assert_eq!(
            store.bucket_usage().expect("count"),
            vec![
                BucketUsage {
                    bucket: "chunks".into(),
                    objects: 2,
                    bytes,
                },
                BucketUsage {
                    bucket: "empty".into(),
                    objects: 0,
                    bytes: 0,
                },
                BucketUsage {
                    bucket: "other".into(),
                    objects: 1,
                    bytes: other,
                },
            ]
        );
    }
}
