//! Moving object bytes between HTTP bodies and object files without blocking
//! the async runtime: hashing and file I/O run on blocking threads.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use s3s::dto::{Checksum, ChecksumAlgorithm, StreamingBlob};
use s3s::{S3Error, S3ErrorCode, TrailingHeaders, s3_error};

use super::checksums::{self, Algorithm};
use super::convert;
use crate::error::StoreError;
use crate::object_file::{BLOCK_SIZE, ObjectMeta, ObjectReader, ObjectWriter};
use crate::store::Store;

/// Reads that are verified before the response starts (so corruption there
/// becomes a clean S3 error); later blocks are verified as they stream.
const PREFETCH_BYTES: u64 = 64 * 1024 * 1024;

/// An object writer together with the digests computed over its bytes.
pub struct Sink {
    /// The temporary object file.
    pub writer: ObjectWriter,
    /// MD5 for the ETag and Content-MD5.
    pub md5: crate::md5::Md5,
    /// The x-amz-checksum-* algorithms the client asked for.
    pub checksum: s3s::checksum::ChecksumHasher,
}

/// Something object bytes are poured into on a blocking thread.
pub trait Absorb: Send + 'static {
    /// Takes the next bytes of the object.
    fn absorb(&mut self, data: &[u8]) -> Result<(), StoreError>;
}

impl Absorb for Sink {
    fn absorb(&mut self, data: &[u8]) -> Result<(), StoreError> {
        self.md5.update(data);
        self.checksum.update(data);
        self.writer.write(data)?;
        Ok(())
    }
}

impl Absorb for ObjectWriter {
    fn absorb(&mut self, data: &[u8]) -> Result<(), StoreError> {
        self.write(data)?;
        Ok(())
    }
}

/// Hands received pieces of an object to a blocking thread a block's worth at
/// a time, without copying them (`Bytes` are reference counted): the next
/// block is received while the previous one is hashed and written. At most one
/// block is in flight.
pub struct Feeder<A: Absorb> {
    batch: Vec<Bytes>,
    batch_len: usize,
    in_progress: Option<tokio::task::JoinHandle<Result<A, StoreError>>>,
    idle: Option<A>,
}

impl<A: Absorb> Feeder<A> {
    /// Starts feeding `sink`.
    pub fn new(sink: A) -> Self {
        Self {
            batch: Vec::new(),
            batch_len: 0,
            in_progress: None,
            idle: Some(sink),
        }
    }

    /// Adds a piece; a full block goes to the blocking thread.
    pub async fn push(&mut self, piece: Bytes) -> Result<(), S3Error> {
        self.batch_len += piece.len();
        self.batch.push(piece);
        if self.batch_len >= BLOCK_SIZE as usize {
            self.hand_over().await?;
        }
        Ok(())
    }

    /// Hands over what is left and returns the sink once everything is absorbed.
    pub async fn finish(self) -> Result<A, S3Error> {
        self.finish_with(Ok).await
    }

    /// Hands over what is left and runs `last` on the sink on the same
    /// blocking thread, once everything is absorbed (one thread hop less).
    pub async fn finish_with<T: Send + 'static>(
        mut self,
        last: impl FnOnce(A) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, S3Error> {
        if let Some(task) = self.in_progress.take() {
            self.idle = Some(joined(task).await?);
        }
        let Some(mut sink) = self.idle.take() else {
            return Err(s3_error!(InternalError, "body sink lost"));
        };
        let pieces = std::mem::take(&mut self.batch);
        joined(tokio::task::spawn_blocking(move || {
            for piece in &pieces {
                sink.absorb(piece)?;
            }
            last(sink)
        }))
        .await
    }

    async fn hand_over(&mut self) -> Result<(), S3Error> {
        if let Some(task) = self.in_progress.take() {
            self.idle = Some(joined(task).await?);
        }
        let Some(mut sink) = self.idle.take() else {
            return Err(s3_error!(InternalError, "body sink lost"));
        };
        let pieces = std::mem::take(&mut self.batch);
        self.batch_len = 0;
        self.in_progress = Some(tokio::task::spawn_blocking(move || {
            for piece in &pieces {
                sink.absorb(piece)?;
            }
            Ok(sink)
        }));
        Ok(())
    }
}

/// Streams a request body into `sink`, refusing more than `max_size` bytes.
pub async fn receive(body: StreamingBlob, sink: Sink, max_size: u64) -> Result<Sink, S3Error> {
    let mut body = body;
    let mut feeder = Feeder::new(sink);
    let mut total: u64 = 0;
    while let Some(piece) = body.next().await {
        let piece = piece.map_err(body_error)?;
        total += piece.len() as u64;
        if total > max_size {
            return Err(s3_error!(
                EntityTooLarge,
                "object is larger than {max_size} bytes"
            ));
        }
        feeder.push(piece).await?;
    }
    feeder.finish().await
}

