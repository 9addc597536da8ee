//! Conversions between s3s DTOs and the store's metadata.

use std::collections::BTreeMap;

use s3s::dto::{Checksum, ETag, ETagCondition, Timestamp};
use s3s::{S3Error, S3ErrorCode, s3_error};

use super::checksums::{self, Algorithm};
use crate::object_file::{ObjectMeta, Retention};
use crate::store::{BucketConfig, DeleteCondition, WriteCondition};

/// Largest total size of `x-amz-meta-*` names and values (the AWS limit).
const MAX_USER_METADATA_BYTES: usize = 2048;

/// Unix nanoseconds to an S3 timestamp.
pub fn timestamp(ns: i128) -> Timestamp {
    let time = time::OffsetDateTime::from_unix_timestamp_nanos(ns)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    Timestamp::from(time)
}

/// The ETag header value of an object.
pub fn etag(meta: &ObjectMeta) -> ETag {
    ETag::Strong(meta.etag.clone())
}

/// A Content-Encoding without `aws-chunked`, which describes how the request
/// body was sent, not the object: AWS keeps only the other encodings, and none
/// when that was the only one.
pub fn without_aws_chunked(encoding: Option<String>) -> Option<String> {
    let encoding = encoding?;
    let kept: Vec<&str> = encoding
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty() && !e.eq_ignore_ascii_case("aws-chunked"))
        .collect();
    (!kept.is_empty()).then(|| kept.join(","))
}

/// Checks user metadata against the size limit.
pub fn user_metadata(
    metadata: Option<s3s::dto::Metadata>,
) -> Result<BTreeMap<String, String>, S3Error> {
    let map: BTreeMap<String, String> = metadata.unwrap_or_default().into_iter().collect();
    let size: usize = map.iter().map(|(k, v)| k.len() + v.len()).sum();
    if size > MAX_USER_METADATA_BYTES {
        return Err(s3_error!(
            MetadataTooLarge,
            "user metadata exceeds {MAX_USER_METADATA_BYTES} bytes"
        ));
    }
    Ok(map)
}

/// The checksums of an object to announce in a GET or HEAD: only when the
/// client asked with `x-amz-checksum-mode: ENABLED`, as AWS does.
pub fn checksums_if_asked(
    meta: &ObjectMeta,
    mode: Option<&s3s::dto::ChecksumMode>,
) -> (Checksum, Option<s3s::dto::ChecksumType>) {
    if mode.is_none_or(|m| m.as_str() != s3s::dto::ChecksumMode::ENABLED)
        || meta.checksums.is_empty()
    {
        return (Checksum::default(), None);
    }
    (checksum_dto(meta), Some(checksum_type(meta)))
}

/// The `x-amz-checksum-type` of an object with checksums: a single PUT's
/// covers the whole object.
pub fn checksum_type(meta: &ObjectMeta) -> s3s::dto::ChecksumType {
    s3s::dto::ChecksumType::from(
        meta.checksum_type
            .clone()
            .unwrap_or_else(|| checksums::FULL_OBJECT.to_owned()),
    )
}

/// The checksums of an object as s3s DTO fields.
pub fn checksum_dto(meta: &ObjectMeta) -> Checksum {
    Checksum {
        checksum_crc32: meta.checksums.get("crc32").cloned(),
        checksum_crc32c: meta.checksums.get("crc32c").cloned(),
        checksum_sha1: meta.checksums.get("sha1").cloned(),
        checksum_sha256: meta.checksums.get("sha256").cloned(),
        checksum_crc64nvme: meta.checksums.get("crc64nvme").cloned(),
        ..Default::default()
    }
}

/// Stores computed checksums by algorithm name.
pub fn checksum_map(checksum: &Checksum) -> BTreeMap<String, String> {
    let fields = [
        ("crc32", &checksum.checksum_crc32),
        ("crc32c", &checksum.checksum_crc32c),
        ("sha1", &checksum.checksum_sha1),
        ("sha256", &checksum.checksum_sha256),
        ("crc64nvme", &checksum.checksum_crc64nvme),
    ];
    fields
        .into_iter()
        .filter_map(|(name, value)| value.clone().map(|v| (name.to_owned(), v)))
        .collect()
}

