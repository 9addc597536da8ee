//! Which storage key each job kind gets: backups, replication and verification only
//! create and read, so they get the `append` key; prune and GC delete, so only they
//! get the `delete` key. A worker whose backup is compromised then cannot destroy the
//! history it was writing. The secondary site has keys of its own: its append key
//! for replication's writes, its delete key for the replica's prune and GC.
//!
//! ```toml
//! [storage]
//! append_key_file = "/etc/haven/storage-append.toml"   # backup, replicate, verify
//! delete_key_file = "/etc/haven/storage-delete.toml"   # prune, gc
//! secondary_key_file = "/etc/haven/dr-append.toml"     # replication's destination
//! secondary_delete_key_file = "/etc/haven/dr-delete.toml"  # the replica's prune, gc
//! ```
//!
//! Each file holds one key, readable only by the worker:
//!
//! ```toml
//! access_key_id = "backup"
//! secret_access_key = "…"
//! ```
//!
//! Without `[storage]` (or a field of it) every job uses `AWS_ACCESS_KEY_ID` /
//! `AWS_SECRET_ACCESS_KEY` (and `HAVEN_SECONDARY_AWS_*` at the secondary site), as
//! before.

use std::path::{Path, PathBuf};

use haven_proto::v1;
use haven_repo::S3Credentials;
use serde::Deserialize;

/// `[storage]` of `worker.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageKeysConfig {
    /// Key file for jobs that only create and read (backup, replicate, verify).
    #[serde(default)]
    pub append_key_file: Option<PathBuf>,
    /// Key file for jobs that delete (prune, GC).
    #[serde(default)]
    pub delete_key_file: Option<PathBuf>,
    /// Key file for replication's destination (the other site's append key).
    #[serde(default)]
    pub secondary_key_file: Option<PathBuf>,
    /// Key file for prune and GC at the secondary site (its delete key).
    #[serde(default)]
    pub secondary_delete_key_file: Option<PathBuf>,
}

/// What a job does to its repository, which decides its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyUse {
    /// Create and read only.
    Append,
    /// Delete as well.
    Delete,
}

impl KeyUse {
    /// The key use of a job of `kind` (a `v1::JobKind` number): only prune and GC
    /// delete.
    pub fn of_job(kind: i32) -> Self {
        if kind == v1::JobKind::Prune as i32 || kind == v1::JobKind::Gc as i32 {
            Self::Delete
        } else {
            Self::Append
        }
    }
}

/// Which site's keys a job uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Site {
    /// The job's repository is the policy's own.
    Primary,
    /// The job's repository is a replication secondary (the replica's prune and GC).
    Secondary,
}

impl Site {
    /// The site of `job`: a job that names the primary it copies runs at a replica.
    pub fn of_job(job: &v1::JobAssignment) -> Self {
        if job.replica_of.is_empty() {
            Self::Primary
        } else {
            Self::Secondary
        }
    }
}

/// The keys read from the files named in `[storage]`.
#[derive(Debug, Clone, Default)]
pub struct StorageKeys {
    append: Option<S3Credentials>,
    delete: Option<S3Credentials>,
    secondary: Option<S3Credentials>,
    secondary_delete: Option<S3Credentials>,
}

/// One key file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    access_key_id: String,
    secret_access_key: String,
}

impl StorageKeys {
    /// Reads the files `config` names; an unreadable or malformed file is an error
    /// naming the file and the field (never the secret).
    pub fn load(config: &StorageKeysConfig) -> Result<Self, String> {
        let read = |field: &str, path: &Option<PathBuf>| {
            path.as_deref()
                .map(|path| read_key_file(field, path))
                .transpose()
        };
        Ok(Self {
            append: read("storage.append_key_file", &config.append_key_file)?,
            delete: read("storage.delete_key_file", &config.delete_key_file)?,
            secondary: read("storage.secondary_key_file", &config.secondary_key_file)?,
            secondary_delete: read(
                "storage.secondary_delete_key_file",
                &config.secondary_delete_key_file,
            )?,
        })
    }

    /// The key for a job's repository (`None`: the `AWS_*` environment).
    pub fn for_use(&self, key_use: KeyUse) -> Option<&S3Credentials> {
        match key_use {
            KeyUse::Append => self.append.as_ref(),
            KeyUse::Delete => self.delete.as_ref(),
        }
    }

    /// The key for replication's destination (`None`: `HAVEN_SECONDARY_AWS_*` or
    /// `AWS_*`).
    pub fn secondary(&self) -> Option<&S3Credentials> {
        self.secondary.as_ref()
    }

    /// The key for a job run at the secondary site itself (the replica's prune and
    /// GC): its file, else `HAVEN_SECONDARY_AWS_*`, else (`None`) `AWS_*`.
    pub fn at_secondary(&self, key_use: KeyUse) -> Result<Option<S3Credentials>, String> {
        let file = match key_use {
            KeyUse::Append => &self.secondary,
            KeyUse::Delete => &self.secondary_delete,
        };
        match file {
            Some(key) => Ok(Some(key.clone())),
            None => S3Credentials::secondary_from_env().map_err(|error| error.to_string()),
        }
    }
}

fn read_key_file(field: &str, path: &Path) -> Result<S3Credentials, String> {
    let file: KeyFile =
        haven_config::read_file(path).map_err(|error| format!("{field}: {error}"))?;
    if file.access_key_id.is_empty() || file.secret_access_key.is_empty() {
        return Err(format!("{field}: {} has an empty key", path.display()));
    }
    Ok(S3Credentials {
        access_key_id: file.access_key_id,
        secret_access_key: file.secret_access_key,
        session_token: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_prune_and_gc_get_the_delete_key() {
        let table = [
            (v1::JobKind::Backup, KeyUse::Append),
            (v1::JobKind::Replicate, KeyUse::Append),
            (v1::JobKind::BootTest, KeyUse::Append),
            (v1::JobKind::Prune, KeyUse::Delete),
            (v1::JobKind::Gc, KeyUse::Delete),
        ];
        for (kind, expected) in table {
            assert_eq!(KeyUse::of_job(kind as i32), expected, "{kind:?}");
        }
    }

    #[test]
    fn key_files_load_and_errors_name_the_field_without_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("append.toml");
        std::fs::write(
            &good,
            "access_key_id = \"backup\"\nsecret_access_key = \"s3cret-value\"\n",
        )
        .unwrap();
        let bad = dir.path().join("delete.toml");
        std::fs::write(
            &bad,
            "access_key_id = \"pruner\"\nsecret = \"s3cret-value\"\n",
        )
        .unwrap();
        let keys = StorageKeys::load(&StorageKeysConfig {
            append_key_file: Some(good.clone()),
            ..StorageKeysConfig::default()
        })
        .unwrap();
        assert_eq!(
            keys.for_use(KeyUse::Append)
                .map(|k| k.access_key_id.as_str()),
            Some("backup")
        );
        assert!(keys.for_use(KeyUse::Delete).is_none());
        let error = StorageKeys::load(&StorageKeysConfig {
            append_key_file: Some(good),
            delete_key_file: Some(bad),
            ..StorageKeysConfig::default()
        })
        .unwrap_err();
        assert!(error.contains("storage.delete_key_file"), "{error}");
        assert!(!error.contains("s3cret-value"), "{error}");
    }
}
