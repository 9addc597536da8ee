//! Protected snapshots: kept by prune whatever the retention rules say, and optionally
//! made immutable in storage with S3 Object Lock.
//!
//! Manifests are create-only, so protection is a record of its own,
//! `protect/VM/TIMESTAMP` (plain JSON: it holds nothing secret, and forging one only
//! keeps more). With a lock mode, every object the snapshot needs — its chunks, its
//! indexes, its manifest and the record itself — gets an object-lock retention until
//! the given date through `PutObjectRetention`, so deleting them with the storage
//! credentials fails (COMPLIANCE: for everyone; GOVERNANCE: for every key without
//! the bypass right that does not ask to bypass). Haven's storage node and S3-compatible
//! stores with Object Lock enabled on the bucket support this; `file://` does not.
//!
//! Garbage collection needs nothing from here: protected snapshots have manifests, so
//! their chunks are marked like any other; a delete refused by a lock is counted.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::{RepoError, Result};
use crate::format::chunk::ChunkId;
use crate::format::manifest::{SnapshotId, format_timestamp, parse_timestamp};
use crate::repository::Repository;
use crate::storage::backend::Backend;
use crate::storage::node_client::{Credentials, Payload, sign};

/// Folder of protection records.
pub const PROTECT_PREFIX: &str = "protect";
/// Retention requests in flight.
const LOCK_CONCURRENCY: usize = 16;
/// Time limit of one retention request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest protection record read.
const MAX_RECORD: u64 = 64 * 1024;

/// S3 Object Lock retention mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum LockMode {
    /// Deletable before the date only by a key allowed to bypass governance, asking to.
    Governance,
    /// Deletable by nobody before the date; the date can only be extended.
    Compliance,
}

impl LockMode {
    fn as_s3(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }
}

/// The protection record of one snapshot.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Protection {
    /// `VM@TIMESTAMP`.
    pub snapshot: String,
    /// When it was protected.
    pub protected_at: String,
    /// End of the protection (RFC 3339); none: until `haven unprotect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
    /// Object-lock mode applied in storage, if any (then `until` is the retain date).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_mode: Option<LockMode>,
}

impl Protection {
    /// Whether the protection holds at `now`.
    pub fn is_active(&self, now: OffsetDateTime) -> bool {
        match &self.until {
            None => true,
            // An unreadable date protects: keeping too much is the safe mistake.
            Some(until) => parse_timestamp(until).map_or(true, |until| until > now),
        }
    }
}

/// What `protect` did.
#[derive(Debug, Clone, Serialize)]
pub struct ProtectReport {
    /// The record written.
    pub protection: Protection,
    /// Objects given an object-lock retention (chunks, indexes, manifest, record).
    pub objects_locked: u64,
}

fn record_key(id: &SnapshotId) -> String {
    format!("{PROTECT_PREFIX}/{}/{}", id.vm, id.timestamp)
}

/// Protects snapshot `id` until `until` (or for good), and with `lock` also locks its
/// objects in storage until that date.
pub async fn protect_snapshot(
    repo: &Repository,
    id: &SnapshotId,
    until: Option<OffsetDateTime>,
    lock: Option<LockMode>,
) -> Result<ProtectReport> {
    let manifest = repo.read_manifest(id).await?;
    // Everything a lock needs is checked before anything is written.
    let lock_plan = match (lock, until) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(RepoError::InvalidArgument(
                "an object lock needs a retain-until date".into(),
            ));
        }
        (Some(mode), Some(until)) => {
            Some((mode, until, ObjectLockClient::for_backend(repo.backend())?))
        }
    };
    let now = OffsetDateTime::now_utc();
    let protection = Protection {
        snapshot: id.to_string(),
        protected_at: format_timestamp(now),
        until: until.map(format_timestamp),
        lock_mode: lock,
    };
    let key = record_key(id);
    let body = serde_json::to_vec_pretty(&protection).map_err(|error| RepoError::Io {
        context: "cannot encode a protection record".into(),
        source: std::io::Error::other(error),
    })?;
    match repo
        .backend()
        .put_lock_object(&key, Bytes::from(body))
        .await
    {
        Ok(()) => {}
        // Locked by an earlier `protect --lock`: it stays, the retention below extends.
        Err(RepoError::Storage { error, .. })
            if lock.is_some() && matches!(*error, object_store::Error::PermissionDenied { .. }) => {
        }
        Err(error) => return Err(error),
    }
    let mut objects_locked = 0;
    if let Some((mode, until, client)) = &lock_plan {
        let (mode, until) = (*mode, *until);
        let mut keys: Vec<String> = Vec::new();
        let mut chunks: Vec<ChunkId> = Vec::new();
        for disk in &manifest.disks {
            let index = repo.read_index(disk).await?;
            chunks.extend(index.slots().iter().copied().filter(|c| !c.is_zero()));
            keys.push(disk.index.clone());
        }
        chunks.sort_unstable_by_key(|id| id.0);
        chunks.dedup();
        // Chunks first, the manifest and the record last: an interrupted run leaves the
        // snapshot protected by its record, and running it again completes the locks.
        let mut order: Vec<String> = chunks.iter().map(ChunkId::object_key).collect();
        order.append(&mut keys);
        order.push(id.manifest_key());
        order.push(key.clone());
        let mut requests = futures::stream::iter(order)
            .map(|object| async move { client.put_retention(&object, mode, until).await })
            .buffer_unordered(LOCK_CONCURRENCY);
        while let Some(result) = requests.next().await {
            result?;
            objects_locked += 1;
        }
    }
    Ok(ProtectReport {
        protection,
        objects_locked,
    })
}

