//! Authentication (secret keys from the configuration, checked by s3s's SigV4
//! verification) and authorisation (per-key bucket permissions).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::path::S3Path;
use s3s::{S3Result, s3_error};

use haven_node_protocol::PERMISSION_REFUSAL;

use crate::config::{AccessKeyConfig, Config};
use crate::permission::{self, Requirement};

/// Resolves access keys to their secrets.
pub struct ConfigAuth(pub Arc<Config>);

#[async_trait::async_trait]
impl S3Auth for ConfigAuth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.0.key(access_key) {
            Some(key) => Ok(SecretKey::from(key.secret_key.as_str())),
            None => Err(s3_error!(
                InvalidAccessKeyId,
                "the access key id does not exist"
            )),
        }
    }
}

/// Where the access check records the operation name for the metrics layer,
/// which sits outside s3s and cannot see it otherwise.
#[derive(Clone, Default)]
pub struct OperationSlot(pub Arc<Mutex<Option<&'static str>>>);

impl OperationSlot {
    /// Records the operation of this request.
    pub fn set(&self, name: &str) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(intern(name));
        }
    }

    /// The recorded operation, or `"Unauthenticated"` when the request was
    /// refused before it was resolved.
    pub fn get(&self) -> &'static str {
        self.0
            .lock()
            .ok()
            .and_then(|s| *s)
            .unwrap_or("Unauthenticated")
    }
}

/// Turns the (small, fixed) set of operation names into static labels.
fn intern(name: &str) -> &'static str {
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let names = NAMES.get_or_init(Default::default);
    let Ok(mut names) = names.lock() else {
        return "Other";
    };
    if let Some(found) = names.get(name) {
        return found;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}

/// Per-key permissions: which buckets, and what the key's kind and grants allow
/// ([`crate::permission`]).
pub struct KeyAccess(pub Arc<Config>);

#[async_trait::async_trait]
impl S3Access for KeyAccess {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let op = cx.s3_op().name().to_owned();
        if let Some(slot) = cx.extensions_mut().get::<OperationSlot>() {
            slot.set(&op);
        }
        let Some(credentials) = cx.credentials() else {
            return Err(s3_error!(
                AccessDenied,
                "anonymous requests are not allowed"
            ));
        };
        let Some(key) = self.0.key(&credentials.access_key) else {
            return Err(s3_error!(InvalidAccessKeyId));
        };
        let bucket = match cx.s3_path() {
            S3Path::Root => None,
            S3Path::Bucket { bucket } | S3Path::Object { bucket, .. } => Some(bucket.as_ref()),
        };
        if let Some(bucket) = bucket
            && !key.allows_bucket(bucket)
        {
            return Err(s3_error!(
                AccessDenied,
                "access key may not use this bucket"
            ));
        }
        check_permission(key, &op)
    }
}

/// Refuses `operation` unless `key` may perform it, naming what is missing.
pub fn check_permission(key: &AccessKeyConfig, operation: &str) -> S3Result<()> {
    match permission::requirement(operation) {
        requirement if key.allows(requirement) => Ok(()),
        Requirement::LegalHold => Err(s3_error!(
            AccessDenied,
            "access key {} may not set legal holds",
            key.access_key
        )),
        Requirement::Kind(kind) => Err(s3_error!(
            AccessDenied,
            "access key {} has access = \"{}\"; {operation} {PERMISSION_REFUSAL}\"{}\" or more",
            key.access_key,
            key.kind().name(),
            kind.name()
        )),
    }
}
