//! The soak (issue 18, item 3): real processes, concurrently, for a set time. Two
//! `haven storage-node` processes (a primary and a replica that pulls from it), each
//! behind a fault-injecting TCP proxy (`soak/proxy.rs`), and `haven` CLI processes
//! running at once: a backup loop per VM over a disk changed between rounds
//! (`soak/disk.rs`), prune with retention, GC with margin 0, replication to the
//! second node, and verify. A killer thread sends SIGKILL to a random one of those
//! processes every second or so, and now and then to a node, which is restarted on
//! the same data directory.
//!
//! Every few seconds, with prune, GC and replication held back (backups and verify go
//! on, and so do the kills), and at the end, with everything stopped and no faults,
//! the soak checks (`check`):
//! - every acknowledged snapshot (its backup exited 0 and printed its name) is listed,
//!   or was one retention let go; a pruned one never comes back;
//! - every listed snapshot verifies; every acknowledged one restores byte-identical
//!   to its model, and one nobody acknowledged (a backup killed or failed after its
//!   commit) restores to the disk of one of its VM's attempts: a killed backup leaves
//!   no snapshot or a whole one;
//! - the same on the replica for what it lists;
//! - at the end: after a last replication, every live acknowledged snapshot is on the
//!   replica, a GC with margin 0 finds no referenced chunk missing and leaves nothing
//!   unreferenced.
//!
//! `HAVEN_SOAK_SECONDS` sets the duration (60 by default, in the `it` suite);
//! `HAVEN_SOAK_SEED` replays a run's choices (the seed is printed at the start).

mod disk;
mod ledger;
mod procs;
mod proxy;
mod rng;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crate::support::{
    haven::HavenClient,
    image::assert_same_disk,
    storage_node::{Node, NodeOptions},
};

use disk::{CHUNK, Digest, Disk, digest_of};
use ledger::{KEEP_LAST, Ledger, vm_of};
use procs::{Processes, Run};
use proxy::{FaultCounts, FaultProxy};
use rng::Rng;

/// VMs backed up at once.
const VMS: usize = 4;
/// Time between two checks while the soak runs.
const CHECK_EVERY: Duration = Duration::from_secs(15);

/// A storage node behind two proxies on ports that outlive its restarts: one injects
/// faults (the workload's), one does not (the checks').
struct Site {
    node: Mutex<Node>,
    upstream: Arc<AtomicU16>,
    faulty: FaultProxy,
    clean: FaultProxy,
    bucket: &'static str,
}

impl Site {
    /// Starts a node whose bucket is `bucket`, allowed to pull from `pull_sources`.
    fn start(
        bucket: &'static str,
        pull_sources: Vec<String>,
        rng: &mut Rng,
        counts: &Arc<FaultCounts>,
    ) -> Self {
        let upstream = Arc::new(AtomicU16::new(0));
        let faulty = FaultProxy::start(upstream.clone(), true, rng.bits(), counts.clone());
        let clean = FaultProxy::start(upstream.clone(), false, 0, Arc::new(FaultCounts::default()));
        let node = Node::start_with(NodeOptions {
            pull_sources,
            // s3s logs each request the proxy cut as an error: thousands of lines.
            env: vec![("HAVEN_LOG".to_owned(), "warn,s3s=off".to_owned())],
            ..NodeOptions::default()
        });
        upstream.store(node.port, Ordering::SeqCst);
        node.aws_ok(&["s3", "mb", &format!("s3://{bucket}")]);
        Self {
            node: Mutex::new(node),
            upstream,
            faulty,
            clean,
            bucket,
        }
    }

    /// The repository's URL through the faulty proxy or the clean one.
    fn url(&self, faulty: bool) -> String {
        let proxy = if faulty { &self.faulty } else { &self.clean };
        format!("s3://{}/soak?endpoint={}", self.bucket, proxy.endpoint())
    }

