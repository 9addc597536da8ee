//! GetObjectAttributes: the attributes a client names in
//! `x-amz-object-attributes` (ETag, Checksum, ObjectParts, StorageClass,
//! ObjectSize), from the object's metadata without reading its data.
//!
//! ObjectParts carries `TotalPartsCount` for multipart objects and, as AWS
//! does for general purpose buckets, lists the parts (number, size, checksum)
//! only of uploads made with an additional checksum, a page at a time
//! (`x-amz-max-parts`, default and at most 1000; `x-amz-part-number-marker`).

use s3s::dto::*;
use s3s::{S3Error, S3Request, S3Response, S3Result, s3_error};

use super::HavenS3;
use super::convert;
use crate::object_file::ObjectMeta;

pub async fn get_object_attributes(
    s3: &HavenS3,
    req: S3Request<GetObjectAttributesInput>,
) -> S3Result<S3Response<GetObjectAttributesOutput>> {
    let input = req.input;
    convert::unversioned(input.version_id.as_deref())?;
    let reader = s3.store.open_object(&input.bucket, &input.key).await?;
    let meta = &reader.meta;
    let mut output = GetObjectAttributesOutput {
        last_modified: Some(convert::timestamp(meta.last_modified_ns)),
        ..Default::default()
    };
    // One header, `x-amz-object-attributes: ETag,ObjectSize`, which s3s hands
    // over as a single value when the client sends it so.
    let names = input
        .object_attributes
        .iter()
        .flat_map(|attribute| attribute.as_str().split(','))
        .map(str::trim);
    for name in names {
        match name {
            ObjectAttributes::ETAG => output.e_tag = Some(convert::etag(meta)),
            ObjectAttributes::OBJECT_SIZE => {
                output.object_size =
                    Some(i64::try_from(meta.size).map_err(S3Error::internal_error)?);
            }
            ObjectAttributes::STORAGE_CLASS => {
                output.storage_class = Some(StorageClass::from_static(StorageClass::STANDARD));
            }
            ObjectAttributes::CHECKSUM => {
                let checksum = convert::checksum_dto(meta);
                let any = checksum.checksum_crc32.is_some()
                    || checksum.checksum_crc32c.is_some()
                    || checksum.checksum_sha1.is_some()
                    || checksum.checksum_sha256.is_some()
                    || checksum.checksum_crc64nvme.is_some();
                output.checksum = any.then_some(checksum);
            }
            ObjectAttributes::OBJECT_PARTS => {
                output.object_parts = meta
                    .parts_count
                    .map(|count| {
                        object_parts(meta, count, input.max_parts, input.part_number_marker)
                    })
                    .transpose()?;
            }
            other => {
                return Err(s3_error!(
                    InvalidArgument,
                    "Invalid attribute name specified: {other:?}"
                ));
            }
        }
    }
    Ok(S3Response::new(output))
}

/// Parts listed per page when the client names no `x-amz-max-parts` (and at most).
const MAX_PARTS: i32 = 1000;

/// ObjectParts of a multipart object of `count` parts: the count, and a page of
/// parts after `marker` if the upload had an additional checksum.
fn object_parts(
    meta: &ObjectMeta,
    count: u32,
    max_parts: Option<i32>,
    marker: Option<i32>,
) -> S3Result<GetObjectAttributesParts> {
    let total_parts_count = i32::try_from(count).map_err(S3Error::internal_error)?;
    let mut parts = GetObjectAttributesParts {
        total_parts_count: Some(total_parts_count),
        ..Default::default()
    };
    let with_checksums =
        !meta.parts.is_empty() && meta.parts.iter().all(|part| !part.checksums.is_empty());
    if !with_checksums {
        return Ok(parts);
    }
    let max_parts = match max_parts {
        None => MAX_PARTS,
        Some(value) if value >= 0 => value.min(MAX_PARTS),
        Some(_) => {
            return Err(s3_error!(
                InvalidArgument,
                "max-parts must be a non-negative integer"
            ));
        }
    };
    let marker = match marker {
        None => 0,
        Some(value) if value >= 0 => value,
        Some(_) => {
            return Err(s3_error!(
                InvalidArgument,
                "part-number-marker must be a non-negative integer"
            ));
        }
    };
    let page: Vec<ObjectPart> = meta
        .parts
        .iter()
        .zip(1..)
        .filter(|(_, number)| *number > marker)
        .take(usize::try_from(max_parts).unwrap_or_default())
        .map(|(part, number)| {
            let value = |key: &str| part.checksums.get(key).cloned();
            ObjectPart {
                part_number: Some(number),
                size: i64::try_from(part.size).ok(),
                checksum_crc32: value("crc32"),
                checksum_crc32c: value("crc32c"),
                checksum_crc64nvme: value("crc64nvme"),
                checksum_sha1: value("sha1"),
                checksum_sha256: value("sha256"),
            }
        })
        .collect();
    let last = page
        .last()
        .and_then(|part| part.part_number)
        .unwrap_or(marker);
    parts.is_truncated = Some(last < total_parts_count);
    parts.max_parts = Some(max_parts);
    parts.part_number_marker = Some(marker);
    parts.next_part_number_marker = Some(last);
    parts.parts = Some(page);
    Ok(parts)
}
