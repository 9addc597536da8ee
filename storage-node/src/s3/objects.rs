//! Object operations: PUT, GET, HEAD, DELETE (single and batch), COPY.

use std::sync::Arc;

use s3s::dto::*;
use s3s::{S3Error, S3Request, S3Response, S3Result, s3_error};

use super::HavenS3;
use super::body;
use super::convert;
use super::fields::{
    check_copy_source_conditions, check_read_conditions, incoming_body, meta_with_content_headers,
    new_object_retention, object_description, with_checksums,
};
use super::tagging;
use crate::error::StoreError;
use crate::object_file::{BLOCK_SIZE, ObjectMeta};

pub async fn put_object(
    s3: &HavenS3,
    req: S3Request<PutObjectInput>,
) -> S3Result<S3Response<PutObjectOutput>> {
    let trailers = req.trailing_headers.clone();
    let condition = s3.write_condition(
        &req,
        req.input.if_none_match.as_ref(),
        req.input.if_match.as_ref(),
    )?;
    s3.check_legal_hold_request(&req, req.input.object_lock_legal_hold_status.as_ref())?;
    let input = req.input;
    s3.store.object_path(&input.bucket, &input.key)?;
    let bucket = s3.store.bucket_config(&input.bucket).await?;
    let user_metadata = convert::user_metadata(input.metadata)?;
    let tags = tagging::from_header(input.tagging.as_deref())?;
    let (retention, legal_hold) = new_object_retention!(&bucket, input)?;
    let max_size = s3.config.limits.max_object_size;
    if input
        .content_length
        .is_some_and(|len| u64::try_from(len).map_or(true, |len| len > max_size))
    {
        return Err(s3_error!(
            EntityTooLarge,
            "object is larger than {max_size} bytes"
        ));
    }
    let mut incoming = incoming_body!(input, req.headers, trailers);
    incoming.default_algorithm = Some(super::checksums::Algorithm::Crc64Nvme);
    let received = body::receive_checked(
        incoming,
        || s3.store.new_writer(&input.bucket, &input.key),
        max_size,
    )
    .await?;
    let meta = meta_with_content_headers!(input, {
        user_metadata,
        retention,
        legal_hold,
        tags,
    } ..received.meta);
    let (temp, meta) = body::finish(received.writer, meta).await?;
    s3.store
        .commit(&input.bucket, &input.key, temp, &condition)
        .await?;
    tracing::debug!(bucket = %input.bucket, key = %input.key, size = meta.size, "object stored");
    let checksum_type = (!meta.checksums.is_empty()).then(|| convert::checksum_type(&meta));
    Ok(S3Response::new(with_checksums!(PutObjectOutput {
        e_tag: Some(convert::etag(&meta)),
        checksum_type,
    } from received.checksum)))
}

/// The bytes a GET or HEAD answers for: the whole object, a range, or a part.
struct Selection {
    start: u64,
    end: u64,
    /// `Content-Range` of a partial answer (status 206).
    content_range: Option<String>,
    /// The part read by number, if one was.
    part: Option<usize>,
    /// Whether this is the whole object (no range; or part 1 of an object that
    /// is not multipart).
    whole: bool,
}

/// Resolves `Range` and `partNumber` against an object, as AWS does: both
/// at once are `400 InvalidRequest`; a part number beyond the object's parts is
/// `416 InvalidPartNumber`; an object that is not multipart has one part, itself.
fn select(
    meta: &ObjectMeta,
    range: Option<Range>,
    part_number: Option<i32>,
) -> S3Result<Selection> {
    let partial =
        |start: u64, end: u64| format!("bytes {start}-{}/{}", end.saturating_sub(1), meta.size);
    match (range, part_number) {
        (None, None) => Ok(Selection {
            start: 0,
            end: meta.size,
            content_range: None,
            part: None,
            whole: true,
        }),
        (Some(range), None) => {
            let range = range.check(meta.size)?;
            Ok(Selection {
                start: range.start,
                end: range.end,
                content_range: Some(partial(range.start, range.end)),
                part: None,
                whole: false,
            })
        }
        (Some(_), Some(_)) => Err(s3_error!(
            InvalidRequest,
            "Cannot specify both Range header and partNumber query parameter"
        )),
        (None, Some(number)) => {
            let count = meta.parts_count.unwrap_or(1) as usize;
            let index = usize::try_from(number)
                .ok()
                .filter(|n| (1..=count).contains(n));
            let Some(index) = index else {
                if !(1..=10_000).contains(&number) {
                    return Err(s3_error!(
                        InvalidArgument,
                        "Part number must be an integer between 1 and 10000, inclusive"
                    ));
                }
                return Err(crate::error::custom_error(
                    "InvalidPartNumber",
                    http::StatusCode::RANGE_NOT_SATISFIABLE,
                    "The requested partnumber is not satisfiable",
                ));
            };
            if meta.parts_count.is_none() {
                return Ok(Selection {
                    start: 0,
                    end: meta.size,
                    content_range: Some(partial(0, meta.size)),
                    part: None,
                    whole: true,
                });
            }
            if meta.parts.len() != count {
                return Err(s3_error!(
                    NotImplemented,
                    "this object was completed before the node kept part boundaries; read ranges instead"
                ));
            }
            let start: u64 = meta.parts[..index - 1].iter().map(|p| p.size).sum();
            let end = start + meta.parts[index - 1].size;
            Ok(Selection {
                start,
                end,
                content_range: Some(partial(start, end)),
                part: Some(index - 1),
                whole: false,
            })
        }
    }
}

