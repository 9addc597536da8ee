//! A real Prometheus scraping every component of a running `haven dev` (coordinator,
//! worker and storage node, each on its own `/metrics`): after two backups, each
//! followed by a replication to the storage node, Prometheus's query API has the VM's
//! last-success timestamp and its replication lag, and every metric name the
//! components export is documented in `docs/operations.md`.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::dev::{Dev, make_image};
use crate::support::{
    cluster::{WebVm, init_repo, one_cluster_at_a_time},
    metrics::scrape,
    process::free_port,
    prometheus::{Prometheus, Target, sample_value},
};

/// Unix seconds now.
fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The metric names a `/metrics` response declares (`# TYPE NAME KIND`).
fn exported_names(response: &str) -> Vec<String> {
    response
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

#[test]
fn a_real_prometheus_scrapes_every_component() {
    let _alone = one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let vm = WebVm::start(dir.path(), make_image);
    let vms = &vm.vms;
    let primary = dir.path().join("primary");
    init_repo(&primary, &[]);
    let worker_metrics = free_port();
    let dev = Dev::start(
        dir.path(),
        vms,
        &[
            "--worker-metrics-listen",
            &format!("127.0.0.1:{worker_metrics}"),
        ],
    );
    let replica = dev.replica_url();
    dev.cli.apply_policy(
        &dir.path().join("policy.toml"),
        &format!(
            "[[policy]]\nname = \"web\"\nschedule = \"0 0 1 1 *\"\nrepository = {:?}\n\
         replicate_to = {replica:?}\nrpo_seconds = 3600\n",
            primary.to_str().unwrap(),
        ),
    );

    // The coordinator serves /metrics over its TLS, to viewer (or admin) certificates.
    let (ca, cert, key) = (
        dev.pki.join("ca.pem"),
        dev.pki.join("admin.pem"),
        dev.pki.join("admin-key.pem"),
    );
    let coordinator_tls = Some((ca.as_path(), cert.as_path(), key.as_path()));
    let prometheus = Prometheus::start(
        &dir.path().join("prometheus"),
        &[
            Target {
                job: "coordinator",
                port: dev.http,
                tls: coordinator_tls,
            },
            Target {
                job: "worker",
                port: worker_metrics,
                tls: None,
            },
            Target {
                job: "storage",
                port: dev.storage_port,
                tls: None,
            },
        ],
    );
    for job in ["coordinator", "worker", "storage"] {
        let up = prometheus.wait_for(
            &format!("up{{job=\"{job}\"}} == 1"),
            Duration::from_secs(30),
        );
        assert_eq!(up.len(), 1, "{job}: {up:?}");
    }

    // Two backups, each followed by its replication, the second one three seconds
    // later: a lag counted from the older snapshot would exceed scrape time − the
    // newest by that much.
    dev.cli.ok(&["policy", "run", "web"]);
    dev.wait_for("backup", 1, Duration::from_secs(60));
    dev.wait_for("replicate", 1, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(3));
    dev.cli.ok(&["policy", "run", "web"]);
    dev.wait_for("backup", 2, Duration::from_secs(60));
    dev.wait_for("replicate", 2, Duration::from_secs(60));
    let snapshots: Vec<Value> = dev.cli.snapshots(&primary);
    let newest = snapshots
        .iter()
        .filter_map(|s| s["timestamp"].as_str())
        .max()
        .unwrap_or_else(|| panic!("no snapshot: {snapshots:#?}"))
        .to_string();
    let newest_seconds =
        time::OffsetDateTime::parse(&newest, &time::format_description::well_known::Rfc3339)
            .unwrap()
            .unix_timestamp() as f64;

    // The last success is the newest snapshot, with the VM's policy.
    let last_success = prometheus.wait_for(
        &format!("haven_vm_last_success_timestamp_seconds{{vm=\"web\"}} == {newest_seconds}"),
        Duration::from_secs(30),
    );
    assert_eq!(
        last_success[0]["metric"]["policy"], "web",
        "{last_success:?}"
    );
    assert_eq!(last_success[0]["metric"]["job"], "coordinator");
    let attempt = prometheus.wait_for(
        "haven_vm_last_attempt_success{vm=\"web\"}",
        Duration::from_secs(10),
    );
    assert_eq!(sample_value(&attempt[0]), 1.0, "{attempt:?}");
    let rpo = prometheus.wait_for(
        "haven_policy_rpo_seconds{policy=\"web\"}",
        Duration::from_secs(10),
    );
    assert_eq!(sample_value(&rpo[0]), 3600.0, "{rpo:?}");

    // The replication lag in a sample scraped after the second replication counts
    // from the newest snapshot: lag − (scrape time − newest) is 0 up to the
    // rounding of the lag to whole seconds (-1, 0]; from the older snapshot it
    // would be 3 or more.
    let replicated_at = now_seconds();
    let lag = "haven_vm_replication_lag_seconds{vm=\"web\"}";
    let sites = prometheus.wait_for(lag, Duration::from_secs(30));
    assert_eq!(sites.len(), 1, "{sites:?}");
    assert_eq!(sites[0]["metric"]["site"], replica.as_str(), "{sites:?}");
    let difference = prometheus.wait_for(
        &format!(
            "({lag} - (timestamp({lag}) - {newest_seconds})) and (timestamp({lag}) > {replicated_at})"
        ),
        Duration::from_secs(30),
    );
    let difference = sample_value(&difference[0]);
    assert!(
        (-1.5..1.0).contains(&difference),
        "the lag is off by {difference} s from scrape time − the newest snapshot ({newest})"
    );

    // Job counters, worker throughput, storage node disk, build info on every job.
    let backups = prometheus.wait_for(
        "haven_jobs_total{kind=\"backup\",result=\"succeeded\"} == 2",
        Duration::from_secs(30),
    );
    assert_eq!(backups.len(), 1, "{backups:?}");
    prometheus.wait_for(
        "haven_job_duration_seconds_count{kind=\"replicate\"} == 2",
        Duration::from_secs(30),
    );
    prometheus.wait_for("haven_backup_read_bytes_total > 0", Duration::from_secs(30));
    prometheus.wait_for("haven_worker_read_bytes_total > 0", Duration::from_secs(30));
    prometheus.wait_for(
        "haven_worker_uploaded_bytes_total > 0",
        Duration::from_secs(30),
    );
    prometheus.wait_for(
        "haven_storage_disk_used_ratio > 0 and haven_storage_disk_used_ratio <= 1",
        Duration::from_secs(30),
    );
    // The first count of objects ran at the first scrape, before the replication
    // wrote its bucket's objects: only its presence is certain here.
    prometheus.wait_for(
        "haven_storage_objects_counted_timestamp_seconds > 0",
        Duration::from_secs(30),
    );
    for (job, component) in [
        ("coordinator", "coordinator"),
        ("worker", "worker"),
        ("storage", "storage-node"),
    ] {
        prometheus.wait_for(
            &format!("haven_build_info{{job=\"{job}\",component=\"{component}\"}}"),
            Duration::from_secs(10),
        );
        prometheus.wait_for(
            &format!("process_resident_memory_bytes{{job=\"{job}\"}} > 0"),
            Duration::from_secs(10),
        );
    }

    // Every name the three components export is documented.
    let docs = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md"),
    )
    .unwrap();
    let mut undocumented = Vec::new();
    let coordinator = Command::new("curl")
        .args(["-s", "--max-time", "10", "--cacert"])
        .arg(&ca)
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .arg(format!("https://127.0.0.1:{}/metrics", dev.http))
        .output()
        .unwrap();
    let responses = [
        (
            dev.http,
            String::from_utf8_lossy(&coordinator.stdout).into_owned(),
        ),
        (worker_metrics, scrape(worker_metrics)),
        (dev.storage_port, scrape(dev.storage_port)),
    ];
    for (port, response) in responses {
        let names = exported_names(&response);
        assert!(names.len() > 5, "{port}: {names:?}");
        undocumented.extend(
            names
                .into_iter()
                .filter(|name| !docs.contains(&format!("`{name}`"))),
        );
    }
    assert!(
        undocumented.is_empty(),
        "exported but not in docs/operations.md: {undocumented:?}"
    );
}