/// Removes the protection of `id`. Refused while an object-lock retention on its
/// manifest or record has not expired (the lock would outlive the record anyway).
/// Returns whether there was a record.
pub async fn unprotect_snapshot(repo: &Repository, id: &SnapshotId) -> Result<bool> {
    let key = record_key(id);
    let Some(protection) = read_protection(repo.backend(), &key).await? else {
        return Ok(false);
    };
    let now = OffsetDateTime::now_utc();
    if protection.lock_mode.is_some() && protection.is_active(now) {
        return Err(RepoError::Protected(format!(
            "{id}: its objects are locked in storage until {}",
            protection.until.as_deref().unwrap_or("an unknown date")
        )));
    }
    if let Ok(client) = ObjectLockClient::for_backend(repo.backend())
        && let Some(until) = client.retention_until(&id.manifest_key()).await?
        && until > now
    {
        return Err(RepoError::Protected(format!(
            "{id}: its manifest is locked in storage until {}",
            format_timestamp(until)
        )));
    }
    repo.backend().delete(&key).await?;
    Ok(true)
}

async fn read_protection(backend: &Backend, key: &str) -> Result<Option<Protection>> {
    match backend.get(key, MAX_RECORD).await {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|error| RepoError::corrupt(key, format!("bad protection record: {error}"))),
        Err(RepoError::NotFound(_)) => Ok(None),
        Err(error) => Err(error),
    }
}

/// Snapshots protected now, with their records. A record that cannot be parsed
/// protects its snapshot (keeping too much is the safe mistake).
pub async fn protected_snapshots(backend: &Backend) -> Result<BTreeMap<SnapshotId, Protection>> {
    let now = OffsetDateTime::now_utc();
    let mut out = BTreeMap::new();
    for key in backend.list(PROTECT_PREFIX).await? {
        let Some((vm, timestamp)) = key
            .strip_prefix("protect/")
            .and_then(|rest| rest.split_once('/'))
        else {
            continue;
        };
        let Ok(id) = SnapshotId::new(vm, timestamp) else {
            continue;
        };
        let protection = match read_protection(backend, &key).await {
            Ok(Some(protection)) => protection,
            Ok(None) => continue,
            Err(RepoError::Corrupt { .. }) => Protection {
                snapshot: id.to_string(),
                protected_at: String::new(),
                until: None,
                lock_mode: None,
            },
            Err(error) => return Err(error),
        };
        if protection.is_active(now) {
            out.insert(id, protection);
        }
    }
    Ok(out)
}

/// Signed `?retention` requests against the bucket of an `s3://` repository with an
/// explicit endpoint (path-style), credentials from the `AWS_*` environment.
struct ObjectLockClient {
    http: reqwest::Client,
    endpoint: url::Url,
    bucket: String,
    prefix: String,
    credentials: Credentials,
}

impl ObjectLockClient {
    fn for_backend(backend: &Backend) -> Result<Self> {
        let location = backend.location();
        let unsupported = |reason: &str| RepoError::InvalidUrl {
            url: location.to_string(),
            reason: format!("object lock: {reason}"),
        };
        let url =
            url::Url::parse(location).map_err(|_| unsupported("needs an s3:// repository URL"))?;
        if url.scheme() != "s3" {
            return Err(unsupported("needs an s3:// repository URL"));
        }
        let bucket = url
            .host_str()
            .ok_or_else(|| unsupported("missing bucket"))?
            .to_string();
        let prefix = url.path().trim_matches('/').to_string();
        let mut endpoint = None;
        let mut region = None;
        for (name, value) in url.query_pairs() {
            match name.as_ref() {
                "endpoint" => endpoint = Some(value.into_owned()),
                "region" => region = Some(value.into_owned()),
                _ => {}
            }
        }
        let endpoint = endpoint.ok_or_else(|| unsupported("needs endpoint= in the URL"))?;
        let endpoint =
            url::Url::parse(&endpoint).map_err(|_| unsupported("the endpoint is not a URL"))?;
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let credentials = Credentials {
            access_key: env("AWS_ACCESS_KEY_ID")
                .ok_or_else(|| unsupported("AWS_ACCESS_KEY_ID is not set"))?,
            secret_key: env("AWS_SECRET_ACCESS_KEY")
                .ok_or_else(|| unsupported("AWS_SECRET_ACCESS_KEY is not set"))?,
            region: region
                .or_else(|| env("AWS_REGION"))
                .or_else(|| env("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|| "us-east-1".into()),
        };
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|error| unsupported(&error.to_string()))?;
        Ok(Self {
            http,
            endpoint,
            bucket,
            prefix,
            credentials,
        })
    }

    /// Path-style, URI-encoded path of an object (the same text is signed and sent).
    fn path(&self, key: &str) -> String {
        let full = if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        };
        let mut path = format!("/{}/", uri_encode(&self.bucket));
        path.push_str(
            &full
                .split('/')
                .map(uri_encode)
                .collect::<Vec<_>>()
                .join("/"),
        );
        path
    }