/// The checksum a GET or HEAD announces for `selection` when asked
/// (`x-amz-checksum-mode: ENABLED`): the object's for the whole object, a
/// part's own for a part of a composite upload, none for a range.
fn announced_checksum(
    meta: &ObjectMeta,
    selection: &Selection,
    mode: Option<&ChecksumMode>,
) -> (Checksum, Option<ChecksumType>) {
    match selection.part {
        None if selection.whole => convert::checksums_if_asked(meta, mode),
        Some(index) if meta.checksum_type.as_deref() == Some(super::checksums::COMPOSITE) => {
            let part = ObjectMeta {
                checksums: meta.parts[index].checksums.clone(),
                ..ObjectMeta::default()
            };
            let (checksum, _) = convert::checksums_if_asked(&part, mode);
            let kind = (checksum != Checksum::default())
                .then(|| ChecksumType::from_static(ChecksumType::COMPOSITE));
            (checksum, kind)
        }
        _ => (Checksum::default(), None),
    }
}

/// Opens the object a GetObject or HeadObject `$input` names, checks its read
/// conditions and selects the bytes asked for (whole, a range or a part): the
/// `(reader, selection)` both answer from. `$open` is the `Store` method that opens
/// it: a plain GET reads a small object whole at once, a HEAD only its metadata.
macro_rules! open_selected {
    ($s3:expr, $input:expr, $open:ident) => {{
        convert::unversioned($input.version_id.as_deref())?;
        let reader = $s3.store.$open(&$input.bucket, &$input.key).await?;
        check_read_conditions!(&reader.meta, $input)?;
        let selection = select(&reader.meta, $input.range, $input.part_number)?;
        (reader, selection)
    }};
}

pub async fn get_object(
    s3: &HavenS3,
    req: S3Request<GetObjectInput>,
) -> S3Result<S3Response<GetObjectOutput>> {
    let input = req.input;
    // Reading a small object whole at once saves a GET of all of it one I/O; a
    // GET of a range or a part, or one its conditions may answer without data
    // (304, 412), would read data it does not send, so it opens the metadata first.
    let plain = input.range.is_none()
        && input.part_number.is_none()
        && input.if_match.is_none()
        && input.if_none_match.is_none()
        && input.if_modified_since.is_none()
        && input.if_unmodified_since.is_none();
    let (reader, selection) = if plain {
        open_selected!(s3, input, open_object_to_send)
    } else {
        open_selected!(s3, input, open_object)
    };
    let meta = reader.meta.clone();
    let (checksum, checksum_type) =
        announced_checksum(&meta, &selection, input.checksum_mode.as_ref());
    let blob = body::send(
        Arc::clone(&s3.store),
        reader,
        selection.start,
        selection.end,
    )
    .await?;
    let length = i64::try_from(selection.end - selection.start).map_err(S3Error::internal_error)?;
    Ok(S3Response::new(object_description!(
        GetObjectOutput {
            body: Some(blob),
            content_length: Some(length),
            content_range: selection.content_range,
            tag_count: tagging::count(&meta.tags),
            checksum_type,
        },
        &meta,
        checksum
    )))
}

pub async fn head_object(
    s3: &HavenS3,
    req: S3Request<HeadObjectInput>,
) -> S3Result<S3Response<HeadObjectOutput>> {
    let input = req.input;
    let (reader, selection) = open_selected!(s3, input, open_object);
    let meta = &reader.meta;
    let (checksum, checksum_type) =
        announced_checksum(meta, &selection, input.checksum_mode.as_ref());
    let length = i64::try_from(selection.end - selection.start).map_err(S3Error::internal_error)?;
    let partial = selection.content_range.is_some();
    let mut response = S3Response::new(object_description!(
        HeadObjectOutput {
            content_length: Some(length),
            content_range: selection.content_range,
            checksum_type,
        },
        meta,
        checksum
    ));
    if partial {
        // s3s answers every HEAD with 200; the server sets this one's status.
        response.extensions.insert(crate::server::PartialContent);
    }
    Ok(response)
}

pub async fn delete_object(
    s3: &HavenS3,
    req: S3Request<DeleteObjectInput>,
) -> S3Result<S3Response<DeleteObjectOutput>> {
    let bypass = s3.bypasses_governance(&req, req.input.bypass_governance_retention)?;
    let input = req.input;
    convert::unversioned(input.version_id.as_deref())?;
    let condition = convert::delete_condition(
        input.if_match.as_ref(),
        input.if_match_size,
        input.if_match_last_modified_time.as_ref(),
    )?;
    s3.store
        .delete_object(&input.bucket, &input.key, bypass, &condition)
        .await?;
    Ok(S3Response::new(DeleteObjectOutput::default()))
}

