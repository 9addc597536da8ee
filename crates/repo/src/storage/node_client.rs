//! Client side of the Haven storage node's extensions of S3 (see
//! `docs/storage-node.md`): the batch existence query
//! (`POST /{bucket}?haven-exists=`: one signed request answers for up to
//! [`KEYS_PER_REQUEST`] keys, where plain S3 needs one HEAD per key) and the
//! batch transfer used by replication ([`batch`], [`pull`]). It lives here, not in the
//! storage node, because the repository code is its user; the node's tests
//! import it from this crate.

mod batch;
mod pull;

pub use batch::{BatchReader, crc32_etag};

use std::time::Duration;

use aws_lc_rs::{digest, hmac};

/// Keys sent per request; larger batches are split.
pub const KEYS_PER_REQUEST: usize = 10_000;
/// Time limit of one request that moves little data.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The slowest rate a batch transfer is given time for. Batches share the link (up to 16
/// in flight), so this is what each gets of an 8 Mbit/s link: a 32 MiB batch may take
/// 9.5 minutes.
const SLOWEST_BATCH_RATE: u64 = 64 * 1024;
/// Time limit for connecting, so an unreachable node fails fast.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The access key pair and region used to sign requests.
#[derive(Clone)]
pub struct Credentials {
    /// Access key id.
    pub access_key: String,
    /// Secret key.
    pub secret_key: String,
    /// Region in the signature scope (the node accepts any; use its configured one).
    pub region: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// `501 Not Implemented`: the server will never answer this request, however often
/// it is sent.
const NOT_IMPLEMENTED: u16 = 501;

/// Failures of the node's extensions; callers branch on
/// [`NodeClientError::is_unsupported`] (fall back to HEAD) and
/// [`NodeClientError::is_retryable`].
#[derive(Debug, thiserror::Error)]
pub enum NodeClientError {
    /// The endpoint is not an http(s) URL with a host.
    #[error("invalid endpoint: {0}")]
    InvalidEndpoint(String),
    /// A key cannot be sent (it contains a newline).
    #[error("key cannot be queried: {0:?}")]
    InvalidKey(String),
    /// The request did not reach the node or timed out.
    #[error("request failed: {0}")]
    Transport(#[from] reqwest::Error),
    /// The node answered with an error status (for example a plain S3
    /// server without this extension answers 4xx: fall back to HEAD).
    #[error("node answered {status}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// Response body (an S3 error document).
        body: String,
    },
    /// The node answered something that is not a valid reply.
    #[error("invalid reply: {0}")]
    Protocol(String),
    /// A batch transfer stream is not well formed.
    #[error("invalid batch stream: {0}")]
    Batch(#[from] haven_node_protocol::ProtocolError),
}

impl NodeClientError {
    /// Whether retrying later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport(_) => true,
            Self::Status { status, .. } => *status >= 500 && *status != NOT_IMPLEMENTED,
            _ => false,
        }
    }

    /// Whether the server does not support the query (plain S3): the caller
    /// should fall back to HEAD requests. Plain S3 servers answer a client error, or
    /// `501 NotImplemented` (Ceph RGW does, for any POST query it does not know).
    pub fn is_unsupported(&self) -> bool {
        matches!(self, Self::Status { status, .. }
            if ((400..500).contains(status) && *status != 403) || *status == NOT_IMPLEMENTED)
    }

    /// Whether the server refused a Haven extension as such — it does not offer it,
    /// does not allow it to this key, or answered in a form the client cannot read —
    /// so a client falls back to plain S3 for good rather than for one request.
    pub fn refuses_extension(&self) -> bool {
        self.is_unsupported()
            || matches!(self, Self::Status { status: 403, .. })
            || matches!(self, Self::Protocol(_))
    }
}

/// Time limit of a batch request moving `bytes`: a fixed time limit would fail every
/// large batch on a slow link, however steadily it progresses.
fn batch_timeout(bytes: u64) -> Duration {
    REQUEST_TIMEOUT + Duration::from_secs(bytes / SLOWEST_BATCH_RATE)
}

