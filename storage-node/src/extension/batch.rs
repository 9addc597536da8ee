//! Many objects per request, for replication between nodes:
//! `POST /{bucket}?haven-batch-get=` streams the objects a list of keys names,
//! `POST /{bucket}?haven-batch-put=` creates the objects of a stream that do not
//! exist yet ([`BatchWriter`], which the batch pull shares). The wire format
//! is `haven_node_protocol`'s.
//!
//! Every object keeps the ETag and content type it had at the source and is
//! checked against the CRC-32 the source node stored for it (combined from its
//! per-block CRCs at both ends, so neither node reads the bytes an extra time).
//! A batch write publishes each object exactly as a PUT with `If-None-Match: *`
//! does (fsynced file, rename, fsync of the directory, the bucket's default
//! retention), so a batch cut off at any point leaves only complete objects.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use haven_node_protocol::{Decoder, Event, ObjectInfo, ProtocolError, PullOutcome, Record};
use hyper::StatusCode;
use s3s::{Body, S3Error, S3Response, S3Result, s3_error};

use crate::config::Config;
use crate::error::StoreError;
use crate::object_file::{BLOCK_SIZE, ObjectMeta, ObjectReader, ObjectWriter};
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
/// Objects of one batch read being read from disk ahead of the one being sent
/// (the disk serves several reads at once; one at a time leaves it waiting).
const OBJECTS_AHEAD: usize = 4;
/// Objects of a batch write made durable together (see [`commit_group`]).
const GROUP_OBJECTS: usize = 16;
/// Groups being made durable while the next one is received.
const GROUPS_IN_FLIGHT: usize = 2;

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
        let bucket = bucket.as_str();
        let store = &store;
        let mut prepared = futures::stream::iter(keys)
            .map(|key| prepare(store, bucket, key))
            .buffered(OBJECTS_AHEAD);
        while let Some(object) = prepared.next().await {
            if send_prepared(store, object, &sender).await.is_err() {
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

/// One key's record, read ahead of its turn in the response.
enum Prepared {
    /// A record without data, or an object read and verified whole.
    Whole(Record, Vec<Bytes>),
    /// A large object, whose blocks are read as they are sent.
    Streamed(Record, Arc<ObjectReader>),
}

/// Reads the record of one key: the whole object if it is small.
async fn prepare(store: &Arc<Store>, bucket: &str, key: String) -> Prepared {
    let reader = match store.open_object_to_send(bucket, &key).await {
        Ok(reader) => Arc::new(reader),
        Err(StoreError::NoSuchKey) => return Prepared::Whole(Record::Missing { key }, Vec::new()),
        Err(error) => {
            let message = error.to_string();
            return Prepared::Whole(Record::Failed { key, message }, Vec::new());
        }
    };
    let meta = &reader.meta;
    let info = ObjectInfo {
        size: meta.size,
        etag: meta.etag.clone(),
        content_type: meta.content_type.clone(),
        crc32: meta.whole_crc32(),
    };
    if info.size > WHOLE_OBJECT_BYTES {
        return Prepared::Streamed(Record::Object { key, info }, reader);
    }
    match read_blocks(store, &reader, 0, info.size.div_ceil(BLOCK_SIZE)).await {
        Ok(data) => Prepared::Whole(Record::Object { key, info }, data),
        Err(error) => {
            let message = error.to_string();
            Prepared::Whole(Record::Failed { key, message }, Vec::new())
        }
    }
}

/// Sends a prepared record with its data.
async fn send_prepared(
    store: &Arc<Store>,
    object: Prepared,
    sender: &BodySender,
) -> Result<(), Stopped> {
    let (record, reader) = match object {
        Prepared::Whole(record, data) => {
            send_record(sender, &record).await?;
            for block in data {
                send(sender, Ok(block)).await?;
            }
            return Ok(());
        }
        Prepared::Streamed(record, reader) => (record, reader),
    };
    send_record(sender, &record).await?;
    let blocks = reader.meta.size.div_ceil(BLOCK_SIZE);
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
    let read = tokio::task::spawn_blocking(move || reader.read_blocks_uncached(first, end))
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
    read.map_err(|error| store.note(error.into()))
}

/// Creates the objects of a batch stream that do not exist yet; answers one
/// line per object, `1` created or `0` already there. With a `signed` payload
/// nothing is published before the whole body has matched its signed SHA-256,
/// which s3s can only tell at its end: a body changed on the way leaves nothing.
pub async fn put(
    store: &Arc<Store>,
    config: &Config,
    bucket: &str,
    body: &mut Body,
    signed: bool,
) -> S3Result<S3Response<Body>> {
    let mut writer = BatchWriter::new(store, config, bucket).await?;
    writer.publish_only_at_end = signed;
    let errors = |failure| match failure {
        StreamFailure::Read(error) => body_error(error),
        StreamFailure::Protocol(error) => protocol_error(error),
    };
    writer
        .write_stream(body, errors, |writer, record| match record {
            Record::Object { key, info } => writer.begin(key, info),
            other => Err(s3_error!(
                InvalidRequest,
                "a batch write carries objects only; {:?} is not one",
                other.key()
            )),
        })
        .await?;
    let created = writer.finish().await?;
    Ok(super::yes_no_lines(
        created
            .into_iter()
            .map(|outcome| outcome == PullOutcome::Created),
    ))
}

/// A group being committed: whether each of its objects (by its place among
/// the records) was created.
type Committing = tokio::task::JoinHandle<S3Result<Vec<(usize, bool)>>>;

/// Why a batch stream could not be read to its end.
pub(super) enum StreamFailure<E> {
    /// Its transport failed.
    Read(E),
    /// It is not a well-formed batch.
    Protocol(ProtocolError),
}

/// Writes the objects of one batch stream as they arrive: each into its own
/// temporary file, published in groups by [`commit_group`], never over an
/// existing key.
pub(super) struct BatchWriter<'a> {
    store: &'a Arc<Store>,
    bucket: &'a str,
    retention: Option<crate::object_file::Retention>,
    legal_hold: bool,
    max_objects: usize,
    max_size: u64,
    /// Publish every object only once the stream has ended well, instead of
    /// group by group as they arrive.
    pub(super) publish_only_at_end: bool,
    objects: usize,
    /// The object being received, with its place in `outcomes`.
    current: Option<(usize, String, ObjectInfo, Feeder<ObjectWriter>)>,
    group: Vec<Received>,
    groups: VecDeque<Committing>,
    /// One per record so far; objects get theirs when their group commits.
    outcomes: Vec<Option<PullOutcome>>,
}

impl<'a> BatchWriter<'a> {
    /// A writer into `bucket`, with the bucket's default retention and the
    /// limits of `config`.
    pub(super) async fn new(
        store: &'a Arc<Store>,
        config: &Config,
        bucket: &'a str,
    ) -> S3Result<Self> {
        let bucket_config = store.bucket_config(bucket).await?;
        let (retention, legal_hold) =
            convert::new_object_retention(&bucket_config, None, None, None)?;
        Ok(Self {
            store,
            bucket,
            retention,
            legal_hold,
            max_objects: config.limits.max_batch_objects,
            max_size: config.limits.max_object_size,
            publish_only_at_end: false,
            objects: 0,
            current: None,
            group: Vec::new(),
            groups: VecDeque::new(),
            outcomes: Vec::new(),
        })
    }

    /// Decodes `stream` to its end, passing each record to `on_record` (which
    /// calls [`BatchWriter::begin`] for an object to write, or
    /// [`BatchWriter::skip`]) and writing the data that follows.
    pub(super) async fn write_stream<S, E>(
        &mut self,
        stream: &mut S,
        failed: impl Fn(StreamFailure<E>) -> S3Error,
        mut on_record: impl FnMut(&mut Self, Record) -> S3Result<()>,
    ) -> S3Result<()>
    where
        S: futures::Stream<Item = Result<Bytes, E>> + Unpin,
    {
        let mut decoder = Decoder::new();
        let protocol = |error| failed(StreamFailure::Protocol(error));
        loop {
            while let Some(event) = decoder.next_event().map_err(protocol)? {
                match event {
                    Event::Record(record) => on_record(self, record)?,
                    Event::Data(piece) => match &mut self.current {
                        Some((.., feeder)) => feeder.push(piece).await?,
                        None => {
                            return Err(s3_error!(InternalError, "batch data outside an object"));
                        }
                    },
                    Event::ObjectEnd => self.end().await?,
                }
            }
            match stream.next().await {
                Some(piece) => decoder.push(piece.map_err(|e| failed(StreamFailure::Read(e)))?),
                None => break,
            }
        }
        decoder.finish().map_err(protocol)
    }

    /// Starts writing the object `key`.
    pub(super) fn begin(&mut self, key: String, info: ObjectInfo) -> S3Result<()> {
        self.objects += 1;
        if self.objects > self.max_objects {
            return Err(s3_error!(
                InvalidRequest,
                "at most {} objects per batch",
                self.max_objects
            ));
        }
        if info.size > self.max_size {
            return Err(s3_error!(
                EntityTooLarge,
                "{key}: object is larger than {} bytes",
                self.max_size
            ));
        }
        self.store.object_path(self.bucket, &key)?;
        let writer = self.store.new_writer(self.bucket, &key)?;
        self.outcomes.push(None);
        self.current = Some((self.outcomes.len() - 1, key, info, Feeder::new(writer)));
        Ok(())
    }

    /// Records the outcome of a record that carries no object to write.
    pub(super) fn skip(&mut self, outcome: PullOutcome) {
        self.outcomes.push(Some(outcome));
    }

    /// Ends the current object: seals its file and queues it for its group.
    async fn end(&mut self) -> S3Result<()> {
        let Some((index, key, info, feeder)) = self.current.take() else {
            return Err(s3_error!(InternalError, "batch object ended twice"));
        };
        let meta = ObjectMeta {
            etag: info.etag.clone(),
            last_modified_ns: time::OffsetDateTime::now_utc().unix_timestamp_nanos(),
            content_type: info.content_type.clone(),
            retention: self.retention.clone(),
            legal_hold: self.legal_hold,
            ..Default::default()
        };
        let sealing = tokio::spawn(feeder.finish_with(move |mut writer| {
            let meta = writer.seal(meta)?;
            Ok((writer, meta))
        }));
        self.group.push(Received {
            index,
            key,
            info,
            sealing,
        });
        if self.group.len() == GROUP_OBJECTS && !self.publish_only_at_end {
            if self.groups.len() >= GROUPS_IN_FLIGHT
                && let Some(oldest) = self.groups.pop_front()
            {
                self.note(joined(oldest).await?);
            }
            self.commit_group();
        }
        Ok(())
    }

    fn commit_group(&mut self) {
        let received = std::mem::take(&mut self.group);
        self.groups.push_back(tokio::spawn(commit_group(
            Arc::clone(self.store),
            self.bucket.to_owned(),
            received,
        )));
    }

    fn note(&mut self, committed: Vec<(usize, bool)>) {
        for (index, created) in committed {
            self.outcomes[index] = Some(if created {
                PullOutcome::Created
            } else {
                PullOutcome::Existed
            });
        }
    }

    /// Waits until every object is durable (or refused); the outcome of each
    /// record, in order.
    pub(super) async fn finish(mut self) -> S3Result<Vec<PullOutcome>> {
        if !self.group.is_empty() {
            self.commit_group();
        }
        while let Some(task) = self.groups.pop_front() {
            let committed = joined(task).await?;
            self.note(committed);
        }
        self.outcomes
            .into_iter()
            .map(|outcome| {
                outcome.ok_or_else(|| s3_error!(InternalError, "batch object was not committed"))
            })
            .collect()
    }
}

async fn joined<T>(task: tokio::task::JoinHandle<S3Result<T>>) -> S3Result<T> {
    task.await.map_err(S3Error::internal_error)?
}

fn protocol_error(error: ProtocolError) -> S3Error {
    match error {
        ProtocolError::Truncated => s3_error!(IncompleteBody, "batch ended inside an object"),
        other => s3_error!(InvalidRequest, "batch: {other}"),
    }
}

/// An object of a batch write whose bytes are being written to its
/// temporary file.
struct Received {
    /// Its place among the records of the batch.
    index: usize,
    key: String,
    info: ObjectInfo,
    /// Ends with the file complete but not yet durable.
    sealing: tokio::task::JoinHandle<S3Result<(ObjectWriter, ObjectMeta)>>,
}

/// Makes a group of received objects durable and publishes each one whose
/// key does not exist yet; whether each was created, in order.
///
/// The files are fsynced (all at once, so that they share journal commits),
/// then renamed into place, then each directory that received one is fsynced
/// once: the same order of steps as a single PUT (so a crash leaves only
/// complete objects), with fewer writes.
async fn commit_group(
    store: Arc<Store>,
    bucket: String,
    received: Vec<Received>,
) -> S3Result<Vec<(usize, bool)>> {
    let mut sealed = Vec::with_capacity(received.len());
    for object in received {
        let (writer, meta) = joined(object.sealing).await?;
        if meta.size != object.info.size || meta.whole_crc32() != object.info.crc32 {
            return Err(s3_error!(
                BadDigest,
                "{}: the bytes received do not match their CRC-32",
                object.key
            ));
        }
        sealed.push((object.index, object.key, writer));
    }
    let sealed = crate::store::each_blocking(sealed, |(index, key, writer)| {
        writer.sync()?;
        Ok((index, key, writer))
    })
    .await?;
    let condition = WriteCondition {
        if_none_match_any: true,
        ..Default::default()
    };
    let mut created = Vec::with_capacity(sealed.len());
    let mut dirs = BTreeSet::new();
    for (index, key, writer) in sealed {
        match store
            .commit_unsynced(&bucket, &key, writer.into_path(), &condition)
            .await
        {
            Ok(dir) => {
                dirs.insert(dir);
                created.push((index, true));
            }
            Err(StoreError::PreconditionFailed(_)) => created.push((index, false)),
            Err(error) => return Err(error.into()),
        }
    }
    store.sync_dirs(dirs.into_iter().collect()).await?;
    Ok(created)
}
