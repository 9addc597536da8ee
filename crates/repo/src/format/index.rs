//! Fixed index: the list of chunk ids of one disk in one snapshot.
//!
//! Slot `i` covers bytes `[i * chunk_size, min((i + 1) * chunk_size, disk_size))`.
//! Fixed offsets are what make incremental backups cheap: a block that did not change
//! keeps its slot and its id, and only changed slots are read and stored.
//!
//! Plaintext layout (stored inside a blob of kind index, so compressed and encrypted):
//! ```text
//! offset  size  field
//!      0     4  magic "HVNI"
//!      4     4  index version, u32 LE (1)
//!      8     8  disk size in bytes, u64 LE
//!     16     4  chunk size in bytes, u32 LE
//!     20     4  reserved, zero
//!     24     8  slot count, u64 LE (= ceil(disk size / chunk size))
//!     32  32*n  chunk id of each slot; 32 zero bytes for an all-zero slot
//! ```

use crate::error::{RepoError, Result};
use crate::format::chunk::ChunkId;
use crate::format::config::validate_chunk_size;

const MAGIC: [u8; 4] = *b"HVNI";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 32;

/// The chunk ids of one disk, slot by slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedIndex {
    disk_size: u64,
    chunk_size: u32,
    slots: Vec<ChunkId>,
}

impl FixedIndex {
    /// An index of a disk whose slots are all zero, to be filled in by a backup.
    pub fn new_zeroed(disk_size: u64, chunk_size: u32) -> Self {
        let count = slot_count(disk_size, chunk_size);
        Self {
            disk_size,
            chunk_size,
            slots: vec![ChunkId::ZERO; count as usize],
        }
    }

    /// Size of the disk in bytes.
    pub fn disk_size(&self) -> u64 {
        self.disk_size
    }

    /// Chunk size in bytes.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the disk has no slot at all (zero-length disk).
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// All slots in order.
    pub fn slots(&self) -> &[ChunkId] {
        &self.slots
    }

    /// The id in slot `slot`.
    pub fn get(&self, slot: usize) -> Option<ChunkId> {
        self.slots.get(slot).copied()
    }

    /// Sets the id of slot `slot`; slots beyond the end are ignored by construction of
    /// the callers, which iterate over `0..len()`.
    pub fn set(&mut self, slot: usize, id: ChunkId) {
        if let Some(entry) = self.slots.get_mut(slot) {
            *entry = id;
        }
    }

    /// Byte range of a slot on the disk.
    pub fn slot_range(&self, slot: usize) -> (u64, u64) {
        slot_range(self.disk_size, self.chunk_size, slot as u64)
    }

    /// Serialises the index to its plaintext layout.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + 32 * self.slots.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.disk_size.to_le_bytes());
        out.extend_from_slice(&self.chunk_size.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&(self.slots.len() as u64).to_le_bytes());
        for slot in &self.slots {
            out.extend_from_slice(&slot.0);
        }
        out
    }

    /// Parses the plaintext layout, checking every field against the others.
    pub fn decode(bytes: &[u8], key: &str) -> Result<Self> {
        let corrupt = |reason: &str| RepoError::corrupt(key, reason);
        if bytes.len() < HEADER_LEN || bytes[0..4] != MAGIC {
            return Err(corrupt("not an index"));
        }
        let field_u32 = |at: usize| {
            u32::from_le_bytes(
                bytes[at..at + 4]
                    .try_into()
                    .expect("header length checked above"),
            )
        };
        let field_u64 = |at: usize| {
            u64::from_le_bytes(
                bytes[at..at + 8]
                    .try_into()
                    .expect("header length checked above"),
            )
        };
        if field_u32(4) != VERSION {
            return Err(corrupt("unsupported index version"));
        }
        let disk_size = field_u64(8);
        let chunk_size = field_u32(16);
        let count = field_u64(24);
        // One encoding per index: its digest in the manifest must name one index.
        if field_u32(20) != 0 {
            return Err(corrupt("reserved header field is not zero"));
        }
        validate_chunk_size(chunk_size).map_err(|_| corrupt("invalid chunk size"))?;
        if count != slot_count(disk_size, chunk_size) {
            return Err(corrupt("slot count does not match disk size"));
        }
        let body = &bytes[HEADER_LEN..];
        if body.len() as u64 != count.saturating_mul(32) {
            return Err(corrupt("index length does not match slot count"));
        }
        let slots = body
            .chunks_exact(32)
            .map(|id| ChunkId(id.try_into().expect("chunks_exact yields 32 bytes")))
            .collect();
        Ok(Self {
            disk_size,
            chunk_size,
            slots,
        })
    }

    /// Upper bound of the encoded size, used to bound reads of stored indexes.
    pub fn encoded_len(disk_size: u64, chunk_size: u32) -> u64 {
        HEADER_LEN as u64 + 32 * slot_count(disk_size, chunk_size)
    }
}

