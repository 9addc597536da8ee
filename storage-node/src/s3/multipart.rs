//! Multipart uploads.

use std::sync::Arc;

use s3s::dto::*;
use s3s::{S3Error, S3Request, S3Response, S3Result, s3_error};

use super::HavenS3;
use super::body;
use super::checksums::{self, Algorithm};
use super::convert;
use super::fields::{
    check_copy_source_conditions, incoming_body, meta_with_content_headers, new_object_retention,
    with_checksums,
};
use super::tagging;
use crate::error::StoreError;
use crate::object_file::{BLOCK_SIZE, ObjectMeta};
use crate::store::{Completion, UploadInfo, WholeDigest, uploads_max_part_number};

pub async fn create(
    s3: &HavenS3,
    req: S3Request<CreateMultipartUploadInput>,
) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
    let owner = s3.key(&req)?.access_key.clone();
    s3.check_legal_hold_request(&req, req.input.object_lock_legal_hold_status.as_ref())?;
    let input = req.input;
    let bucket = s3.store.bucket_config(&input.bucket).await?;
    let (retention, legal_hold) = new_object_retention!(&bucket, input)?;
    let meta = meta_with_content_headers!(input, {
        user_metadata: convert::user_metadata(input.metadata)?,
        retention,
        legal_hold,
        tags: tagging::from_header(input.tagging.as_deref())?,
    } ..ObjectMeta::default());
    let (algorithm, checksum_type) = upload_checksum(
        input.checksum_algorithm.as_ref(),
        input.checksum_type.as_ref(),
    )?;
    let info = UploadInfo {
        bucket: input.bucket.clone(),
        key: input.key.clone(),
        owner,
        created: time::OffsetDateTime::now_utc(),
        meta,
        checksum_algorithm: algorithm.map(|a| a.header_name().to_owned()),
        checksum_type: checksum_type.map(str::to_owned),
    };
    let upload_id = s3.store.create_upload(&info).await?;
    Ok(S3Response::new(CreateMultipartUploadOutput {
        bucket: Some(input.bucket),
        key: Some(input.key),
        upload_id: Some(upload_id),
        checksum_algorithm: algorithm.map(|a| ChecksumAlgorithm::from(a.header_name().to_owned())),
        checksum_type: checksum_type.map(|t| ChecksumType::from(t.to_owned())),
        ..Default::default()
    }))
}

/// The checksum algorithm and type of a new upload, checked as AWS does: a
/// type needs an algorithm, and SHA-1/SHA-256 cannot be `FULL_OBJECT` nor
/// CRC-64/NVME `COMPOSITE` (`400 InvalidRequest`).
fn upload_checksum(
    algorithm: Option<&ChecksumAlgorithm>,
    checksum_type: Option<&ChecksumType>,
) -> S3Result<(Option<Algorithm>, Option<&'static str>)> {
    let Some(algorithm) = algorithm else {
        if checksum_type.is_some() {
            return Err(s3_error!(
                InvalidRequest,
                "The x-amz-checksum-type header can only be used with the x-amz-checksum-algorithm header."
            ));
        }
        return Ok((None, None));
    };
    let algorithm = Algorithm::parse(algorithm.as_str())?;
    let kind = match checksum_type.map(ChecksumType::as_str) {
        None => algorithm.default_type(),
        Some(checksums::COMPOSITE) => checksums::COMPOSITE,
        Some(checksums::FULL_OBJECT) => checksums::FULL_OBJECT,
        Some(other) => {
            return Err(s3_error!(InvalidRequest, "unknown checksum type {other}"));
        }
    };
    if !algorithm.allows_type(kind) {
        return Err(s3_error!(
            InvalidRequest,
            "The {} checksum type cannot be used with the {} checksum algorithm.",
            kind,
            algorithm.header_name()
        ));
    }
    Ok((Some(algorithm), Some(kind)))
}

