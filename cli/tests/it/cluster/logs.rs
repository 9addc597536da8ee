//! Daemon logs as an operator's log shipper reads them: `haven dev` started with
//! `--log-format json` and no `HAVEN_LOG` writes one JSON object per line, at `info`,
//! and the lines a worker logs for a job carry the job's id and VM as fields.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::dev::{Dev, Setup, Storage, make_image};
use crate::support::cluster::{init_repo, one_cluster_at_a_time, start_vm};

/// How the lines `haven dev` prints for people begin.
const BANNER: &str = "haven dev: ";

#[test]
fn daemon_logs_json_lines_with_the_job_and_vm_of_each_job_line() {
    let _alone = one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let vms = dir.path().join("vms");
    std::fs::create_dir_all(&vms).unwrap();
    let image = dir.path().join("web.qcow2");
    make_image(&image);
    let _vm = start_vm(&vms.join("web.qmp"), &image, &dir.path().join("web.log"));
    let repo = dir.path().join("repo");
    init_repo(&repo, &[]);

    let dev = Dev::launch(
        dir.path(),
        &vms,
        Setup {
            storage: Storage::None,
            args: &["--log-format", "json"],
            ..Setup::default()
        },
    );
    let (cli, log) = (&dev.cli, &dev.log);
    let job: Value = serde_json::from_str(&cli.ok(&[
        "job",
        "run",
        "web",
        "--repo",
        repo.to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    let job_id = job["job_id"].as_str().unwrap().to_string();

    // The worker logs the job's end after reporting it: wait for that line.
    let deadline = Instant::now() + Duration::from_secs(60);
    let lines = loop {
        let lines = json_lines(&std::fs::read_to_string(log).unwrap());
        if lines.iter().any(|line| line["message"] == "job finished") {
            break lines;
        }
        assert!(
            Instant::now() < deadline,
            "no \"job finished\" line: {lines:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };

    for line in &lines {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(line[key].is_string(), "no {key}: {line}");
        }
    }
    // Without HAVEN_LOG a daemon logs at info: the coordinator says it leads.
    assert!(
        lines.iter().any(|line| line["level"] == "INFO"
            && line["target"] == "haven_coordinator::replica"
            && line["message"] == "leading"),
        "no info line from the coordinator: {lines:#?}"
    );
    for message in ["job started", "job finished"] {
        let line = lines
            .iter()
            .find(|line| line["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line: {lines:#?}"));
        assert_eq!(line["job"], job_id.as_str(), "{line}");
        assert_eq!(line["vm"], "web", "{line}");
        assert_eq!(line["kind"], "backup", "{line}");
        assert_eq!(line["level"], "INFO", "{line}");
        assert_eq!(line["target"], "haven_worker::daemon", "{line}");
    }
}

/// Every complete line of a `--log-format json` daemon's standard error as JSON, but
/// for the banner printed for people; any other line that is not one JSON object
/// fails.
fn json_lines(text: &str) -> Vec<Value> {
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .filter(|line| !line.starts_with(BANNER))
        .map(|line| {
            serde_json::from_str::<Value>(line)
                .ok()
                .filter(Value::is_object)
                .unwrap_or_else(|| panic!("not a JSON object: {line:?}\n{text}"))
        })
        .collect()
}
