//! `haven_build_info` and the standard `process_*` metrics, for every component.
//!
//! `prometheus-client` has no process collector of its own, so the values are read
//! from `/proc/self` at each scrape, under the names the official Go and Python
//! clients use (`process_cpu_seconds_total`, `process_resident_memory_bytes`, ...):
//! the dashboards and alerts written for those work unchanged. On a system without
//! `/proc` (not Linux) only `haven_build_info` is written.

use std::path::Path;

use crate::registry::ScrapeTimeMetrics;
use crate::sample_writer::{NO_LABELS, SampleWriter};

/// The version every Haven crate shares (the workspace version).
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// What one reading of `/proc/self` found.
#[derive(Debug, Clone, PartialEq)]
struct ProcessReading {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    start_time_seconds: f64,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
}

/// Writes `haven_build_info{component,version}` and the process metrics.
#[derive(Debug)]
pub(crate) struct ProcessMetrics {
    component: &'static str,
}

impl ProcessMetrics {
    pub(crate) fn new(component: &'static str) -> Self {
        Self { component }
    }
}

impl ScrapeTimeMetrics for ProcessMetrics {
    fn write(&self, out: &mut SampleWriter<'_>) -> std::fmt::Result {
        out.gauge(
            "haven_build_info",
            "Always 1; the labels say which Haven component and version runs",
            [([("component", self.component), ("version", VERSION)], 1u64)],
        )?;
        let Some(reading) = read_proc(Path::new("/proc")) else {
            return Ok(());
        };
        out.counter(
            "process_cpu_seconds",
            "User and system CPU time spent in seconds",
            [(NO_LABELS, reading.cpu_seconds)],
        )?;
        out.gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            [(NO_LABELS, reading.resident_bytes)],
        )?;
        out.gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            [(NO_LABELS, reading.virtual_bytes)],
        )?;
        out.gauge(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds",
            [(NO_LABELS, reading.start_time_seconds)],
        )?;
        if let Some(open) = reading.open_fds {
            out.gauge(
                "process_open_fds",
                "Number of open file descriptors",
                [(NO_LABELS, open)],
            )?;
        }
        if let Some(max) = reading.max_fds {
            out.gauge(
                "process_max_fds",
                "Maximum number of open file descriptors",
                [(NO_LABELS, max)],
            )?;
        }
        Ok(())
    }
}

/// Reads this process's figures under `proc` (`/proc`); `None` when `stat` cannot
/// be read or parsed.
fn read_proc(proc: &Path) -> Option<ProcessReading> {
    let stat = std::fs::read_to_string(proc.join("self/stat")).ok()?;
    let boot_time = std::fs::read_to_string(proc.join("stat"))
        .ok()
        .and_then(|text| boot_time_seconds(&text))?;
    let limits = std::fs::read_to_string(proc.join("self/limits")).ok();
    let open_fds = std::fs::read_dir(proc.join("self/fd"))
        .ok()
        .map(|entries| entries.count() as u64);
    // SAFETY: sysconf only reads a configuration value.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // SAFETY: as above.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let mut reading = parse_stat(
        &stat,
        u64::try_from(ticks_per_second).ok().filter(|t| *t > 0)?,
        u64::try_from(page_size).ok().filter(|p| *p > 0)?,
        boot_time,
    )?;
    reading.open_fds = open_fds;
    reading.max_fds = limits.as_deref().and_then(max_open_files);
    Some(reading)
}

/// Parses `/proc/self/stat`. The command name (field 2) is in parentheses and may
/// hold spaces, so fields are counted after its closing parenthesis.
fn parse_stat(
    stat: &str,
    ticks_per_second: u64,
    page_size: u64,
    boot_time: u64,
) -> Option<ProcessReading> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // After the name: field 3 (state) is index 0, so field N is index N - 3.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |number: usize| -> Option<u64> { fields.get(number - 3)?.parse().ok() };
    let ticks = ticks_per_second as f64;
    Some(ProcessReading {
        cpu_seconds: (field(14)? + field(15)?) as f64 / ticks,
        virtual_bytes: field(23)?,
        resident_bytes: field(24)?.saturating_mul(page_size),
        start_time_seconds: boot_time as f64 + field(22)? as f64 / ticks,
        open_fds: None,
        max_fds: None,
    })
}

/// The `btime` line of `/proc/stat`: boot time, seconds since the Unix epoch.
fn boot_time_seconds(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

/// The soft limit of "Max open files" in `/proc/self/limits` (`None` if unlimited).
fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_a_command_name_with_spaces_and_parentheses() {
        // Fields 14/15 utime/stime = 250/150 ticks, 22 starttime = 500 ticks,
        // 23 vsize, 24 rss in pages.
        let stat = "42 (haven (x) y) S 1 42 42 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 \
                    8 0 500 123456789 1000 18446744073709551615";
        let reading = parse_stat(stat, 100, 4096, 1_700_000_000).unwrap();
        assert_eq!(reading.cpu_seconds, 4.0);
        assert_eq!(reading.virtual_bytes, 123_456_789);
        assert_eq!(reading.resident_bytes, 4_096_000);
        assert_eq!(reading.start_time_seconds, 1_700_000_005.0);
        assert_eq!(parse_stat("42 (truncated", 100, 4096, 0), None);
    }

    #[test]
    fn boot_time_and_the_open_files_limit_are_found_in_their_files() {
        assert_eq!(
            boot_time_seconds("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024));
        assert_eq!(
            max_open_files(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
    }

    #[test]
    fn this_process_is_read_from_proc() {
        let reading = read_proc(Path::new("/proc")).expect("this test runs on Linux");
        assert!(reading.resident_bytes > 0);
        assert!(reading.open_fds.is_some_and(|open| open > 0));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(reading.start_time_seconds <= now + 1.0);
        assert!(reading.start_time_seconds > now - 86_400.0 * 365.0);
    }

    #[test]
    fn a_registry_exports_build_info_and_process_metrics() {
        let mut registry = crate::Registry::new();
        registry.register_process_metrics("test");
        let text = registry.encode().unwrap();
        for expected in [
            format!("haven_build_info{{component=\"test\",version=\"{VERSION}\"}} 1\n"),
            "# TYPE process_cpu_seconds_total counter\n".to_string(),
            "# TYPE process_resident_memory_bytes gauge\n".to_string(),
            "# TYPE process_open_fds gauge\n".to_string(),
            "# TYPE process_start_time_seconds gauge\n".to_string(),
        ] {
            assert!(text.contains(&expected), "missing {expected:?} in {text}");
        }
    }
}
