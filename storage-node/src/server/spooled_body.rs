//! Request bodies sent with `Transfer-Encoding: chunked` and no length.
//!
//! SigV4 checks a signed payload hash over exactly the announced number of
//! bytes, and s3s (like MinIO) refuses an unsigned payload without a length, so a
//! client streaming from a pipe (`curl -T -` with a presigned URL, SDKs given a
//! body of unknown length) could not upload at all. Such a body is first written
//! to a file in the store's `tmp/` (unlinked at once, so nothing outlives the
//! request), then handed on with its now known length, as if the client had sent
//! `Content-Length`. `aws-chunked` bodies carry their own length
//! (`x-amz-decoded-content-length`) and stream through unchanged.

use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use http_body_util::BodyExt;
use hyper::Request;
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, HeaderValue, TRANSFER_ENCODING};
use s3s::stream::{ByteStream, RemainingLength};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

/// Bytes read from the spool file per piece of the body handed on.
const READ_PIECE: usize = 1024 * 1024;

/// Why a chunked body could not be spooled.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The body is larger than any request may be.
    #[error("request body is larger than {0} bytes")]
    TooLarge(u64),
    /// The client stopped sending, or sent malformed chunks.
    #[error("request body ended early: {0}")]
    Incomplete(hyper::Error),
    /// The spool file could not be written or read.
    #[error("cannot spool the request body: {0}")]
    Io(#[from] std::io::Error),
}

/// Whether `req` has a chunked body of unknown length that is not `aws-chunked`.
pub fn needs_spooling<B>(req: &Request<B>) -> bool {
    let headers = req.headers();
    !headers.contains_key(CONTENT_LENGTH)
        && !headers.contains_key("x-amz-decoded-content-length")
        && headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.contains("chunked")))
}

/// Reads the body of `req` into the file `path` (at most `max` bytes) and
/// returns the request with that body and a `Content-Length`.
pub async fn spool(
    req: Request<Incoming>,
    path: PathBuf,
    max: u64,
) -> Result<Request<s3s::Body>, SpoolError> {
    let (mut parts, mut body) = req.into_parts();
    let mut file = tokio::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .await?;
    // The open file stays readable; no name is left behind whatever happens.
    tokio::fs::remove_file(&path).await?;
    let mut length: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(SpoolError::Incomplete)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        length += data.len() as u64;
        if length > max {
            return Err(SpoolError::TooLarge(max));
        }
        file.write_all(&data).await?;
    }
    file.flush().await?;
    file.seek(std::io::SeekFrom::Start(0)).await?;
    parts
        .headers
        .insert(CONTENT_LENGTH, HeaderValue::from(length));
    let stream = SpooledStream {
        file: Some(file.into_std().await),
        remaining: length,
        pending: None,
    };
    let body: s3s::stream::DynByteStream = Box::pin(stream);
    Ok(Request::from_parts(parts, s3s::Body::from(body)))
}

/// The spool file and the piece just read from it.
type ReadPiece = (std::fs::File, Vec<u8>);

/// The spooled bytes, read back in pieces on a blocking thread, with an exact
/// length.
struct SpooledStream {
    file: Option<std::fs::File>,
    remaining: u64,
    pending: Option<tokio::task::JoinHandle<std::io::Result<ReadPiece>>>,
}

fn read_piece(mut file: std::fs::File, want: usize) -> std::io::Result<ReadPiece> {
    use std::io::Read;
    let mut buffer = vec![0; want];
    file.read_exact(&mut buffer)?;
    Ok((file, buffer))
}

impl Stream for SpooledStream {
    type Item = Result<Bytes, s3s::StdError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.pending.is_none() {
            if self.remaining == 0 {
                return Poll::Ready(None);
            }
            let Some(file) = self.file.take() else {
                return Poll::Ready(None);
            };
            let want = usize::try_from(self.remaining.min(READ_PIECE as u64)).unwrap_or(READ_PIECE);
            self.pending = Some(tokio::task::spawn_blocking(move || read_piece(file, want)));
        }
        let Some(pending) = self.pending.as_mut() else {
            return Poll::Ready(None);
        };
        let result = match Pin::new(pending).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(joined) => joined.map_err(std::io::Error::other).and_then(|r| r),
        };
        self.pending = None;
        match result {
            Ok((file, piece)) => {
                self.remaining -= piece.len() as u64;
                self.file = Some(file);
                Poll::Ready(Some(Ok(Bytes::from(piece))))
            }
            Err(error) => {
                self.remaining = 0;
                Poll::Ready(Some(Err(Box::new(error))))
            }
        }
    }
}

impl ByteStream for SpooledStream {
    fn remaining_length(&self) -> RemainingLength {
        RemainingLength::new_exact(usize::try_from(self.remaining).unwrap_or(usize::MAX))
    }
}
