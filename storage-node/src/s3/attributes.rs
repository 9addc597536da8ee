//! GetObjectAttributes: the attributes a client names in
//! `x-amz-object-attributes` (ETag, Checksum, ObjectParts, StorageClass,
//! ObjectSize), from the object's metadata without reading its data.
//!
//! ObjectParts carries `TotalPartsCount` for multipart objects; AWS lists
//! each part only for uploads made with additional checksums, which the node
//! does not keep per part, so it never lists them.

use s3s::dto::*;
use s3s::{S3Error, S3Request, S3Response, S3Result, s3_error};

use super::HavenS3;
use super::convert;

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
                output.object_parts = meta.parts_count.map(|count| GetObjectAttributesParts {
                    total_parts_count: i32::try_from(count).ok(),
                    ..Default::default()
                });
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
