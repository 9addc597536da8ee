//! Reading the JSON reports `haven backup` prints.

use serde_json::Value;

/// A figure of the first disk of a report.
pub fn disk_stat(report: &Value, field: &str) -> u64 {
    report["disks"][0][field].as_u64().unwrap()
}

/// Disk figures of a report by name.
pub fn disk<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == name)
        .unwrap_or_else(|| panic!("no disk {name} in {report}"))
}

/// Mode (`full`/`incremental`) and reason of a disk in a report.
pub fn mode(report: &Value, name: &str) -> (String, String) {
    let mode = report["modes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == name)
        .unwrap_or_else(|| panic!("no mode for {name} in {report}"));
    (
        mode["mode"].as_str().unwrap().to_string(),
        mode["reason"].as_str().unwrap_or_default().to_string(),
    )
}
