//! The server side of the wire format: the constants the client never needs, and
//! encoders of what a server sends. Shared constants come from [`crate::wire`].

pub(crate) use crate::wire::*;

// Options only a server has to understand.
pub(crate) const OPT_EXPORT_NAME: u32 = 1;
pub(crate) const OPT_LIST: u32 = 3;
pub(crate) const OPT_STARTTLS: u32 = 5;
pub(crate) const OPT_INFO: u32 = 6;
pub(crate) const OPT_LIST_META_CONTEXT: u32 = 9;

// Option replies only a server sends.
pub(crate) const REP_SERVER: u32 = 2;
pub(crate) const REP_ERR_INVALID: u32 = REP_ERR_BIT | 3;
pub(crate) const REP_ERR_TLS_REQD: u32 = REP_ERR_BIT | 5;

// Info types.
pub(crate) const INFO_NAME: u16 = 1;
pub(crate) const INFO_DESCRIPTION: u16 = 2;

// Client handshake flags.
pub(crate) const CLIENT_FLAG_FIXED_NEWSTYLE: u32 = 1 << 0;
pub(crate) const CLIENT_FLAG_NO_ZEROES: u32 = 1 << 1;

// Commands only a server has to recognise.
pub(crate) const CMD_TRIM: u16 = 4;
pub(crate) const CMD_CACHE: u16 = 5;

// Command flags.
pub(crate) const CMD_FLAG_REQ_ONE: u16 = 1 << 3;

/// Longest option data accepted; longer options close the connection.
pub(crate) const MAX_OPTION_DATA: u32 = 64 * 1024;
/// Options accepted on one connection before it is closed (clients need a handful).
pub(crate) const MAX_OPTIONS: usize = 256;
/// Largest READ (and discarded WRITE payload) accepted.
pub(crate) const MAX_REQUEST: u32 = 32 * 1024 * 1024;
/// Descriptors sent in one block status reply; clients ask again for the rest.
pub(crate) const MAX_DESCRIPTORS: usize = 8192;
/// Id of the one meta context offered.
pub(crate) const BASE_ALLOCATION_ID: u32 = 1;

/// Header of an option reply with its data.
pub(crate) fn option_reply(option: u32, reply_type: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + data.len());
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    // Option reply data is built from bounded strings, far below 4 GiB.
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// A simple reply header.
pub(crate) fn simple_reply(errno: u32, cookie: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&errno.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out
}

/// Size of a structured reply chunk header.
pub(crate) const CHUNK_HEADER_LEN: usize = 20;

/// A structured reply chunk header.
pub(crate) fn chunk_header(
    flags: u16,
    chunk_type: u16,
    cookie: u64,
    length: u32,
) -> [u8; CHUNK_HEADER_LEN] {
    let mut out = [0u8; CHUNK_HEADER_LEN];
    out[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out[4..6].copy_from_slice(&flags.to_be_bytes());
    out[6..8].copy_from_slice(&chunk_type.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out[16..20].copy_from_slice(&length.to_be_bytes());
    out
}

/// A final structured error chunk with a message (cut to the protocol limit).
pub(crate) fn error_chunk(cookie: u64, errno: u32, message: &str) -> Vec<u8> {
    let mut message = message.as_bytes();
    if message.len() > 1024 {
        message = &message[..1024];
    }
    let length = 4 + 2 + message.len() as u32;
    let mut out = Vec::with_capacity(CHUNK_HEADER_LEN + length as usize);
    out.extend_from_slice(&chunk_header(REPLY_FLAG_DONE, CHUNK_ERROR, cookie, length));
    out.extend_from_slice(&errno.to_be_bytes());
    out.extend_from_slice(&(message.len() as u16).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// Big-endian cursor over option data that reports malformed input as `None`.
pub(crate) struct OptionData<'a> {
    bytes: &'a [u8],
}

impl<'a> OptionData<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < count {
            return None;
        }
        let (head, tail) = self.bytes.split_at(count);
        self.bytes = tail;
        Some(head)
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }

    /// A string prefixed by its u32 length, at most [`MAX_STRING`] bytes of UTF-8.
    pub(crate) fn string(&mut self) -> Option<String> {
        let length = self.u32()? as usize;
        if length > MAX_STRING {
            return None;
        }
        String::from_utf8(self.take(length)?.to_vec()).ok()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}
