//! Multipart uploads.

use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, s3_error};

use super::HavenS3;
use super::body;
use super::convert;
use super::fields::{incoming_body, meta_with_content_headers, with_checksums};
use super::tagging;
use crate::object_file::ObjectMeta;
use crate::store::{UploadInfo, uploads_max_part_number};

pub async fn create(
    s3: &HavenS3,
    req: S3Request<CreateMultipartUploadInput>,
) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
    let owner = s3.key(&req)?.access_key.clone();
    s3.check_legal_hold_request(&req, req.input.object_lock_legal_hold_status.as_ref())?;
    let input = req.input;
    let bucket = s3.store.bucket_config(&input.bucket).await?;
    let (retention, legal_hold) = convert::new_object_retention(
        &bucket,
        input.object_lock_mode.as_ref(),
        input.object_lock_retain_until_date.as_ref(),
        input.object_lock_legal_hold_status.as_ref(),
    )?;
    let meta = meta_with_content_headers!(input, {
        user_metadata: convert::user_metadata(input.metadata)?,
        retention,
        legal_hold,
        tags: tagging::from_header(input.tagging.as_deref())?,
    } ..ObjectMeta::default());
    let info = UploadInfo {
        bucket: input.bucket.clone(),
        key: input.key.clone(),
        owner,
        created: time::OffsetDateTime::now_utc(),
        meta,
    };
    let upload_id = s3.store.create_upload(&info).await?;
    Ok(S3Response::new(CreateMultipartUploadOutput {
        bucket: Some(input.bucket),
        key: Some(input.key),
        upload_id: Some(upload_id),
        ..Default::default()
    }))
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
    owned_upload(s3, &req, &input.upload_id, &input.bucket, &input.key).await?;
    let input = req.input;
    if !(1..=uploads_max_part_number()).contains(&input.part_number) {
        return Err(s3_error!(
            InvalidArgument,
            "part number must be between 1 and 10000"
        ));
    }
    let max_size = s3.config.limits.max_object_size;
    let received = body::receive_checked(
        incoming_body!(input, trailers),
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

pub async fn complete(
    s3: &HavenS3,
    req: S3Request<CompleteMultipartUploadInput>,
) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
    let input = &req.input;
    let info = owned_upload(s3, &req, &input.upload_id, &input.bucket, &input.key).await?;
    let condition =
        s3.write_condition(&req, input.if_none_match.as_ref(), input.if_match.as_ref())?;
    let input = req.input;
    let mut parts = Vec::new();
    for part in input
        .multipart_upload
        .and_then(|m| m.parts)
        .unwrap_or_default()
    {
        let number = part
            .part_number
            .ok_or_else(|| s3_error!(InvalidPart, "part without number"))?;
        let etag = part.e_tag.map(ETag::into_value).unwrap_or_default();
        parts.push((number, etag));
    }
    let meta = s3
        .store
        .complete_upload(&input.upload_id, info, parts, &condition)
        .await?;
    Ok(S3Response::new(CompleteMultipartUploadOutput {
        bucket: Some(input.bucket.clone()),
        key: Some(input.key.clone()),
        e_tag: Some(convert::etag(&meta)),
        location: Some(format!("/{}/{}", input.bucket, input.key)),
        ..Default::default()
    }))
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
    owned_upload(s3, &req, &input.upload_id, &input.bucket, &input.key).await?;
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
        .map(|p| Part {
            part_number: Some(p.number),
            size: i64::try_from(p.size).ok(),
            e_tag: Some(ETag::Strong(p.etag)),
            last_modified: Some(convert::timestamp(p.last_modified_ns)),
            ..Default::default()
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
