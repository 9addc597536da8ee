//! A repository's storage: one [`Backend`] over the implementation its URL names.
//!
//! Everything goes through `object_store`, so AWS S3, Ceph RGW, MinIO and Haven's own
//! storage node are the same code path. The implementation is chosen once, when the URL
//! is opened ([`BackendKind`]), and each keeps what is specific to it:
//!
//! - `memory://`: an in-memory store, for tests;
//! - `file://`: durability on a local disk (chunks fsynced in the background while the
//!   backup goes on, [`Backend::barrier`] waiting for them before the index and
//!   manifest that point at them, which are fsynced inline) and, unless opened with
//!   [`LocalIo::Buffered`], `O_DIRECT` chunk I/O with its fallback recorded per backend
//!   ([`super::local`]);
//! - `s3://`: any S3 server;
//! - `s3://` with an endpoint that may be a Haven storage node: S3, plus batched
//!   existence checks, chunk uploads as batch writes and batch transfers through the
//!   node's extensions, which fall back to plain S3 requests when the server does
//!   not serve them;
//! - `s3://` with several endpoints: the storage nodes of one site, each object on
//!   the members rendezvous hashing places it on (`super::placed`).

use std::path::Path as FsPath;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::exists_batcher::{DEFAULT_MAX_KEYS, DEFAULT_WINDOW, ExistsBatcher};
use super::local::{DirectOutcome, LocalIo, LocalStore};
use super::node_client::NodeClient;
use super::placed::Placed;
pub use super::placed::rebalance::RebalanceReport;
use super::put_batcher::{DEFAULT_LIMITS, PutBatcher};
use super::s3::{S3Credentials, S3Store};
use super::s3_refusal::S3Refusal;
use crate::error::{RepoError, Result};

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

/// Which implementation a [`Backend`] was opened as: what its URL and
/// [`OpenOptions`] chose, once, so tests can check they exercise the path they mean to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// `memory://`.
    Memory,
    /// `file://` with `O_DIRECT` chunk I/O (buffered where the file system refuses it).
    LocalDirect,
    /// `file://` through the page cache only.
    LocalBuffered,
    /// `s3://` on any S3 server, with S3 requests only.
    S3,
    /// `s3://` on an endpoint that may be a Haven storage node: its extensions are used,
    /// and plain S3 requests where the server turns out not to serve them.
    StorageNode,
    /// An `object_store` implementation handed in by the caller
    /// ([`Backend::over_object_store`]): fault-injecting wrappers in tests.
    ObjectStore,
    /// `s3://` with several `endpoint=`s: the storage nodes of one site, each object
    /// on `replicas` of them chosen by rendezvous hashing.
    Placed,
}

impl BackendKind {
    /// Whether a write is a round trip to a server that answers once the object is
    /// durable there (S3, storage nodes, and the wrappers tests put in front of
    /// stores), rather than a write into this machine's memory or files: writers
    /// keep more objects on their way to such a backend.
    pub fn is_remote(self) -> bool {
        !matches!(self, Self::Memory | Self::LocalDirect | Self::LocalBuffered)
    }
}

/// How [`Backend::open`] opens a URL; the default is what `haven` itself uses.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// Create a missing local directory (for `repo init` and replication targets).
    pub create: bool,
    /// S3 credentials that replace the `AWS_*` ones for this backend only: the two
    /// sites of a replication usually have different keys.
    pub credentials: Option<S3Credentials>,
    /// Chunk I/O on `file://`.
    pub local_io: LocalIo,
    /// Use no storage node extension even where the URL could name a node, so a node
    /// is treated as the plain S3 server it also is.
    pub plain_s3: bool,
}

/// A repository's storage location.
#[derive(Debug, Clone)]
pub struct Backend {
    location: String,
    implementation: Implementation,
}

