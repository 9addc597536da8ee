//! The leader end to end over an embedded store: the async methods that gather the
//! state, decide and apply.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use super::*;
use crate::model::{self, JobKind, JobState, SnapshotRecord, VmRecord, now_ms};
use crate::store::embedded::EmbeddedStore;
use crate::store::{Compare, KeyValue, LeaseId, Op, StoreError, TxnOutcome};
use haven_repo::{Backend, Consistency, Manifest, Repository, SourceInfo};

mod store_faults;

/// A leader over an embedded store, leading at the revision of its leader key.
async fn leader(dir: &std::path::Path) -> (Arc<dyn MetaStore>, Leader) {
    let store: Arc<dyn MetaStore> = EmbeddedStore::open(&dir.join("state.redb")).await.unwrap();
    leader_over(store).await
}

/// A leader over `store`, leading at the revision of its leader key.
async fn leader_over(store: Arc<dyn MetaStore>) -> (Arc<dyn MetaStore>, Leader) {
    leader_with(store, settings()).await
}

/// [`leader_over`] with other settings.
async fn leader_with(
    store: Arc<dyn MetaStore>,
    settings: LeaderSettings,
) -> (Arc<dyn MetaStore>, Leader) {
    let won = store
        .txn(
            vec![Compare::Absent(model::leader_key())],
            vec![Op::put(model::leader_key(), "http://127.0.0.1:1")],
        )
        .await
        .unwrap();
    let leader = Leader::load(store.clone(), won.revision, settings)
        .await
        .unwrap();
    (store, leader)
}

fn settings() -> LeaderSettings {
    LeaderSettings {
        worker_lease: Duration::from_secs(30),
        default_max_per_host: 2,
        default_max_per_worker: 2,
        job_history: Duration::from_secs(3600),
        inventory_grace: Duration::from_secs(3600),
        job_metrics: Default::default(),
        notifier: Default::default(),
    }
}

fn vm(name: &str) -> VmRecord {
    VmRecord {
        name: name.into(),
        host: "h1".into(),
        disks: vec![("vda".into(), 1 << 20)],
        labels: BTreeMap::new(),
    }
}

/// Worker `w1` (instance `instance-1`) reaching `vm1` on `h1`, and a manual backup
/// of `vm1`: the worker's record and the job's id.
async fn one_backup(leader: &Leader) -> (crate::model::WorkerRecord, String) {
    let worker = leader
        .register(
            "w1",
            "instance-1",
            vec![("h1".into(), vec![vm("vm1")])],
            2,
            0,
        )
        .await
        .unwrap();
    let job = leader
        .run_job("vm1", Some("file:///tmp/r".into()))
        .await
        .unwrap();
    (worker, job)
}

#[tokio::test]
async fn finished_jobs_are_forgotten_after_the_history_period() {
    let dir = tempfile::tempdir().unwrap();
    let (store, leader) = leader(dir.path()).await;
    leader
        .register(
            "w1",
            "instance-1",
            vec![("h1".into(), vec![vm("old"), vm("recent"), vm("running")])],
            2,
            0,
        )
        .await
        .unwrap();
    let mut ids = Vec::new();
    for name in ["old", "recent", "running"] {
        ids.push(
            leader
                .run_job(name, Some("file:///tmp/r".into()))
                .await
                .unwrap(),
        );
    }
    let now = now_ms();
    {
        let mut state = leader.state();
        for (id, ended) in [(&ids[0], now - 2 * 3600 * 1000), (&ids[1], now - 1000)] {
            let job = state.jobs.get_mut(id).unwrap();
            job.state = JobState::Succeeded;
            job.finished_unix_ms = ended;
        }
    }
    let report = leader.tick().await.unwrap();
    assert_eq!(report.expired, 1);
    assert!(store.get(&model::job_key(&ids[0])).await.unwrap().is_none());
    assert!(leader.job(&ids[0]).await.is_none());
    for id in &ids[1..] {
        assert!(leader.job(id).await.is_some(), "{id} must stay");
        assert!(store.get(&model::job_key(id)).await.unwrap().is_some());
    }
}

