//! Wire format of the Haven storage node's batch transfer.
//!
//! Replication between two storage nodes moves hundreds of thousands of small
//! objects. As one signed S3 request each, every object costs an HTTP exchange,
//! a SigV4 payload hash and an MD5 for its ETag at the target; on a small
//! machine that caps replication well below what the disks and network do. The
//! batch transfer moves many objects per request instead:
//!
//! - `POST /{bucket}?haven-batch-get=` with newline-separated keys answers with
//!   one [`Record`] per key, in order: the object, or that it is missing, or
//!   that it could not be read;
//! - `POST /{bucket}?haven-batch-put=` takes a stream of object records and
//!   creates each object that does not exist yet (never overwrites), answering
//!   one line per record: `1` created, `0` already there;
//! - `POST /{bucket}?haven-batch-pull=` asks the node to send a batch read,
//!   signed by the client, to another node and write what comes back
//!   ([`PullRequest`]).
//!
//! Each object travels with its size, ETag, content type and CRC-32 as the
//! source node stored them, so the target keeps the source's ETag instead of
//! computing an MD5, and checks the bytes against the CRC-32 it computes anyway
//! for its own file. The requests are ordinary SigV4-signed S3 requests (same
//! keys and bucket permissions); the put body may be `UNSIGNED-PAYLOAD`, since
//! every object in it carries its own checksum. See `docs/storage-node.md`.
//!
//! A record is:
//!
//! ```text
//! u8 kind | u32 LE key length | key (UTF-8) | u32 LE meta length | meta | data
//! ```
//!
//! where `kind` 1 is an object (meta is [`ObjectInfo`] as JSON, followed by
//! exactly `size` data bytes), 0 a missing key (no meta, no data) and 2 an
//! object that could not be read (meta is a UTF-8 message, no data).

#![warn(missing_docs)]

mod pull;

pub use pull::{
    BATCH_PULL_QUERY, PULL_FETCH_TIMEOUT, PULL_HEADERS, PullKey, PullOutcome, PullRequest,
    key_lines,
};

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// Query parameter of the batch read.
pub const BATCH_GET_QUERY: &str = "haven-batch-get";
/// Query parameter of the batch write.
pub const BATCH_PUT_QUERY: &str = "haven-batch-put";
/// Longest key a record may carry (S3 keys are at most 1024 bytes).
pub const MAX_KEY_LEN: usize = 1024;
/// Words the message of every refusal for lack of permission carries
/// (`… DeleteObject needs access = "delete"`), so that a client tells it apart from
/// an Object Lock refusal, which has the same S3 code, `AccessDenied`.
pub const PERMISSION_REFUSAL: &str = "needs access = ";
/// Longest meta section a record may carry.
pub const MAX_META_LEN: usize = 64 * 1024;

/// S3's rules for bucket names, which the node enforces (they also make names safe
/// as directory names) and Haven's client uses to explain a bare `400` refusal.
pub fn is_valid_bucket_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'.' || *b == b'-')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && !name.contains("..")
}

const KIND_MISSING: u8 = 0;
const KIND_OBJECT: u8 = 1;
const KIND_FAILED: u8 = 2;

/// What travels with an object's bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    /// Length of the data in bytes.
    pub size: u64,
    /// S3 ETag without quotes, as the source computed it.
    pub etag: String,
    /// `Content-Type`, if the object has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// CRC-32 (IEEE) of the data: the receiver refuses the object if the bytes
    /// it got do not match.
    pub crc32: u32,
}

/// One record of a batch stream (its data, for an object, follows separately).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// An object; `info.size` data bytes follow.
    Object {
        /// Bucket key.
        key: String,
        /// Size, ETag, type and checksum.
        info: ObjectInfo,
    },
    /// The key does not exist.
    Missing {
        /// Bucket key.
        key: String,
    },
    /// The object exists but could not be read (for example it failed its own
    /// checksum at the source).
    Failed {
        /// Bucket key.
        key: String,
        /// Why.
        message: String,
    },
}

impl Record {
    /// The key this record is about.
    pub fn key(&self) -> &str {
        match self {
            Self::Object { key, .. } | Self::Missing { key } | Self::Failed { key, .. } => key,
        }
    }

