//! Mapping of S3 object keys to relative file paths, safe against traversal.
//!
//! A key is split at `/`; each segment becomes one path component, escaped so
//! that only `[A-Za-z0-9._-]` stays literal and every other byte becomes
//! `%XX`. An empty segment (as in `a//b` or the folder marker `dir/`) is
//! written `%` alone, which no escaped segment can produce. Object files get
//! the suffix `@` (never literal in an escaped segment), so the object `a` and
//! the folder of `a/b` cannot collide. A segment of dots only (`.`, `..`, as
//! S3 allows in keys) is escaped whole (`%2E%2E`), so no path component is
//! ever `.` or `..` and a key cannot climb out of its bucket. Keys that start
//! with `/` or contain NUL are refused outright.

use std::path::PathBuf;

/// Suffix of every object file; directories never carry it.
pub const OBJECT_SUFFIX: char = '@';
/// Longest S3 key in bytes (the AWS limit).
const MAX_KEY_BYTES: usize = 1024;
/// Longest file name most Linux file systems accept.
const MAX_NAME_BYTES: usize = 255;

/// Why a key cannot be stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key is empty.
    #[error("object key is empty")]
    Empty,
    /// The key or one of its segments is too long to store.
    #[error("object key is too long")]
    TooLong,
    /// The key starts with `/` (an absolute path).
    #[error("object key must not start with '/'")]
    Absolute,
    /// The key contains a NUL byte.
    #[error("object key must not contain NUL")]
    Nul,
}

/// Returns the path of the object file for `key`, relative to the bucket's
/// object directory.
pub fn key_to_path(key: &str) -> Result<PathBuf, KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(KeyError::TooLong);
    }
    if key.contains('\0') {
        return Err(KeyError::Nul);
    }
    if key.starts_with('/') {
        return Err(KeyError::Absolute);
    }
    let segments: Vec<&str> = key.split('/').collect();
    let mut path = PathBuf::new();
    let last = segments.len() - 1;
    for (index, segment) in segments.iter().enumerate() {
        let mut name = escape_segment(segment);
        if index == last {
            name.push(OBJECT_SUFFIX);
        }
        if name.len() > MAX_NAME_BYTES {
            return Err(KeyError::TooLong);
        }
        path.push(name);
    }
    Ok(path)
}

/// Escapes one key segment into a file name. A segment of dots only is
/// escaped whole: `.` and `..` must never reach the file system as names.
pub fn escape_segment(segment: &str) -> String {
    if segment.is_empty() {
        return "%".to_owned();
    }
    if segment.bytes().all(|b| b == b'.') {
        return "%2E".repeat(segment.len());
    }
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Reverses [`escape_segment`]; `None` for names this store never writes.
pub fn unescape_segment(name: &str) -> Option<String> {
    if name == "%" {
        return Some(String::new());
    }
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if byte == b'%' {
            let hex = name.get(index + 1..index + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            out.push(byte);
            index += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_keys_and_back() {
        let table = [
            ("chunks/ab/abcdef", "chunks/ab/abcdef@"),
            ("a", "a@"),
            ("dir/", "dir/%@"),
            ("a//b", "a/%/b@"),
            ("x y/ü", "x%20y/%C3%BC@"),
            ("file@1", "file%401@"),
            ("..a/b..", "..a/b..@"),
            ("../x", "%2E%2E/x@"),
            ("a/../../x", "a/%2E%2E/%2E%2E/x@"),
            ("a/./b", "a/%2E/b@"),
            ("..", "%2E%2E@"),
            ("...", "%2E%2E%2E@"),
        ];
        for (key, want) in table {
            let path = key_to_path(key).expect("valid key");
            assert_eq!(path.to_str(), Some(want), "key {key:?}");
            let back: Vec<String> = path
                .iter()
                .map(|c| {
                    let name = c.to_str().expect("utf-8");
                    let name = name.strip_suffix(OBJECT_SUFFIX).unwrap_or(name);
                    unescape_segment(name).expect("decodes")
                })
                .collect();
            assert_eq!(back.join("/"), key);
        }
    }

    #[test]
    fn refuses_traversal() {
        let table = [
            ("", KeyError::Empty),
            ("/etc/passwd", KeyError::Absolute),
            ("a\0b", KeyError::Nul),
        ];
        for (key, want) in table {
            assert_eq!(key_to_path(key), Err(want), "key {key:?}");
        }
        assert_eq!(key_to_path(&"x".repeat(300)), Err(KeyError::TooLong));
        assert_eq!(key_to_path(&"x/".repeat(600)), Err(KeyError::TooLong));
    }

    #[test]
    fn refuses_names_it_never_writes() {
        assert_eq!(unescape_segment("%zz"), None);
        assert_eq!(unescape_segment("%4"), None);
        assert_eq!(unescape_segment("%FF"), None);
    }
}

#[cfg(test)]
mod properties {
    use std::collections::BTreeMap;
    use std::path::Component;

    use proptest::prelude::*;

    use super::*;

    /// Keys of the characters that matter: separators, dots, `%`, `@`, spaces and
    /// non-ASCII, plus plain letters.
    fn key() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just('/'),
                Just('.'),
                Just('%'),
                Just('@'),
                Just(' '),
                Just('ü'),
                Just('\\'),
                proptest::char::range('a', 'c'),
                any::<char>(),
            ],
            0..40,
        )
        .prop_map(|chars| chars.into_iter().collect())
    }

    proptest! {
        /// Escaping is reversible and leaves only the characters it promises.
        #[test]
        fn segments_round_trip(segment in key()) {
            let segment = segment.replace('/', "");
            let escaped = escape_segment(&segment);
            prop_assert!(escaped.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-%".contains(&b)));
            prop_assert!(escaped != "." && escaped != "..");
            prop_assert_eq!(unescape_segment(&escaped), Some(segment));
        }

        /// A stored key's path stays inside the bucket (only normal components, the
        /// last one an object file) and two keys never share a path.
        #[test]
        fn paths_stay_inside_and_never_collide(a in key(), b in key()) {
            let mut seen = BTreeMap::new();
            for key in [a, b] {
                let Ok(path) = key_to_path(&key) else { continue };
                for component in path.components() {
                    prop_assert!(matches!(component, Component::Normal(_)), "{:?} in {:?}", component, path);
                }
                prop_assert!(path.to_string_lossy().ends_with(OBJECT_SUFFIX));
                if let Some(other) = seen.insert(path.clone(), key.clone()) {
                    prop_assert_eq!(other, key);
                }
            }
        }
    }
}