/// Checks a Content-MD5 header (base64) against the MD5 of the bytes.
pub fn check_content_md5(content_md5: Option<&str>, md5: &[u8]) -> Result<(), S3Error> {
    let Some(content_md5) = content_md5 else {
        return Ok(());
    };
    let expected = base64_decode(content_md5)
        .ok_or_else(|| s3_error!(InvalidDigest, "Content-MD5 is not valid base64"))?;
    if expected.len() != 16 {
        return Err(s3_error!(InvalidDigest, "Content-MD5 must be 16 bytes"));
    }
    if expected != md5 {
        return Err(s3_error!(BadDigest, "Content-MD5 does not match the body"));
    }
    Ok(())
}

/// Standard base64 (padding optional) to bytes; `None` if it is not base64.
pub(crate) fn base64_decode(text: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let text = text.trim().trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for byte in text.bytes() {
        let value = ALPHABET.iter().position(|&c| c == byte)? as u32;
        buffer = (buffer << 6) | value;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    Some(out)
}

/// Which checksum algorithms to compute for a request: those whose values it
/// declares in headers, the one it names (`x-amz-sdk-checksum-algorithm`), those
/// it announces as trailers (`x-amz-trailer`), and `required` (a multipart
/// upload's algorithm, computed for every part).
pub fn checksum_hasher(
    declared: &Checksum,
    algorithm: Option<&s3s::dto::ChecksumAlgorithm>,
    announced_trailer: Option<&str>,
    required: Option<Algorithm>,
) -> Result<s3s::checksum::ChecksumHasher, S3Error> {
    let mut hasher = s3s::checksum::ChecksumHasher::default();
    let mut wanted = checksums::declared(declared);
    if let Some(algorithm) = algorithm {
        wanted.push(Algorithm::parse(algorithm.as_str())?);
    }
    wanted.extend(trailer_algorithms(announced_trailer));
    if let Some(required) = required {
        if let Some(other) = wanted.iter().find(|a| **a != required) {
            return Err(s3_error!(
                InvalidRequest,
                "Checksum Type mismatch occurred, expected checksum Type: {}, actual checksum Type: {}",
                required.key(),
                other.key()
            ));
        }
        wanted.push(required);
    }
    for algorithm in wanted {
        algorithm.enable(&mut hasher);
    }
    Ok(hasher)
}

/// The checksum algorithms an `x-amz-trailer` header announces.
fn trailer_algorithms(announced: Option<&str>) -> Vec<Algorithm> {
    announced
        .unwrap_or_default()
        .split(',')
        .filter_map(|name| name.trim().strip_prefix("x-amz-checksum-"))
        .filter_map(|name| Algorithm::parse(name).ok())
        .collect()
}

/// Merges checksums that arrived as trailers into the declared ones.
pub fn merge_trailers(
    declared: &mut Checksum,
    trailers: Option<s3s::TrailingHeaders>,
) -> Result<(), S3Error> {
    let Some(trailers) = trailers.and_then(|t| t.take()) else {
        return Ok(());
    };
    let fields = [
        ("x-amz-checksum-crc32", &mut declared.checksum_crc32),
        ("x-amz-checksum-crc32c", &mut declared.checksum_crc32c),
        ("x-amz-checksum-sha1", &mut declared.checksum_sha1),
        ("x-amz-checksum-sha256", &mut declared.checksum_sha256),
        ("x-amz-checksum-crc64nvme", &mut declared.checksum_crc64nvme),
    ];
    for (name, slot) in fields {
        if let Some(value) = trailers.get(name) {
            let value = value
                .to_str()
                .map_err(|_| s3_error!(InvalidArgument, "invalid {name} trailer"))?;
            *slot = Some(value.to_owned());
        }
    }
    Ok(())
}

/// Every checksum the client declared must equal the computed one.
pub fn verify_checksums(declared: &Checksum, computed: &Checksum) -> Result<(), S3Error> {
    let pairs = [
        ("crc32", &declared.checksum_crc32, &computed.checksum_crc32),
        (
            "crc32c",
            &declared.checksum_crc32c,
            &computed.checksum_crc32c,
        ),
        ("sha1", &declared.checksum_sha1, &computed.checksum_sha1),
        (
            "sha256",
            &declared.checksum_sha256,
            &computed.checksum_sha256,
        ),
        (
            "crc64nvme",
            &declared.checksum_crc64nvme,
            &computed.checksum_crc64nvme,
        ),
    ];
    for (name, want, got) in pairs {
        if let Some(want) = want
            && Some(want) != got.as_ref()
        {
            return Err(S3Error::with_message(
                S3ErrorCode::BadDigest,
                format!("x-amz-checksum-{name} does not match"),
            ));
        }
    }
    Ok(())
}

/// The write condition of a PUT-like request.
pub fn write_condition(
    if_none_match: Option<&ETagCondition>,
    if_match: Option<&ETagCondition>,
) -> Result<WriteCondition, S3Error> {
    let if_none_match_any = match if_none_match {
        None => false,
        Some(ETagCondition::Any) => true,
        Some(_) => {
            return Err(s3_error!(
                NotImplemented,
                "If-None-Match on writes supports only '*'"
            ));
        }
    };
    let if_match = if_match.map(|condition| match condition {
        ETagCondition::Any => None,
        ETagCondition::ETag(etag) => Some(etag.value().to_owned()),
    });
    Ok(WriteCondition {
        if_none_match_any,
        if_match,
        create_only_for_key: false,
    })
}

/// Refuses a `versionId` other than `null` (the version id S3 gives objects of
/// unversioned buckets): the node keeps no versions, so it cannot answer for one.
pub fn unversioned(version_id: Option<&str>) -> Result<(), S3Error> {
    match version_id {
        None | Some("null") => Ok(()),
        Some(_) => Err(s3_error!(
            NotImplemented,
            "this node keeps no object versions; only versionId=null (the current object) is supported"
        )),
    }
}

/// The condition of a DeleteObject: `If-Match`, `x-amz-if-match-size` and
/// `x-amz-if-match-last-modified-time`.
pub fn delete_condition(
    if_match: Option<&ETagCondition>,
    size: Option<i64>,
    last_modified: Option<&Timestamp>,
) -> Result<DeleteCondition, S3Error> {
    let size = size
        .map(|size| {
            u64::try_from(size)
                .map_err(|_| s3_error!(InvalidArgument, "x-amz-if-match-size must not be negative"))
        })
        .transpose()?;
    Ok(DeleteCondition {
        if_match: if_match.map(|condition| match condition {
            ETagCondition::Any => None,
            ETagCondition::ETag(etag) => Some(etag.value().to_owned()),
        }),
        size,
        last_modified: last_modified.map(|t| time::OffsetDateTime::from(t.clone())),
    })
}

/// The condition of one object of a DeleteObjects request (its `ETag`,
/// `Size` and `LastModifiedTime`).
pub fn delete_condition_of(
    object: &s3s::dto::ObjectIdentifier,
) -> Result<DeleteCondition, S3Error> {
    let if_match = object.e_tag.clone().map(ETagCondition::ETag);
    delete_condition(
        if_match.as_ref(),
        object.size,
        object.last_modified_time.as_ref(),
    )
}

/// Checks the read conditions of GET and HEAD.
pub fn check_read_conditions(
    meta: &ObjectMeta,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
) -> Result<(), S3Error> {
    let current = etag(meta);
    let modified: time::OffsetDateTime = timestamp(meta.last_modified_ns).into();
    // Compare at one-second resolution, as HTTP dates have.
    let modified = modified.replace_nanosecond(0).unwrap_or(modified);
    if let Some(condition) = if_match {
        let matches = match condition {
            ETagCondition::Any => true,
            ETagCondition::ETag(etag) => etag.strong_cmp(&current),
        };
        if !matches {
            return Err(s3_error!(PreconditionFailed, "If-Match does not match"));
        }
    } else if let Some(since) = if_unmodified_since
        && modified > time::OffsetDateTime::from(since.clone())
    {
        return Err(s3_error!(
            PreconditionFailed,
            "modified since If-Unmodified-Since"
        ));
    }
    if let Some(condition) = if_none_match {
        let matches = match condition {
            ETagCondition::Any => true,
            ETagCondition::ETag(etag) => etag.weak_cmp(&current),
        };
        if matches {
            return Err(S3Error::new(S3ErrorCode::NotModified));
        }
    } else if let Some(since) = if_modified_since
        && modified <= time::OffsetDateTime::from(since.clone())
    {
        return Err(S3Error::new(S3ErrorCode::NotModified));
    }
    Ok(())
}

/// Retention for a new object: explicit headers, else the bucket default.
pub fn new_object_retention(
    bucket: &BucketConfig,
    mode: Option<&s3s::dto::ObjectLockMode>,
    until: Option<&Timestamp>,
    legal_hold: Option<&s3s::dto::ObjectLockLegalHoldStatus>,
) -> Result<(Option<Retention>, bool), S3Error> {
    let hold = legal_hold.is_some_and(|h| h.as_str() == "ON");
    let explicit = match (mode, until) {
        (None, None) => None,
        (Some(mode), Some(until)) => Some(retention(mode.as_str(), until)?),
        _ => {
            return Err(s3_error!(
                InvalidArgument,
                "x-amz-object-lock-mode and x-amz-object-lock-retain-until-date must be given together"
            ));
        }
    };
    if (explicit.is_some() || hold) && !bucket.object_lock_enabled {
        return Err(s3_error!(
            InvalidRequest,
            "bucket is missing Object Lock configuration"
        ));
    }
    let now = time::OffsetDateTime::now_utc();
    let chosen = explicit.or_else(|| {
        bucket.default_retention.as_ref().map(|d| Retention {
            mode: d.mode.clone(),
            retain_until: d.retain_until(now),
        })
    });
    Ok((chosen, hold))
}

/// A validated retention from a mode string and a date.
pub fn retention(mode: &str, until: &Timestamp) -> Result<Retention, S3Error> {
    if mode != "COMPLIANCE" && mode != "GOVERNANCE" {
        return Err(s3_error!(
            InvalidArgument,
            "unknown object lock mode {mode}"
        ));
    }
    let retain_until = time::OffsetDateTime::from(until.clone());
    if retain_until <= time::OffsetDateTime::now_utc() {
        return Err(s3_error!(
            InvalidArgument,
            "the retain-until date must be in the future"
        ));
    }
    Ok(Retention {
        mode: mode.to_owned(),
        retain_until,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_chunked_is_not_kept_as_the_object_encoding() {
        assert_eq!(without_aws_chunked(Some("aws-chunked".to_owned())), None);
        assert_eq!(
            without_aws_chunked(Some("aws-chunked,gzip".to_owned())),
            Some("gzip".to_owned())
        );
        assert_eq!(
            without_aws_chunked(Some("gzip".to_owned())),
            Some("gzip".to_owned())
        );
        assert_eq!(without_aws_chunked(None), None);
    }

    #[test]
    fn content_md5() {
        // MD5("") = d41d8cd98f00b204e9800998ecf8427e
        let md5 = hex::decode("d41d8cd98f00b204e9800998ecf8427e").expect("hex");
        assert!(check_content_md5(Some("1B2M2Y8AsgTpgAmY7PhCfg=="), &md5).is_ok());
        let wrong =
            check_content_md5(Some("AAAAAAAAAAAAAAAAAAAAAA=="), &md5).expect_err("mismatch");
        assert_eq!(wrong.code(), &S3ErrorCode::BadDigest);
        let invalid = check_content_md5(Some("not*base64"), &md5).expect_err("invalid");
        assert_eq!(invalid.code(), &S3ErrorCode::InvalidDigest);
    }
}
