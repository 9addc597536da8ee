//! `policy.toml`: which VMs are backed up, when, where to, and how many at once.
//!
//! ```toml
//! [[policy]]
//! name = "gold"
//! schedule = "0 */6 * * *"          # five-field cron, UTC
//! repository = "s3://backups/gold?endpoint=http://10.0.0.5:9000"
//! select = { names = ["web-*", "db-1"], labels = { tier = "gold" }, hosts = ["kvm-*"] }
//! max_per_host = 2                  # running jobs of this policy per hypervisor host
//! max_per_worker = 4                # and per worker
//! retention = { keep_last = 3, keep_daily = 7, keep_weekly = 4 }  # prune after backups
//! replicate_to = "s3://dr-site/gold?endpoint=http://10.1.0.5:9000" # copy after backups
//! replica_retention = { keep_last = 3, keep_daily = 30 }  # the copy's own (default: retention)
//! gc_schedule = "0 3 * * 0"         # garbage collection of `repository` (and the copy)
//! gc_margin_seconds = 3600
//! rpo_seconds = 43200               # at risk after 12 h without a good backup
//! job_timeout_seconds = 7200        # a job not done 2 h after its creation fails
//! boot_test = { every = "7d", timeout = "5m", check = "agent" }  # boot a new snapshot
//! ```
//!
//! `boot_test` boots the snapshot a backup of the policy just committed in a sandbox
//! on some worker (a `boot_test` job, `docs/boot-test.md`), when the VM's last boot
//! test under this policy began at least `every` ago (or never). `check` is `agent`
//! (the default: the guest agent answers), `serial:TEXT` or `tcp:PORT`; `timeout` defaults to 5
//! minutes.
//!
//! `rpo_seconds` defaults to twice the longest gap between two firings of the
//! schedule: one missed round is tolerated, two are an alert
//! (`haven_policy_rpo_seconds`, `deploy/prometheus/haven-rules.yaml`).
//! `job_timeout_seconds` (default a day, [`DEFAULT_JOB_TIMEOUT_SECONDS`]) bounds each
//! job of the policy from its creation: the leader fails a job still pending or running
//! then, and its worker stops it.
//!
//! A file is applied whole or not at all: every error is reported with its line and
//! reason, and nothing changes if there is one.

use std::collections::BTreeMap;

use haven_config::line_of;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::cron::Schedule;

/// One validated policy, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Unique name.
    pub name: String,
    /// Cron expression (UTC).
    pub schedule: String,
    /// Repository URL snapshots go to.
    pub repository: String,
    /// Which VMs the policy covers.
    pub select: Selector,
    /// Running jobs of this policy per hypervisor host.
    pub max_per_host: u32,
    /// Running jobs of this policy per worker.
    pub max_per_worker: u32,
    /// Retention applied after the policy's backups (by a prune job per VM).
    pub retention: Retention,
    /// Secondary repository the policy's repository is replicated to after backups.
    #[serde(default)]
    pub replicate_to: Option<String>,
    /// Retention of the VMs' snapshots at `replicate_to`; `None`: the same as
    /// `retention`. A disaster-recovery site often keeps more history than the
    /// primary, and never keeps it forever by accident.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_retention: Option<Retention>,
    /// When garbage collection of the repository runs (cron, UTC); none: never.
    #[serde(default)]
    pub gc_schedule: Option<String>,
    /// GC safety margin: unreferenced objects younger than this are kept.
    #[serde(default = "default_gc_margin")]
    pub gc_margin_seconds: u64,
    /// Recovery point objective: how long a VM of this policy may go without a
    /// successful backup before it is at risk. Stored resolved (explicit, or twice the
    /// schedule's longest gap); 0 in policies applied by older versions: unknown.
    #[serde(default)]
    pub rpo_seconds: u64,
    /// How long a job of this policy may take from its creation before the leader
    /// fails it (a hung backup would otherwise hold its VM's rounds forever).
    #[serde(default = "default_job_timeout")]
    pub job_timeout_seconds: u64,
    /// Boot tests of the policy's new snapshots; `None`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_test: Option<BootTest>,
}

