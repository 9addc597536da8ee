//! Object tagging: Put/Get/DeleteObjectTagging and the `x-amz-tagging` header
//! of PutObject, CopyObject and CreateMultipartUpload, with AWS's limits (10
//! tags per object, keys of at most 128 characters, values of at most 256,
//! keys unique and non-empty) and its error, `InvalidTag`. Tags live in the
//! object's metadata, written with it or rewritten under its key's lock.

use std::collections::BTreeMap;

use s3s::dto::*;
use s3s::{S3Error, S3Request, S3Response, S3Result};

use super::HavenS3;
use super::convert;

/// Most tags an object may carry.
const MAX_TAGS: usize = 10;
/// Longest tag key, in Unicode characters.
const MAX_KEY_CHARS: usize = 128;
/// Longest tag value, in Unicode characters.
const MAX_VALUE_CHARS: usize = 256;

/// Characters AWS allows in tags besides letters, digits and white space.
const ALLOWED_PUNCTUATION: &str = "_.:/=+-@";

fn invalid_tag(message: String) -> S3Error {
    S3Error::with_message(s3s::S3ErrorCode::InvalidTag, message)
}

fn allowed(text: &str) -> bool {
    text.chars()
        .all(|c| c.is_alphanumeric() || c.is_whitespace() || ALLOWED_PUNCTUATION.contains(c))
}

/// Checks tags as AWS does and returns them keyed by name.
pub fn check_tags(
    tags: impl IntoIterator<Item = (String, String)>,
) -> S3Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (key, value) in tags {
        if key.is_empty() || !allowed(&key) {
            return Err(invalid_tag(format!(
                "The TagKey you have provided is invalid: {key:?}"
            )));
        }
        if key.chars().count() > MAX_KEY_CHARS {
            return Err(invalid_tag(format!(
                "The TagKey you have provided is too long, max {MAX_KEY_CHARS}"
            )));
        }
        if !allowed(&value) {
            return Err(invalid_tag(format!(
                "The TagValue you have provided is invalid: {value:?}"
            )));
        }
        if value.chars().count() > MAX_VALUE_CHARS {
            return Err(invalid_tag(format!(
                "The TagValue you have provided is too long, max {MAX_VALUE_CHARS}"
            )));
        }
        if out.insert(key, value).is_some() {
            return Err(invalid_tag(
                "Cannot provide multiple Tags with the same key".to_owned(),
            ));
        }
        if out.len() > MAX_TAGS {
            return Err(invalid_tag(format!(
                "Object tags cannot be greater than {MAX_TAGS}"
            )));
        }
    }
    Ok(out)
}

/// The tags of an `x-amz-tagging` header (`k1=v1&k2=v2`, URL-encoded);
/// none without the header.
pub fn from_header(header: Option<&str>) -> S3Result<BTreeMap<String, String>> {
    let Some(header) = header else {
        return Ok(BTreeMap::new());
    };
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(header.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    check_tags(pairs)
}

/// A stored tag map as an S3 tag set.
pub fn tag_set(tags: &BTreeMap<String, String>) -> TagSet {
    tags.iter()
        .map(|(key, value)| Tag {
            key: Some(key.clone()),
            value: Some(value.clone()),
        })
        .collect()
}

/// The `x-amz-tagging-count` of a GET: only when the object has tags.
pub fn count(tags: &BTreeMap<String, String>) -> Option<i32> {
    (!tags.is_empty()).then(|| i32::try_from(tags.len()).unwrap_or(i32::MAX))
}

pub async fn put(
    s3: &HavenS3,
    req: S3Request<PutObjectTaggingInput>,
) -> S3Result<S3Response<PutObjectTaggingOutput>> {
    let input = req.input;
    convert::unversioned(input.version_id.as_deref())?;
    let tags = check_tags(
        input
            .tagging
            .tag_set
            .into_iter()
            .map(|tag| (tag.key.unwrap_or_default(), tag.value.unwrap_or_default())),
    )?;
    s3.store.bucket_config(&input.bucket).await?;
    s3.store
        .update_meta(&input.bucket, &input.key, move |meta| {
            meta.tags = tags;
            Ok(())
        })
        .await?;
    Ok(S3Response::new(PutObjectTaggingOutput::default()))
}

pub async fn get(
    s3: &HavenS3,
    req: S3Request<GetObjectTaggingInput>,
) -> S3Result<S3Response<GetObjectTaggingOutput>> {
    let input = req.input;
    convert::unversioned(input.version_id.as_deref())?;
    let reader = s3.store.open_object(&input.bucket, &input.key).await?;
    Ok(S3Response::new(GetObjectTaggingOutput {
        tag_set: tag_set(&reader.meta.tags),
        version_id: None,
    }))
}

pub async fn delete(
    s3: &HavenS3,
    req: S3Request<DeleteObjectTaggingInput>,
) -> S3Result<S3Response<DeleteObjectTaggingOutput>> {
    let input = req.input;
    convert::unversioned(input.version_id.as_deref())?;
    s3.store.bucket_config(&input.bucket).await?;
    s3.store
        .update_meta(&input.bucket, &input.key, |meta| {
            meta.tags.clear();
            Ok(())
        })
        .await?;
    Ok(S3Response::new(DeleteObjectTaggingOutput::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(result: S3Result<BTreeMap<String, String>>) -> String {
        result.expect_err("refused").code().as_str().to_owned()
    }

    #[test]
    fn limits_are_aws_ones() {
        let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let ten: Vec<_> = (0..10).map(|i| pair(&format!("k{i}"), "v")).collect();
        assert_eq!(check_tags(ten.clone()).expect("ten tags").len(), 10);
        let mut eleven = ten;
        eleven.push(pair("k10", "v"));
        assert_eq!(code(check_tags(eleven)), "InvalidTag");
        let longest = pair(&"k".repeat(128), &"é".repeat(256));
        assert!(check_tags([longest]).is_ok());
        assert_eq!(
            code(check_tags([pair(&"k".repeat(129), "v")])),
            "InvalidTag"
        );
        assert_eq!(
            code(check_tags([pair("k", &"v".repeat(257))])),
            "InvalidTag"
        );
        assert_eq!(code(check_tags([pair("", "v")])), "InvalidTag");
        assert_eq!(
            code(check_tags([pair("k", "1"), pair("k", "2")])),
            "InvalidTag"
        );
        assert_eq!(code(check_tags([pair("k<", "v")])), "InvalidTag");
        assert!(check_tags([pair("Project Name:x/y=z+1@a_b.c-d", "")]).is_ok());
    }

    #[test]
    fn header_is_a_url_encoded_query() {
        let tags = from_header(Some("a=1&b%20c=x%2By&empty=")).expect("valid");
        let want: BTreeMap<String, String> = [("a", "1"), ("b c", "x+y"), ("empty", "")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(tags, want);
        assert!(from_header(None).expect("none").is_empty());
        assert!(from_header(Some("a=1&a=2")).is_err());
    }
}