/// The storage behind a [`Backend`], one variant per [`BackendKind`] family.
#[derive(Debug, Clone)]
enum Implementation {
    Memory(Arc<dyn ObjectStore>),
    /// A caller's store, used exactly as `Memory` is (no local durability, no S3
    /// extensions).
    Given(Arc<dyn ObjectStore>),
    Local(Arc<LocalStore>),
    S3(Arc<S3Store>),
    StorageNode(Arc<StorageNode>),
    Placed(Arc<Placed>),
}

/// An S3 endpoint used with a Haven storage node's extensions.
#[derive(Debug)]
struct StorageNode {
    s3: S3Store,
    /// Batches concurrent existence checks into the node's query (HEAD on plain S3).
    exists_batcher: ExistsBatcher,
    /// Batches concurrent chunk uploads into the node's batch writes (PUT on plain S3).
    put_batcher: PutBatcher,
    /// The client of the extensions (which the endpoint may or may not serve).
    client: NodeClient,
}

impl Backend {
    /// Opens the backend a repository URL names.
    ///
    /// - `file:///absolute/path` (or a bare path);
    /// - `s3://bucket[/prefix][?endpoint=URL&region=R&path_style=true|false]`, with
    ///   credentials from the usual `AWS_*` environment variables;
    /// - the same with several `endpoint=` parameters and `replicas=R` (default 2):
    ///   the storage nodes of one site, each object on `R` of them;
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
        let options = OpenOptions {
            create,
            credentials: credentials.cloned(),
            ..OpenOptions::default()
        };
        Self::open(url, &options)
    }

    /// Opens `url` as [`Self::from_url`] does, with every choice explicit: the one
    /// constructor behind the others, and the way to open a path Haven does not pick by
    /// itself (buffered local I/O, a storage node as plain S3) for tests.
    pub fn open(url: &str, options: &OpenOptions) -> Result<Self> {
        let invalid = |reason: &str| RepoError::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        if url == "memory://" {
            return Ok(Self::memory());
        }
        let local = |path: &FsPath| {
            let store = LocalStore::open(path, url, options.create, options.local_io)?;
            Ok(Self::with(url, Implementation::Local(Arc::new(store))))
        };
        if !url.contains("://") {
            return local(FsPath::new(url));
        }
        let parsed = url::Url::parse(url).map_err(|error| invalid(&error.to_string()))?;
        match parsed.scheme() {
            "file" => {
                let path = parsed
                    .to_file_path()
                    .map_err(|_| invalid("file URLs need an absolute path: file:///path"))?;
                local(&path)
            }
            "s3" if super::placed::names_several_members(&parsed) => {
                let placed = super::placed::open(&parsed, url, options)?;
                Ok(Self::with(url, Implementation::Placed(Arc::new(placed))))
            }
            "s3" => Self::open_s3(&parsed, url, options, None),
            other => Err(invalid(&format!(
                "unsupported scheme {other:?} (use file:// or s3://)"
            ))),
        }
    }

    // A several-node backend's methods call its members' (single-node backends), so
    // each dispatch to `Placed` boxes its future: the async recursion needs a size.

    /// Opens an `s3://` URL naming one endpoint, with `retry` instead of
    /// `object_store`'s default retries if given.
    fn open_s3(
        parsed: &url::Url,
        url: &str,
        options: &OpenOptions,
        retry: Option<object_store::RetryConfig>,
    ) -> Result<Self> {
        let (s3, node) = super::s3::open(
            parsed,
            url,
            options.credentials.as_ref(),
            !options.plain_s3,
            retry,
        )?;
        let implementation = match node {
            None => Implementation::S3(Arc::new(s3)),
            Some(client) => Implementation::StorageNode(Arc::new(StorageNode {
                s3,
                exists_batcher: ExistsBatcher::new(
                    Box::new(client.clone()),
                    DEFAULT_WINDOW,
                    DEFAULT_MAX_KEYS,
                ),
                put_batcher: PutBatcher::new(Box::new(client.clone()), DEFAULT_LIMITS),
                client,
            })),
        };
        Ok(Self::with(url, implementation))
    }

    /// Opens one member of a several-node site (`s3://` with a single endpoint) with
    /// `retry`: a member that does not answer must not hold a read up for the
    /// minutes another replica can serve it in.
    pub(crate) fn open_member(
        url: &str,
        options: &OpenOptions,
        retry: object_store::RetryConfig,
    ) -> Result<Self> {
        let parsed = url::Url::parse(url).map_err(|error| RepoError::InvalidUrl {
            url: url.to_string(),
            reason: error.to_string(),
        })?;
        Self::open_s3(&parsed, url, options, Some(retry))
    }

    /// An in-memory backend for tests.
    pub fn memory() -> Self {
        Self::with(
            "memory://",
            Implementation::Memory(Arc::new(InMemory::new())),
        )
    }

    /// A backend over any `object_store` implementation, used as `memory://` is: no
    /// local fsyncs, no storage node extensions. For stores that wrap another to
    /// change its behaviour, such as the fault-injecting store of
    /// `haven_testkit::unreliable`, which drives the whole repository through errors,
    /// lost replies and short reads.
    pub fn over_object_store(location: &str, store: Arc<dyn ObjectStore>) -> Self {
        Self::with(location, Implementation::Given(store))
    }

    fn with(location: &str, implementation: Implementation) -> Self {
        Self {
            location: location.to_string(),
            implementation,
        }
    }

    /// Which implementation the URL and options chose when this backend was opened.
    pub fn kind(&self) -> BackendKind {
        match &self.implementation {
            Implementation::Memory(_) => BackendKind::Memory,
            Implementation::Given(_) => BackendKind::ObjectStore,
            Implementation::Local(local) => match local.chosen_io() {
                LocalIo::Direct => BackendKind::LocalDirect,
                LocalIo::Buffered => BackendKind::LocalBuffered,
            },
            Implementation::S3(_) => BackendKind::S3,
            Implementation::StorageNode(_) => BackendKind::StorageNode,
            Implementation::Placed(_) => BackendKind::Placed,
        }
    }

    /// The storage nodes of a several-node URL (each with its id, the origin of its
    /// endpoint) and the replication factor; `None` for every other URL.
    pub fn members(&self) -> Option<(Vec<(String, Backend)>, usize)> {
        match &self.implementation {
            Implementation::Placed(placed) => Some((
                placed
                    .members()
                    .iter()
                    .map(|member| (member.id.clone(), member.backend.clone()))
                    .collect(),
                placed.replicas(),
            )),
            _ => None,
        }
    }

    /// The ids of the members that hold `key` under a several-node URL, first-ranked
    /// first (empty for every other URL): what tests and operators check a rebalance
    /// against.
    pub fn placement_of(&self, key: &str) -> Vec<String> {
        match &self.implementation {
            Implementation::Placed(placed) => placed
                .placement(key)
                .into_iter()
                .map(|index| placed.members()[index].id.clone())
                .collect(),
            _ => Vec::new(),
        }
    }

    /// After the members of a several-node URL changed: copies every object to its
    /// placement and removes copies outside it, reading also the nodes at `drain`
    /// (endpoints that left the URL; they end up empty). Copies come before deletes,
    /// so a killed pass loses nothing and the next one finishes its work. Any other
    /// URL has nothing to rebalance: an error says so.
    pub async fn rebalance(&self, drain: &[String]) -> Result<RebalanceReport> {
        match &self.implementation {
            Implementation::Placed(placed) => Box::pin(placed.rebalance(drain)).await,
            _ => Err(RepoError::InvalidArgument(format!(
                "{} names one storage location: only a URL with several endpoint= storage nodes is rebalanced",
                self.location
            ))),
        }
    }

    /// The URL this backend was opened from, for messages.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The client of the storage node extensions, if this is an `s3://` URL with
    /// an explicit endpoint (which may still be a plain S3 server).
    pub(crate) fn node_client(&self) -> Option<&NodeClient> {
        match &self.implementation {
            Implementation::StorageNode(node) => Some(&node.client),
            _ => None,
        }
    }

    /// The bucket key of repository key `key`.
    pub(crate) fn bucket_key(&self, key: &str) -> String {
        let prefix = match &self.implementation {
            Implementation::S3(s3) => s3.key_prefix.as_str(),
            Implementation::StorageNode(node) => node.s3.key_prefix.as_str(),
            Implementation::Memory(_)
            | Implementation::Given(_)
            | Implementation::Local(_)
            | Implementation::Placed(_) => "",
        };
        format!("{prefix}{key}")
    }

    /// The local root directory of a `file://` backend.
    pub fn local_root(&self) -> Option<&FsPath> {
        self.local().map(|local| local.root())
    }

    fn local(&self) -> Option<&LocalStore> {
        match &self.implementation {
            Implementation::Local(local) => Some(local),
            _ => None,
        }
    }

    /// Where reads, and writes whose durability is deferred or not needed, go.
    fn store(&self) -> &Arc<dyn ObjectStore> {
        match &self.implementation {
            Implementation::Memory(store) | Implementation::Given(store) => store,
            Implementation::Local(local) => &local.store,
            Implementation::S3(s3) => &s3.store,
            Implementation::StorageNode(node) => &node.s3.store,
            // Every method dispatches a several-node backend to `Placed` before it
            // needs a store: no single store may stand for the site.
            Implementation::Placed(_) => {
                unreachable!("a several-node backend has no single store")
            }
        }
    }

    /// Where writes that must be durable when the call returns go: remote stores
    /// acknowledge durably already; a local disk needs the fsyncing twin.
    fn durable_store(&self) -> &Arc<dyn ObjectStore> {
        match &self.implementation {
            Implementation::Local(local) => &local.durable_store,
            _ => self.store(),
        }
    }

    /// [`Self::get`] for a pass that reads many chunks once (verify): on
    /// `file://` the chunk is read with `O_DIRECT`, without filling the page
    /// cache (see `local_direct`). Restores keep [`Self::get`]: measured, the
    /// kernel's buffered reads served their access pattern faster.
    pub async fn get_once(&self, key: &str, max_len: u64) -> Result<Bytes> {
        if let Implementation::Placed(placed) = &self.implementation {
            return Box::pin(placed.get(key, max_len, true)).await;
        }
        if let Some(local) = self.local()
            && let DirectOutcome::Done(bytes) = local.read_direct(key, max_len).await?
        {
            return Ok(bytes);
        }
        self.get(key, max_len).await
    }

    /// Reads a whole object, refusing objects larger than `max_len` bytes.
    pub async fn get(&self, key: &str, max_len: u64) -> Result<Bytes> {
        if let Implementation::Placed(placed) = &self.implementation {
            return Box::pin(placed.get(key, max_len, false)).await;
        }
        let result = self
            .store()
            .get(&Path::from(key))
            .await
            .map_err(|error| self.storage_error(key, error))?;
        if result.meta.size > max_len {
            return Err(RepoError::corrupt(
                key,
                format!(
                    "object is {} bytes, at most {max_len} expected",
                    result.meta.size
                ),
            ));
        }
        let announced = result.range.end.saturating_sub(result.range.start);
        let bytes = result
            .bytes()
            .await
            .map_err(|error| self.storage_error(key, error))?;
        if bytes.len() as u64 != announced {
            // A reply cut short without an error (a client that does not check the
            // length): a transport fault, retried like one, never a corrupt object.
            let cut = format!(
                "the reply was cut short: {} of {announced} bytes",
                bytes.len()
            );
            return Err(self.storage_error(
                key,
                object_store::Error::Generic {
                    store: "haven",
                    source: cut.into(),
                },
            ));
        }
        Ok(bytes)
    }

    /// Whether an object exists. Concurrent calls on a storage node share one
    /// batch query; elsewhere (or if batches fail) this is a HEAD.
    pub async fn exists(&self, key: &str) -> Result<bool> {
        if let Implementation::Placed(placed) = &self.implementation {
            return Box::pin(placed.exists(key)).await;
        }
        if let Implementation::StorageNode(node) = &self.implementation
            && let Some(found) = node.exists_batcher.exists(self.bucket_key(key)).await
        {
            return Ok(found);
        }
        let path = Path::from(key);
        match self.store().head(&path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(error) => Err(self.head_error(key, &path, error).await),
        }
    }

    /// Whether an object exists, for a writer that will reference it instead of
    /// writing it (deduplication). On a local file system a found object is also made
    /// durable with this writer's own writes (its file fsynced in the background, its
    /// directory at the barrier): the process that wrote it may have been killed before
    /// its own barrier, leaving it in the page cache only, and a snapshot committed on
    /// top of it would then lose it at a power loss.
    pub async fn exists_to_reuse(&self, key: &str) -> Result<bool> {
        if let Implementation::Placed(placed) = &self.implementation {
            return Box::pin(placed.exists_to_reuse(key)).await;
        }
        let found = self.exists(key).await?;
        if found && let Some(local) = self.local() {
            local.after_deferred_write(key).await?;
        }
        Ok(found)
    }

    /// The error of a refused HEAD. Its answer has no body to say why, so on S3 a GET
    /// of the same key asks again: its S3 error code tells an unknown access key from
    /// a wrong secret or an invalid bucket name.
    async fn head_error(&self, key: &str, path: &Path, error: object_store::Error) -> RepoError {
        if let Some(bucket) = self.s3_bucket()
            && let Err(why) = self.store().get(path).await
            && S3Refusal::of(&why, &bucket, key).is_some()
        {
            return self.storage_error(key, why);
        }
        self.storage_error(key, error)
    }

    /// Writes an object only if no object has this key (`If-None-Match: *` on S3).
    /// Chunks ([`Durability::Deferred`]) bound for a storage node travel in batch
    /// writes shared with concurrent calls, which the node makes durable before it
    /// answers, as it does a PUT.
    pub async fn put_if_absent(
        &self,
        key: &str,
        data: Bytes,
        durability: Durability,
    ) -> Result<PutOutcome> {
        if let Implementation::Placed(placed) = &self.implementation {
            return Box::pin(placed.put_if_absent(key, data, durability)).await;
        }
        if let (Implementation::StorageNode(node), Durability::Deferred) =
            (&self.implementation, durability)
            && let Some(created) = node
                .put_batcher
                .create(self.bucket_key(key), data.clone())
                .await
        {
            return Ok(if created {
                PutOutcome::Created
            } else {
                PutOutcome::AlreadyExisted
            });
        }
        let deferred_local = match durability {
            Durability::Deferred => self.local(),
            Durability::Immediate => None,
        };
        if let Some(local) = deferred_local
            && let DirectOutcome::Done(created) = local.put_direct(key, &data).await?
        {
            if created {
                return Ok(PutOutcome::Created);
            }
            return self.already_existed(key, durability).await;
        }
        let store = match durability {
            Durability::Immediate => self.durable_store(),
            Durability::Deferred => self.store(),
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
                if let Some(local) = deferred_local {
                    local.after_deferred_write(key).await?;
                }
                Ok(PutOutcome::Created)
            }
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => {
                self.already_existed(key, durability).await
            }
            Err(error) => Err(self.storage_error(key, error)),
        }
    }

    /// A create-only put found the object there: the caller relies on it as if it had
    /// written it, so on a local file system it is made as durable as the put would
    /// have made it ([`Self::exists_to_reuse`] says why).
    async fn already_existed(&self, key: &str, durability: Durability) -> Result<PutOutcome> {
        if let Some(local) = self.local() {
            local.after_deferred_write(key).await?;
            if durability == Durability::Immediate {
                local.barrier().await?;
            }
        }
        Ok(PutOutcome::AlreadyExisted)
    }

    /// Replaces an object whatever is stored under its key, durably.
    ///
    /// Only verify-and-repair may call this, and only with a blob it has just checked
    /// (frame, authentication, digest) against the object's name: every other write in
    /// Haven is create-only, which is what makes crashes and races harmless. Named
    /// narrowly so that a new caller stands out in review.
    pub async fn overwrite_for_repair(&self, key: &str, data: Bytes) -> Result<()> {
        if let Implementation::Placed(placed) = &self.implementation {
            return Box::pin(placed.overwrite(key, data, true)).await;
        }
        self.overwrite_durably(key, data).await
    }

    /// Deletes an object; deleting a missing object succeeds.
    pub async fn delete(&self, key: &str) -> Result<()> {
        if let Implementation::Placed(placed) = &self.implementation {
            return Box::pin(placed.delete(key)).await;
        }
        match self.store().delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(self.storage_error(key, error)),
        }
    }

    /// Keys of all objects under `prefix` (a folder-like prefix without trailing `/`).
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        self.list_meta(prefix)
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
    }

    /// Keys and sizes of all objects under `prefix`, for copying between sites.
    pub async fn list_with_sizes(&self, prefix: &str) -> Result<Vec<(String, u64)>> {
        self.list_meta(prefix)
            .map_ok(|meta| (meta.location.to_string(), meta.size))
            .try_collect()
            .await
    }

    /// Makes every write so far durable before the caller publishes objects that point
    /// at them. Remote object stores acknowledge durably already; on a local disk this
    /// waits for the background fsyncs of chunks and syncs their directories.
    pub async fn barrier(&self) -> Result<()> {
        if let Implementation::Placed(placed) = &self.implementation {
            return Box::pin(placed.barrier()).await;
        }
        match self.local() {
            Some(local) => local.barrier().await,
            None => Ok(()),
        }
    }

    /// Writes or replaces a lease, lock or protection record (`locks/…`,
    /// `gc/generation`, `protect/…`): records of who is working or what is kept now,
    /// the only mutable objects besides repairs. Never used for chunks, indexes or
    /// manifests, which are create-only.
    pub(crate) async fn put_lock_object(&self, key: &str, data: Bytes) -> Result<()> {
        if let Implementation::Placed(placed) = &self.implementation {
            return Box::pin(placed.overwrite(key, data, false)).await;
        }
        self.overwrite_durably(key, data).await
    }

    /// The one overwriting write, behind the two narrowly named callers above.
    async fn overwrite_durably(&self, key: &str, data: Bytes) -> Result<()> {
        let options = PutOptions {
            mode: PutMode::Overwrite,
            ..Default::default()
        };
        self.durable_store()
            .put_opts(&Path::from(key), PutPayload::from(data), options)
            .await
            .map(|_| ())
            .map_err(|error| self.storage_error(key, error))
    }

    /// Objects under `prefix` with size and modification time, as a stream: garbage
    /// collection lists 10^8 chunks, which must never be collected into memory.
    pub(crate) fn list_meta(
        &self,
        prefix: &str,
    ) -> futures::stream::BoxStream<'static, Result<object_store::ObjectMeta>> {
        if let Implementation::Placed(placed) = &self.implementation {
            return placed.list(prefix);
        }
        let owned_prefix = prefix.to_string();
        let bucket = self.s3_bucket();
        Box::pin(
            self.store()
                .list(Some(&Path::from(prefix)))
                .map_err(move |error| storage_error(&owned_prefix, bucket.as_deref(), error)),
        )
    }

    /// The bucket of an `s3://` repository.
    fn s3_bucket(&self) -> Option<String> {
        match &self.implementation {
            Implementation::S3(_) | Implementation::StorageNode(_) => {
                url::Url::parse(&self.location)
                    .ok()
                    .and_then(|url| url.host_str().map(str::to_owned))
            }
            Implementation::Memory(_)
            | Implementation::Given(_)
            | Implementation::Local(_)
            | Implementation::Placed(_) => None,
        }
    }

    fn storage_error(&self, key: &str, error: object_store::Error) -> RepoError {
        storage_error(key, self.s3_bucket().as_deref(), error)
    }
}

