//! Blob framing: the one envelope every stored chunk, index and manifest travels in.
//!
//! ```text
//! offset  size  field
//!      0     4  magic "HVNB"
//!      4     1  format version (1)
//!      5     1  kind (1 chunk, 2 index, 3 manifest, 4 verify record, 5 boot record,
//!                 6 boot evidence)
//!      6     1  compression (0 none, 1 zstd)
//!      7     1  cipher (1 AES-256-GCM)
//!      8     8  plaintext length, u64 little endian (before compression)
//!     16     8  payload length, u64 little endian (ciphertext including the 16-byte tag)
//!     24    12  nonce
//!     36     4  reserved, zero
//!     40     n  payload
//!   40+n     4  CRC-32 (IEEE) of bytes [0, 40+n), u32 little endian
//! ```
//!
//! The CRC lets storage, replication and repair detect bit rot without the key; the AEAD
//! tag (associated data = the 40 header bytes followed by the object's identity) proves
//! the blob was written by a key holder, for this very object, and not altered since.

use std::cell::RefCell;

use bytes::Bytes;

use crate::error::{RepoError, Result};
use crate::format::crypto::{Aead, TAG_LEN};

/// Magic bytes at the start of every blob.
pub const MAGIC: [u8; 4] = *b"HVNB";
/// The blob format version this build writes and reads.
pub const VERSION: u8 = 1;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 40;
/// Size of the trailing checksum.
pub const TRAILER_LEN: usize = 4;
const NONCE_LEN: usize = 12;
const CIPHER_AES_256_GCM: u8 = 1;

/// What a blob holds; part of the authenticated header so one kind cannot pass for another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum BlobKind {
    /// A piece of disk data.
    Chunk = 1,
    /// A fixed index of one disk in one snapshot.
    Index = 2,
    /// A snapshot manifest.
    Manifest = 3,
    /// The result of verifying a snapshot (`verify/VM/SNAPSHOT/TIME`).
    VerifyRecord = 4,
    /// The result of boot-testing a snapshot (`boot/VM/SNAPSHOT/TIME/record`).
    BootRecord = 5,
    /// Evidence of a boot test: its serial log or screenshot (`boot/VM/SNAPSHOT/TIME/…`).
    BootEvidence = 6,
}

impl BlobKind {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(BlobKind::Chunk),
            2 => Some(BlobKind::Index),
            3 => Some(BlobKind::Manifest),
            4 => Some(BlobKind::VerifyRecord),
            5 => Some(BlobKind::BootRecord),
            6 => Some(BlobKind::BootEvidence),
            _ => None,
        }
    }
}

/// Whether and how the payload was compressed before encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Compression {
    /// Stored as is: used when zstd does not make the data smaller.
    None = 0,
    /// zstd frame.
    Zstd = 1,
}

/// Compression level used for new blobs: level 1 keeps pace with disk reads.
pub const ZSTD_LEVEL: i32 = 1;

/// Largest compression buffer a thread keeps between blobs.
const SCRATCH_KEEP: usize = 32 << 20;

/// Compresses (when that helps), encrypts and frames `plain`.
///
/// `identity` names the object (a chunk's digest, an index's key); it is bound into the
/// authentication tag so a blob moved to another name fails to open.
pub fn seal(cipher: &Aead, kind: BlobKind, identity: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
    // One zstd context and output buffer per thread, reused from blob to blob: a fresh
    // context and buffer per chunk cost more in allocation and page faults than the
    // compression itself at level 1.
    thread_local! {
        static SCRATCH: RefCell<Option<(zstd::bulk::Compressor<'static>, Vec<u8>)>> =
            const { RefCell::new(None) };
    }
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let (compressor, compressed) = match &mut *scratch {
            Some(state) => state,
            empty => empty.insert((
                zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(zstd_error)?,
                Vec::new(),
            )),
        };
        compressed.clear();
        compressed.reserve(zstd::zstd_safe::compress_bound(plain.len()));
        compressor
            .compress_to_buffer(plain, compressed)
            .map_err(zstd_error)?;
        let (compression, body) = if compressed.len() < plain.len() {
            (Compression::Zstd, compressed.as_slice())
        } else {
            (Compression::None, plain)
        };
        let sealed = seal_body(cipher, kind, identity, plain.len(), compression, body);
        // Keep chunk-sized scratch space, not the space of one large index.
        if compressed.capacity() > SCRATCH_KEEP {
            *compressed = Vec::new();
        }
        sealed
    })
}

