//! Transmission phase: one request and its complete reply at a time.
//!
//! Every method sends one request and consumes its reply up to the end
//! (the simple reply or the chunk flagged DONE), so after a
//! [`NbdError::Server`] error the stream is still in sync. Lengths are
//! bounded before anything is read; cookies must match the request.

use crate::coverage::Coverage;
use crate::error::NbdError;
use crate::transport::Transport;
use crate::wire::{self, ChunkHeader, RequestHeader};

/// Most descriptor bytes accepted in one block status chunk, plus the context id.
const MAX_BLOCK_STATUS_CHUNK: u32 = 4 + 8 * wire::MAX_BLOCK_STATUS_DESCRIPTORS;

/// Start of a reply: a simple reply carries only an error, a structured
/// one announces a chunk whose payload is still unread.
enum ReplyHeader {
    Simple { errno: u32 },
    Chunk(ChunkHeader),
}

/// The transmission-phase state of one connection.
pub(crate) struct Session {
    transport: Transport,
    structured_replies: bool,
    next_cookie: u64,
}

fn protocol(message: impl Into<String>) -> NbdError {
    NbdError::Protocol(message.into())
}

fn server_error(errno: u32) -> NbdError {
    NbdError::Server {
        errno,
        message: String::new(),
    }
}

/// What a command accepts as a simple reply once structured replies were negotiated.
enum SimpleReply {
    /// Only an error before any chunk (the command's answer needs chunks);
    /// anything else is refused with this message.
    ErrorOnly(&'static str),
    /// A simple reply may answer the command in full, but not after a chunk.
    Allowed,
}

/// Progress through the reply to one request.
struct Reply {
    cookie: u64,
    /// The request's range, which error chunks must point into.
    offset: u64,
    length: u64,
    simple_reply: SimpleReply,
    chunks_seen: bool,
    done: bool,
    /// The first error chunk: reported once the whole reply is consumed, so
    /// the stream stays in sync.
    first_error: Option<NbdError>,
}

impl Reply {
    fn new(cookie: u64, offset: u64, length: u32, simple_reply: SimpleReply) -> Self {
        Reply {
            cookie,
            offset,
            length: u64::from(length),
            simple_reply,
            chunks_seen: false,
            done: false,
            first_error: None,
        }
    }

    /// Checks a simple reply with `errno` against what the command accepts.
    fn simple(&self, errno: u32) -> Result<(), NbdError> {
        match self.simple_reply {
            SimpleReply::ErrorOnly(_) if errno != 0 && !self.chunks_seen => {
                Err(server_error(errno))
            }
            SimpleReply::ErrorOnly(message) => Err(protocol(message)),
            SimpleReply::Allowed if self.chunks_seen => {
                Err(protocol("simple reply in the middle of a structured reply"))
            }
            SimpleReply::Allowed if errno == 0 => Ok(()),
            SimpleReply::Allowed => Err(server_error(errno)),
        }
    }

