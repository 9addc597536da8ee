//! Webhook notifications from a real coordinator, heard by real receivers on
//! loopback: a backup of a VM whose `qemu-storage-daemon` was killed fails for real
//! (every attempt, until the job is out of attempts); the failure receiver, over
//! HTTPS with a certificate of its own CA, answers 500 to the first request and gets
//! the notification again, signed, once for the job and not once per attempt. A
//! second receiver, over plain HTTP on loopback, hears the VM pass its tiny RPO once,
//! and, after the VM is back and backed up, that it is within its RPO again.

use std::time::Duration;

use aws_lc_rs::hmac;
use serde_json::Value;

use super::one_worker::OneWorker;
use crate::support::{
    cluster::{init_repo, make_image, start_vm},
    pki::Pki,
    webhook::{Received, Receiver},
};

/// The shared secret of the failure webhook.
const SECRET: &str = "a shared secret";
/// RPO of the VM's policy: long enough for a backup and one RPO check (every 10 s)
/// to fit in it, so the recovery is seen before the next breach.
const RPO_SECONDS: u64 = 30;

/// Checks `request`'s signature as a receiver would: HMAC-SHA256 of `TIMESTAMP.BODY`.
fn assert_signed(request: &Received) {
    let timestamp = request.header("x-haven-timestamp");
    assert!(timestamp.parse::<u64>().is_ok(), "{request:#?}");
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    let mut signed = timestamp.as_bytes().to_vec();
    signed.push(b'.');
    signed.extend_from_slice(&request.body);
    let expected = format!("sha256={}", hex::encode(hmac::sign(&key, &signed).as_ref()));
    assert_eq!(
        request.header("x-haven-signature"),
        expected,
        "{request:#?}"
    );
}

