//! Many objects per request, for replication between nodes:
//! `POST /{bucket}?haven-batch-get=` streams the objects a list of keys names,
//! `POST /{bucket}?haven-batch-put=` creates the objects of a stream that do not
//! exist yet. The wire format is `haven_node_protocol`'s.
//!
//! Every object keeps the ETag and content type it had at the source and is
//! checked against the CRC-32 the source node stored for it (combined from its
//! per-block CRCs at both ends, so neither node reads the bytes an extra time).
//! A batch write publishes each object exactly as a PUT with `If-None-Match: *`
//! does (fsynced file, rename, fsync of the directory, the bucket's default
//! retention), so a batch cut off at any point leaves only complete objects.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use haven_node_protocol::{Decoder, Event, ObjectInfo, ProtocolError, Record};
use hyper::StatusCode;
use s3s::{Body, S3Error, S3Response, S3Result, s3_error};

use crate::config::Config;
use crate::error::StoreError;
use crate::object_file::{BLOCK_SIZE, ObjectMeta, ObjectReader, ObjectWriter, Retention};
use crate::s3::body::{BodyError, BodySender, Feeder, body_error, channel};
use crate::s3::convert;
use crate::store::{Store, WriteCondition};

/// Objects up to this size are read and verified whole before their record is
/// sent, so a damaged one becomes a `Failed` record rather than a cut response.
const WHOLE_OBJECT_BYTES: u64 = 8 * BLOCK_SIZE;
/// Blocks read at a time from a larger object.
const BLOCKS_PER_READ: u64 = 4;
/// Response pieces waiting for the connection.
const RESPONSE_PIECES: usize = 8;
/// Objects of one batch write being made durable and published at once (the
/// next ones are received meanwhile).
const COMMITS_IN_FLIGHT: usize = 8;

/// Streams the records of `keys` in `bucket`.
pub async fn get(
    store: Arc<Store>,
    bucket: String,
    keys: Vec<String>,
) -> S3Result<S3Response<Body>> {
    // A missing bucket is an error of the request, not one record per key.
    store.bucket_config(&bucket).await?;
    let (sender, body) = channel(RESPONSE_PIECES);
    tokio::spawn(async move {
        for key in keys {
            if send_object(&store, &bucket, key, &sender).await.is_err() {
                return;
            }
        }
    });
    let mut response = S3Response::new(Body::from(body));
    response.status = Some(StatusCode::OK);
    response.headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/octet-stream"),
    );
    Ok(response)
}

/// The response was cut or its reader went away: stop sending.
struct Stopped;

async fn send(sender: &BodySender, piece: Result<Bytes, BodyError>) -> Result<(), Stopped> {
    let failed = piece.is_err();
    if sender.send(piece).await.is_err() || failed {
        return Err(Stopped);
    }
    Ok(())
}

async fn send_record(sender: &BodySender, record: &Record) -> Result<(), Stopped> {
    match record.encode() {
        Ok(header) => send(sender, Ok(header)).await,
        Err(error) => send(sender, Err(BodyError(error.to_string()))).await,
    }
}

/// Sends the record of one key, with its data if it is an object.
async fn send_object(
    store: &Arc<Store>,
    bucket: &str,
    key: String,
    sender: &BodySender,
) -> Result<(), Stopped> {
    let reader = match store.open_object(bucket, &key).await {
        Ok(reader) => Arc::new(reader),
        Err(StoreError::NoSuchKey) => return send_record(sender, &Record::Missing { key }).await,
        Err(error) => {
            let message = error.to_string();
            return send_record(sender, &Record::Failed { key, message }).await;
        }
    };
    let meta = &reader.meta;
    let info = ObjectInfo {
        size: meta.size,
        etag: meta.etag.clone(),
        content_type: meta.content_type.clone(),
        crc32: meta.whole_crc32(),
    };
    let blocks = meta.size.div_ceil(BLOCK_SIZE);
    if info.size <= WHOLE_OBJECT_BYTES {
        let data = match read_blocks(store, &reader, 0, blocks).await {
            Ok(data) => data,
            Err(error) => {
                let message = error.to_string();
                return send_record(sender, &Record::Failed { key, message }).await;
            }
        };
        send_record(sender, &Record::Object { key, info }).await?;
        for block in data {
            send(sender, Ok(block)).await?;
        }
        return Ok(());
    }
    send_record(sender, &Record::Object { key, info }).await?;
    let mut next = 0;
    while next < blocks {
        let end = blocks.min(next + BLOCKS_PER_READ);
        match read_blocks(store, &reader, next, end).await {
            Ok(data) => {
                for block in data {
                    send(sender, Ok(block)).await?;
                }
            }
            Err(error) => {
                tracing::error!(%error, "object failed verification while streaming a batch; cutting the response");
                return send(sender, Err(BodyError(error.to_string()))).await;
            }
        }
        next = end;
    }
    Ok(())
}

