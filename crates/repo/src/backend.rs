//! Object storage behind a repository: `file://`, `s3://` and in-memory.
//!
//! Everything goes through `object_store`, so AWS S3, Ceph RGW, MinIO and Haven's own
//! storage node are the same code path. The only backend-specific behaviour is
//! durability on local disks: chunks are fsynced in the background while the backup
//! goes on ([`crate::local_sync`]) and [`Backend::barrier`] waits for them before the
//! index and manifest that point at them are written (those two are fsynced inline).

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, AwsCredential};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::error::{RepoError, Result};
use crate::exists_batcher::{DEFAULT_MAX_KEYS, DEFAULT_WINDOW, ExistsBatcher};
use crate::local_direct::DirectPut;
use crate::local_sync::LocalSyncer;
use crate::node_client::{Credentials, NodeClient};

/// Whether deferred local writes (chunks) still go through `O_DIRECT`; cleared for the
/// rest of the process the first time a file system refuses it.
static DIRECT_WRITES: AtomicBool = AtomicBool::new(true);
/// Whether whole chunks on `file://` are still read with `O_DIRECT` (see
/// `local_direct`); cleared for good when the file system refuses it.
static DIRECT_READS: AtomicBool = AtomicBool::new(true);

/// Whether a create-only write stored the object or found it already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// This call stored the object.
    Created,
    /// An object with this key existed; nothing was written.
    AlreadyExisted,
}

/// Durability wanted for one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Made durable later by [`Backend::barrier`] (chunks).
    Deferred,
    /// Durable when the call returns (indexes, manifests, config).
    Immediate,
}

/// Static S3 credentials for one backend (see [`Backend::from_url_with_credentials`]).
#[derive(Clone)]
pub struct S3Credentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token of temporary credentials, if any.
    pub session_token: Option<String>,
}

impl S3Credentials {
    /// Credentials of the secondary site, when its keys differ from the primary's
    /// `AWS_*`: `HAVEN_SECONDARY_AWS_ACCESS_KEY_ID`, `HAVEN_SECONDARY_AWS_SECRET_ACCESS_KEY`
    /// and optionally `HAVEN_SECONDARY_AWS_SESSION_TOKEN`. Replication writes and
    /// repairs read with them; `None` when neither key is set (the `AWS_*` ones apply).
    pub fn secondary_from_env() -> Result<Option<Self>> {
        let variable = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        match (
            variable("HAVEN_SECONDARY_AWS_ACCESS_KEY_ID"),
            variable("HAVEN_SECONDARY_AWS_SECRET_ACCESS_KEY"),
        ) {
            (None, None) => Ok(None),
            (Some(access_key_id), Some(secret_access_key)) => Ok(Some(Self {
                access_key_id,
                secret_access_key,
                session_token: variable("HAVEN_SECONDARY_AWS_SESSION_TOKEN"),
            })),
            _ => Err(RepoError::InvalidArgument(
                "set both HAVEN_SECONDARY_AWS_ACCESS_KEY_ID and HAVEN_SECONDARY_AWS_SECRET_ACCESS_KEY, or neither".into(),
            )),
        }
    }
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// A repository's storage location.
#[derive(Debug, Clone)]
pub struct Backend {
    store: Arc<dyn ObjectStore>,
    /// On `file://`, a twin of `store` that fsyncs every write.
    durable_store: Option<Arc<dyn ObjectStore>>,
    /// On `file://`, the root directory.
    local_root: Option<PathBuf>,
    /// On `file://`, background fsyncs of deferred writes.
    local_sync: Option<Arc<LocalSyncer>>,
    location: String,
    /// On `s3://` with an explicit endpoint, batches existence checks into the
    /// storage node's query (HEAD on plain S3); see `exists_batcher`.
    exists_batcher: Option<ExistsBatcher>,
    /// On `s3://` with an explicit endpoint, the client of a Haven storage
    /// node's extensions (which the endpoint may or may not serve).
    node: Option<NodeClient>,
    /// The URL's prefix with a trailing `/` (or empty): bucket keys of objects.
    key_prefix: String,
}

impl Backend {
    /// Opens the backend a repository URL names.
    ///
    /// - `file:///absolute/path` (or a bare path);
    /// - `s3://bucket[/prefix][?endpoint=URL&region=R&path_style=true|false]`, with
    ///   credentials from the usual `AWS_*` environment variables;
    /// - `memory://` (tests).
    ///
    /// With `create`, a missing local directory is created (for `repo init`).
    pub fn from_url(url: &str, create: bool) -> Result<Self> {
        Self::from_url_with_credentials(url, create, None)
    }

