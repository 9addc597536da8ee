//! The storage node over several data directories (`data_dirs`): objects
//! spread over both, survive a restart, list as one bucket in key order,
//! and `kill -9` during concurrent PUTs leaves nothing partial in either.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::{
    s3::{ACCESS_KEY, SECRET_KEY},
    storage_node::{
        Node, NodeOptions, object_files_in, pattern, put_until_killed, verify_after_crash,
    },
    tree::files_below,
};

fn two_dirs() -> Node {
    Node::start_with(NodeOptions {
        data_dirs: 2,
        ..NodeOptions::default()
    })
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

/// Keys of the written tree, relative, in S3 key order.
fn tree_keys() -> Vec<String> {
    let mut keys = Vec::new();
    for i in 0..150 {
        keys.push(format!("chunks/{:02x}/chunk-{i:04}", i % 16));
    }
    for i in 0..30 {
        keys.push(format!("index/{i:03}"));
    }
    keys.push("manifest".to_owned());
    keys.sort();
    keys
}

#[test]
fn objects_spread_over_two_directories_survive_restart_and_list_in_order() {
    let mut node = two_dirs();
    node.aws_ok(&["s3", "mb", "s3://spread"]);
    let source = node.path("source");
    let keys = tree_keys();
    for (i, key) in keys.iter().enumerate() {
        let path = source.join(key);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, pattern(1000 + i * 37, i as u64)).expect("write");
    }
    let big = pattern(12_000_000, 99);
    std::fs::write(node.path("big"), &big).expect("write");
    node.aws_ok(&["s3", "sync", path_str(&source), "s3://spread/"]);
    // 12 MB goes multipart: parts in one directory, the object maybe another.
    node.aws_ok(&[
        "s3",
        "cp",
        path_str(&node.path("big")),
        "s3://spread/zz/big",
    ]);

    let in_first = object_files_in(&node.data_n(0)).len();
    let in_second = object_files_in(&node.data_n(1)).len();
    assert_eq!(in_first + in_second, keys.len() + 1);
    assert!(
        in_first > 40 && in_second > 40,
        "objects are not spread: {in_first} and {in_second}"
    );
    // Bucket settings live in the first directory only.
    assert!(node.data_n(0).join("buckets/spread/bucket.json").is_file());
    assert!(!node.data_n(1).join("buckets/spread/bucket.json").exists());

    // Disk usage is reported per directory.
    let metrics = node.metrics();
    for index in 0..2 {
        let dir = node.data_n(index);
        let line = format!("haven_storage_disk_used_bytes{{dir=\"{}\"}}", dir.display());
        assert!(metrics.contains(&line), "missing {line} in {metrics}");
    }

    node.restart();

    // Everything reads back.
    let back = node.path("back");
    node.aws_ok(&["s3", "sync", "s3://spread/", path_str(&back)]);
    for (i, key) in keys.iter().enumerate() {
        let data = std::fs::read(back.join(key)).expect("downloaded");
        assert_eq!(data, pattern(1000 + i * 37, i as u64), "{key}");
    }
    assert_eq!(std::fs::read(back.join("zz/big")).expect("big"), big);

    // One listing in key order, paged in small pages across both directories.
    let listed = node.aws_ok(&[
        "s3api",
        "list-objects-v2",
        "--bucket",
        "spread",
        "--page-size",
        "7",
        "--query",
        "Contents[].Key",
        "--output",
        "text",
    ]);
    let listed: Vec<&str> = listed.split_whitespace().collect();
    let mut expected: Vec<&str> = keys.iter().map(String::as_str).collect();
    expected.push("zz/big");
    assert_eq!(listed, expected);
    // Common prefixes found in both directories are listed once.
    let top = node.aws_ok(&[
        "s3api",
        "list-objects-v2",
        "--bucket",
        "spread",
        "--delimiter",
        "/",
        "--prefix",
        "chunks/",
        "--query",
        "CommonPrefixes[].Prefix",
        "--output",
        "text",
    ]);
    let prefixes: Vec<&str> = top.split_whitespace().collect();
    let expected: Vec<String> = (0..16).map(|i| format!("chunks/{i:02x}/")).collect();
    assert_eq!(prefixes, expected);

    // A bucket with objects is not empty; once emptied it goes away from
    // both directories.
    let refused = node.aws(&["s3", "rb", "s3://spread"]);
    assert!(!refused.status.success(), "non-empty bucket removed");
    node.aws_ok(&["s3", "rm", "--recursive", "s3://spread/"]);
    node.aws_ok(&["s3", "rb", "s3://spread"]);
    assert!(!node.data_n(0).join("buckets/spread").exists());
    assert!(!node.data_n(1).join("buckets/spread").exists());
}

#[test]
fn directories_cannot_be_reordered_or_added() {
    let mut node = two_dirs();
    node.aws_ok(&["s3", "mb", "s3://fixed"]);
    node.kill9();
    let first = node.data_n(0);
    let second = node.data_n(1);
    let start = |data: &str| {
        let config = node.path("other.toml");
        let text = format!(
            "listen = \"127.0.0.1:0\"\n{data}\n[[keys]]\naccess_key = \"{ACCESS_KEY}\"\nsecret_key = \"{SECRET_KEY}\"\n"
        );
        std::fs::write(&config, text).expect("write config");
        Command::new(env!("CARGO_BIN_EXE_haven"))
            .args(["storage-node", "--config"])
            .arg(&config)
            .env("HAVEN_LOG", "warn")
            .stdin(Stdio::null())
            .output()
            .expect("run haven")
    };
    let swapped = start(&format!(
        "data_dirs = [\"{}\", \"{}\"]",
        second.display(),
        first.display()
    ));
    assert!(
        !swapped.status.success(),
        "started with swapped directories"
    );
    let stderr = String::from_utf8_lossy(&swapped.stderr);
    assert!(stderr.contains("cannot be reordered"), "{stderr}");
    let third = node.path("data-2");
    let grown = start(&format!(
        "data_dirs = [\"{}\", \"{}\", \"{}\"]",
        first.display(),
        second.display(),
        third.display()
    ));
    assert!(!grown.status.success(), "started with an added directory");
    let single = start(&format!("data_dir = \"{}\"", first.display()));
    assert!(!single.status.success(), "started with a removed directory");
}

fn tmp_files(node: &Node) -> Vec<std::path::PathBuf> {
    (0..2)
        .flat_map(|index| files_below(&node.data_n(index).join("tmp")))
        .collect()
}

#[test]
fn kill_9_during_concurrent_puts_leaves_nothing_partial_in_any_directory() {
    let mut node = two_dirs();
    let acked = put_until_killed(&mut node);

    node.restart();
    assert_eq!(tmp_files(&node), Vec::<std::path::PathBuf>::new());
    assert!(!object_files_in(&node.data_n(0)).is_empty());
    assert!(!object_files_in(&node.data_n(1)).is_empty());
    verify_after_crash(&node, &acked);
}