    /// `kill -9` of the node, and a new one on the same data directory.
    fn restart(&self) {
        let mut node = self.node.lock().unwrap_or_else(PoisonError::into_inner);
        node.restart();
        self.upstream.store(node.port, Ordering::SeqCst);
    }
}

/// What the workload did, for the report.
#[derive(Default)]
struct Tally {
    /// Runs by command and outcome (`backup ok`, `gc killed`, ...).
    runs: BTreeMap<String, u64>,
    /// Error lines of failed runs (not killed), by their first words.
    errors: BTreeMap<String, u64>,
    /// Node restarts after `kill -9`: primary, replica.
    node_kills: [u64; 2],
    /// Checks passed.
    checks: u64,
    /// Snapshots restored and compared by the checks.
    restores: u64,
}

impl Tally {
    fn count(&mut self, what: &str, run: &Run) {
        let outcome = if run.killed {
            "killed"
        } else if run.succeeded() {
            "ok"
        } else {
            *self
                .errors
                .entry(format!("{what}: {}", shortened(&run.error_line())))
                .or_default() += 1;
            "failed"
        };
        *self.runs.entry(format!("{what} {outcome}")).or_default() += 1;
    }

    fn runs_of(&self, key: &str) -> u64 {
        self.runs.get(key).copied().unwrap_or(0)
    }
}

/// An error line cut to its beginning and end (the middle is URLs and keys), so that
/// the report can count failures of one kind together.
fn shortened(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    if chars.len() <= 150 {
        return line.to_owned();
    }
    let head: String = chars[..60].iter().collect();
    let tail: String = chars[chars.len() - 80..].iter().collect();
    format!("{head} … {tail}")
}