#[tokio::test]
async fn a_pending_jobs_leftover_ownership_key_does_not_block_it_forever() {
    let dir = tempfile::tempdir().unwrap();
    let (store, leader) = leader(dir.path()).await;
    let (worker, job) = one_backup(&leader).await;
    // The first of assignment's two writes went through, the second did not.
    store
        .txn(
            vec![],
            vec![Op::put_leased(
                model::owner_key(&job),
                "w1".to_string(),
                worker.lease,
            )],
        )
        .await
        .unwrap();

    let blocked = leader.tick().await.unwrap();
    assert_eq!(blocked.assigned, 0, "the stale key blocks this pass");
    assert!(store.get(&model::owner_key(&job)).await.unwrap().is_none());

    let retried = leader.tick().await.unwrap();
    assert_eq!(retried.assigned, 1);
    let owner = store.get(&model::owner_key(&job)).await.unwrap().unwrap();
    let polled = leader
        .poll("w1", "instance-1", worker.lease, &HashSet::new())
        .await
        .unwrap();
    assert_eq!(polled.len(), 1);
    assert_eq!(polled[0].token, owner.mod_revision);
}

#[tokio::test]
async fn load_counts_and_skips_unreadable_records() {
    let dir = tempfile::tempdir().unwrap();
    let (store, first) = leader(dir.path()).await;
    let (_, job) = one_backup(&first).await;
    assert_eq!(first.unreadable_records(), 0);
    store
        .txn(
            vec![],
            vec![
                Op::put(model::job_key("job-broken"), "{not json"),
                Op::put(model::vm_key("broken"), "[]"),
                Op::put(model::round_key("p"), "\"soon\""),
            ],
        )
        .await
        .unwrap();
    let revision = store
        .get(&model::leader_key())
        .await
        .unwrap()
        .unwrap()
        .mod_revision;
    let second = Leader::load(store.clone(), revision, settings())
        .await
        .unwrap();
    assert_eq!(second.unreadable_records(), 3);
    assert!(second.job(&job).await.is_some(), "readable records load");
    assert!(second.job("job-broken").await.is_none());
    assert_eq!(second.vms().await.len(), 1);
}

/// A store whose armed transactions are applied but answered with an error, as when
/// the reply of an applied etcd write is lost; and which can be made unreachable.
struct LosesReplies {
    inner: Arc<dyn MetaStore>,
    /// The `n`th transaction from now (1: the next; 0: none) is applied, then
    /// reported failed.
    lose_reply_of: AtomicUsize,
    /// Once a reply was lost, every call fails until cleared.
    then_down: AtomicBool,
    down: AtomicBool,
}