/// A policy's `boot_test`, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootTest {
    /// A VM is boot-tested again after a backup once its last boot test began this
    /// long ago.
    pub every_seconds: u64,
    /// How long the guest has to pass the check.
    pub timeout_seconds: u64,
    /// `agent`, `serial:TEXT` or `tcp:PORT`.
    pub check: String,
}

/// A boot test's timeout when `boot_test` sets none.
const DEFAULT_BOOT_TIMEOUT: &str = "5m";

fn default_gc_margin() -> u64 {
    3600
}

/// The deadline of a job, from its creation, when no policy says otherwise (manual
/// jobs, policies that do not set `job_timeout_seconds`): a day, longer than any sane
/// backup yet short enough that a hung job does not hold its VM's rounds for long.
pub const DEFAULT_JOB_TIMEOUT_SECONDS: u64 = 24 * 3600;

fn default_job_timeout() -> u64 {
    DEFAULT_JOB_TIMEOUT_SECONDS
}

/// VM selection: every non-empty criterion must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selector {
    /// Name globs (`*`, `?`); empty: any name.
    #[serde(default)]
    pub names: Vec<String>,
    /// Labels the VM must carry with these values.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Host name globs; empty: any host.
    #[serde(default)]
    pub hosts: Vec<String>,
}

/// Retention counts (see `haven prune`); all zero keeps everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Keep the N newest.
    #[serde(default)]
    pub keep_last: u32,
    /// Newest of each of N hours.
    #[serde(default)]
    pub keep_hourly: u32,
    /// Newest of each of N days.
    #[serde(default)]
    pub keep_daily: u32,
    /// Newest of each of N ISO weeks.
    #[serde(default)]
    pub keep_weekly: u32,
    /// Newest of each of N months.
    #[serde(default)]
    pub keep_monthly: u32,
    /// Newest of each of N years.
    #[serde(default)]
    pub keep_yearly: u32,
}

impl Policy {
    /// The replication secondary and the retention its copies of this policy's VMs
    /// follow there; `None` without `replicate_to`.
    pub fn replica(&self) -> Option<(&str, Retention)> {
        let to = self.replicate_to.as_deref()?;
        Some((to, self.replica_retention.unwrap_or(self.retention)))
    }
}

impl Retention {
    /// The same rules as the repository's retention planner takes them.
    pub fn to_repo(self) -> haven_repo::RetentionPolicy {
        haven_repo::RetentionPolicy::from_counts([
            self.keep_last,
            self.keep_hourly,
            self.keep_daily,
            self.keep_weekly,
            self.keep_monthly,
            self.keep_yearly,
        ])
    }
}

impl Selector {
    /// Whether a VM named `name` with `labels` on `host` is selected.
    pub fn matches(&self, name: &str, host: &str, labels: &BTreeMap<String, String>) -> bool {
        (self.names.is_empty() || self.names.iter().any(|glob| glob_match(glob, name)))
            && (self.hosts.is_empty() || self.hosts.iter().any(|glob| glob_match(glob, host)))
            && self
                .labels
                .iter()
                .all(|(key, value)| labels.get(key) == Some(value))
    }
}

/// `*` matches any run of characters, `?` exactly one.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    policy: Vec<Spanned<RawPolicy>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: Spanned<String>,
    schedule: Spanned<String>,
    repository: Spanned<String>,
    #[serde(default)]
    select: Selector,
    #[serde(default = "default_limit")]
    max_per_host: Spanned<u32>,
    #[serde(default = "default_limit")]
    max_per_worker: Spanned<u32>,
    #[serde(default)]
    retention: Retention,
    #[serde(default)]
    replicate_to: Option<Spanned<String>>,
    #[serde(default)]
    replica_retention: Option<Spanned<Retention>>,
    #[serde(default)]
    gc_schedule: Option<Spanned<String>>,
    #[serde(default = "default_gc_margin")]
    gc_margin_seconds: u64,
    #[serde(default)]
    rpo_seconds: Option<Spanned<u64>>,
    #[serde(default)]
    job_timeout_seconds: Option<Spanned<u64>>,
    #[serde(default)]
    boot_test: Option<Spanned<RawBootTest>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBootTest {
    every: String,
    #[serde(default)]
    timeout: Option<String>,
    #[serde(default)]
    check: Option<String>,
}