pub async fn delete_objects(
    s3: &HavenS3,
    req: S3Request<DeleteObjectsInput>,
) -> S3Result<S3Response<DeleteObjectsOutput>> {
    let bypass = s3.bypasses_governance(&req, req.input.bypass_governance_retention)?;
    let input = req.input;
    s3.store.bucket_config(&input.bucket).await?;
    let quiet = input.delete.quiet.unwrap_or(false);
    let mut deleted = Vec::new();
    let mut errors = Vec::new();
    for object in input.delete.objects {
        let outcome = match convert::delete_condition_of(&object) {
            Ok(condition) => s3
                .store
                .delete_object(&input.bucket, &object.key, bypass, &condition)
                .await
                .map_err(|error| error.to_s3()),
            Err(error) => Err(error),
        };
        match outcome {
            Ok(()) => {
                if !quiet {
                    deleted.push(DeletedObject {
                        key: Some(object.key),
                        ..Default::default()
                    });
                }
            }
            Err(s3_error) => {
                errors.push(Error {
                    code: Some(s3_error.code().as_str().to_owned()),
                    key: Some(object.key),
                    message: s3_error.message().map(str::to_owned),
                    ..Default::default()
                });
            }
        }
    }
    Ok(S3Response::new(DeleteObjectsOutput {
        deleted: Some(deleted),
        errors: (!errors.is_empty()).then_some(errors),
        ..Default::default()
    }))
}

pub async fn copy_object(
    s3: &HavenS3,
    req: S3Request<CopyObjectInput>,
) -> S3Result<S3Response<CopyObjectOutput>> {
    let key = s3.key(&req)?.clone();
    let condition = s3.write_condition(&req, None, None)?;
    s3.check_legal_hold_request(&req, req.input.object_lock_legal_hold_status.as_ref())?;
    let input = req.input;
    let CopySource::Bucket {
        bucket: source_bucket,
        key: source_key,
        ..
    } = &input.copy_source
    else {
        return Err(s3_error!(
            NotImplemented,
            "only bucket/key copy sources are supported"
        ));
    };
    if !key.allows_bucket(source_bucket) {
        return Err(s3_error!(AccessDenied, "no access to the source bucket"));
    }
    s3.store.object_path(&input.bucket, &input.key)?;
    let bucket = s3.store.bucket_config(&input.bucket).await?;
    let reader = s3.store.open_object(source_bucket, source_key).await?;
    let source = reader.meta.clone();
    check_copy_source_conditions!(&source, input)?;
    let (retention, legal_hold) = new_object_retention!(&bucket, input)?;
    let replace_tags = input
        .tagging_directive
        .as_ref()
        .is_some_and(|d| d.as_str() == TaggingDirective::REPLACE);
    let tags = if replace_tags {
        tagging::from_header(input.tagging.as_deref())?
    } else {
        source.tags.clone()
    };
    let replace = input
        .metadata_directive
        .as_ref()
        .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
    let changes_something = replace
        || input.storage_class.is_some()
        || input.website_redirect_location.is_some()
        || input.server_side_encryption.is_some()
        || input.sse_customer_algorithm.is_some();
    if source_bucket.as_ref() == input.bucket.as_str()
        && source_key.as_ref() == input.key.as_str()
        && !changes_something
    {
        // AWS's answer, word for word: a copy onto itself must change something.
        return Err(s3_error!(
            InvalidRequest,
            "This copy request is illegal because it is trying to copy an object to itself \
             without changing the object's metadata, storage class, website redirect location \
             or encryption attributes."
        ));
    }
    let mut meta = if replace {
        meta_with_content_headers!(input, {
            etag: source.etag.clone(),
            user_metadata: convert::user_metadata(input.metadata)?,
            checksums: source.checksums.clone(),
            checksum_type: source.checksum_type.clone(),
            parts_count: source.parts_count,
            parts: source.parts.clone(),
        } ..ObjectMeta::default())
    } else {
        ObjectMeta {
            retention: None,
            legal_hold: false,
            ..source.clone()
        }
    };
    meta.retention = retention;
    meta.legal_hold = legal_hold;
    meta.tags = tags;
    meta.last_modified_ns = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    let mut writer = s3.store.new_writer(&input.bucket, &input.key)?;
    let store = Arc::clone(&s3.store);
    let (temp, meta) = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
        for block in 0..reader.meta.size.div_ceil(BLOCK_SIZE) {
            writer.write(&reader.read_block(block)?)?;
        }
        Ok(writer.finish(meta)?)
    })
    .await
    .map_err(S3Error::internal_error)?
    .map_err(|e| store.note(e))?;
    s3.store
        .commit(&input.bucket, &input.key, temp, &condition)
        .await?;
    Ok(S3Response::new(CopyObjectOutput {
        copy_object_result: Some(CopyObjectResult {
            e_tag: Some(convert::etag(&meta)),
            last_modified: Some(convert::timestamp(meta.last_modified_ns)),
            ..Default::default()
        }),
        ..Default::default()
    }))
}
