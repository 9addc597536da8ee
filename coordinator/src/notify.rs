//! Notifications by webhook: a JSON POST when a job fails for good and when a VM
//! passes its policy's RPO without a successful backup (and, if asked, when it is
//! back within it).
//!
//! ```text
//!  leader (State::stopped, tick)            one task per webhook
//!   │ Notifier::job_failed / rpo_changes     ┌──────────────────────────────┐
//!   └──try_send──▶ bounded queue ──────────▶ │ POST, retry with backoff and │──▶ receiver
//!        (full: dropped, counted)            │ jitter, up to max_attempts   │
//!                                            └──────────────────────────────┘
//! ```
//!
//! Invariants:
//!
//! - **Off the hot path.** The leader only serializes a notification and offers it to
//!   each subscribed webhook's bounded queue (`try_send`, under the state lock at
//!   most); it never waits for a receiver. A full queue drops the notification and
//!   counts it (`haven_notifications_total{result="dropped"}`).
//! - **One task per webhook**, so a slow or dead receiver delays only its own
//!   notifications, which it delivers in order.
//! - **Retries** on a network error, a timeout, 408, 425, 429 and 5xx, with
//!   exponential backoff and jitter (`backoff.rs`), up to `max_attempts`; any other
//!   answer (3xx, 4xx) is final: redirects are not followed, and a receiver that
//!   refuses a request will refuse it again.
//! - **Only the leader produces events**: job failures where the cache learns a job
//!   stopped (`State::stopped`, reached only after the leader's fenced write), RPO
//!   crossings in the leader's tick (`leader/notices.rs`). A replica that steps down
//!   still delivers what it had queued.
//! - **At least once across leader changes, not exactly once.** Queues live in
//!   memory. A new leader sends again the failures of jobs that ended in the last
//!   [`REPLAY_WINDOW_MS`] (the old leader may have died before delivering them) and
//!   every RPO breach still in progress (it does not know which were announced).
//!   Each notification carries an `id` that is the same whichever leader sends it
//!   (`job_failed/JOB`, `rpo_breach/VM/LAST_SUCCESS`), so receivers can drop
//!   duplicates. A failure older than the window when a leader takes over, or a
//!   breach that ended while no replica led, is not notified.
//! - **Authenticity**: with a `secret_file`, every request carries
//!   `X-Haven-Signature: sha256=HEX`, the HMAC-SHA256 of `TIMESTAMP.BODY` under the
//!   secret, `TIMESTAMP` being the `X-Haven-Timestamp` header (Unix seconds of the
//!   attempt), so a receiver can refuse forged and replayed requests.
//!
//! The payload is versioned (`"version": 1`); fields are only ever added within a
//! version. `docs/notifications.md` shows one.

mod backoff;
mod delivery;
mod metrics;
mod payload;
mod rpo;

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::NotifyConfig;
use crate::model::JobRecord;

pub use metrics::NotifyMetrics;
pub use payload::{JobFacts, Notification, RpoFacts};
pub(crate) use rpo::{RpoChange, RpoWatch};

use delivery::{Outgoing, Webhook};
use metrics::Outcome;
use payload::Context;

/// How far back a new leader looks for failed jobs to notify again: longer than a
/// webhook's retries last with the default settings (about two minutes), so a failure
/// whose notification died with the old leader is sent by the next one.
pub const REPLAY_WINDOW_MS: u64 = 10 * 60 * 1000;

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A job failed for good: out of attempts, or failed in a way retrying cannot fix.
    JobFailed,
    /// A VM passed its policy's RPO without a successful backup.
    RpoBreach,
    /// A VM in breach is within its RPO again (a backup succeeded).
    RpoRecovered,
}

impl Event {
    /// Every event, in the order of the documentation.
    pub const ALL: [Event; 3] = [Event::JobFailed, Event::RpoBreach, Event::RpoRecovered];

    /// The name in payloads, headers, metrics and `coordinator.toml`.
    pub fn name(self) -> &'static str {
        match self {
            Event::JobFailed => "job_failed",
            Event::RpoBreach => "rpo_breach",
            Event::RpoRecovered => "rpo_recovered",
        }
    }
}

