//! The console's pages, rendered as HTML strings. Each takes the [`PageContext`] of
//! the request and reads what it shows from the leader under its state lock (one
//! query each), then writes without holding it.
//!
//! | file | pages |
//! |---|---|
//! | `overview.rs` | `/` (protection by policy, VMs needing attention), `/vms` |
//! | `vm.rs` | `/vm/NAME`: snapshots, restore commands, last jobs, "back up now" |
//! | `jobs.rs` | `/jobs` (live progress), `/api/jobs`, `/failures` |
//! | `cluster.rs` | `/replication`, `/storage` |
//! | `audit.rs` | `/audit` |

mod audit;
mod cluster;
mod jobs;
mod overview;
mod vm;

use std::fmt::{self, Write};

use super::html::{self, Esc};

pub use audit::audit;
pub use cluster::{replication, storage};
pub use jobs::{failures, jobs, jobs_json};
pub use overview::{overview, vms};
pub use vm::vm;

/// What every page needs to know about the request.
#[derive(Debug, Clone)]
pub struct PageContext {
    /// The caller, `ROLE NAME`.
    pub who: String,
    /// The CSRF token its forms carry.
    pub csrf: String,
    /// Whether it may start backups (operator and above): the button is shown only then.
    pub can_act: bool,
    /// Whether it may read the audit log (admin).
    pub can_audit: bool,
    /// Now, Unix milliseconds.
    pub now_ms: u64,
}

/// The entries of the navigation bar: path and label.
const NAVIGATION: [(&str, &str); 7] = [
    ("/", "Overview"),
    ("/vms", "VMs"),
    ("/jobs", "Jobs"),
    ("/failures", "Failures"),
    ("/replication", "Replication"),
    ("/storage", "Storage"),
    ("/audit", "Audit log"),
];

/// A page body writer; writing into a `String` cannot fail, but a `Display` could.
type Body<'a> = dyn FnOnce(&mut String) -> fmt::Result + 'a;

/// A whole page: head, navigation (with `current` marked), `body`, script.
fn layout(
    context: Option<&PageContext>,
    title: &str,
    current: &str,
    body: Box<Body<'_>>,
) -> String {
    let mut out = String::with_capacity(32 * 1024);
    let written = (|| -> fmt::Result {
        write!(
            out,
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        )?;
        if let Some(context) = context {
            write!(
                out,
                "<meta name=\"haven-csrf\" content=\"{}\">",
                Esc(&context.csrf)
            )?;
        }
        write!(
            out,
            "<title>{} · Haven</title><link rel=\"stylesheet\" href=\"/static/console.css\">\
             </head><body><header><a class=\"brand\" href=\"/\">Haven</a><nav>",
            Esc(title)
        )?;
        if let Some(context) = context {
            for (path, label) in NAVIGATION {
                if path == "/audit" && !context.can_audit {
                    continue;
                }
                let class = if path == current {
                    " class=\"current\""
                } else {
                    ""
                };
                write!(out, "<a href=\"{path}\"{class}>{label}</a>")?;
            }
            write!(
                out,
                "</nav><form class=\"who\" method=\"post\" action=\"/logout\">\
                 <span id=\"who\">{}</span> <button type=\"submit\">Log out</button></form>",
                Esc(&context.who)
            )?;
        } else {
            out.push_str("</nav>");
        }
        write!(out, "</header><main><h1>{}</h1>", Esc(title))?;
        body(&mut out)?;
        out.push_str("</main><script src=\"/static/console.js\"></script></body></html>\n");
        Ok(())
    })();
    match written {
        Ok(()) => out,
        Err(fmt::Error) => {
            "<!doctype html><title>Haven</title><p>The page could not be rendered.".to_owned()
        }
    }
}

/// A page with one message.
pub fn message(title: &str, text: &str) -> String {
    layout(
        None,
        title,
        "",
        Box::new(|out: &mut String| {
            write!(
                out,
                "<p class=\"message\">{}</p><p><a href=\"/\">Back to the overview</a></p>",
                Esc(text)
            )
        }),
    )
}

/// The login form, with why the last try failed.
pub fn login(error: Option<&str>) -> String {
    layout(
        None,
        "Log in",
        "",
        Box::new(|out: &mut String| {
            if let Some(error) = error {
                write!(
                    out,
                    "<p class=\"message error\" id=\"login-error\">{}</p>",
                    Esc(error)
                )?;
            }
            out.push_str(
                "<form class=\"login\" method=\"post\" action=\"/login\">\
                 <label for=\"token\">API token</label>\
                 <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"off\" \
                 placeholder=\"haven-token:NAME:SECRET\" required>\
                 <button type=\"submit\" id=\"login\">Log in</button></form>\
                 <p class=\"hint\">An admin makes a token with <code>haven token create NAME \
                 --role viewer</code> (or <code>operator</code> to start backups). \
                 A browser holding a client certificate of the cluster's CA \
                 (<code>haven://ROLE/NAME</code>) needs no token.</p>",
            );
            Ok(())
        }),
    )
}