/// The repository error of a storage error about `key`; `bucket` is that of an
/// `s3://` repository, so that a refusal the user must fix names it (a missing
/// bucket is a 404 too, but not a missing object).
fn storage_error(key: &str, bucket: Option<&str>, error: object_store::Error) -> RepoError {
    let refused = bucket.is_some_and(|bucket| S3Refusal::of(&error, bucket, key).is_some());
    match error {
        object_store::Error::NotFound { .. } if !refused => RepoError::NotFound(key.to_string()),
        source @ object_store::Error::PermissionDenied { .. }
            if source
                .to_string()
                .contains(haven_node_protocol::PERMISSION_REFUSAL) =>
        {
            RepoError::NotPermitted {
                key: key.to_string(),
                source: Box::new(source),
            }
        }
        error => RepoError::Storage {
            key: key.to_string(),
            bucket: bucket.map(str::to_owned),
            error: Box::new(error),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials() -> S3Credentials {
        S3Credentials {
            access_key_id: "key".into(),
            secret_access_key: "secret".into(),
            session_token: None,
        }
    }

    #[test]
    fn the_url_and_options_choose_the_implementation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap();
        let open = |url: &str, options: OpenOptions| Backend::open(url, &options).unwrap().kind();
        assert_eq!(
            open("memory://", OpenOptions::default()),
            BackendKind::Memory
        );
        assert_eq!(open(path, OpenOptions::default()), BackendKind::LocalDirect);
        let buffered = OpenOptions {
            local_io: LocalIo::Buffered,
            ..OpenOptions::default()
        };
        assert_eq!(open(path, buffered), BackendKind::LocalBuffered);
        let node_url = "s3://bucket/prefix?endpoint=http://127.0.0.1:9&region=r";
        let with_keys = OpenOptions {
            credentials: Some(credentials()),
            ..OpenOptions::default()
        };
        assert_eq!(open(node_url, with_keys.clone()), BackendKind::StorageNode);
        let plain = OpenOptions {
            plain_s3: true,
            ..with_keys.clone()
        };
        assert_eq!(open(node_url, plain), BackendKind::S3);
        let virtual_hosted = format!("{node_url}&path_style=false");
        assert_eq!(open(&virtual_hosted, with_keys), BackendKind::S3);
    }

    #[tokio::test]
    async fn buffered_and_direct_local_writes_are_create_only() {
        for local_io in [LocalIo::Direct, LocalIo::Buffered] {
            let dir = tempfile::tempdir().unwrap();
            let options = OpenOptions {
                local_io,
                ..OpenOptions::default()
            };
            let backend = Backend::open(dir.path().to_str().unwrap(), &options).unwrap();
            let key = "chunks/ab/abcdef";
            let put = |data: &'static [u8]| {
                backend.put_if_absent(key, Bytes::from_static(data), Durability::Deferred)
            };
            assert_eq!(put(b"first").await.unwrap(), PutOutcome::Created);
            assert_eq!(put(b"second").await.unwrap(), PutOutcome::AlreadyExisted);
            backend.barrier().await.unwrap();
            assert_eq!(backend.get_once(key, 100).await.unwrap(), "first");
            assert_eq!(backend.get(key, 100).await.unwrap(), "first");
        }
    }
}
