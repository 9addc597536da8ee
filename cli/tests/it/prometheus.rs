//! The shipped alerting rules, with the real `promtool`: they load, every rule fires
//! on its synthetic series in `deploy/prometheus/haven-rules.test.yaml` and not
//! before, and the Helm chart ships the same file.

use std::path::PathBuf;
use std::process::Command;

use crate::support::process::assert_success;

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

#[test]
fn rules_fire_on_synthetic_series() {
    let rules = deploy().join("prometheus");
    let check = Command::new("promtool")
        .args(["check", "rules", "haven-rules.yaml"])
        .current_dir(&rules)
        .output()
        .expect("promtool (Debian package prometheus, scripts/install-deps.sh)");
    assert_success(&check, "promtool check rules");
    let test = Command::new("promtool")
        .args(["test", "rules", "haven-rules.test.yaml"])
        .current_dir(&rules)
        .output()
        .unwrap();
    assert_success(&test, "promtool test rules");

    // Every alert of the rules has a test case.
    let text = std::fs::read_to_string(rules.join("haven-rules.yaml")).unwrap();
    let tests = std::fs::read_to_string(rules.join("haven-rules.test.yaml")).unwrap();
    let alerts: Vec<&str> = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 8, "{alerts:?}");
    for alert in alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "no promtool test for {alert}"
        );
    }

    assert_eq!(
        std::fs::read_to_string(deploy().join("helm/haven/files/haven-rules.yaml")).unwrap(),
        text,
        "the chart's copy of the rules differs from deploy/prometheus/haven-rules.yaml"
    );
}