impl LosesReplies {
    fn over(inner: Arc<dyn MetaStore>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            lose_reply_of: AtomicUsize::new(0),
            then_down: AtomicBool::new(false),
            down: AtomicBool::new(false),
        })
    }

    /// Arms the `n`th transaction from now (1: the next) to lose its reply.
    fn lose_reply_of_txn(&self, n: usize) {
        self.lose_reply_of.store(n, Ordering::SeqCst);
    }

    fn check(&self) -> crate::store::Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("store down (test)".into()));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl MetaStore for LosesReplies {
    async fn get(&self, key: &str) -> crate::store::Result<Option<KeyValue>> {
        self.check()?;
        self.inner.get(key).await
    }

    async fn list(&self, prefix: &str) -> crate::store::Result<Vec<KeyValue>> {
        self.check()?;
        self.inner.list(prefix).await
    }

    async fn range(
        &self,
        start: &str,
        end: &str,
        limit: usize,
    ) -> crate::store::Result<Vec<KeyValue>> {
        self.check()?;
        self.inner.range(start, end, limit).await
    }

    async fn txn(&self, compares: Vec<Compare>, ops: Vec<Op>) -> crate::store::Result<TxnOutcome> {
        self.check()?;
        let outcome = self.inner.txn(compares, ops).await?;
        let armed = self.lose_reply_of.load(Ordering::SeqCst);
        if armed > 0 {
            self.lose_reply_of.store(armed - 1, Ordering::SeqCst);
        }
        if armed == 1 {
            self.down
                .store(self.then_down.load(Ordering::SeqCst), Ordering::SeqCst);
            return Err(StoreError::Unavailable("reply lost (test)".into()));
        }
        Ok(outcome)
    }

    async fn grant_lease(&self, ttl: Duration) -> crate::store::Result<LeaseId> {
        self.check()?;
        self.inner.grant_lease(ttl).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> crate::store::Result<()> {
        self.check()?;
        self.inner.keep_alive(lease).await
    }

    async fn revoke(&self, lease: LeaseId) -> crate::store::Result<()> {
        self.check()?;
        self.inner.revoke(lease).await
    }

    fn stats(&self) -> crate::store::StoreStats {
        self.inner.stats()
    }
}

/// A leader over a [`LosesReplies`] store in `dir`, with worker `w1` (instance
/// `instance-1`) registered reaching `vm1` on `h1`: the store, the leader, the worker.
async fn w1_over_losing_store(
    dir: &std::path::Path,
) -> (Arc<LosesReplies>, Leader, crate::model::WorkerRecord) {
    let embedded: Arc<dyn MetaStore> = EmbeddedStore::open(&dir.join("state.redb")).await.unwrap();
    let store = LosesReplies::over(embedded);
    let (_, leader) = leader_over(store.clone()).await;
    let worker = leader
        .register(
            "w1",
            "instance-1",
            vec![("h1".into(), vec![vm("vm1")])],
            2,
            0,
        )
        .await
        .unwrap();
    (store, leader, worker)
}

/// A new `file://` repository in `dir/repo` (password `test`, 1 MiB chunks): its URL
/// and the repository.
async fn test_repository(dir: &std::path::Path) -> (String, Repository) {
    let repo_url = format!("file://{}", dir.join("repo").display());
    let repo = Repository::init(
        Backend::from_url(&repo_url, true).unwrap(),
        b"test",
        1 << 20,
    )
    .await
    .unwrap();
    (repo_url, repo)
}

/// A GC job assigned to worker `w1` of a leader over a [`LosesReplies`] store: the
/// store, the leader, the worker's lease, the job and its token.
async fn assigned_gc(dir: &std::path::Path) -> (Arc<LosesReplies>, Leader, LeaseId, String, i64) {
    let (store, leader, worker) = w1_over_losing_store(dir).await;
    let job = leader.run_gc("file:///tmp/r", 0).await.unwrap();
    assert_eq!(leader.tick().await.unwrap().assigned, 1);
    let polled = leader
        .poll("w1", "instance-1", worker.lease, &HashSet::new())
        .await
        .unwrap();
    assert_eq!(polled.len(), 1);
    (store, leader, worker.lease, job, polled[0].token)
}

/// The job is succeeded in the cache and no poll hands it out again.
async fn settled(leader: &Leader, job: &str, lease: LeaseId) {
    let (record, _) = leader.job(job).await.unwrap();
    assert_eq!(record.state, JobState::Succeeded, "{record:?}");
    leader.tick().await.unwrap();
    let again = leader
        .poll("w1", "instance-1", lease, &HashSet::new())
        .await
        .unwrap();
    assert!(again.is_empty(), "handed out again: {again:?}");
}

#[tokio::test]
async fn a_completion_applied_but_unanswered_is_not_run_again() {
    let dir = tempfile::tempdir().unwrap();
    let (store, leader, lease, job, token) = assigned_gc(dir.path()).await;
    store.lose_reply_of_txn(1);
    let lost = leader
        .complete("w1", &job, token, "gc: done", &[], None)
        .await;
    assert!(matches!(lost, Err(LeaderError::Store(_))), "{lost:?}");
    // The leader read the record back: its memory follows the store.
    settled(&leader, &job, lease).await;
    // The worker's client retries the call: the same completion counts as success.
    leader
        .complete("w1", &job, token, "gc: done", &[], None)
        .await
        .unwrap();
    settled(&leader, &job, lease).await;
}

#[tokio::test]
async fn a_retried_completion_finds_its_applied_write_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (store, leader, lease, job, token) = assigned_gc(dir.path()).await;
    // The reply is lost and the store stays unreachable for the read-back.
    store.then_down.store(true, Ordering::SeqCst);
    store.lose_reply_of_txn(1);
    let lost = leader
        .complete("w1", &job, token, "gc: done", &[], None)
        .await;
    assert!(matches!(lost, Err(LeaderError::Store(_))), "{lost:?}");
    assert_eq!(
        leader.job(&job).await.map(|(job, _)| job.state),
        Some(JobState::Assigned),
        "nothing could be read back"
    );
    store.down.store(false, Ordering::SeqCst);
    // The retry fails the ownership compare (the first try deleted the key) and
    // reads the record: succeeded with this token, so it is a success.
    leader
        .complete("w1", &job, token, "gc: done", &[], None)
        .await
        .unwrap();
    settled(&leader, &job, lease).await;
    // Another token is still a moved job.
    let other = leader
        .complete("w1", &job, token + 1, "gc: done", &[], None)
        .await;
    assert!(matches!(other, Err(LeaderError::Fenced(_))), "{other:?}");
}

