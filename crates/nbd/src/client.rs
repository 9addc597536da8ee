//! The public connection type: validates caller arguments, splits large
//! requests, applies the per-request timeout and poisons itself after any
//! failure that leaves the stream out of sync.

use std::time::Duration;

use tracing::warn;

use crate::endpoint::Endpoint;
use crate::error::NbdError;
use crate::extent::{Extent, extents_from_descriptors};
use crate::handshake::{self, Negotiated};
use crate::session::Session;
use crate::transport::{Transport, with_timeout};
use crate::wire;

/// Longest range asked for in one BLOCK_STATUS request (aligned to any block size).
const MAX_BLOCK_STATUS_REQUEST: u32 = 1 << 31;
/// Largest zero buffer written when the server cannot WRITE_ZEROES.
const MAX_ZERO_BUFFER: u32 = 1 << 20;

/// What to ask the server for while connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Export name (the path part of an NBD URI).
    pub export: String,
    /// Metadata contexts to negotiate, e.g. [`crate::CONTEXT_BASE_ALLOCATION`];
    /// the server may grant fewer, see [`Client::has_meta_context`].
    pub meta_contexts: Vec<String>,
    /// Bound on each handshake step and on each request with its reply.
    pub timeout: Duration,
}

impl ConnectOptions {
    /// Options for `export` with no meta contexts and a 30 s timeout, the usual starting point.
    pub fn new(export: impl Into<String>) -> Self {
        ConnectOptions {
            export: export.into(),
            meta_contexts: Vec::new(),
            timeout: Duration::from_secs(30),
        }
    }
}

/// One NBD connection to one export, with one request in flight at a time.
///
/// Open several clients for parallelism (when [`Client::can_multi_conn`]
/// says the server keeps them consistent). After an I/O error, a timeout or
/// a protocol violation every further call fails with
/// [`NbdError::ConnectionBroken`]; a server error reply keeps it usable.
pub struct Client {
    session: Session,
    negotiated: Negotiated,
    timeout: Duration,
    broken: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Client")
            .field("negotiated", &self.negotiated)
            .field("timeout", &self.timeout)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to `endpoint` and negotiates the export, so the caller gets a ready connection.
    pub async fn connect(
        endpoint: &Endpoint,
        options: &ConnectOptions,
    ) -> Result<Client, NbdError> {
        let mut transport =
            with_timeout("connect", options.timeout, Transport::connect(endpoint)).await?;
        let negotiated = handshake::negotiate(&mut transport, options).await?;
        Ok(Client {
            session: Session::new(transport, negotiated.structured_replies),
            negotiated,
            timeout: options.timeout,
            broken: false,
        })
    }

    /// Size of the export in bytes, so callers know what to read.
    pub fn size(&self) -> u64 {
        self.negotiated.size
    }

    /// Whether the server refuses writes, so restores can fail early.
    pub fn is_read_only(&self) -> bool {
        self.negotiated.transmission_flags & wire::TFLAG_READ_ONLY != 0
    }

    /// Whether the server promises consistency across several connections,
    /// so callers know if parallel clients are safe for writes and flushes.
    pub fn can_multi_conn(&self) -> bool {
        self.negotiated.transmission_flags & wire::TFLAG_CAN_MULTI_CONN != 0
    }

    /// Whether the server granted meta context `name`, so callers can fall
    /// back (e.g. to a full backup when a dirty bitmap is missing).
    pub fn has_meta_context(&self, name: &str) -> bool {
        self.negotiated
            .meta_contexts
            .iter()
            .any(|context| context.name == name)
    }

    /// Smallest unit the server accepts: offsets and lengths of requests
    /// must be multiples of it (1 unless the server says otherwise).
    pub fn minimum_block_size(&self) -> u32 {
        self.negotiated.block_size.minimum
    }

    /// Request size the server handles best, a hint for callers choosing chunk sizes.
    pub fn preferred_block_size(&self) -> u32 {
        self.negotiated.block_size.preferred
    }

    /// Checks the range lies inside the export and honours the minimum
    /// block size, which the client promised by asking for NBD_INFO_BLOCK_SIZE.
    fn check_range(&self, offset: u64, length: u64) -> Result<(), NbdError> {
        let inside = offset
            .checked_add(length)
            .is_some_and(|end| end <= self.negotiated.size);
        if !inside {
            return Err(NbdError::InvalidArgument(format!(
                "range [{offset}, +{length}) exceeds the export size {}",
                self.negotiated.size
            )));
        }
        let minimum = u64::from(self.negotiated.block_size.minimum);
        // A range may end in a partial block only at the end of the export.
        let reaches_end = offset + length == self.negotiated.size;
        if !offset.is_multiple_of(minimum) || !(length.is_multiple_of(minimum) || reaches_end) {
            return Err(NbdError::InvalidArgument(format!(
                "range [{offset}, +{length}) is not aligned to the minimum block size {minimum}"
            )));
        }
        Ok(())
    }