/// Why the notifier could not start.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// A file named by a webhook could not be read.
    #[error("notify.webhook[{index}].{field} {}: {source}", path.display())]
    Unreadable {
        /// The webhook's position in the file.
        index: usize,
        /// `secret_file` or `ca_file`.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file named by a webhook holds nothing usable.
    #[error("notify.webhook[{index}].{field} {}: {reason}", path.display())]
    Unusable {
        /// The webhook's position in the file.
        index: usize,
        /// `secret_file` or `ca_file`.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A webhook's URL does not parse (`CoordinatorConfig::parse` refuses it first).
    #[error("notify.webhook[{index}].url: {reason}")]
    Url {
        /// The webhook's position in the file.
        index: usize,
        /// Why.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("notify.webhook[{index}]: {source}")]
    Client {
        /// The webhook's position in the file.
        index: usize,
        /// Why.
        source: reqwest::Error,
    },
}

/// Hands events to the webhooks' queues; cheap to clone. The default sends nothing
/// (no `[[notify.webhook]]`, tests, the scale benchmark).
#[derive(Clone, Default)]
pub struct Notifier {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    context: Context,
    queues: Vec<Queue>,
    metrics: NotifyMetrics,
}

/// One webhook's queue and what it subscribed to.
struct Queue {
    events: Vec<Event>,
    origin: String,
    sender: mpsc::Sender<Arc<Outgoing>>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let webhooks = self.inner.as_ref().map_or(0, |inner| inner.queues.len());
        f.debug_struct("Notifier")
            .field("webhooks", &webhooks)
            .finish()
    }
}

impl Notifier {
    /// Reads the webhooks' files, warns about insecure ones, and starts one delivery
    /// task per webhook, which runs until `shutdown`. `coordinator` is this replica's
    /// id, named in every notification.
    pub fn start(
        config: &NotifyConfig,
        coordinator: &str,
        metrics: NotifyMetrics,
        shutdown: &CancellationToken,
    ) -> Result<Self, NotifyError> {
        if config.webhook.is_empty() {
            return Ok(Self::default());
        }
        let mut queues = Vec::with_capacity(config.webhook.len());
        for (index, webhook_config) in config.webhook.iter().enumerate() {
            let origin = webhook_config.origin();
            if webhook_config.is_insecure() {
                tracing::warn!(
                    webhook = origin,
                    "insecure = true: notifications go over plain http:// off loopback; \
                     anyone on the way can read them and forge the receiver's answers"
                );
            }
            let webhook = Webhook::new(index, webhook_config)?;
            let (sender, receiver) = mpsc::channel(config.queue);
            for event in &webhook_config.events {
                metrics.touch(*event);
            }
            tokio::spawn(webhook.run(receiver, metrics.clone(), shutdown.clone()));
            queues.push(Queue {
                events: webhook_config.events.clone(),
                origin,
                sender,
            });
        }
        Ok(Self {
            inner: Some(Arc::new(Inner {
                context: Context {
                    cluster: config.cluster.clone(),
                    coordinator: coordinator.to_owned(),
                },
                queues,
                metrics,
            })),
        })
    }

    /// Whether any webhook takes `event`: producers skip the work otherwise.
    pub fn wants(&self, event: Event) -> bool {
        self.inner
            .as_ref()
            .is_some_and(|inner| inner.queues.iter().any(|q| q.events.contains(&event)))
    }

    /// Notifies that `job` failed for good (its state is `Failed`).
    pub(crate) fn job_failed(&self, job: &JobRecord) {
        if let Some(inner) = self.inner.as_ref().filter(|_| self.wants(Event::JobFailed)) {
            inner.send(&payload::job_failed(&inner.context, job));
        }
    }

    /// Notifies the RPO crossings `changes` seen at `now_ms`.
    pub(crate) fn rpo_changes(&self, changes: &[RpoChange], now_ms: u64) {
        let Some(inner) = &self.inner else {
            return;
        };
        for change in changes.iter().filter(|change| self.wants(change.event)) {
            inner.send(&payload::rpo_change(&inner.context, change, now_ms));
        }
    }
}

impl Inner {
    /// Offers `notification` to every queue that takes its event, never waiting.
    fn send(&self, notification: &Notification) {
        let outgoing = match Outgoing::new(notification) {
            Ok(outgoing) => Arc::new(outgoing),
            Err(error) => {
                tracing::warn!(%error, id = notification.id, "cannot encode a notification");
                return;
            }
        };
        let event = notification.event;
        for queue in self.queues.iter().filter(|q| q.events.contains(&event)) {
            if let Err(error) = queue.sender.try_send(Arc::clone(&outgoing)) {
                let why = match error {
                    mpsc::error::TrySendError::Full(_) => "its queue is full",
                    mpsc::error::TrySendError::Closed(_) => "the coordinator is stopping",
                };
                tracing::warn!(
                    webhook = queue.origin,
                    id = notification.id,
                    "notification dropped: {why}"
                );
                self.metrics.count(event, Outcome::Dropped);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leader::fixtures::assigned_job;
    use crate::model::{JobKind, JobState};

    /// The value of the sample `haven_notifications_total{LABELS}` in `text`, if any.
    fn sample(text: &str, labels: &str) -> Option<u64> {
        let prefix = format!("haven_notifications_total{{{labels}}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|value| value.parse().ok())
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_without_waiting_for_the_receiver() {
        let mut registry = haven_metrics::Registry::new();
        let metrics = NotifyMetrics::register(&mut registry);
        let config: NotifyConfig = haven_config::parse(
            "coordinator.toml",
            "queue = 1\n[[webhook]]\nurl = \"http://127.0.0.1:9/\"\nevents = [\"job_failed\"]\n",
        )
        .unwrap();
        let shutdown = CancellationToken::new();
        let notifier = Notifier::start(&config, "c1", metrics, &shutdown).unwrap();
        assert!(notifier.wants(Event::JobFailed));
        assert!(!notifier.wants(Event::RpoBreach));
        for id in ["a", "b", "c"] {
            let mut job = assigned_job(id, JobKind::Backup, "web1", "w1");
            job.state = JobState::Failed;
            notifier.job_failed(&job);
        }
        let text = registry.encode().unwrap();
        // The test's runtime runs one task at a time, so the sender has not taken
        // any while they were offered: the queue of one kept the first, and `send`
        // dropped the two others instead of waiting.
        assert_eq!(
            sample(&text, "event=\"job_failed\",result=\"dropped\""),
            Some(2),
            "{text}"
        );
        // Every result of a subscribed event is exported from 0; others not at all.
        assert_eq!(
            sample(&text, "event=\"job_failed\",result=\"delivered\""),
            Some(0)
        );
        assert!(!text.contains("rpo_breach"), "{text}");
        shutdown.cancel();
    }
}