    /// Encodes the record's header; an object's data must follow it.
    pub fn encode(&self) -> Result<Bytes, ProtocolError> {
        let (kind, meta) = match self {
            Self::Object { info, .. } => (
                KIND_OBJECT,
                serde_json::to_vec(info).map_err(|e| ProtocolError::Malformed(e.to_string()))?,
            ),
            Self::Missing { .. } => (KIND_MISSING, Vec::new()),
            Self::Failed { message, .. } => (KIND_FAILED, message.as_bytes().to_vec()),
        };
        let key = self.key().as_bytes();
        if key.len() > MAX_KEY_LEN {
            return Err(ProtocolError::TooLong("key", key.len()));
        }
        if meta.len() > MAX_META_LEN {
            return Err(ProtocolError::TooLong("meta", meta.len()));
        }
        let mut out = BytesMut::with_capacity(9 + key.len() + meta.len());
        out.extend_from_slice(&[kind]);
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        out.extend_from_slice(&meta);
        Ok(out.freeze())
    }
}

/// A batch stream that is not well formed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// A length field is over its limit.
    #[error("{0} of {1} bytes is too long")]
    TooLong(&'static str, usize),
    /// A record cannot be decoded.
    #[error("malformed record: {0}")]
    Malformed(String),
    /// The stream ended inside a record.
    #[error("stream ended inside a record")]
    Truncated,
}

/// What the [`Decoder`] found next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A record header.
    Record(Record),
    /// A piece of the current object's data.
    Data(Bytes),
    /// The current object's data is complete.
    ObjectEnd,
}

/// Incremental decoder of a batch stream: feed it the body's pieces with
/// [`Decoder::push`] and take events with [`Decoder::next_event`] until it
/// asks for more. Object data is handed out as slices of the pieces pushed, not
/// copied; only headers are gathered when they span pieces.
#[derive(Debug, Default)]
pub struct Decoder {
    pending: VecDeque<Bytes>,
    pending_len: usize,
    /// Data bytes of the current object still to come, if inside one.
    remaining: Option<u64>,
}

