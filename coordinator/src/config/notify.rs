//! `[notify]` of `coordinator.toml`: the webhooks the leader calls when a job fails
//! for good and when a VM passes its policy's RPO (`crate::notify`).
//!
//! ```toml
//! [notify]
//! cluster = "prod-eu"          # named in every notification (default "haven")
//! queue = 1000                 # notifications waiting per webhook; more are dropped
//!
//! [[notify.webhook]]
//! url = "https://hooks.example.com/haven"
//! events = ["job_failed", "rpo_breach", "rpo_recovered"]   # the default: all three
//! secret_file = "/etc/haven/webhook-secret"   # signs each request (HMAC-SHA256)
//! ca_file = "/etc/haven/hooks-ca.pem"         # CAs trusted besides the system's
//! timeout_seconds = 10                        # per attempt
//! max_attempts = 8                            # retried with exponential backoff
//! # insecure = true   # allow http:// off loopback (warned at every start)
//! ```
//!
//! A notification names VMs, hosts and errors, and a forged one could page an
//! operator for nothing, so `http://` is accepted only to loopback, or with
//! `insecure = true`, which is logged as a warning at every start; a secret lets the
//! receiver check who sent it. The checks here read no file, so `--check-config`
//! works on a machine that does not hold the secret; the files are read when the
//! coordinator starts. Errors name a webhook by its position and its URL's origin,
//! never the whole URL, whose path often is the receiver's secret.

use std::path::PathBuf;

use serde::Deserialize;

use super::is_loopback;
use crate::notify::Event;

/// Longest `timeout_seconds` accepted: a receiver slower than this holds up every
/// notification queued behind it.
const MAX_TIMEOUT_SECONDS: u64 = 300;
/// Most `max_attempts` accepted: with the backoff doubling up to its cap, 20 attempts
/// already span more than an hour.
const MAX_ATTEMPTS: u32 = 20;

/// The `[notify]` table; absent means no notification.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Name of the cluster in every notification, so one receiver can serve several.
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// Notifications waiting per webhook: the leader never waits for a receiver, so
    /// past this many a new notification is dropped (and counted).
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// The receivers.
    #[serde(default)]
    pub webhook: Vec<WebhookConfig>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            cluster: default_cluster(),
            queue: default_queue(),
            webhook: Vec::new(),
        }
    }
}

/// One `[[notify.webhook]]`: where to POST which events, and how.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `https://` (or `http://` to loopback) URL the notifications are POSTed to.
    pub url: String,
    /// Events sent to this receiver.
    #[serde(default = "all_events")]
    pub events: Vec<Event>,
    /// File holding the shared secret of the `X-Haven-Signature` header (trailing
    /// newline ignored), so the secret stays out of the configuration.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// PEM file of CAs trusted for this receiver besides the system's: a receiver
    /// with a certificate of a private CA.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Time limit of one attempt, connection included.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// Attempts per notification before it counts as failed.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Accept an `http://` URL off loopback (logged as a warning at every start).
    #[serde(default)]
    pub insecure: bool,
}

fn default_cluster() -> String {
    "haven".into()
}
fn default_queue() -> usize {
    1000
}
fn all_events() -> Vec<Event> {
    Event::ALL.to_vec()
}
fn default_timeout() -> u64 {
    10
}
fn default_attempts() -> u32 {
    8
}

impl NotifyConfig {
    /// Checks every webhook; the error names the one at fault (the caller adds the
    /// file name).
    pub fn check(&self) -> Result<(), String> {
        if self.queue == 0 {
            return Err("notify.queue must be at least 1".into());
        }
        for (index, webhook) in self.webhook.iter().enumerate() {
            webhook
                .check()
                .map_err(|error| format!("notify.webhook[{index}]: {error}"))?;
        }
        Ok(())
    }
}

impl WebhookConfig {
    /// The URL's scheme, host and port: what logs and errors show of it (the path
    /// and query often are the receiver's secret).
    pub fn origin(&self) -> String {
        match reqwest::Url::parse(&self.url) {
            Ok(url) => url.origin().ascii_serialization(),
            Err(_) => "an unparsable URL".into(),
        }
    }

    /// Whether this is plain `http://` to another host than this one: allowed only
    /// with `insecure = true`, and warned about.
    pub fn is_insecure(&self) -> bool {
        reqwest::Url::parse(&self.url).is_ok_and(|url| {
            url.scheme() == "http" && !url.host_str().is_some_and(is_loopback_host)
        })
    }

