//! Render time of the web console at the scale of the control-plane simulation
//! (`bench/cluster-scale.sh`: 10,000 VMs on 500 hosts), with a catalog of 100,000
//! snapshots and a week of job history: the issue's bar is 200 ms per page.
//!
//! ```text
//! bench/console.sh                    # or:
//! cargo test -p haven-coordinator --bench console   # a dev build: slower figures
//! ```
//! (arguments after `--`: `--vms N --snapshots-per-vm K --jobs-per-vm J --runs R`)
//!
//! The state is written to an embedded store (VMs, three policies, snapshots, jobs
//! with one failed backup in fifty and the VMs of one policy past their RPO) and loaded
//! by a real `Leader`, exactly as a replica loads it when it wins an election; then
//! each page is rendered `runs` times through `haven_coordinator::console::pages`, the
//! functions the HTTP handler calls. It prints the median and the slowest render of
//! each page and its size.

use std::sync::Arc;
use std::time::{Duration, Instant};

use haven_coordinator::console::{PageContext, pages};
use haven_coordinator::leader::{JobMetrics, Leader, LeaderSettings};
use haven_coordinator::model::{
    self, Attempt, JobKind, JobParams, JobRecord, JobState, SnapshotRecord, VmRecord,
};
use haven_coordinator::policy::{RepositoryAllowlist, parse_policies};
use haven_coordinator::store::embedded::EmbeddedStore;
use haven_coordinator::store::{MetaStore, Op};

struct Options {
    vms: usize,
    snapshots_per_vm: usize,
    jobs_per_vm: usize,
    runs: usize,
}

fn options() -> Options {
    let mut options = Options {
        vms: 10_000,
        snapshots_per_vm: 10,
        jobs_per_vm: 7,
        runs: 20,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = || -> usize {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{arg} N"))
        };
        match arg.as_str() {
            "--vms" => options.vms = number(),
            "--snapshots-per-vm" => options.snapshots_per_vm = number(),
            "--jobs-per-vm" => options.jobs_per_vm = number(),
            "--runs" => options.runs = number(),
            // `cargo bench` and `cargo test` pass their own flags.
            _ => {}
        }
    }
    options
}

const POLICIES: &str = r#"
[[policy]]
name = "gold"
schedule = "0 * * * *"
repository = "s3://haven/gold"
select = { names = ["vm-00*", "vm-01*", "vm-02*", "vm-03*"] }
replicate_to = "s3://dr/gold"

[[policy]]
name = "silver"
schedule = "0 2 * * *"
repository = "s3://haven/silver"
select = { names = ["vm-04*", "vm-05*", "vm-06*", "vm-07*"] }

[[policy]]
name = "tight"
schedule = "0 2 * * *"
repository = "s3://haven/tight"
rpo_seconds = 600
select = { names = ["vm-08*", "vm-09*"] }
"#;

fn name(index: usize) -> String {
    format!("vm-{index:05}")
}

/// The repository of the policy selecting VM `index` (by its thousands digit).
fn repository(index: usize) -> &'static str {
    match name(index).as_bytes()[4] {
        b'0'..=b'3' => "s3://haven/gold",
        b'4'..=b'7' => "s3://haven/silver",
        _ => "s3://haven/tight",
    }
}

