//! ListObjects (v1) and ListObjectsV2 as AWS answers them: `encoding-type=url`
//! encodes every key-like element of the reply, owners are listed on request
//! (v2 `fetch-owner`) or always (v1), and continuation tokens are opaque.
//!
//! With `encoding-type=url` AWS encodes keys as an HTML form does: a space
//! becomes `+`, `/` and `[A-Za-z0-9.*_-]` stay literal, every other byte is
//! `%XX` (UTF-8). boto3 always asks for it and decodes with `unquote_plus`, so
//! a raw `+` in a key would come back to it as a space and the object could
//! not be deleted by the name listed.

use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, s3_error};

use super::HavenS3;
use super::convert;
use crate::store::{ListEntry, ListPage, ListRequest};

/// Largest page a listing returns (the S3 limit).
const MAX_KEYS: i32 = 1000;

/// The one `encoding-type` value S3 defines.
const ENCODING_URL: &str = "url";

/// Version tag of continuation tokens, so a token of another format is refused
/// instead of misread.
const TOKEN_VERSION: &str = "1";

/// Whether a reply's key-like elements are URL-encoded; any other value than
/// `url` is refused as AWS does.
fn encodes(encoding_type: Option<&EncodingType>) -> S3Result<bool> {
    match encoding_type.map(EncodingType::as_str) {
        None => Ok(false),
        Some(ENCODING_URL) => Ok(true),
        Some(other) => Err(s3_error!(
            InvalidArgument,
            "Invalid Encoding Method specified in Request: {other:?} (only \"url\" is defined)"
        )),
    }
}

/// `text` encoded as AWS encodes keys for `encoding-type=url`.
pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'*' | b'_' | b'-' | b'/' => {
                out.push(char::from(byte));
            }
            b' ' => out.push('+'),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

/// Applies the reply's encoding to one element.
fn encoded(text: Option<String>, encode: bool) -> Option<String> {
    if encode {
        text.map(|t| url_encode(&t))
    } else {
        text
    }
}

/// An opaque continuation token for resuming after `key`.
pub(crate) fn token_for(key: &str) -> String {
    format!("{TOKEN_VERSION}{}", hex::encode(key.as_bytes()))
}

/// The key a continuation token resumes after; a token this node did not
/// issue is `InvalidArgument`, as on AWS.
pub(crate) fn key_of_token(token: &str) -> S3Result<String> {
    token
        .strip_prefix(TOKEN_VERSION)
        .and_then(|hex_key| hex::decode(hex_key).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| {
            s3_error!(
                InvalidArgument,
                "The continuation token provided is incorrect"
            )
        })
}

fn page_size(max_keys: Option<i32>) -> S3Result<i32> {
    match max_keys {
        None => Ok(MAX_KEYS),
        Some(n) if n < 0 => Err(s3_error!(
            InvalidArgument,
            "max-keys must be between 0 and 2147483647"
        )),
        Some(n) => Ok(n.min(MAX_KEYS)),
    }
}

/// A delimiter that groups: an empty one is no delimiter (AWS then leaves
/// the element out of the reply).
fn delimiter(value: Option<String>) -> Option<String> {
    value.filter(|d| !d.is_empty())
}

/// The owner listed with objects: the node has one account, whose name for a
/// client is the access key it signs with (as ListBuckets reports it).
fn owner<T>(s3: &HavenS3, req: &S3Request<T>) -> S3Result<Owner> {
    let key = s3.key(req)?;
    Ok(Owner {
        display_name: Some(key.access_key.clone()),
        id: Some(key.access_key.clone()),
    })
}

/// A page split into objects and common prefixes, with the last name (the
/// resume point).
struct Split {
    objects: Vec<Object>,
    prefixes: Vec<CommonPrefix>,
    last: Option<String>,
}

fn split(page: ListPage, encode: bool, owner: Option<&Owner>) -> Split {
    let last = page.entries.last().map(|e| e.name().to_owned());
    let mut objects = Vec::new();
    let mut prefixes = Vec::new();
    for entry in page.entries {
        match entry {
            ListEntry::Object(key, meta) => objects.push(Object {
                key: encoded(Some(key), encode),
                size: i64::try_from(meta.size).ok(),
                e_tag: Some(convert::etag(&meta)),
                last_modified: Some(convert::timestamp(meta.last_modified_ns)),
                storage_class: Some(ObjectStorageClass::from_static(
                    ObjectStorageClass::STANDARD,
                )),
                owner: owner.cloned(),
                ..Default::default()
            }),
            ListEntry::Prefix(prefix) => prefixes.push(CommonPrefix {
                prefix: encoded(Some(prefix), encode),
            }),
        }
    }
    Split {
        objects,
        prefixes,
        last,
    }
}

