//! `POST /{bucket}?haven-batch-pull=`: fetch a batch from another node and
//! write it here, so that replication between two nodes moves each object
//! once, node to node, instead of into the client and out again.
//!
//! The request carries a batch read that the client signed for the source
//! (see `haven_node_protocol::PullRequest`); this node sends it unchanged,
//! with only the four signature headers, and only to a node listed in
//! `replication.pull_sources`, so it cannot be made to reach anything else.
//! The answer is written exactly as a batch write ([`BatchWriter`]): checked
//! against each object's CRC-32, create-only, durable before the answer.

use std::time::Duration;

use bytes::Bytes;
use haven_node_protocol::{PULL_HEADERS, PullKey, PullOutcome, PullRequest, Record};
use hyper::StatusCode;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use s3s::{Body, S3Error, S3Response, S3Result, s3_error};

use super::batch::{BatchWriter, StreamFailure};
use crate::config::{Config, ReplicationConfig};
use crate::store::Store;

/// Time allowed to connect to a source.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the next bytes of a source's answer.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes of a source's error answer kept for the message.
const ERROR_BODY_BYTES: usize = 4096;
/// Bytes allowed in a pull request per key (two keys of at most 1024 bytes
/// and JSON around them).
const REQUEST_BYTES_PER_KEY: usize = 2 * 1024 * 6 + 64;
/// Bytes allowed in a pull request besides its keys.
const REQUEST_BYTES_FIXED: usize = 64 * 1024;

/// The HTTP client this node pulls with: it never follows redirects (a
/// source could otherwise send it anywhere), and trusts `extra_roots` (the
/// `replication.pull_ca_file`) besides the system's CAs.
pub fn client(extra_roots: Vec<reqwest::Certificate>) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .tls_certs_merge(extra_roots)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .timeout(haven_node_protocol::PULL_FETCH_TIMEOUT)
        .build()
}

/// Serves one batch pull into `bucket`: a JSON array with one
/// [`PullOutcome`] per key.
pub async fn pull(
    store: &std::sync::Arc<Store>,
    config: &Config,
    http: &reqwest::Client,
    bucket: &str,
    body: &mut Body,
) -> S3Result<S3Response<Body>> {
    let max_keys = config.limits.max_batch_objects;
    let request = read_request(body, max_keys).await?;
    let url = allowed_source(&request, &config.replication)?;
    let headers = signature_headers(&request.headers)?;
    if request.keys.len() > max_keys {
        return Err(s3_error!(
            InvalidRequest,
            "at most {max_keys} objects per batch"
        ));
    }
    for key in &request.keys {
        store.object_path(bucket, &key.target)?;
    }
    // Checks the bucket before anything is fetched.
    let mut writer = BatchWriter::new(store, config, bucket).await?;
    // An empty pull still reads (an empty batch) from the source: clients use it to
    // learn whether this node can reach the source, and trusts its certificate.
    let response = http
        .post(url)
        .headers(headers)
        .body(request.source_body())
        .send()
        .await
        // `{:#}` prints the causes: reqwest's own message ("error sending request")
        // leaves out why, such as an unknown certificate issuer.
        .map_err(|e| {
            source_error(format!(
                "cannot reach the source: {:#}",
                anyhow::Error::new(e)
            ))
        })?;
    if response.status() != StatusCode::OK {
        let status = response.status();
        let text = error_text(response).await;
        return Err(source_error(format!(
            "the source answered {status}: {text}"
        )));
    }
    let mut stream = Box::pin(response.bytes_stream());
    let mut keys = request.keys.into_iter();
    writer
        .write_stream(
            &mut stream,
            |failure| match failure {
                StreamFailure::Read(e) => source_error(format!("reading the source's answer: {e}")),
                StreamFailure::Protocol(e) => source_error(format!("the source's answer: {e}")),
            },
            |writer, record| {
                let PullKey { source, target } = keys
                    .next()
                    .ok_or_else(|| source_error("the source sent more records than keys"))?;
                if record.key() != source {
                    return Err(source_error(format!(
                        "the source sent {:?} where {source:?} was due",
                        record.key()
                    )));
                }
                match record {
                    Record::Object { info, .. } => writer.begin(target, info)?,
                    Record::Missing { .. } => writer.skip(PullOutcome::Missing),
                    Record::Failed { message, .. } => {
                        writer.skip(PullOutcome::Failed { message });
                    }
                }
                Ok(())
            },
        )
        .await?;
    if let Some(missing) = keys.next() {
        return Err(source_error(format!(
            "the source's answer ended before {:?}",
            missing.source
        )));
    }
    Ok(json_response(&writer.finish().await?))
}

