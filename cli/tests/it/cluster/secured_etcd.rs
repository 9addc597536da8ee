//! A coordinator on a secured etcd (client-certificate TLS, auth with a user whose role
//! covers only `/haven/`), configured through `[etcd_security]` of `coordinator.toml`
//! alone: it elects itself, serves the CLI, and everything it writes lands in Haven's
//! prefix. Its history stays bounded: Haven's user may not compact, so etcd's own
//! auto-compaction does, as compose and the chart configure it (the coordinator's
//! compaction of an etcd that lets it is `crates/testkit/tests/etcd_history.rs`).
//! Settings it cannot use stop it at start with the
//! file and field named.
//! (`cluster/gc.rs` runs a whole workload on the same kind of etcd.)

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::{
    cluster::one_cluster_at_a_time,
    etcd::{Etcd, EtcdctlUser},
    haven::haven,
    pki::Pki,
    process::{free_port, spawn_logged, stderr_within},
};

/// Generations of the policy the test writes.
const GENERATIONS: i64 = 40;

/// `coordinator.toml` for `etcd` on these ports, with the fixture's `[etcd_security]`.
fn secured_config(etcd: &Etcd, port: u16, http: u16) -> String {
    let endpoints: Vec<String> = etcd.endpoints().iter().map(|e| format!("{e:?}")).collect();
    format!(
        "id = \"secured\"\nlisten = \"127.0.0.1:{port}\"\nhttp_listen = \"127.0.0.1:{http}\"\n\
         etcd = [{}]\nleader_lease_seconds = 3\ntick_ms = 200\n\
         compaction_seconds = 1\n{}",
        endpoints.join(","),
        etcd.credentials().expect("secured etcd").coordinator_toml()
    )
}

/// `haven coordinator --config PATH`, which must exit at once with an error; its
/// standard error.
fn refused_at_start(path: &Path, text: &str) -> String {
    std::fs::write(path, text).unwrap();
    let (status, stderr) = stderr_within(
        &mut haven(&["coordinator", "--config", path.to_str().unwrap()]),
        Duration::from_secs(60),
    );
    assert!(!status.success(), "{text}\nwas accepted");
    stderr
}

