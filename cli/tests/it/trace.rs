//! One backup job is one trace. A real coordinator, worker and storage node, each its
//! own `haven` process exporting over OTLP/gRPC to a receiver built here on the
//! official `opentelemetry-proto` service, run one backup of a `qemu-storage-daemon`
//! VM into a repository on the node. The receiver must then hold the job's trace:
//! the coordinator's `assign` span is its root, the worker's `job` span its child,
//! the phases (`snapshot`, `read` → `upload`, `commit`) children of the job, the
//! coordinator's fenced `commit` a child of the worker's, and the storage node's
//! `request` spans children of worker spans; vm, job and bytes are attributes. The
//! node sends its spans only when it stops (a batch delay longer than the test), so
//! they arriving also shows that shutdown flushes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::support::{
    cluster::{WebVm, make_image, one_cluster_at_a_time},
    haven::{HavenClient, PASSWORD, haven},
    otlp::{Collector, ReceivedSpan},
    pki::Pki,
    process::{free_port, spawn_logged},
    s3::{S3Keys, with_keys},
    storage_node::{Node, NodeOptions},
};

/// The variables that point a process at the receiver, sending every `delay_ms`.
fn otlp_env(collector: &Collector, delay_ms: u64) -> Vec<(String, String)> {
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), collector.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), delay_ms.to_string()),
    ]
}