/// What a follower answers: where the leader is, and a link to its console on
/// `console_port` (the port this replica's console listens on: replicas of one
/// cluster normally share their configuration).
pub fn follower(context: &PageContext, leader: Option<&str>, console_port: u16) -> String {
    layout(
        Some(context),
        "This replica follows",
        "",
        Box::new(move |out: &mut String| {
            let Some(url) = leader else {
                out.push_str(
                    "<p class=\"message\" id=\"follower\">No leader is elected yet; this page \
                     shows the cluster once one is. Reload in a few seconds.</p>",
                );
                return Ok(());
            };
            write!(
                out,
                "<p class=\"message\" id=\"follower\">This coordinator replica is a follower: the \
                 cluster's state is on the leader, <code>{}</code> (its gRPC address).",
                Esc(url)
            )?;
            match leader_console(url, console_port) {
                Some(console) => write!(
                    out,
                    " Its console is probably <a id=\"leader\" href=\"{}\">{}</a> (the leader's \
                     host on this replica's console port).</p>",
                    Esc(&console),
                    Esc(&console)
                ),
                None => out.write_str(
                    " Open the console on the leader's <code>http_listen</code> address.</p>",
                ),
            }
        }),
    )
}

/// `SCHEME://HOST:PORT/` of the leader's console, from its advertised gRPC URL
/// (`https://HOST:PORT[/...]`, the scheme being the same for both listeners) and the
/// console port; `None` when the URL does not parse.
fn leader_console(leader: &str, port: u16) -> Option<String> {
    let (scheme, rest) = leader.split_once("://")?;
    if scheme != "https" && scheme != "http" {
        return None;
    }
    let authority = rest.split('/').next()?;
    let host = if authority.starts_with('[') {
        &authority[..=authority.find(']')?]
    } else {
        authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host)
    };
    let valid = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b));
    valid.then(|| format!("{scheme}://{host}:{port}/"))
}

/// A boot test's verdict: a `<span>` badge `boot passed` / `boot failed` carrying
/// `data-boot`, or `–` when there is none. Why a badge: a failed boot test is the one
/// verdict that says a backup may be useless although every byte of it is there.
fn boot_badge(out: &mut String, passed: Option<bool>) -> fmt::Result {
    let (key, label) = match passed {
        Some(true) => ("passed", "boot passed"),
        Some(false) => ("failed", "boot failed"),
        None => return out.write_str("–"),
    };
    write!(
        out,
        "<span class=\"badge boot-{key}\" data-boot=\"{key}\">{label}</span>"
    )
}

/// When the newest boot-verified snapshot was taken (Unix seconds), for people.
fn boot_verified(seconds: Option<i64>) -> String {
    seconds.map_or("never".to_owned(), |s| {
        html::time(u64::try_from(s).unwrap_or(0) * 1000)
    })
}

