//! Backups, prunes, garbage collections and restores through an object store that
//! fails, delays, truncates, duplicates and loses the replies of requests
//! (`haven_testkit::unreliable`), with a seeded generator for the disks and the faults.
//!
//! Each round changes two sparse raw disks (random data, holes, copied ranges), backs
//! both up, and now and then prunes, collects garbage (margin 0, alongside a backup)
//! and restores under faults. After every round, with faults off, the repository must
//! hold:
//!
//! - every acknowledged snapshot that retention did not allow to go;
//! - only complete snapshots: each one verifies and restores byte-identical to the disk
//!   of the backup attempt that wrote it (acknowledged, or failed after its manifest
//!   was stored: a lost reply);
//! - no chunk missing that a snapshot names.
//!
//! A restore under faults must give the exact disk or fail; a verify under faults must
//! pass every acknowledged snapshot (a fault is read again, never called damage). At the end a collection
//! without faults leaves no unreferenced chunk older than its cutoff.
//!
//! `HAVEN_FAULT_SEEDS` (comma-separated) and `HAVEN_FAULT_ROUNDS` make it longer; a
//! failure prints the seed to replay.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use haven_repo::{
    Backend, GcLock, GcOptions, Progress, Repository, RepositoryLeases, RetentionPolicy,
    SnapshotId, VerifyOptions, collect_garbage, live_records, plan_retention, prune_snapshots,
    verify_snapshots,
};
use haven_testkit::unreliable::{FaultCounts, FaultRates, UnreliableStore};
use haven_worker::restore::{RestoreFormat, RestoreRequest, restore_disk};
use haven_worker::{ImageBackupRequest, ImageDisk, ImageReader, backup_images};
use object_store::memory::InMemory;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CHUNK: u64 = 64 * 1024;
const VMS: [&str; 2] = ["alpha", "beta"];
const KEEP_LAST: u32 = 3;

fn rates() -> FaultRates {
    FaultRates {
        error: 0.01,
        lost_reply: 0.01,
        duplicate: 0.01,
        short_read: 0.01,
        list_error: 0.02,
        delay: 0.05,
        max_delay: Duration::from_millis(3),
    }
}

/// What the test knows of one VM: its disk, every backup attempt's disk content, and
/// the snapshots acknowledged and not yet allowed to go.
struct VmModel {
    name: &'static str,
    disk: PathBuf,
    attempts: Vec<Arc<Vec<u8>>>,
    acknowledged: BTreeMap<SnapshotId, Arc<Vec<u8>>>,
}

