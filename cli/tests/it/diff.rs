//! `haven diff` between two snapshots of a VM with two disks: an ext4 file system
//! changed in place between the backups with `debugfs -w` (no mount, so the layout
//! stays and only the touched blocks change) and a raw disk changed at one known
//! offset. The ranges come from the indexes; the files from both trees.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::support::{
    bed::Bed,
    image::{MIB, ext4_image, noise, write_at},
    report::disk,
};

/// Runs `debugfs -w` with `commands` (one per line) on the ext4 image `image`, from
/// the folder `cwd` (where `write` finds its local files).
fn debugfs(image: &Path, cwd: &Path, commands: &str) {
    let script = cwd.join("debugfs.cmds");
    std::fs::write(&script, commands).unwrap();
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&script)
        .arg(image)
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(out.status.success(), "debugfs: {out:?}");
}

/// The changes of the one file system of disk `name` in a `diff --json` report.
fn file_changes(report: &Value, name: &str) -> Vec<Value> {
    let disk = disk(report, name);
    let systems = disk["file_systems"].as_array().unwrap();
    assert_eq!(systems.len(), 1, "{disk:#}");
    assert_eq!(systems[0]["filesystem"], "ext", "{disk:#}");
    systems[0]["changes"].as_array().unwrap().clone()
}

#[test]
fn diff_names_changed_ranges_and_files_between_two_snapshots() {
    let bed = Bed::initialised();
    let tree = bed.path("tree");
    for (path, data) in [
        ("etc/hosts", b"127.0.0.1 localhost\n".to_vec()),
        ("etc/shadow", b"root:*:19000::::::\n".to_vec()),
        ("home/alice/notes.txt", noise(1, 5000)),
        ("var/log/app.log", noise(2, 70_000)),
    ] {
        let file = tree.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, data).unwrap();
    }
    let root = bed.path("root.img");
    ext4_image(&tree, &root, "32M");
    let data = bed.raw_image("data.raw", 8 * MIB, &[(0, MIB as usize)]);
    let first = bed.backup("web", &[&root, &data])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    std::thread::sleep(Duration::from_secs(1)); // distinct snapshot timestamps

    // Between the backups: a file removed, one added, one rewritten at the same size
    // with a new time, one only touched; and 7 bytes of the raw disk at 5 MiB + 100.
    let work = bed.path("work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("new.txt"), b"new\n").unwrap();
    std::fs::write(work.join("notes.txt"), noise(3, 5000)).unwrap();
    debugfs(
        &root,
        &work,
        "rm /etc/shadow\n\
         write new.txt /new.txt\n\
         rm /home/alice/notes.txt\n\
         write notes.txt /home/alice/notes.txt\n\
         set_inode_field /home/alice/notes.txt mtime 20240101000000\n\
         set_inode_field /etc/hosts mtime 20240101000000\n",
    );
    write_at(&data, 5 * MIB + 100, b"changed");
    bed.backup("web", &[&root, &data]);

    let report = bed.json(&["diff", &first, "web@latest"]);
    assert_eq!(report["from"], first.as_str());
    let disks = report["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 2, "{report:#}");

    // The raw disk: exactly the one 1 MiB chunk written to, and no file system.
    let vdb = &disks[1];
    assert_eq!(vdb["name"], "vdb");
    assert_eq!(vdb["status"], "changed");
    assert_eq!(
        vdb["ranges"],
        serde_json::json!([{ "offset": 5 * MIB, "length": MIB }]),
        "{vdb:#}"
    );
    assert!(vdb["files_not_compared"].is_string(), "{vdb:#}");

    // The ext4 disk: a few changed chunks of 32, and the four changed files.
    let vda = &disks[0];
    assert_eq!(vda["status"], "changed");
    let changed = vda["changed_bytes"].as_u64().unwrap();
    assert!(changed > 0 && changed <= 8 * MIB, "{vda:#}");
    let changes = file_changes(&report, "vda");
    let summary: Vec<(&str, &str)> = changes
        .iter()
        .map(|c| (c["path"].as_str().unwrap(), c["change"].as_str().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [
            ("/etc/hosts", "modified"),
            ("/etc/shadow", "removed"),
            ("/home/alice/notes.txt", "modified"),
            ("/new.txt", "added"),
        ],
        "{changes:#?}"
    );
    // Touched: only the time differs and the bytes are read and found equal.
    assert_eq!(changes[0]["differs"], serde_json::json!(["mtime"]));
    assert_eq!(changes[0]["content"], "same");
    // Rewritten at the same size: the bytes differ.
    assert!(
        changes[2]["differs"]
            .as_array()
            .unwrap()
            .contains(&"mtime".into()),
        "{:#}",
        changes[2]
    );
    assert_eq!(changes[2]["content"], "changed");

    // The same for people.
    let text = bed.ok(&["diff", &first, "web"]);
    for line in [
        "disk vdb: 1.0 MiB in 1 range(s) changed",
        "- /etc/shadow",
        "+ /new.txt",
        "M /etc/hosts (mtime; content same)",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }

    // A snapshot against itself: nothing changed, nothing read.
    let same = bed.json(&["diff", &first, &first]);
    for disk in same["disks"].as_array().unwrap() {
        assert_eq!(disk["status"], "unchanged", "{same:#}");
        assert_eq!(disk["ranges"], serde_json::json!([]));
    }
    // Two VMs are not two snapshots of one.
    let output = bed.haven(&["diff", &first, "db@latest"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
}
