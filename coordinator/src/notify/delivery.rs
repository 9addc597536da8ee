//! One webhook's delivery task: POSTs the notifications of its queue in order,
//! signs them, and retries with backoff (see `crate::notify` for the rules).

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::hmac;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::metrics::{NotifyMetrics, Outcome};
use super::{Event, Notification, NotifyError, backoff};
use crate::config::WebhookConfig;

/// Header naming the event (`job_failed`, ...).
pub const EVENT_HEADER: &str = "x-haven-event";
/// Header holding the notification's `id`, the receiver's key against duplicates.
pub const DELIVERY_HEADER: &str = "x-haven-delivery";
/// Header holding the attempt's Unix seconds, covered by the signature.
pub const TIMESTAMP_HEADER: &str = "x-haven-timestamp";
/// Header holding `sha256=HEX`, the HMAC-SHA256 of `TIMESTAMP.BODY`.
pub const SIGNATURE_HEADER: &str = "x-haven-signature";

/// Longest wait for a connection, within the attempt's own time limit.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A notification encoded once for every webhook and attempt.
#[derive(Debug)]
pub(super) struct Outgoing {
    pub event: Event,
    pub id: String,
    body: Vec<u8>,
}

impl Outgoing {
    /// Encodes `notification`.
    pub(super) fn new(notification: &Notification) -> Result<Self, serde_json::Error> {
        Ok(Self {
            event: notification.event,
            id: notification.id.clone(),
            body: serde_json::to_vec(notification)?,
        })
    }
}

/// What one attempt's answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// 2xx.
    Delivered,
    /// Worth another attempt, for this reason.
    Retry(String),
    /// Refused in a way another attempt would repeat, for this reason.
    Final(String),
}

/// The verdict of an HTTP answer: 2xx delivers; a timeout (408), "too early" (425),
/// throttling (429) and server errors may pass; anything else, redirects included
/// (they are not followed), would be answered the same way again.
pub(super) fn classify(status: StatusCode) -> Verdict {
    if status.is_success() {
        return Verdict::Delivered;
    }
    let reason = format!("the receiver answered {status}");
    match status.as_u16() {
        408 | 425 | 429 | 500..=599 => Verdict::Retry(reason),
        _ => Verdict::Final(reason),
    }
}

/// `sha256=HEX`: the HMAC-SHA256 under `key` of `TIMESTAMP.BODY`.
pub(super) fn signature(key: &hmac::Key, timestamp: u64, body: &[u8]) -> String {
    let mut context = hmac::Context::with_key(key);
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    format!("sha256={}", hex::encode(context.sign().as_ref()))
}

/// A receiver and how to reach it.
pub(super) struct Webhook {
    /// Scheme, host and port, for logs (the path may be a secret).
    origin: String,
    url: reqwest::Url,
    client: reqwest::Client,
    secret: Option<hmac::Key>,
    max_attempts: u32,
}

impl Webhook {
    /// Reads the files of `config` (the `index`-th webhook) and builds its client.
    pub(super) fn new(index: usize, config: &WebhookConfig) -> Result<Self, NotifyError> {
        let url = reqwest::Url::parse(&config.url).map_err(|error| NotifyError::Url {
            index,
            reason: error.to_string(),
        })?;
        let secret = match &config.secret_file {
            Some(path) => Some(hmac::Key::new(
                hmac::HMAC_SHA256,
                &read_secret(index, path)?,
            )),
            None => None,
        };
        let roots = match &config.ca_file {
            Some(path) => read_roots(index, path)?,
            None => Vec::new(),
        };
        let timeout = Duration::from_secs(config.timeout_seconds);
        let client = reqwest::Client::builder()
            .tls_certs_merge(roots)
            .https_only(url.scheme() == "https")
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT.min(timeout))
            .timeout(timeout)
            .user_agent(concat!("haven-coordinator/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| NotifyError::Client { index, source })?;
        Ok(Self {
            origin: config.origin(),
            url,
            client,
            secret,
            max_attempts: config.max_attempts,
        })
    }

    /// Delivers what arrives in `queue`, one notification after the other, until
    /// the queue closes or `shutdown` (which abandons the notification in hand).
    pub(super) async fn run(
        self,
        mut queue: mpsc::Receiver<Arc<Outgoing>>,
        metrics: NotifyMetrics,
        shutdown: CancellationToken,
    ) {
        loop {
            let outgoing = tokio::select! {
                _ = shutdown.cancelled() => return,
                next = queue.recv() => match next {
                    Some(outgoing) => outgoing,
                    None => return,
                },
            };
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return,
                outcome = self.deliver(&outgoing) => outcome,
            };
            metrics.count(outgoing.event, outcome);
        }
    }