impl RawBootTest {
    /// The validated setting, or why not.
    fn validate(self) -> Result<BootTest, String> {
        let duration = |field: &str, text: &str| {
            haven_config::parse_duration(text)
                .map(|duration| duration.as_secs())
                .map_err(|reason| format!("boot_test.{field}: {reason}"))
        };
        let every_seconds = duration("every", &self.every)?;
        let timeout_seconds = duration(
            "timeout",
            self.timeout.as_deref().unwrap_or(DEFAULT_BOOT_TIMEOUT),
        )?;
        if timeout_seconds == 0 {
            return Err("boot_test.timeout must be at least 1 s".into());
        }
        let check = self.check.unwrap_or_else(|| "agent".into());
        let valid = check == "agent"
            || check
                .strip_prefix("serial:")
                .is_some_and(|text| !text.is_empty())
            || check
                .strip_prefix("tcp:")
                .and_then(|port| port.parse::<u16>().ok())
                .is_some_and(|port| port > 0);
        if !valid {
            return Err(format!(
                "boot_test.check {check:?}: expected \"agent\", \"serial:TEXT\" or \"tcp:PORT\""
            ));
        }
        Ok(BootTest {
            every_seconds,
            timeout_seconds,
            check,
        })
    }
}

fn default_limit() -> Spanned<u32> {
    Spanned::new(0..0, 2)
}

/// The repositories a cluster may write to: `allowed_repositories` globs of
/// `coordinator.toml`.
///
/// Whoever may apply a policy chooses where the workers copy VM disks and the
/// repository's key files; without this list, a stolen admin credential (or a
/// mistake) could send every backup to an outside endpoint. Empty refuses every URL.
#[derive(Debug, Clone, Default)]
pub struct RepositoryAllowlist {
    patterns: Vec<String>,
    any: bool,
}

impl RepositoryAllowlist {
    /// URLs matching one of `patterns` (`*` and `?` globs over the whole URL).
    pub fn new(patterns: Vec<String>) -> Self {
        Self {
            patterns,
            any: false,
        }
    }

    /// Every URL: for checking a file's syntax away from a coordinator.
    pub fn any() -> Self {
        Self {
            patterns: Vec::new(),
            any: true,
        }
    }

    /// Whether `url` is syntactically a repository and on the list.
    pub fn check(&self, url: &str) -> Result<(), String> {
        check_repository(url)?;
        if self.any || self.patterns.iter().any(|glob| glob_match(glob, url)) {
            Ok(())
        } else {
            Err(format!(
                "repository {url:?} is not in the coordinator's allowed_repositories"
            ))
        }
    }
}

