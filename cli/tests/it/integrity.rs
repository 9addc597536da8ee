//! Damage, wrong secrets and crashes: Haven must notice, refuse and recover.

use std::time::Duration;

use crate::support::{
    bed::Bed,
    haven::PASSWORD,
    image::{MIB, assert_same_disk, flip_byte, raw_image},
    process::assert_success,
    report::disk_stat,
    tree::files_below,
};

fn backed_up_bed() -> (Bed, std::path::PathBuf) {
    let bed = Bed::initialised();
    let raw = bed.path("disk.raw");
    raw_image(
        &raw,
        16 * MIB,
        &[(0, 6 * MIB as usize), (10 * MIB, MIB as usize)],
    );
    bed.backup("vm", &[&raw]);
    bed.ok(&["verify"]);
    (bed, raw)
}

fn only_file_under(dir: &std::path::Path) -> std::path::PathBuf {
    let mut files = Vec::new();
    files.extend(files_below(dir));
    assert_eq!(files.len(), 1, "{files:?}");
    files.pop().unwrap()
}

fn assert_detected(bed: &Bed, object_prefix: &str) {
    let error = bed.fails(&["verify"]);
    assert!(
        error.contains(object_prefix),
        "verify did not name {object_prefix}: {error}"
    );
    let out = bed.path("restored.raw");
    let error = bed.fails(&["restore", "vm@latest", "--to", out.to_str().unwrap()]);
    assert!(
        error.contains(object_prefix),
        "restore did not name {object_prefix}: {error}"
    );
    assert!(!out.exists(), "a refused restore left an output file");
    assert!(!bed.path("restored.raw.haven-partial").exists());
}

#[test]
fn a_flipped_byte_anywhere_in_a_chunk_is_detected() {
    let (bed, raw) = backed_up_bed();
    let chunks = bed.chunk_files();
    assert_eq!(chunks.len(), 7);
    let victim = &chunks[3];
    let len = victim.metadata().unwrap().len();
    for offset in [0, 5, 20, 39, 40, len / 2, len - 5, len - 1] {
        flip_byte(victim, offset);
        assert_detected(&bed, "chunks/");
        flip_byte(victim, offset);
    }
    bed.ok(&["verify"]);
    let out = bed.path("ok.raw");
    bed.ok(&["restore", "vm@latest", "--to", out.to_str().unwrap()]);
    assert_same_disk(&raw, &out);
}

#[test]
fn a_flipped_byte_in_an_index_or_manifest_is_detected() {
    let (bed, _) = backed_up_bed();
    let index = only_file_under(&bed.repo_dir().join("indexes"));
    flip_byte(&index, index.metadata().unwrap().len() / 2);
    assert_detected(&bed, "indexes/vm/");
    flip_byte(&index, index.metadata().unwrap().len() / 2);
    bed.ok(&["verify"]);

    let manifest = only_file_under(&bed.repo_dir().join("snapshots"));
    flip_byte(&manifest, 60);
    assert_detected(&bed, "snapshots/vm/");
}

#[test]
fn a_missing_chunk_is_detected() {
    let (bed, _) = backed_up_bed();
    std::fs::remove_file(&bed.chunk_files()[0]).unwrap();
    assert_detected(&bed, "chunks/");
}

#[test]
fn wrong_password_and_unknown_versions_are_clear_errors() {
    let (bed, _) = backed_up_bed();
    let output = bed
        .haven(&["snapshots"])
        .env("HAVEN_PASSWORD", "not the password")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("wrong password"), "{stderr}");

    let no_password = bed
        .haven(&["snapshots"])
        .env_remove("HAVEN_PASSWORD")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&no_password.stderr).contains("no password"));

    let password_file = bed.path("password");
    std::fs::write(&password_file, format!("{}\n", PASSWORD)).unwrap();
    let with_file = bed
        .haven(&[
            "snapshots",
            "--password-file",
            password_file.to_str().unwrap(),
        ])
        .env_remove("HAVEN_PASSWORD")
        .output()
        .unwrap();
    assert_success(&with_file, ["snapshots --password-file"]);

    let config = bed.repo_dir().join("config");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("\"version\": 1", "\"version\": 2")).unwrap();
    let error = bed.fails(&["snapshots"]);
    assert!(
        error.contains("format version 2 is not supported"),
        "{error}"
    );

    // A tampered chunk size is caught by the config's MAC.
    std::fs::write(
        &config,
        text.replace("\"chunk_size\": 1048576", "\"chunk_size\": 65536"),
    )
    .unwrap();
    let error = bed.fails(&["snapshots"]);
    assert!(error.contains("config"), "{error}");

    std::fs::write(&config, text).unwrap();
    let error = bed.fails(&["repo", "init"]);
    assert!(error.contains("already exists"), "{error}");
    let empty = Bed::new();
    let error = empty.fails(&["snapshots"]);
    assert!(error.contains("no haven repository"), "{error}");
}

#[test]
fn bad_arguments_are_one_line_errors() {
    let (bed, _) = backed_up_bed();
    for args in [
        vec!["restore", "vm@yesterday", "--to", "/tmp/x"],
        vec!["restore", "nope@latest", "--to", "/tmp/x"],
        vec!["backup", "image", "/nonexistent.qcow2", "--vm", "vm"],
        vec!["backup", "image", "/etc/hostname", "--vm", "../etc"],
    ] {
        bed.fails(&args);
    }
}

#[test]
fn kill_during_backup_leaves_a_consistent_repository() {
    let bed = Bed::initialised();
    let raw = bed.raw_image("disk.raw", 512 * MIB, &[(0, 512 * MIB as usize)]);
    // Kill at several points: early, mid-way, late. A run that finishes before its kill
    // commits a snapshot; a killed one leaves none, unless the kill landed after its
    // commit point (the manifest written, the process not yet gone): then the snapshot
    // is complete. Either way every listed snapshot verifies.
    let mut committed = 0;
    let mut killed_before_commit = 0;
    for delay in [150u64, 400, 900] {
        let mut child = bed
            .haven(&["backup", "image", raw.to_str().unwrap(), "--vm", "vm"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let finished = child.wait().unwrap().success();
        let listed = bed.json(&["snapshots"]).as_array().unwrap().len();
        if finished {
            assert_eq!(listed, committed + 1, "a finished backup left no snapshot");
        } else if listed == committed {
            killed_before_commit += 1;
        } else {
            assert_eq!(listed, committed + 1, "one backup left several snapshots");
        }
        committed = listed;
        bed.ok(&["verify"]);
    }
    assert!(
        killed_before_commit > 0,
        "no kill landed before a commit: the backups are too fast for these delays"
    );
    let chunks_before = bed.chunk_files().len() as u64;
    let report = bed.backup("vm", &[&raw]);
    let found = disk_stat(&report, "existing_chunks") + disk_stat(&report, "reused_chunks");
    assert_eq!(
        found, chunks_before,
        "chunks from earlier runs were not reused"
    );
    assert_eq!(disk_stat(&report, "new_chunks"), 512 - chunks_before);
    bed.ok(&["verify"]);
    let out = bed.path("out.raw");
    bed.ok(&["restore", "vm@latest", "--to", out.to_str().unwrap()]);
    assert_same_disk(&raw, &out);
}
