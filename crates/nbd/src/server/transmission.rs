//! Server side of the transmission phase: requests in, replies out, concurrently and
//! within the per-client bounds.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{Mutex, Semaphore, watch};
use tokio::task::JoinSet;

use super::handshake::Negotiated;
use super::wire::*;
use super::{ExportSource, ServerConfig};
use crate::error::NbdError;

/// Replies are written whole under this lock, so concurrent requests never interleave.
struct ReplyWriter<W> {
    writer: Mutex<W>,
    config: Arc<ServerConfig>,
}

impl<W: AsyncWrite + Unpin> ReplyWriter<W> {
    async fn send(&self, parts: &[&[u8]]) -> Result<(), NbdError> {
        let mut writer = self.writer.lock().await;
        let write = async {
            for part in parts {
                writer.write_all(part).await?;
            }
            writer.flush().await
        };
        match tokio::time::timeout(self.config.reply_timeout, write).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(NbdError::Timeout {
                operation: "reply",
                after: self.config.reply_timeout,
            }),
        }
    }

    /// Sends a reply without data: success or an error value with a message.
    async fn status(
        &self,
        negotiated: Negotiated,
        cookie: u64,
        errno: u32,
        message: &str,
    ) -> Result<(), NbdError> {
        if !negotiated.structured {
            return self.send(&[&simple_reply(errno, cookie)]).await;
        }
        if errno == 0 {
            let header = chunk_header(REPLY_FLAG_DONE, CHUNK_NONE, cookie, 0);
            return self.send(&[&header]).await;
        }
        self.send(&[&error_chunk(cookie, errno, message)]).await
    }
}

/// Serves requests until the client disconnects, breaks framing or shutdown is asked.
pub(crate) async fn serve<T, S>(
    mut reader: ReadHalf<T>,
    writer: WriteHalf<T>,
    source: Arc<S>,
    config: Arc<ServerConfig>,
    negotiated: Negotiated,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), NbdError>
where
    T: AsyncRead + AsyncWrite + Send + 'static,
    S: ExportSource,
{
    let replies = Arc::new(ReplyWriter {
        writer: Mutex::new(writer),
        config: config.clone(),
    });
    let requests = Arc::new(Semaphore::new(config.max_requests_per_client.max(1)));
    // Budget in KiB so the largest request (32 MiB) fits a u32 permit count easily.
    let budget_kib = (config.max_bytes_per_client.max(MAX_REQUEST) / 1024) as usize;
    let budget = Arc::new(Semaphore::new(budget_kib));
    let mut tasks: JoinSet<Result<(), NbdError>> = JoinSet::new();

    let outcome = loop {
        // Reap finished requests; a failed reply write means the client is gone.
        let mut failed = None;
        while let Some(done) = tasks.try_join_next() {
            if let Ok(Err(error)) = done {
                failed = Some(error);
            }
        }
        if let Some(error) = failed {
            break Err(error);
        }
        let mut header = [0u8; REQUEST_HEADER_LEN];
        let read = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break Ok(()),
            read = reader.read_exact(&mut header) => read,
        };
        match read {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => break Ok(()),
            Err(error) => break Err(NbdError::Io(error)),
        }
        let request = match decode_request(&header) {
            Ok(request) => request,
            Err(error) => break Err(error),
        };
        let RequestHeader {
            flags,
            command,
            cookie,
            offset,
            length,
        } = request;
        match command {
            CMD_READ => {
                if let Some(message) = check_range(&*source, offset, length) {
                    replies.status(negotiated, cookie, EINVAL, &message).await?;
                    continue;
                }
                let Ok(request_permit) = requests.clone().acquire_owned().await else {
                    break Ok(());
                };
                let kib = length.div_ceil(1024).max(1);
                let Ok(byte_permit) = budget.clone().acquire_many_owned(kib).await else {
                    break Ok(());
                };
                let source = source.clone();
                let replies = replies.clone();
                tasks.spawn(async move {
                    let _permits = (request_permit, byte_permit);
                    read_reply(&*source, &replies, negotiated, cookie, offset, length).await
                });
            }
            CMD_WRITE => {
                if length > MAX_REQUEST {
                    break Err(NbdError::Protocol(format!(
                        "write of {length} bytes exceeds the {MAX_REQUEST} byte limit"
                    )));
                }
                // Read-only: discard the payload to stay in step, then refuse.
                let mut payload = (&mut reader).take(u64::from(length));
                let discarded = tokio::io::copy(&mut payload, &mut tokio::io::sink()).await?;
                if discarded != u64::from(length) {
                    break Err(NbdError::Closed);
                }
                replies
                    .status(negotiated, cookie, EPERM, "the export is read-only")
                    .await?;
            }
            CMD_TRIM | CMD_WRITE_ZEROES => {
                replies
                    .status(negotiated, cookie, EPERM, "the export is read-only")
                    .await?;
            }
            CMD_FLUSH | CMD_CACHE => {
                replies.status(negotiated, cookie, 0, "").await?;
            }
            CMD_DISC => break Ok(()),
            CMD_BLOCK_STATUS => {
                if !negotiated.structured || !negotiated.base_allocation {
                    replies
                        .status(negotiated, cookie, EINVAL, "no meta context was negotiated")
                        .await?;
                    continue;
                }
                // Unlike a read, a status query carries no payload: its length is not
                // bounded by the maximum request size (qemu-img asks about whole disks),
                // only by the export. The reply may cover less than was asked.
                if let Some(message) = check_status_range(&*source, offset, length) {
                    replies.status(negotiated, cookie, EINVAL, &message).await?;
                    continue;
                }
                let reply = block_status_reply(&*source, cookie, offset, length, flags);
                replies.send(&[&reply]).await?;
            }
            other => {
                let message = format!("command {other} is not supported");
                replies.status(negotiated, cookie, EINVAL, &message).await?;
            }
        }
    };
    // Let requests already accepted finish (bounded by the reply timeout each).
    while let Some(done) = tasks.join_next().await {
        if let Ok(Err(error)) = done {
            tracing::debug!(%error, "nbd server: reply failed");
        }
    }
    let _ = replies.writer.lock().await.shutdown().await;
    outcome
}