/// The checksum algorithm and type an upload was created with.
fn checksum_of(info: &UploadInfo) -> S3Result<Option<(Algorithm, &'static str)>> {
    let Some(name) = info.checksum_algorithm.as_deref() else {
        return Ok(None);
    };
    let kind = match info.checksum_type.as_deref() {
        Some(checksums::FULL_OBJECT) => checksums::FULL_OBJECT,
        _ => checksums::COMPOSITE,
    };
    Ok(Some((Algorithm::parse(name)?, kind)))
}

/// The upload a part goes to (UploadPart, UploadPartCopy): its checksum algorithm,
/// if it has one, which every part must then carry.
struct PartTarget(Option<Algorithm>);

impl PartTarget {
    /// The algorithm, once `part_number` is known to be in AWS's range.
    fn checked(self, part_number: i32) -> S3Result<Option<Algorithm>> {
        if !(1..=uploads_max_part_number()).contains(&part_number) {
            return Err(s3_error!(
                InvalidArgument,
                "part number must be between 1 and 10000"
            ));
        }
        Ok(self.0)
    }
}

/// The upload `id` a part of `bucket`/`key` goes to, if the caller started it.
async fn part_target<T>(
    s3: &HavenS3,
    req: &S3Request<T>,
    id: &str,
    bucket: &str,
    key: &str,
) -> S3Result<PartTarget> {
    let info = owned_upload(s3, req, id, bucket, key).await?;
    Ok(PartTarget(
        checksum_of(&info)?.map(|(algorithm, _)| algorithm),
    ))
}

async fn owned_upload<T>(
    s3: &HavenS3,
    req: &S3Request<T>,
    id: &str,
    bucket: &str,
    key: &str,
) -> S3Result<UploadInfo> {
    let owner = &s3.key(req)?.access_key;
    let info = s3.store.upload_info(id, bucket, key).await?;
    if &info.owner != owner {
        return Err(s3_error!(
            AccessDenied,
            "the upload belongs to another access key"
        ));
    }
    Ok(info)
}

pub async fn upload_part(
    s3: &HavenS3,
    req: S3Request<UploadPartInput>,
) -> S3Result<S3Response<UploadPartOutput>> {
    let trailers = req.trailing_headers.clone();
    let input = &req.input;
    let required = part_target(s3, &req, &input.upload_id, &input.bucket, &input.key)
        .await?
        .checked(input.part_number)?;
    let input = req.input;
    let max_size = s3.config.limits.max_object_size;
    let mut incoming = incoming_body!(input, req.headers, trailers);
    incoming.required = required;
    let received = body::receive_checked(
        incoming,
        || s3.store.new_part_writer(&input.upload_id),
        max_size,
    )
    .await?;
    let (temp, meta) = body::finish(received.writer, received.meta).await?;
    s3.store
        .commit_part(&input.upload_id, input.part_number, temp)
        .await?;
    Ok(S3Response::new(with_checksums!(UploadPartOutput {
        e_tag: Some(convert::etag(&meta)),
    } from received.checksum)))
}

