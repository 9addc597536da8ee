//! NBD wire format: constants and pure encoders/decoders, no I/O.
//!
//! Every decoder validates what it is given and returns
//! [`NbdError::Protocol`] instead of panicking, so the I/O layers only have
//! to move bytes and bound lengths before reading them.

use crate::error::NbdError;

// Handshake magics.
pub(crate) const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub(crate) const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
pub(crate) const OLDSTYLE_MAGIC: u64 = 0x0000_4202_8186_1253;
pub(crate) const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

// Handshake flags (server, u16) and client flags (u32) share these bits.
pub(crate) const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub(crate) const FLAG_NO_ZEROES: u16 = 1 << 1;

// Options.
pub(crate) const OPT_ABORT: u32 = 2;
pub(crate) const OPT_GO: u32 = 7;
pub(crate) const OPT_STRUCTURED_REPLY: u32 = 8;
pub(crate) const OPT_SET_META_CONTEXT: u32 = 10;

// Option reply types.
pub(crate) const REP_ACK: u32 = 1;
pub(crate) const REP_INFO: u32 = 3;
pub(crate) const REP_META_CONTEXT: u32 = 4;
pub(crate) const REP_ERR_BIT: u32 = 1 << 31;
pub(crate) const REP_ERR_UNSUP: u32 = REP_ERR_BIT | 1;
pub(crate) const REP_ERR_POLICY: u32 = REP_ERR_BIT | 2;
pub(crate) const REP_ERR_UNKNOWN: u32 = REP_ERR_BIT | 6;
pub(crate) const REP_ERR_SHUTDOWN: u32 = REP_ERR_BIT | 7;

// Info types for NBD_OPT_GO.
pub(crate) const INFO_EXPORT: u16 = 0;
pub(crate) const INFO_BLOCK_SIZE: u16 = 3;

// Transmission flags.
pub(crate) const TFLAG_HAS_FLAGS: u16 = 1 << 0;
pub(crate) const TFLAG_READ_ONLY: u16 = 1 << 1;
pub(crate) const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub(crate) const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub(crate) const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

// Commands.
pub(crate) const CMD_READ: u16 = 0;
pub(crate) const CMD_WRITE: u16 = 1;
pub(crate) const CMD_DISC: u16 = 2;
pub(crate) const CMD_FLUSH: u16 = 3;
pub(crate) const CMD_WRITE_ZEROES: u16 = 6;
pub(crate) const CMD_BLOCK_STATUS: u16 = 7;

// Transmission magics.
pub(crate) const REQUEST_MAGIC: u32 = 0x2560_9513;
pub(crate) const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub(crate) const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

// Structured reply flags and chunk types.
pub(crate) const REPLY_FLAG_DONE: u16 = 1 << 0;
pub(crate) const CHUNK_NONE: u16 = 0;
pub(crate) const CHUNK_OFFSET_DATA: u16 = 1;
pub(crate) const CHUNK_OFFSET_HOLE: u16 = 2;
pub(crate) const CHUNK_BLOCK_STATUS: u16 = 5;
pub(crate) const CHUNK_ERROR_BIT: u16 = 1 << 15;
pub(crate) const CHUNK_ERROR: u16 = CHUNK_ERROR_BIT | 1;
pub(crate) const CHUNK_ERROR_OFFSET: u16 = CHUNK_ERROR_BIT | 2;

// Error values.
pub(crate) const EPERM: u32 = 1;
pub(crate) const EIO: u32 = 5;
pub(crate) const EAGAIN: u32 = 11;
pub(crate) const ENOMEM: u32 = 12;
pub(crate) const EINVAL: u32 = 22;
pub(crate) const ENOSPC: u32 = 28;
pub(crate) const EOVERFLOW: u32 = 75;
pub(crate) const ENOTSUP: u32 = 95;
pub(crate) const ESHUTDOWN: u32 = 108;

/// Longest option reply payload accepted during the handshake.
pub(crate) const MAX_OPTION_REPLY: u32 = 64 * 1024;
/// Longest string (export name, context name, message) the protocol allows.
pub(crate) const MAX_STRING: usize = 4096;
/// Largest export size accepted from a server.
pub(crate) const MAX_EXPORT_SIZE: u64 = 1 << 63;
/// Request size a client should not exceed when the server states no limit.
pub(crate) const DEFAULT_MAX_REQUEST: u32 = 32 * 1024 * 1024;
/// Longest error chunk payload: error, message length, message, offset.
pub(crate) const MAX_ERROR_CHUNK: u32 = 4 + 2 + MAX_STRING as u32 + 8;
/// Most descriptors accepted in one block status chunk (qemu sends at most 128 Ki).
pub(crate) const MAX_BLOCK_STATUS_DESCRIPTORS: u32 = 256 * 1024;