/// Reads and verifies blocks `first..end` of an object.
async fn read_blocks(
    store: &Store,
    reader: &Arc<ObjectReader>,
    first: u64,
    end: u64,
) -> Result<Vec<Bytes>, StoreError> {
    let reader = Arc::clone(reader);
    let read = tokio::task::spawn_blocking(move || {
        (first..end)
            .map(|index| reader.read_block(index).map(Bytes::from))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
    read.map_err(|error| store.note(error.into()))
}

/// Creates the objects of a batch stream that do not exist yet; answers one
/// line per object, `1` created or `0` already there.
pub async fn put(
    store: &Arc<Store>,
    config: &Config,
    bucket: &str,
    body: &mut Body,
) -> S3Result<S3Response<Body>> {
    let bucket_config = store.bucket_config(bucket).await?;
    let (retention, legal_hold) = convert::new_object_retention(&bucket_config, None, None, None)?;
    let max_objects = config.limits.max_batch_objects;
    let max_size = config.limits.max_object_size;
    let mut decoder = Decoder::new();
    let mut current: Option<(String, ObjectInfo, Feeder<ObjectWriter>)> = None;
    let mut commits = VecDeque::new();
    let mut created = Vec::new();
    let mut objects = 0usize;
    loop {
        while let Some(event) = decoder.next_event().map_err(protocol_error)? {
            match event {
                Event::Record(Record::Object { key, info }) => {
                    objects += 1;
                    if objects > max_objects {
                        return Err(s3_error!(
                            InvalidRequest,
                            "at most {max_objects} objects per batch"
                        ));
                    }
                    if info.size > max_size {
                        return Err(s3_error!(
                            EntityTooLarge,
                            "{key}: object is larger than {max_size} bytes"
                        ));
                    }
                    store.object_path(bucket, &key)?;
                    let writer = store.new_writer(bucket, &key)?;
                    current = Some((key, info, Feeder::new(writer)));
                }
                Event::Record(other) => {
                    return Err(s3_error!(
                        InvalidRequest,
                        "a batch write carries objects only; {:?} is not one",
                        other.key()
                    ));
                }
                Event::Data(piece) => match &mut current {
                    Some((_, _, feeder)) => feeder.push(piece).await?,
                    None => return Err(s3_error!(InternalError, "batch data outside an object")),
                },
                Event::ObjectEnd => {
                    let Some((key, info, feeder)) = current.take() else {
                        return Err(s3_error!(InternalError, "batch object ended twice"));
                    };
                    let writer = feeder.finish().await?;
                    if commits.len() >= COMMITS_IN_FLIGHT
                        && let Some(oldest) = commits.pop_front()
                    {
                        created.push(joined(oldest).await?);
                    }
                    let pending = Pending {
                        store: Arc::clone(store),
                        bucket: bucket.to_owned(),
                        key,
                        info,
                        retention: retention.clone(),
                        legal_hold,
                    };
                    commits.push_back(tokio::spawn(pending.commit(writer)));
                }
            }
        }
        match body.next().await {
            Some(piece) => decoder.push(piece.map_err(body_error)?),
            None => break,
        }
    }
    decoder.finish().map_err(protocol_error)?;
    for task in commits {
        created.push(joined(task).await?);
    }
    Ok(super::yes_no_lines(created.into_iter()))
}

async fn joined(task: tokio::task::JoinHandle<S3Result<bool>>) -> S3Result<bool> {
    task.await.map_err(S3Error::internal_error)?
}

fn protocol_error(error: ProtocolError) -> S3Error {
    match error {
        ProtocolError::Truncated => s3_error!(IncompleteBody, "batch ended inside an object"),
        other => s3_error!(InvalidRequest, "batch: {other}"),
    }
}

/// An object of a batch write whose bytes are all in its temporary file.
struct Pending {
    store: Arc<Store>,
    bucket: String,
    key: String,
    info: ObjectInfo,
    retention: Option<Retention>,
    legal_hold: bool,
}

impl Pending {
    /// Makes the file durable, checks it against the sender's CRC-32 and
    /// publishes it unless the key exists; whether it was created.
    async fn commit(self, writer: ObjectWriter) -> S3Result<bool> {
        let meta = ObjectMeta {
            etag: self.info.etag,
            last_modified_ns: time::OffsetDateTime::now_utc().unix_timestamp_nanos(),
            content_type: self.info.content_type,
            retention: self.retention,
            legal_hold: self.legal_hold,
            ..Default::default()
        };
        let (temp, meta) = tokio::task::spawn_blocking(move || writer.finish(meta))
            .await
            .map_err(S3Error::internal_error)?
            .map_err(StoreError::from)?;
        if meta.size != self.info.size || meta.whole_crc32() != self.info.crc32 {
            let _ = std::fs::remove_file(&temp);
            return Err(s3_error!(
                BadDigest,
                "{}: the bytes received do not match their CRC-32",
                self.key
            ));
        }
        let condition = WriteCondition {
            if_none_match_any: true,
            ..Default::default()
        };
        match self
            .store
            .commit(&self.bucket, &self.key, temp, &condition)
            .await
        {
            Ok(()) => Ok(true),
            Err(StoreError::PreconditionFailed(_)) => Ok(false),
            Err(error) => Err(error.into()),
        }
    }
}