/// RFC 3339 of Unix seconds.
fn timestamp(seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// Every record of the simulated cluster, as store writes.
fn records(options: &Options, now_ms: u64) -> Vec<Op> {
    let now = (now_ms / 1000) as i64;
    let mut ops = Vec::new();
    for policy in parse_policies("bench.toml", POLICIES, &RepositoryAllowlist::any()).unwrap() {
        ops.push(Op::put(model::policy_key(&policy.name), json(&policy)));
    }
    for index in 0..options.vms {
        let vm = name(index);
        let record = VmRecord {
            name: vm.clone(),
            host: format!("host-{:03}", index % 500),
            disks: vec![("vda".into(), 20 << 30), ("vdb".into(), 100 << 30)],
            labels: Default::default(),
        };
        ops.push(Op::put(model::vm_key(&vm), json(&record)));
        for k in 0..options.snapshots_per_vm {
            // Hourly; the policy "tight" (RPO 10 min) is past it for every VM.
            let at = now - 3600 * (k as i64 + 1) - (index % 3600) as i64;
            let snapshot = SnapshotRecord {
                vm: vm.clone(),
                timestamp: timestamp(at),
                repository: repository(index).into(),
                disks: vec![("vda".into(), 20 << 30), ("vdb".into(), 100 << 30)],
                bytes_uploaded: 300 << 20,
                job_id: format!("job-{index}-{k}"),
                bytes_read: 2 << 30,
                bytes_new: 400 << 20,
                committed_unix_ms: (at as u64) * 1000 + 60_000,
            };
            ops.push(Op::put(
                model::snapshot_key(&vm, &snapshot.timestamp),
                json(&snapshot),
            ));
        }
        for k in 0..options.jobs_per_vm {
            let created = now_ms - 86_400_000 * k as u64 - (index as u64 % 3600) * 1000;
            let failed = k == 0 && index % 50 == 0;
            let job = JobRecord {
                id: format!("job-{index}-{k}"),
                kind: JobKind::Backup,
                params: JobParams::default(),
                summary: None,
                boot_passed: None,
                vm: vm.clone(),
                host: format!("host-{:03}", index % 500),
                policy: None,
                repository: repository(index).into(),
                state: if failed {
                    JobState::Failed
                } else {
                    JobState::Succeeded
                },
                attempts: vec![Attempt {
                    number: 1,
                    worker: format!("worker-{:03}", index % 500),
                    lease: 1,
                    token: 1,
                    assigned_unix_ms: created + 1000,
                    ended_unix_ms: created + 600_000,
                    outcome: String::new(),
                    traceparent: String::new(),
                }],
                created_unix_ms: created,
                finished_unix_ms: created + 600_000,
                snapshot: None,
                error: failed.then(|| "NBD read of vda at 4096: connection reset".to_owned()),
                bytes_uploaded: 300 << 20,
                commit: None,
                not_before_unix_ms: 0,
            };
            ops.push(Op::put(model::job_key(&job.id), json(&job)));
        }
    }
    ops
}

/// A record as stored.
fn json(value: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(value).unwrap()
}

/// Median and slowest of `runs` calls of `render`, and the page's size.
fn measure(runs: usize, mut render: impl FnMut() -> String) -> (Duration, Duration, usize) {
    let mut times = Vec::with_capacity(runs);
    let mut size = 0;
    for _ in 0..runs {
        let start = Instant::now();
        size = render().len();
        times.push(start.elapsed());
    }
    times.sort();
    (times[times.len() / 2], times[times.len() - 1], size)
}

fn main() {
    let options = options();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(run(options));
}

async fn run(options: Options) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("bench.redb"))
        .await
        .unwrap();
    let now_ms = model::now_ms();
    let ops = records(&options, now_ms);
    let count = ops.len();
    let start = Instant::now();
    let mut ops = ops.into_iter().peekable();
    while ops.peek().is_some() {
        let batch: Vec<Op> = ops.by_ref().take(5000).collect();
        store.txn(vec![], batch).await.unwrap();
    }
    let mut registry = haven_metrics::Registry::new();
    let settings = LeaderSettings {
        worker_lease: Duration::from_secs(10),
        default_max_per_host: 2,
        default_max_per_worker: 2,
        job_history: Duration::from_secs(7 * 86_400),
        inventory_grace: Duration::from_secs(3600),
        job_metrics: JobMetrics::register(&mut registry),
        notifier: Default::default(),
    };
    let store: Arc<dyn MetaStore> = store;
    let leader = Leader::load(store, 1, settings).await.unwrap();
    println!(
        "state: {} VMs, {} snapshots, {} jobs ({count} records written and loaded in {:.1} s)",
        options.vms,
        options.vms * options.snapshots_per_vm,
        options.vms * options.jobs_per_vm,
        start.elapsed().as_secs_f64()
    );
    let context = PageContext {
        who: "viewer bench".into(),
        csrf: "0".repeat(64),
        can_act: true,
        can_audit: false,
        now_ms,
    };
    let vm = name(options.vms / 2);
    let results = [
        (
            "(the summary /metrics computes)",
            measure(options.runs, || {
                format!("{:?}", leader.metrics_summary(now_ms).jobs_by_state)
            }),
        ),
        (
            "overview /",
            measure(options.runs, || pages::overview(&context, &leader)),
        ),
        (
            "VM page /vm/NAME",
            measure(options.runs, || {
                futures::executor::block_on(pages::vm(&context, &leader, &vm)).unwrap()
            }),
        ),
        (
            "VMs at risk /vms?status=at-risk",
            measure(options.runs, || {
                pages::vms(
                    &context,
                    &leader,
                    None,
                    Some(haven_coordinator::console::Protection::AtRisk),
                    0,
                )
            }),
        ),
        (
            "jobs /jobs",
            measure(options.runs, || {
                futures::executor::block_on(pages::jobs(&context, &leader))
            }),
        ),
        (
            "failures /failures",
            measure(options.runs, || pages::failures(&context, &leader)),
        ),
        (
            "replication /replication",
            measure(options.runs, || pages::replication(&context, &leader)),
        ),
        (
            "jobs JSON /api/jobs",
            measure(options.runs, || pages::jobs_json(&leader)),
        ),
    ];
    println!(
        "{:<34} {:>10} {:>10} {:>10}",
        "page", "median", "slowest", "size"
    );
    for (page, (median, slowest, size)) in results {
        println!(
            "{page:<34} {:>7.1} ms {:>7.1} ms {:>7} KiB",
            median.as_secs_f64() * 1000.0,
            slowest.as_secs_f64() * 1000.0,
            size / 1024
        );
    }
}