/// Size of a transmission request header.
pub(crate) const REQUEST_HEADER_LEN: usize = 28;

/// Name of an NBD error value, for messages.
pub(crate) fn errno_name(errno: u32) -> &'static str {
    match errno {
        EPERM => "EPERM",
        EIO => "EIO",
        EAGAIN => "EAGAIN",
        ENOMEM => "ENOMEM",
        EINVAL => "EINVAL",
        ENOSPC => "ENOSPC",
        EOVERFLOW => "EOVERFLOW",
        ENOTSUP => "ENOTSUP",
        ESHUTDOWN => "ESHUTDOWN",
        _ => "unknown error",
    }
}

/// Name of an `NBD_REP_ERR_*` value, for messages.
pub(crate) fn option_error_name(code: u32) -> &'static str {
    match code {
        REP_ERR_UNSUP => "NBD_REP_ERR_UNSUP",
        REP_ERR_POLICY => "NBD_REP_ERR_POLICY",
        0x8000_0003 => "NBD_REP_ERR_INVALID",
        0x8000_0004 => "NBD_REP_ERR_PLATFORM",
        0x8000_0005 => "NBD_REP_ERR_TLS_REQD",
        REP_ERR_UNKNOWN => "NBD_REP_ERR_UNKNOWN",
        REP_ERR_SHUTDOWN => "NBD_REP_ERR_SHUTDOWN",
        0x8000_0008 => "NBD_REP_ERR_BLOCK_SIZE_REQD",
        0x8000_0009 => "NBD_REP_ERR_TOO_BIG",
        0x8000_000a => "NBD_REP_ERR_EXT_HEADER_REQD",
        _ => "unknown option error",
    }
}

fn protocol(message: impl Into<String>) -> NbdError {
    NbdError::Protocol(message.into())
}

/// Big-endian cursor over a received payload; every read is bounds-checked.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Reader { bytes, what }
    }

    fn take(&mut self, count: usize) -> Result<&'a [u8], NbdError> {
        if self.bytes.len() < count {
            return Err(protocol(format!("{} is truncated", self.what)));
        }
        let (head, tail) = self.bytes.split_at(count);
        self.bytes = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], NbdError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, NbdError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, NbdError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, NbdError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub(crate) fn bytes(&mut self, count: usize) -> Result<&'a [u8], NbdError> {
        self.take(count)
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    pub(crate) fn finish(self) -> Result<(), NbdError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(protocol(format!("{} has trailing bytes", self.what)))
        }
    }
}

/// Checks a string the client is about to send against the protocol limit.
pub(crate) fn check_string(what: &str, value: &str) -> Result<(), NbdError> {
    if value.len() > MAX_STRING {
        return Err(NbdError::InvalidArgument(format!(
            "{what} is {} bytes, the protocol allows at most {MAX_STRING}",
            value.len()
        )));
    }
    Ok(())
}

fn push_string_u32(out: &mut Vec<u8>, value: &str) {
    // Callers check strings against MAX_STRING first, so the length fits.
    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
    out.extend_from_slice(value.as_bytes());
}

/// Encodes an option request (`IHAVEOPT`, option, length, data).
pub(crate) fn encode_option(option: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + data.len());
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    // Option data is built from checked strings, far below 4 GiB.
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// Data of `NBD_OPT_GO`: export name and the info types requested.
pub(crate) fn encode_go(export: &str, info_requests: &[u16]) -> Vec<u8> {
    let mut out = Vec::new();
    push_string_u32(&mut out, export);
    out.extend_from_slice(&(info_requests.len() as u16).to_be_bytes());
    for info in info_requests {
        out.extend_from_slice(&info.to_be_bytes());
    }
    out
}

/// Data of `NBD_OPT_SET_META_CONTEXT`: export name and the context queries.
pub(crate) fn encode_set_meta_context(export: &str, queries: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    push_string_u32(&mut out, export);
    out.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for query in queries {
        push_string_u32(&mut out, query);
    }
    out
}