/// Everything the threads of a soak share.
struct Soak {
    seed: u64,
    dir: tempfile::TempDir,
    primary: Site,
    replica: Site,
    processes: Processes,
    ledger: Mutex<Ledger>,
    tally: Mutex<Tally>,
    /// Prune, GC and replication hold it to read while they run; a check holds it to
    /// write, so that what it lists stays put.
    maintenance: RwLock<()>,
    /// Snapshots of the replica restored and compared once.
    replica_restored: Mutex<BTreeSet<String>>,
    /// Held by a check and by a node restart.
    nodes: Mutex<()>,
    stop: AtomicBool,
    faults: Arc<FaultCounts>,
    started: Instant,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Soak {
    fn haven(&self, args: &[&str]) -> Command {
        HavenClient::with_node_keys().command(args)
    }

    /// Runs `haven ARGS` killable, counted under `what`.
    fn run(&self, what: &'static str, args: &[&str]) -> Run {
        self.run_command(what, self.haven(args))
    }

    /// Runs `command` killable, counted under `what`.
    fn run_command(&self, what: &'static str, command: Command) -> Run {
        let run = self.processes.run(what, command);
        lock(&self.tally).count(what, &run);
        run
    }

    /// Runs a check's `haven ARGS` (through the clean proxies); it must succeed.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.haven(args).output().expect("run haven");
        assert!(
            output.status.success(),
            "{} (seed {}): haven {args:?} failed: {}",
            self.elapsed(),
            self.seed,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// [`Soak::ok`] with `--json`, parsed.
    fn json(&self, args: &[&str]) -> serde_json::Value {
        let stdout = self.ok(&[args, &["--json"]].concat());
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    }

    fn elapsed(&self) -> String {
        format!("t={:.0}s", self.started.elapsed().as_secs_f64())
    }

    fn running(&self) -> bool {
        !self.stop.load(Ordering::SeqCst)
    }

    /// Sleeps a random time in `range` milliseconds, less if the soak stops.
    fn pause(&self, rng: &mut Rng, from_ms: u64, to_ms: u64) {
        let until = Instant::now() + Duration::from_millis(from_ms + rng.below(to_ms - from_ms));
        while self.running() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The backup loop of one VM: change the disk, keep its model, back it up.
fn back_up(soak: &Soak, disk: &Disk, mut rng: Rng) {
    let url = soak.primary.url(true);
    let image = disk.image.display().to_string();
    for round in 0.. {
        if !soak.running() {
            return;
        }
        disk.change(&mut rng);
        let model = soak.dir.path().join(format!("{}-{round}.model", disk.vm));
        let digest = disk.keep(&model);
        lock(&soak.ledger).begin(&disk.vm, digest);
        let args = [
            "backup", "image", &image, "--vm", &disk.vm, "--json", "--repo", &url,
        ];
        let run = soak.run("backup", &args);
        if run.succeeded() {
            let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap_or_else(|e| {
                panic!("backup exited 0 without its report ({e}): {}", run.stdout)
            });
            let name = report["snapshot"]
                .as_str()
                .unwrap_or_else(|| panic!("backup exited 0 without a snapshot name: {report}"))
                .to_owned();
            lock(&soak.ledger).acknowledge(&disk.vm, name, digest, model);
        } else {
            let _ = std::fs::remove_file(&model);
        }
        soak.pause(&mut rng, 100, 1500);
    }
}

/// Prune, GC, replication or verify, again and again, each between `from_ms` and
/// `to_ms` apart.
fn maintain(soak: &Soak, what: &'static str, mut rng: Rng, from_ms: u64, to_ms: u64) {
    let (primary, replica) = (soak.primary.url(true), soak.replica.url(true));
    let keep = KEEP_LAST.to_string();
    while soak.running() {
        soak.pause(&mut rng, from_ms, to_ms);
        // Verify reads only: it runs during checks too.
        let hold = (what != "verify").then(|| {
            soak.maintenance
                .read()
                .unwrap_or_else(PoisonError::into_inner)
        });
        let run = match what {
            "prune" => soak.run(
                what,
                &["prune", "--keep-last", &keep, "--json", "--repo", &primary],
            ),
            "gc" => soak.run(
                what,
                &["gc", "--margin", "0s", "--json", "--repo", &primary],
            ),
            "replicate" => {
                let mut command = soak.haven(&["replicate", "--from", &primary, "--to", &replica]);
                command.env_remove("HAVEN_PASSWORD");
                soak.run_command(what, command)
            }
            _ => soak.run(what, &["verify", "--json", "--repo", &primary]),
        };
        drop(hold);
        // Names a prune planned or a verify listed existed: retention counts them.
        if let Ok(report) = serde_json::from_str::<serde_json::Value>(&run.stdout) {
            let names: Option<Vec<String>> = match what {
                "prune" => report["snapshots"].as_array().map(|lines| {
                    lines
                        .iter()
                        .filter_map(|l| l["snapshot"].as_str().map(str::to_owned))
                        .collect()
                }),
                "verify" => report["snapshots"].as_array().map(|names| {
                    names
                        .iter()
                        .filter_map(|n| n.as_str().map(str::to_owned))
                        .collect()
                }),
                _ => None,
            };
            lock(&soak.ledger).saw(names.unwrap_or_default());
        }
    }
}

/// SIGKILL to a random `haven` process every 0.3–2 s, and to a node every 10–25 s
/// (the replica one time in four), restarted on the same data directory.
fn kill(soak: &Soak, mut rng: Rng) {
    let mut next_node = Instant::now() + Duration::from_millis(10_000 + rng.below(15_000));
    while soak.running() {
        soak.pause(&mut rng, 300, 2000);
        // What was killed shows in the tally as that command's "killed" runs.
        let _ = soak.processes.kill_one(&mut rng);
        if Instant::now() >= next_node && soak.running() {
            let _nodes = lock(&soak.nodes);
            let replica = rng.below(4) == 0;
            let site = if replica {
                &soak.replica
            } else {
                &soak.primary
            };
            site.restart();
            lock(&soak.tally).node_kills[usize::from(replica)] += 1;
            next_node = Instant::now() + Duration::from_millis(10_000 + rng.below(15_000));
        }
    }
}

/// Restores `name` from `url` and returns the digest of what came back.
fn restored_digest(soak: &Soak, url: &str, name: &str) -> (Digest, std::path::PathBuf) {
    let to = soak
        .dir
        .path()
        .join(format!("check-{}.raw", name.replace([':', '@'], "_")));
    let _ = std::fs::remove_file(&to);
    soak.ok(&[
        "restore",
        name,
        "--to",
        &to.display().to_string(),
        "--repo",
        url,
    ]);
    (digest_of(&to), to)
}

/// The snapshot names `url` lists.
fn listed(soak: &Soak, url: &str) -> BTreeSet<String> {
    soak.json(&["snapshots", "--repo", url])
        .as_array()
        .expect("a list")
        .iter()
        .map(|line| line["snapshot"].as_str().expect("a name").to_owned())
        .collect()
}

/// Every listed snapshot of `url` verifies.
fn assert_verifies(soak: &Soak, url: &str, site: &str) {
    let report = soak.json(&["verify", "--repo", url]);
    let failures = report["failures"].as_array().expect("failures");
    assert!(
        failures.is_empty(),
        "{} (seed {}): the {site} does not verify: {report}",
        soak.elapsed(),
        soak.seed
    );
}

/// Compares a restored snapshot with what the ledger says it must be.
fn assert_restores(soak: &Soak, url: &str, name: &str, site: &str) {
    let (got, file) = restored_digest(soak, url, name);
    let mut ledger = lock(&soak.ledger);
    match ledger.expected(name) {
        Some(expected) if expected == got => {}
        Some(_) => {
            if let Some(acked) = ledger.acked.get(name).filter(|a| a.model.exists()) {
                assert_same_disk(&acked.model, &file);
            }
            panic!(
                "{} (seed {}): {name} on the {site} restores to other bytes than its model",
                soak.elapsed(),
                soak.seed
            );
        }
        None => {
            assert!(
                ledger.is_attempt(vm_of(name), &got),
                "{} (seed {}): {name} on the {site} was never acknowledged and restores to no \
                 disk any backup of its VM was started on",
                soak.elapsed(),
                soak.seed
            );
            ledger.unacknowledged.insert(name.to_owned(), got);
        }
    }
    if let Some(acked) = ledger.acked.get_mut(name) {
        acked.restored = true;
    }
    drop(ledger);
    let _ = std::fs::remove_file(file);
    lock(&soak.tally).restores += 1;
}

/// The invariants, through the clean proxies. `everything` restores every listed
/// snapshot; otherwise those not restored yet and two more drawn by `rng`.
fn check(soak: &Soak, everything: bool, rng: &mut Rng) {
    let _quiet = soak
        .maintenance
        .write()
        .unwrap_or_else(PoisonError::into_inner);
    let _nodes = lock(&soak.nodes);
    let primary = soak.primary.url(false);
    let expected = lock(&soak.ledger).expected_listed();
    let names = listed(soak, &primary);
    let violations = lock(&soak.ledger).observe(&expected, &names);
    assert!(
        violations.is_empty(),
        "{} (seed {}): {violations:#?}",
        soak.elapsed(),
        soak.seed
    );
    assert_verifies(soak, &primary, "primary");
    let drawn: Vec<&String> = names
        .iter()
        .filter(|_| rng.below(names.len() as u64 / 2 + 1) == 0)
        .collect();
    for name in &names {
        let fresh = {
            let ledger = lock(&soak.ledger);
            match ledger.acked.get(name) {
                Some(acked) => !acked.restored,
                None => !ledger.unacknowledged.contains_key(name),
            }
        };
        if everything || fresh || drawn.contains(&name) {
            assert_restores(soak, &primary, name, "primary");
        }
    }

    let replica = soak.replica.url(false);
    let copies = listed(soak, &replica);
    assert_verifies(soak, &replica, "replica");
    // The replica keeps what the primary pruned: each copy is restored once, those
    // the primary still has again at the end, and a random one or two each check.
    for name in &copies {
        let fresh = lock(&soak.replica_restored).insert(name.clone());
        if fresh
            || (everything && names.contains(name))
            || rng.below(copies.len() as u64 / 2 + 1) == 0
        {
            assert_restores(soak, &replica, name, "replica");
        }
    }
    let mut tally = lock(&soak.tally);
    tally.checks += 1;
    eprintln!(
        "soak {}: check {} passed: {} snapshots on the primary, {} on the replica; {} faults so far",
        soak.elapsed(),
        tally.checks,
        names.len(),
        copies.len(),
        soak.faults.broken()
    );
}

/// Stops the workload when dropped, so that a failed check leaves no thread running
/// and no process behind.
struct Workload<'a> {
    soak: &'a Soak,
}

impl Drop for Workload<'_> {
    fn drop(&mut self) {
        self.soak.stop.store(true, Ordering::SeqCst);
    }
}

#[test]
fn backups_prune_gc_replication_and_verify_survive_kill9_and_faults() {
    let seconds: u64 = std::env::var("HAVEN_SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let seed: u64 = std::env::var("HAVEN_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            now.map_or(1, |d| d.as_nanos() as u64 % 1_000_000_007)
        });
    eprintln!(
        "soak: seed {seed}, {seconds} s (replay with HAVEN_SOAK_SEED={seed} HAVEN_SOAK_SECONDS={seconds})"
    );
    let mut rng = Rng::fork(seed, "setup");
    let faults = Arc::new(FaultCounts::default());
    let primary = Site::start("haven", Vec::new(), &mut rng, &faults);
    let pull_sources = vec![primary.faulty.endpoint(), primary.clean.endpoint()];
    let replica = Site::start("haven-dr", pull_sources, &mut rng, &faults);
    let soak = Soak {
        seed,
        dir: tempfile::Builder::new()
            .prefix("haven-soak-")
            .tempdir()
            .expect("tempdir"),
        primary,
        replica,
        processes: Processes::default(),
        ledger: Mutex::default(),
        tally: Mutex::default(),
        maintenance: RwLock::new(()),
        replica_restored: Mutex::default(),
        nodes: Mutex::new(()),
        stop: AtomicBool::new(false),
        faults,
        started: Instant::now(),
    };
    let chunk = CHUNK.to_string();
    soak.ok(&[
        "repo",
        "init",
        "--chunk-size",
        &chunk,
        "--repo",
        &soak.primary.url(false),
    ]);
    // The first replication creates the replica's repository, which the checks list.
    replicate_cleanly(&soak);
    let disks: Vec<Disk> = (0..VMS)
        .map(|vm| Disk::create(soak.dir.path(), &format!("vm{vm}"), &mut rng))
        .collect();

    let deadline = Instant::now() + Duration::from_secs(seconds);
    std::thread::scope(|scope| {
        let workload = Workload { soak: &soak };
        for disk in &disks {
            let rng = Rng::fork(seed, &disk.vm);
            let soak = &soak;
            scope.spawn(move || back_up(soak, disk, rng));
        }
        for (what, from, to) in [
            ("prune", 1000, 4000),
            ("gc", 1500, 5000),
            ("replicate", 2000, 6000),
            ("verify", 2000, 6000),
        ] {
            let (soak, rng) = (&soak, Rng::fork(seed, what));
            scope.spawn(move || maintain(soak, what, rng, from, to));
        }
        let (killer, killer_rng) = (&soak, Rng::fork(seed, "kill"));
        scope.spawn(move || kill(killer, killer_rng));

        let mut check_rng = Rng::fork(seed, "check");
        let mut next_check = Instant::now() + CHECK_EVERY;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            if Instant::now() >= next_check {
                check(&soak, false, &mut check_rng);
                next_check = Instant::now() + CHECK_EVERY;
            }
        }
        drop(workload);
    });
    finish(&soak, &mut Rng::fork(seed, "end"));
}

