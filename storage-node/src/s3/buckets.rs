//! Bucket operations (listings of objects are in `listing.rs`).

use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, s3_error};

use super::HavenS3;
use crate::error::StoreError;

/// The region AWS leaves out of `LocationConstraint` (its historical default).
const DEFAULT_REGION: &str = "us-east-1";

/// Largest `max-buckets` AWS accepts.
const MAX_BUCKETS: i32 = 10_000;

/// CreateBucket. A bucket the node already has is `BucketAlreadyOwnedByYou`
/// (409): every key of a node belongs to its one account, so the bucket is
/// always the caller's own. AWS answers so in every region but us-east-1,
/// where for legacy reasons it answers 200; a client cannot then tell a new
/// bucket from an old one, so the node never does. A location constraint
/// other than the node's region is refused as AWS refuses it.
pub async fn create_bucket(
    s3: &HavenS3,
    req: S3Request<CreateBucketInput>,
) -> S3Result<S3Response<CreateBucketOutput>> {
    let input = req.input;
    let region = s3.config.region.as_str();
    if let Some(constraint) = input
        .create_bucket_configuration
        .as_ref()
        .and_then(|c| c.location_constraint.as_ref())
        .map(BucketLocationConstraint::as_str)
        .filter(|c| *c != region)
    {
        return Err(s3_error!(
            IllegalLocationConstraintException,
            "the location constraint {constraint:?} is incompatible with this node's region {region:?}"
        ));
    }
    let lock = input.object_lock_enabled_for_bucket.unwrap_or(false);
    match s3.store.create_bucket(&input.bucket, lock).await {
        Ok(()) => {}
        Err(StoreError::BucketExists) => {
            return Err(s3_error!(
                BucketAlreadyOwnedByYou,
                "Your previous request to create the named bucket succeeded and you already own it."
            ));
        }
        Err(error) => return Err(error.into()),
    }
    Ok(S3Response::new(CreateBucketOutput {
        location: Some(format!("/{}", input.bucket)),
    }))
}

/// GetBucketLocation: the node's region, empty for us-east-1 as AWS answers.
pub async fn get_bucket_location(
    s3: &HavenS3,
    req: S3Request<GetBucketLocationInput>,
) -> S3Result<S3Response<GetBucketLocationOutput>> {
    s3.store.bucket_config(&req.input.bucket).await?;
    let region = &s3.config.region;
    Ok(S3Response::new(GetBucketLocationOutput {
        location_constraint: (region != DEFAULT_REGION)
            .then(|| BucketLocationConstraint::from(region.clone())),
    }))
}

/// ListBuckets, paginated as AWS documents it: `max-buckets` (1 to 10 000,
/// else `400 InvalidArgument`) pages the listing and names each bucket's region,
/// `continuation-token` resumes it (opaque; a token of another kind is `400
/// InvalidArgument`), `prefix` and `bucket-region` filter it. Without
/// `max-buckets` every bucket the key may see is listed at once.
pub async fn list_buckets(
    s3: &HavenS3,
    req: S3Request<ListBucketsInput>,
) -> S3Result<S3Response<ListBucketsOutput>> {
    let key = s3.key(&req)?;
    let input = &req.input;
    let page = match input.max_buckets {
        None => None,
        Some(n @ 1..=MAX_BUCKETS) => Some(n as usize),
        Some(_) => {
            return Err(s3_error!(
                InvalidArgument,
                "max-buckets must be between 1 and {MAX_BUCKETS}"
            ));
        }
    };
    let after = input
        .continuation_token
        .as_deref()
        .map(super::listing::key_of_token)
        .transpose()?;
    let region = s3.config.region.as_str();
    let prefix = input.prefix.as_deref().unwrap_or_default();
    let in_region = input.bucket_region.as_deref().is_none_or(|r| r == region);
    let mut buckets: Vec<Bucket> = s3
        .store
        .list_buckets()
        .await?
        .into_iter()
        .filter(|(name, _)| in_region && key.allows_bucket(name) && name.starts_with(prefix))
        .filter(|(name, _)| after.as_ref().is_none_or(|after| name > after))
        .map(|(name, config)| Bucket {
            name: Some(name),
            creation_date: Some(Timestamp::from(config.created)),
            bucket_region: page.map(|_| region.to_owned()),
        })
        .collect();
    let mut next = None;
    if let Some(page) = page
        && buckets.len() > page
    {
        buckets.truncate(page);
        next = buckets
            .last()
            .and_then(|b| b.name.as_deref())
            .map(super::listing::token_for);
    }
    Ok(S3Response::new(ListBucketsOutput {
        buckets: Some(buckets),
        continuation_token: next,
        owner: Some(Owner {
            display_name: Some(key.access_key.clone()),
            id: Some(key.access_key.clone()),
        }),
        prefix: input.prefix.clone(),
    }))
}