impl Decoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the next piece of the stream.
    pub fn push(&mut self, piece: Bytes) {
        if !piece.is_empty() {
            self.pending_len += piece.len();
            self.pending.push_back(piece);
        }
    }

    /// The next event, or `None` when more input is needed.
    pub fn next_event(&mut self) -> Result<Option<Event>, ProtocolError> {
        if let Some(remaining) = self.remaining {
            if remaining == 0 {
                self.remaining = None;
                return Ok(Some(Event::ObjectEnd));
            }
            let Some(front) = self.pending.front_mut() else {
                return Ok(None);
            };
            let take = usize::try_from(remaining)
                .unwrap_or(usize::MAX)
                .min(front.len());
            let piece = front.split_to(take);
            if front.is_empty() {
                self.pending.pop_front();
            }
            self.pending_len -= take;
            self.remaining = Some(remaining - take as u64);
            return Ok(Some(Event::Data(piece)));
        }
        let Some(head) = self.peek(5) else {
            return Ok(None);
        };
        let kind = head[0];
        let key_len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if key_len > MAX_KEY_LEN {
            return Err(ProtocolError::TooLong("key", key_len));
        }
        let Some(head) = self.peek(9 + key_len) else {
            return Ok(None);
        };
        let at = 5 + key_len;
        let meta_len =
            u32::from_le_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]) as usize;
        if meta_len > MAX_META_LEN {
            return Err(ProtocolError::TooLong("meta", meta_len));
        }
        if self.pending_len < 9 + key_len + meta_len {
            return Ok(None);
        }
        let mut header = self.take(9 + key_len + meta_len);
        header.advance(5);
        let key = String::from_utf8(header.split_to(key_len).to_vec())
            .map_err(|_| ProtocolError::Malformed("key is not UTF-8".into()))?;
        header.advance(4);
        let record = match kind {
            KIND_OBJECT => {
                let info: ObjectInfo = serde_json::from_slice(&header).map_err(|e| {
                    ProtocolError::Malformed(format!("object info of {key:?}: {e}"))
                })?;
                self.remaining = Some(info.size);
                Record::Object { key, info }
            }
            KIND_MISSING if header.is_empty() => Record::Missing { key },
            KIND_FAILED => Record::Failed {
                key,
                message: String::from_utf8_lossy(&header).into_owned(),
            },
            other => {
                return Err(ProtocolError::Malformed(format!(
                    "record kind {other} with {meta_len} meta bytes"
                )));
            }
        };
        Ok(Some(Event::Record(record)))
    }

    /// Checks, at the end of the input, that the stream ended between records.
    pub fn finish(&self) -> Result<(), ProtocolError> {
        if self.remaining.is_some() || self.pending_len > 0 {
            return Err(ProtocolError::Truncated);
        }
        Ok(())
    }

    /// The first `n` pending bytes, contiguous, if that many are pending.
    fn peek(&mut self, n: usize) -> Option<&[u8]> {
        if self.pending_len < n {
            return None;
        }
        if self.pending.front().is_some_and(|front| front.len() < n) {
            let gathered = self.take(self.pending_len);
            self.pending_len = gathered.len();
            self.pending.push_front(gathered);
        }
        self.pending.front().map(|front| &front[..n])
    }

    /// Removes and returns the first `n` pending bytes (`n <= pending_len`).
    fn take(&mut self, n: usize) -> Bytes {
        self.pending_len -= n;
        let Some(front) = self.pending.front_mut() else {
            return Bytes::new();
        };
        if front.len() >= n {
            let out = front.split_to(n);
            if front.is_empty() {
                self.pending.pop_front();
            }
            return out;
        }
        let mut out = BytesMut::with_capacity(n);
        while out.len() < n {
            let Some(mut piece) = self.pending.pop_front() else {
                break;
            };
            let want = (n - out.len()).min(piece.len());
            out.extend_from_slice(&piece.split_to(want));
            if !piece.is_empty() {
                self.pending.push_front(piece);
            }
        }
        out.freeze()
    }
}