    fn check_usable(&self) -> Result<(), NbdError> {
        if self.broken {
            return Err(NbdError::ConnectionBroken);
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<(), NbdError> {
        if self.is_read_only() {
            return Err(NbdError::ReadOnly);
        }
        Ok(())
    }

    /// Records that `result` left the stream out of sync, if it did.
    fn settle<T>(&mut self, result: Result<T, NbdError>) -> Result<T, NbdError> {
        if let Err(error) = &result
            && error.breaks_connection()
        {
            warn!(error = %error, "nbd connection unusable");
            self.broken = true;
        }
        result
    }

    fn max_request(&self) -> usize {
        self.negotiated.block_size.max_request() as usize
    }

    /// Reads `buf.len()` bytes at `offset`, split into requests no larger than
    /// the server allows; holes come back as zeros.
    pub async fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), NbdError> {
        self.check_usable()?;
        self.check_range(offset, buf.len() as u64)?;
        let max_request = self.max_request();
        let mut position = offset;
        for piece in buf.chunks_mut(max_request) {
            let result =
                with_timeout("read", self.timeout, self.session.read(position, piece)).await;
            self.settle(result)?;
            position += piece.len() as u64;
        }
        Ok(())
    }

    /// Writes `data` at `offset`, split into requests no larger than the server allows.
    pub async fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), NbdError> {
        self.check_usable()?;
        self.check_writable()?;
        self.check_range(offset, data.len() as u64)?;
        let max_request = self.max_request();
        let mut position = offset;
        for piece in data.chunks(max_request) {
            // Pieces are at most 32 MiB.
            let length = piece.len() as u32;
            let command = self
                .session
                .command(wire::CMD_WRITE, position, length, piece);
            let result = with_timeout("write", self.timeout, command).await;
            self.settle(result)?;
            position += piece.len() as u64;
        }
        Ok(())
    }

    /// Zeroes `length` bytes at `offset`, with WRITE_ZEROES when the server
    /// offers it and with plain writes of zeros otherwise.
    pub async fn write_zeroes(&mut self, offset: u64, length: u32) -> Result<(), NbdError> {
        self.check_usable()?;
        self.check_writable()?;
        self.check_range(offset, u64::from(length))?;
        if length == 0 {
            return Ok(());
        }
        if self.negotiated.transmission_flags & wire::TFLAG_SEND_WRITE_ZEROES != 0 {
            let command = self
                .session
                .command(wire::CMD_WRITE_ZEROES, offset, length, &[]);
            let result = with_timeout("write zeroes", self.timeout, command).await;
            return self.settle(result);
        }
        let piece = length.min(MAX_ZERO_BUFFER) as usize;
        let zeros = vec![0u8; piece.min(self.max_request())];
        let mut position = offset;
        let end = offset + u64::from(length);
        while position < end {
            let piece = &zeros[..zeros.len().min((end - position) as usize)];
            self.write(position, piece).await?;
            position += piece.len() as u64;
        }
        Ok(())
    }

    /// Asks the server to persist completed writes; a no-op when the server
    /// does not advertise FLUSH (it then has no volatile cache to flush).
    pub async fn flush(&mut self) -> Result<(), NbdError> {
        self.check_usable()?;
        if self.negotiated.transmission_flags & wire::TFLAG_SEND_FLUSH == 0 {
            return Ok(());
        }
        let command = self.session.command(wire::CMD_FLUSH, 0, 0, &[]);
        let result = with_timeout("flush", self.timeout, command).await;
        self.settle(result)
    }

    /// Extents covering [offset, offset+length) for one negotiated context;
    /// loops until the whole range is covered, clamps the last extent, merges nothing.
    pub async fn block_status(
        &mut self,
        context: &str,
        offset: u64,
        length: u64,
    ) -> Result<Vec<Extent>, NbdError> {
        self.check_usable()?;
        self.check_range(offset, length)?;
        let context_id = self
            .negotiated
            .meta_contexts
            .iter()
            .find(|candidate| candidate.name == context)
            .map(|candidate| candidate.id)
            .ok_or_else(|| NbdError::MetaContextNotNegotiated(context.to_string()))?;
        let known_ids: Vec<u32> = self
            .negotiated
            .meta_contexts
            .iter()
            .map(|candidate| candidate.id)
            .collect();
        let end = offset + length;
        let mut position = offset;
        let mut extents = Vec::new();
        while position < end {
            // Bounded by MAX_BLOCK_STATUS_REQUEST, so it fits in u32.
            let request = (end - position).min(u64::from(MAX_BLOCK_STATUS_REQUEST)) as u32;
            let session = &mut self.session;
            let exchange = async {
                let descriptors = session
                    .block_status(context_id, &known_ids, position, request)
                    .await?;
                extents_from_descriptors(position, u64::from(request), &descriptors)
            };
            let result = with_timeout("block status", self.timeout, exchange).await;
            let batch = self.settle(result)?;
            // extents_from_descriptors never returns an empty list.
            position = batch.last().map_or(end, Extent::end);
            extents.extend(batch);
        }
        Ok(extents)
    }

    /// Ends the session politely with NBD_CMD_DISC, so the server does not
    /// log an abrupt disconnect; dropping a client just closes the socket.
    pub async fn disconnect(mut self) -> Result<(), NbdError> {
        if self.broken {
            return Ok(());
        }
        with_timeout("disconnect", self.timeout, self.session.disconnect()).await
    }
}
