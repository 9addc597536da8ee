//! Client side of the batch existence query, for the repository code: one
//! signed request answers for up to [`KEYS_PER_REQUEST`] keys.

use std::time::Duration;

use aws_lc_rs::{digest, hmac};

/// Keys sent per request; larger batches are split.
pub const KEYS_PER_REQUEST: usize = 10_000;
/// Time limit of one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

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

/// Failures of the existence query.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
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
}

impl ClientError {
    /// Whether retrying later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport(_) => true,
            Self::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// Whether the server does not support the query (plain S3): the caller
    /// should fall back to HEAD requests.
    pub fn is_unsupported(&self) -> bool {
        matches!(self, Self::Status { status, .. } if (400..500).contains(status) && *status != 403)
    }
}

/// Asks a Haven storage node which of `keys` exist in `bucket`; the answer
/// has one entry per key, in order.
pub async fn exists_batch(
    endpoint: &str,
    bucket: &str,
    credentials: &Credentials,
    keys: &[String],
) -> Result<Vec<bool>, ClientError> {
    if let Some(bad) = keys.iter().find(|k| k.contains('\n') || k.contains('\r')) {
        return Err(ClientError::InvalidKey(bad.clone()));
    }
    let base =
        url::Url::parse(endpoint).map_err(|e| ClientError::InvalidEndpoint(e.to_string()))?;
    if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
        return Err(ClientError::InvalidEndpoint(endpoint.to_owned()));
    }
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()?;
    let mut answer = Vec::with_capacity(keys.len());
    for batch in keys.chunks(KEYS_PER_REQUEST) {
        answer.extend(query(&client, &base, bucket, credentials, batch).await?);
    }
    Ok(answer)
}

async fn query(
    client: &reqwest::Client,
    base: &url::Url,
    bucket: &str,
    credentials: &Credentials,
    keys: &[String],
) -> Result<Vec<bool>, ClientError> {
    let mut body = String::with_capacity(keys.iter().map(|k| k.len() + 1).sum());
    for key in keys {
        body.push_str(key);
        body.push('\n');
    }
    let path = format!("/{bucket}");
    let mut url = base.clone();
    url.set_path(&path);
    url.set_query(Some("haven-exists="));
    let host = match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_owned(),
        (None, _) => return Err(ClientError::InvalidEndpoint(base.to_string())),
    };
    let now = time::OffsetDateTime::now_utc();
    let signed = sign(
        credentials,
        &host,
        &path,
        "haven-exists=",
        body.as_bytes(),
        now,
    );
    let response = client
        .post(url)
        .header("host", host)
        .header("x-amz-date", signed.amz_date)
        .header("x-amz-content-sha256", signed.payload_hash)
        .header("authorization", signed.authorization)
        .body(body)
        .send()
        .await?;
    let status = response.status().as_u16();
    let text = response.text().await?;
    if status != 200 {
        return Err(ClientError::Status { status, body: text });
    }
    let answer: Vec<bool> = text
        .lines()
        .map(|line| match line {
            "1" => Ok(true),
            "0" => Ok(false),
            other => Err(ClientError::Protocol(format!("unexpected line {other:?}"))),
        })
        .collect::<Result<_, _>>()?;
    if answer.len() != keys.len() {
        return Err(ClientError::Protocol(format!(
            "{} answers for {} keys",
            answer.len(),
            keys.len()
        )));
    }
    Ok(answer)
}

/// Headers of a SigV4-signed request.
struct Signed {
    amz_date: String,
    payload_hash: String,
    authorization: String,
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
        .as_ref()
        .to_vec()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data))
}

/// AWS Signature Version 4 for a POST with the given path and canonical query.
fn sign(
    credentials: &Credentials,
    host: &str,
    path: &str,
    canonical_query: &str,
    body: &[u8],
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
    let payload_hash = sha256_hex(body);
    let signed_headers = "host;x-amz-content-sha256;x-amz-date";
    let canonical_request = format!(
        "POST\n{path}\n{canonical_query}\nhost:{host}\nx-amz-content-sha256:{payload_hash}\nx-amz-date:{amz_date}\n\n{signed_headers}\n{payload_hash}"
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
    use super::*;

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
