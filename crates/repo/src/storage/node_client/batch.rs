//! Client of the storage node's batch transfer (`?haven-batch-get=`,
//! `?haven-batch-put=`; wire format in `haven_node_protocol`): replication
//! between two nodes moves many objects per request instead of one signed,
//! MD5-hashed PUT and one GET per object.

use aws_lc_rs::digest;
use bytes::Bytes;
use haven_node_protocol::{
    BATCH_GET_QUERY, BATCH_PUT_QUERY, Decoder, Event, ObjectInfo, ProtocolError, Record,
};

use super::{
    NodeClient, NodeClientError, Payload, batch_timeout, check_keys, key_lines, ok_text,
    parse_yes_no,
};

impl NodeClient {
    /// Whether the node serves batch transfers: an empty batch read succeeds
    /// with an empty stream. Any other answer (a plain S3 server refuses the
    /// unknown request with a 4xx, 501 or whatever it chose) means no, and the
    /// caller uses plain S3; only a node that cannot be reached is an error.
    pub async fn supports_batch(&self) -> Result<bool, NodeClientError> {
        let answer = match self.batch_get(Vec::new(), 0).await {
            Ok(mut reader) => reader.next_object(0).await,
            Err(error) => Err(error),
        };
        match answer {
            Ok(record) => Ok(record.is_none()),
            Err(NodeClientError::Transport(error)) => Err(NodeClientError::Transport(error)),
            Err(_) => Ok(false),
        }
    }

    /// Starts reading the objects `keys` (bucket keys) name: one record per
    /// key, in order, from [`BatchReader::next_object`]. `expected_bytes`
    /// (their size, as listed) sets how long the whole read may take.
    pub async fn batch_get(
        &self,
        keys: Vec<String>,
        expected_bytes: u64,
    ) -> Result<BatchReader, NodeClientError> {
        check_keys(keys.iter().map(String::as_str))?;
        let body = key_lines(&keys);
        let query = format!("{BATCH_GET_QUERY}=");
        let response = self
            .post(&query, Payload::Bytes(body.as_bytes()))
            .timeout(batch_timeout(expected_bytes))
            .body(body)
            .send()
            .await?;
        if response.status().as_u16() != 200 {
            let error = ok_text(response).await.err();
            return Err(error.unwrap_or_else(|| {
                NodeClientError::Protocol("batch read failed without a status".into())
            }));
        }
        Ok(BatchReader {
            response,
            decoder: Decoder::new(),
            keys: keys.into_iter(),
            ended: false,
        })
    }

    /// Creates the objects whose encoded records and data `pieces` hold, in
    /// order, unless they exist; returns, per object in order, whether this
    /// request created it. Each object carries its own CRC-32, which the node
    /// checks; the body is sent `UNSIGNED-PAYLOAD` over TLS or loopback, and
    /// signed with its SHA-256 anywhere else (see `unsigned_is_safe`). Its length
    /// must be known in advance (S3 servers want a Content-Length with unsigned
    /// payloads), hence whole pieces rather than a stream.
    pub async fn batch_put(&self, pieces: Vec<Bytes>) -> Result<Vec<bool>, NodeClientError> {
        let query = format!("{BATCH_PUT_QUERY}=");
        let length: usize = pieces.iter().map(Bytes::len).sum();
        let hash = (!self.unsigned_batches).then(|| {
            let mut context = digest::Context::new(&digest::SHA256);
            for piece in &pieces {
                context.update(piece);
            }
            hex::encode(context.finish())
        });
        let payload = match &hash {
            Some(hash) => Payload::Sha256(hash),
            None => Payload::Unsigned,
        };
        let body = futures::stream::iter(pieces.into_iter().map(Ok::<_, std::io::Error>));
        let response = self
            .post(&query, payload)
            .header("content-length", length)
            .timeout(batch_timeout(length as u64))
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await?;
        let text = ok_text(response).await?;
        parse_yes_no(&text)
    }