/// Number of slots of a disk.
pub fn slot_count(disk_size: u64, chunk_size: u32) -> u64 {
    disk_size.div_ceil(u64::from(chunk_size))
}

/// Byte range `[start, end)` covered by a slot.
pub fn slot_range(disk_size: u64, chunk_size: u32, slot: u64) -> (u64, u64) {
    let start = slot * u64::from(chunk_size);
    (start, (start + u64::from(chunk_size)).min(disk_size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode_round_trip_with_partial_last_slot() {
        let mut index = FixedIndex::new_zeroed(3 * 65536 + 100, 65536);
        assert_eq!(index.len(), 4);
        assert_eq!(index.slot_range(3), (3 * 65536, 3 * 65536 + 100));
        index.set(1, ChunkId([9; 32]));
        let bytes = index.encode();
        assert_eq!(
            bytes.len() as u64,
            FixedIndex::encoded_len(3 * 65536 + 100, 65536)
        );
        assert_eq!(FixedIndex::decode(&bytes, "i").unwrap(), index);
    }

    #[test]
    fn inconsistent_indexes_are_refused() {
        let index = FixedIndex::new_zeroed(1 << 20, 65536);
        let good = index.encode();
        let mut short = good.clone();
        short.pop();
        assert!(FixedIndex::decode(&short, "i").is_err());
        // Found by the `repo_index` fuzz target: reserved bytes that were not zero
        // decoded, so one index had several encodings.
        let mut reserved = good.clone();
        reserved[21] = 0xff;
        assert!(FixedIndex::decode(&reserved, "i").is_err());
        let mut bad_count = good.clone();
        bad_count[24] = 99;
        assert!(FixedIndex::decode(&bad_count, "i").is_err());
        let mut bad_chunk = good.clone();
        bad_chunk[16] = 3;
        assert!(FixedIndex::decode(&bad_chunk, "i").is_err());
        assert!(FixedIndex::decode(&good[..10], "i").is_err());
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn index() -> impl Strategy<Value = FixedIndex> {
        (0u64..(1 << 24), 16u32..=24, any::<u64>()).prop_map(|(disk_size, shift, seed)| {
            let mut index = FixedIndex::new_zeroed(disk_size, 1 << shift);
            for slot in 0..index.len() {
                let mut id = [0u8; 32];
                id[..8].copy_from_slice(&seed.wrapping_mul(slot as u64 + 1).to_le_bytes());
                index.set(slot, ChunkId(id));
            }
            index
        })
    }

    proptest! {
        /// Decoding an encoded index gives it back, field for field.
        #[test]
        fn encode_then_decode_is_identity(index in index()) {
            let decoded = FixedIndex::decode(&index.encode(), "indexes/x").unwrap();
            prop_assert_eq!(decoded.disk_size(), index.disk_size());
            prop_assert_eq!(decoded.chunk_size(), index.chunk_size());
            prop_assert_eq!(decoded.slots(), index.slots());
        }

        /// Any change of length or header field is refused, never misread; arbitrary
        /// bytes are refused without a panic.
        #[test]
        fn damaged_indexes_are_refused(
            index in index(),
            cut in any::<prop::sample::Index>(),
            at in 0usize..HEADER_LEN,
            flip in 1u8..=255,
            noise in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let encoded = index.encode();
            let short = cut.index(encoded.len());
            prop_assert!(FixedIndex::decode(&encoded[..short], "i").is_err());
            let mut longer = encoded.clone();
            longer.push(0);
            prop_assert!(FixedIndex::decode(&longer, "i").is_err());
            let mut damaged = encoded.clone();
            damaged[at] ^= flip;
            // The 4 reserved bytes (20..24) are not checked. A disk size that changes
            // within the same slot count decodes (the manifest's own size catches it,
            // and the sealed blob's tag catches damage); every other byte is checked.
            match FixedIndex::decode(&damaged, "i") {
                Err(_) => {}
                Ok(_) if (20..24).contains(&at) => {}
                Ok(misread) => {
                    prop_assert!((8..16).contains(&at), "damaged byte {} read", at);
                    prop_assert_eq!(misread.len(), index.len());
                }
            }
            let _ = FixedIndex::decode(&noise, "i");
        }
    }
}