/// Parses and validates a policy file; errors are `FILE:LINE: reason`, all of them.
/// Repositories must be on `allowlist`.
pub fn parse_policies(
    file_name: &str,
    text: &str,
    allowlist: &RepositoryAllowlist,
) -> Result<Vec<Policy>, Vec<String>> {
    let at = |span: std::ops::Range<usize>| format!("{file_name}:{}", line_of(text, span.start));
    let file: File = haven_config::parse(file_name, text).map_err(|error| vec![error])?;
    let mut errors = Vec::new();
    let mut policies = Vec::new();
    let mut seen = BTreeMap::new();
    for raw in file.policy {
        let span = raw.span();
        let raw = raw.into_inner();
        let name = raw.name.get_ref().clone();
        if let Err(error) = haven_repo::validate_name(&name) {
            errors.push(format!("{}: policy {error}", at(raw.name.span())));
        }
        if let Some(first) = seen.insert(name.clone(), line_of(text, span.start)) {
            errors.push(format!(
                "{}: policy {name:?} is defined twice (first on line {first})",
                at(raw.name.span())
            ));
        }
        let schedule = match Schedule::parse(raw.schedule.get_ref()) {
            Ok(schedule) => Some(schedule),
            Err(reason) => {
                errors.push(format!("{}: {reason}", at(raw.schedule.span())));
                None
            }
        };
        let rpo_seconds = match &raw.rpo_seconds {
            Some(rpo) if *rpo.get_ref() == 0 => {
                errors.push(format!(
                    "{}: rpo_seconds must be at least 1",
                    at(rpo.span())
                ));
                0
            }
            Some(rpo) => *rpo.get_ref(),
            None => schedule
                .as_ref()
                .and_then(Schedule::longest_gap)
                .map_or(0, |gap| 2 * gap.whole_seconds().unsigned_abs()),
        };
        let job_timeout_seconds = match &raw.job_timeout_seconds {
            Some(timeout) if *timeout.get_ref() == 0 => {
                errors.push(format!(
                    "{}: job_timeout_seconds must be at least 1",
                    at(timeout.span())
                ));
                0
            }
            Some(timeout) => *timeout.get_ref(),
            None => DEFAULT_JOB_TIMEOUT_SECONDS,
        };
        if let Err(reason) = allowlist.check(raw.repository.get_ref()) {
            errors.push(format!("{}: {reason}", at(raw.repository.span())));
        }
        if let Some(schedule) = &raw.gc_schedule
            && let Err(reason) = Schedule::parse(schedule.get_ref())
        {
            errors.push(format!("{}: gc_schedule: {reason}", at(schedule.span())));
        }
        if let Some(target) = &raw.replicate_to {
            if let Err(reason) = allowlist.check(target.get_ref()) {
                errors.push(format!("{}: replicate_to: {reason}", at(target.span())));
            } else if target.get_ref() == raw.repository.get_ref() {
                errors.push(format!(
                    "{}: replicate_to must differ from repository",
                    at(target.span())
                ));
            }
        }
        if let Some(rules) = &raw.replica_retention
            && raw.replicate_to.is_none()
        {
            errors.push(format!(
                "{}: replica_retention needs replicate_to",
                at(rules.span())
            ));
        }
        let boot_test = match raw.boot_test {
            None => None,
            Some(setting) => {
                let line = at(setting.span());
                match setting.into_inner().validate() {
                    Ok(boot_test) => Some(boot_test),
                    Err(reason) => {
                        errors.push(format!("{line}: {reason}"));
                        None
                    }
                }
            }
        };
        for (limit, field) in [
            (&raw.max_per_host, "max_per_host"),
            (&raw.max_per_worker, "max_per_worker"),
        ] {
            if *limit.get_ref() == 0 {
                errors.push(format!("{}: {field} must be at least 1", at(limit.span())));
            }
        }
        policies.push(Policy {
            name,
            schedule: raw.schedule.into_inner(),
            repository: raw.repository.into_inner(),
            select: raw.select,
            max_per_host: raw.max_per_host.into_inner(),
            max_per_worker: raw.max_per_worker.into_inner(),
            retention: raw.retention,
            replicate_to: raw.replicate_to.map(Spanned::into_inner),
            replica_retention: raw.replica_retention.map(Spanned::into_inner),
            gc_schedule: raw.gc_schedule.map(Spanned::into_inner),
            gc_margin_seconds: raw.gc_margin_seconds,
            rpo_seconds,
            job_timeout_seconds,
            boot_test,
        });
    }
    if errors.is_empty() {
        Ok(policies)
    } else {
        Err(errors)
    }
}