struct RequestHeader {
    flags: u16,
    command: u16,
    cookie: u64,
    offset: u64,
    length: u32,
}

fn decode_request(bytes: &[u8; REQUEST_HEADER_LEN]) -> Result<RequestHeader, NbdError> {
    let mut reader = Reader::new(bytes, "request header");
    let magic = reader.u32()?;
    if magic != REQUEST_MAGIC {
        return Err(NbdError::Protocol(format!("bad request magic {magic:#x}")));
    }
    Ok(RequestHeader {
        flags: reader.u16()?,
        command: reader.u16()?,
        cookie: reader.u64()?,
        offset: reader.u64()?,
        length: reader.u32()?,
    })
}

/// Why a READ or BLOCK_STATUS range is refused, if it is.
fn check_range<S: ExportSource>(source: &S, offset: u64, length: u32) -> Option<String> {
    if length == 0 {
        return Some("zero-length request".into());
    }
    if length > MAX_REQUEST {
        return Some(format!(
            "request of {length} bytes exceeds the {MAX_REQUEST} byte limit"
        ));
    }
    let size = source.size();
    match offset.checked_add(u64::from(length)) {
        Some(end) if end <= size => None,
        _ => Some(format!(
            "request [{offset}, +{length}) goes past the export size {size}"
        )),
    }
}

/// Why a BLOCK_STATUS range is refused, if it is.
fn check_status_range<S: ExportSource>(source: &S, offset: u64, length: u32) -> Option<String> {
    if length == 0 {
        return Some("zero-length request".into());
    }
    let size = source.size();
    match offset.checked_add(u64::from(length)) {
        Some(end) if end <= size => None,
        _ => Some(format!(
            "request [{offset}, +{length}) goes past the export size {size}"
        )),
    }
}

async fn read_reply<S: ExportSource, W: AsyncWrite + Unpin>(
    source: &S,
    replies: &ReplyWriter<W>,
    negotiated: Negotiated,
    cookie: u64,
    offset: u64,
    length: u32,
) -> Result<(), NbdError> {
    let mut data = vec![0u8; length as usize];
    if let Err(error) = source.read(offset, &mut data).await {
        tracing::warn!(%error, offset, length, "nbd server: read failed");
        return replies
            .status(negotiated, cookie, EIO, &error.to_string())
            .await;
    }
    if negotiated.structured {
        let header = chunk_header(REPLY_FLAG_DONE, CHUNK_OFFSET_DATA, cookie, 8 + length);
        replies.send(&[&header, &offset.to_be_bytes(), &data]).await
    } else {
        replies.send(&[&simple_reply(0, cookie), &data]).await
    }
}

/// One `NBD_REPLY_TYPE_BLOCK_STATUS` chunk for `base:allocation`.
fn block_status_reply<S: ExportSource>(
    source: &S,
    cookie: u64,
    offset: u64,
    length: u32,
    flags: u16,
) -> Vec<u8> {
    let mut runs = source.allocation(offset, length);
    if runs.is_empty() {
        runs.push((length, 0));
    }
    let limit = if flags & CMD_FLAG_REQ_ONE != 0 {
        1
    } else {
        MAX_DESCRIPTORS
    };
    let mut descriptors = Vec::with_capacity(runs.len().min(limit));
    let mut covered: u64 = 0;
    for (run_length, run_flags) in runs {
        if descriptors.len() == limit || covered >= u64::from(length) {
            break;
        }
        let run_length = u64::from(run_length).min(u64::from(length) - covered);
        if run_length == 0 {
            continue;
        }
        // Bounded by `length`, a u32.
        descriptors.push((run_length as u32, run_flags));
        covered += run_length;
    }
    if descriptors.is_empty() {
        descriptors.push((length, 0));
    }
    let payload_length = 4 + 8 * descriptors.len() as u32;
    let mut out = Vec::with_capacity(CHUNK_HEADER_LEN + payload_length as usize);
    out.extend_from_slice(&chunk_header(
        REPLY_FLAG_DONE,
        CHUNK_BLOCK_STATUS,
        cookie,
        payload_length,
    ));
    out.extend_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
    for (run_length, run_flags) in descriptors {
        out.extend_from_slice(&run_length.to_be_bytes());
        out.extend_from_slice(&run_flags.to_be_bytes());
    }
    out
}