#[test]
fn a_backup_job_is_one_trace_from_assignment_to_storage_node() {
    let _alone = one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start();

    // The node sends its spans only when it stops.
    let mut node = Node::start_with(NodeOptions {
        args: vec!["--create-bucket".into(), "haven".into()],
        env: otlp_env(&collector, 3_600_000),
        ..NodeOptions::default()
    });
    let repo = format!("s3://haven/traced?endpoint={}", node.endpoint());
    HavenClient::on_node(repo.clone()).ok(&["repo", "init"]);

    let vm = WebVm::start(dir.path(), |image| make_image(image, 16, 2));
    let vms = &vm.vms;

    let pki = Pki::new(dir.path());
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let config = dir.path().join("coordinator.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nstate_path = {:?}\ntick_ms = 200\n\
             allowed_repositories = [\"s3://haven/*\"]\n{}",
            dir.path().join("state.redb"),
            pki.coordinator_toml()
        ),
    )
    .unwrap();
    // The coordinator publishes manifests: it needs the node's keys too.
    let _coordinator = spawn_logged(
        with_keys(
            &mut haven(&["coordinator", "--config", config.to_str().unwrap()]),
            &S3Keys::node(),
        )
        .envs(otlp_env(&collector, 200)),
        &dir.path().join("coordinator.log"),
    );
    let worker_config = dir.path().join("worker.toml");
    std::fs::write(
        &worker_config,
        format!(
            "id = \"w1\"\ncoordinators = [{url:?}]\nmax_jobs = 1\nconnections = 2\n\
             scratch_dir = {:?}\n{}[[hosts]]\nname = \"h1\"\nqmp_dir = {:?}\n",
            dir.path(),
            pki.worker_toml("w1"),
            vms
        ),
    )
    .unwrap();
    let _worker = spawn_logged(
        with_keys(
            &mut haven(&["worker", "--config", worker_config.to_str().unwrap()]),
            &S3Keys::node(),
        )
        .env("HAVEN_PASSWORD", PASSWORD)
        .envs(otlp_env(&collector, 200)),
        &dir.path().join("worker.log"),
    );

    let admin = pki.admin(&url);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !admin
        .run(&["vm", "list", "--json"])
        .stdout
        .windows(5)
        .any(|w| w == b"\"web\"")
    {
        assert!(
            Instant::now() < deadline,
            "the worker did not report VM web"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let job = admin
        .ok(&["job", "run", "web", "--repo", &repo])
        .trim()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let jobs = admin.jobs();
        let state = jobs
            .iter()
            .find(|j| j["job_id"] == job.as_str())
            .map(|j| j["state"].as_str().unwrap_or_default().to_string());
        match state.as_deref() {
            Some("succeeded") => break,
            Some("failed") => panic!("the job failed: {jobs:#?}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "the job did not end: {jobs:#?}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // The coordinator and the worker send within a fraction of a second; the node
    // when it stops.
    node.terminate();
    let job_trace = |spans: &[ReceivedSpan]| -> Option<String> {
        spans
            .iter()
            .find(|s| s.service == "haven-worker" && s.name == "job" && s.attribute("job") == job)
            .map(|s| s.trace_id.clone())
    };
    collector.wait_for(
        "job trace with coordinator, worker and storage-node spans",
        Duration::from_secs(60),
        |spans| {
            let Some(trace) = job_trace(spans) else {
                return false;
            };
            let services: Vec<&str> = spans
                .iter()
                .filter(|s| s.trace_id == trace)
                .map(|s| s.service.as_str())
                .collect();
            ["haven-coordinator", "haven-worker", "haven-storage-node"]
                .iter()
                .all(|service| services.contains(service))
                && spans.iter().any(|s| {
                    s.trace_id == trace && s.service == "haven-coordinator" && s.name == "commit"
                })
        },
    );

    let spans = collector.spans();
    let trace = job_trace(&spans).unwrap();
    let in_trace: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == trace).collect();
    let by_id: HashMap<&str, &ReceivedSpan> =
        in_trace.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    let one = |service: &str, name: &str| -> &ReceivedSpan {
        let found: Vec<&&ReceivedSpan> = in_trace
            .iter()
            .filter(|s| s.service == service && s.name == name)
            .collect();
        assert_eq!(found.len(), 1, "one {service} {name} span: {in_trace:#?}");
        found[0]
    };

    // The coordinator's assignment is the root, the worker's job its child.
    let assign = one("haven-coordinator", "assign");
    assert_eq!(assign.parent_span_id, "", "assign is the root: {assign:#?}");
    assert_eq!(assign.attribute("job"), job);
    assert_eq!(assign.attribute("vm"), "web");
    assert_eq!(assign.attribute("worker"), "w1");
    let worker_job = one("haven-worker", "job");
    assert_eq!(worker_job.parent_span_id, assign.span_id);
    assert_eq!(worker_job.attribute("vm"), "web");
    assert_eq!(worker_job.attribute("kind"), "backup");
    assert!(worker_job.attribute("bytes_read").parse::<u64>().unwrap() >= 2 << 20);

    // The phases hang under the job; uploads under the disk's read.
    for phase in ["snapshot", "read", "commit"] {
        let span = one("haven-worker", phase);
        assert_eq!(
            span.parent_span_id, worker_job.span_id,
            "{phase}: {span:#?}"
        );
    }
    let read = one("haven-worker", "read");
    assert!(!read.attribute("disk").is_empty(), "{read:#?}");
    assert!(read.attribute("bytes_read").parse::<u64>().unwrap() >= 2 << 20);
    assert!(read.attribute("bytes_uploaded").parse::<u64>().unwrap() > 0);
    let upload = one("haven-worker", "upload");
    assert_eq!(upload.parent_span_id, read.span_id);
    assert!(upload.attribute("chunks").parse::<u64>().unwrap() >= 4);

    // The fenced commit continues on the coordinator, through gRPC metadata.
    let commit = one("haven-worker", "commit");
    let fenced = one("haven-coordinator", "commit");
    assert_eq!(fenced.parent_span_id, commit.span_id);
    assert_eq!(fenced.attribute("job"), job);

    // The node's requests continue their client's span, through the HTTP header: the
    // worker's chunk uploads under `upload` and its index under `commit`; the manifest
    // the coordinator publishes under its own `commit`.
    let requests: Vec<&&ReceivedSpan> = in_trace
        .iter()
        .filter(|s| s.service == "haven-storage-node" && s.name == "request")
        .collect();
    assert!(!requests.is_empty());
    for request in &requests {
        let parent = by_id
            .get(request.parent_span_id.as_str())
            .unwrap_or_else(|| panic!("the parent of {request:#?} is in the trace"));
        assert!(
            ["haven-worker", "haven-coordinator"].contains(&parent.service.as_str()),
            "{request:#?}"
        );
    }
    let requests_under = |parent: &ReceivedSpan, op: &str| {
        requests
            .iter()
            .filter(|r| r.parent_span_id == parent.span_id && r.attribute("op") == op)
            .count()
    };
    // Chunks reach a storage node in batch writes; the index and manifest are PUTs.
    assert!(
        requests_under(upload, "HavenBatchPut") >= 1,
        "chunk uploads: {requests:#?}"
    );
    assert!(
        requests_under(commit, "PutObject") >= 1,
        "index and manifest: {requests:#?}"
    );

    // Every span of the trace hangs off another of it, up to the one root.
    for span in &in_trace {
        assert!(
            span.parent_span_id.is_empty() || by_id.contains_key(span.parent_span_id.as_str()),
            "orphan span {span:#?}"
        );
    }
    assert_eq!(
        in_trace
            .iter()
            .filter(|s| s.parent_span_id.is_empty())
            .count(),
        1
    );
}
