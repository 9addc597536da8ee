//! `haven files` against real file systems built without mounting (`mkfs.ext4 -d`,
//! mtools, sgdisk), backed up and read straight from the repository's chunks; NTFS in `ntfs`.

mod ntfs;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::{
    bed::Bed,
    image::{MIB, blank_image, ext4_image, gpt_disk, noise, write_at},
    process::{run, stderr_within},
    tree::set_mtime,
};

/// A source tree with files of several sizes, modes, owners, times, symlinks and depth.
fn source_tree(root: &Path) {
    let file = |path: &str, data: &[u8], mode: u32, owner: (u32, u32), mtime: i64| {
        let full = root.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(&full, data).unwrap();
        std::fs::set_permissions(&full, std::fs::Permissions::from_mode(mode)).unwrap();
        std::os::unix::fs::chown(&full, Some(owner.0), Some(owner.1)).unwrap();
        set_mtime(&full, mtime);
    };
    file(
        "etc/hosts",
        b"127.0.0.1 localhost\n",
        0o644,
        (0, 0),
        1_600_000_000,
    );
    file(
        "etc/shadow",
        b"root:*:19000::::::\n",
        0o640,
        (0, 42),
        1_600_000_100,
    );
    file(
        "home/alice/notes.txt",
        &noise(1, 5000),
        0o600,
        (1000, 1000),
        1_650_000_000,
    );
    file(
        "home/alice/photo.bin",
        &noise(2, 3 * MIB as usize + 17),
        0o644,
        (1000, 1000),
        1_650_000_500,
    );
    file("var/log/empty.log", b"", 0o644, (0, 4), 1_700_000_000);
    file(
        "deep/a/b/c/d/e/f/leaf.txt",
        b"leaf\n",
        0o755,
        (7, 8),
        1_700_000_001,
    );
    file(
        "data/large.bin",
        &noise(3, 20 * MIB as usize),
        0o644,
        (0, 0),
        1_700_000_002,
    );
    std::os::unix::fs::symlink("../etc/hosts", root.join("home/hosts-link")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).unwrap();
    for dir in ["etc", "home", "home/alice", "deep/a/b"] {
        set_mtime(&root.join(dir), 1_500_000_000);
    }
}

#[derive(Debug, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    size: u64,
    target: Option<String>,
}

/// Walks a local tree as (relative path → kind, size, symlink target).
fn local_tree(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for item in std::fs::read_dir(&dir).unwrap() {
            let path = item.unwrap().path();
            let relative = format!("/{}", path.strip_prefix(root).unwrap().display());
            let metadata = std::fs::symlink_metadata(&path).unwrap();
            let node = if metadata.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap().display().to_string();
                Node {
                    kind: "symlink",
                    size: target.len() as u64,
                    target: Some(target),
                }
            } else if metadata.is_dir() {
                stack.push(path.clone());
                Node {
                    kind: "dir",
                    size: 0,
                    target: None,
                }
            } else {
                Node {
                    kind: "file",
                    size: metadata.len(),
                    target: None,
                }
            };
            out.insert(relative, node);
        }
    }
    out
}

/// Lists a snapshot's tree through `haven files ls --json`, recursively.
fn snapshot_tree(bed: &Bed, spec: &str, extra: &[&str]) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec!["/".to_string()];
    while let Some(dir) = stack.pop() {
        let target = format!("{spec}:{dir}");
        let mut args = vec!["files", "ls", &target];
        args.extend_from_slice(extra);
        let listing = bed.json(&args);
        for entry in listing["entries"].as_array().unwrap() {
            let path = entry["path"].as_str().unwrap().to_string();
            if path == "/lost+found" {
                continue;
            }
            let kind = match entry["kind"].as_str().unwrap() {
                "dir" => "dir",
                "file" => "file",
                "symlink" => "symlink",
                other => panic!("unexpected kind {other}"),
            };
            if kind == "dir" {
                stack.push(path.clone());
            }
            let size = if kind == "dir" {
                0
            } else {
                entry["size"].as_u64().unwrap()
            };
            let target = entry["target"].as_str().map(str::to_string);
            out.insert(path, Node { kind, size, target });
        }
    }
    out
}

