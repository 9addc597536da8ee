//! `haven files` on NTFS images built without mounting (`mkntfs` + `ntfscp` from the
//! ntfs-3g that `scripts/install-files-deps.sh` unpacks), bare and inside a GPT disk.
//! ntfscp writes into the root directory only; trees with directories are written
//! through ntfs-3g's own FUSE mount (`/dev/fuse`), then unmounted before the backup.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{
    bed::Bed,
    image::{MIB, blank_image, gpt_disk, noise, write_at},
    process::{run, stderr_within},
    tree::set_mtime,
};

/// Folder holding the unpacked ntfs-3g (`sbin/mkntfs`, `sbin/ntfscp`, `lib/…`).
fn ntfs3g_dir() -> PathBuf {
    let dir = PathBuf::from(
        std::env::var("HAVEN_NTFS3G_DIR").unwrap_or_else(|_| "/opt/haven/ntfs-3g".into()),
    );
    assert!(
        dir.join("sbin/mkntfs").exists() && dir.join("sbin/ntfscp").exists(),
        "mkntfs/ntfscp missing under {}: run scripts/install-files-deps.sh",
        dir.display()
    );
    dir
}

fn ntfs_tool(tool: &str, args: &[&str]) {
    let dir = ntfs3g_dir();
    let output = Command::new(dir.join("sbin").join(tool))
        .args(args)
        .env("LD_LIBRARY_PATH", dir.join("lib/x86_64-linux-gnu"))
        .output()
        .unwrap_or_else(|error| panic!("cannot run {tool}: {error}"));
    assert!(
        output.status.success(),
        "{tool} {args:?}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Files put into the volume: a resident one (its data lives in the MFT record), an
/// empty one, and non-resident ones of several sizes.
fn files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("tiny.txt", b"resident data\n".to_vec()),
        ("empty.log", Vec::new()),
        ("notes.txt", noise(1, 5000)),
        ("Mixed Case Name.bin", noise(2, 70_000)),
        ("photo.bin", noise(3, 3 * MIB as usize + 17)),
    ]
}

/// An empty NTFS file system of `size` bytes in the file `image`.
fn blank_ntfs(image: &Path, size: u64) {
    blank_image(image, size);
    ntfs_tool("mkntfs", &["-q", "-F", "-f", image.to_str().unwrap()]);
}

/// An NTFS file system of `size` bytes holding `files()`, all with mtime 1_650_000_000.
fn ntfs_image(bed: &Bed, image: &Path, size: u64) {
    blank_ntfs(image, size);
    let image_arg = image.display().to_string();
    let staging = bed.path("staging");
    std::fs::create_dir_all(&staging).unwrap();
    for (name, data) in files() {
        let local = staging.join(name);
        std::fs::write(&local, &data).unwrap();
        set_mtime(&local, 1_650_000_000);
        ntfs_tool(
            "ntfscp",
            &["-q", "-t", &image_arg, local.to_str().unwrap(), name],
        );
    }
}

