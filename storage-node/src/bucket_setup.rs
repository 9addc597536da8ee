//! Buckets made at start (`--create-bucket`), optionally with Object Lock and a
//! default retention, so a site can be set up without an S3 client and without
//! handing anyone an `admin` key.

use crate::error::StoreError;
use crate::store::{DefaultRetention, Store};

/// How the buckets named by `--create-bucket` are made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BucketSetup {
    /// Create them with Object Lock enabled (it cannot be enabled later).
    pub object_lock: bool,
    /// Default retention of new objects (needs `object_lock`).
    pub default_retention: Option<DefaultRetention>,
}

/// Errors of the bucket setup, in the terms of the command line.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// `--default-retention` is not `MODE:Nd` or `MODE:Ny`.
    #[error(
        "--default-retention {0:?}: expected GOVERNANCE:DAYSd or COMPLIANCE:YEARSy (for example GOVERNANCE:30d)"
    )]
    BadRetention(String),
    /// A default retention was asked for without Object Lock.
    #[error("--default-retention needs --object-lock")]
    RetentionWithoutLock,
    /// The bucket exists without Object Lock, which cannot be turned on now.
    #[error(
        "bucket {0} exists without Object Lock, which can only be enabled when a bucket is created"
    )]
    ExistsWithoutLock(String),
    /// The store failed.
    #[error("cannot create bucket {bucket}: {source}")]
    Store {
        /// The bucket.
        bucket: String,
        /// The store's error.
        source: StoreError,
    },
}

/// Parses `GOVERNANCE:30d` or `COMPLIANCE:1y` (mode case-insensitive).
pub fn parse_retention(text: &str) -> Result<DefaultRetention, SetupError> {
    let bad = || SetupError::BadRetention(text.to_owned());
    let (mode, period) = text.split_once(':').ok_or_else(bad)?;
    let mode = mode.to_ascii_uppercase();
    if mode != "GOVERNANCE" && mode != "COMPLIANCE" {
        return Err(bad());
    }
    let (number, unit) = period.split_at(period.len().saturating_sub(1));
    let count: i32 = number.parse().map_err(|_| bad())?;
    if count <= 0 {
        return Err(bad());
    }
    let (days, years) = match unit {
        "d" => (Some(count), None),
        "y" => (None, Some(count)),
        _ => return Err(bad()),
    };
    Ok(DefaultRetention { mode, days, years })
}

impl BucketSetup {
    /// The setup from the command-line flags.
    pub fn from_flags(object_lock: bool, retention: Option<&str>) -> Result<Self, SetupError> {
        let default_retention = retention.map(parse_retention).transpose()?;
        if default_retention.is_some() && !object_lock {
            return Err(SetupError::RetentionWithoutLock);
        }
        Ok(Self {
            object_lock,
            default_retention,
        })
    }

    /// Creates `bucket` if missing; with a default retention, (re)sets it on the
    /// bucket whether new or not, so the flag states what the bucket has.
    pub async fn apply(&self, store: &Store, bucket: &str) -> Result<(), SetupError> {
        let failed = |source| SetupError::Store {
            bucket: bucket.to_owned(),
            source,
        };
        match store.create_bucket(bucket, self.object_lock).await {
            Ok(()) | Err(StoreError::BucketExists) => {}
            Err(error) => return Err(failed(error)),
        }
        let mut config = store.bucket_config(bucket).await.map_err(failed)?;
        if self.object_lock && !config.object_lock_enabled {
            return Err(SetupError::ExistsWithoutLock(bucket.to_owned()));
        }
        if let Some(retention) = &self.default_retention
            && config.default_retention.as_ref() != Some(retention)
        {
            config.default_retention = Some(retention.clone());
            store
                .set_bucket_config(bucket, &config)
                .await
                .map_err(failed)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_flags_parse_or_say_what_is_expected() {
        let parsed = parse_retention("GOVERNANCE:30d").expect("valid");
        assert_eq!(
            parsed,
            DefaultRetention {
                mode: "GOVERNANCE".into(),
                days: Some(30),
                years: None
            }
        );
        let parsed = parse_retention("compliance:2y").expect("valid");
        assert_eq!(
            (parsed.mode.as_str(), parsed.years),
            ("COMPLIANCE", Some(2))
        );
        for bad in [
            "",
            "GOVERNANCE",
            "GOVERNANCE:",
            "GOVERNANCE:0d",
            "GOVERNANCE:-1d",
            "LEGAL:3d",
            "GOVERNANCE:3w",
            "GOVERNANCE:d",
        ] {
            assert!(parse_retention(bad).is_err(), "{bad} accepted");
        }
        assert!(matches!(
            BucketSetup::from_flags(false, Some("GOVERNANCE:1d")),
            Err(SetupError::RetentionWithoutLock)
        ));
        assert_eq!(
            BucketSetup::from_flags(false, None).expect("plain"),
            BucketSetup::default()
        );
    }
}
