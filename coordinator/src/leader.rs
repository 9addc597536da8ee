//! The leading replica's state and every decision it makes.
//!
//! The store is the truth; the leader holds a cache of it, rebuilt from the store when
//! a replica wins the election. Every write is one store transaction that also checks
//! the leader key's revision (so a deposed leader cannot write), and a worker's commit
//! also checks the job's ownership key revision (so a worker whose job moved cannot
//! commit). Progress reports stay in memory: they are frequent, and losing them in a
//! failover costs nothing.
//!
//! # Layout
//!
//! | file | concern |
//! |---|---|
//! | `state.rs` | the cache (`State`) and loading it, counting unreadable records |
//! | `writes.rs` | store writes, each fenced by the leader key's revision |
//! | `workers.rs` | registration, heartbeats, inventory, reaping jobs of dead workers |
//! | `jobs.rs` | jobs by hand, polls, progress, failure, completion of prune/GC/replication |
//! | `assignment.rs` | the assignment plan and its two-write application |
//! | `commit.rs` | the fenced commit and the manifest's publication |
//! | `catalog.rs` | the catalog rebuilt from a repository's manifests (the DR site) |
//! | `rounds.rs` | policies, due rounds (backup and GC), follow-ups after a backup |
//! | `expiry.rs` | forgetting finished jobs after the history period |
//! | `deadline.rs` | failing jobs past their deadline, and cancelling jobs by hand |
//! | `queries.rs` | read-only views for the API, `/metrics` and GC pins |
//! | `summary.rs` | what `/metrics` exports per VM, policy, site and repository, without cloning |
//! | `job_metrics.rs` | counters of ended jobs, updated where the cache learns a job stopped |
//! | `notices.rs` | RPO breaches checked in the tick, failures replayed by a new leader (`crate::notify`) |
//! | `tick.rs` | one scheduling pass, in order |
//!
//! # Decisions and effects
//!
//! Every scheduling decision is a pure function over `State` with the
//! time passed in: which rounds are due (`rounds::due_rounds`, `rounds::gc_rounds`,
//! `rounds::round_jobs`), which follow-up jobs a backup creates
//! (`rounds::follow_up_jobs`), where pending jobs go (`assignment::plan_assignment`,
//! over `crate::placement`), which jobs of dead workers are requeued
//! (`workers::orphaned_jobs`), which finished jobs expire (`expiry::expired_jobs`),
//! which jobs are past their deadline (`deadline::overdue_jobs`), what a cancellation
//! does (`deadline::cancellation`),
//! whether a commit is accepted (`commit::accept_commit`). They are table-tested
//! beside their code. New jobs are decided as `jobs::NewJob`s, so a decision needs
//! neither the clock nor randomness; ids are drawn when they are applied. The async
//! methods only gather the state, call the decision, write the store and apply the
//! result to the cache.
//!
//! # Locking
//!
//! | lock | guards | held across store or repository I/O? |
//! |---|---|---|
//! | `mutations` (async) | the order of changes: decide from the cache, write the store, apply to the cache | yes, store writes: see below |
//! | `state` (sync) | the cache | never: its guard is not `Send`, so the compiler refuses one held across an `.await` |
//! | `publishing` (sync) | ids of manifests being published now | never |
//! | `backends` (async) | opened repository clients | never (opening a client does no I/O) |
//! | `rpo_watch` (sync) | the RPO breaches announced in this term | never |
//!
//! Order: `mutations`, then `state`, then `publishing`; `state` is never held while
//! waiting for `mutations`; `rpo_watch` is taken before `state` and never with
//! `mutations`. Notifications are only offered to bounded queues (`try_send`) under
//! these locks, never awaited.
//!
//! | operation | `mutations` | `state` | store / repository I/O |
//! |---|---|---|---|
//! | poll, progress, queries, pins | – | briefly | none |
//! | heartbeat | – | briefly, before and after | keep-alive, outside every lock |
//! | register, report inventory | held | briefly | get, lease grant, write, revoke under `mutations` |
//! | policies, manual jobs, rounds, follow-ups | held | briefly | the write under `mutations` |
//! | commit: accept | held | briefly | the fenced write under `mutations` |
//! | commit: publish the manifest | – | briefly | repository write outside every lock |
//! | commit: mark succeeded, fail, complete | held | briefly | the fenced write under `mutations` |
//! | tick: reap, deadlines, assign, expire | held | briefly | worker listing before `mutations`; writes under it |
//! | cancel | held | briefly | the write under `mutations` |
//!
//! Why writes stay under `mutations`: a decision checks the cache (the VM has no active
//! backup, the job is still `Assigned`, the ownership key is absent), and the store's
//! compares fence only leadership and ownership, not those checks. Two decisions
//! interleaving between their check and their write could create two backups of one
//! VM or accept two manifests for one job (both commits would pass the ownership
//! compare, which a commit does not change). So every decide-write-apply sequence runs
//! alone; what no longer waits for store I/O is everything that only reads the cache
//! or touches live progress: workers' polls and progress reports, the read API and
//! `/metrics`. The repository write of a manifest is idempotent (create-only, an
//! identical copy counts as success), so it runs outside every lock.

mod assignment;
mod catalog;
mod commit;
mod deadline;
mod error;
mod expiry;
#[cfg(test)]
pub(crate) mod fixtures;
mod inventory;
mod job_metrics;
mod jobs;
mod notices;
mod queries;
mod rounds;
mod state;
mod summary;
#[cfg(test)]
mod tests;
mod tick;
mod workers;
mod writes;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::Duration;

