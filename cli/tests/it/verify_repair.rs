//! `haven verify` records its verdict, a failed base is not built on, and
//! `--repair-from` restores a flipped chunk from a replica made by `haven replicate`;
//! `haven replicate status` and the `--watch` metrics report the lag.

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::{
    bed::Bed,
    haven::haven,
    image::{MIB, assert_same_disk, flip_byte, noise, write_at},
    metrics::scrape,
    process::assert_success,
    report::{disk_stat, entry},
};

fn replica_url(bed: &Bed) -> String {
    format!("file://{}", bed.path("replica").display())
}

/// `haven replicate ARGS --from primary --to replica` (no password in the environment).
fn replicate(bed: &Bed, args: &[&str]) -> std::process::Output {
    haven(&["replicate"])
        .args(args)
        .args(["--from", &bed.repo_url(), "--to", &replica_url(bed)])
        .env_remove("HAVEN_PASSWORD")
        .output()
        .unwrap()
}

fn replicate_json(bed: &Bed, args: &[&str]) -> serde_json::Value {
    let mut args = args.to_vec();
    args.push("--json");
    let output = replicate(bed, &args);
    assert_success(&output, &args);
    serde_json::from_slice(&output.stdout).unwrap()
}

fn lag(status: &serde_json::Value, vm: &str) -> u64 {
    entry(status, "vm", vm)["lag_seconds"].as_u64().unwrap()
}