    fn check(&self) -> Result<(), String> {
        let url = reqwest::Url::parse(&self.url).map_err(|error| format!("url: {error}"))?;
        match url.scheme() {
            "https" => {}
            "http" if self.ca_file.is_some() => {
                return Err("ca_file is set but the url is http://; use https://".into());
            }
            "http" => {}
            other => return Err(format!("url: the scheme must be https://, not {other}://")),
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("url: no host".into());
        }
        if self.is_insecure() && !self.insecure {
            return Err(format!(
                "{} is plain http:// off loopback: anyone on the way could read or forge \
                 notifications; use https://, or set insecure = true",
                self.origin()
            ));
        }
        if self.events.is_empty() {
            return Err("events is empty: name at least one, or leave it out for all".into());
        }
        if !(1..=MAX_TIMEOUT_SECONDS).contains(&self.timeout_seconds) {
            return Err(format!(
                "timeout_seconds must be between 1 and {MAX_TIMEOUT_SECONDS}"
            ));
        }
        if !(1..=MAX_ATTEMPTS).contains(&self.max_attempts) {
            return Err(format!("max_attempts must be between 1 and {MAX_ATTEMPTS}"));
        }
        Ok(())
    }
}

/// [`is_loopback`] for a URL's host, whose IPv6 addresses come in brackets.
fn is_loopback_host(host: &str) -> bool {
    is_loopback(host.trim_start_matches('[').trim_end_matches(']'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NotifyConfig, String> {
        #[derive(Deserialize)]
        struct File {
            notify: NotifyConfig,
        }
        let file: File = haven_config::parse("c.toml", text)?;
        file.notify.check()?;
        Ok(file.notify)
    }

    #[test]
    fn a_webhook_gets_every_event_and_safe_defaults() {
        let config =
            parse("[notify]\n[[notify.webhook]]\nurl = \"https://h.example/x\"\n").expect("valid");
        assert_eq!(config.cluster, "haven");
        let webhook = &config.webhook[0];
        assert_eq!(webhook.events, Event::ALL.to_vec());
        assert_eq!((webhook.timeout_seconds, webhook.max_attempts), (10, 8));
        assert!(!webhook.is_insecure());
        assert_eq!(webhook.origin(), "https://h.example");
    }

    #[test]
    fn plain_http_needs_loopback_or_insecure() {
        let webhook = |url: &str, extra: &str| {
            parse(&format!(
                "[notify]\n[[notify.webhook]]\nurl = {url:?}\n{extra}"
            ))
        };
        for loopback in [
            "http://127.0.0.1:9/h",
            "http://localhost/h",
            "http://[::1]:80/h",
        ] {
            assert!(webhook(loopback, "").is_ok(), "{loopback}");
        }
        let refused = webhook("http://10.0.0.9/secret-token", "").unwrap_err();
        assert_eq!(
            refused,
            "notify.webhook[0]: http://10.0.0.9 is plain http:// off loopback: anyone on \
             the way could read or forge notifications; use https://, or set insecure = true"
        );
        let allowed = webhook("http://10.0.0.9/h", "insecure = true").unwrap();
        assert!(allowed.webhook[0].is_insecure());
    }

    #[test]
    fn mistakes_are_named() {
        let cases = [
            (
                "url = \"ftp://h/x\"",
                "url: the scheme must be https://, not ftp://",
            ),
            ("url = \"not a url\"", "url: relative URL without a base"),
            (
                "url = \"http://127.0.0.1/\"\nca_file = \"ca.pem\"",
                "ca_file is set but the url is http://; use https://",
            ),
            (
                "url = \"https://h/\"\nevents = []",
                "events is empty: name at least one, or leave it out for all",
            ),
            (
                "url = \"https://h/\"\ntimeout_seconds = 0",
                "timeout_seconds must be between 1 and 300",
            ),
            (
                "url = \"https://h/\"\nmax_attempts = 0",
                "max_attempts must be between 1 and 20",
            ),
        ];
        for (table, expected) in cases {
            let error = parse(&format!("[notify]\n[[notify.webhook]]\n{table}\n")).unwrap_err();
            assert_eq!(error, format!("notify.webhook[0]: {expected}"), "{table}");
        }
        let error =
            parse("[notify]\n[[notify.webhook]]\nurl = \"https://h/\"\nevents = [\"job_done\"]\n")
                .unwrap_err();
        assert!(
            error.starts_with("c.toml:4: unknown variant `job_done`"),
            "{error}"
        );
        assert_eq!(
            parse("[notify]\nqueue = 0\n").unwrap_err(),
            "notify.queue must be at least 1"
        );
    }
}