/// A sealed manifest of `vm` stamped `timestamp`, as a worker's fenced commit sends it
/// for attempt `token` of job `job`.
fn commit_request(
    repo: &Repository,
    job: &str,
    vm: &str,
    token: i64,
    timestamp: &str,
) -> CommitRequest {
    let manifest = Manifest {
        version: haven_repo::FORMAT_VERSION,
        vm: vm.into(),
        timestamp: timestamp.into(),
        created_by: "store fault test".into(),
        source: SourceInfo {
            kind: "simulated".into(),
            origin: "h1".into(),
        },
        consistency: Consistency::CrashConsistent,
        consistency_reason: None,
        parent: None,
        disks: Vec::new(),
        vm_config: None,
        labels: Default::default(),
    };
    let (id, blob) = repo.seal_manifest(&manifest).unwrap();
    CommitRequest {
        worker: "w1".into(),
        job_id: job.into(),
        token,
        manifest_key: id.manifest_key(),
        manifest_blob: blob,
        snapshot: SnapshotRecord {
            vm: vm.into(),
            timestamp: timestamp.into(),
            repository: String::new(),
            disks: Vec::new(),
            bytes_uploaded: 0,
            job_id: job.into(),
            bytes_read: 0,
            bytes_new: 0,
            committed_unix_ms: 0,
        },
    }
}

/// A backup of `vm1` by policy `p` (keeping the last snapshot, into a repository in
/// `dir`, jobs failing `job_timeout_seconds` after their creation), assigned to worker
/// `w1` of a leader over a [`LosesReplies`] store: the store, the leader, the worker's
/// lease, the repository and the commit the worker sends.
async fn policy_backup(
    dir: &std::path::Path,
    job_timeout_seconds: u64,
) -> (
    Arc<LosesReplies>,
    Leader,
    LeaseId,
    Repository,
    CommitRequest,
) {
    let (repo_url, repo) = test_repository(dir).await;
    let (store, leader, worker) = w1_over_losing_store(dir).await;
    let mut policy = crate::leader::fixtures::policy("p");
    policy.repository = repo_url;
    policy.retention.keep_last = 1;
    policy.job_timeout_seconds = job_timeout_seconds;
    leader.apply_policies(vec![policy]).await.unwrap();
    let jobs = leader.run_policy("p").await.unwrap();
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(leader.tick().await.unwrap().assigned, 1);
    let polled = leader
        .poll("w1", "instance-1", worker.lease, &HashSet::new())
        .await
        .unwrap();
    assert_eq!(polled.len(), 1);
    let request = commit_request(
        &repo,
        &jobs[0],
        "vm1",
        polled[0].token,
        "2026-01-01T00:00:01Z",
    );
    (store, leader, worker.lease, repo, request)
}