/// A request body as PUT object or upload part gets it (built by
/// [`incoming_body!`](super::fields::incoming_body)), with what the client
/// declared about its bytes.
pub struct IncomingBody<'a> {
    /// The body; a request without one is refused.
    pub body: Option<StreamingBlob>,
    /// The `x-amz-checksum-*` values sent as headers.
    pub declared: Checksum,
    /// The checksum the client asks for without sending its value.
    pub algorithm: Option<&'a ChecksumAlgorithm>,
    /// Content-MD5.
    pub content_md5: Option<&'a str>,
    /// Trailers (aws-chunked bodies), which may carry the checksums.
    pub trailers: Option<TrailingHeaders>,
    /// The trailers the request announces (`x-amz-trailer`).
    pub announced_trailer: Option<String>,
    /// The algorithm every part of a multipart upload is checked with.
    pub required: Option<Algorithm>,
    /// The algorithm computed and kept when the client asks for none (PutObject:
    /// CRC-64/NVME, as AWS adds to every new object since 2025).
    pub default_algorithm: Option<Algorithm>,
}

/// A body in a temporary object file whose every declared digest matched.
pub struct CheckedBody {
    /// The temporary object file, still to be finished with its metadata.
    pub writer: ObjectWriter,
    /// The checksums computed over the bytes, to announce in the response.
    pub checksum: Checksum,
    /// What every stored body's metadata starts from: the ETag (MD5), the
    /// time of arrival and the checksums.
    pub meta: ObjectMeta,
}

/// Receives a body into the writer `new_writer` creates, at most `max_size`
/// bytes, and checks it against Content-MD5 and every declared checksum:
/// the one path of object bytes into the store for PUT object and upload part.
pub async fn receive_checked(
    incoming: IncomingBody<'_>,
    new_writer: impl FnOnce() -> Result<ObjectWriter, StoreError>,
    max_size: u64,
) -> Result<CheckedBody, S3Error> {
    let IncomingBody {
        body,
        mut declared,
        algorithm,
        content_md5,
        trailers,
        announced_trailer,
        required,
        default_algorithm,
    } = incoming;
    checksums::check_declared(&declared)?;
    let mut hasher =
        convert::checksum_hasher(&declared, algorithm, announced_trailer.as_deref(), required)?;
    let none_asked = hasher.crc32.is_none()
        && hasher.crc32c.is_none()
        && hasher.crc64nvme.is_none()
        && hasher.sha1.is_none()
        && hasher.sha256.is_none();
    if let Some(default) = default_algorithm.filter(|_| none_asked) {
        default.enable(&mut hasher);
    }
    let body = body.ok_or_else(|| s3_error!(IncompleteBody, "request has no body"))?;
    let sink = Sink {
        writer: new_writer()?,
        md5: crate::md5::Md5::new(),
        checksum: hasher,
    };
    let sink = receive(body, sink, max_size).await?;
    let md5 = sink.md5.finalize();
    convert::check_content_md5(content_md5, &md5)?;
    convert::merge_trailers(&mut declared, trailers)?;
    checksums::check_declared(&declared)?;
    let checksum = sink.checksum.finalize();
    convert::verify_checksums(&declared, &checksum)?;
    let meta = ObjectMeta {
        etag: hex::encode(md5),
        last_modified_ns: time::OffsetDateTime::now_utc().unix_timestamp_nanos(),
        checksums: convert::checksum_map(&checksum),
        ..Default::default()
    };
    Ok(CheckedBody {
        writer: sink.writer,
        checksum,
        meta,
    })
}

/// Seals a received body with its metadata on a blocking thread; returns the
/// temporary file to commit and the metadata as written.
pub async fn finish(
    writer: ObjectWriter,
    meta: ObjectMeta,
) -> Result<(std::path::PathBuf, ObjectMeta), S3Error> {
    let finished = tokio::task::spawn_blocking(move || writer.finish(meta))
        .await
        .map_err(S3Error::internal_error)?
        .map_err(StoreError::from)?;
    Ok(finished)
}

async fn joined<A>(task: tokio::task::JoinHandle<Result<A, StoreError>>) -> Result<A, S3Error> {
    task.await
        .map_err(S3Error::internal_error)?
        .map_err(S3Error::from)
}