/// Figures of one seed's run.
#[derive(Debug, Default)]
struct Figures {
    backups_ok: u64,
    backups_failed: u64,
    /// Stored snapshots no backup acknowledged (committed, then the reply lost), at
    /// the last check.
    committed_unacknowledged: u64,
    prunes_failed: u64,
    gcs_failed: u64,
    restores_under_faults_ok: u64,
    restores_under_faults_failed: u64,
    /// Verifies of every acknowledged snapshot under faults (each must pass).
    verifies: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_survive_storage_faults() {
    let seeds: Vec<u64> = match std::env::var("HAVEN_FAULT_SEEDS") {
        Ok(list) => list
            .split(',')
            .map(|seed| seed.trim().parse().expect("HAVEN_FAULT_SEEDS: numbers"))
            .collect(),
        Err(_) => vec![1, 2, 3],
    };
    let rounds: usize = std::env::var("HAVEN_FAULT_ROUNDS")
        .map(|rounds| rounds.parse().expect("HAVEN_FAULT_ROUNDS: a number"))
        .unwrap_or(10);
    let mut total = FaultCounts::default();
    for seed in seeds {
        eprintln!("fault seed {seed} ({rounds} rounds): HAVEN_FAULT_SEEDS={seed} replays it");
        let (counts, figures) = run_seed(seed, rounds).await;
        eprintln!("seed {seed}: faults injected: {counts}; {figures:?}");
        assert!(counts.failures() > 0, "seed {seed} injected no fault");
        total.errors += counts.errors;
        total.lost_replies += counts.lost_replies;
        total.duplicates += counts.duplicates;
        total.short_reads += counts.short_reads;
        total.list_errors += counts.list_errors;
        total.delays += counts.delays;
    }
    eprintln!("all seeds: faults injected: {total}");
}

async fn run_seed(seed: u64, rounds: usize) -> (FaultCounts, Figures) {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let store = UnreliableStore::new(Arc::new(InMemory::new()), rates(), seed);
    store.set_enabled(false);
    let backend = Backend::over_object_store("unreliable://", Arc::new(store.clone()));
    let repo = Arc::new(
        Repository::init(backend, b"fault-password", CHUNK as u32)
            .await
            .unwrap(),
    );
    let mut vms: Vec<VmModel> = VMS
        .iter()
        .map(|name| {
            let disk = dir.path().join(format!("{name}.raw"));
            let size = CHUNK * rng.random_range(8..20) + 512 * rng.random_range(0..128);
            std::fs::File::create(&disk).unwrap().set_len(size).unwrap();
            VmModel {
                name,
                disk,
                attempts: Vec::new(),
                acknowledged: BTreeMap::new(),
            }
        })
        .collect();
    let mut figures = Figures::default();
    for round in 0..rounds {
        for vm in &vms {
            change_disk(&vm.disk, &mut rng);
        }
        store.set_enabled(true);
        let gc_round = round % 3 == 2;
        for (position, vm) in vms.iter_mut().enumerate() {
            let model = Arc::new(std::fs::read(&vm.disk).unwrap());
            vm.attempts.push(model.clone());
            let backup = back_up(&repo, vm);
            // The second VM's backup runs alongside a collection in some rounds: the
            // leases and the generation must keep its chunks.
            let outcome = if gc_round && position == 1 {
                let options = GcOptions {
                    margin: Duration::ZERO,
                    temp_dir: Some(dir.path().to_path_buf()),
                    ..GcOptions::default()
                };
                let (outcome, gc) =
                    tokio::join!(backup, collect_garbage(&repo, &RepositoryLeases, &options));
                if gc.is_err() {
                    figures.gcs_failed += 1;
                }
                outcome
            } else {
                backup.await
            };
            match outcome {
                Ok(snapshot) => {
                    figures.backups_ok += 1;
                    let (name, timestamp) = snapshot.split_once('@').unwrap();
                    let id = SnapshotId::new(name, timestamp).unwrap();
                    vm.acknowledged.insert(id, model);
                }
                Err(_) => figures.backups_failed += 1,
            }
        }
        if round % 2 == 1 {
            prune(&repo, &store, &mut vms, &mut figures).await;
        }
        if round % 3 == 1 {
            restore_under_faults(&repo, &vms, dir.path(), &mut rng, &mut figures).await;
        }
        if round % 3 == 2 {
            verify_under_faults(&repo, &vms, seed, round).await;
            figures.verifies += 1;
        }
        store.set_enabled(false);
        figures.committed_unacknowledged = check(&repo, &vms, dir.path(), seed, round).await;
    }
    final_collection(&repo, dir.path(), seed).await;
    (store.counts(), figures)
}

/// Backs up `vm`'s disk; the snapshot's `VM@TIME` once acknowledged.
async fn back_up(repo: &Arc<Repository>, vm: &VmModel) -> Result<String, String> {
    let request = ImageBackupRequest {
        vm: vm.name.to_string(),
        disks: vec![ImageDisk {
            path: vm.disk.clone(),
            name: "vda".into(),
            format: Some("raw".into()),
        }],
        connections: 2,
        reader: ImageReader::Auto,
    };
    backup_images(repo.clone(), &request, Arc::new(Progress::new()))
        .await
        .map(|report| report.snapshot)
        .map_err(|error| error.to_string())
}

/// Writes random data, zeros and copies of other ranges into the disk.
fn change_disk(path: &Path, rng: &mut StdRng) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let size = file.metadata().unwrap().len();
    for _ in 0..rng.random_range(1..5) {
        let len = rng.random_range(1..(3 * CHUNK)).min(size);
        let offset = rng.random_range(0..=size - len);
        let data: Vec<u8> = match rng.random_range(0..4) {
            0 => vec![0; len as usize],
            1 => {
                let mut copy = vec![0; len as usize];
                let from = rng.random_range(0..=size - len);
                file.read_exact_at(&mut copy, from).unwrap();
                copy
            }
            _ => (0..len).map(|_| rng.random()).collect(),
        };
        file.write_all_at(&data, offset).unwrap();
    }
}