/// UploadPartCopy: a part made of a source object's bytes, all of them or the
/// `x-amz-copy-source-range` `bytes=first-last` (inclusive; a malformed range
/// or one beyond the source is `400 InvalidArgument`, as AWS answers). The part
/// gets its own MD5 ETag and, in an upload with a checksum algorithm, that
/// checksum, as if it had been uploaded.
pub async fn upload_part_copy(
    s3: &HavenS3,
    req: S3Request<UploadPartCopyInput>,
) -> S3Result<S3Response<UploadPartCopyOutput>> {
    let access = s3.key(&req)?.clone();
    let input = &req.input;
    let required = part_target(s3, &req, &input.upload_id, &input.bucket, &input.key)
        .await?
        .checked(input.part_number)?;
    let input = req.input;
    let CopySource::Bucket {
        bucket: source_bucket,
        key: source_key,
        version_id,
    } = &input.copy_source
    else {
        return Err(s3_error!(
            NotImplemented,
            "only bucket/key copy sources are supported"
        ));
    };
    convert::unversioned(version_id.as_deref())?;
    if !access.allows_bucket(source_bucket) {
        return Err(s3_error!(AccessDenied, "no access to the source bucket"));
    }
    let reader = s3.store.open_object(source_bucket, source_key).await?;
    check_copy_source_conditions!(&reader.meta, input)?;
    let (start, end) = copy_range(input.copy_source_range.as_deref(), reader.meta.size)?;
    let max_size = s3.config.limits.max_object_size;
    if end - start > max_size {
        return Err(s3_error!(
            EntityTooLarge,
            "a part is larger than {max_size} bytes"
        ));
    }
    let mut writer = s3.store.new_part_writer(&input.upload_id)?;
    let store = Arc::clone(&s3.store);
    let (temp, meta, checksum) = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
        let mut md5 = crate::md5::Md5::new();
        let mut hasher = required.map(Algorithm::hasher).unwrap_or_default();
        let mut offset = start;
        while offset < end {
            let piece_end = end.min((offset / BLOCK_SIZE + 1) * BLOCK_SIZE);
            let data = reader.read_range(offset, piece_end)?;
            md5.update(&data);
            hasher.update(&data);
            writer.write(&data)?;
            offset = piece_end;
        }
        let checksum = hasher.finalize();
        let meta = ObjectMeta {
            etag: hex::encode(md5.finalize()),
            last_modified_ns: time::OffsetDateTime::now_utc().unix_timestamp_nanos(),
            checksums: convert::checksum_map(&checksum),
            ..ObjectMeta::default()
        };
        let (temp, meta) = writer.finish(meta)?;
        Ok((temp, meta, checksum))
    })
    .await
    .map_err(S3Error::internal_error)?
    .map_err(|e| store.note(e))?;
    s3.store
        .commit_part(&input.upload_id, input.part_number, temp)
        .await?;
    Ok(S3Response::new(UploadPartCopyOutput {
        copy_part_result: Some(with_checksums!(CopyPartResult {
            e_tag: Some(convert::etag(&meta)),
            last_modified: Some(convert::timestamp(meta.last_modified_ns)),
        } from checksum)),
        ..Default::default()
    }))
}

/// The bytes `start..end` an `x-amz-copy-source-range` selects of a source of
/// `size` bytes; the whole source without one.
fn copy_range(range: Option<&str>, size: u64) -> S3Result<(u64, u64)> {
    let Some(range) = range else {
        return Ok((0, size));
    };
    let parsed = range
        .strip_prefix("bytes=")
        .and_then(|r| r.split_once('-'))
        .and_then(|(first, last)| Some((first.parse::<u64>().ok()?, last.parse::<u64>().ok()?)));
    let Some((first, last)) = parsed.filter(|(first, last)| first <= last) else {
        return Err(s3_error!(
            InvalidArgument,
            "The x-amz-copy-source-range value must be of the form bytes=first-last where first and last are the zero-based offsets of the first and last bytes to copy"
        ));
    };
    if last >= size {
        return Err(s3_error!(
            InvalidArgument,
            "Range specified is not valid for source object of size: {size}"
        ));
    }
    Ok((first, last + 1))
}