#[test]
fn webhooks_hear_of_a_failed_job_once_retried_and_signed_and_of_an_rpo_breach_and_recovery() {
    let _alone = crate::support::cluster::one_cluster_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    // The failure receiver's own CA, which the coordinator trusts for it only.
    std::fs::create_dir_all(dir.join("hooks")).unwrap();
    let hooks_ca = Pki::new(&dir.join("hooks"));
    let (cert, key) = hooks_ca.issue("server", "coordinator");
    let failures = Receiver::https(1, &cert, &key);
    let rpo = Receiver::http(0);
    let secret = dir.join("webhook-secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let tables = format!(
        "[notify]\ncluster = \"test-cluster\"\n\
         [[notify.webhook]]\nurl = \"{}/failures?token=t0\"\nevents = [\"job_failed\"]\n\
         secret_file = {secret:?}\nca_file = {:?}\ntimeout_seconds = 5\nmax_attempts = 4\n\
         [[notify.webhook]]\nurl = \"{}/rpo\"\nevents = [\"rpo_breach\", \"rpo_recovered\"]\n",
        failures.url(),
        hooks_ca.ca(),
        rpo.url(),
    );
    let mut bed = OneWorker::start_with_tables(dir, &[], &[], &[], &tables);
    let (worker_cert, worker_key) = bed.pki.issue("worker", "w0");
    bed.start_worker(&worker_cert, &worker_key, "", &[]);
    let repo = dir.join("repo");
    init_repo(&repo, &[]);
    let repo = repo.to_str().unwrap().to_owned();

    // The VM, under a policy with a tiny RPO whose schedule never fires here.
    let image = dir.join("lost.qcow2");
    make_image(&image, 16, 2);
    let qmp = dir.join("h0").join("lost.qmp");
    let mut vm = start_vm(&qmp, &image, &dir.join("lost.log"));
    bed.wait_for_vm("lost");
    bed.admin.apply_policy(
        &dir.join("policy.toml"),
        &format!(
            "[[policy]]\nname = \"tight\"\nschedule = \"0 0 1 1 *\"\nrepository = {repo:?}\n\
         select = {{ names = [\"lost\"] }}\nrpo_seconds = {RPO_SECONDS}\n"
        ),
    );

    // The hypervisor dies: every attempt of the backup fails to reach it.
    vm.kill9();
    let id = bed.admin.start_backup("lost", &repo);
    let job = bed.wait_ended(&id, Duration::from_secs(120));
    assert_eq!(job["state"], "failed", "{job:#}");

    // Refused once with 500, delivered on the retry: the same notification twice.
    let received = failures.wait_for("delivered failure", Duration::from_secs(60), |r| {
        r.iter().any(|request| request.status == 200)
    });
    assert_eq!(
        received.iter().map(|r| r.status).collect::<Vec<_>>(),
        [500, 200],
        "one notification for the job, not one per attempt: {received:#?}"
    );
    assert_eq!(received[0].body, received[1].body);
    for request in &received {
        assert_eq!(request.target, "POST /failures?token=t0");
        assert_eq!(request.header("content-type"), "application/json");
        assert_eq!(request.header("x-haven-event"), "job_failed");
        assert_eq!(
            request.header("x-haven-delivery"),
            format!("job_failed/{id}")
        );
        assert_signed(request);
    }
    let body = received[1].json();
    let attempts = job["attempts"].as_array().map_or(0, Vec::len);
    assert!(
        attempts > 1,
        "the job was retried before it failed: {job:#}"
    );
    for (field, expected) in [
        ("version", Value::from(1)),
        ("id", Value::from(format!("job_failed/{id}"))),
        ("event", Value::from("job_failed")),
        ("cluster", Value::from("test-cluster")),
        ("vm", Value::from("lost")),
        ("host", Value::from("h0")),
        // `haven job run` of a VM a policy selects runs under that policy.
        ("policy", Value::from("tight")),
        ("repository", Value::from(repo.as_str())),
        ("rpo", Value::Null),
    ] {
        assert_eq!(body[field], expected, "{field} in {body:#}");
    }
    assert_eq!(body["job"]["id"], id.as_str(), "{body:#}");
    assert_eq!(body["job"]["kind"], "backup", "{body:#}");
    assert_eq!(body["job"]["attempts"], attempts, "{body:#}");
    assert_eq!(body["job"]["error"], job["error"], "{body:#}");
    assert!(
        body["summary"]
            .as_str()
            .is_some_and(|s| s.contains(&id) && s.contains("lost")),
        "{body:#}"
    );

    // Past its RPO without a good backup (its age counts from its first job): one
    // breach, to the RPO receiver only.
    let breaches = rpo.wait_for("RPO breach", Duration::from_secs(90), |r| !r.is_empty());
    let breach = breaches[0].json();
    assert_eq!(breach["event"], "rpo_breach", "{breach:#}");
    assert_eq!(breach["id"], "rpo_breach/lost/never", "{breach:#}");
    assert_eq!(breach["vm"], "lost", "{breach:#}");
    assert_eq!(breach["host"], "h0", "{breach:#}");
    assert_eq!(breach["policy"], "tight", "{breach:#}");
    assert_eq!(breach["repository"], repo.as_str(), "{breach:#}");
    assert_eq!(breach["job"], Value::Null, "{breach:#}");
    assert_eq!(breach["rpo"]["rpo_seconds"], RPO_SECONDS, "{breach:#}");
    assert_eq!(breach["rpo"]["last_success"], Value::Null, "{breach:#}");
    assert!(
        breach["rpo"]["age_seconds"].as_u64().unwrap() > RPO_SECONDS,
        "{breach:#}"
    );
    assert_eq!(
        breaches[0].header("x-haven-signature"),
        "",
        "no secret, no signature"
    );

    // The hypervisor is back and a backup succeeds: within the RPO again, once.
    std::fs::remove_file(&qmp).unwrap();
    let _vm = start_vm(&qmp, &image, &dir.join("lost-again.log"));
    let id = bed.admin.start_backup("lost", &repo);
    let job = bed.wait_ended(&id, Duration::from_secs(120));
    assert_eq!(job["state"], "succeeded", "{job:#}");
    let heard = rpo.wait_for("RPO recovery", Duration::from_secs(60), |r| {
        r.iter()
            .any(|request| request.json()["event"] == "rpo_recovered")
    });
    let events: Vec<Value> = heard.iter().map(|r| r.json()["event"].clone()).collect();
    assert_eq!(events, ["rpo_breach", "rpo_recovered"], "{heard:#?}");
    let recovered = heard[1].json();
    assert!(
        recovered["rpo"]["last_success"].is_string(),
        "{recovered:#}"
    );
    assert!(
        recovered["rpo"]["age_seconds"].as_u64().unwrap() <= RPO_SECONDS,
        "{recovered:#}"
    );
    // The failure receiver heard nothing more: it takes job failures only.
    assert_eq!(failures.received().len(), 2);
}