    /// Like [`Self::from_url`], with S3 credentials that replace the `AWS_*` ones for
    /// this backend only: the two sites of a replication usually have different keys.
    pub fn from_url_with_credentials(
        url: &str,
        create: bool,
        credentials: Option<&S3Credentials>,
    ) -> Result<Self> {
        let invalid = |reason: &str| RepoError::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if url == "memory://" {
            return Ok(Self::memory());
        }
        if !url.contains("://") {
            return Self::local(FsPath::new(url), url, create);
        }
        let parsed = url::Url::parse(url).map_err(|error| invalid(&error.to_string()))?;
        match parsed.scheme() {
            "file" => {
                let path = parsed
                    .to_file_path()
                    .map_err(|_| invalid("file URLs need an absolute path: file:///path"))?;
                Self::local(&path, url, create)
            }
            "s3" => Self::s3(&parsed, url, credentials),
            other => Err(invalid(&format!(
                "unsupported scheme {other:?} (use file:// or s3://)"
            ))),
        }
    }

    /// An in-memory backend for tests.
    pub fn memory() -> Self {
        Self {
            store: Arc::new(InMemory::new()),
            durable_store: None,
            local_root: None,
            local_sync: None,
            location: "memory://".into(),
            exists_batcher: None,
            node: None,
            key_prefix: String::new(),
        }
    }

    fn local(path: &FsPath, url: &str, create: bool) -> Result<Self> {
        let io = |context: String| {
            move |source| RepoError::Io {
                context: context.clone(),
                source,
            }
        };
        if create {
            std::fs::create_dir_all(path)
                .map_err(io(format!("cannot create {}", path.display())))?;
        }
        let root =
            std::fs::canonicalize(path).map_err(|_| RepoError::NotARepository(url.to_string()))?;
        let invalid = |error: object_store::Error| RepoError::InvalidUrl {
            url: url.to_string(),
            reason: error.to_string(),
        };
        let store = LocalFileSystem::new_with_prefix(&root).map_err(invalid)?;
        let durable = LocalFileSystem::new_with_prefix(&root)
            .map_err(invalid)?
            .with_fsync(true);
        Ok(Self {
            store: Arc::new(store),
            durable_store: Some(Arc::new(durable)),
            local_sync: Some(Arc::new(LocalSyncer::new(root.clone()))),
            local_root: Some(root),
            location: url.to_string(),
            exists_batcher: None,
            node: None,
            key_prefix: String::new(),
        })
    }

