//! Reading the JSON reports `haven backup` prints, and the JSON lists other commands
//! (and QMP) answer.

use std::fmt::Debug;

use serde_json::Value;

/// The object of the JSON array `list` whose `key` is `value`; fails the test, showing
/// the list, when there is none.
pub fn entry<'a, T>(list: &'a Value, key: &str, value: T) -> &'a Value
where
    Value: PartialEq<T>,
    T: Debug,
{
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .find(|item| item[key] == value)
        .unwrap_or_else(|| panic!("no {key} {value:?} in {list:#}"))
}

/// A figure of the first disk of a report.
pub fn disk_stat(report: &Value, field: &str) -> u64 {
    report["disks"][0][field].as_u64().unwrap()
}

/// Disk figures of a report by name.
pub fn disk<'a>(report: &'a Value, name: &str) -> &'a Value {
    entry(&report["disks"], "name", name)
}

/// Mode (`full`/`incremental`) and reason of a disk in a report.
pub fn mode(report: &Value, name: &str) -> (String, String) {
    let mode = entry(&report["modes"], "name", name);
    (
        mode["mode"].as_str().unwrap().to_string(),
        mode["reason"].as_str().unwrap_or_default().to_string(),
    )
}