fn fat_image(source: &Path, image: &Path, size: u64) {
    blank_image(image, size);
    run("mformat", &["-i", image.to_str().unwrap(), "-F", "::"]);
    let mut args = vec![
        "-i".to_string(),
        image.display().to_string(),
        "-s".into(),
        "-p".into(),
        "-m".into(),
    ];
    for item in std::fs::read_dir(source).unwrap() {
        args.push(item.unwrap().path().display().to_string());
    }
    args.push("::/".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run("mcopy", &args);
}

/// Copies `fs` into `disk` at byte `offset`.
fn place(disk: &Path, fs: &Path, offset: u64) {
    write_at(disk, offset, &std::fs::read(fs).unwrap());
}

fn assert_same_metadata(source: &Path, restored: &Path) {
    for (relative, node) in local_tree(source) {
        let original = source.join(relative.trim_start_matches('/'));
        let copy = restored.join(relative.trim_start_matches('/'));
        let a = std::fs::symlink_metadata(&original).unwrap();
        let b = std::fs::symlink_metadata(&copy)
            .unwrap_or_else(|error| panic!("{relative} not restored: {error}"));
        assert_eq!(a.file_type(), b.file_type(), "{relative}");
        assert_eq!((a.uid(), a.gid()), (b.uid(), b.gid()), "{relative} owner");
        assert_eq!(a.mtime(), b.mtime(), "{relative} mtime");
        match node.kind {
            "file" => {
                assert_eq!(a.mode() & 0o7777, b.mode() & 0o7777, "{relative} mode");
                assert!(
                    std::fs::read(&original).unwrap() == std::fs::read(&copy).unwrap(),
                    "{relative} bytes"
                );
            }
            "dir" => assert_eq!(a.mode() & 0o7777, b.mode() & 0o7777, "{relative} mode"),
            _ => assert_eq!(
                std::fs::read_link(&original).unwrap(),
                std::fs::read_link(&copy).unwrap()
            ),
        }
    }
}

#[test]
fn ext4_tree_is_listed_and_restored_exactly_fetching_few_chunks() {
    let bed = Bed::initialised();
    let source = bed.path("source");
    source_tree(&source);
    let image = bed.path("ext4.img");
    ext4_image(&source, &image, "96M");
    bed.backup("ext", &[&image]);

    assert_eq!(snapshot_tree(&bed, "ext@latest", &[]), local_tree(&source));

    // One small file: its bytes, metadata, and only a few chunks of the disk.
    let out = bed.path("notes.txt");
    let report = bed.json(&[
        "files",
        "get",
        "ext@latest:/home/alice/notes.txt",
        "--to",
        out.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&out).unwrap(), noise(1, 5000));
    // Without --same-owner the file is the restorer's, not the guest's uid 1000.
    let metadata = std::fs::metadata(&out).unwrap();
    assert_eq!(
        (metadata.mode() & 0o7777, metadata.uid(), metadata.gid()),
        (0o600, restorer().0, restorer().1)
    );
    assert_eq!(metadata.mtime(), 1_650_000_000);
    let fetched = report["stats"]["chunks_fetched"].as_u64().unwrap();
    let data = report["stats"]["data_chunks"].as_u64().unwrap();
    let total = report["stats"]["total_chunks"].as_u64().unwrap();
    eprintln!(
        "files get of one 5000-byte file fetched {fetched} of {data} data chunks ({total} slots)"
    );
    assert!(data >= 20, "the disk holds {data} data chunks");
    assert!(fetched * 4 <= data, "fetched {fetched} of {data} chunks");

    // The whole tree, with modes, owners, times and symlinks.
    let restored = bed.path("restored");
    std::fs::create_dir(&restored).unwrap();
    let report = bed.json(&[
        "files",
        "get",
        "ext@latest:/",
        "--to",
        restored.to_str().unwrap(),
        "--same-owner",
    ]);
    assert_eq!(report["files"].as_u64(), Some(7), "{report}");
    assert_eq!(report["symlinks"].as_u64(), Some(2), "{report}");
    assert_same_metadata(&source, &restored.join("root"));

    // A directory into a new path, find, and clear errors.
    let home = bed.path("home-copy");
    bed.ok(&["files", "get", "ext:/home", "--to", home.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_link(home.join("hosts-link")).unwrap(),
        Path::new("../etc/hosts")
    );
    let found = bed.json(&["files", "find", "ext@latest", "--name", "*.txt"]);
    let paths: Vec<&str> = found["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        vec!["/deep/a/b/c/d/e/f/leaf.txt", "/home/alice/notes.txt"]
    );
    let error = bed.fails(&["files", "ls", "ext:/no/such"]);
    assert!(error.contains("no such file"), "{error}");
    let error = bed.fails(&[
        "files",
        "get",
        "ext:/etc/hosts",
        "--to",
        out.to_str().unwrap(),
    ]);
    assert!(error.contains("exists"), "{error}");
}

/// The uid and gid files restored without `--same-owner` get: this process's.
fn restorer() -> (u32, u32) {
    // SAFETY: geteuid and getegid have no preconditions and cannot fail.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

#[test]
fn files_get_never_restores_setuid_setgid_or_sticky_bits() {
    let bed = Bed::initialised();
    let source = bed.path("source");
    let special = [
        ("bin/rootshell", 0o4755),
        ("bin/groupshell", 0o2755),
        ("bin/both", 0o6711),
        ("shared", 0o1777),
        ("bin", 0o2755),
    ];
    std::fs::create_dir_all(source.join("shared")).unwrap();
    std::fs::create_dir_all(source.join("bin")).unwrap();
    for (name, _) in &special[..3] {
        std::fs::write(source.join(name), b"#!/bin/sh\nexec /bin/sh\n").unwrap();
    }
    for (name, mode) in special {
        // chown first: it clears the setuid and setgid bits.
        let path = source.join(name);
        std::os::unix::fs::chown(&path, Some(0), Some(0)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let image = bed.path("suid.img");
    ext4_image(&source, &image, "8M");
    // Owned by a guest user, so --same-owner has something to restore.
    debugfs(&image, "sif /bin/groupshell uid 1000");
    bed.backup("suid", &[&image]);

    // The guest really holds the bits: the listing shows them.
    let listing = bed.json(&["files", "ls", "suid:/bin/rootshell"]);
    assert_eq!(
        listing["entries"][0]["mode"].as_u64(),
        Some(0o4755),
        "{listing}"
    );

    for (name, same_owner) in [("plain", false), ("same-owner", true)] {
        let into = bed.path(name);
        std::fs::create_dir(&into).unwrap();
        let mut args = vec!["files", "get", "suid:/", "--to", into.to_str().unwrap()];
        if same_owner {
            args.push("--same-owner");
        }
        bed.ok(&args);
        for (path, mode) in special {
            let restored = into.join("root").join(path);
            let metadata = std::fs::metadata(&restored).unwrap();
            assert_eq!(
                metadata.mode() & 0o7777,
                mode & 0o777,
                "{name}: {path} keeps only its permission bits"
            );
        }
        let owner = std::fs::metadata(into.join("root/bin/groupshell"))
            .unwrap()
            .uid();
        let expected = if same_owner { 1000 } else { restorer().0 };
        assert_eq!(owner, expected, "{name}: owner of bin/groupshell");
    }
}

#[test]
fn gpt_and_mbr_disks_with_ext4_and_fat_partitions() {
    let bed = Bed::initialised();
    let source = bed.path("source");
    source_tree(&source);
    let fat_source = bed.path("fat-source");
    std::fs::create_dir_all(fat_source.join("EFI/BOOT")).unwrap();
    std::fs::write(fat_source.join("EFI/BOOT/bootx64.efi"), noise(9, 300_000)).unwrap();
    std::fs::write(fat_source.join("readme.txt"), b"fat partition\n").unwrap();
    set_mtime(&fat_source.join("readme.txt"), 1_600_000_000);

    let ext4 = bed.path("part1.img");
    ext4_image(&source, &ext4, "40M");
    let fat = bed.path("part2.img");
    fat_image(&fat_source, &fat, 40 * MIB);

    let disk = bed.path("gpt.img");
    gpt_disk(
        &disk,
        96 * MIB,
        &[
            (2048, 40, "8300", Some(&ext4)),
            (83968, 40, "ef00", Some(&fat)),
        ],
    );
    bed.backup("gpt", &[&disk]);

    let error = bed.fails(&["files", "ls", "gpt:/"]);
    assert!(error.contains("choose one with --partition"), "{error}");
    assert_eq!(
        snapshot_tree(&bed, "gpt@latest", &["--partition", "1"]),
        local_tree(&source)
    );
    assert_eq!(
        snapshot_tree(&bed, "gpt@latest", &["--partition", "2"]),
        local_tree(&fat_source)
    );
    let out = bed.path("boot.efi");
    bed.ok(&[
        "files",
        "get",
        "gpt:/EFI/BOOT/bootx64.efi",
        "--partition",
        "2",
        "--to",
        out.to_str().unwrap(),
    ]);
    assert!(std::fs::read(&out).unwrap() == noise(9, 300_000));
    let readme = bed.path("readme.txt");
    bed.ok(&[
        "files",
        "get",
        "gpt:/readme.txt",
        "--partition",
        "2",
        "--to",
        readme.to_str().unwrap(),
    ]);
    let mtime = std::fs::metadata(&readme).unwrap().mtime();
    assert!((mtime - 1_600_000_000).abs() <= 2, "fat mtime {mtime}");

    // An MBR disk with one ext4 partition at 1 MiB.
    let mbr = bed.path("mbr.img");
    blank_image(&mbr, 48 * MIB);
    place(&mbr, &ext4, MIB);
    let mut entry = [0u8; 16];
    entry[4] = 0x83;
    entry[8..12].copy_from_slice(&2048u32.to_le_bytes());
    entry[12..16].copy_from_slice(&((40 * MIB / 512) as u32).to_le_bytes());
    write_at(&mbr, 446, &entry);
    write_at(&mbr, 510, &[0x55, 0xAA]);
    bed.backup("mbr", &[&mbr]);
    let listing = bed.json(&["files", "ls", "mbr:/etc"]);
    assert_eq!(listing["partition"].as_u64(), Some(1));
    assert_eq!(listing["entries"].as_array().unwrap().len(), 2);
}

/// Runs `haven` with a deadline; returns (success, stderr).
fn bounded(bed: &Bed, args: &[&str]) -> (bool, String) {
    let (status, stderr) = stderr_within(&mut bed.haven(args), Duration::from_secs(20));
    assert!(
        status.code().is_some(),
        "haven {args:?} died by a signal: {stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "haven {args:?} panicked: {stderr}"
    );
    (status.success(), stderr)
}

fn debugfs(image: &Path, request: &str) {
    run("debugfs", &["-w", "-R", request, image.to_str().unwrap()]);
}

#[test]
fn hostile_structures_give_clear_errors_without_panic_or_hang() {
    let bed = Bed::initialised();
    let source = bed.path("source");
    std::fs::create_dir_all(source.join("a/b")).unwrap();
    std::fs::write(source.join("a/file"), b"data").unwrap();
    std::fs::write(source.join("huge"), b"small").unwrap();
    let clean = bed.path("clean.img");
    ext4_image(&source, &clean, "8M");

    // A directory loop (b/loop is a hard link to a) and a file claiming 2^46 bytes.
    let looped = bed.path("loop.img");
    std::fs::copy(&clean, &looped).unwrap();
    debugfs(&looped, "link /a /a/b/loop");
    bed.backup("loop", &[&looped]);
    let huge = bed.path("huge.img");
    std::fs::copy(&clean, &huge).unwrap();
    debugfs(&huge, "sif /huge size 0x400000000000");
    bed.backup("huge", &[&huge]);
    let (ok, error) = bounded(&bed, &["files", "find", "loop", "--name", "nothing"]);
    assert!(!ok && error.contains("nested deeper"), "{error}");
    let into = bed.path("into");
    std::fs::create_dir(&into).unwrap();
    let (ok, error) = bounded(
        &bed,
        &["files", "get", "loop:/a", "--to", into.to_str().unwrap()],
    );
    assert!(!ok && error.contains("nested deeper"), "{error}");
    let (ok, error) = bounded(
        &bed,
        &[
            "files",
            "get",
            "huge:/huge",
            "--to",
            bed.path("huge").to_str().unwrap(),
        ],
    );
    // ext4-view refuses such an inode itself.
    assert!(
        !ok && error.contains("/huge") && error.contains("corrupt"),
        "{error}"
    );
    // FAT has no such check in its driver: Haven's own bound refuses the size.
    let fat_source = bed.path("fat-source");
    std::fs::create_dir(&fat_source).unwrap();
    std::fs::write(fat_source.join("readme.txt"), b"short").unwrap();
    let fat = bed.path("fat.img");
    fat_image(&fat_source, &fat, 40 * MIB);
    let bytes = std::fs::read(&fat).unwrap();
    let at = bytes
        .windows(11)
        .position(|window| window == b"README  TXT")
        .expect("short name entry");
    write_at(&fat, at as u64 + 28, &u32::MAX.to_le_bytes());
    bed.backup("fathuge", &[&fat]);
    let (ok, error) = bounded(
        &bed,
        &[
            "files",
            "get",
            "fathuge:/readme.txt",
            "--to",
            bed.path("readme").to_str().unwrap(),
        ],
    );
    assert!(
        !ok && error.contains("more than its whole file system"),
        "{error}"
    );

    // Fuzzed superblocks (the magic kept so the ext4 driver is the one to judge).
    let mut failures = 0;
    for seed in 0..12u64 {
        let fuzzed = bed.path(&format!("fuzz{seed}.img"));
        std::fs::copy(&clean, &fuzzed).unwrap();
        let mut superblock = std::fs::read(&clean).unwrap()[1024..2048].to_vec();
        let bits = noise(seed + 100, 64);
        for pair in bits.chunks(2) {
            let at = (usize::from(pair[0]) * 4 + usize::from(pair[1] % 4)) % 1024;
            if !(56..58).contains(&at) {
                superblock[at] ^= pair[1] | 1;
            }
        }
        write_at(&fuzzed, 1024, &superblock);
        let vm = format!("fuzz{seed}");
        bed.backup(&vm, &[&fuzzed]);
        let target = format!("{vm}:/a");
        let (ok, error) = bounded(&bed, &["files", "ls", &target]);
        if !ok {
            failures += 1;
            assert!(
                error.starts_with("error: ") && error.trim_end().lines().count() == 1,
                "{error}"
            );
        }
    }
    assert!(
        failures >= 6,
        "only {failures} of 12 fuzzed superblocks were refused"
    );

    // A GPT header with an absurd entry count.
    let disk = bed.path("gpt.img");
    gpt_disk(&disk, 16 * MIB, &[(2048, 8, "8300", None)]);
    write_at(&disk, 512 + 80, &u32::MAX.to_le_bytes());
    bed.backup("badgpt", &[&disk]);
    let (ok, error) = bounded(&bed, &["files", "ls", "badgpt:/"]);
    assert!(!ok && error.contains("GPT header claims"), "{error}");

    // Unsupported file systems are named.
    let raw = bed.path("xfs-like.img");
    blank_image(&raw, 4 * MIB);
    write_at(&raw, 0, b"XFSB");
    bed.backup("xfs", &[&raw]);
    let (ok, error) = bounded(&bed, &["files", "ls", "xfs:/"]);
    assert!(!ok && error.contains("XFS"), "{error}");
    let _: PathBuf = into;
}