    async fn request(
        &self,
        method: reqwest::Method,
        key: &str,
        body: Vec<u8>,
    ) -> Result<(u16, String)> {
        let path = self.path(key);
        let mut url = self.endpoint.clone();
        url.set_path(&path);
        url.set_query(Some("retention="));
        let host = match (url.host_str(), url.port()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) => host.to_string(),
            (None, _) => return Err(self.error(key, "the endpoint has no host")),
        };
        let signed = sign(
            method.as_str(),
            &self.credentials,
            &host,
            &path,
            "retention=",
            Payload::Bytes(&body),
            OffsetDateTime::now_utc(),
        );
        let response = self
            .http
            .request(method, url)
            .header("host", host)
            .header("x-amz-date", signed.amz_date)
            .header("x-amz-content-sha256", signed.payload_hash)
            .header("authorization", signed.authorization)
            .body(body)
            .send()
            .await
            .map_err(|error| self.error(key, &error.to_string()))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .map_err(|error| self.error(key, &error.to_string()))?;
        Ok((status, text))
    }

    async fn put_retention(&self, key: &str, mode: LockMode, until: OffsetDateTime) -> Result<()> {
        let body = format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{}</Mode><RetainUntilDate>{}</RetainUntilDate></Retention>",
            mode.as_s3(),
            format_timestamp(until)
        );
        let (status, text) = self
            .request(reqwest::Method::PUT, key, body.into_bytes())
            .await?;
        if status == 200 || status == 204 {
            return Ok(());
        }
        Err(self.error(
            key,
            &format!("PutObjectRetention answered {status}: {text}"),
        ))
    }

    /// The retain-until date of an object's retention, if it has one.
    async fn retention_until(&self, key: &str) -> Result<Option<OffsetDateTime>> {
        let (status, text) = self.request(reqwest::Method::GET, key, Vec::new()).await?;
        if status != 200 {
            // No retention configured (or no object lock on the bucket).
            return Ok(None);
        }
        let Some(date) = xml_value(&text, "RetainUntilDate") else {
            return Ok(None);
        };
        OffsetDateTime::parse(date, &Rfc3339)
            .map(Some)
            .map_err(|_| self.error(key, &format!("unreadable RetainUntilDate {date:?}")))
    }

    fn error(&self, key: &str, reason: &str) -> RepoError {
        RepoError::Io {
            context: format!("object lock on {key}"),
            source: std::io::Error::other(reason.to_string()),
        }
    }
}

fn xml_value<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = text.find(&open)? + open.len();
    let end = text[start..].find(&format!("</{tag}>"))? + start;
    Some(text[start..end].trim())
}

/// SigV4 URI encoding of one path segment: everything but unreserved characters.
fn uri_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_paths_and_reads_retention_answers() {
        assert_eq!(
            uri_encode("2026-11-25T17:15:07Z"),
            "2026-11-25T17%3A15%3A07Z"
        );
        let answer = "<?xml version=\"1.0\"?><Retention><Mode>COMPLIANCE</Mode><RetainUntilDate>2030-01-01T00:00:00.000Z</RetainUntilDate></Retention>";
        assert_eq!(
            xml_value(answer, "RetainUntilDate"),
            Some("2030-01-01T00:00:00.000Z")
        );
        assert_eq!(xml_value(answer, "Missing"), None);
    }

    #[test]
    fn protection_expires_at_its_date_and_unreadable_dates_protect() {
        let now = OffsetDateTime::now_utc();
        let mut protection = Protection {
            snapshot: "vm@2026-01-01T00:00:00Z".into(),
            protected_at: format_timestamp(now),
            until: None,
            lock_mode: None,
        };
        assert!(protection.is_active(now));
        protection.until = Some(format_timestamp(now - Duration::from_secs(5)));
        assert!(!protection.is_active(now));
        protection.until = Some(format_timestamp(now + Duration::from_secs(5)));
        assert!(protection.is_active(now));
        protection.until = Some("soon".into());
        assert!(protection.is_active(now));
    }
}