/// `haven replicate` through the clean proxies (without the password, as a copier
/// runs); it must succeed.
fn replicate_cleanly(soak: &Soak) {
    let (primary, replica) = (soak.primary.url(false), soak.replica.url(false));
    let mut command = soak.haven(&["replicate", "--from", &primary, "--to", &replica]);
    command.env_remove("HAVEN_PASSWORD");
    let output = command.output().expect("run haven");
    assert!(
        output.status.success(),
        "seed {}: a replication without faults failed: {}",
        soak.seed,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// With the workload stopped and no faults: a last replication, a full check, and a
/// GC with margin 0 that must find nothing missing and leave nothing unreferenced.
fn finish(soak: &Soak, rng: &mut Rng) {
    let (primary, replica) = (soak.primary.url(false), soak.replica.url(false));
    replicate_cleanly(soak);
    check(soak, true, rng);
    let on_replica = listed(soak, &replica);
    let ledger = lock(&soak.ledger);
    for (name, _) in ledger.live() {
        assert!(
            on_replica.contains(name),
            "seed {}: {name} was not replicated",
            soak.seed
        );
    }
    let live = ledger.live().count();
    drop(ledger);

    // Anything written in the last second is younger than a 0 s margin's cutoff.
    std::thread::sleep(Duration::from_millis(1100));
    let collected = soak.json(&["gc", "--margin", "0s", "--repo", &primary]);
    assert_eq!(
        collected["chunks_missing"], 0,
        "seed {}: {collected}",
        soak.seed
    );
    let again = soak.json(&["gc", "--margin", "0s", "--dry-run", "--repo", &primary]);
    assert_eq!(again["chunks_removed"], 0, "seed {}: {again}", soak.seed);
    assert_eq!(again["indexes_removed"], 0, "seed {}: {again}", soak.seed);
    assert_eq!(
        again["chunks_stored"], again["chunks_referenced"],
        "seed {}: unreferenced chunks remain: {again}",
        soak.seed
    );
    let replica_gc = soak.json(&["gc", "--margin", "0s", "--dry-run", "--repo", &replica]);
    assert_eq!(
        replica_gc["chunks_missing"], 0,
        "seed {}: {replica_gc}",
        soak.seed
    );
    assert_verifies(soak, &primary, "primary after the last collection");

    let tally = lock(&soak.tally);
    eprintln!(
        "soak: seed {}, {:.0} s, {} checks, {} restores compared, {live} live acknowledged snapshots",
        soak.seed,
        soak.started.elapsed().as_secs_f64(),
        tally.checks,
        tally.restores
    );
    eprintln!("soak: runs {:?}", tally.runs);
    eprintln!("soak: node kills (primary, replica) {:?}", tally.node_kills);
    eprintln!("soak: faults {}", soak.faults.summary());
    eprintln!(
        "soak: unacknowledged snapshots found whole {}",
        lock(&soak.ledger).unacknowledged.len()
    );
    for (line, count) in &tally.errors {
        eprintln!("soak: {count} × {line}");
    }
    eprintln!("soak: final collection {collected}");
    // A run that did nothing proves nothing.
    assert!(tally.runs_of("backup ok") >= VMS as u64, "{:?}", tally.runs);
    assert!(
        tally.runs.keys().any(|k| k.ends_with("killed")),
        "nothing was killed"
    );
    assert!(
        tally.runs_of("gc ok") > 0 && tally.runs_of("prune ok") > 0,
        "{:?}",
        tally.runs
    );
    assert!(soak.faults.broken() > 0, "no fault was injected");
}