fn zstd_error(source: std::io::Error) -> RepoError {
    RepoError::Io {
        context: "zstd compression failed".into(),
        source,
    }
}

/// Frames and encrypts `body` (the payload before encryption) in one buffer.
pub(crate) fn seal_body(
    cipher: &Aead,
    kind: BlobKind,
    identity: &[u8],
    plain_len: usize,
    compression: Compression,
    body: &[u8],
) -> Result<Vec<u8>> {
    let mut header = [0u8; HEADER_LEN];
    header[0..4].copy_from_slice(&MAGIC);
    header[4] = VERSION;
    header[5] = kind as u8;
    header[6] = compression as u8;
    header[7] = CIPHER_AES_256_GCM;
    header[8..16].copy_from_slice(&(plain_len as u64).to_le_bytes());
    header[16..24].copy_from_slice(&((body.len() + TAG_LEN) as u64).to_le_bytes());

    // The nonce is chosen by the cipher, but it is part of the header that the tag covers,
    // so draw it first and seal with it.
    let mut nonce = [0u8; NONCE_LEN];
    crate::format::crypto::fill_random(&mut nonce)?;
    header[24..36].copy_from_slice(&nonce);

    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + TAG_LEN + TRAILER_LEN);
    out.extend_from_slice(&header);
    out.extend_from_slice(body);
    let aad = associated_data(&header, identity);
    let tag = cipher.seal_slice_with_nonce(nonce, &aad, &mut out[HEADER_LEN..])?;
    out.extend_from_slice(&tag);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Checks, decrypts and decompresses a blob read from `key`.
///
/// `max_plain_len` bounds the memory a hostile blob can make us allocate.
pub fn open(
    cipher: &Aead,
    key: &str,
    kind: BlobKind,
    identity: &[u8],
    blob: &[u8],
    max_plain_len: u64,
) -> Result<Vec<u8>> {
    let header = check_frame(key, blob)?;
    let corrupt = |reason: &str| RepoError::corrupt(key, reason);
    if BlobKind::from_byte(header.kind) != Some(kind) {
        return Err(corrupt("blob holds another kind of object"));
    }
    if header.plain_len > max_plain_len {
        return Err(corrupt("declared plaintext length is larger than allowed"));
    }

    let aad = associated_data(&blob[..HEADER_LEN], identity);
    let payload = cipher
        .open_to_vec(
            header.nonce,
            &aad,
            &blob[HEADER_LEN..blob.len() - TRAILER_LEN],
        )
        .ok_or_else(|| corrupt("authentication failed (wrong key, altered data or wrong name)"))?;

    let plain = match header.compression {
        0 => payload,
        1 => zstd::bulk::decompress(&payload, header.plain_len as usize)
            .map_err(|_| corrupt("zstd payload does not decompress"))?,
        _ => return Err(corrupt("unknown compression")),
    };
    if plain.len() as u64 != header.plain_len {
        return Err(corrupt("plaintext length differs from the header"));
    }
    Ok(plain)
}

/// The parts of a header that a reader needs.
struct Header {
    kind: u8,
    compression: u8,
    plain_len: u64,
    nonce: [u8; NONCE_LEN],
}

/// Validates framing and checksum without the key: what storage-side verification and
/// replication can check on their own.
pub fn check_frame_only(key: &str, blob: &[u8]) -> Result<()> {
    check_frame(key, blob).map(|_| ())
}

/// Like [`check_frame_only`], and also that the blob holds `kind`: replication uses it
/// so that an object under `chunks/` that frames as a manifest is never copied.
pub(crate) fn check_frame_of_kind(key: &str, blob: &[u8], kind: BlobKind) -> Result<()> {
    let header = check_frame(key, blob)?;
    if BlobKind::from_byte(header.kind) != Some(kind) {
        return Err(RepoError::corrupt(key, "blob holds another kind of object"));
    }
    Ok(())
}

