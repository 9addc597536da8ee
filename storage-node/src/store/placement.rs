//! Placement of objects across several data directories, and the marker
//! file that pins each directory to its position.
//!
//! An object lives in exactly one directory: `place(bucket, key, n)`, a
//! stable hash of bucket and key modulo the number of directories. The hash
//! is part of the on-disk format (FNV-1a 64 over `bucket NUL key`, then the
//! SplitMix64 finaliser so every bit mixes into the low bits the modulo
//! uses): it must never change, or objects written before would no longer
//! be found. For the same reason the list of directories is fixed when the
//! store is created: each directory holds `haven-data-dir.json` with its
//! index and the directory count, and a node started with the directories
//! reordered, added or removed refuses to start rather than losing objects.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::durable;
use crate::error::StoreError;

/// Name of the marker file at the top of every data directory.
pub const MARKER_FILE: &str = "haven-data-dir.json";

/// Format version written into the marker.
const MARKER_FORMAT: u32 = 1;

/// FNV-1a 64-bit offset basis and prime.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Stable 64-bit hash of the given byte strings, each followed by NUL.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut hash = FNV_OFFSET;
    for part in parts {
        for byte in part.iter().chain(std::iter::once(&0u8)) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(FNV_PRIME);
        }
    }
    // SplitMix64 finaliser.
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// Index of the data directory that holds `key` of `bucket`.
pub fn place(bucket: &str, key: &str, directories: usize) -> usize {
    if directories <= 1 {
        return 0;
    }
    (stable_hash(&[bucket.as_bytes(), key.as_bytes()]) % directories as u64) as usize
}

/// Index of the data directory that holds multipart upload `upload_id`.
pub fn place_upload(upload_id: &str, directories: usize) -> usize {
    if directories <= 1 {
        return 0;
    }
    (stable_hash(&[b"upload", upload_id.as_bytes()]) % directories as u64) as usize
}

/// Contents of [`MARKER_FILE`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Marker {
    format: u32,
    index: usize,
    count: usize,
}

/// Checks (or, for a new directory, writes) the marker of directory `index`
/// of `count`. A directory that already holds buckets but no marker is
/// accepted only as the single directory of a store created before markers
/// existed; it cannot silently become one of several.
pub fn check_marker(
    root: &Path,
    index: usize,
    count: usize,
    temp: &Path,
) -> Result<(), StoreError> {
    let path = root.join(MARKER_FILE);
    let expected = Marker {
        format: MARKER_FORMAT,
        index,
        count,
    };
    match std::fs::read(&path) {
        Ok(bytes) => {
            let found: Marker = serde_json::from_slice(&bytes)
                .map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display())))?;
            if found != expected {
                return Err(StoreError::Layout(format!(
                    "{} is data directory {} of {} but is configured as {} of {}; \
                     data directories cannot be reordered, added or removed",
                    root.display(),
                    found.index + 1,
                    found.count,
                    index + 1,
                    count
                )));
            }
            Ok(())
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            if count > 1 && holds_buckets(root)? {
                return Err(StoreError::Layout(format!(
                    "{} already holds buckets of a single-directory store; \
                     it cannot become one of {count} data directories",
                    root.display()
                )));
            }
            let json = serde_json::to_vec(&expected)
                .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
            durable::write_atomic(&path, temp, &json)?;
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}

fn holds_buckets(root: &Path) -> std::io::Result<bool> {
    match std::fs::read_dir(root.join("buckets")) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_pinned() {
        // The placement is an on-disk format: these values must never change.
        assert_eq!(
            stable_hash(&[b"bucket", b"chunks/ab/abcdef"]),
            0x5bef_fa41_3761_8525
        );
        assert_eq!(stable_hash(&[b"haven", b"k"]), 0xa3b9_d607_5f82_9b8a);
        assert_eq!(place("haven", "chunks/00/0", 2), 0);
        assert_eq!(place("haven", "chunks/00/0", 3), 2);
        // The separator keeps (ab, c) and (a, bc) apart.
        assert_ne!(stable_hash(&[b"ab", b"c"]), stable_hash(&[b"a", b"bc"]));
    }

    #[test]
    fn single_directory_is_always_zero() {
        for key in ["a", "b/c", ""] {
            assert_eq!(place("bucket", key, 1), 0);
            assert_eq!(place("bucket", key, 0), 0);
        }
        assert_eq!(place_upload("00ff", 1), 0);
    }

    #[test]
    fn placement_is_stable_and_in_range() {
        for n in 2..=7 {
            for i in 0..500 {
                let key = format!("chunks/{i:04x}/{i}");
                let index = place("haven", &key, n);
                assert!(index < n);
                assert_eq!(index, place("haven", &key, n));
            }
        }
        // The bucket takes part: the same key in two buckets may differ.
        let differs = (0..100)
            .map(|i| format!("k{i}"))
            .any(|k| place("one", &k, 4) != place("two", &k, 4));
        assert!(differs);
    }

    #[test]
    fn placement_spreads_evenly() {
        for n in [2usize, 3, 4, 8] {
            let mut counts = vec![0usize; n];
            let total = 20_000;
            for i in 0..total {
                // Sequential, similar keys: the worst case for a weak hash.
                counts[place("haven", &format!("chunks/{i:08}"), n)] += 1;
            }
            let expected = total / n;
            for count in &counts {
                let deviation = count.abs_diff(expected) as f64 / expected as f64;
                assert!(deviation < 0.05, "{n} directories: {counts:?}");
            }
        }
    }

    #[test]
    fn marker_pins_position_and_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let temp = root.join("marker.tmp");
        check_marker(root, 1, 2, &temp).expect("new directory gets a marker");
        check_marker(root, 1, 2, &temp).expect("same position is accepted");
        assert!(matches!(
            check_marker(root, 0, 2, &temp),
            Err(StoreError::Layout(_))
        ));
        assert!(matches!(
            check_marker(root, 1, 3, &temp),
            Err(StoreError::Layout(_))
        ));

        // A store made before markers existed stays a single directory.
        let old = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(old.path().join("buckets/b/objects")).expect("mkdir");
        let temp = old.path().join("marker.tmp");
        assert!(matches!(
            check_marker(old.path(), 0, 2, &temp),
            Err(StoreError::Layout(_))
        ));
        check_marker(old.path(), 0, 1, &temp).expect("single directory");
    }
}
