//! The web console of `haven dev`, in headless Chromium: a viewer and an operator log
//! in with API tokens; the overview shows a VM past its policy's RPO as at risk; the
//! operator starts a backup with the VM page's button and the jobs page shows its
//! progress moving without a reload; the restore commands appear; a viewer sees no
//! button, and a POST forged from its session (or sent with its token) is refused
//! and audited. Client certificates open the console too, a worker's is refused.
//!
//! With `HAVEN_CONSOLE_SCREENSHOTS=DIR` the test saves the PNGs in `docs/`
//! (`console-overview.png`, `console-vm.png`, `console-jobs.png`) to DIR.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use super::dev::{Dev, make_image as make_small_image};
use crate::support::{
    browser::Browser,
    cluster::{init_repo, make_image, one_cluster_at_a_time, start_vm},
};

/// Logs `browser` in to `console` with `token`.
fn log_in(browser: &Browser, console: &str, token: &str) {
    browser.goto(&format!("{console}/login"));
    browser.type_into(&browser.find("#token"), token);
    browser.click(&browser.find("#login"));
    browser.wait_until("the login is done", Duration::from_secs(10), |b| {
        !b.url().ends_with("/login")
    });
    assert!(
        browser.find_all("#login-error").is_empty(),
        "{}",
        browser.source()
    );
}

/// The `value` of the `<progress>` of job `id` on the current page, if shown.
fn progress_of(browser: &Browser, id: &str) -> Option<f64> {
    let bars = browser.find_all(&format!("#live-jobs tr[data-job=\"{id}\"] progress"));
    bars.first()
        .and_then(|bar| browser.property(bar, "value").as_f64())
}