/// (name → (kind, size)) of `spec:/` through `haven files ls --json`.
fn listing(bed: &Bed, spec: &str, extra: &[&str]) -> BTreeMap<String, (String, u64)> {
    let target = format!("{spec}:/");
    let mut args = vec!["files", "ls", &target];
    args.extend_from_slice(extra);
    let listing = bed.json(&args);
    listing["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                entry["name"].as_str().unwrap().to_string(),
                (
                    entry["kind"].as_str().unwrap().to_string(),
                    entry["size"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}

fn expected_listing() -> BTreeMap<String, (String, u64)> {
    files()
        .into_iter()
        .map(|(name, data)| (name.to_string(), ("file".to_string(), data.len() as u64)))
        .collect()
}

#[test]
fn ntfs_files_are_listed_and_restored_fetching_few_chunks() {
    let bed = Bed::initialised();
    let image = bed.path("ntfs.img");
    ntfs_image(&bed, &image, 96 * MIB);
    bed.backup("win", &[&image]);

    // Exactly the files put in, system files ($MFT, …) hidden.
    assert_eq!(listing(&bed, "win@latest", &[]), expected_listing());

    // Every file's bytes and mtime, resident and non-resident alike.
    for (name, data) in files() {
        let out = bed.path(&format!("out-{name}"));
        let report = bed.json(&[
            "files",
            "get",
            &format!("win@latest:/{name}"),
            "--to",
            out.to_str().unwrap(),
        ]);
        assert!(std::fs::read(&out).unwrap() == data, "{name} bytes");
        assert_eq!(
            std::fs::metadata(&out).unwrap().mtime(),
            1_650_000_000,
            "{name} mtime"
        );
        if name == "notes.txt" {
            let fetched = report["stats"]["chunks_fetched"].as_u64().unwrap();
            let data = report["stats"]["data_chunks"].as_u64().unwrap();
            let total = report["stats"]["total_chunks"].as_u64().unwrap();
            eprintln!(
                "ntfs: files get of one 5000-byte file fetched {fetched} of {data} data chunks ({total} slots)"
            );
            assert!(fetched * 2 <= data, "fetched {fetched} of {data} chunks");
        }
    }

    // Names are found case-insensitively (as Windows does) and stat'ed with their case.
    let stat = bed.json(&["files", "ls", "win:/mixed case name.BIN"]);
    assert_eq!(
        stat["entries"][0]["name"].as_str(),
        Some("Mixed Case Name.bin"),
        "{stat}"
    );

    // The root directory as a whole, find, and clear errors.
    let restored = bed.path("restored");
    std::fs::create_dir(&restored).unwrap();
    let report = bed.json(&["files", "get", "win:/", "--to", restored.to_str().unwrap()]);
    assert_eq!(report["files"].as_u64(), Some(5), "{report}");
    for (name, data) in files() {
        let path = restored.join("root").join(name);
        assert!(std::fs::read(&path).unwrap() == data, "{name} in tree");
    }
    let found = bed.json(&["files", "find", "win", "--name", "*.txt"]);
    let paths: Vec<&str> = found["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, vec!["/notes.txt", "/tiny.txt"]);
    let error = bed.fails(&["files", "ls", "win:/no/such"]);
    assert!(error.contains("no such file"), "{error}");
    let error = bed.fails(&["files", "ls", "win:/$MFT"]);
    assert!(error.contains("no such file"), "{error}");
}

#[test]
fn ntfs_partition_of_a_gpt_disk_and_corrupt_structures() {
    let bed = Bed::initialised();
    let ntfs = bed.path("part.img");
    ntfs_image(&bed, &ntfs, 40 * MIB);
    let disk = bed.path("gpt.img");
    gpt_disk(&disk, 48 * MIB, &[(2048, 40, "0700", Some(&ntfs))]);
    bed.backup("gptwin", &[&disk]);
    // One partition: found without --partition.
    assert_eq!(listing(&bed, "gptwin@latest", &[]), expected_listing());
    let out = bed.path("photo.bin");
    bed.ok(&[
        "files",
        "get",
        "gptwin:/photo.bin",
        "--to",
        out.to_str().unwrap(),
    ]);
    assert!(std::fs::read(&out).unwrap() == noise(3, 3 * MIB as usize + 17));

    // Damaged copies: the MFT's first record, the boot sector's geometry and random bytes
    // all around the MFT give one-line errors (or a correct listing), never a panic or hang.
    let mft_cluster = u64::from_le_bytes(std::fs::read(&ntfs).unwrap()[48..56].try_into().unwrap());
    let cluster_size = 4096;
    let mft = mft_cluster * cluster_size;
    let mut cases: Vec<(&str, u64, Vec<u8>)> = vec![
        ("mft-signature", mft, b"XXXX".to_vec()),
        ("sectors-per-cluster", 13, vec![0x03]),
        ("bytes-per-sector", 11, vec![0x00, 0x00]),
        ("mft-record-size", 64, vec![0x7f]),
    ];
    for round in 0..6u64 {
        let bytes = noise(100 + round, 64);
        cases.push(("mft-noise", mft + 5 * 1024 + round * 512 + 40, bytes));
    }
    let mut refused = 0;
    for (number, (what, offset, bytes)) in cases.iter().enumerate() {
        let broken = bed.path(&format!("broken-{number}.img"));
        std::fs::copy(&ntfs, &broken).unwrap();
        write_at(&broken, *offset, bytes);
        let vm = format!("broken{number}");
        bed.backup(&vm, &[&broken]);
        let spec = format!("{vm}:/");
        let (ok, stderr) = bounded(&bed, &["files", "ls", &spec]);
        if !ok {
            refused += 1;
            assert!(
                stderr.starts_with("error: ") && stderr.trim_end().lines().count() == 1,
                "{what}: {stderr}"
            );
            assert!(!stderr.contains("panicked"), "{what}: {stderr}");
        }
    }
    assert!(refused >= 4, "only {refused} damaged volumes were refused");
}

/// Runs `haven` with a 20 s deadline; returns (success, stderr).
fn bounded(bed: &Bed, args: &[&str]) -> (bool, String) {
    let (status, stderr) = stderr_within(&mut bed.haven(args), Duration::from_secs(20));
    (status.success(), stderr)
}

/// A foreground `ntfs-3g` FUSE mount, unmounted (and its daemon reaped, so every write
/// is on the image) by `unmount` or, on a failing test, by drop.
struct NtfsMount {
    child: Option<Child>,
    mountpoint: PathBuf,
}

impl NtfsMount {
    fn new(image: &Path, mountpoint: &Path) -> Self {
        let dir = ntfs3g_dir();
        std::fs::create_dir_all(mountpoint).unwrap();
        let child = Command::new(dir.join("bin/ntfs-3g"))
            .args(["-o", "no_detach"])
            .arg(image)
            .arg(mountpoint)
            .env("LD_LIBRARY_PATH", dir.join("lib/x86_64-linux-gnu"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot run ntfs-3g: {error}"));
        let mut mount = Self {
            child: Some(child),
            mountpoint: mountpoint.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mounts = || std::fs::read_to_string("/proc/self/mounts").unwrap();
        while !mounts().contains(&format!(" {} ", mountpoint.display())) {
            if let Some(status) = mount.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("ntfs-3g exited early: {status}");
            }
            assert!(Instant::now() < deadline, "ntfs-3g did not mount");
            std::thread::sleep(Duration::from_millis(10));
        }
        mount
    }

    fn unmount(&mut self) {
        if let Some(mut child) = self.child.take() {
            run("umount", &[self.mountpoint.to_str().unwrap()]);
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().unwrap().is_none() {
                assert!(Instant::now() < deadline, "ntfs-3g did not exit");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl Drop for NtfsMount {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// (path → (kind, size)) of the whole tree under `spec`, through `files ls --json`.
fn snapshot_tree(bed: &Bed, spec: &str) -> BTreeMap<String, (String, u64)> {
    let mut out = BTreeMap::new();
    let mut stack = vec!["/".to_string()];
    while let Some(dir) = stack.pop() {
        let listing = bed.json(&["files", "ls", &format!("{spec}:{dir}")]);
        for entry in listing["entries"].as_array().unwrap() {
            let path = entry["path"].as_str().unwrap().to_string();
            let kind = entry["kind"].as_str().unwrap().to_string();
            if kind == "dir" {
                stack.push(path.clone());
            }
            out.insert(path, (kind, entry["size"].as_u64().unwrap()));
        }
    }
    out
}

#[test]
fn ntfs_directory_tree_written_through_fuse() {
    let bed = Bed::initialised();
    let image = bed.path("tree.img");
    blank_ntfs(&image, 64 * MIB);

    // Nested directories, a directory large enough for an index allocation (B-tree
    // nodes outside the MFT record), non-ASCII names, sizes from 0 to 2 MiB.
    let mut expected: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let mut contents: Vec<(String, Vec<u8>)> = Vec::new();
    let add_dir = |expected: &mut BTreeMap<String, (String, u64)>, path: &str| {
        expected.insert(path.to_string(), ("dir".to_string(), 0));
    };
    for dir in [
        "/Users",
        "/Users/Алиса",
        "/Users/Алиса/Documents",
        "/deep",
        "/deep/a",
        "/deep/a/b",
        "/deep/a/b/c",
        "/deep/a/b/c/d",
        "/many",
    ] {
        add_dir(&mut expected, dir);
    }
    contents.push((
        "/Users/Алиса/Documents/report.docx".into(),
        noise(10, 70_000),
    ));
    contents.push((
        "/Users/Алиса/notes – 2026.txt".into(),
        b"unicode name\n".to_vec(),
    ));
    contents.push(("/deep/a/b/c/d/leaf.bin".into(), noise(11, 2 * MIB as usize)));
    contents.push(("/deep/empty".into(), Vec::new()));
    for number in 0..300u64 {
        contents.push((
            format!("/many/file-{number:04}.dat"),
            noise(100 + number, (number as usize * 37) % 3000),
        ));
    }
    let mountpoint = bed.path("mnt");
    let mut mount = NtfsMount::new(&image, &mountpoint);
    for (dir, _) in expected.iter() {
        std::fs::create_dir_all(mountpoint.join(dir.trim_start_matches('/'))).unwrap();
    }
    for (path, data) in &contents {
        let local = mountpoint.join(path.trim_start_matches('/'));
        std::fs::write(&local, data).unwrap();
        set_mtime(&local, 1_700_000_000);
        expected.insert(path.clone(), ("file".to_string(), data.len() as u64));
    }
    mount.unmount();
    bed.backup("tree", &[&image]);

    assert_eq!(snapshot_tree(&bed, "tree@latest"), expected);

    // The whole tree: every file's bytes and mtime.
    let restored = bed.path("restored");
    std::fs::create_dir(&restored).unwrap();
    let report = bed.json(&["files", "get", "tree:/", "--to", restored.to_str().unwrap()]);
    assert_eq!(
        report["files"].as_u64(),
        Some(contents.len() as u64),
        "{report}"
    );
    for (path, data) in &contents {
        let copy = restored.join("root").join(path.trim_start_matches('/'));
        assert!(std::fs::read(&copy).unwrap() == *data, "{path} bytes");
        assert_eq!(
            std::fs::metadata(&copy).unwrap().mtime(),
            1_700_000_000,
            "{path} mtime"
        );
    }
    // One file deep in the tree, by a case-insensitive path.
    let leaf = bed.path("leaf.bin");
    bed.ok(&[
        "files",
        "get",
        "tree:/DEEP/a/B/c/d/Leaf.bin",
        "--to",
        leaf.to_str().unwrap(),
    ]);
    assert!(std::fs::read(&leaf).unwrap() == noise(11, 2 * MIB as usize));
    let found = bed.json(&["files", "find", "tree", "--name", "file-029?.dat"]);
    assert_eq!(found["entries"].as_array().unwrap().len(), 10, "{found}");
}