    fn s3(parsed: &url::Url, url: &str, credentials: Option<&S3Credentials>) -> Result<Self> {
        let invalid = |reason: String| RepoError::InvalidUrl {
            url: url.to_string(),
            reason,
        };
        let bucket = parsed
            .host_str()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| invalid("missing bucket: s3://bucket/prefix".into()))?;
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if let Some(credentials) = credentials {
            // The provider signs the S3 requests; the config values feed the existence
            // query's own signer (an empty token there means "none").
            let provider = object_store::StaticCredentialProvider::new(AwsCredential {
                key_id: credentials.access_key_id.clone(),
                secret_key: credentials.secret_access_key.clone(),
                token: credentials.session_token.clone(),
            });
            builder = builder
                .with_credentials(Arc::new(provider))
                .with_access_key_id(&credentials.access_key_id)
                .with_secret_access_key(&credentials.secret_access_key)
                .with_config(
                    AmazonS3ConfigKey::Token,
                    credentials.session_token.clone().unwrap_or_default(),
                );
        }
        // Before `endpoint`, whose `with_allow_http` edits the options this replaces.
        let ca_pem = match parsed.query_pairs().find(|(name, _)| name == "ca_file") {
            Some((_, path)) => {
                let (pem, options) = ca_file_options(&path).map_err(invalid)?;
                builder = builder.with_client_options(options);
                pem
            }
            None => Vec::new(),
        };
        let mut path_style = None;
        for (name, value) in parsed.query_pairs() {
            match name.as_ref() {
                "ca_file" => {}
                "endpoint" => {
                    builder = builder
                        .with_allow_http(value.starts_with("http://"))
                        .with_endpoint(value.as_ref());
                    path_style.get_or_insert(true);
                }
                "region" => builder = builder.with_region(value.as_ref()),
                "path_style" => path_style = Some(value == "true"),
                other => return Err(invalid(format!("unknown parameter {other:?}"))),
            }
        }
        if let Some(path_style) = path_style {
            builder = builder.with_virtual_hosted_style_request(!path_style);
        }
        let node = node_client(&builder, bucket, path_style == Some(true), &ca_pem)
            .map_err(|error| invalid(error.to_string()))?;
        let exists_batcher = node
            .clone()
            .map(|client| ExistsBatcher::new(Box::new(client), DEFAULT_WINDOW, DEFAULT_MAX_KEYS));
        let store: Arc<dyn ObjectStore> = Arc::new(
            builder
                .build()
                .map_err(|error| invalid(error.to_string()))?,
        );
        let prefix = parsed.path().trim_matches('/');
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            store
        } else {
            Arc::new(PrefixStore::new(store, prefix))
        };
        Ok(Self {
            store,
            durable_store: None,
            local_root: None,
            local_sync: None,
            location: url.to_string(),
            exists_batcher,
            node,
            key_prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
        })
    }

    /// The URL this backend was opened from, for messages.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The client of the storage node extensions, if this is an `s3://` URL with
    /// an explicit endpoint (which may still be a plain S3 server).
    pub(crate) fn node_client(&self) -> Option<&NodeClient> {
        self.node.as_ref()
    }

    /// The bucket key of repository key `key`.
    pub(crate) fn bucket_key(&self, key: &str) -> String {
        format!("{}{key}", self.key_prefix)
    }

    /// The local root directory of a `file://` backend.
    pub fn local_root(&self) -> Option<&FsPath> {
        self.local_root.as_deref()
    }

    /// [`Self::get`] for a pass that reads many chunks once (verify): on
    /// `file://` the chunk is read with `O_DIRECT`, without filling the page
    /// cache (see `local_direct`). Restores keep [`Self::get`]: measured, the
    /// kernel's buffered reads served their access pattern faster.
    pub async fn get_once(&self, key: &str, max_len: u64) -> Result<Bytes> {
        if let Some(root) = &self.local_root
            && DIRECT_READS.load(Ordering::Relaxed)
            && key.starts_with("chunks/")
            && is_plain_key(key)
        {
            let path = root.join(key);
            let read =
                tokio::task::spawn_blocking(move || crate::local_direct::read(&path, max_len))
                    .await
                    .map_err(crate::repository::join_error)?;
            match read {
                Ok(bytes) => return Ok(bytes),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    return Err(RepoError::NotFound(key.to_string()));
                }
                Err(error) if error.kind() == std::io::ErrorKind::InvalidData => {
                    return Err(RepoError::corrupt(key, error.to_string()));
                }
                Err(error) => {
                    if let Some(error) = direct_failure(key, "read", error, &DIRECT_READS) {
                        return Err(error);
                    }
                }
            }
        }
        self.get(key, max_len).await
    }

    /// Reads a whole object, refusing objects larger than `max_len` bytes.
    pub async fn get(&self, key: &str, max_len: u64) -> Result<Bytes> {
        let result = self
            .store
            .get(&Path::from(key))
            .await
            .map_err(|error| storage_error(key, error))?;
        if result.meta.size > max_len {
            return Err(RepoError::corrupt(
                key,
                format!(
                    "object is {} bytes, at most {max_len} expected",
                    result.meta.size
                ),
            ));
        }
        result
            .bytes()
            .await
            .map_err(|error| storage_error(key, error))
    }

    /// Whether an object exists. Concurrent calls on a storage node share one
    /// batch query; elsewhere (or if batches fail) this is a HEAD.
    pub async fn exists(&self, key: &str) -> Result<bool> {
        if let Some(batcher) = &self.exists_batcher
            && let Some(found) = batcher.exists(self.bucket_key(key)).await
        {
            return Ok(found);
        }
        match self.store.head(&Path::from(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(error) => Err(storage_error(key, error)),
        }
    }

    /// Writes an object only if no object has this key (`If-None-Match: *` on S3).
    pub async fn put_if_absent(
        &self,
        key: &str,
        data: Bytes,
        durability: Durability,
    ) -> Result<PutOutcome> {
        if let (Durability::Deferred, Some(root), Some(syncer)) =
            (durability, &self.local_root, &self.local_sync)
            && DIRECT_WRITES.load(Ordering::Relaxed)
            && is_plain_key(key)
        {
            let path = root.join(key);
            let direct_data = data.clone();
            let written = tokio::task::spawn_blocking(move || {
                crate::local_direct::put_create(&path, &direct_data)
            })
            .await
            .map_err(crate::repository::join_error)?;
            match written {
                Ok(DirectPut::Created) => {
                    syncer.after_write(key).await?;
                    return Ok(PutOutcome::Created);
                }
                Ok(DirectPut::AlreadyExisted) => return Ok(PutOutcome::AlreadyExisted),
                Err(error) => {
                    if let Some(error) = direct_failure(key, "write", error, &DIRECT_WRITES) {
                        return Err(error);
                    }
                }
            }
        }
        let store = match (durability, &self.durable_store) {
            (Durability::Immediate, Some(durable)) => durable,
            _ => &self.store,
        };
        let options = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match store
            .put_opts(&Path::from(key), PutPayload::from(data), options)
            .await
        {
            Ok(_) => {
                if let (Durability::Deferred, Some(syncer)) = (durability, &self.local_sync) {
                    syncer.after_write(key).await?;
                }
                Ok(PutOutcome::Created)
            }
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(PutOutcome::AlreadyExisted),
            Err(error) => Err(storage_error(key, error)),
        }
    }

    /// Replaces an object whatever is stored under its key, durably.
    ///
    /// Only verify-and-repair may call this, and only with a blob it has just checked
    /// (frame, authentication, digest) against the object's name: every other write in
    /// Haven is create-only, which is what makes crashes and races harmless. Named
    /// narrowly so that a new caller stands out in review.
    pub async fn overwrite_for_repair(&self, key: &str, data: Bytes) -> Result<()> {
        let store = self.durable_store.as_ref().unwrap_or(&self.store);
        let options = PutOptions {
            mode: PutMode::Overwrite,
            ..Default::default()
        };
        store
            .put_opts(&Path::from(key), PutPayload::from(data), options)
            .await
            .map(|_| ())
            .map_err(|error| storage_error(key, error))
    }

    /// Deletes an object; deleting a missing object succeeds.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(storage_error(key, error)),
        }
    }

    /// Keys of all objects under `prefix` (a folder-like prefix without trailing `/`).
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let prefix_path = Path::from(prefix);
        self.store
            .list(Some(&prefix_path))
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
            .map_err(|error| storage_error(prefix, error))
    }

    /// Keys and sizes of all objects under `prefix`, for copying between sites.
    pub async fn list_with_sizes(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        let prefix_path = Path::from(prefix);
        self.store
            .list(Some(&prefix_path))
            .map_ok(|meta| (meta.location.to_string(), meta.size))
            .try_collect()
            .await
            .map_err(|error| storage_error(prefix, error))
    }

    /// Makes every write so far durable before the caller publishes objects that point
    /// at them. Remote object stores acknowledge durably already; on a local disk this
    /// waits for the background fsyncs of chunks and syncs their directories.
    pub async fn barrier(&self) -> Result<()> {
        match &self.local_sync {
            Some(syncer) => syncer.barrier().await,
            None => Ok(()),
        }
    }

    /// Writes or replaces a lease, lock or protection record (`locks/…`,
    /// `gc/generation`, `protect/…`): records of who is working or what is kept now,
    /// the only mutable objects besides repairs. Never used for chunks, indexes or
    /// manifests, which are create-only.
    pub(crate) async fn put_lock_object(&self, key: &str, data: Bytes) -> Result<()> {
        let store = self.durable_store.as_ref().unwrap_or(&self.store);
        let options = PutOptions {
            mode: PutMode::Overwrite,
            ..Default::default()
        };
        store
            .put_opts(&Path::from(key), PutPayload::from(data), options)
            .await
            .map(|_| ())
            .map_err(|error| storage_error(key, error))
    }

    /// Objects under `prefix` with size and modification time, as a stream: garbage
    /// collection lists 10^8 chunks, which must never be collected into memory.
    pub(crate) fn list_meta(
        &self,
        prefix: &str,
    ) -> futures::stream::BoxStream<'static, Result<object_store::ObjectMeta>> {
        let owned_prefix = prefix.to_string();
        Box::pin(
            self.store
                .list(Some(&Path::from(prefix)))
                .map_err(move |error| storage_error(&owned_prefix, error)),
        )
    }
}