/// CRC-32 of a whole object from the CRC-32s of its consecutive pieces
/// (`(crc, length)` in order), without reading the bytes again: the storage
/// node keeps one CRC per block of every object.
pub fn combine_crc32(pieces: impl IntoIterator<Item = (u32, u64)>) -> u32 {
    let mut whole = crc32fast::Hasher::new();
    for (crc, len) in pieces {
        whole.combine(&crc32fast::Hasher::new_with_initial_len(crc, len));
    }
    whole.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names() {
        for good in ["abc", "haven-site1", "a.b.c", "123"] {
            assert!(is_valid_bucket_name(good), "{good}");
        }
        for bad in [
            "ab",
            "ABC",
            "-abc",
            "abc-",
            "a..b",
            "../x",
            "a/b",
            "a_b",
            &"x".repeat(64),
        ] {
            assert!(!is_valid_bucket_name(bad), "{bad}");
        }
    }

    fn object(key: &str, data: &[u8]) -> (Record, Bytes) {
        let record = Record::Object {
            key: key.into(),
            info: ObjectInfo {
                size: data.len() as u64,
                etag: "e".into(),
                content_type: None,
                crc32: crc32fast::hash(data),
            },
        };
        (record, Bytes::copy_from_slice(data))
    }

    fn stream() -> (Vec<Record>, Bytes, Vec<u8>) {
        let (a, a_data) = object("chunks/aa/1", &[7u8; 3000]);
        let (b, b_data) = object("empty", b"");
        let missing = Record::Missing { key: "gone".into() };
        let failed = Record::Failed {
            key: "bad".into(),
            message: "crc mismatch".into(),
        };
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&a.encode().unwrap());
        bytes.extend_from_slice(&a_data);
        bytes.extend_from_slice(&missing.encode().unwrap());
        bytes.extend_from_slice(&b.encode().unwrap());
        bytes.extend_from_slice(&b_data);
        bytes.extend_from_slice(&failed.encode().unwrap());
        (vec![a, missing, b, failed], a_data, bytes)
    }

    /// Decodes `bytes` pushed in pieces of `piece` bytes; returns records and
    /// the data of each object.
    fn decode(bytes: &[u8], piece: usize) -> Result<Vec<(Record, Vec<u8>)>, ProtocolError> {
        let mut decoder = Decoder::new();
        let mut out: Vec<(Record, Vec<u8>)> = Vec::new();
        let mut in_object = false;
        for part in bytes.chunks(piece) {
            decoder.push(Bytes::copy_from_slice(part));
            while let Some(event) = decoder.next_event()? {
                match event {
                    Event::Record(record) => {
                        in_object = matches!(record, Record::Object { .. });
                        out.push((record, Vec::new()));
                    }
                    Event::Data(data) => {
                        assert!(in_object, "data outside an object");
                        out.last_mut().unwrap().1.extend_from_slice(&data);
                    }
                    Event::ObjectEnd => in_object = false,
                }
            }
        }
        decoder.finish()?;
        Ok(out)
    }

    #[test]
    fn round_trips_in_any_piece_size() {
        let (records, a_data, bytes) = stream();
        for piece in [1, 2, 5, 9, 100, 4096, bytes.len()] {
            let decoded = decode(&bytes, piece).expect("decodes");
            let got: Vec<Record> = decoded.iter().map(|(r, _)| r.clone()).collect();
            assert_eq!(got, records, "piece size {piece}");
            assert_eq!(decoded[0].1, a_data, "piece size {piece}");
            assert!(decoded[1..].iter().all(|(_, data)| data.is_empty()));
        }
    }

    #[test]
    fn a_stream_cut_inside_a_record_is_truncated() {
        let (_, _, bytes) = stream();
        let mut ends = vec![0];
        for (record, data) in decode(&bytes, bytes.len()).unwrap() {
            ends.push(ends[ends.len() - 1] + record.encode().unwrap().len() + data.len());
        }
        assert_eq!(ends.last(), Some(&bytes.len()));
        for cut in 0..bytes.len() {
            let result = decode(&bytes[..cut], 7);
            if ends.contains(&cut) {
                assert!(result.is_ok(), "cut at {cut}, between records");
            } else {
                assert_eq!(result.err(), Some(ProtocolError::Truncated), "cut at {cut}");
            }
        }
    }

    #[test]
    fn hostile_lengths_and_kinds_are_refused_without_buffering() {
        let mut huge_key = vec![KIND_OBJECT];
        huge_key.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode(&huge_key, 64),
            Err(ProtocolError::TooLong("key", u32::MAX as usize))
        );
        let mut huge_meta = vec![KIND_OBJECT, 1, 0, 0, 0, b'k'];
        huge_meta.extend_from_slice(&(MAX_META_LEN as u32 + 1).to_le_bytes());
        assert!(matches!(
            decode(&huge_meta, 64),
            Err(ProtocolError::TooLong("meta", _))
        ));
        let unknown = [9u8, 1, 0, 0, 0, b'k', 0, 0, 0, 0];
        assert!(matches!(
            decode(&unknown, 64),
            Err(ProtocolError::Malformed(_))
        ));
        let bad_json = [KIND_OBJECT, 1, 0, 0, 0, b'k', 2, 0, 0, 0, b'{', b'}'];
        assert!(matches!(
            decode(&bad_json, 64),
            Err(ProtocolError::Malformed(_))
        ));
        let bad_key = [KIND_MISSING, 1, 0, 0, 0, 0xff, 0, 0, 0, 0];
        assert!(matches!(
            decode(&bad_key, 64),
            Err(ProtocolError::Malformed(_))
        ));
    }

    #[test]
    fn combined_crc_equals_the_crc_of_the_whole() {
        let data: Vec<u8> = (0..3_000_001u32).map(|i| (i * 31 % 251) as u8).collect();
        for block in [1usize, 4096, 1 << 20, data.len()] {
            let pieces = data
                .chunks(block)
                .map(|piece| (crc32fast::hash(piece), piece.len() as u64));
            assert_eq!(
                combine_crc32(pieces),
                crc32fast::hash(&data),
                "block {block}"
            );
        }
        assert_eq!(combine_crc32([]), crc32fast::hash(b""));
    }
}