/// A `<span>` badge of a protection.
fn badge(out: &mut String, protection: super::Protection) -> fmt::Result {
    write!(
        out,
        "<span class=\"badge p-{}\">{}</span>",
        protection.key(),
        protection.label()
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::leader::{JobMetrics, Leader, LeaderSettings};
    use crate::model::{self, JobKind, JobParams, JobRecord, JobState, SnapshotRecord, VmRecord};
    use crate::store::{MetaStore, Op};

    /// A VM name a hostile hypervisor could report.
    const HOSTILE: &str = "<img src=x onerror=alert(1)>";

    /// A real leader loaded from an embedded store holding a VM named [`HOSTILE`]
    /// with one snapshot and one failed job whose error is markup too.
    async fn leader(dir: &std::path::Path) -> Leader {
        let store = crate::store::embedded::EmbeddedStore::open(&dir.join("s.redb"))
            .await
            .unwrap();
        let vm = VmRecord {
            name: HOSTILE.into(),
            host: "h\"1".into(),
            disks: vec![("vda'".into(), 1 << 30)],
            labels: Default::default(),
        };
        let snapshot = SnapshotRecord {
            vm: HOSTILE.into(),
            timestamp: "2026-12-06T10:00:00Z".into(),
            repository: "/srv/<b>repo</b>".into(),
            disks: vec![("vda'".into(), 1 << 30)],
            bytes_uploaded: 1,
            job_id: "j".into(),
            bytes_read: 1,
            bytes_new: 1,
            committed_unix_ms: 1,
        };
        let job = JobRecord {
            id: "job-1".into(),
            kind: JobKind::Backup,
            params: JobParams::default(),
            summary: None,
            boot_passed: None,
            vm: HOSTILE.into(),
            host: "h".into(),
            policy: None,
            repository: "/srv/repo".into(),
            state: JobState::Failed,
            attempts: Vec::new(),
            created_unix_ms: 1,
            finished_unix_ms: 2,
            snapshot: None,
            error: Some("</td><script>alert(2)</script>".into()),
            bytes_uploaded: 0,
            commit: None,
            not_before_unix_ms: 0,
        };
        // Two boot tests of the snapshot: the older passed, the newer failed.
        let boot = |id: &str, passed: bool, finished: u64| JobRecord {
            id: id.into(),
            kind: JobKind::BootTest,
            params: JobParams {
                boot: Some(model::BootTestParams {
                    snapshot: snapshot.timestamp.clone(),
                    check: "serial:<login>".into(),
                    timeout_seconds: 60,
                }),
                ..JobParams::default()
            },
            boot_passed: Some(passed),
            state: JobState::Succeeded,
            finished_unix_ms: finished,
            error: None,
            ..job.clone()
        };
        let (passed, failed) = (boot("boot-1", true, 3), boot("boot-2", false, 4));
        store
            .txn(
                vec![],
                vec![
                    Op::put(model::job_key(&passed.id), json(&passed)),
                    Op::put(model::job_key(&failed.id), json(&failed)),
                    Op::put(model::vm_key(&vm.name), json(&vm)),
                    Op::put(
                        model::snapshot_key(&snapshot.vm, &snapshot.timestamp),
                        json(&snapshot),
                    ),
                    Op::put(model::job_key(&job.id), json(&job)),
                ],
            )
            .await
            .unwrap();
        load(store).await
    }

    /// A real leader loaded from `store`.
    async fn load(store: Arc<dyn MetaStore>) -> Leader {
        let mut registry = haven_metrics::Registry::new();
        let settings = LeaderSettings {
            worker_lease: Duration::from_secs(10),
            default_max_per_host: 1,
            default_max_per_worker: 1,
            job_history: Duration::from_secs(3600),
            inventory_grace: Duration::from_secs(3600),
            job_metrics: JobMetrics::register(&mut registry),
            notifier: Default::default(),
        };
        Leader::load(store, 1, settings).await.unwrap()
    }

    /// The context of a viewer's pages: no forms, no buttons, no audit log.
    fn viewer() -> PageContext {
        PageContext {
            who: "viewer v".into(),
            csrf: String::new(),
            can_act: false,
            can_audit: false,
            now_ms: model::now_ms(),
        }
    }

    /// A record as stored.
    fn json(value: &impl serde::Serialize) -> Vec<u8> {
        serde_json::to_vec(value).unwrap()
    }

    #[tokio::test]
    async fn external_text_is_escaped_on_every_page() {
        let dir = tempfile::tempdir().unwrap();
        let leader = leader(dir.path()).await;
        let context = PageContext {
            who: "operator <o>".into(),
            csrf: "<csrf>".into(),
            can_act: true,
            can_audit: true,
            now_ms: model::now_ms(),
        };
        let pages = [
            overview(&context, &leader),
            vms(&context, &leader, None, None, 0),
            vm(&context, &leader, HOSTILE).await.unwrap(),
            jobs(&context, &leader).await,
            failures(&context, &leader),
            storage(&context, &leader),
            replication(&context, &leader),
        ];
        for page in &pages {
            for raw in ["<img", "<script>alert", "<b>", "<csrf>", "<o>", "h\"1"] {
                assert!(!page.contains(raw), "{raw} unescaped in {page}");
            }
        }
        // The VM is failing, shown escaped, and linked with its name percent-encoded.
        assert!(
            pages[0].contains("&lt;img src=x onerror=alert(1)&gt;"),
            "{}",
            pages[0]
        );
        assert!(pages[0].contains("href=\"/vm/%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E\""));
        assert!(pages[0].contains("data-protection=\"failing\""));
        assert!(pages[4].contains("&lt;/td&gt;&lt;script&gt;alert(2)&lt;/script&gt;"));
        // Restore commands are shell-quoted, then escaped.
        assert!(
            pages[2].contains(
                "haven restore &#39;&lt;img src=x onerror=alert(1)&gt;@2026-12-06T10:00:00Z&#39; \
                 --repo &#39;/srv/&lt;b&gt;repo&lt;/b&gt;&#39;"
            ),
            "{}",
            pages[2]
        );
        assert!(vm(&context, &leader, "unknown").await.is_none());
        // The button only for those who may act.
        assert!(pages[2].contains("id=\"backup-now\""));
        let viewer = PageContext {
            can_act: false,
            ..context
        };
        let page = vm(&viewer, &leader, HOSTILE).await.unwrap();
        assert!(!page.contains("backup-now"), "{page}");
    }

    #[tokio::test]
    async fn boot_verdicts_are_shown_per_vm_and_per_job() {
        let dir = tempfile::tempdir().unwrap();
        let leader = leader(dir.path()).await;
        let context = viewer();
        // The snapshot's time, as the passed test verified it.
        let verified = "2026-12-06 10:00:00Z";
        let failed = "<span class=\"badge boot-failed\" data-boot=\"failed\">boot failed</span>";
        let passed = "<span class=\"badge boot-passed\" data-boot=\"passed\">boot passed</span>";

        // The overview counts both and lists the VM whose last test failed, escaped.
        let page = overview(&context, &leader);
        assert!(
            page.contains("1 VMs with a boot-verified snapshot · 1 whose last boot test failed"),
            "{page}"
        );
        let listed = page
            .split_once("<ul id=\"boot-failed\">")
            .map(|(_, rest)| rest)
            .unwrap_or_else(|| panic!("{page}"));
        assert!(
            listed.starts_with(&format!(
                "<li data-vm=\"&lt;img src=x onerror=alert(1)&gt;\"><a href=\"/vm/%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E\">&lt;img src=x onerror=alert(1)&gt;</a> (last boot-verified snapshot: {verified})</li>"
            )),
            "{listed}"
        );
        // The VM tables: the verified snapshot's time, then the last verdict.
        for page in [
            overview(&context, &leader),
            vms(&context, &leader, None, None, 0),
        ] {
            assert!(
                page.contains(&format!(
                    "<td class=\"boot-verified\">{verified}<td class=\"boot\">{failed}</tr>"
                )),
                "{page}"
            );
        }
        // The VM's page.
        let page = vm(&context, &leader, HOSTILE).await.unwrap();
        assert!(
            page.contains(&format!(
                "<dt>Last boot-verified snapshot</dt><dd>{verified}</dd>\
                 <dt>Last boot test</dt><dd id=\"last-boot-test\">{failed}</dd>"
            )),
            "{page}"
        );
        // Each boot test job with its verdict and the snapshot it booted.
        let page = jobs(&context, &leader).await;
        for (id, verdict) in [("boot-1", passed), ("boot-2", failed)] {
            let row = page
                .split(&format!("<tr data-job=\"{id}\">"))
                .nth(1)
                .and_then(|rest| rest.split("</tr>").next())
                .unwrap_or_else(|| panic!("{id} not in {page}"));
            assert!(
                row.ends_with(&format!("{verdict} 2026-12-06T10:00:00Z")),
                "{row}"
            );
        }
    }

    #[tokio::test]
    async fn a_vm_never_boot_tested_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::embedded::EmbeddedStore::open(&dir.path().join("s.redb"))
            .await
            .unwrap();
        let record = VmRecord {
            name: "web1".into(),
            host: "h".into(),
            disks: vec![],
            labels: Default::default(),
        };
        store
            .txn(
                vec![],
                vec![Op::put(model::vm_key(&record.name), json(&record))],
            )
            .await
            .unwrap();
        let leader = load(store).await;
        let context = viewer();
        let page = vm(&context, &leader, "web1").await.unwrap();
        assert!(
            page.contains(
                "<dt>Last boot-verified snapshot</dt><dd>never</dd>\
                 <dt>Last boot test</dt><dd id=\"last-boot-test\">–</dd>"
            ),
            "{page}"
        );
        let page = overview(&context, &leader);
        assert!(!page.contains("boot-failed"), "{page}");
        assert!(
            page.contains("0 VMs with a boot-verified snapshot · 0 whose last boot test failed"),
            "{page}"
        );
    }

    #[test]
    fn a_follower_names_the_leader() {
        let context = viewer();
        let page = follower(&context, Some("https://10.0.0.1:7700"), 7701);
        assert!(page.contains("href=\"https://10.0.0.1:7701/\""), "{page}");
        let page = follower(&context, Some("https://10.0.0.1:7700/<x>"), 7701);
        assert!(page.contains("https://10.0.0.1:7700/&lt;x&gt;"), "{page}");
        assert!(follower(&context, None, 7701).contains("No leader is elected yet"));
        for (url, console) in [
            (
                "http://coord-0.haven:7700",
                Some("http://coord-0.haven:9000/"),
            ),
            ("https://[fd00::1]:7700/", Some("https://[fd00::1]:9000/")),
            ("https://host", Some("https://host:9000/")),
            ("https://ho<st:1", None),
            ("ftp://host:1", None),
            ("nonsense", None),
        ] {
            assert_eq!(leader_console(url, 9000).as_deref(), console, "{url}");
        }
    }

    #[test]
    fn login_and_message_pages_escape_too() {
        assert!(!login(Some("<x>")).contains("<x>"));
        assert!(!message("t", "<x>").contains("<x>"));
    }
}
