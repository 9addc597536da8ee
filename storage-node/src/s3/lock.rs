//! Object Lock: bucket default retention, per-object retention, legal hold.

use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, s3_error};

use super::HavenS3;
use super::convert;
use crate::store::DefaultRetention;

pub async fn put_configuration(
    s3: &HavenS3,
    req: S3Request<PutObjectLockConfigurationInput>,
) -> S3Result<S3Response<PutObjectLockConfigurationOutput>> {
    let input = req.input;
    let mut bucket = s3.store.bucket_config(&input.bucket).await?;
    if !bucket.object_lock_enabled {
        return Err(s3_error!(
            InvalidBucketState,
            "Object Lock can only be configured on buckets created with it"
        ));
    }
    let configuration = input
        .object_lock_configuration
        .ok_or_else(|| s3_error!(MalformedXML))?;
    let default = configuration.rule.and_then(|r| r.default_retention);
    bucket.default_retention = match default {
        None => None,
        Some(default) => {
            let mode = default
                .mode
                .map(|m| m.as_str().to_owned())
                .unwrap_or_default();
            if mode != "COMPLIANCE" && mode != "GOVERNANCE" {
                return Err(s3_error!(
                    MalformedXML,
                    "default retention needs mode COMPLIANCE or GOVERNANCE"
                ));
            }
            match (default.days, default.years) {
                (Some(d), None) if d > 0 => {}
                (None, Some(y)) if y > 0 => {}
                _ => {
                    return Err(s3_error!(
                        MalformedXML,
                        "default retention needs a positive Days or Years"
                    ));
                }
            }
            Some(DefaultRetention {
                mode,
                days: default.days,
                years: default.years,
            })
        }
    };
    s3.store.set_bucket_config(&input.bucket, &bucket).await?;
    Ok(S3Response::new(PutObjectLockConfigurationOutput::default()))
}

pub async fn get_configuration(
    s3: &HavenS3,
    req: S3Request<GetObjectLockConfigurationInput>,
) -> S3Result<S3Response<GetObjectLockConfigurationOutput>> {
    let bucket = s3.store.bucket_config(&req.input.bucket).await?;
    if !bucket.object_lock_enabled {
        return Err(s3_error!(ObjectLockConfigurationNotFoundError));
    }
    let rule = bucket.default_retention.map(|d| ObjectLockRule {
        default_retention: Some(s3s::dto::DefaultRetention {
            mode: Some(ObjectLockRetentionMode::from(d.mode)),
            days: d.days,
            years: d.years,
        }),
    });
    Ok(S3Response::new(GetObjectLockConfigurationOutput {
        object_lock_configuration: Some(ObjectLockConfiguration {
            object_lock_enabled: Some(ObjectLockEnabled::from_static(ObjectLockEnabled::ENABLED)),
            rule,
        }),
    }))
}

/// Refuses per-object lock settings in a bucket created without Object Lock.
async fn lockable_bucket(s3: &HavenS3, bucket: &str) -> S3Result<()> {
    if !s3.store.bucket_config(bucket).await?.object_lock_enabled {
        return Err(s3_error!(
            InvalidRequest,
            "bucket is missing Object Lock configuration"
        ));
    }
    Ok(())
}

pub async fn put_retention(
    s3: &HavenS3,
    req: S3Request<PutObjectRetentionInput>,
) -> S3Result<S3Response<PutObjectRetentionOutput>> {
    let bypass = s3.bypasses_governance(&req, req.input.bypass_governance_retention)?;
    let input = req.input;
    lockable_bucket(s3, &input.bucket).await?;
    let retention = match input.retention {
        Some(ObjectLockRetention {
            mode: Some(mode),
            retain_until_date: Some(until),
        }) => Some(convert::retention(mode.as_str(), &until)?),
        Some(ObjectLockRetention {
            mode: None,
            retain_until_date: None,
        })
        | None => None,
        Some(_) => {
            return Err(s3_error!(
                MalformedXML,
                "retention needs both Mode and RetainUntilDate"
            ));
        }
    };
    s3.store
        .update_lock(&input.bucket, &input.key, Some(retention), None, bypass)
        .await?;
    Ok(S3Response::new(PutObjectRetentionOutput::default()))
}

pub async fn get_retention(
    s3: &HavenS3,
    req: S3Request<GetObjectRetentionInput>,
) -> S3Result<S3Response<GetObjectRetentionOutput>> {
    let input = req.input;
    let reader = s3.store.open_object(&input.bucket, &input.key).await?;
    let retention = reader
        .meta
        .retention
        .ok_or_else(|| s3_error!(NoSuchObjectLockConfiguration))?;
    Ok(S3Response::new(GetObjectRetentionOutput {
        retention: Some(ObjectLockRetention {
            mode: Some(ObjectLockRetentionMode::from(retention.mode)),
            retain_until_date: Some(Timestamp::from(retention.retain_until)),
        }),
    }))
}

pub async fn put_legal_hold(
    s3: &HavenS3,
    req: S3Request<PutObjectLegalHoldInput>,
) -> S3Result<S3Response<PutObjectLegalHoldOutput>> {
    let input = req.input;
    lockable_bucket(s3, &input.bucket).await?;
    let on = input
        .legal_hold
        .and_then(|h| h.status)
        .is_some_and(|s| s.as_str() == "ON");
    s3.store
        .update_lock(&input.bucket, &input.key, None, Some(on), false)
        .await?;
    Ok(S3Response::new(PutObjectLegalHoldOutput::default()))
}

pub async fn get_legal_hold(
    s3: &HavenS3,
    req: S3Request<GetObjectLegalHoldInput>,
) -> S3Result<S3Response<GetObjectLegalHoldOutput>> {
    let input = req.input;
    let reader = s3.store.open_object(&input.bucket, &input.key).await?;
    let status = if reader.meta.legal_hold { "ON" } else { "OFF" };
    Ok(S3Response::new(GetObjectLegalHoldOutput {
        legal_hold: Some(ObjectLockLegalHold {
            status: Some(ObjectLockLegalHoldStatus::from(status.to_owned())),
        }),
    }))
}