pub async fn complete(
    s3: &HavenS3,
    req: S3Request<CompleteMultipartUploadInput>,
) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
    let input = &req.input;
    let mut info = owned_upload(s3, &req, &input.upload_id, &input.bucket, &input.key).await?;
    let condition =
        s3.write_condition(&req, input.if_none_match.as_ref(), input.if_match.as_ref())?;
    let input = req.input;
    let upload_checksum = checksum_of(&info)?;
    if let Some(asked) = &input.checksum_type
        && upload_checksum.map(|(_, kind)| kind) != Some(asked.as_str())
    {
        return Err(s3_error!(
            InvalidRequest,
            "The upload was created using the {} checksum mode. The complete request must use the same checksum mode.",
            upload_checksum.map_or("null", |(_, kind)| kind)
        ));
    }
    let whole_declared = with_checksums!(Checksum {} from input);
    let requested = input
        .multipart_upload
        .and_then(|m| m.parts)
        .unwrap_or_default();
    let mut parts = Vec::with_capacity(requested.len());
    let mut part_checksums = Vec::with_capacity(requested.len());
    for part in requested {
        let number = part
            .part_number
            .ok_or_else(|| s3_error!(InvalidPart, "part without number"))?;
        if let Some((algorithm, _)) = upload_checksum {
            let given = with_checksums!(Checksum {} from part);
            part_checksums.push((number, algorithm.field(&given).cloned()));
        }
        let etag = part.e_tag.map(ETag::into_value).unwrap_or_default();
        parts.push((number, etag));
    }
    let mut digest: Option<Box<dyn WholeDigest>> = None;
    if let Some((algorithm, kind)) = upload_checksum {
        let stored =
            stored_part_checksums(s3, &input.upload_id, algorithm, &part_checksums).await?;
        let expected = algorithm.field(&whole_declared).cloned();
        if kind == checksums::COMPOSITE {
            let missing = part_checksums.iter().find(|(_, given)| given.is_none());
            if let Some((number, _)) = missing {
                return Err(s3_error!(
                    InvalidRequest,
                    "The upload was created using a {} checksum. The complete request must include the checksum for each part. It was missing for part {} in the request.",
                    algorithm.key(),
                    number
                ));
            }
            let value = algorithm.composite(stored.iter().map(String::as_str))?;
            if let Some(expected) = expected
                && expected != value
                && Some(expected.as_str()) != value.rsplit_once('-').map(|(whole, _)| whole)
            {
                return Err(s3_error!(
                    BadDigest,
                    "x-amz-checksum-{} does not match the checksum of the parts' checksums",
                    algorithm.key()
                ));
            }
            info.meta.checksums = [(algorithm.key().to_owned(), value)].into();
            info.meta.checksum_type = Some(checksums::COMPOSITE.to_owned());
        } else {
            digest = Some(Box::new(FullObjectDigest {
                algorithm,
                hasher: algorithm.hasher(),
                expected,
            }));
        }
    } else {
        // An upload created without an algorithm still gets a CRC-64/NVME of the
        // whole object, as AWS gives every new object ("default data integrity
        // protections"), so a later read can be checked end to end.
        let algorithm = Algorithm::Crc64Nvme;
        digest = Some(Box::new(FullObjectDigest {
            algorithm,
            hasher: algorithm.hasher(),
            expected: algorithm.field(&whole_declared).cloned(),
        }));
    }
    let completion = Completion {
        parts,
        part_checksum: upload_checksum.map(|(algorithm, _)| algorithm.key()),
        digest,
    };
    let meta = s3
        .store
        .complete_upload(&input.upload_id, info, completion, &condition)
        .await?;
    let checksum = convert::checksum_dto(&meta);
    let checksum_type = (!meta.checksums.is_empty()).then(|| convert::checksum_type(&meta));
    Ok(S3Response::new(
        with_checksums!(CompleteMultipartUploadOutput {
        bucket: Some(input.bucket.clone()),
        key: Some(input.key.clone()),
        e_tag: Some(convert::etag(&meta)),
        location: Some(format!("/{}/{}", input.bucket, input.key)),
        checksum_type,
    } from checksum),
    ))
}

/// The stored checksum of each part named in a completion, in its order; a
/// checksum the client gave for a part must be the stored one (`400
/// InvalidPart`, as for a wrong ETag).
async fn stored_part_checksums(
    s3: &HavenS3,
    upload_id: &str,
    algorithm: Algorithm,
    requested: &[(i32, Option<String>)],
) -> S3Result<Vec<String>> {
    let stored = s3.store.list_parts(upload_id).await?;
    let mut out = Vec::with_capacity(requested.len());
    for (number, given) in requested {
        let Some(part) = stored.iter().find(|p| p.number == *number) else {
            return Err(s3_error!(InvalidPart, "part {number} was not uploaded"));
        };
        let Some(value) = part.checksums.get(algorithm.key()) else {
            return Err(s3_error!(
                InvalidPart,
                "part {number} has no {} checksum",
                algorithm.header_name()
            ));
        };
        if given.as_ref().is_some_and(|given| given != value) {
            return Err(s3_error!(
                InvalidPart,
                "part {number} has another {} checksum",
                algorithm.header_name()
            ));
        }
        out.push(value.clone());
    }
    Ok(out)
}