/// The HTTP status of `curl ARGS URL` against the console (its CA trusted).
fn curl_status(pki: &Path, url: &str, args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(pki.join("ca.pem"))
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The audit records `haven audit --json` lists.
fn audit(dev: &Dev) -> Vec<Value> {
    serde_json::from_str(&dev.cli.ok(&["audit", "--json", "--limit", "1000"])).unwrap()
}

#[test]
fn console_shows_protection_and_live_progress_and_refuses_viewers_actions() {
    let _alone = one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let vms = dir.path().join("vms");
    std::fs::create_dir_all(&vms).unwrap();
    let web = dir.path().join("web.qcow2");
    make_small_image(&web);
    // 64 MiB to read at 4 MiB/s: a backup that runs long enough to watch.
    let big = dir.path().join("big.qcow2");
    make_image(&big, 256, 64);
    let _web = start_vm(&vms.join("web.qmp"), &web, &dir.path().join("web.log"));
    let _big = start_vm(&vms.join("big.qmp"), &big, &dir.path().join("big.log"));
    let primary = dir.path().join("primary");
    init_repo(&primary, &[]);
    let dev = Dev::start(dir.path(), &vms, &["--read-limit", "4194304"]);
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[[policy]]\nname = \"tight\"\nschedule = \"0 0 1 1 *\"\nrepository = {repo:?}\n\
             rpo_seconds = 1\nselect = {{ names = [\"web\"] }}\n\
             [[policy]]\nname = \"gold\"\nschedule = \"0 0 1 1 *\"\nrepository = {repo:?}\n\
             rpo_seconds = 86400\nselect = {{ names = [\"big\"] }}\n",
            repo = primary.to_str().unwrap()
        ),
    )
    .unwrap();
    dev.cli.ok(&["policy", "apply", policy.to_str().unwrap()]);
    let viewer = dev
        .cli
        .ok(&["token", "create", "alice", "--role", "viewer"]);
    let operator = dev
        .cli
        .ok(&["token", "create", "olga", "--role", "operator"]);
    let (viewer, operator) = (viewer.trim(), operator.trim());
    // web is backed up once; its RPO of one second is soon behind it.
    dev.cli.ok(&["policy", "run", "tight"]);
    dev.wait_for("backup", 1, Duration::from_secs(60));

    let console = format!("https://127.0.0.1:{}", dev.http);
    let screenshots = std::env::var_os("HAVEN_CONSOLE_SCREENSHOTS").map(PathBuf::from);
    let browser = Browser::start(dir.path());
    browser.goto(&console);
    assert!(browser.url().ends_with("/login"), "{}", browser.url());

    // The operator: web at risk on the overview.
    log_in(&browser, &console, operator);
    browser.wait_until("web shows as at risk", Duration::from_secs(30), |b| {
        b.goto(&format!("{console}/"));
        !b.find_all("#attention tr[data-vm=\"web\"][data-protection=\"at-risk\"]")
            .is_empty()
    });
    assert_eq!(browser.text(&browser.find("#count-at-risk .count")), "1");
    assert_eq!(browser.text(&browser.find("#who")), "operator olga");

    // "Back up now" on big's page; its progress moves on /jobs without a reload.
    browser.goto(&format!("{console}/vm/big"));
    browser.click(&browser.find("#backup-now"));
    browser.wait_until("back on big's page", Duration::from_secs(10), |b| {
        b.url().contains("/vm/big")
    });
    let job = dev
        .cli
        .jobs()
        .into_iter()
        .find(|j| j["vm"] == "big")
        .expect("the button started a job");
    let id = job["job_id"].as_str().unwrap().to_owned();
    browser.goto(&format!("{console}/jobs"));
    browser.execute(
        "window.havenTestMarker = 'same page'; return null;",
        json!([]),
    );
    let mut seen = Vec::new();
    browser.wait_until("the progress moved twice", Duration::from_secs(60), |b| {
        if let Some(value) = progress_of(b, &id).filter(|v| *v > 0.0)
            && seen.last() != Some(&value)
        {
            seen.push(value);
        }
        seen.len() >= 3
    });
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    let marker = browser.execute("return window.havenTestMarker || null;", json!([]));
    assert_eq!(marker, json!("same page"), "the page was reloaded");
    if let Some(dir) = &screenshots {
        browser.screenshot(&dir.join("console-jobs.png"));
    }
    dev.wait_for("backup", 2, Duration::from_secs(120));
    let runs: Vec<Value> = audit(&dev)
        .into_iter()
        .filter(|r| r["method"] == "Console/RunJob")
        .collect();
    assert!(
        runs.iter()
            .any(|r| r["who"] == "operator olga" && r["result"] == "Ok"),
        "{runs:#?}"
    );

    // big's page: its snapshot and the commands that restore it.
    browser.goto(&format!("{console}/vm/big"));
    let restore = browser.text(&browser.find("#restore"));
    assert!(restore.contains("haven restore big@"), "{restore}");
    assert!(restore.contains(primary.to_str().unwrap()), "{restore}");
    assert_eq!(browser.find_all("#snapshots tbody tr").len(), 1);
    if let Some(dir) = &screenshots {
        browser.screenshot(&dir.join("console-vm.png"));
        browser.goto(&format!("{console}/"));
        browser.screenshot(&dir.join("console-overview.png"));
    }

    // The viewer: no button, and a POST forged from its session is refused.
    browser.delete_cookies();
    log_in(&browser, &console, viewer);
    browser.goto(&format!("{console}/vm/big"));
    assert!(
        browser.find_all("#backup-now").is_empty(),
        "a viewer sees the button"
    );
    let status = browser.execute(
        "const csrf = document.querySelector('meta[name=haven-csrf]').content;
         return fetch('/vm/big/backup', {method: 'POST',
             headers: {'content-type': 'application/x-www-form-urlencoded'},
             body: 'csrf=' + csrf}).then(r => r.status);",
        json!([]),
    );
    assert_eq!(status, json!(403));
    let backup = format!("{console}/vm/big/backup");
    let bearer = format!("Authorization: Bearer {viewer}");
    assert_eq!(
        curl_status(&dev.pki, &backup, &["-X", "POST", "-H", &bearer]),
        "403"
    );
    // Without credentials: refused; a page redirects to the login form.
    assert_eq!(curl_status(&dev.pki, &backup, &["-X", "POST"]), "401");
    assert_eq!(curl_status(&dev.pki, &format!("{console}/"), &[]), "303");
    // Client certificates: the admin's opens the console, a worker's does not.
    let certificate = |name: &str| {
        [
            "--cert".to_owned(),
            dev.pki.join(format!("{name}.pem")).display().to_string(),
            "--key".to_owned(),
            dev.pki
                .join(format!("{name}-key.pem"))
                .display()
                .to_string(),
        ]
    };
    let admin = certificate("admin");
    let admin: Vec<&str> = admin.iter().map(String::as_str).collect();
    assert_eq!(
        curl_status(&dev.pki, &format!("{console}/audit"), &admin),
        "200"
    );
    let worker = certificate("dev-worker");
    let worker: Vec<&str> = worker.iter().map(String::as_str).collect();
    assert_eq!(
        curl_status(&dev.pki, &format!("{console}/"), &worker),
        "403"
    );
    let backups = dev.cli.jobs().iter().filter(|j| j["vm"] == "big").count();
    assert_eq!(backups, 1, "a refused POST started a job");
    let refused = audit(&dev)
        .into_iter()
        .filter(|r| r["method"] == "Console/RunJob" && r["result"] != "Ok")
        .count();
    assert_eq!(refused, 3, "viewer in the page, viewer's token, anonymous");
}