/// Prunes every VM to its newest [`KEEP_LAST`] under faults; acknowledged snapshots
/// that are gone must have been allowed to go.
async fn prune(
    repo: &Arc<Repository>,
    store: &UnreliableStore,
    vms: &mut [VmModel],
    figures: &mut Figures,
) {
    let policy = RetentionPolicy {
        keep_last: Some(KEEP_LAST),
        ..RetentionPolicy::default()
    };
    store.set_enabled(false);
    let before = repo.list_snapshots(None).await.unwrap();
    let listed: Vec<(SnapshotId, bool)> = before.iter().map(|id| (id.clone(), false)).collect();
    let may_go: BTreeSet<SnapshotId> = plan_retention(&listed, &policy)
        .into_iter()
        .filter(|decision| !decision.keep)
        .map(|decision| decision.id)
        .collect();
    store.set_enabled(true);
    if prune_snapshots(repo, None, &policy, &RepositoryLeases, false)
        .await
        .is_err()
    {
        figures.prunes_failed += 1;
    }
    store.set_enabled(false);
    let after: BTreeSet<SnapshotId> = repo
        .list_snapshots(None)
        .await
        .unwrap()
        .into_iter()
        .collect();
    store.set_enabled(true);
    for vm in vms {
        vm.acknowledged.retain(|id, _| {
            let gone = !after.contains(id);
            assert!(
                !gone || may_go.contains(id),
                "prune removed {id}, which retention keeps"
            );
            !gone
        });
    }
}

/// Restores a random acknowledged snapshot under faults: the exact disk, or an error.
async fn restore_under_faults(
    repo: &Arc<Repository>,
    vms: &[VmModel],
    dir: &Path,
    rng: &mut StdRng,
    figures: &mut Figures,
) {
    let vm = &vms[rng.random_range(0..vms.len())];
    let Some((id, model)) = vm
        .acknowledged
        .iter()
        .nth(rng.random_range(0..vm.acknowledged.len().max(1)))
    else {
        return;
    };
    match restore(repo, id, dir).await {
        Ok(restored) => {
            assert!(
                restored == **model,
                "a restore of {id} under faults succeeded with other bytes"
            );
            figures.restores_under_faults_ok += 1;
        }
        Err(_) => figures.restores_under_faults_failed += 1,
    }
}

async fn restore(repo: &Arc<Repository>, id: &SnapshotId, dir: &Path) -> Result<Vec<u8>, String> {
    let to = dir.join("restored.raw");
    let request = RestoreRequest {
        snapshot: id.to_string().parse().unwrap(),
        disk: None,
        to: to.clone(),
        format: RestoreFormat::Raw,
        force: true,
        in_flight: 4,
    };
    restore_disk(repo.clone(), &request, Arc::new(Progress::new()))
        .await
        .map_err(|error| error.to_string())?;
    Ok(std::fs::read(&to).unwrap())
}

/// Verifies every acknowledged snapshot under faults: a fault is a transport error,
/// read again, so none may be called damaged (a failed verdict would make the next
/// backup read its whole disk).
async fn verify_under_faults(repo: &Arc<Repository>, vms: &[VmModel], seed: u64, round: usize) {
    let ids: Vec<SnapshotId> = vms
        .iter()
        .flat_map(|vm| vm.acknowledged.keys().cloned())
        .collect();
    let options = VerifyOptions {
        record: false,
        ..VerifyOptions::default()
    };
    let report = verify_snapshots(repo.clone(), &ids, &options, &Progress::new())
        .await
        .unwrap_or_else(|error| panic!("seed {seed} round {round}: verify under faults: {error}"));
    assert!(
        report.is_ok(),
        "seed {seed} round {round}: verify under faults called intact objects bad: {:?}",
        report.failures
    );
}

