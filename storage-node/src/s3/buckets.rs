//! Bucket operations and listings.

use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result};

use super::HavenS3;
use super::convert;
use crate::store::{ListEntry, ListPage, ListRequest};

/// Largest page a listing returns (the S3 limit).
const MAX_KEYS: i32 = 1000;

pub async fn create_bucket(
    s3: &HavenS3,
    req: S3Request<CreateBucketInput>,
) -> S3Result<S3Response<CreateBucketOutput>> {
    let input = req.input;
    let lock = input.object_lock_enabled_for_bucket.unwrap_or(false);
    s3.store.create_bucket(&input.bucket, lock).await?;
    Ok(S3Response::new(CreateBucketOutput {
        location: Some(format!("/{}", input.bucket)),
    }))
}

pub async fn list_buckets(
    s3: &HavenS3,
    req: S3Request<ListBucketsInput>,
) -> S3Result<S3Response<ListBucketsOutput>> {
    let key = s3.key(&req)?;
    let buckets = s3
        .store
        .list_buckets()
        .await?
        .into_iter()
        .filter(|(name, _)| key.allows_bucket(name))
        .map(|(name, config)| Bucket {
            name: Some(name),
            creation_date: Some(Timestamp::from(config.created)),
            bucket_region: None,
        })
        .collect();
    Ok(S3Response::new(ListBucketsOutput {
        buckets: Some(buckets),
        owner: Some(Owner {
            display_name: Some(key.access_key.clone()),
            id: Some(key.access_key.clone()),
        }),
        ..Default::default()
    }))
}

fn page_size(max_keys: Option<i32>) -> i32 {
    max_keys.unwrap_or(MAX_KEYS).clamp(0, MAX_KEYS)
}

fn split(page: ListPage) -> (Vec<Object>, Vec<CommonPrefix>, Option<String>) {
    let last = page.entries.last().map(|e| e.name().to_owned());
    let mut objects = Vec::new();
    let mut prefixes = Vec::new();
    for entry in page.entries {
        match entry {
            ListEntry::Object(key, meta) => objects.push(Object {
                key: Some(key),
                size: i64::try_from(meta.size).ok(),
                e_tag: Some(convert::etag(&meta)),
                last_modified: Some(convert::timestamp(meta.last_modified_ns)),
                storage_class: Some(ObjectStorageClass::from_static(
                    ObjectStorageClass::STANDARD,
                )),
                ..Default::default()
            }),
            ListEntry::Prefix(prefix) => prefixes.push(CommonPrefix {
                prefix: Some(prefix),
            }),
        }
    }
    (objects, prefixes, last)
}

pub async fn list_objects_v2(
    s3: &HavenS3,
    req: S3Request<ListObjectsV2Input>,
) -> S3Result<S3Response<ListObjectsV2Output>> {
    let input = req.input;
    let max_keys = page_size(input.max_keys);
    let after = match (input.start_after.clone(), input.continuation_token.clone()) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let request = ListRequest {
        prefix: input.prefix.clone().unwrap_or_default(),
        delimiter: input.delimiter.clone(),
        after,
        max_keys: usize::try_from(max_keys).unwrap_or(0),
    };
    let page = s3.store.list(&input.bucket, request).await?;
    let truncated = page.truncated;
    let count = page.entries.len();
    let (objects, prefixes, last) = split(page);
    Ok(S3Response::new(ListObjectsV2Output {
        name: Some(input.bucket),
        prefix: input.prefix,
        delimiter: input.delimiter,
        max_keys: Some(max_keys),
        key_count: i32::try_from(count).ok(),
        is_truncated: Some(truncated),
        contents: Some(objects),
        common_prefixes: (!prefixes.is_empty()).then_some(prefixes),
        continuation_token: input.continuation_token,
        next_continuation_token: if truncated { last } else { None },
        start_after: input.start_after,
        encoding_type: input.encoding_type,
        ..Default::default()
    }))
}

pub async fn list_objects(
    s3: &HavenS3,
    req: S3Request<ListObjectsInput>,
) -> S3Result<S3Response<ListObjectsOutput>> {
    let input = req.input;
    let max_keys = page_size(input.max_keys);
    let request = ListRequest {
        prefix: input.prefix.clone().unwrap_or_default(),
        delimiter: input.delimiter.clone(),
        after: input.marker.clone().filter(|m| !m.is_empty()),
        max_keys: usize::try_from(max_keys).unwrap_or(0),
    };
    let page = s3.store.list(&input.bucket, request).await?;
    let truncated = page.truncated;
    let (objects, prefixes, last) = split(page);
    Ok(S3Response::new(ListObjectsOutput {
        name: Some(input.bucket),
        prefix: input.prefix,
        delimiter: input.delimiter,
        marker: input.marker,
        max_keys: Some(max_keys),
        is_truncated: Some(truncated),
        contents: Some(objects),
        common_prefixes: (!prefixes.is_empty()).then_some(prefixes),
        next_marker: if truncated { last } else { None },
        encoding_type: input.encoding_type,
        ..Default::default()
    }))
}
