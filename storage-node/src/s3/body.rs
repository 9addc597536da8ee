//! Moving object bytes between HTTP bodies and object files without blocking
//! the async runtime: hashing and file I/O run on blocking threads.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use s3s::dto::StreamingBlob;
use s3s::{S3Error, S3ErrorCode, s3_error};

use crate::error::StoreError;
use crate::object_file::{BLOCK_SIZE, ObjectReader, ObjectWriter};
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

impl Sink {
    fn absorb(&mut self, data: &[u8]) -> Result<(), StoreError> {
        self.md5.update(data);
        self.checksum.update(data);
        self.writer.write(data)?;
        Ok(())
    }
}

/// Streams a request body into `sink`, refusing more than `max_size` bytes.
///
/// Received chunks are handed to a blocking thread a block's worth at a
/// time without copying them (`Bytes` are reference counted); the next
/// block is received while the previous one is hashed and written.
pub async fn receive(body: StreamingBlob, sink: Sink, max_size: u64) -> Result<Sink, S3Error> {
    let mut body = body;
    let mut batch: Vec<Bytes> = Vec::new();
    let mut batch_len = 0usize;
    let mut total: u64 = 0;
    let mut in_progress: Option<tokio::task::JoinHandle<Result<Sink, StoreError>>> = None;
    let mut idle = Some(sink);
    loop {
        let next = body.next().await;
        let done = next.is_none();
        if let Some(chunk) = next {
            let chunk = chunk.map_err(body_error)?;
            total += chunk.len() as u64;
            if total > max_size {
                return Err(s3_error!(
                    EntityTooLarge,
                    "object is larger than {max_size} bytes"
                ));
            }
            batch_len += chunk.len();
            batch.push(chunk);
        }
        if batch_len < BLOCK_SIZE as usize && !done {
            continue;
        }
        // At most one batch in flight: wait for the previous one, then hand
        // this one over and go on receiving.
        if let Some(task) = in_progress.take() {
            idle = Some(joined(task).await?);
        }
        let Some(mut sink) = idle.take() else {
            return Err(s3_error!(InternalError, "body sink lost"));
        };
        let chunks = std::mem::take(&mut batch);
        batch_len = 0;
        in_progress = Some(tokio::task::spawn_blocking(move || {
            for chunk in &chunks {
                sink.absorb(chunk)?;
            }
            Ok(sink)
        }));
        if done {
            break;
        }
    }
    match in_progress {
        Some(task) => joined(task).await,
        None => idle.ok_or_else(|| s3_error!(InternalError, "body sink lost")),
    }
}

async fn joined(task: tokio::task::JoinHandle<Result<Sink, StoreError>>) -> Result<Sink, S3Error> {
    task.await
        .map_err(S3Error::internal_error)?
        .map_err(S3Error::from)
}

/// Maps a failure of the request body (client went away, aws-chunked
/// signature mismatch, payload hash mismatch) to an S3 error.
fn body_error(error: s3s::StdError) -> S3Error {
    match error.downcast::<S3Error>() {
        Ok(s3) => *s3,
        Err(other) => {
            tracing::debug!(error = %other, "request body failed");
            S3Error::with_message(
                S3ErrorCode::IncompleteBody,
                "request body ended early or was invalid",
            )
        }
    }
}

/// Error of a response body after headers were sent: the connection is cut,
/// so the client sees a short body rather than corrupt data.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(String);

/// A response body fed by a background reader through a bounded channel.
struct ChannelStream(tokio::sync::mpsc::Receiver<Result<Bytes, BodyError>>);

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
    let reader = Arc::new(reader);
    let head_reader = Arc::clone(&reader);
    let head = tokio::task::spawn_blocking(move || head_reader.read_range(start, head_end))
        .await
        .map_err(S3Error::internal_error)?
        .map_err(|e| store.note(e.into()))?;
    let (sender, receiver) = tokio::sync::mpsc::channel(2);
    let _ = sender.try_send(Ok(Bytes::from(head)));
    if head_end < end {
        tokio::spawn(stream_rest(store, reader, head_end, end, sender));
    }
    Ok(StreamingBlob::wrap(ChannelStream(receiver)))
}

async fn stream_rest(
    store: Arc<Store>,
    reader: Arc<ObjectReader>,
    mut offset: u64,
    end: u64,
    sender: tokio::sync::mpsc::Sender<Result<Bytes, BodyError>>,
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