fn check_frame(key: &str, blob: &[u8]) -> Result<Header> {
    if blob.len() < HEADER_LEN + TAG_LEN + TRAILER_LEN {
        return Err(RepoError::corrupt(key, "blob is shorter than its header"));
    }
    let (body, trailer) = blob.split_at(blob.len() - TRAILER_LEN);
    check_frame_parts(
        key,
        &blob[..HEADER_LEN],
        blob.len(),
        crc32fast::hash(body),
        trailer,
    )
}

/// [`check_frame_of_kind`] for a blob that arrived in pieces, without copying
/// them into one buffer (the replication copier forwards the pieces as they are).
pub(crate) fn check_pieces_of_kind(key: &str, pieces: &[Bytes], kind: BlobKind) -> Result<()> {
    let len: usize = pieces.iter().map(Bytes::len).sum();
    if len < HEADER_LEN + TAG_LEN + TRAILER_LEN {
        return Err(RepoError::corrupt(key, "blob is shorter than its header"));
    }
    let body_len = len - TRAILER_LEN;
    let mut header = [0u8; HEADER_LEN];
    let mut trailer = [0u8; TRAILER_LEN];
    copy_from_pieces(pieces, 0, &mut header);
    copy_from_pieces(pieces, body_len, &mut trailer);
    let mut body_crc = crc32fast::Hasher::new();
    let mut offset = 0;
    for piece in pieces {
        body_crc.update(&piece[..body_len.saturating_sub(offset).min(piece.len())]);
        offset += piece.len();
    }
    let header = check_frame_parts(key, &header, len, body_crc.finalize(), &trailer)?;
    if BlobKind::from_byte(header.kind) != Some(kind) {
        return Err(RepoError::corrupt(key, "blob holds another kind of object"));
    }
    Ok(())
}

/// Fills `out` with the bytes at `start..start + out.len()` of the
/// concatenation of `pieces` (which must hold them).
fn copy_from_pieces(pieces: &[Bytes], start: usize, out: &mut [u8]) {
    let mut offset = 0;
    for piece in pieces {
        let end = offset + piece.len();
        let from = start.max(offset);
        let to = (start + out.len()).min(end);
        if from < to {
            out[from - start..to - start].copy_from_slice(&piece[from - offset..to - offset]);
        }
        offset = end;
    }
}

/// The checks of a frame, given its first [`HEADER_LEN`] bytes, its length, the
/// CRC-32 of everything before the trailer, and the trailer.
fn check_frame_parts(
    key: &str,
    header: &[u8],
    blob_len: usize,
    body_crc: u32,
    trailer: &[u8],
) -> Result<Header> {
    let corrupt = |reason: &str| RepoError::corrupt(key, reason);
    if header[0..4] != MAGIC {
        return Err(corrupt("bad magic"));
    }
    if header[4] != VERSION {
        return Err(corrupt(&format!("unsupported blob version {}", header[4])));
    }
    let stored_crc = u32::from_le_bytes(trailer.try_into().expect("trailer is 4 bytes"));
    if body_crc != stored_crc {
        return Err(corrupt("checksum mismatch"));
    }
    if header[7] != CIPHER_AES_256_GCM {
        return Err(corrupt("unknown cipher"));
    }
    let payload_len = u64::from_le_bytes(
        header[16..24]
            .try_into()
            .expect("header is HEADER_LEN bytes"),
    );
    if payload_len != (blob_len - HEADER_LEN - TRAILER_LEN) as u64 {
        return Err(corrupt("payload length differs from the header"));
    }
    Ok(Header {
        kind: header[5],
        compression: header[6],
        plain_len: u64::from_le_bytes(
            header[8..16]
                .try_into()
                .expect("header is HEADER_LEN bytes"),
        ),
        nonce: header[24..36]
            .try_into()
            .expect("header is HEADER_LEN bytes"),
    })
}