#[test]
fn coordinator_leads_on_a_secured_etcd() {
    let _alone = one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let etcd = Etcd::start_secured(1).expect("start a secured etcd");
    let (port, http) = (free_port(), free_port());
    let config = dir.join("coordinator.toml");
    let pki = Pki::new(dir);
    std::fs::write(
        &config,
        format!(
            "allowed_repositories = [{:?}]\n{}{}",
            format!("{}/*", dir.to_str().unwrap()),
            secured_config(&etcd, port, http),
            pki.coordinator_toml()
        ),
    )
    .unwrap();
    let _coordinator = spawn_logged(
        haven(&["coordinator", "--config", config.to_str().unwrap()])
            .env("HAVEN_LOG", "haven_coordinator=info"),
        &dir.join("coordinator.log"),
    );

    // It leads once its leader key is in etcd, and then serves the CLI.
    let cli = pki.admin(&format!("https://127.0.0.1:{port}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cli.run(&["vm", "list", "--json"]).status.success() {
        assert!(
            Instant::now() < deadline,
            "the coordinator did not lead; log:\n{}",
            std::fs::read_to_string(dir.join("coordinator.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, health) = pki.https_get(http, "/healthz", None);
    assert!(health.contains("ok: leader"), "/healthz: {health}");
    let (status, ready) = pki.https_get(http, "/readyz", None);
    assert_eq!(
        (status, ready.as_str()),
        (200, "ready: leader is this replica\n")
    );
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[[policy]]\nname = \"nightly\"\nschedule = \"0 3 * * *\"\nrepository = {:?}\n",
            dir.join("repo").to_str().unwrap()
        ),
    )
    .unwrap();
    let applied = cli.ok(&["policy", "apply", policy.to_str().unwrap()]);
    assert!(applied.contains("nightly"), "{applied}");

    // Seen by etcd's root: the leader key and the policy, and no key outside /haven/.
    let keys = etcd
        .etcdctl(EtcdctlUser::Root, &["get", "--prefix", "/", "--keys-only"])
        .expect("list every key as root");
    let keys: Vec<&str> = keys.lines().filter(|line| !line.is_empty()).collect();
    assert!(keys.contains(&"/haven/leader"), "keys: {keys:?}");
    assert!(keys.contains(&"/haven/policies/nightly"), "keys: {keys:?}");
    assert!(
        keys.iter().all(|key| key.starts_with("/haven/")),
        "keys: {keys:?}"
    );

    // Many generations of the policy: etcd keeps every version until compacted.
    // Auto-compaction makes an old version unreadable while the current one stays.
    let first = revision_of(&etcd, "/haven/policies/nightly").1;
    for minute in 0..GENERATIONS {
        std::fs::write(
            &policy,
            format!(
                "[[policy]]\nname = \"nightly\"\nschedule = \"{} 3 * * *\"\nrepository = {:?}\n",
                minute % 60,
                dir.join("repo").to_str().unwrap()
            ),
        )
        .unwrap();
        cli.ok(&["policy", "apply", policy.to_str().unwrap()]);
    }
    let (current, _) = revision_of(&etcd, "/haven/policies/nightly");
    assert!(current - first >= GENERATIONS, "{first} .. {current}");
    let read_at = |revision: i64| {
        etcd.etcdctl(
            EtcdctlUser::Root,
            &[
                "get",
                "/haven/policies/nightly",
                &format!("--rev={revision}"),
            ],
        )
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match read_at(first) {
            Err(error) if error.to_string().contains("compacted") => break,
            other => assert!(
                Instant::now() < deadline,
                "revision {first} of {current} was never compacted: {other:?}\nlog:\n{}",
                std::fs::read_to_string(dir.join("coordinator.log")).unwrap_or_default()
            ),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    read_at(current).expect("the current revision stays readable");

    // Settings the coordinator cannot use stop it before it serves, naming the cause.
    let good = secured_config(&etcd, free_port(), free_port());
    let missing = dir.join("missing-password");
    let files = etcd.credentials().unwrap();
    let cases = [
        (
            good.replace(
                &format!("{:?}", files.password_file.to_str().unwrap()),
                &format!("{:?}", missing.to_str().unwrap()),
            ),
            format!("etcd_security.password_file {}: ", missing.display()),
        ),
        (
            good.replace(
                &format!("{:?}", files.client_cert.to_str().unwrap()),
                &format!("{:?}", files.client_key.to_str().unwrap()),
            ),
            "etcd_security.cert_file".to_string(),
        ),
        (
            good.replace("https://", "http://"),
            "etcd_security.ca_file is set but the etcd endpoints are http://".to_string(),
        ),
        (
            format!(
                "listen = \"127.0.0.1:{}\"\netcd = [\"http://192.0.2.1:2379\"]\n",
                free_port()
            ),
            "http://192.0.2.1:2379 is plain http:// off loopback".to_string(),
        ),
    ];
    let bad = dir.join("bad.toml");
    for (text, expected) in cases {
        let stderr = refused_at_start(&bad, &text);
        assert!(
            stderr.contains(&expected),
            "{stderr:?} should say {expected:?}"
        );
    }
}

/// The cluster's current revision and `key`'s modification revision, read as root.
fn revision_of(etcd: &Etcd, key: &str) -> (i64, i64) {
    let text = etcd
        .etcdctl(EtcdctlUser::Root, &["get", key, "-w", "json"])
        .expect("read as root");
    let reply: serde_json::Value = serde_json::from_str(&text).expect("etcdctl JSON");
    let current = reply["header"]["revision"]
        .as_i64()
        .expect("header revision");
    let modified = reply["kvs"][0]["mod_revision"]
        .as_i64()
        .expect("mod_revision");
    (current, modified)
}