/// A full-object checksum computed while the parts are joined, checked
/// against the one the client gave with the completion.
struct FullObjectDigest {
    algorithm: Algorithm,
    hasher: s3s::checksum::ChecksumHasher,
    expected: Option<String>,
}

impl WholeDigest for FullObjectDigest {
    fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
    }

    fn finish(self: Box<Self>, meta: &mut ObjectMeta) -> Result<(), StoreError> {
        let computed = self.hasher.finalize();
        let value = self.algorithm.field(&computed).cloned().unwrap_or_default();
        if self.expected.as_ref().is_some_and(|e| *e != value) {
            return Err(StoreError::BadDigest(format!(
                "x-amz-checksum-{} does not match the object",
                self.algorithm.key()
            )));
        }
        meta.checksums = [(self.algorithm.key().to_owned(), value)].into();
        meta.checksum_type = Some(checksums::FULL_OBJECT.to_owned());
        Ok(())
    }
}

pub async fn abort(
    s3: &HavenS3,
    req: S3Request<AbortMultipartUploadInput>,
) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
    let input = &req.input;
    owned_upload(s3, &req, &input.upload_id, &input.bucket, &input.key).await?;
    s3.store.abort_upload(&input.upload_id).await?;
    Ok(S3Response::new(AbortMultipartUploadOutput::default()))
}

pub async fn list_parts(
    s3: &HavenS3,
    req: S3Request<ListPartsInput>,
) -> S3Result<S3Response<ListPartsOutput>> {
    let input = &req.input;
    let info = owned_upload(s3, &req, &input.upload_id, &input.bucket, &input.key).await?;
    let upload_checksum = checksum_of(&info)?;
    let input = req.input;
    let marker = input.part_number_marker.unwrap_or(0);
    let max_parts = input.max_parts.unwrap_or(1000).clamp(1, 1000);
    let all = s3.store.list_parts(&input.upload_id).await?;
    let mut selected: Vec<_> = all.into_iter().filter(|p| p.number > marker).collect();
    let truncated = selected.len() > max_parts as usize;
    selected.truncate(max_parts as usize);
    let next = if truncated {
        selected.last().map(|p| p.number)
    } else {
        None
    };
    let parts = selected
        .into_iter()
        .map(|p| {
            let mut checksum = Checksum::default();
            if let Some((algorithm, _)) = upload_checksum {
                *algorithm.field_mut(&mut checksum) = p.checksums.get(algorithm.key()).cloned();
            }
            with_checksums!(Part {
                part_number: Some(p.number),
                size: i64::try_from(p.size).ok(),
                e_tag: Some(ETag::Strong(p.etag)),
                last_modified: Some(convert::timestamp(p.last_modified_ns)),
            } from checksum)
        })
        .collect();
    Ok(S3Response::new(ListPartsOutput {
        bucket: Some(input.bucket),
        key: Some(input.key),
        upload_id: Some(input.upload_id),
        max_parts: Some(max_parts),
        is_truncated: Some(truncated),
        next_part_number_marker: next,
        parts: Some(parts),
        checksum_algorithm: upload_checksum
            .map(|(a, _)| ChecksumAlgorithm::from(a.header_name().to_owned())),
        checksum_type: upload_checksum.map(|(_, kind)| ChecksumType::from(kind.to_owned())),
        ..Default::default()
    }))
}

pub async fn list_uploads(
    s3: &HavenS3,
    req: S3Request<ListMultipartUploadsInput>,
) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
    let input = req.input;
    s3.store.bucket_config(&input.bucket).await?;
    let prefix = input.prefix.clone().unwrap_or_default();
    let uploads = s3
        .store
        .list_uploads(&input.bucket)
        .await?
        .into_iter()
        .filter(|(key, _, _)| key.starts_with(&prefix))
        .map(|(key, id, created)| MultipartUpload {
            key: Some(key),
            upload_id: Some(id),
            initiated: Some(Timestamp::from(created)),
            ..Default::default()
        })
        .collect();
    Ok(S3Response::new(ListMultipartUploadsOutput {
        bucket: Some(input.bucket),
        prefix: input.prefix,
        is_truncated: Some(false),
        uploads: Some(uploads),
        ..Default::default()
    }))
}