/// Fixed part of a reply to an option request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OptionReplyHeader {
    pub(crate) option: u32,
    pub(crate) reply_type: u32,
    pub(crate) length: u32,
}

impl OptionReplyHeader {
    pub(crate) const LEN: usize = 20;

    /// Decodes and validates the header of a reply to `expected_option`.
    pub(crate) fn decode(bytes: &[u8; Self::LEN], expected_option: u32) -> Result<Self, NbdError> {
        let mut reader = Reader::new(bytes, "option reply header");
        let magic = reader.u64()?;
        if magic != OPTION_REPLY_MAGIC {
            return Err(protocol(format!("bad option reply magic {magic:#x}")));
        }
        let header = OptionReplyHeader {
            option: reader.u32()?,
            reply_type: reader.u32()?,
            length: reader.u32()?,
        };
        if header.option != expected_option {
            return Err(protocol(format!(
                "option reply for option {} while waiting for option {expected_option}",
                header.option
            )));
        }
        if header.length > MAX_OPTION_REPLY {
            return Err(protocol(format!(
                "option reply length {} exceeds the limit of {MAX_OPTION_REPLY}",
                header.length
            )));
        }
        Ok(header)
    }
}

/// Block size constraints of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockSize {
    pub(crate) minimum: u32,
    pub(crate) preferred: u32,
    pub(crate) maximum: u32,
}

impl BlockSize {
    /// What a client may assume when the server sends no constraints.
    pub(crate) const DEFAULT: BlockSize = BlockSize {
        minimum: 1,
        preferred: 4096,
        maximum: DEFAULT_MAX_REQUEST,
    };

    /// Validates constraints the way the protocol defines them.
    pub(crate) fn validate(minimum: u32, preferred: u32, maximum: u32) -> Result<Self, NbdError> {
        let valid = minimum.is_power_of_two()
            && minimum <= 64 * 1024
            && preferred.is_power_of_two()
            && preferred >= minimum
            && maximum >= minimum
            && (maximum == u32::MAX || maximum.is_multiple_of(minimum));
        if !valid {
            return Err(protocol(format!(
                "invalid block size constraints minimum={minimum} preferred={preferred} maximum={maximum}"
            )));
        }
        Ok(BlockSize {
            minimum,
            preferred,
            maximum,
        })
    }

    /// Largest READ/WRITE request to send: the server maximum capped at
    /// 32 MiB, rounded down to a multiple of the minimum.
    pub(crate) fn max_request(&self) -> u32 {
        let capped = self.maximum.min(DEFAULT_MAX_REQUEST);
        (capped / self.minimum) * self.minimum
    }
}

/// One `NBD_REP_INFO` reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Info {
    Export { size: u64, flags: u16 },
    BlockSize(BlockSize),
    Other(u16),
}

/// Decodes the payload of an `NBD_REP_INFO` reply.
pub(crate) fn decode_info(payload: &[u8]) -> Result<Info, NbdError> {
    let mut reader = Reader::new(payload, "NBD_REP_INFO");
    let info_type = reader.u16()?;
    let info = match info_type {
        INFO_EXPORT => {
            let size = reader.u64()?;
            let flags = reader.u16()?;
            reader.finish()?;
            if size > MAX_EXPORT_SIZE {
                return Err(protocol(format!("export size {size} exceeds 2^63")));
            }
            if flags & TFLAG_HAS_FLAGS == 0 {
                return Err(protocol("transmission flags lack NBD_FLAG_HAS_FLAGS"));
            }
            Info::Export { size, flags }
        }
        INFO_BLOCK_SIZE => {
            let minimum = reader.u32()?;
            let preferred = reader.u32()?;
            let maximum = reader.u32()?;
            reader.finish()?;
            Info::BlockSize(BlockSize::validate(minimum, preferred, maximum)?)
        }
        other => Info::Other(other),
    };
    Ok(info)
}

/// Decodes an `NBD_REP_META_CONTEXT` reply into (context id, name).
pub(crate) fn decode_meta_context(payload: &[u8]) -> Result<(u32, String), NbdError> {
    let mut reader = Reader::new(payload, "NBD_REP_META_CONTEXT");
    let id = reader.u32()?;
    let name = reader.rest();
    if name.len() > MAX_STRING {
        return Err(protocol("meta context name longer than 4096 bytes"));
    }
    let name =
        String::from_utf8(name.to_vec()).map_err(|_| protocol("meta context name is not utf-8"))?;
    Ok((id, name))
}

