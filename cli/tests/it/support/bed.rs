//! Test harness: runs the real `haven` binary against real `qemu-img`/`qemu-nbd`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const PASSWORD: &str = "correct horse battery staple";
pub const MIB: u64 = 1024 * 1024;

/// A scratch directory with a repository URL and helpers to run commands in it.
pub struct Bed {
    pub dir: tempfile::TempDir,
}

impl Bed {
    pub fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("haven-test-")
                .tempdir()
                .unwrap(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn repo_dir(&self) -> PathBuf {
        self.path("repo")
    }

    pub fn repo_url(&self) -> String {
        format!("file://{}", self.repo_dir().display())
    }

    /// `haven ARGS --repo URL` with the password in the environment.
    pub fn haven(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_haven"));
        command
            .args(args)
            .arg("--repo")
            .arg(self.repo_url())
            .env("HAVEN_PASSWORD", PASSWORD)
            .env_remove("HAVEN_PASSWORD_FILE")
            .env_remove("HAVEN_REPO");
        command
    }

    /// Runs and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.haven(args).output().unwrap();
        assert_success(&output, args);
        String::from_utf8(output.stdout).unwrap()
    }

    /// Runs with `--json` and parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut args = args.to_vec();
        args.push("--json");
        serde_json::from_str(&self.ok(&args)).unwrap()
    }

    /// Runs and expects failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let output = self.haven(args).output().unwrap();
        assert!(
            !output.status.success(),
            "haven {args:?} succeeded but should fail: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert!(
            stderr.starts_with("error: "),
            "not a one-line error: {stderr}"
        );
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "not one line: {stderr}"
        );
        stderr
    }

    /// A repository with 1 MiB chunks, the size the tests' arithmetic assumes.
    pub fn init(&self) {
        self.ok(&["repo", "init", "--chunk-size", "1048576"]);
    }

    /// Backs up images as VM `vm`; returns the report.
    pub fn backup(&self, vm: &str, images: &[&Path]) -> serde_json::Value {
        let mut args = vec!["backup", "image"];
        let paths: Vec<String> = images.iter().map(|p| p.display().to_string()).collect();
        args.extend(paths.iter().map(String::as_str));
        args.extend(["--vm", vm]);
        self.json(&args)
    }

    /// Sum of the sizes of all chunk objects.
    pub fn stored_chunk_bytes(&self) -> u64 {
        dir_size(&self.repo_dir().join("chunks"))
    }

    /// Published chunk objects (a killed writer may leave `NAME#N` staging files, which
    /// are not objects).
    pub fn chunk_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        collect_files(&self.repo_dir().join("chunks"), &mut files);
        files.retain(|file| !file.to_string_lossy().contains('#'));
        files.sort();
        files
    }
}

pub fn assert_success(output: &Output, what: &[&str]) {
    assert!(
        output.status.success(),
        "{what:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Waits until `child` prints a line starting with `prefix` on its (piped) standard
/// output, as a server does once it listens: a Unix socket file exists from bind(), a
/// moment before listen(), so its existence is no sign of readiness. Returns the
/// thread that keeps collecting the output until the child exits.
pub fn wait_for_line(
    child: &mut std::process::Child,
    prefix: &'static str,
) -> std::thread::JoinHandle<String> {
    use std::io::BufRead;
    let (seen, ready) = std::sync::mpsc::channel();
    let lines = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
    let collector = std::thread::spawn(move || {
        let mut text = String::new();
        for line in lines.lines().map_while(Result::ok) {
            if line.starts_with(prefix) {
                let _ = seen.send(());
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    match ready.recv_timeout(std::time::Duration::from_secs(20)) {
        Ok(()) => collector,
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            panic!("the server exited without printing {prefix:?}")
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("the server did not print {prefix:?} within 20 s")
        }
    }
}

pub fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| {
            panic!("cannot run {program}: {error}");
        });
    assert_success(&output, args);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `qemu-img compare`: byte-identical guest-visible content.
pub fn assert_same_disk(a: &Path, b: &Path) {
    let output = Command::new("qemu-img")
        .arg("compare")
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{} and {} differ: {}{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Deterministic pseudo-random bytes (xorshift), incompressible enough for zstd.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `data` at `offset` of an existing raw file.
pub fn write_at(path: &Path, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(data, offset).unwrap();
}

/// A sparse raw image of `size` bytes with `extents` of noise written into it.
pub fn raw_image(path: &Path, size: u64, extents: &[(u64, usize)]) {
    let file = std::fs::File::create(path).unwrap();
    file.set_len(size).unwrap();
    drop(file);
    for (number, &(offset, len)) in extents.iter().enumerate() {
        write_at(path, offset, &noise(number as u64 + offset, len));
    }
}

pub fn to_qcow2(raw: &Path, qcow2: &Path) {
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            &raw.display().to_string(),
            &qcow2.display().to_string(),
        ],
    );
}

pub fn dir_size(path: &Path) -> u64 {
    let mut files = Vec::new();
    collect_files(path, &mut files);
    files.iter().map(|f| f.metadata().unwrap().len()).sum()
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(path) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_files(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Flips one bit of a file in place.
pub fn flip_byte(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, offset).unwrap();
    byte[0] ^= 0x01;
    file.write_all_at(&byte, offset).unwrap();
}

pub fn disk_stat(report: &serde_json::Value, field: &str) -> u64 {
    report["disks"][0][field].as_u64().unwrap()
}