/// Maps a failure of the request body (client went away, aws-chunked
/// signature mismatch, payload hash mismatch) to an S3 error.
///
/// s3s's body checks (`aws-chunked` chunk signatures, the signed payload hash)
/// fail with error types it does not export, so they are told apart by their
/// text (s3s is pinned to one version; `s3_api/streaming.py` checks each
/// answer).
pub fn body_error(error: s3s::StdError) -> S3Error {
    match error.downcast::<S3Error>() {
        Ok(s3) => *s3,
        Err(other) => {
            tracing::debug!(error = %other, "request body failed");
            let text = other.to_string();
            if text.contains("AwsChunkedStreamError: SignatureMismatch") {
                S3Error::with_message(
                    S3ErrorCode::SignatureDoesNotMatch,
                    "a chunk signature of the aws-chunked body does not match",
                )
            } else if text.contains("AwsChunkedStreamError: FormatError")
                || text.contains("AwsChunkedStreamError: ChunkMetaTooLarge")
                || text.contains("AwsChunkedStreamError: Trailers")
                || text.contains("AwsChunkedStreamError: TooManyTrailerHeaders")
            {
                S3Error::with_message(S3ErrorCode::InvalidRequest, "malformed aws-chunked body")
            } else if text.contains("UploadStreamError: Sha256Mismatch") {
                crate::error::custom_error(
                    "XAmzContentSHA256Mismatch",
                    http::StatusCode::BAD_REQUEST,
                    "the body does not match x-amz-content-sha256",
                )
            } else {
                S3Error::with_message(
                    S3ErrorCode::IncompleteBody,
                    "request body ended early or was invalid",
                )
            }
        }
    }
}

/// Error of a response body after headers were sent: the connection is cut,
/// so the client sees a short body rather than corrupt data.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(pub String);

/// A response body fed by a background reader through a bounded channel.
struct ChannelStream(tokio::sync::mpsc::Receiver<Result<Bytes, BodyError>>);

/// The sending half of a response body built by [`channel`]: an `Err` cuts
/// the response.
pub type BodySender = tokio::sync::mpsc::Sender<Result<Bytes, BodyError>>;

/// A response body that streams what is sent into the returned sender, with
/// at most `capacity` pieces waiting.
pub fn channel(capacity: usize) -> (BodySender, StreamingBlob) {
    let (sender, receiver) = tokio::sync::mpsc::channel(capacity);
    (sender, StreamingBlob::wrap(ChannelStream(receiver)))
}

impl Stream for ChannelStream {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// Builds the body for bytes `start..end` of an object: the first
/// [`PREFETCH_BYTES`] are read and verified now, the rest while streaming.
pub async fn send(
    store: Arc<Store>,
    reader: ObjectReader,
    start: u64,
    end: u64,
) -> Result<StreamingBlob, S3Error> {
    let head_end = end.min(start.saturating_add(PREFETCH_BYTES));
    if start == 0 && head_end == reader.meta.size {
        // A whole object (every backup chunk): straight from the device into
        // buffers that become the response, without the page cache.
        let blocks = head_end.div_ceil(BLOCK_SIZE);
        let data = tokio::task::spawn_blocking(move || reader.read_blocks_uncached(0, blocks))
            .await
            .map_err(S3Error::internal_error)?
            .map_err(|e| store.note(e.into()))?;
        return Ok(StreamingBlob::wrap(futures::stream::iter(
            data.into_iter().map(Ok::<_, BodyError>),
        )));
    }
    let reader = Arc::new(reader);
    let head_reader = Arc::clone(&reader);
    let head = tokio::task::spawn_blocking(move || head_reader.read_range(start, head_end))
        .await
        .map_err(S3Error::internal_error)?
        .map_err(|e| store.note(e.into()))?;
    let (sender, body) = channel(2);
    let _ = sender.try_send(Ok(Bytes::from(head)));
    if head_end < end {
        tokio::spawn(stream_rest(store, reader, head_end, end, sender));
    }
    Ok(body)
}

async fn stream_rest(
    store: Arc<Store>,
    reader: Arc<ObjectReader>,
    mut offset: u64,
    end: u64,
    sender: BodySender,
) {
    while offset < end {
        let piece_end = end.min((offset / BLOCK_SIZE + 4) * BLOCK_SIZE);
        let piece_reader = Arc::clone(&reader);
        let result =
            tokio::task::spawn_blocking(move || piece_reader.read_range(offset, piece_end)).await;
        let item = match result {
            Ok(Ok(bytes)) => Ok(Bytes::from(bytes)),
            Ok(Err(error)) => {
                let error = store.note(error.into());
                tracing::error!(%error, "object failed verification while streaming; cutting the response");
                Err(BodyError(error.to_string()))
            }
            Err(error) => Err(BodyError(error.to_string())),
        };
        let failed = item.is_err();
        if sender.send(item).await.is_err() || failed {
            return;
        }
        offset = piece_end;
    }
}