async fn read_request(body: &mut Body, max_keys: usize) -> S3Result<PullRequest> {
    let limit = max_keys
        .saturating_mul(REQUEST_BYTES_PER_KEY)
        .saturating_add(REQUEST_BYTES_FIXED);
    let bytes = body
        .store_all_limited(limit)
        .await
        .map_err(|e| s3_error!(InvalidRequest, "cannot read the pull request: {e}"))?;
    parse_request(&bytes)
}

/// A pull request's body, as JSON.
pub(crate) fn parse_request(bytes: &[u8]) -> S3Result<PullRequest> {
    serde_json::from_slice(bytes)
        .map_err(|e| s3_error!(InvalidRequest, "invalid pull request: {e}"))
}

/// The source URL of `request`, if it is a batch read at an allowed node.
pub(crate) fn allowed_source(
    request: &PullRequest,
    replication: &ReplicationConfig,
) -> S3Result<url::Url> {
    let url = url::Url::parse(&request.url)
        .map_err(|e| s3_error!(InvalidRequest, "pull source {:?}: {e}", request.url))?;
    let bucket = url.path().strip_prefix('/').unwrap_or_default();
    let query = format!("{}=", haven_node_protocol::BATCH_GET_QUERY);
    let plain = url.username().is_empty() && url.password().is_none() && url.fragment().is_none();
    if !plain || bucket.is_empty() || bucket.contains('/') || url.query() != Some(query.as_str()) {
        return Err(s3_error!(
            InvalidRequest,
            "pull source must be a batch read: http(s)://host[:port]/bucket?{query}"
        ));
    }
    if !replication.allows_source(&url) {
        return Err(s3_error!(
            AccessDenied,
            "this node may not pull from {}; list it in replication.pull_sources",
            url.origin().ascii_serialization()
        ));
    }
    Ok(url)
}

/// The signature headers of a pull request; any other header is refused.
pub(crate) fn signature_headers(headers: &[(String, String)]) -> S3Result<HeaderMap> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        if !PULL_HEADERS.contains(&name.as_str()) {
            return Err(s3_error!(
                InvalidRequest,
                "a pull request may carry only the headers {PULL_HEADERS:?}, not {name:?}"
            ));
        }
        let value = HeaderValue::from_str(value)
            .map_err(|_| s3_error!(InvalidRequest, "header {name} has an invalid value"))?;
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| s3_error!(InvalidRequest, "invalid header name"))?;
        if map.insert(name.clone(), value).is_some() {
            return Err(s3_error!(InvalidRequest, "header {name} is given twice"));
        }
    }
    Ok(map)
}

/// The start of an error answer, as text.
async fn error_text(mut response: reqwest::Response) -> String {
    let mut text = Vec::new();
    while text.len() < ERROR_BODY_BYTES {
        match response.chunk().await {
            Ok(Some(piece)) => text.extend_from_slice(&piece),
            _ => break,
        }
    }
    text.truncate(ERROR_BODY_BYTES);
    String::from_utf8_lossy(&text).into_owned()
}

/// A failure on the source's side: `502 HavenSourceFailed`, which a client
/// may retry.
fn source_error(message: impl Into<String>) -> S3Error {
    crate::error::custom_error("HavenSourceFailed", StatusCode::BAD_GATEWAY, message)
}

fn json_response(outcomes: &[PullOutcome]) -> S3Response<Body> {
    // A list of plain enums always serializes.
    let json = serde_json::to_vec(outcomes).unwrap_or_default();
    let mut response = S3Response::new(Body::from(Bytes::from(json)));
    response.status = Some(StatusCode::OK);
    response.headers.insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