/// A commit applied whose reply was lost, and which nothing could read back, leaves
/// the leader's memory at `assigned`. Whatever then ends the job from memory (its
/// worker's lease running out, its deadline passing, an operator's cancel) reads the
/// store first: the accepted commit is finished, never overwritten, and the catalog
/// entry keeps its manifest.
#[tokio::test]
async fn an_accepted_commit_the_cache_missed_is_finished_not_ended_over() {
    for ending in ["lease lost", "deadline", "cancel"] {
        let dir = tempfile::tempdir().unwrap();
        let timeout = if ending == "deadline" { 1 } else { 3600 };
        let (store, leader, lease, repo, request) = policy_backup(dir.path(), timeout).await;
        store.then_down.store(true, Ordering::SeqCst);
        store.lose_reply_of_txn(1);
        let lost = leader.commit(request.clone()).await;
        assert!(
            matches!(lost, Err(LeaderError::Store(_))),
            "{ending}: {lost:?}"
        );
        store.down.store(false, Ordering::SeqCst);
        assert_eq!(
            leader.job(&request.job_id).await.map(|(job, _)| job.state),
            Some(JobState::Assigned),
            "{ending}: nothing could be read back"
        );
        match ending {
            "lease lost" => store.inner.revoke(lease).await.unwrap(),
            "deadline" => tokio::time::sleep(Duration::from_millis(1100)).await,
            _ => {
                let refused = leader.cancel(&request.job_id, "admin").await;
                assert!(
                    matches!(refused, Err(LeaderError::Fenced(_))),
                    "{ending}: {refused:?}"
                );
            }
        }
        let report = leader.tick().await.unwrap();
        assert_eq!((report.requeued, report.timed_out), (0, 0), "{ending}");
        let (job, _) = leader.job(&request.job_id).await.unwrap();
        assert_eq!(job.state, JobState::Succeeded, "{ending}: {job:?}");
        assert_eq!(
            repo.list_snapshots(Some("vm1")).await.unwrap().len(),
            1,
            "{ending}: published"
        );
        assert_eq!(
            leader.snapshots(Some("vm1")).await.len(),
            1,
            "{ending}: catalog"
        );
    }
}

/// The write ending a committed backup is applied and its reply lost: the leader
/// reads the record back, the commit is answered as the success it was, and the
/// backup's prune job is still created.
#[tokio::test]
async fn a_backup_whose_end_lost_its_reply_still_gets_its_prune() {
    let dir = tempfile::tempdir().unwrap();
    let (store, leader, _, _, request) = policy_backup(dir.path(), 3600).await;
    // The acceptance (the first transaction) is answered; the end (the second) is not.
    store.lose_reply_of_txn(2);
    let snapshot = leader.commit(request.clone()).await.unwrap();
    assert_eq!(snapshot, "vm1@2026-01-01T00:00:01Z");
    let jobs = leader.jobs(Some("vm1"), 10).await;
    assert!(
        jobs.iter()
            .any(|(job, _)| job.kind == JobKind::Prune && job.state == JobState::Pending),
        "{jobs:#?}"
    );
}

/// A leader whose VMs are forgotten as soon as a report of their host leaves them
/// out (`grace`: 0) or only after an hour, with worker `w1` registered reaching `vm1`
/// and `vm2` on `h1`, and worker `w2` reaching `vm3` on `h2`.
async fn inventory_bed(
    dir: &std::path::Path,
    grace: Duration,
) -> (Arc<dyn MetaStore>, Leader, LeaseId) {
    let store: Arc<dyn MetaStore> = EmbeddedStore::open(&dir.join("state.redb")).await.unwrap();
    let settings = LeaderSettings {
        inventory_grace: grace,
        ..settings()
    };
    let (store, leader) = leader_with(store, settings).await;
    let w1 = leader
        .register(
            "w1",
            "instance-1",
            vec![("h1".into(), vec![vm("vm1"), vm("vm2")])],
            2,
            0,
        )
        .await
        .unwrap();
    let mut on_h2 = vm("vm3");
    on_h2.host = "h2".into();
    leader
        .register("w2", "instance-2", vec![("h2".into(), vec![on_h2])], 2, 0)
        .await
        .unwrap();
    (store, leader, w1.lease)
}

