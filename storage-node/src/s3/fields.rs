//! Field groups that several s3s request and response types share by name.
//!
//! s3s generates one struct per operation (`PutObjectOutput`,
//! `UploadPartOutput`, `HeadObjectOutput`, ...) with no trait over the fields
//! they have in common, so a function cannot fill or read them for every type:
//! these macros are the one place each group of fields is spelled out.

/// Builds `$target { $fields, <the five x-amz-checksum-* fields of $source>,
/// ..Default::default() }`. `$source` is any value with those fields (a
/// [`s3s::dto::Checksum`], or a request input whose fields are moved out).
macro_rules! with_checksums {
    ($target:ident { $($field:ident $(: $value:expr)?),* $(,)? } from $source:expr) => {{
        // Some targets have no fields besides these (CopyPartResult, Part).
        #[allow(clippy::needless_update)]
        let value = $target {
            $($field $(: $value)?,)*
            checksum_crc32: $source.checksum_crc32,
            checksum_crc32c: $source.checksum_crc32c,
            checksum_sha1: $source.checksum_sha1,
            checksum_sha256: $source.checksum_sha256,
            checksum_crc64nvme: $source.checksum_crc64nvme,
            ..Default::default()
        };
        value
    }};
}
pub(super) use with_checksums;

/// An [`ObjectMeta`](crate::object_file::ObjectMeta) with the content headers
/// a client sets on a new object (Content-Type, -Encoding without the
/// transfer-only `aws-chunked`, -Disposition, -Language, Cache-Control) moved
/// out of `$input`, the other `$fields`, and the rest from `$base`.
macro_rules! meta_with_content_headers {
    ($input:expr, { $($field:ident $(: $value:expr)?),* $(,)? } ..$base:expr) => {
        $crate::object_file::ObjectMeta {
            content_type: $input.content_type,
            content_encoding: $crate::s3::convert::without_aws_chunked($input.content_encoding),
            content_disposition: $input.content_disposition,
            content_language: $input.content_language,
            cache_control: $input.cache_control,
            $($field $(: $value)?,)*
            ..$base
        }
    };
}
pub(super) use meta_with_content_headers;

/// The [`IncomingBody`](super::body::IncomingBody) of a PUT object or upload
/// part request: its body, declared checksums and Content-MD5 (moved or
/// borrowed out of `$input`), its `$trailers` and the trailers its headers
/// announce. `s3s::dto::Checksum` must be in scope.
macro_rules! incoming_body {
    ($input:ident, $req_headers:expr, $trailers:expr) => {
        $crate::s3::body::IncomingBody {
            declared: $crate::s3::fields::with_checksums!(Checksum {} from $input),
            algorithm: $input.checksum_algorithm.as_ref(),
            content_md5: $input.content_md5.as_deref(),
            body: $input.body,
            trailers: $trailers,
            announced_trailer: $req_headers
                .get("x-amz-trailer")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            required: None,
            default_algorithm: None,
        }
    };
}
pub(super) use incoming_body;

/// The response to GET or HEAD of an object (`$target`), from its metadata
/// (`$meta: &ObjectMeta`), the checksums to announce and the other `$fields`.
macro_rules! object_description {
    ($target:ident { $($field:ident $(: $value:expr)?),* $(,)? }, $meta:expr, $checksum:expr) => {{
        let meta: &$crate::object_file::ObjectMeta = $meta;
        let checksum: s3s::dto::Checksum = $checksum;
        $crate::s3::fields::with_checksums!($target {
            $($field $(: $value)?,)*
            accept_ranges: Some("bytes".to_owned()),
            e_tag: Some($crate::s3::convert::etag(meta)),
            last_modified: Some($crate::s3::convert::timestamp(meta.last_modified_ns)),
            content_type: meta.content_type.clone(),
            content_encoding: meta.content_encoding.clone(),
            content_disposition: meta.content_disposition.clone(),
            content_language: meta.content_language.clone(),
            cache_control: meta.cache_control.clone(),
            metadata: (!meta.user_metadata.is_empty())
                .then(|| meta.user_metadata.clone().into_iter().collect()),
            parts_count: meta.parts_count.and_then(|n| i32::try_from(n).ok()),
            object_lock_mode: meta
                .retention
                .as_ref()
                .map(|r| s3s::dto::ObjectLockMode::from(r.mode.clone())),
            object_lock_retain_until_date: meta
                .retention
                .as_ref()
                .map(|r| s3s::dto::Timestamp::from(r.retain_until)),
            object_lock_legal_hold_status: meta
                .legal_hold
                .then(|| s3s::dto::ObjectLockLegalHoldStatus::from_static("ON")),
        } from checksum)
    }};
}
pub(super) use object_description;

/// The retention and legal hold a new object gets from a PutObject or
/// CreateMultipartUpload `$input` and its bucket's default (see
/// [`new_object_retention`](super::convert::new_object_retention)).
macro_rules! new_object_retention {
    ($bucket:expr, $input:expr) => {
        $crate::s3::convert::new_object_retention(
            $bucket,
            $input.object_lock_mode.as_ref(),
            $input.object_lock_retain_until_date.as_ref(),
            $input.object_lock_legal_hold_status.as_ref(),
        )
    };
}
pub(super) use new_object_retention;

/// Checks the If-Match, If-None-Match, If-Modified-Since and
/// If-Unmodified-Since headers of a GET or HEAD `$input` against the
/// object's `$meta` (see [`check_read_conditions`](super::convert::check_read_conditions)).
macro_rules! check_read_conditions {
    ($meta:expr, $input:expr) => {
        $crate::s3::convert::check_read_conditions(
            $meta,
            $input.if_match.as_ref(),
            $input.if_none_match.as_ref(),
            $input.if_modified_since.as_ref(),
            $input.if_unmodified_since.as_ref(),
        )
    };
}
pub(super) use check_read_conditions;

/// Checks the `x-amz-copy-source-if-*` headers of a copy `$input` (CopyObject,
/// UploadPartCopy) against the source's `$meta`: any failed condition is `412
/// PreconditionFailed`, as AWS answers copies (never `304`).
macro_rules! check_copy_source_conditions {
    ($meta:expr, $input:expr) => {
        $crate::s3::convert::check_read_conditions(
            $meta,
            $input.copy_source_if_match.as_ref(),
            $input.copy_source_if_none_match.as_ref(),
            $input.copy_source_if_modified_since.as_ref(),
            $input.copy_source_if_unmodified_since.as_ref(),
        )
        .map_err(|e| {
            if e.code() == &s3s::S3ErrorCode::NotModified {
                s3s::s3_error!(PreconditionFailed)
            } else {
                e
            }
        })
    };
}
pub(super) use check_copy_source_conditions;