use haven_repo::Backend;
use tokio::sync::{Mutex, Notify};

use crate::model;
use crate::notify::Notifier;
use crate::store::MetaStore;

pub use assignment::Assignment;
pub use catalog::{ImportReport, MAX_IMPORT};
pub use commit::CommitRequest;
pub use error::LeaderError;
pub use job_metrics::JobMetrics;
pub use jobs::Progress;
pub use summary::{MetricsSummary, RepositorySummary, VmReplication, VmSummary};
pub use tick::TickReport;

use state::State;

type Result<T, E = LeaderError> = std::result::Result<T, E>;

/// Settings of the leader's decisions.
#[derive(Debug, Clone)]
pub struct LeaderSettings {
    /// Lease of a worker: how long it may go silent before its jobs move.
    pub worker_lease: Duration,
    /// Host limit of manual jobs, which have no policy to say it.
    pub default_max_per_host: u32,
    /// Per-worker limit of manual jobs, which have no policy to say it.
    pub default_max_per_worker: u32,
    /// How long a finished job is kept after it ended, so operators can read it.
    pub job_history: Duration,
    /// How long a VM may be missing from the inventory of its host before its
    /// record is deleted (see [`Leader::forget_missing_vms`]).
    pub inventory_grace: Duration,
    /// Counters of ended jobs, shared by every term of the replica so `/metrics`
    /// keeps serving the same handles across elections.
    pub job_metrics: JobMetrics,
    /// Webhooks told of failed jobs and RPO breaches; shared by every term, so
    /// notifications queued in one are still delivered after it.
    pub notifier: Notifier,
}

/// The leader: state plus the store it mirrors, fenced by the leader key's revision.
pub struct Leader {
    store: Arc<dyn MetaStore>,
    leader_revision: i64,
    settings: LeaderSettings,
    /// Serializes decide-write-apply sequences (see the module doc).
    mutations: Mutex<()>,
    /// The cache; never held across an `.await`.
    state: std::sync::Mutex<State>,
    backends: Mutex<HashMap<String, Backend>>,
    /// Jobs whose manifest is being published now: the tick resumes only the others
    /// (commits interrupted by a crash or an error), never one in flight.
    publishing: std::sync::Mutex<HashSet<String>>,
    /// The RPO breaches announced in this term and when to look again
    /// (`notices.rs`).
    rpo_watch: std::sync::Mutex<notices::RpoCheck>,
    /// Records `load` could not decode (and skipped).
    unreadable_records: u64,
    /// Woken when jobs change state or progress (watches).
    pub changed: Notify,
    /// Woken when jobs are assigned (workers' long-polls): kept apart from `changed`
    /// so that thousands of progress reports and commits do not wake every poller.
    pub assigned: Notify,
}

/// Proof that the caller holds the `mutations` lock: functions that decide from the
/// cache and then write take it, so they cannot be called outside the lock.
struct Mutating<'a> {
    _guard: tokio::sync::MutexGuard<'a, ()>,
}

impl Leader {
    /// Loads the state from the store after winning the election at `leader_revision`.
    /// Records that cannot be decoded are logged, counted
    /// ([`unreadable_records`](Self::unreadable_records)) and skipped, so one bad
    /// record does not keep the cluster without a leader.
    pub async fn load(
        store: Arc<dyn MetaStore>,
        leader_revision: i64,
        settings: LeaderSettings,
    ) -> Result<Self> {
        let (state, unreadable_records) = State::load(
            store.as_ref(),
            settings.job_metrics.clone(),
            settings.notifier.clone(),
        )
        .await?;
        notices::replay_failures(&state, &settings.notifier, model::now_ms());
        Ok(Self {
            store,
            leader_revision,
            settings,
            mutations: Mutex::new(()),
            state: std::sync::Mutex::new(state),
            backends: Mutex::new(HashMap::new()),
            publishing: std::sync::Mutex::new(HashSet::new()),
            rpo_watch: Default::default(),
            unreadable_records,
            changed: Notify::new(),
            assigned: Notify::new(),
        })
    }

    /// Records `load` skipped because they could not be decoded: anything but zero
    /// means the store holds data this version cannot read, worth an alert.
    pub fn unreadable_records(&self) -> u64 {
        self.unreadable_records
    }

    /// The store's request counters, for `/metrics` and the scale benchmark.
    pub fn store_stats(&self) -> crate::store::StoreStats {
        self.store.stats()
    }

    /// The cache. A panic while it was held leaves it as the panicking code left it,
    /// which the next tick and the store's compares tolerate as they tolerate a
    /// crash, so a poisoned lock is taken over rather than propagated.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the `mutations` lock.
    async fn mutating(&self) -> Mutating<'_> {
        Mutating {
            _guard: self.mutations.lock().await,
        }
    }

    /// The backend of a repository URL, opened once (an S3 client keeps its
    /// connections).
    async fn backend(&self, url: &str) -> Result<Backend> {
        let mut backends = self.backends.lock().await;
        if let Some(backend) = backends.get(url) {
            return Ok(backend.clone());
        }
        let backend = Backend::from_url(url, false)?;
        backends.insert(url.to_string(), backend.clone());
        Ok(backend)
    }
}

/// Checks an id or name from a request with Haven's one name rule
/// (`haven_repo::validate_name`), so that keys built from it stay one path segment of
/// printable characters and no name passes for `.`, `..` or an option.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    haven_repo::validate_name(name)
        .map_err(|error| LeaderError::Invalid(format!("{what}: {error}")))
}
