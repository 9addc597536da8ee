//! What the leader hands to the webhooks besides the failures `State::stopped`
//! notifies as they happen: RPO crossings, looked for in the tick every
//! [`RPO_CHECK_INTERVAL_MS`], and, when a term starts, the recent failures a previous
//! leader may have died before delivering (`crate::notify` explains why delivery is
//! at least once).

use std::sync::PoisonError;

use super::Leader;
use super::state::State;
use super::summary::summarize;
use crate::model::{JobRecord, JobState};
use crate::notify::{Event, Notifier, REPLAY_WINDOW_MS, RpoWatch};

/// Pause between two RPO checks. A check is one pass over the cache, as a scrape of
/// `/metrics` is, under the state lock: rarer than every tick, and a breach is a
/// matter of minutes or hours.
pub(super) const RPO_CHECK_INTERVAL_MS: u64 = 10_000;

/// The breaches announced in this term and the time of the next check.
#[derive(Debug, Default)]
pub(super) struct RpoCheck {
    watch: RpoWatch,
    next_ms: u64,
}

impl Leader {
    /// Notifies the VMs that crossed their RPO since the last check, if a webhook
    /// wants RPO events and a check is due at `now_ms`.
    pub(super) fn watch_rpo(&self, now_ms: u64) {
        let notifier = &self.settings.notifier;
        if !notifier.wants(Event::RpoBreach) && !notifier.wants(Event::RpoRecovered) {
            return;
        }
        // Lock order: `rpo_watch`, then `state`.
        let mut check = self
            .rpo_watch
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if now_ms < check.next_ms {
            return;
        }
        check.next_ms = now_ms + RPO_CHECK_INTERVAL_MS;
        let changes = {
            let state = self.state();
            let mut changes = check.watch.observe(&summarize(&state, now_ms));
            for change in &mut changes {
                change.host = state.vms.get(&change.vm).map(|vm| vm.host.clone());
                change.repository = state
                    .policies
                    .get(&change.policy)
                    .map(|policy| policy.repository.clone());
            }
            changes
        };
        notifier.rpo_changes(&changes, now_ms);
    }
}

/// Notifies again the jobs of `state` that failed within [`REPLAY_WINDOW_MS`] of
/// `now_ms`: called when a term starts.
pub(super) fn replay_failures(state: &State, notifier: &Notifier, now_ms: u64) {
    if !notifier.wants(Event::JobFailed) {
        return;
    }
    for job in recent_failures(state, now_ms) {
        notifier.job_failed(job);
    }
}

/// The jobs that failed within [`REPLAY_WINDOW_MS`] of `now_ms`, oldest first.
fn recent_failures(state: &State, now_ms: u64) -> Vec<&JobRecord> {
    let since = now_ms.saturating_sub(REPLAY_WINDOW_MS);
    let mut recent: Vec<&JobRecord> = state
        .jobs
        .values()
        .filter(|job| job.state == JobState::Failed && job.finished_unix_ms >= since)
        .collect();
    recent.sort_by_key(|job| (job.finished_unix_ms, job.id.as_str()));
    recent
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leader::fixtures::{finished_job, state_with};

    #[test]
    fn a_new_leader_replays_the_failures_of_the_window_only() {
        let now = 100 * 60_000;
        let jobs = [
            finished_job("old", JobState::Failed, now - REPLAY_WINDOW_MS - 1),
            finished_job("edge", JobState::Failed, now - REPLAY_WINDOW_MS),
            finished_job("recent", JobState::Failed, now - 1),
            finished_job("earlier", JobState::Failed, now - 60_000),
            finished_job("fine", JobState::Succeeded, now - 1),
        ];
        let state = state_with(&[], &[], &jobs);
        let ids: Vec<&str> = recent_failures(&state, now)
            .into_iter()
            .map(|job| job.id.as_str())
            .collect();
        assert_eq!(ids, ["edge", "earlier", "recent"]);
    }
}
