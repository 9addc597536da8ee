//! A test bed: a scratch directory holding a `file://` repository, with the `haven`
//! runs against it that most tests start from.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::haven::{HavenClient, PASSWORD};
use super::image::raw_image;
use super::tree::{dir_size, files_below};

/// A scratch directory with a repository URL and helpers to run commands in it.
pub struct Bed {
    /// The directory, removed when the bed is dropped.
    pub dir: tempfile::TempDir,
}

impl Bed {
    /// A fresh, empty bed (the repository is not initialised yet).
    pub fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("haven-test-")
                .tempdir()
                .unwrap(),
        }
    }

    /// A fresh bed with its repository initialised ([`Bed::init`]).
    pub fn initialised() -> Self {
        let bed = Self::new();
        bed.init();
        bed
    }

    /// A sparse raw image `name` in the bed of `size` bytes with `extents` of noise
    /// written into it ([`raw_image`]).
    pub fn raw_image(&self, name: &str, size: u64, extents: &[(u64, usize)]) -> PathBuf {
        let path = self.path(name);
        raw_image(&path, size, extents);
        path
    }

    /// A path inside the bed.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The repository's directory.
    pub fn repo_dir(&self) -> PathBuf {
        self.path("repo")
    }

    /// The repository's `file://` URL.
    pub fn repo_url(&self) -> String {
        format!("file://{}", self.repo_dir().display())
    }

    /// A client of the bed's repository.
    pub fn repo(&self) -> HavenClient {
        HavenClient::new(self.repo_url())
    }

    /// `haven ARGS --repo URL` with the password in the environment.
    pub fn haven(&self, args: &[&str]) -> Command {
        self.repo().command(args)
    }

    /// Runs and expects success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        self.repo().ok(args)
    }

    /// Runs with `--json` and parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        self.repo().json(args)
    }

    /// Runs and expects failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        self.repo().fails(args)
    }

    /// A repository with 1 MiB chunks, the size the tests' arithmetic assumes.
    pub fn init(&self) {
        self.ok(&["repo", "init", "--chunk-size", "1048576"]);
    }

    /// Backs up images as VM `vm`; returns the report.
    pub fn backup(&self, vm: &str, images: &[&Path]) -> serde_json::Value {
        self.repo().backup(vm, images)
    }

    /// `haven backup image IMAGES --vm VM --json` whatever its exit status.
    pub fn backup_output(&self, vm: &str, images: &[&Path]) -> std::process::Output {
        self.repo().backup_output(vm, images)
    }

    /// The manifest of `snapshot` (`VM@TIME`), read through the repository library.
    pub fn manifest(&self, snapshot: &str) -> haven_repo::Manifest {
        let (vm, _) = snapshot.split_once('@').expect("VM@TIME");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let backend = haven_repo::Backend::from_url(&self.repo_url(), false).unwrap();
            let repo = haven_repo::Repository::open(backend, PASSWORD.as_bytes())
                .await
                .unwrap();
            let id = repo
                .list_snapshots(Some(vm))
                .await
                .unwrap()
                .into_iter()
                .find(|id| format!("{}@{}", id.vm, id.timestamp) == snapshot)
                .unwrap();
            repo.read_manifest(&id).await.unwrap()
        })
    }

    /// Sum of the sizes of all chunk objects.
    pub fn stored_chunk_bytes(&self) -> u64 {
        dir_size(&self.repo_dir().join("chunks"))
    }

    /// Published chunk objects of the bed's repository.
    pub fn chunk_files(&self) -> Vec<PathBuf> {
        chunk_files(&self.repo_dir())
    }
}

/// Published chunk objects of the `file://` repository in `repo_dir`, sorted (a killed
/// writer may leave `NAME#N` staging files, which are not objects).
pub fn chunk_files(repo_dir: &Path) -> Vec<PathBuf> {
    let mut files = files_below(&repo_dir.join("chunks"));
    files.retain(|file| !file.to_string_lossy().contains('#'));
    files.sort();
    files
}
