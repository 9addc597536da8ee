//! Buckets: creation, settings (Object Lock), listing and removal.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Store, durable};
use crate::error::StoreError;

/// Default retention applied to new objects of a locked bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DefaultRetention {
    /// `COMPLIANCE` or `GOVERNANCE`.
    pub mode: String,
    /// Retention in days (exclusive with `years`).
    pub days: Option<i32>,
    /// Retention in years (exclusive with `days`).
    pub years: Option<i32>,
}

impl DefaultRetention {
    /// The retain-until date for an object written at `now`.
    pub fn retain_until(&self, now: time::OffsetDateTime) -> time::OffsetDateTime {
        let days = i64::from(self.days.unwrap_or(0)) + 365 * i64::from(self.years.unwrap_or(0));
        now + time::Duration::days(days)
    }
}

/// Settings of one bucket, stored in `bucket.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BucketConfig {
    /// When the bucket was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created: time::OffsetDateTime,
    /// Whether Object Lock was enabled at creation (it cannot be later).
    pub object_lock_enabled: bool,
    /// Default retention for new objects.
    pub default_retention: Option<DefaultRetention>,
}

/// S3 bucket naming rules, which also make names safe as directory names.
pub use haven_node_protocol::is_valid_bucket_name;

impl Store {
    /// Creates a bucket atomically: a prepared directory is renamed into place.
    pub async fn create_bucket(
        &self,
        bucket: &str,
        object_lock_enabled: bool,
    ) -> Result<(), StoreError> {
        let target = self.bucket_dir(bucket)?;
        let staging = self.temp_path();
        let buckets = self.primary().join("buckets");
        // Leftovers in the other directories of a bucket of the same name
        // (deleted while a write raced with it) must not reappear.
        let leftovers: Vec<PathBuf> = self.dirs[1..]
            .iter()
            .map(|dir| dir.join("buckets").join(bucket))
            .collect();
        let config = BucketConfig {
            created: time::OffsetDateTime::now_utc(),
            object_lock_enabled,
            default_retention: None,
        };
        let json = serde_json::to_vec_pretty(&config)
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
        let temp_file = self.temp_path();
        tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            if target.exists() {
                return Err(StoreError::BucketExists);
            }
            remove_leftovers(&leftovers)?;
            std::fs::create_dir(&staging)?;
            std::fs::create_dir(staging.join("objects"))?;
            let result = durable::write_atomic(&staging.join("bucket.json"), &temp_file, &json)
                .and_then(|()| durable::sync_dir(&staging))
                .and_then(|()| std::fs::rename(&staging, &target));
            if let Err(error) = result {
                let _ = std::fs::remove_dir_all(&staging);
                let exists = matches!(
                    error.raw_os_error(),
                    Some(libc::ENOTEMPTY) | Some(libc::EEXIST)
                );
                return Err(if exists {
                    StoreError::BucketExists
                } else {
                    error.into()
                });
            }
            durable::sync_dir(&buckets)?;
            Ok(())
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
    }

    /// Reads a bucket's settings; `NoSuchBucket` if it does not exist.
    pub async fn bucket_config(&self, bucket: &str) -> Result<BucketConfig, StoreError> {
        let path = self.bucket_dir(bucket)?.join("bucket.json");
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NoSuchBucket);
            }
            Err(error) => return Err(error.into()),
        };
        serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Corrupt(format!("bucket.json of {bucket}: {e}")))
    }

    /// Replaces a bucket's settings durably.
    pub async fn set_bucket_config(
        &self,
        bucket: &str,
        config: &BucketConfig,
    ) -> Result<(), StoreError> {
        let path = self.bucket_dir(bucket)?.join("bucket.json");
        let json = serde_json::to_vec_pretty(config)
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
        let temp = self.temp_path();
        tokio::task::spawn_blocking(move || durable::write_atomic(&path, &temp, &json))
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
        Ok(())
    }

    /// Lists all buckets with their creation time, sorted by name.
    pub async fn list_buckets(&self) -> Result<Vec<(String, BucketConfig)>, StoreError> {
        let mut names = Vec::new();
        let mut dir = tokio::fs::read_dir(self.primary().join("buckets")).await?;
        while let Some(entry) = dir.next_entry().await? {
            if let Some(name) = entry.file_name().to_str()
                && is_valid_bucket_name(name)
            {
                names.push(name.to_owned());
            }
        }
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            match self.bucket_config(&name).await {
                Ok(config) => out.push((name, config)),
                Err(StoreError::NoSuchBucket) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(out)
    }

    /// Removes an empty bucket.
    pub async fn delete_bucket(&self, bucket: &str) -> Result<(), StoreError> {
        let dir = self.bucket_dir(bucket)?;
        let trash = self.temp_path();
        let buckets = self.primary().join("buckets");
        let others: Vec<PathBuf> = self.dirs[1..]
            .iter()
            .map(|dir| dir.join("buckets").join(bucket))
            .collect();
        tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            if !dir.join("bucket.json").exists() {
                return Err(StoreError::NoSuchBucket);
            }
            if has_files(&dir.join("objects"))? {
                return Err(StoreError::BucketNotEmpty);
            }
            for other in &others {
                match has_files(&other.join("objects")) {
                    Ok(true) => return Err(StoreError::BucketNotEmpty),
                    Ok(false) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => return Err(error.into()),
                }
            }
            std::fs::rename(&dir, &trash)?;
            durable::sync_dir(&buckets)?;
            std::fs::remove_dir_all(&trash)?;
            remove_leftovers(&others)?;
            Ok(())
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
    }
}

/// Removes a bucket's (empty or stale) directories in the data directories
/// other than the first.
fn remove_leftovers(dirs: &[PathBuf]) -> std::io::Result<()> {
    for dir in dirs {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {
                if let Some(parent) = dir.parent() {
                    durable::sync_dir(parent)?;
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

fn has_files(dir: &Path) -> std::io::Result<bool> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            if has_files(&entry.path())? {
                return Ok(true);
            }
        } else {
            return Ok(true);
        }
    }
    Ok(false)
}