/// The PEM bytes of a repository URL's `ca_file`, and client options that trust its
/// certificates besides the system's (storage nodes with a private CA).
fn ca_file_options(
    path: &str,
) -> std::result::Result<(Vec<u8>, object_store::ClientOptions), String> {
    let pem =
        std::fs::read(path).map_err(|error| format!("cannot read ca_file {path}: {error}"))?;
    let roots = object_store::Certificate::from_pem_bundle(&pem)
        .map_err(|error| format!("ca_file {path}: {error}"))?;
    if roots.is_empty() {
        return Err(format!("ca_file {path} holds no certificate"));
    }
    // These options replace the builder's: carry over what `from_env` took from the
    // environment (proxy, timeouts, ...), as it reads it.
    // `vars_os`, not `vars`: a variable that is not Unicode must not panic here.
    let from_env = std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
        .filter(|(name, _)| name.starts_with("AWS_"))
        .filter_map(|(name, value)| match name.to_ascii_lowercase().parse() {
            Ok(AmazonS3ConfigKey::Client(key)) => Some((key, value)),
            _ => None,
        });
    let options = from_env.fold(
        object_store::ClientOptions::new(),
        |options, (key, value)| options.with_config(key, value),
    );
    let options = roots
        .into_iter()
        .fold(options, |options, root| options.with_root_certificate(root));
    Ok((pem, options))
}

