//! The batch chunk-existence query, `POST /{bucket}?haven-exists`.
//!
//! Deduplication asks whether thousands of chunks exist before uploading; one
//! HEAD per chunk would cost a round trip each. The request is an ordinary
//! SigV4-signed S3 request (so the same keys and bucket permissions apply)
//! whose body is newline-separated object keys; the response body has one
//! line per key, in order: `1` if the object exists, `0` if not. See
//! `docs/storage-node.md`.

use std::sync::Arc;

use bytes::Bytes;
use hyper::http::Extensions;
use hyper::{HeaderMap, Method, StatusCode, Uri};
use s3s::route::S3Route;
use s3s::{Body, S3Request, S3Response, S3Result, s3_error};

use crate::access::OperationSlot;
use crate::config::Config;
use crate::store::Store;

/// Query parameter that selects the existence query.
pub const EXISTS_QUERY: &str = "haven-exists";
/// Bytes allowed per key in the request body (an S3 key is at most 1024).
const MAX_BYTES_PER_KEY: usize = 1025;

/// The s3s custom route serving the existence query.
pub struct ExistsRoute {
    store: Arc<Store>,
    config: Arc<Config>,
}

impl ExistsRoute {
    /// Serves existence queries from `store` with the keys of `config`.
    pub fn new(store: Arc<Store>, config: Arc<Config>) -> Self {
        Self { store, config }
    }
}

fn bucket_of(uri: &Uri) -> Option<&str> {
    let bucket = uri.path().strip_prefix('/')?.trim_end_matches('/');
    (!bucket.is_empty() && !bucket.contains('/')).then_some(bucket)
}

fn has_exists_query(uri: &Uri) -> bool {
    uri.query().is_some_and(|q| {
        q.split('&')
            .any(|p| p == EXISTS_QUERY || p.starts_with("haven-exists="))
    })
}

#[async_trait::async_trait]
impl S3Route for ExistsRoute {
    fn is_match(
        &self,
        method: &Method,
        uri: &Uri,
        _headers: &HeaderMap,
        extensions: &mut Extensions,
    ) -> bool {
        let matched = method == Method::POST && has_exists_query(uri) && bucket_of(uri).is_some();
        if matched && let Some(slot) = extensions.get::<OperationSlot>() {
            slot.set("HavenExists");
        }
        matched
    }

    async fn call(&self, mut req: S3Request<Body>) -> S3Result<S3Response<Body>> {
        let credentials = req
            .credentials
            .as_ref()
            .ok_or_else(|| s3_error!(AccessDenied))?;
        let key = self
            .config
            .key(&credentials.access_key)
            .ok_or_else(|| s3_error!(InvalidAccessKeyId))?;
        let bucket = bucket_of(&req.uri)
            .ok_or_else(|| s3_error!(InvalidRequest))?
            .to_owned();
        if !key.allows_bucket(&bucket) {
            return Err(s3_error!(
                AccessDenied,
                "access key may not use this bucket"
            ));
        }
        let max_keys = self.config.limits.max_exists_keys;
        let body = req
            .input
            .store_all_limited(max_keys.saturating_mul(MAX_BYTES_PER_KEY))
            .await
            .map_err(|e| s3_error!(InvalidRequest, "cannot read request body: {e}"))?;
        let text = std::str::from_utf8(&body)
            .map_err(|_| s3_error!(InvalidRequest, "body must be UTF-8"))?;
        let keys: Vec<String> = text
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        if keys.len() > max_keys {
            return Err(s3_error!(
                InvalidRequest,
                "at most {max_keys} keys per request"
            ));
        }
        let found = self.store.exists_many(&bucket, keys).await?;
        let mut out = Vec::with_capacity(found.len() * 2);
        for exists in found {
            out.extend_from_slice(if exists { b"1\n" } else { b"0\n" });
        }
        let mut response = S3Response::new(Body::from(Bytes::from(out)));
        response.status = Some(StatusCode::OK);
        response.headers.insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/plain"),
        );
        Ok(response)
    }
}
