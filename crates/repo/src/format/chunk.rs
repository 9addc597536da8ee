//! Chunk ids and the zero-chunk rule.

use std::fmt;

/// The id of a chunk: keyed BLAKE3 of its plaintext.
///
/// The all-zero id is reserved for "this slot is all zeros and nothing is stored", so
/// sparse and zeroed regions of a disk cost 32 bytes of index and no object.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id that stands for an all-zero chunk.
    pub const ZERO: ChunkId = ChunkId([0u8; 32]);

    /// Whether this is the zero-chunk sentinel.
    pub fn is_zero(&self) -> bool {
        *self == Self::ZERO
    }

    /// Lower-case hex, as used in object names.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Option<Self> {
        let bytes = hex::decode(text).ok()?;
        Some(ChunkId(bytes.try_into().ok()?))
    }

    /// Object key of the chunk: `chunks/` + first two hex digits + `/` + all 64.
    ///
    /// The two-digit fan-out keeps directories of a file-system backend small.
    pub fn object_key(&self) -> String {
        let hex = self.to_hex();
        format!("chunks/{}/{}", &hex[..2], hex)
    }

    /// The id of the object at `key` when it is a chunk: `chunks/XX/ID` with a
    /// well-formed id whose first byte is `XX`. Anything else under `chunks/` is not a
    /// chunk (garbage collection never touches it).
    pub(crate) fn from_object_key(key: &str) -> Option<Self> {
        let rest = key.strip_prefix("chunks/")?;
        let (folder, name) = rest.split_once('/')?;
        let id = ChunkId::from_hex(name)?;
        (id.object_key() == key && folder.len() == 2).then_some(id)
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", self.to_hex())
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Whether every byte of `data` is zero; such chunks are never stored.
///
/// Compares 16 bytes at a time and stops at the first non-zero word, so data chunks
/// cost almost nothing and zero chunks cost one pass at memory speed.
pub fn is_all_zero(data: &[u8]) -> bool {
    let mut words = data.chunks_exact(16);
    for word in &mut words {
        let word: [u8; 16] = word.try_into().expect("chunks_exact yields 16 bytes");
        if u128::from_ne_bytes(word) != 0 {
            return false;
        }
    }
    words.remainder().iter().all(|&byte| byte == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        assert!(is_all_zero(&[]));
        assert!(is_all_zero(&[0u8; 1000]));
        let mut data = vec![0u8; 1001];
        data[1000] = 1;
        assert!(!is_all_zero(&data));
        data[1000] = 0;
        data[17] = 1;
        assert!(!is_all_zero(&data));
    }

    #[test]
    fn object_key_and_hex() {
        let id = ChunkId([0xab; 32]);
        assert_eq!(id.object_key(), format!("chunks/ab/{}", "ab".repeat(32)));
        assert_eq!(ChunkId::from_hex(&id.to_hex()), Some(id));
        assert_eq!(ChunkId::from_hex("zz"), None);
    }
}
