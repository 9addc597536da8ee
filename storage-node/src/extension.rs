//! Haven's extensions of the S3 API, served as one s3s custom route:
//!
//! - `POST /{bucket}?haven-exists=`: which of many keys exist ([`exists`]);
//! - `POST /{bucket}?haven-batch-get=` and `?haven-batch-put=`: many objects
//!   per request, for replication between nodes ([`batch`]);
//! - `POST /{bucket}?haven-batch-pull=`: fetch a batch from another node and
//!   write it here ([`pull`]).
//!
//! They are ordinary SigV4-signed requests, so the same access keys and bucket
//! permissions apply as to the S3 operations. See `docs/storage-node.md`.

mod batch;
mod exists;
pub(crate) mod pull;

pub use pull::client as pull_client;

use std::sync::Arc;

use bytes::Bytes;
use hyper::http::Extensions;
use hyper::{HeaderMap, Method, StatusCode, Uri};
use s3s::route::S3Route;
use s3s::{Body, S3Request, S3Response, S3Result, s3_error};

pub use exists::EXISTS_QUERY;
use haven_node_protocol::{BATCH_GET_QUERY, BATCH_PULL_QUERY, BATCH_PUT_QUERY};

use crate::access::OperationSlot;
use crate::config::Config;
use crate::store::Store;

/// Bytes allowed per key in a request body of keys (an S3 key is at most 1024).
const MAX_BYTES_PER_KEY: usize = 1025;

/// The extensions a request can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extension {
    Exists,
    BatchGet,
    BatchPut,
    BatchPull,
}

impl Extension {
    fn of(method: &Method, uri: &Uri) -> Option<Self> {
        if method != Method::POST || bucket_of(uri).is_none() {
            return None;
        }
        let query = uri.query()?;
        [
            (EXISTS_QUERY, Self::Exists),
            (BATCH_GET_QUERY, Self::BatchGet),
            (BATCH_PUT_QUERY, Self::BatchPut),
            (BATCH_PULL_QUERY, Self::BatchPull),
        ]
        .into_iter()
        .find(|(name, _)| has_parameter(query, name))
        .map(|(_, extension)| extension)
    }

    /// The operation name in metrics.
    fn operation(self) -> &'static str {
        match self {
            Self::Exists => "HavenExists",
            Self::BatchGet => "HavenBatchGet",
            Self::BatchPut => "HavenBatchPut",
            Self::BatchPull => "HavenBatchPull",
        }
    }
}

fn has_parameter(query: &str, name: &str) -> bool {
    query.split('&').any(|pair| {
        pair == name
            || pair
                .strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('='))
    })
}

fn bucket_of(uri: &Uri) -> Option<&str> {
    let bucket = uri.path().strip_prefix('/')?.trim_end_matches('/');
    (!bucket.is_empty() && !bucket.contains('/')).then_some(bucket)
}

/// The s3s custom route serving Haven's extensions.
pub struct ExtensionRoute {
    store: Arc<Store>,
    config: Arc<Config>,
    /// Client of batch pulls from other nodes.
    http: reqwest::Client,
}

impl ExtensionRoute {
    /// Serves the extensions from `store` with the keys of `config`; `http` (from
    /// [`pull_client`]) fetches batch pulls.
    pub fn new(store: Arc<Store>, config: Arc<Config>, http: reqwest::Client) -> Self {
        Self {
            store,
            config,
            http,
        }
    }

    /// Serves one extension request.
    async fn serve(&self, req: &mut S3Request<Body>) -> S3Result<S3Response<Body>> {
        let extension =
            Extension::of(&req.method, &req.uri).ok_or_else(|| s3_error!(InvalidRequest))?;
        let bucket = self.authorized_bucket(req, extension)?;
        let limits = &self.config.limits;
        match extension {
            Extension::Exists => {
                let keys = read_keys(&mut req.input, limits.max_exists_keys).await?;
                exists::answer(&self.store, &bucket, keys).await
            }
            Extension::BatchGet => {
                let keys = read_keys(&mut req.input, limits.max_batch_objects).await?;
                batch::get(Arc::clone(&self.store), bucket, keys).await
            }
            Extension::BatchPut => {
                let signed = payload_is_signed(&req.headers);
                batch::put(&self.store, &self.config, &bucket, &mut req.input, signed).await
            }
            Extension::BatchPull => {
                let (store, config) = (&self.store, &self.config);
                pull::pull(store, config, &self.http, &bucket, &mut req.input).await
            }
        }
    }

