//! The leader driven through [`UnreliableMetaStore`]: calls failed before they reach
//! the store, transactions applied whose reply is lost, and delays, from a seeded
//! generator. Each test plays a worker that retries what failed, then turns the faults
//! off and checks that every job settled exactly once and that the leader's memory
//! agrees with the store.

use std::collections::HashMap;

use rand::{Rng, SeedableRng};

use super::*;
use crate::store::unreliable::{StoreFaultRates, UnreliableMetaStore};

/// Seeds of the backup test: each runs 8 backups (about 0.3 s).
const SEEDS: u64 = 24;

/// The rates every test here injects.
const RATES: StoreFaultRates = StoreFaultRates {
    error: 0.08,
    lost_reply: 0.08,
    delay: 0.1,
    max_delay: Duration::from_millis(2),
};

/// GC jobs (one per repository) driven through a store that fails, delays and loses
/// the replies of applied transactions, with the worker's retries of failed calls;
/// then, with faults off, until every job has ended. Each job ends exactly once
/// (succeeded, or failed for good), is never handed out again after its success was
/// answered, and the leader's memory agrees with a new leader loaded from the store.
#[tokio::test]
async fn jobs_settle_exactly_once_under_store_faults() {
    for seed in 0..4u64 {
        let dir = tempfile::tempdir().unwrap();
        let embedded: Arc<dyn MetaStore> = EmbeddedStore::open(&dir.path().join("state.redb"))
            .await
            .unwrap();
        let store = UnreliableMetaStore::new(embedded.clone(), RATES, seed);
        store.set_enabled(false);
        let (_, leader) = leader_over(store.clone()).await;
        let worker = leader
            .register(
                "w1",
                "instance-1",
                vec![("h1".into(), vec![vm("vm1")])],
                64,
                0,
            )
            .await
            .unwrap();
        let mut jobs = Vec::new();
        for repository in 0..12 {
            jobs.push(
                leader
                    .run_gc(&format!("file:///tmp/r{repository}"), 0)
                    .await
                    .unwrap(),
            );
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        // Successes the leader answered, and completions whose answer was an error
        // (retried on the next round, as the worker's client does).
        let mut succeeded: HashSet<String> = HashSet::new();
        let mut unanswered: Vec<(String, i64, bool)> = Vec::new();
        store.set_enabled(true);
        for round in 0..300 {
            if round == 200 {
                store.set_enabled(false);
            }
            let _ = leader.tick().await;
            let _ = leader.heartbeat("w1", "instance-1", worker.lease).await;
            let mut calls = std::mem::take(&mut unanswered);
            if let Ok(assigned) = leader
                .poll("w1", "instance-1", worker.lease, &HashSet::new())
                .await
            {
                for assignment in assigned {
                    assert!(
                        !succeeded.contains(&assignment.job.id),
                        "seed {seed}: {} handed out again after it succeeded",
                        assignment.job.id
                    );
                    if !calls.iter().any(|(job, token, _)| {
                        *job == assignment.job.id && *token == assignment.token
                    }) {
                        calls.push((
                            assignment.job.id.clone(),
                            assignment.token,
                            rng.random_bool(0.7),
                        ));
                    }
                }
            }
            for (job, token, succeeds) in calls {
                let answer = if succeeds {
                    leader
                        .complete("w1", &job, token, "gc: done", &[], None)
                        .await
                } else {
                    // Not retryable: a retry waits a backoff of seconds.
                    leader
                        .fail("w1", &job, token, "injected failure", false)
                        .await
                };
                match answer {
                    Ok(()) if succeeds => {
                        succeeded.insert(job);
                    }
                    Ok(()) => {}
                    // Moved or ended: the worker drops the job.
                    Err(LeaderError::NotFound(_) | LeaderError::Fenced(_)) => {}
                    Err(_) => unanswered.push((job, token, succeeds)),
                }
            }
            let ended = jobs.iter().all(|id| {
                leader
                    .state()
                    .jobs
                    .get(id)
                    .is_some_and(|job| !job.state.is_active())
            });
            if round >= 200 && ended && unanswered.is_empty() {
                break;
            }
        }
        let counts = store.counts();
        assert!(
            counts.errors > 0 && counts.lost_replies > 0,
            "seed {seed}: {counts:?}"
        );
        let reloaded = Leader::load(embedded.clone(), 0, settings()).await.unwrap();
        for id in &jobs {
            let (cached, _) = leader.job(id).await.unwrap();
            assert!(
                !cached.state.is_active(),
                "seed {seed}: {id} never ended: {cached:?}"
            );
            let (stored, _) = reloaded.job(id).await.unwrap();
            assert_eq!(
                cached.state, stored.state,
                "seed {seed}: {id}: memory and store differ"
            );
            if succeeded.contains(id) {
                assert_eq!(stored.state, JobState::Succeeded, "seed {seed}: {id}");
            }
        }
        eprintln!(
            "seed {seed}: store faults injected: {counts:?}; {} of {} jobs succeeded",
            succeeded.len(),
            jobs.len()
        );
    }
}

/// What the playing worker does next with one assignment.
#[derive(Debug, Clone)]
enum Call {
    /// Commits this manifest (again, after an error).
    Commit(Box<CommitRequest>),
    /// Reports the job failed for good.
    Fail,
}

/// The `n`th distinct snapshot time (whole seconds, in the past).
fn stamp(n: u64) -> String {
    format!(
        "2026-01-01T{:02}:{:02}:{:02}Z",
        n / 3600,
        n / 60 % 60,
        n % 60
    )
}

/// Backups through the fenced commit, and the registration before them, driven
/// through a store that fails, delays and loses the replies of applied transactions.
/// Two processes race to register one worker id: exactly one holds it, the other is
/// refused from then on. The worker commits most attempts (retrying a commit whose
/// answer was an error, or giving up and reporting the job failed, as a worker whose
/// commit call failed does) and fails the others. Then, with faults off, every job
/// has ended exactly once: a job the leader answered a commit for succeeded with that
/// snapshot and is never handed out again; each VM has exactly one catalog entry and
/// one published manifest if its job succeeded and none if it failed; the leader's
/// memory agrees with a new leader loaded from the store.
#[tokio::test]
async fn backups_commit_exactly_once_under_store_faults() {
    let dir = tempfile::tempdir().unwrap();
    let (repo_url, repo) = test_repository(dir.path()).await;
    let mut injected = crate::store::unreliable::StoreFaultCounts::default();
    for seed in 0..SEEDS {
        let state = tempfile::tempdir().unwrap();
        let embedded: Arc<dyn MetaStore> = EmbeddedStore::open(&state.path().join("state.redb"))
            .await
            .unwrap();
        // Twice the usual lost replies: each seed has only a few dozen transactions.
        let rates = StoreFaultRates {
            lost_reply: 0.16,
            ..RATES
        };
        let store = UnreliableMetaStore::new(embedded.clone(), rates, seed);
        store.set_enabled(false);
        let (_, leader) = leader_over(store.clone()).await;
        store.set_enabled(true);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        // Each seed backs up its own VMs, one per host.
        let vms: Vec<VmRecord> = (0..8)
            .map(|n| VmRecord {
                name: format!("s{seed}vm{n}"),
                host: format!("h{n}"),
                disks: vec![("vda".into(), 1 << 20)],
                labels: BTreeMap::new(),
            })
            .collect();
        let hosts: Vec<(String, Vec<VmRecord>)> = vms
            .iter()
            .map(|vm| (vm.host.clone(), vec![vm.clone()]))
            .collect();

        // The registration race: instances A and B of w1 try in turn, each retrying
        // until it is answered; the one answered holds the id and stops, the other is
        // refused from then on.
        let mut holder: Option<(String, crate::model::WorkerRecord)> = None;
        for turn in 0..200 {
            let instance = if rng.random_bool(0.5) { "A" } else { "B" };
            if holder.as_ref().is_some_and(|(held, _)| held == instance) {
                continue;
            }
            match leader.register("w1", instance, hosts.clone(), 64, 0).await {
                Ok(record) => {
                    if let Some((held, _)) = &holder {
                        panic!("seed {seed}: {instance} registered w1, which {held} holds");
                    }
                    holder = Some((instance.to_owned(), record));
                }
                Err(LeaderError::AlreadyExists(_) | LeaderError::Store(_)) => {}
                Err(other) => panic!("seed {seed}: registration: {other}"),
            }
            if turn >= 20 && holder.is_some() {
                break;
            }
        }
        let (instance, worker) = holder.expect("one instance registered");
        let stored = embedded
            .get(&model::worker_key("w1"))
            .await
            .unwrap()
            .unwrap();
        let stored: crate::model::WorkerRecord = serde_json::from_slice(&stored.value).unwrap();
        assert_eq!(
            (stored.instance.as_str(), stored.lease),
            (instance.as_str(), worker.lease),
            "seed {seed}: the stored registration is not the one answered"
        );

        // The backups, created with faults off (a refused `job run` is retried by
        // its caller; it is not what this test is about).
        store.set_enabled(false);
        let mut jobs = Vec::new();
        for vm in &vms {
            jobs.push(
                leader
                    .run_job(&vm.name, Some(repo_url.clone()))
                    .await
                    .unwrap(),
            );
        }
        store.set_enabled(true);
        // Snapshots the leader answered a commit with, per job.
        let mut committed: HashMap<String, String> = HashMap::new();
        let mut pending: HashMap<(String, i64), Call> = HashMap::new();
        let mut stamps = 0;
        for round in 0..400 {
            if round == 250 {
                store.set_enabled(false);
            }
            let _ = leader.tick().await;
            let _ = leader.heartbeat("w1", &instance, worker.lease).await;
            if let Ok(assigned) = leader
                .poll("w1", &instance, worker.lease, &HashSet::new())
                .await
            {
                for assignment in assigned {
                    let job = assignment.job.id.clone();
                    assert!(
                        !committed.contains_key(&job),
                        "seed {seed}: {job} handed out again after its commit was answered"
                    );
                    pending
                        .entry((job.clone(), assignment.token))
                        .or_insert_with(|| {
                            if rng.random_bool(0.75) {
                                stamps += 1;
                                Call::Commit(Box::new(commit_request(
                                    &repo,
                                    &job,
                                    &assignment.job.vm,
                                    assignment.token,
                                    &stamp(stamps),
                                )))
                            } else {
                                Call::Fail
                            }
                        });
                }
            }
            for ((job, token), call) in std::mem::take(&mut pending) {
                let answer = match &call {
                    Call::Commit(request) => {
                        leader.commit((**request).clone()).await.map(|snapshot| {
                            committed.insert(job.clone(), snapshot);
                        })
                    }
                    Call::Fail => {
                        leader
                            .fail("w1", &job, token, "injected failure", false)
                            .await
                    }
                };
                match answer {
                    Ok(()) => {}
                    // Moved or ended: the worker drops the job.
                    Err(LeaderError::NotFound(_) | LeaderError::Fenced(_)) => {}
                    // No answer: the worker retries, or gives the commit up as failed.
                    Err(_) => {
                        let next = match call {
                            Call::Commit(_) if rng.random_bool(0.5) => Call::Fail,
                            other => other,
                        };
                        pending.insert((job, token), next);
                    }
                }
            }
            let ended = jobs.iter().all(|id| {
                leader
                    .state()
                    .jobs
                    .get(id)
                    .is_some_and(|job| !job.state.is_active())
            });
            if round >= 250 && ended && pending.is_empty() {
                break;
            }
        }
        let counts = store.counts();
        injected.errors += counts.errors;
        injected.lost_replies += counts.lost_replies;
        injected.delays += counts.delays;
        let reloaded = Leader::load(embedded.clone(), 0, settings()).await.unwrap();
        for (id, vm) in jobs.iter().zip(&vms) {
            let (cached, _) = leader.job(id).await.unwrap();
            assert!(
                !cached.state.is_active(),
                "seed {seed}: {id} never ended: {cached:?}"
            );
            let (stored, _) = reloaded.job(id).await.unwrap();
            assert_eq!(
                (&cached.state, &cached.snapshot),
                (&stored.state, &stored.snapshot),
                "seed {seed}: {id}: memory and store differ"
            );
            if let Some(snapshot) = committed.get(id) {
                assert_eq!(stored.state, JobState::Succeeded, "seed {seed}: {id}");
                assert_eq!(
                    stored.snapshot.as_ref(),
                    Some(snapshot),
                    "seed {seed}: {id}"
                );
            }
            let prefix = model::snapshot_key(&vm.name, "");
            let catalog = embedded.list(&prefix).await.unwrap();
            let entries: Vec<String> = catalog
                .iter()
                .filter_map(|kv| kv.key.strip_prefix(&prefix))
                .map(|timestamp| format!("{}@{timestamp}", vm.name))
                .collect();
            let published: Vec<String> = repo
                .list_snapshots(Some(&vm.name))
                .await
                .unwrap()
                .iter()
                .map(|id| format!("{}@{}", id.vm, id.timestamp))
                .collect();
            let expected: Vec<String> = match stored.state {
                JobState::Succeeded => stored.snapshot.iter().cloned().collect(),
                _ => Vec::new(),
            };
            assert_eq!(
                entries, expected,
                "seed {seed}: {id}: catalog of {}",
                vm.name
            );
            assert_eq!(
                published, expected,
                "seed {seed}: {id}: repository of {}",
                vm.name
            );
        }
        eprintln!(
            "seed {seed}: store faults injected: {counts:?}; {} of {} backups committed",
            committed.len(),
            jobs.len()
        );
    }
    assert!(
        injected.errors > 0 && injected.lost_replies > 0,
        "{injected:?}"
    );
}

/// A worker registering (again, as after a partition healed) while a tick replaces
/// the cached workers by the store's live ones: each store call delayed at random, so
/// the two interleave differently every round. The registration answered must stand:
/// the worker's next heartbeat under its new lease is accepted.
#[tokio::test]
async fn a_registration_racing_a_tick_is_not_undone_by_it() {
    let dir = tempfile::tempdir().unwrap();
    let embedded: Arc<dyn MetaStore> = EmbeddedStore::open(&dir.path().join("state.redb"))
        .await
        .unwrap();
    let delays = StoreFaultRates {
        delay: 1.0,
        max_delay: Duration::from_millis(3),
        ..StoreFaultRates::default()
    };
    let store = UnreliableMetaStore::new(embedded, delays, 7);
    let (_, leader) = leader_over(store.clone()).await;
    let hosts = || vec![("h1".to_owned(), vec![vm("vm1")])];
    let mut undone = Vec::new();
    for round in 0..60 {
        let (registered, ticked) = tokio::join!(
            leader.register("w1", "instance-1", hosts(), 2, 0),
            leader.tick()
        );
        ticked.unwrap();
        let record = registered.unwrap();
        if let Err(error) = leader.heartbeat("w1", "instance-1", record.lease).await {
            undone.push(format!("round {round}: {error}"));
        }
    }
    assert!(store.counts().delays > 0);
    assert!(undone.is_empty(), "registrations undone: {undone:#?}");
}