/// A client of the node extensions for `s3://` URLs that may name a Haven
/// storage node: an explicit endpoint, path-style addressing and static keys
/// (its requests are signed with them; session tokens are plain AWS, which has
/// no such extensions).
fn node_client(
    builder: &AmazonS3Builder,
    bucket: &str,
    path_style: bool,
    ca_pem: &[u8],
) -> std::result::Result<Option<NodeClient>, crate::node_client::NodeClientError> {
    let config = |key| builder.get_config_value(&key).filter(|v| !v.is_empty());
    let (Some(endpoint), Some(access_key), Some(secret_key)) = (
        config(AmazonS3ConfigKey::Endpoint),
        config(AmazonS3ConfigKey::AccessKeyId),
        config(AmazonS3ConfigKey::SecretAccessKey),
    ) else {
        return Ok(None);
    };
    if !path_style || config(AmazonS3ConfigKey::Token).is_some() {
        return Ok(None);
    }
    let credentials = Credentials {
        access_key,
        secret_key,
        region: config(AmazonS3ConfigKey::Region).unwrap_or_else(|| "us-east-1".into()),
    };
    Ok(Some(NodeClient::with_roots(
        &endpoint,
        bucket,
        credentials,
        ca_pem,
    )?))
}

/// The error of a failed direct `verb` of `key`; `None` when the file system
/// refuses `O_DIRECT` (tmpfs): `switch` is then cleared for good and the caller
/// falls back to buffered I/O.
fn direct_failure(
    key: &str,
    verb: &str,
    error: std::io::Error,
    switch: &AtomicBool,
) -> Option<RepoError> {
    if error.kind() == std::io::ErrorKind::Unsupported {
        switch.store(false, Ordering::Relaxed);
        return None;
    }
    Some(RepoError::Io {
        context: format!("cannot {verb} {key}"),
        source: error,
    })
}

/// Whether `key` maps to a path below a `file://` root as it is (letters, digits
/// and `/`: the keys of chunks), so direct I/O may bypass `object_store`.
fn is_plain_key(key: &str) -> bool {
    key.bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || byte == b'/')
}

fn storage_error(key: &str, error: object_store::Error) -> RepoError {
    match error {
        object_store::Error::NotFound { .. } => RepoError::NotFound(key.to_string()),
        source => RepoError::Storage {
            key: key.to_string(),
            source,
        },
    }
}
