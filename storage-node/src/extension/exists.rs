//! The batch chunk-existence query, `POST /{bucket}?haven-exists`.
//!
//! Deduplication asks whether thousands of chunks exist before uploading; one
//! HEAD per chunk would cost a round trip each. The request body is
//! newline-separated object keys; the response body has one line per key, in
//! order: `1` if the object exists, `0` if not.

use s3s::{Body, S3Response, S3Result};

use crate::store::Store;

/// Query parameter that selects the existence query.
pub const EXISTS_QUERY: &str = "haven-exists";

/// Answers which of `keys` exist in `bucket`.
pub async fn answer(store: &Store, bucket: &str, keys: Vec<String>) -> S3Result<S3Response<Body>> {
    let found = store.exists_many(bucket, keys).await?;
    Ok(super::yes_no_lines(found.into_iter()))
}