/// The invariants, with faults off. Returns how many snapshots are stored that no
/// backup acknowledged (committed, then the reply lost).
async fn check(
    repo: &Arc<Repository>,
    vms: &[VmModel],
    dir: &Path,
    seed: u64,
    round: usize,
) -> u64 {
    let stored: BTreeSet<SnapshotId> = repo
        .list_snapshots(None)
        .await
        .unwrap()
        .into_iter()
        .collect();
    let mut unacknowledged = 0;
    for vm in vms {
        for id in vm.acknowledged.keys() {
            assert!(
                stored.contains(id),
                "seed {seed} round {round}: acknowledged snapshot {id} is gone"
            );
        }
    }
    for id in &stored {
        let vm = vms.iter().find(|vm| vm.name == id.vm).unwrap();
        let restored = restore(repo, id, dir)
            .await
            .unwrap_or_else(|error| panic!("seed {seed} round {round}: restore of {id}: {error}"));
        match vm.acknowledged.get(id) {
            Some(model) => assert!(
                restored == **model,
                "seed {seed} round {round}: {id} restores other bytes than were backed up"
            ),
            None => {
                unacknowledged += 1;
                assert!(
                    vm.attempts.iter().any(|model| restored == **model),
                    "seed {seed} round {round}: unacknowledged {id} matches no backup attempt"
                );
            }
        }
    }
    let ids: Vec<SnapshotId> = stored.into_iter().collect();
    let options = VerifyOptions {
        record: false,
        ..VerifyOptions::default()
    };
    let report = verify_snapshots(repo.clone(), &ids, &options, &Progress::new())
        .await
        .unwrap();
    assert!(
        report.is_ok(),
        "seed {seed} round {round}: verify failed: {:?}",
        report.failures
    );
    unacknowledged
}

/// A collection without faults: nothing unreferenced and older than its cutoff stays,
/// and nothing referenced is missing.
async fn final_collection(repo: &Arc<Repository>, dir: &Path, seed: u64) {
    let options = GcOptions {
        margin: Duration::ZERO,
        temp_dir: Some(dir.to_path_buf()),
        ..GcOptions::default()
    };
    let collected = collect_garbage(repo, &RepositoryLeases, &options)
        .await
        .unwrap();
    assert_eq!(collected.chunks_missing, 0, "seed {seed}: {collected:?}");
    let dry_run = GcOptions {
        dry_run: true,
        ..options
    };
    let after = collect_garbage(repo, &RepositoryLeases, &dry_run)
        .await
        .unwrap();
    assert_eq!(after.chunks_missing, 0, "seed {seed}: {after:?}");
    assert!(
        after.chunks_removed <= collected.chunks_too_young,
        "seed {seed}: unreferenced chunks older than the cutoff survived a collection: {collected:?} then {after:?}"
    );
}

/// A collection lock whose write was applied but answered with an error (or answered
/// `AlreadyExists` by a duplicated delivery) must not stay behind as a live lock: a
/// live collection lock holds every backup's commit until it goes stale (15 minutes).
#[tokio::test]
async fn a_lock_write_with_a_lost_reply_leaves_no_live_lock() {
    for (fault, rates) in [
        (
            "lost reply",
            FaultRates {
                lost_reply: 1.0,
                ..FaultRates::default()
            },
        ),
        (
            "duplicate",
            FaultRates {
                duplicate: 1.0,
                ..FaultRates::default()
            },
        ),
    ] {
        let store = UnreliableStore::new(Arc::new(InMemory::new()), rates, 1);
        let backend = Backend::over_object_store("unreliable://", Arc::new(store.clone()));
        let acquired = GcLock::acquire(&backend).await;
        // Faults were on for the whole acquire; the release is written cleanly.
        store.set_enabled(false);
        match acquired {
            Ok(lock) => lock.release().await.unwrap(),
            Err(error) => eprintln!("{fault}: the collection did not start: {error}"),
        }
        let live = live_records(&backend, "gc").await.unwrap();
        assert!(
            live.is_empty(),
            "{fault}: a live collection lock stayed: {live:?}"
        );
    }
}

/// A reply cut short (a prefix of the object, no error) is a transport fault that
/// names the cut and is retryable, not a corrupt object.
#[tokio::test]
async fn a_cut_reply_is_a_transport_fault_not_damage() {
    let cut_every_read = FaultRates {
        short_read: 1.0,
        ..FaultRates::default()
    };
    let store = UnreliableStore::new(Arc::new(InMemory::new()), cut_every_read, 1);
    store.set_enabled(false);
    let backend = Backend::over_object_store("unreliable://", Arc::new(store.clone()));
    backend
        .put_if_absent(
            "chunks/ab/abcd",
            bytes::Bytes::from_static(b"twelve bytes"),
            haven_repo::Durability::Immediate,
        )
        .await
        .unwrap();
    store.set_enabled(true);
    let error = backend.get("chunks/ab/abcd", 100).await.unwrap_err();
    assert!(
        matches!(error, haven_repo::RepoError::Storage { .. }) && error.is_retryable(),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("cut short") && error.to_string().contains("of 12 bytes"),
        "{error}"
    );
    assert_eq!(store.counts().short_reads, 1);
}