    /// The bucket of the request, if its access key may use it for
    /// `extension` (batch writes and pulls are create-only, so `append` is
    /// enough; the others only read).
    fn authorized_bucket(&self, req: &S3Request<Body>, extension: Extension) -> S3Result<String> {
        let credentials = req
            .credentials
            .as_ref()
            .ok_or_else(|| s3_error!(AccessDenied))?;
        let key = self
            .config
            .key(&credentials.access_key)
            .ok_or_else(|| s3_error!(InvalidAccessKeyId))?;
        let bucket = bucket_of(&req.uri).ok_or_else(|| s3_error!(InvalidRequest))?;
        if !key.allows_bucket(bucket) {
            return Err(s3_error!(
                AccessDenied,
                "access key may not use this bucket"
            ));
        }
        crate::access::check_permission(key, extension.operation())?;
        Ok(bucket.to_owned())
    }
}

/// Whether the request's signature covers its body's SHA-256 (a hex
/// `x-amz-content-sha256`), which s3s checks only once the body has been read.
fn payload_is_signed(headers: &HeaderMap) -> bool {
    headers
        .get("x-amz-content-sha256")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Reads a request body of newline-separated keys, at most `max_keys` of them.
async fn read_keys(body: &mut Body, max_keys: usize) -> S3Result<Vec<String>> {
    let bytes = body
        .store_all_limited(max_keys.saturating_mul(MAX_BYTES_PER_KEY))
        .await
        .map_err(|e| s3_error!(InvalidRequest, "cannot read request body: {e}"))?;
    let text =
        std::str::from_utf8(&bytes).map_err(|_| s3_error!(InvalidRequest, "body must be UTF-8"))?;
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
    Ok(keys)
}

/// A `text/plain` response with one line per answer: `1` yes, `0` no.
fn yes_no_lines(answers: impl ExactSizeIterator<Item = bool>) -> S3Response<Body> {
    let mut out = Vec::with_capacity(answers.len() * 2);
    for yes in answers {
        out.extend_from_slice(if yes { b"1\n" } else { b"0\n" });
    }
    let mut response = S3Response::new(Body::from(Bytes::from(out)));
    response.status = Some(StatusCode::OK);
    response.headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    response
}

#[async_trait::async_trait]
impl S3Route for ExtensionRoute {
    fn is_match(
        &self,
        method: &Method,
        uri: &Uri,
        _headers: &HeaderMap,
        extensions: &mut Extensions,
    ) -> bool {
        let Some(extension) = Extension::of(method, uri) else {
            return false;
        };
        if let Some(slot) = extensions.get::<OperationSlot>() {
            slot.set(extension.operation());
        }
        true
    }

    async fn call(&self, mut req: S3Request<Body>) -> S3Result<S3Response<Body>> {
        let result = self.serve(&mut req).await;
        if result.is_err() {
            drain(&mut req.input).await;
        }
        result
    }
}

/// Request bytes read after an error before the response goes out.
const DRAIN_BYTES: u64 = 64 * 1024 * 1024;
/// Time allowed for that.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads (and drops) what is left of a refused request's body, up to
/// [`DRAIN_BYTES`] and [`DRAIN_TIME`]: answering while the client is still
/// sending makes the kernel reset the connection, and the client would see
/// the reset instead of the error.
async fn drain(body: &mut Body) {
    use futures::StreamExt;
    let mut read = 0u64;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while read < DRAIN_BYTES {
            match body.next().await {
                Some(Ok(piece)) => read += piece.len() as u64,
                _ => return,
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_are_recognised_by_method_bucket_and_parameter() {
        let of = |method: Method, uri: &str| Extension::of(&method, &uri.parse().unwrap());
        assert_eq!(
            of(Method::POST, "/b?haven-exists="),
            Some(Extension::Exists)
        );
        assert_eq!(of(Method::POST, "/b?haven-exists"), Some(Extension::Exists));
        assert_eq!(
            of(Method::POST, "/b/?x=1&haven-batch-get="),
            Some(Extension::BatchGet)
        );
        assert_eq!(
            of(Method::POST, "/b?haven-batch-put="),
            Some(Extension::BatchPut)
        );
        assert_eq!(
            of(Method::POST, "/b?haven-batch-pull="),
            Some(Extension::BatchPull)
        );
        assert_eq!(of(Method::GET, "/b?haven-exists="), None);
        assert_eq!(of(Method::POST, "/b/key?haven-exists="), None);
        assert_eq!(of(Method::POST, "/?haven-exists="), None);
        assert_eq!(of(Method::POST, "/b?haven-existsx="), None);
        assert_eq!(of(Method::POST, "/b?delete="), None);
    }
}