#[test]
fn a_flipped_chunk_fails_verify_blocks_the_base_and_is_repaired_from_the_replica() {
    let bed = Bed::initialised();
    let image = bed.raw_image("web1.raw", 24 * MIB, &[(0, 20 * MIB as usize)]);
    let first = bed.backup("web1", &[&image]);
    let first_name = first["snapshot"].as_str().unwrap().to_string();
    let first_copy = bed.path("web1-1.raw");
    std::fs::copy(&image, &first_copy).unwrap();
    let first_chunks = bed.chunk_files();

    // Replication status before and after the first replication.
    let status = replicate_json(&bed, &["status"]);
    assert!(lag(&status, "web1") > 0, "{status}");
    let report = replicate_json(&bed, &[]);
    assert_eq!(report["repository_created"], true, "{report}");
    assert_eq!(report["manifests_copied"], 1, "{report}");
    assert!(report["chunks_copied"].as_u64().unwrap() >= 20, "{report}");
    let status = replicate_json(&bed, &["status"]);
    assert_eq!(lag(&status, "web1"), 0, "{status}");
    let again = replicate_json(&bed, &[]);
    assert_eq!(again["bytes_copied"], 0, "{again}");

    // A passing verify is recorded, and an incremental builds on it.
    let verify = bed.json(&["verify"]);
    assert_eq!(verify["verdicts"][0]["outcome"], "passed", "{verify}");
    let record = verify["verdicts"][0]["record"].as_str().unwrap();
    assert!(record.starts_with("verify/web1/"), "{record}");
    assert!(bed.repo_dir().join(record).is_file());
    // New data where the disk was empty: every chunk of the first snapshot is shared.
    write_at(&image, 21 * MIB, &noise(99, MIB as usize));
    let second = bed.backup("web1", &[&image]);
    assert_eq!(
        second["parent"],
        first["snapshot"]
            .as_str()
            .unwrap()
            .split('@')
            .nth(1)
            .unwrap()
    );
    assert!(disk_stat(&second, "reused_chunks") >= 15, "{second}");
    let second_name = second["snapshot"].as_str().unwrap().to_string();
    let second_copy = bed.path("web1-2.raw");
    std::fs::copy(&image, &second_copy).unwrap();

    // --vm limits the run to one VM's snapshots.
    let other_vm = bed.raw_image("db.raw", 4 * MIB, &[(MIB, MIB as usize)]);
    bed.backup("db", &[&other_vm]);
    let only_db = bed.json(&["verify", "--vm", "db"]);
    assert_eq!(
        only_db["snapshots"].as_array().unwrap().len(),
        1,
        "{only_db}"
    );

    // A sample checks only part of the chunks.
    let sampled = bed.json(&["verify", &second_name, "--sample", "30"]);
    let sampled_chunks = sampled["chunks_checked"].as_u64().unwrap();
    assert!(sampled_chunks < 18, "{sampled}");

    // Flip one byte in a chunk both snapshots share: verify names it and fails.
    let victim = &first_chunks[first_chunks.len() / 2];
    let victim_key = victim
        .strip_prefix(bed.repo_dir())
        .unwrap()
        .display()
        .to_string();
    flip_byte(victim, 300);
    let error = bed.fails(&["verify"]);
    assert!(error.contains(&victim_key), "{error}");
    let output = bed
        .haven(&["verify", "--vm", "web1", "--json"])
        .output()
        .unwrap();
    let failed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(
        failed["verdicts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|verdict| verdict["outcome"] == "failed"),
        "{failed}"
    );

    // The next backup does not build on the failed snapshot: a full read, reason logged.
    let output = bed.backup_output("web1", &[&image]);
    assert_success(&output, ["backup"]);
    let third: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(third["parent"].is_null(), "{third}");
    assert_eq!(disk_stat(&third, "reused_chunks"), 0, "{third}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("failed verification"), "{stderr}");

    // Repair from the replica, then everything verifies and restores byte-identical.
    let repaired = bed.json(&["verify", "--repair-from", &replica_url(&bed)]);
    assert_eq!(
        repaired["repaired"].as_array().unwrap(),
        &vec![serde_json::Value::from(victim_key.clone())],
        "{repaired}"
    );
    assert!(
        repaired["failures"].as_array().unwrap().is_empty(),
        "{repaired}"
    );
    let clean = bed.json(&["verify"]);
    assert_eq!(clean["repaired"].as_array().unwrap().len(), 0, "{clean}");
    assert!(clean["failures"].as_array().unwrap().is_empty(), "{clean}");
    for (name, copy) in [(&first_name, &first_copy), (&second_name, &second_copy)] {
        let out = bed.path("restored.raw");
        let _ = std::fs::remove_file(&out);
        bed.ok(&["restore", name, "--to", out.to_str().unwrap()]);
        assert_same_disk(copy, &out);
    }
    // With the base verified again, the next incremental builds on the newest snapshot.
    let fourth = bed.backup("web1", &[&image]);
    assert!(fourth["parent"].is_string(), "{fourth}");
    assert!(disk_stat(&fourth, "reused_chunks") >= 15, "{fourth}");

    // A replica of another repository is refused for repair.
    let other = Bed::initialised();
    let error = bed.fails(&["verify", "--repair-from", &other.repo_url()]);
    assert!(error.contains("holds repository"), "{error}");
}

#[test]
fn replicate_watch_serves_the_lag_as_a_prometheus_metric() {
    let bed = Bed::initialised();
    let image = bed.raw_image("db.raw", 8 * MIB, &[(0, 4 * MIB as usize)]);
    bed.backup("db", &[&image]);
    let mut child = haven(&[
        "replicate",
        "--watch",
        "1s",
        "--metrics-listen",
        "127.0.0.1:0",
    ])
    .args(["--from", &bed.repo_url(), "--to", &replica_url(&bed)])
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit())
    .spawn()
    .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let port: u16 = line
        .trim()
        .trim_end_matches("/metrics")
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = stdout.read_to_string(&mut sink);
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let wanted = "haven_replication_lag_seconds{vm=\"db\"} 0\n";
    let mut text = scrape(port);
    while !text.contains(wanted) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        text = scrape(port);
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains(wanted), "{text}");
    assert!(
        text.contains("haven_replication_failed_passes_total 0"),
        "{text}"
    );
}