/// Worker `w1` reports host `h1` holding `names`.
async fn report_h1(leader: &Leader, lease: LeaseId, names: &[&str]) {
    let vms = names.iter().map(|name| vm(name)).collect();
    leader
        .report_inventory("w1", "instance-1", lease, vec![("h1".into(), vms)])
        .await
        .unwrap();
}

#[tokio::test]
async fn a_vm_its_host_no_longer_reports_is_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let (store, leader, lease) = inventory_bed(dir.path(), Duration::ZERO).await;
    // A backup of vm2 is pending: the record stays while the job is active.
    let job = leader
        .run_job("vm2", Some("file:///tmp/r".into()))
        .await
        .unwrap();
    report_h1(&leader, lease, &["vm1"]).await;
    assert_eq!(leader.tick().await.unwrap().forgotten_vms, 0);
    assert!(leader.vm("vm2").is_some());
    leader.cancel(&job, "test").await.unwrap();
    let report = leader.tick().await.unwrap();
    assert_eq!(report.forgotten_vms, 1, "{report:?}");
    assert!(leader.vm("vm2").is_none());
    assert!(store.get(&model::vm_key("vm2")).await.unwrap().is_none());
    // vm1 is reported; vm3's host h2 sent no report without it.
    assert!(leader.vm("vm1").is_some());
    assert!(leader.vm("vm3").is_some());
    // A new leader loads the state without vm2.
    let reloaded = Leader::load(store.clone(), 0, settings()).await.unwrap();
    assert!(reloaded.vm("vm2").is_none());
    assert!(reloaded.vm("vm1").is_some());
}

#[tokio::test]
async fn a_vm_missing_from_one_report_is_kept_within_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let (_, leader, lease) = inventory_bed(dir.path(), Duration::from_secs(3600)).await;
    report_h1(&leader, lease, &["vm1"]).await;
    assert_eq!(leader.tick().await.unwrap().forgotten_vms, 0);
    assert!(leader.vm("vm2").is_some());
    // Reported again: no longer missing, even with no grace left.
    report_h1(&leader, lease, &["vm1", "vm2"]).await;
    assert!(leader.state().missing_since.is_empty());
}

/// Worker `w2` reports host `h2` holding `names`.
async fn report_h2(leader: &Leader, names: &[&str]) {
    let lease = leader.state().workers["w2"].lease;
    let vms = names
        .iter()
        .map(|name| VmRecord {
            host: "h2".into(),
            ..vm(name)
        })
        .collect();
    leader
        .report_inventory("w2", "instance-2", lease, vec![("h2".into(), vms)])
        .await
        .unwrap();
}

#[tokio::test]
async fn a_vm_name_another_host_holds_is_not_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let (store, leader, lease) = inventory_bed(dir.path(), Duration::from_secs(3600)).await;
    // h2 has a VM of its own called vm1: h1's vm1 keeps its record.
    report_h2(&leader, &["vm3", "vm1"]).await;
    assert_eq!(leader.vm("vm1").unwrap().0.host, "h1");
    let stored: VmRecord = serde_json::from_slice(
        &store
            .get(&model::vm_key("vm1"))
            .await
            .unwrap()
            .unwrap()
            .value,
    )
    .unwrap();
    assert_eq!(stored.host, "h1");
    assert!(leader.state().missing_since.is_empty());
    // Nor when h2 registers again with it.
    let vms = vec![
        VmRecord {
            host: "h2".into(),
            ..vm("vm1")
        },
        VmRecord {
            host: "h2".into(),
            ..vm("vm3")
        },
    ];
    leader
        .register("w2", "instance-2", vec![("h2".into(), vms)], 2, 0)
        .await
        .unwrap();
    assert_eq!(leader.vm("vm1").unwrap().0.host, "h1");
    // Once h1 leaves vm1 out, the VM has moved: h2 takes it over.
    report_h1(&leader, lease, &["vm2"]).await;
    report_h2(&leader, &["vm3", "vm1"]).await;
    assert_eq!(leader.vm("vm1").unwrap().0.host, "h2");
    assert!(leader.state().missing_since.is_empty());
}