pub async fn list_objects_v2(
    s3: &HavenS3,
    req: S3Request<ListObjectsV2Input>,
) -> S3Result<S3Response<ListObjectsV2Output>> {
    let owner = if req.input.fetch_owner == Some(true) {
        Some(owner(s3, &req)?)
    } else {
        None
    };
    let input = req.input;
    let encode = encodes(input.encoding_type.as_ref())?;
    let max_keys = page_size(input.max_keys)?;
    let resume = input
        .continuation_token
        .as_deref()
        .map(key_of_token)
        .transpose()?;
    let after = match (input.start_after.clone(), resume) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
    .filter(|a| !a.is_empty());
    let delimiter = delimiter(input.delimiter);
    let request = ListRequest {
        prefix: input.prefix.clone().unwrap_or_default(),
        delimiter: delimiter.clone(),
        after,
        max_keys: usize::try_from(max_keys).unwrap_or(0),
    };
    let page = s3.store.list(&input.bucket, request).await?;
    let truncated = page.truncated;
    let count = page.entries.len();
    let split = split(page, encode, owner.as_ref());
    Ok(S3Response::new(ListObjectsV2Output {
        name: Some(input.bucket),
        prefix: encoded(Some(input.prefix.unwrap_or_default()), encode),
        delimiter: encoded(delimiter, encode),
        max_keys: Some(max_keys),
        key_count: i32::try_from(count).ok(),
        is_truncated: Some(truncated),
        contents: Some(split.objects),
        common_prefixes: (!split.prefixes.is_empty()).then_some(split.prefixes),
        continuation_token: input.continuation_token,
        next_continuation_token: split.last.filter(|_| truncated).map(|k| token_for(&k)),
        start_after: encoded(input.start_after, encode),
        encoding_type: input.encoding_type,
        ..Default::default()
    }))
}

pub async fn list_objects(
    s3: &HavenS3,
    req: S3Request<ListObjectsInput>,
) -> S3Result<S3Response<ListObjectsOutput>> {
    // ListObjects (v1) lists every object's owner.
    let owner = owner(s3, &req)?;
    let input = req.input;
    let encode = encodes(input.encoding_type.as_ref())?;
    let max_keys = page_size(input.max_keys)?;
    let delimiter = delimiter(input.delimiter);
    let request = ListRequest {
        prefix: input.prefix.clone().unwrap_or_default(),
        delimiter: delimiter.clone(),
        after: input.marker.clone().filter(|m| !m.is_empty()),
        max_keys: usize::try_from(max_keys).unwrap_or(0),
    };
    let page = s3.store.list(&input.bucket, request).await?;
    let truncated = page.truncated;
    let split = split(page, encode, Some(&owner));
    Ok(S3Response::new(ListObjectsOutput {
        name: Some(input.bucket),
        prefix: encoded(Some(input.prefix.unwrap_or_default()), encode),
        delimiter: encoded(delimiter, encode),
        marker: encoded(Some(input.marker.unwrap_or_default()), encode),
        max_keys: Some(max_keys),
        is_truncated: Some(truncated),
        contents: Some(split.objects),
        common_prefixes: (!split.prefixes.is_empty()).then_some(split.prefixes),
        next_marker: encoded(split.last.filter(|_| truncated), encode),
        encoding_type: input.encoding_type,
        ..Default::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_keys_as_aws_does() {
        // Pairs AWS answers (measured on S3 with encoding-type=url).
        let table = [
            ("a b.txt", "a+b.txt"),
            ("a+b.txt", "a%2Bb.txt"),
            ("100%.csv", "100%25.csv"),
            ("한글/x.txt", "%ED%95%9C%EA%B8%80/x.txt"),
            ("run books/", "run+books/"),
            ("a/../b", "a/../b"),
            ("tab\there&<x>", "tab%09here%26%3Cx%3E"),
        ];
        for (key, want) in table {
            assert_eq!(url_encode(key), want, "{key:?}");
        }
    }

    #[test]
    fn continuation_tokens_round_trip_and_foreign_ones_are_refused() {
        for key in ["", "a", "a b+c/%/..", "ü\u{1}"] {
            assert_eq!(key_of_token(&token_for(key)).expect("own token"), key);
        }
        for foreign in ["chunks/02", "1zz", "2abcd", "1ff"] {
            let error = key_of_token(foreign).expect_err(foreign);
            assert_eq!(error.code(), &s3s::S3ErrorCode::InvalidArgument);
        }
    }

    #[test]
    fn only_url_encoding_is_accepted() {
        assert!(!encodes(None).expect("none"));
        assert!(encodes(Some(&EncodingType::from_static("url"))).expect("url"));
        let error = encodes(Some(&EncodingType::from("base64".to_owned()))).expect_err("other");
        assert_eq!(error.code(), &s3s::S3ErrorCode::InvalidArgument);
    }
}