    /// The outcome of a reply read to its end: its first error chunk, if any.
    fn finish(self) -> Result<(), NbdError> {
        match self.first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

fn unexpected_chunk(chunk_type: u16, request: impl std::fmt::Display) -> NbdError {
    protocol(format!(
        "unexpected chunk type {chunk_type} in reply to {request}"
    ))
}

impl Session {
    pub(crate) fn new(transport: Transport, structured_replies: bool) -> Self {
        Session {
            transport,
            structured_replies,
            next_cookie: 1,
        }
    }

    async fn send(
        &mut self,
        command: u16,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) -> Result<u64, NbdError> {
        let cookie = self.next_cookie;
        self.next_cookie = self.next_cookie.wrapping_add(1);
        let header = RequestHeader {
            flags: 0,
            command,
            cookie,
            offset,
            length,
        };
        self.transport.write_all(&header.encode()).await?;
        if !payload.is_empty() {
            self.transport.write_all(payload).await?;
        }
        self.transport.flush().await?;
        Ok(cookie)
    }

    async fn read_reply_header(&mut self, cookie: u64) -> Result<ReplyHeader, NbdError> {
        let magic = u32::from_be_bytes(self.transport.read_array().await?);
        let (header, reply_cookie) = match magic {
            wire::SIMPLE_REPLY_MAGIC => {
                let (errno, reply_cookie) =
                    wire::decode_simple_reply(&self.transport.read_array().await?)?;
                (ReplyHeader::Simple { errno }, reply_cookie)
            }
            wire::STRUCTURED_REPLY_MAGIC if self.structured_replies => {
                let header = ChunkHeader::decode(&self.transport.read_array().await?)?;
                (ReplyHeader::Chunk(header), header.cookie)
            }
            wire::STRUCTURED_REPLY_MAGIC => {
                return Err(protocol(
                    "structured reply although structured replies were not negotiated",
                ));
            }
            other => return Err(protocol(format!("bad reply magic {other:#x}"))),
        };
        if reply_cookie != cookie {
            return Err(protocol(format!(
                "reply cookie {reply_cookie:#x} does not match request cookie {cookie:#x}"
            )));
        }
        Ok(header)
    }

    /// Reads an error chunk and turns it into the error to report.
    async fn read_error_chunk(
        &mut self,
        header: &ChunkHeader,
        request_offset: u64,
        request_length: u64,
    ) -> Result<NbdError, NbdError> {
        if header.length > wire::MAX_ERROR_CHUNK {
            return Err(protocol(format!(
                "error chunk of {} bytes exceeds the limit of {}",
                header.length,
                wire::MAX_ERROR_CHUNK
            )));
        }
        let payload = self.transport.read_vec(header.length).await?;
        let chunk = wire::decode_error_chunk(header.chunk_type, &payload)?;
        if let Some(offset) = chunk.offset {
            let inside = offset >= request_offset && offset - request_offset < request_length;
            if !inside {
                return Err(protocol(format!(
                    "error chunk offset {offset} lies outside the request"
                )));
            }
        }
        Ok(NbdError::Server {
            errno: chunk.errno,
            message: chunk.message,
        })
    }

    fn check_none_chunk(header: &ChunkHeader) -> Result<(), NbdError> {
        if header.length != 0 || !header.is_done() {
            return Err(protocol(
                "NBD_REPLY_TYPE_NONE chunk must be empty and flagged DONE",
            ));
        }
        Ok(())
    }

    /// Reads the next chunk of the structured reply to `reply.cookie` that
    /// its caller must handle: NONE and error chunks are handled here, the
    /// first error kept for [`Reply::finish`]. `None` once the reply is over
    /// (after the chunk flagged DONE, or a simple reply the command allows).
    async fn next_chunk(&mut self, reply: &mut Reply) -> Result<Option<ChunkHeader>, NbdError> {
        while !reply.done {
            let header = match self.read_reply_header(reply.cookie).await? {
                ReplyHeader::Simple { errno } => {
                    reply.done = true;
                    reply.simple(errno)?;
                    continue;
                }
                ReplyHeader::Chunk(header) => header,
            };
            reply.chunks_seen = true;
            reply.done = header.is_done();
            match header.chunk_type {
                wire::CHUNK_NONE => Self::check_none_chunk(&header)?,
                chunk_type if chunk_type & wire::CHUNK_ERROR_BIT != 0 => {
                    let error = self
                        .read_error_chunk(&header, reply.offset, reply.length)
                        .await?;
                    reply.first_error.get_or_insert(error);
                }
                _ => return Ok(Some(header)),
            }
        }
        Ok(None)
    }

    /// READ of `buf.len()` bytes (at most the negotiated maximum) at `offset`.
    pub(crate) async fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), NbdError> {
        let length = u32::try_from(buf.len())
            .map_err(|_| NbdError::InvalidArgument("read request longer than 4 GiB".into()))?;
        let cookie = self.send(wire::CMD_READ, offset, length, &[]).await?;
        if !self.structured_replies {
            return match self.read_reply_header(cookie).await? {
                ReplyHeader::Simple { errno: 0 } => self.transport.read_exact(buf).await,
                ReplyHeader::Simple { errno } => Err(server_error(errno)),
                ReplyHeader::Chunk(_) => Err(protocol("unreachable chunk header")),
            };
        }
        let request_length = u64::from(length);
        let mut coverage = Coverage::new(offset, request_length);
        let mut reply = Reply::new(
            cookie,
            offset,
            length,
            SimpleReply::ErrorOnly(
                "simple reply to NBD_CMD_READ after structured replies were negotiated",
            ),
        );
        while let Some(header) = self.next_chunk(&mut reply).await? {
            match header.chunk_type {
                wire::CHUNK_OFFSET_DATA => {
                    let data_length = u64::from(header.length)
                        .checked_sub(8)
                        .filter(|data_length| *data_length <= request_length)
                        .ok_or_else(|| {
                            protocol(format!(
                                "OFFSET_DATA chunk of {} bytes in reply to a read of {request_length} bytes",
                                header.length
                            ))
                        })?;
                    let data_offset = u64::from_be_bytes(self.transport.read_array().await?);
                    coverage.add(data_offset, data_length)?;
                    // Coverage::add proved the chunk lies inside the request.
                    let start = (data_offset - offset) as usize;
                    let end = start + data_length as usize;
                    self.transport.read_exact(&mut buf[start..end]).await?;
                }
                wire::CHUNK_OFFSET_HOLE => {
                    if header.length != 12 {
                        return Err(protocol(format!(
                            "OFFSET_HOLE chunk of {} bytes instead of 12",
                            header.length
                        )));
                    }
                    let payload: [u8; 12] = self.transport.read_array().await?;
                    let (hole_offset, hole_length) = wire::decode_offset_hole(&payload)?;
                    coverage.add(hole_offset, u64::from(hole_length))?;
                    let start = (hole_offset - offset) as usize;
                    let end = start + hole_length as usize;
                    buf[start..end].fill(0);
                }
                other => return Err(unexpected_chunk(other, "NBD_CMD_READ")),
            }
        }
        reply.finish()?;
        coverage.finish()
    }

    /// A command whose successful reply carries no data (WRITE, FLUSH, WRITE_ZEROES).
    pub(crate) async fn command(
        &mut self,
        command: u16,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) -> Result<(), NbdError> {
        let cookie = self.send(command, offset, length, payload).await?;
        let mut reply = Reply::new(cookie, offset, length, SimpleReply::Allowed);
        if let Some(header) = self.next_chunk(&mut reply).await? {
            return Err(unexpected_chunk(
                header.chunk_type,
                format_args!("command {command}"),
            ));
        }
        reply.finish()
    }

    /// BLOCK_STATUS for `[offset, offset + length)`; returns the descriptors
    /// of context `wanted_id`. `known_ids` are all negotiated context ids:
    /// the server answers once for each.
    pub(crate) async fn block_status(
        &mut self,
        wanted_id: u32,
        known_ids: &[u32],
        offset: u64,
        length: u32,
    ) -> Result<Vec<(u32, u32)>, NbdError> {
        let cookie = self
            .send(wire::CMD_BLOCK_STATUS, offset, length, &[])
            .await?;
        let mut wanted = None;
        let mut seen_ids: Vec<u32> = Vec::new();
        let mut reply = Reply::new(
            cookie,
            offset,
            length,
            SimpleReply::ErrorOnly("simple success reply to NBD_CMD_BLOCK_STATUS"),
        );
        while let Some(header) = self.next_chunk(&mut reply).await? {
            if header.chunk_type != wire::CHUNK_BLOCK_STATUS {
                return Err(unexpected_chunk(header.chunk_type, "NBD_CMD_BLOCK_STATUS"));
            }
            if header.length > MAX_BLOCK_STATUS_CHUNK {
                return Err(protocol(format!(
                    "block status chunk of {} bytes exceeds the limit of {MAX_BLOCK_STATUS_CHUNK}",
                    header.length
                )));
            }
            let payload = self.transport.read_vec(header.length).await?;
            let (context_id, descriptors) = wire::decode_block_status(&payload)?;
            if !known_ids.contains(&context_id) {
                return Err(protocol(format!(
                    "block status for context id {context_id}, which was never negotiated"
                )));
            }
            if seen_ids.contains(&context_id) {
                return Err(protocol(format!(
                    "two block status chunks for context id {context_id}"
                )));
            }
            seen_ids.push(context_id);
            if context_id == wanted_id {
                wanted = Some(descriptors);
            }
        }
        reply.finish()?;
        wanted.ok_or_else(|| protocol(format!("block status reply lacks context id {wanted_id}")))
    }

    /// Sends NBD_CMD_DISC (which has no reply) and closes the write side.
    pub(crate) async fn disconnect(&mut self) -> Result<(), NbdError> {
        self.send(wire::CMD_DISC, 0, 0, &[]).await?;
        self.transport.shutdown().await
    }
}
