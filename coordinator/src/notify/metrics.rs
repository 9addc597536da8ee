//! `haven_notifications_total{event,result}`: what became of each notification, per
//! webhook it was meant for.

use haven_metrics::{Counter, Family, Registry};

use super::Event;

/// How one notification to one webhook ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// The receiver answered 2xx.
    Delivered,
    /// Out of attempts, or refused by an answer retrying cannot change.
    Failed,
    /// Never queued: the webhook's queue was full.
    Dropped,
}

impl Outcome {
    const ALL: [Outcome; 3] = [Outcome::Delivered, Outcome::Failed, Outcome::Dropped];

    fn name(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Failed => "failed",
            Outcome::Dropped => "dropped",
        }
    }
}

/// Labels of the counter.
type EventAndResult = [(&'static str, &'static str); 2];

/// The notification counters of a replica (cheap to clone: the handles point at the
/// same values).
#[derive(Debug, Clone, Default)]
pub struct NotifyMetrics {
    notifications: Family<EventAndResult, Counter>,
}

impl NotifyMetrics {
    /// Registers the counter in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        Self {
            notifications: registry.register(
                "haven_notifications",
                "Webhook notifications by event and result (delivered, failed, dropped), counted per webhook",
                Family::default(),
            ),
        }
    }

    /// Counts one notification of `event` to one webhook.
    pub(super) fn count(&self, event: Event, outcome: Outcome) {
        self.notifications
            .get_or_create(&[("event", event.name()), ("result", outcome.name())])
            .inc();
    }

    /// Exports every result of `event` at zero, so that `increase()` over the first
    /// failure sees it rise from 0.
    pub(super) fn touch(&self, event: Event) {
        for outcome in Outcome::ALL {
            let _ = self
                .notifications
                .get_or_create(&[("event", event.name()), ("result", outcome.name())]);
        }
    }
}