fn check_repository(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Err("repository must not be empty".into());
    }
    if url.starts_with("memory:") {
        return Err("a memory:// repository cannot be shared by workers".into());
    }
    if url.contains("://") && !["file://", "s3://"].iter().any(|s| url.starts_with(s)) {
        return Err(format!(
            "repository {url:?}: only file:// and s3:// URLs (or a plain path) are supported"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[[policy]]
name = "gold"
schedule = "*/5 * * * *"
repository = "file:///srv/haven"
select = { names = ["web-*"], labels = { tier = "gold" } }
max_per_host = 1
retention = { keep_last = 3 }

[[policy]]
name = "rest"
schedule = "0 2 * * *"
repository = "/srv/other"
"#;

    #[test]
    fn parses_and_selects() {
        let policies = parse_policies("p.toml", GOOD, &RepositoryAllowlist::any()).unwrap();
        assert_eq!(policies.len(), 2);
        let gold = &policies[0];
        assert_eq!(gold.max_per_host, 1);
        assert_eq!(gold.max_per_worker, 2);
        assert_eq!(gold.retention.keep_last, 3);
        let labels: BTreeMap<String, String> = [("tier".into(), "gold".into())].into();
        assert!(gold.select.matches("web-01", "h1", &labels));
        assert!(!gold.select.matches("db-01", "h1", &labels));
        assert!(!gold.select.matches("web-01", "h1", &BTreeMap::new()));
        assert!(
            policies[1]
                .select
                .matches("anything", "h9", &BTreeMap::new())
        );
    }

    #[test]
    fn the_rpo_is_explicit_or_twice_the_schedules_longest_gap() {
        let text = |rpo: &str| {
            format!(
                "[[policy]]\nname = \"p\"\nschedule = \"0 */6 * * *\"\nrepository = \"/r\"\n{rpo}"
            )
        };
        let rpo = |extra: &str| {
            parse_policies("p.toml", &text(extra), &RepositoryAllowlist::any())
                .map(|policies| policies[0].rpo_seconds)
        };
        assert_eq!(rpo(""), Ok(12 * 3600));
        assert_eq!(rpo("rpo_seconds = 600\n"), Ok(600));
        assert_eq!(
            rpo("rpo_seconds = 0\n"),
            Err(vec!["p.toml:5: rpo_seconds must be at least 1".to_string()])
        );
    }

    #[test]
    fn the_job_timeout_is_explicit_or_a_day() {
        let parse = |extra: &str| {
            let text = format!(
                "[[policy]]\nname = \"p\"\nschedule = \"0 2 * * *\"\nrepository = \"/r\"\n{extra}"
            );
            parse_policies("p.toml", &text, &RepositoryAllowlist::any())
        };
        let timeout = |extra: &str| parse(extra).map(|policies| policies[0].job_timeout_seconds);
        assert_eq!(timeout(""), Ok(DEFAULT_JOB_TIMEOUT_SECONDS));
        assert_eq!(timeout("job_timeout_seconds = 7200\n"), Ok(7200));
        assert_eq!(
            timeout("job_timeout_seconds = 0\n"),
            Err(vec![
                "p.toml:5: job_timeout_seconds must be at least 1".to_string()
            ])
        );
        // A policy stored by an older version, without the field, gets the default.
        let mut older = serde_json::to_value(&parse("").unwrap()[0]).unwrap();
        older.as_object_mut().unwrap().remove("job_timeout_seconds");
        let read: Policy = serde_json::from_value(older).unwrap();
        assert_eq!(read.job_timeout_seconds, DEFAULT_JOB_TIMEOUT_SECONDS);
    }

    #[test]
    fn boot_tests_have_defaults_and_checked_values() {
        let parse = |extra: &str| {
            let text = format!(
                "[[policy]]\nname = \"p\"\nschedule = \"0 2 * * *\"\nrepository = \"/r\"\n{extra}"
            );
            parse_policies("p.toml", &text, &RepositoryAllowlist::any())
                .map(|policies| policies[0].boot_test.clone())
        };
        assert_eq!(parse(""), Ok(None));
        assert_eq!(
            parse("boot_test = { every = \"7d\" }\n"),
            Ok(Some(BootTest {
                every_seconds: 7 * 86400,
                timeout_seconds: 300,
                check: "agent".into()
            }))
        );
        assert_eq!(
            parse("boot_test = { every = \"0s\", timeout = \"90s\", check = \"serial:UP\" }\n"),
            Ok(Some(BootTest {
                every_seconds: 0,
                timeout_seconds: 90,
                check: "serial:UP".into()
            }))
        );
        assert_eq!(
            parse("boot_test = { every = \"1d\", check = \"tcp:22\" }\n"),
            Ok(Some(BootTest {
                every_seconds: 86400,
                timeout_seconds: 300,
                check: "tcp:22".into()
            }))
        );
        // (setting, expected error)
        let cases = [
            (
                "every = \"1w\"",
                "p.toml:5: boot_test.every: unknown unit \"w\"",
            ),
            (
                "every = \"1d\", timeout = \"0s\"",
                "p.toml:5: boot_test.timeout must be",
            ),
            (
                "every = \"1d\", check = \"ping\"",
                "p.toml:5: boot_test.check \"ping\"",
            ),
            (
                "every = \"1d\", check = \"serial:\"",
                "p.toml:5: boot_test.check",
            ),
            (
                "every = \"1d\", check = \"tcp:0\"",
                "p.toml:5: boot_test.check \"tcp:0\"",
            ),
            (
                "every = \"1d\", check = \"tcp:ssh\"",
                "p.toml:5: boot_test.check \"tcp:ssh\"",
            ),
        ];
        for (setting, expected) in cases {
            let errors = parse(&format!("boot_test = {{ {setting} }}\n")).unwrap_err();
            assert!(errors[0].starts_with(expected), "{setting}: {errors:?}");
        }
    }

    #[test]
    fn names_that_pass_for_options_or_paths_are_refused() {
        for name in ["-x", "--all", ".", ".."] {
            let text = format!(
                "[[policy]]\nname = {name:?}\nschedule = \"* * * * *\"\nrepository = \"/r\"\n"
            );
            let errors = parse_policies("p.toml", &text, &RepositoryAllowlist::any())
                .unwrap_err()
                .join("\n");
            assert!(errors.contains("p.toml:2: policy invalid name"), "{errors}");
        }
        assert!(crate::leader::check_name("VM name", "-x").is_err());
        assert!(crate::leader::check_name("VM name", "..").is_err());
        assert!(crate::leader::check_name("VM name", "web-01").is_ok());
    }

    #[test]
    fn every_error_has_its_line() {
        let bad = r#"
[[policy]]
name = "a"
schedule = "61 * * * *"
repository = "ftp://x"
max_per_host = 0

[[policy]]
name = "a"
schedule = "* * * * *"
repository = "/r"
"#;
        let errors = parse_policies("p.toml", bad, &RepositoryAllowlist::any()).unwrap_err();
        let joined = errors.join("\n");
        assert!(joined.contains("p.toml:4: minute: 61"), "{joined}");
        assert!(
            joined.contains("p.toml:5: repository \"ftp://x\""),
            "{joined}"
        );
        assert!(
            joined.contains("p.toml:6: max_per_host must be at least 1"),
            "{joined}"
        );
        assert!(
            joined.contains("p.toml:9: policy \"a\" is defined twice"),
            "{joined}"
        );
    }

    #[test]
    fn syntax_and_unknown_fields_report_lines() {
        let errors = parse_policies(
            "p.toml",
            "[[policy]]\nname = \"a\"\nbogus = 1\n",
            &RepositoryAllowlist::any(),
        )
        .unwrap_err();
        assert!(errors[0].starts_with("p.toml:"), "{errors:?}");
        assert!(
            errors[0].contains("bogus") || errors[0].contains("unknown"),
            "{errors:?}"
        );
        let errors =
            parse_policies("p.toml", "[[policy]\n", &RepositoryAllowlist::any()).unwrap_err();
        assert!(errors[0].starts_with("p.toml:1:"), "{errors:?}");
    }

    #[test]
    fn globs() {
        assert!(glob_match("web-*", "web-01"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*-db-*", "eu-db-7"));
        assert!(!glob_match("web", "web-1"));
    }

    #[test]
    fn repositories_off_the_allowlist_are_refused_with_their_line() {
        let allowlist = RepositoryAllowlist::new(vec!["file:///srv/*".into(), "/srv/other".into()]);
        assert!(parse_policies("p.toml", GOOD, &allowlist).is_ok());
        let outside =
            format!("{GOOD}replicate_to = \"s3://attacker/x?endpoint=http://evil:9000\"\n");
        let errors = parse_policies("p.toml", &outside, &allowlist).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("p.toml:14: replicate_to: repository \"s3://attacker"),
            "{errors:?}"
        );
        assert!(errors[0].contains("allowed_repositories"));
        let errors = parse_policies("p.toml", GOOD, &RepositoryAllowlist::default()).unwrap_err();
        assert_eq!(
            errors.len(),
            2,
            "an empty list refuses everything: {errors:?}"
        );
    }
}