/// Header of a transmission request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestHeader {
    pub(crate) flags: u16,
    pub(crate) command: u16,
    pub(crate) cookie: u64,
    pub(crate) offset: u64,
    pub(crate) length: u32,
}

impl RequestHeader {
    pub(crate) fn encode(&self) -> [u8; REQUEST_HEADER_LEN] {
        let mut out = [0u8; REQUEST_HEADER_LEN];
        out[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&self.flags.to_be_bytes());
        out[6..8].copy_from_slice(&self.command.to_be_bytes());
        out[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        out[16..24].copy_from_slice(&self.offset.to_be_bytes());
        out[24..28].copy_from_slice(&self.length.to_be_bytes());
        out
    }
}

/// Rest of a simple reply after its magic: error and cookie.
pub(crate) fn decode_simple_reply(bytes: &[u8; 12]) -> Result<(u32, u64), NbdError> {
    let mut reader = Reader::new(bytes, "simple reply");
    Ok((reader.u32()?, reader.u64()?))
}

/// Rest of a structured reply chunk header after its magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkHeader {
    pub(crate) flags: u16,
    pub(crate) chunk_type: u16,
    pub(crate) cookie: u64,
    pub(crate) length: u32,
}

impl ChunkHeader {
    pub(crate) fn decode(bytes: &[u8; 16]) -> Result<Self, NbdError> {
        let mut reader = Reader::new(bytes, "structured reply header");
        Ok(ChunkHeader {
            flags: reader.u16()?,
            chunk_type: reader.u16()?,
            cookie: reader.u64()?,
            length: reader.u32()?,
        })
    }

    pub(crate) fn is_done(&self) -> bool {
        self.flags & REPLY_FLAG_DONE != 0
    }
}

/// Decodes an `NBD_REPLY_TYPE_OFFSET_HOLE` payload into (offset, length).
pub(crate) fn decode_offset_hole(payload: &[u8]) -> Result<(u64, u32), NbdError> {
    let mut reader = Reader::new(payload, "OFFSET_HOLE chunk");
    let offset = reader.u64()?;
    let length = reader.u32()?;
    reader.finish()?;
    Ok((offset, length))
}

/// A decoded error chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ErrorChunk {
    pub(crate) errno: u32,
    pub(crate) message: String,
    pub(crate) offset: Option<u64>,
}

/// Decodes `NBD_REPLY_TYPE_ERROR`, `ERROR_OFFSET` or an unknown error type.
pub(crate) fn decode_error_chunk(chunk_type: u16, payload: &[u8]) -> Result<ErrorChunk, NbdError> {
    let mut reader = Reader::new(payload, "error chunk");
    let errno = reader.u32()?;
    if errno == 0 {
        return Err(protocol("error chunk with error value 0"));
    }
    let message_length = usize::from(reader.u16()?);
    let message = String::from_utf8_lossy(reader.bytes(message_length)?).into_owned();
    let offset = match chunk_type {
        CHUNK_ERROR_OFFSET => Some(reader.u64()?),
        _ => None,
    };
    // Unknown error types may carry more data after the message.
    if chunk_type == CHUNK_ERROR || chunk_type == CHUNK_ERROR_OFFSET {
        reader.finish()?;
    }
    Ok(ErrorChunk {
        errno,
        message,
        offset,
    })
}

/// Decodes an `NBD_REPLY_TYPE_BLOCK_STATUS` payload into the context id and
/// its (length, flags) descriptors.
pub(crate) fn decode_block_status(payload: &[u8]) -> Result<(u32, Vec<(u32, u32)>), NbdError> {
    if payload.len() < 12 || !(payload.len() - 4).is_multiple_of(8) {
        return Err(protocol(format!(
            "block status chunk of {} bytes is not a context id plus descriptors",
            payload.len()
        )));
    }
    let mut reader = Reader::new(payload, "block status chunk");
    let context_id = reader.u32()?;
    let mut descriptors = Vec::with_capacity((payload.len() - 4) / 8);
    while !reader.bytes.is_empty() {
        let length = reader.u32()?;
        let flags = reader.u32()?;
        descriptors.push((length, flags));
    }
    Ok((context_id, descriptors))
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