    /// Creates each of `objects` (bucket key, bytes) that does not exist yet, in
    /// one batch write; per object in order, whether this request created it.
    ///
    /// For new objects of Haven's own (chunks), where a PUT would make the node
    /// compute an MD5 for the ETag that nobody reads: each gets the ETag
    /// [`crc32_etag`] instead, from the CRC-32 the batch carries anyway.
    pub async fn create_objects(
        &self,
        objects: Vec<(String, Bytes)>,
    ) -> Result<Vec<bool>, NodeClientError> {
        let count = objects.len();
        let mut pieces = Vec::with_capacity(2 * count);
        for (key, data) in objects {
            let crc32 = crc32fast::hash(&data);
            let info = ObjectInfo {
                size: data.len() as u64,
                etag: crc32_etag(crc32),
                content_type: None,
                crc32,
            };
            pieces.push(Record::Object { key, info }.encode()?);
            pieces.push(data);
        }
        let created = self.batch_put(pieces).await?;
        if created.len() != count {
            return Err(NodeClientError::Protocol(format!(
                "{} answers for {count} objects",
                created.len()
            )));
        }
        Ok(created)
    }
}

/// The ETag of an object created by [`NodeClient::create_objects`]: `crc32-` and
/// the CRC-32 of its bytes in hex. S3 ETags are opaque, but tools take a 32-digit
/// hex ETag for an MD5 and check downloads against it; this one cannot be taken for
/// one, and it still changes when the bytes do.
pub fn crc32_etag(crc32: u32) -> String {
    format!("crc32-{crc32:08x}")
}

/// The records of a batch read, in the order of the keys asked for.
pub struct BatchReader {
    response: reqwest::Response,
    decoder: Decoder,
    keys: std::vec::IntoIter<String>,
    ended: bool,
}

impl BatchReader {
    /// The next record with the object's data in the pieces it arrived in
    /// (none unless it is an object), or `None` after the last key. Refuses
    /// objects larger than `max_len`, records out of order, and data that does
    /// not match its CRC-32.
    pub async fn next_object(
        &mut self,
        max_len: u64,
    ) -> Result<Option<(Record, Vec<Bytes>)>, NodeClientError> {
        let mut current: Option<(Record, Vec<Bytes>, crc32fast::Hasher)> = None;
        loop {
            while let Some(event) = self.decoder.next_event()? {
                match event {
                    Event::Record(record) => {
                        let expected = self.keys.next();
                        if expected.as_deref() != Some(record.key()) {
                            return Err(NodeClientError::Protocol(format!(
                                "record for {:?} where {expected:?} was due",
                                record.key()
                            )));
                        }
                        let Record::Object { info, .. } = &record else {
                            return Ok(Some((record, Vec::new())));
                        };
                        if info.size > max_len {
                            return Err(NodeClientError::Protocol(format!(
                                "{:?} is {} bytes, at most {max_len} expected",
                                record.key(),
                                info.size
                            )));
                        }
                        current = Some((record, Vec::new(), crc32fast::Hasher::new()));
                    }
                    Event::Data(piece) => match &mut current {
                        Some((_, pieces, crc)) => {
                            crc.update(&piece);
                            pieces.push(piece);
                        }
                        None => return Err(ProtocolError::Malformed("stray data".into()).into()),
                    },
                    Event::ObjectEnd => {
                        let Some((record, pieces, crc)) = current.take() else {
                            return Err(ProtocolError::Malformed("stray object end".into()).into());
                        };
                        if let Record::Object { key, info } = &record
                            && crc.finalize() != info.crc32
                        {
                            return Err(NodeClientError::Protocol(format!(
                                "{key:?}: the bytes received do not match their CRC-32"
                            )));
                        }
                        return Ok(Some((record, pieces)));
                    }
                }
            }
            if self.ended {
                self.decoder.finish()?;
                if let Some(missing) = self.keys.next() {
                    return Err(NodeClientError::Protocol(format!(
                        "batch ended before the record for {missing:?}"
                    )));
                }
                return Ok(None);
            }
            match self.response.chunk().await? {
                Some(piece) => self.decoder.push(piece),
                None => self.ended = true,
            }
        }
    }
}