/// A reusable connection to one bucket of a storage node (keep-alive across
/// queries, which matters when the repository asks every few milliseconds).
#[derive(Debug, Clone)]
pub struct NodeClient {
    http: reqwest::Client,
    base: url::Url,
    bucket: String,
    credentials: Credentials,
    /// Whether batch writes are sent `UNSIGNED-PAYLOAD` (see [`unsigned_is_safe`]).
    unsigned_batches: bool,
}

impl NodeClient {
    /// Prepares queries against `bucket` at `endpoint` (`http(s)://host:port`,
    /// path-style addressing).
    pub fn new(
        endpoint: &str,
        bucket: &str,
        credentials: Credentials,
    ) -> Result<Self, NodeClientError> {
        Self::with_roots(endpoint, bucket, credentials, &[])
    }

    /// [`NodeClient::new`] that also trusts the CA certificates of `ca_pem` (a PEM
    /// bundle, possibly empty) for an `https` endpoint: nodes with certificates of a
    /// private CA.
    pub fn with_roots(
        endpoint: &str,
        bucket: &str,
        credentials: Credentials,
        ca_pem: &[u8],
    ) -> Result<Self, NodeClientError> {
        let base = url::Url::parse(endpoint)
            .map_err(|e| NodeClientError::InvalidEndpoint(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err(NodeClientError::InvalidEndpoint(endpoint.to_owned()));
        }
        let roots = if ca_pem.is_empty() {
            Vec::new()
        } else {
            reqwest::Certificate::from_pem_bundle(ca_pem)?
        };
        let http = reqwest::Client::builder()
            .tls_certs_merge(roots)
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()?;
        Ok(Self {
            http,
            unsigned_batches: unsigned_is_safe(&base),
            base,
            bucket: bucket.to_owned(),
            credentials,
        })
    }

    /// Signs the body of every batch write with its SHA-256, as on a link nobody may
    /// be trusted on, whatever the endpoint; for tests of that path on loopback.
    pub fn signing_batch_payloads(mut self) -> Self {
        self.unsigned_batches = false;
        self
    }

    /// Whether batch writes go unsigned (`UNSIGNED-PAYLOAD`): over TLS or on loopback.
    pub fn sends_unsigned_batches(&self) -> bool {
        self.unsigned_batches
    }

    /// A request to this bucket with extension query `query`, signed over
    /// `payload`.
    fn post(&self, query: &str, payload: Payload<'_>) -> reqwest::RequestBuilder {
        let (url, headers) = self.signed_post(query, payload);
        let request = headers
            .into_iter()
            .fold(self.http.post(url), |request, (name, value)| {
                request.header(name, value)
            });
        // The caller's trace context (unsigned, like any header SigV4 does not list).
        match haven_telemetry::current_traceparent() {
            Some(traceparent) => request.header(haven_telemetry::TRACEPARENT, traceparent),
            None => request,
        }
    }

    /// The URL and SigV4 headers of a POST to this bucket with extension
    /// query `query`, signed over `payload`.
    fn signed_post(
        &self,
        query: &str,
        payload: Payload<'_>,
    ) -> (url::Url, [(&'static str, String); 4]) {
        let path = format!("/{}", self.bucket);
        let mut url = self.base.clone();
        url.set_path(&path);
        url.set_query(Some(query));
        let host = match url.port() {
            Some(port) => format!("{}:{port}", self.base.host_str().unwrap_or_default()),
            None => self.base.host_str().unwrap_or_default().to_owned(),
        };
        let now = time::OffsetDateTime::now_utc();
        let signed = sign("POST", &self.credentials, &host, &path, query, payload, now);
        let headers = [
            ("host", host),
            ("x-amz-date", signed.amz_date),
            ("x-amz-content-sha256", signed.payload_hash),
            ("authorization", signed.authorization),
        ];
        (url, headers)
    }

    /// Which of `keys` exist in the bucket: one answer per key, in order.
    pub async fn exists(&self, keys: &[String]) -> Result<Vec<bool>, NodeClientError> {
        check_keys(keys.iter().map(String::as_str))?;
        let mut answer = Vec::with_capacity(keys.len());
        for batch in keys.chunks(KEYS_PER_REQUEST) {
            answer.extend(query(self, batch).await?);
        }
        Ok(answer)
    }
}

/// Asks a Haven storage node which of `keys` exist in `bucket`; the answer
/// has one entry per key, in order. One-shot form of [`NodeClient`].
pub async fn exists_batch(
    endpoint: &str,
    bucket: &str,
    credentials: &Credentials,
    keys: &[String],
) -> Result<Vec<bool>, NodeClientError> {
    NodeClient::new(endpoint, bucket, credentials.clone())?
        .exists(keys)
        .await
}

/// Sends one existence query.
async fn query(client: &NodeClient, keys: &[String]) -> Result<Vec<bool>, NodeClientError> {
    let body = key_lines(keys);
    let query = "haven-exists=";
    let response = client
        .post(query, Payload::Bytes(body.as_bytes()))
        .body(body)
        .send()
        .await?;
    let text = ok_text(response).await?;
    let answer = parse_yes_no(&text)?;
    if answer.len() != keys.len() {
        return Err(NodeClientError::Protocol(format!(
            "{} answers for {} keys",
            answer.len(),
            keys.len()
        )));
    }
    Ok(answer)
}

/// Refuses keys that cannot travel one per line in a request body.
fn check_keys<'a>(keys: impl IntoIterator<Item = &'a str>) -> Result<(), NodeClientError> {
    match keys
        .into_iter()
        .find(|key| key.contains('\n') || key.contains('\r'))
    {
        Some(bad) => Err(NodeClientError::InvalidKey(bad.to_owned())),
        None => Ok(()),
    }
}

/// Keys as a request body: one per line.
fn key_lines(keys: &[String]) -> String {
    haven_node_protocol::key_lines(keys.iter().map(String::as_str))
}

/// The body of a successful response; any other status is an error.
async fn ok_text(response: reqwest::Response) -> Result<String, NodeClientError> {
    let status = response.status().as_u16();
    let text = response.text().await?;
    if status != 200 {
        return Err(NodeClientError::Status { status, body: text });
    }
    Ok(text)
}

/// Parses an answer of `1`/`0` lines.
pub(crate) fn parse_yes_no(text: &str) -> Result<Vec<bool>, NodeClientError> {
    text.lines()
        .map(|line| match line {
            "1" => Ok(true),
            "0" => Ok(false),
            other => Err(NodeClientError::Protocol(format!(
                "unexpected line {other:?}"
            ))),
        })
        .collect()
}

/// Whether a request body may travel without its SHA-256 in the signature
/// (`UNSIGNED-PAYLOAD`) to `endpoint`: over TLS, which protects it, or to a loopback
/// address, which no other machine can reach into. Anywhere else a plain-HTTP body
/// could be changed on the way under a valid signature of its headers, so it is
/// signed, and the node checks the hash (`400 XAmzContentSHA256Mismatch`).
fn unsigned_is_safe(endpoint: &url::Url) -> bool {
    if endpoint.scheme() == "https" {
        return true;
    }
    match endpoint.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// What a SigV4 signature covers of a request body.
#[derive(Clone, Copy)]
pub(crate) enum Payload<'a> {
    /// The body itself (its SHA-256).
    Bytes(&'a [u8]),
    /// A body whose SHA-256 (lowercase hex) the caller computed over its pieces.
    Sha256(&'a str),
    /// Nothing (`UNSIGNED-PAYLOAD`): for streamed bodies whose parts carry
    /// their own checksums.
    Unsigned,
}

/// Headers of a SigV4-signed request.
pub(crate) struct Signed {
    pub(crate) amz_date: String,
    pub(crate) payload_hash: String,
    pub(crate) authorization: String,
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
        .as_ref()
        .to_vec()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data))
}

/// AWS Signature Version 4 for a request with the given method, (already
/// URI-encoded) path and canonical query; also used for object-lock requests
/// (`crate::ops::protect`).
pub(crate) fn sign(
    method: &str,
    credentials: &Credentials,
    host: &str,
    path: &str,
    canonical_query: &str,
    payload: Payload<'_>,
    now: time::OffsetDateTime,
) -> Signed {
    let date = format!(
        "{:04}{:02}{:02}",
        now.year(),
        u8::from(now.month()),
        now.day()
    );
    let amz_date = format!(
        "{date}T{:02}{:02}{:02}Z",
        now.hour(),
        now.minute(),
        now.second()
    );
    let payload_hash = match payload {
        Payload::Bytes(body) => sha256_hex(body),
        Payload::Sha256(hash) => hash.to_owned(),
        Payload::Unsigned => "UNSIGNED-PAYLOAD".to_owned(),
    };
    let signed_headers = "host;x-amz-content-sha256;x-amz-date";
    let canonical_request = format!(
        "{method}\n{path}\n{canonical_query}\nhost:{host}\nx-amz-content-sha256:{payload_hash}\nx-amz-date:{amz_date}\n\n{signed_headers}\n{payload_hash}"
    );
    let scope = format!("{date}/{}/s3/aws4_request", credentials.region);
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    let mut key = hmac_sha256(
        format!("AWS4{}", credentials.secret_key).as_bytes(),
        date.as_bytes(),
    );
    for part in [credentials.region.as_str(), "s3", "aws4_request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    let signature = hex::encode(hmac_sha256(&key, string_to_sign.as_bytes()));
    let authorization = format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        credentials.access_key
    );
    Signed {
        amz_date,
        payload_hash,
        authorization,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn batch_timeouts_grow_with_the_bytes() {
        assert_eq!(super::batch_timeout(0), super::REQUEST_TIMEOUT);
        let big = super::batch_timeout(32 << 20);
        assert_eq!(
            big,
            super::REQUEST_TIMEOUT + std::time::Duration::from_secs(512)
        );
        assert!(big < haven_node_protocol::PULL_FETCH_TIMEOUT);
    }

    use super::*;

    /// Ceph RGW answers the extension queries `501 NotImplemented`: a refusal to fall
    /// back from for good, not a server error to retry.
    #[test]
    fn not_implemented_refuses_the_extension_and_is_not_retried() {
        let status = |status| NodeClientError::Status {
            status,
            body: String::new(),
        };
        for refused in [400, 403, 404, 405, 501] {
            assert!(status(refused).refuses_extension(), "{refused}");
            assert!(!status(refused).is_retryable(), "{refused}");
        }
        for transient in [500, 502, 503] {
            assert!(!status(transient).refuses_extension(), "{transient}");
            assert!(status(transient).is_retryable(), "{transient}");
        }
    }

    #[test]
    fn bodies_go_unsigned_only_over_tls_or_loopback() {
        let safe = |endpoint: &str| unsigned_is_safe(&url::Url::parse(endpoint).unwrap());
        assert!(safe("https://node.example:9000"));
        assert!(safe("http://127.0.0.1:9000"));
        assert!(safe("http://127.8.0.1:9000"));
        assert!(safe("http://[::1]:9000"));
        assert!(safe("http://localhost:9000"));
        assert!(!safe("http://10.0.0.1:9000"));
        assert!(!safe("http://node.example:9000"));
        assert!(!safe("http://localhost.example:9000"));
    }

    /// The signing key example from the AWS SigV4 documentation.
    #[test]
    fn derives_the_documented_signing_key() {
        let mut key = hmac_sha256(b"AWS4wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", b"20120215");
        for part in ["us-east-1", "iam", "aws4_request"] {
            key = hmac_sha256(&key, part.as_bytes());
        }
        assert_eq!(
            hex::encode(key),
            "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"
        );
    }
}