    /// Attempts `outgoing` until it is delivered, refused, or out of attempts.
    async fn deliver(&self, outgoing: &Outgoing) -> Outcome {
        let mut attempt = 1;
        let (outcome, said) = loop {
            match self.attempt(outgoing).await {
                Verdict::Delivered => {
                    break (Outcome::Delivered, "notification delivered".to_string());
                }
                Verdict::Final(reason) => {
                    break (
                        Outcome::Failed,
                        format!("notification refused, not retried: {reason}"),
                    );
                }
                Verdict::Retry(reason) if attempt >= self.max_attempts => {
                    break (
                        Outcome::Failed,
                        format!("notification not delivered, out of attempts: {reason}"),
                    );
                }
                Verdict::Retry(reason) => {
                    let pause = backoff::delay(attempt, rand::random());
                    tracing::info!(
                        webhook = self.origin,
                        id = outgoing.id,
                        attempt,
                        retry_in_ms = pause.as_millis() as u64,
                        "notification attempt failed: {reason}"
                    );
                    tokio::time::sleep(pause).await;
                    attempt += 1;
                }
            }
        };
        let (webhook, id) = (&self.origin, &outgoing.id);
        if matches!(outcome, Outcome::Delivered) {
            tracing::info!(webhook, id, attempt, "{said}");
        } else {
            tracing::warn!(webhook, id, attempt, "{said}");
        }
        outcome
    }

    /// One POST of `outgoing`.
    async fn attempt(&self, outgoing: &Outgoing) -> Verdict {
        let timestamp = crate::model::now_ms() / 1000;
        let mut request = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(EVENT_HEADER, outgoing.event.name())
            .header(TIMESTAMP_HEADER, timestamp)
            .body(outgoing.body.clone());
        // Ids are made of names Haven validated (printable, no control character).
        if let Ok(id) = HeaderValue::from_str(&outgoing.id) {
            request = request.header(DELIVERY_HEADER, id);
        }
        if let Some(key) = &self.secret {
            request = request.header(SIGNATURE_HEADER, signature(key, timestamp, &outgoing.body));
        }
        match request.send().await {
            Ok(response) => classify(response.status()),
            Err(error) => Verdict::Retry(describe(error)),
        }
    }
}

/// A transport error with its causes, without the URL reqwest would print (its path
/// may be the receiver's secret).
fn describe(error: reqwest::Error) -> String {
    if error.is_timeout() {
        return "no answer in time".into();
    }
    haven_proto::error_chain(&error.without_url())
}

/// The secret of `secret_file`: its bytes without a trailing newline, never empty.
fn read_secret(index: usize, path: &std::path::Path) -> Result<Vec<u8>, NotifyError> {
    let mut secret = std::fs::read(path).map_err(|source| NotifyError::Unreadable {
        index,
        field: "secret_file",
        path: path.to_path_buf(),
        source,
    })?;
    for ending in [b'\n', b'\r'] {
        if secret.last() == Some(&ending) {
            secret.pop();
        }
    }
    if secret.is_empty() {
        return Err(NotifyError::Unusable {
            index,
            field: "secret_file",
            path: path.to_path_buf(),
            reason: "is empty".into(),
        });
    }
    Ok(secret)
}

/// The certificates of `ca_file`, at least one.
fn read_roots(
    index: usize,
    path: &std::path::Path,
) -> Result<Vec<reqwest::Certificate>, NotifyError> {
    let pem = std::fs::read(path).map_err(|source| NotifyError::Unreadable {
        index,
        field: "ca_file",
        path: path.to_path_buf(),
        source,
    })?;
    let unusable = |reason: String| NotifyError::Unusable {
        index,
        field: "ca_file",
        path: path.to_path_buf(),
        reason,
    };
    let roots =
        reqwest::Certificate::from_pem_bundle(&pem).map_err(|error| unusable(error.to_string()))?;
    if roots.is_empty() {
        return Err(unusable("holds no PEM certificate".into()));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_that_may_change_are_retried_the_others_are_final() {
        // (status, expected: None delivered, Some(true) retried, Some(false) final)
        let cases = [
            (200, None),
            (204, None),
            (301, Some(false)),
            (400, Some(false)),
            (401, Some(false)),
            (404, Some(false)),
            (408, Some(true)),
            (425, Some(true)),
            (429, Some(true)),
            (500, Some(true)),
            (503, Some(true)),
        ];
        for (status, expected) in cases {
            let verdict = classify(StatusCode::from_u16(status).unwrap());
            let retried = match verdict {
                Verdict::Delivered => None,
                Verdict::Retry(_) => Some(true),
                Verdict::Final(_) => Some(false),
            };
            assert_eq!(retried, expected, "{status}");
        }
        assert_eq!(
            classify(StatusCode::SERVICE_UNAVAILABLE),
            Verdict::Retry("the receiver answered 503 Service Unavailable".into())
        );
    }

    #[test]
    fn the_signature_covers_the_timestamp_and_the_body() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        let signed = |timestamp, body: &[u8]| signature(&key, timestamp, body);
        // As a receiver computes it: Python's
        // hmac.new(b"Jefe", b'1700000000.{"version":1}', hashlib.sha256).hexdigest()
        assert_eq!(
            signed(1_700_000_000, br#"{"version":1}"#),
            "sha256=11c6a57e329385bb25185175112f9105b5e1927c400fbcc7bc64da526d7232c5"
        );
        assert_ne!(signed(1, b"{}"), signed(2, b"{}"));
        assert_ne!(signed(1, b"{}"), signed(1, b"[]"));
    }
}