fn associated_data(header: &[u8], identity: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(header.len() + identity.len());
    aad.extend_from_slice(header);
    aad.extend_from_slice(identity);
    aad
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::crypto::MasterKey;

    fn cipher() -> crate::format::crypto::RepoKeys {
        MasterKey::generate().unwrap().derive().unwrap()
    }

    #[test]
    fn round_trip_compressible_and_incompressible() {
        let keys = cipher();
        let open_chunk = |blob: &[u8]| {
            open(
                keys.blob_cipher(),
                "k",
                BlobKind::Chunk,
                b"id",
                blob,
                1 << 20,
            )
            .unwrap()
        };
        let compressible = vec![7u8; 100_000];
        let blob = seal(keys.blob_cipher(), BlobKind::Chunk, b"id", &compressible).unwrap();
        assert!(blob.len() < 1000);
        assert_eq!(blob[6], Compression::Zstd as u8);
        assert_eq!(open_chunk(&blob), compressible);

        let mut random = vec![0u8; 4096];
        crate::format::crypto::fill_random(&mut random).unwrap();
        let blob = seal(keys.blob_cipher(), BlobKind::Chunk, b"id", &random).unwrap();
        assert_eq!(blob[6], Compression::None as u8);
        assert_eq!(blob.len(), HEADER_LEN + 4096 + TAG_LEN + TRAILER_LEN);
        assert_eq!(open_chunk(&blob), random);
    }

    #[test]
    fn a_frame_in_pieces_checks_like_a_whole_one() {
        let keys = cipher();
        let mut random = vec![0u8; 300];
        crate::format::crypto::fill_random(&mut random).unwrap();
        let blob = seal(keys.blob_cipher(), BlobKind::Chunk, b"id", &random).unwrap();
        let cut = |blob: &[u8], a: usize, b: usize| -> Vec<Bytes> {
            let blob = Bytes::copy_from_slice(blob);
            vec![blob.slice(..a), blob.slice(a..b), blob.slice(b..)]
        };
        for a in (0..blob.len()).step_by(7) {
            for b in [
                a,
                a + 1,
                (a + 40).min(blob.len()),
                blob.len() - 2,
                blob.len(),
            ] {
                let b = b.max(a).min(blob.len());
                let pieces = cut(&blob, a, b);
                check_pieces_of_kind("k", &pieces, BlobKind::Chunk).expect("intact");
                assert!(check_pieces_of_kind("k", &pieces, BlobKind::Index).is_err());
            }
        }
        for at in 0..blob.len() {
            let mut bad = blob.clone();
            bad[at] ^= 0x10;
            let whole = check_frame_of_kind("k", &bad, BlobKind::Chunk).is_err();
            let pieces =
                check_pieces_of_kind("k", &cut(&bad, at / 2, at), BlobKind::Chunk).is_err();
            // The CRC covers every byte before the trailer, and the trailer.
            assert!(whole, "byte {at} not detected");
            assert_eq!(whole, pieces, "byte {at}");
        }
        assert!(
            check_pieces_of_kind("k", &[Bytes::from_static(b"short")], BlobKind::Chunk).is_err()
        );
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let keys = cipher();
        let blob = seal(
            keys.blob_cipher(),
            BlobKind::Index,
            b"id",
            b"some index bytes",
        )
        .unwrap();
        for position in 0..blob.len() {
            let mut damaged = blob.clone();
            damaged[position] ^= 0x40;
            let result = open(
                keys.blob_cipher(),
                "k",
                BlobKind::Index,
                b"id",
                &damaged,
                1 << 20,
            );
            assert!(
                matches!(result, Err(RepoError::Corrupt { .. })),
                "flip at {position} not detected"
            );
        }
    }

    #[test]
    fn wrong_identity_kind_or_key_is_refused() {
        let keys = cipher();
        let blob = seal(keys.blob_cipher(), BlobKind::Chunk, b"a", b"data").unwrap();
        let c = keys.blob_cipher();
        assert!(open(c, "k", BlobKind::Chunk, b"b", &blob, 100).is_err());
        assert!(open(c, "k", BlobKind::Manifest, b"a", &blob, 100).is_err());
        assert!(
            open(
                cipher().blob_cipher(),
                "k",
                BlobKind::Chunk,
                b"a",
                &blob,
                100
            )
            .is_err()
        );
        assert!(open(c, "k", BlobKind::Chunk, b"a", &blob, 2).is_err());
        assert!(open(c, "k", BlobKind::Chunk, b"a", &blob[..10], 100).is_err());
    }
}
