//! A repository: config, key, and typed access to chunks, indexes and manifests.

pub(crate) mod key_slots;

use bytes::Bytes;
use time::OffsetDateTime;

use crate::error::{RepoError, Result, join_error};
use crate::format::blob::{self, BlobKind, HEADER_LEN, TRAILER_LEN};
use crate::format::chunk::ChunkId;
use crate::format::config::{FORMAT_NAME, FORMAT_VERSION, RepoConfig, validate_chunk_size};
use crate::format::crypto::{MasterKey, RepoKeys, TAG_LEN, fill_random};
use crate::format::index::FixedIndex;
use crate::format::keyfile::KeyFile;
use crate::format::manifest::{DiskEntry, Manifest, SnapshotId, SnapshotRef, format_timestamp};
use crate::storage::backend::{Backend, Durability, PutOutcome};
use key_slots::{label_here, slot_object, unlock};

const CONFIG_KEY: &str = "config";
const MAX_SMALL_OBJECT: u64 = 64 * 1024;
const MAX_MANIFEST: u64 = 16 * 1024 * 1024;
const BLOB_OVERHEAD: u64 = (HEADER_LEN + TAG_LEN + TRAILER_LEN) as u64;
/// Largest stored chunk accepted (any chunk size, plus frame and slack).
const MAX_CHUNK_BLOB: u64 = crate::format::config::MAX_CHUNK_SIZE as u64 + BLOB_OVERHEAD + 1024;
/// Largest disk an index without a manifest is read for (the worker's limit).
const MAX_UNREFERENCED_DISK: u64 = 16 << 40;

/// An open repository. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Repository {
    backend: Backend,
    config: RepoConfig,
    keys: RepoKeys,
    key_slot: String,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("location", &self.backend.location())
            .field("id", &self.config.id)
            .finish()
    }
}

impl Repository {
    /// Creates a repository: a fresh master key wrapped by `password`, then `config`.
    ///
    /// `config` is written last and create-only, so a crash leaves either no repository
    /// or a complete one, and two concurrent inits cannot both succeed.
    pub async fn init(backend: Backend, password: &[u8], chunk_size: u32) -> Result<Self> {
        validate_chunk_size(chunk_size)?;
        if backend.exists(CONFIG_KEY).await? {
            return Err(RepoError::AlreadyInitialized(backend.location().into()));
        }
        let master = MasterKey::generate()?;
        let keys = master.derive()?;
        let key_id = random_hex(16)?;
        let key_file = KeyFile::wrap(&master, password, &key_id, Some(label_here()))?;
        let key_json: Bytes = key_file.to_json()?.into();
        backend
            .put_if_absent(
                &slot_object(&key_id),
                key_json.clone(),
                Durability::Immediate,
            )
            .await?;
        // Every publication (config, indexes, manifests) relies on create-only writes.
        // Writing the new key slot a second time must find it there; a store that
        // ignores the condition replaces it with the same bytes instead, which harms
        // nothing, and is refused before any `config` makes this a repository.
        let again = backend
            .put_if_absent(&slot_object(&key_id), key_json, Durability::Immediate)
            .await?;
        if again == PutOutcome::Created {
            return Err(RepoError::NoCreateOnlyWrites(backend.location().into()));
        }

        let mut config = RepoConfig {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            id: random_hex(16)?,
            chunk_size,
            key_id: key_id.clone(),
            created: format_timestamp(OffsetDateTime::now_utc()),
            mac: String::new(),
        };
        config.mac = hex::encode(keys.config_mac(&config.authenticated_bytes()));
        let config_json = serde_json::to_vec_pretty(&config).map_err(json_error)?;
        let outcome = backend
            .put_if_absent(CONFIG_KEY, config_json.into(), Durability::Immediate)
            .await?;
        if outcome == PutOutcome::AlreadyExisted {
            return Err(RepoError::AlreadyInitialized(backend.location().into()));
        }
        Ok(Self {
            backend,
            config,
            keys,
            key_slot: key_id,
        })
    }

    /// Opens an existing repository with its password: with the key slot `config`
    /// names, or any other slot the password opens (see `key_slots`).
    pub async fn open(backend: Backend, password: &[u8]) -> Result<Self> {
        let config = read_config(&backend).await?;
        let unlocked = unlock(&backend, &config, password).await?;
        Ok(Self {
            backend,
            config,
            keys: unlocked.keys,
            key_slot: unlocked.slot,
        })
    }

    /// Id of the key slot the password opened (`keys/ID`).
    pub fn key_slot(&self) -> &str {
        &self.key_slot
    }

    /// Derived keys, for the modules that seal objects of their own (verify records).
    pub(crate) fn keys(&self) -> &RepoKeys {
        &self.keys
    }

    /// The storage behind this repository.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// The repository's config.
    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// Chunk size of new backups.
    pub fn chunk_size(&self) -> u32 {
        self.config.chunk_size
    }

    /// The id a chunk with this plaintext has in this repository.
    pub fn chunk_id(&self, data: &[u8]) -> ChunkId {
        ChunkId(self.keys.chunk_digest(data))
    }

    /// Compresses, encrypts and frames a chunk. CPU-bound: call from a blocking thread.
    pub fn seal_chunk(&self, id: &ChunkId, data: &[u8]) -> Result<Vec<u8>> {
        blob::seal(self.keys.blob_cipher(), BlobKind::Chunk, &id.0, data)
    }

    /// Checks and opens a chunk blob, verifying that its plaintext has id `id` (and,
    /// when given, the expected length). CPU-bound: call from a blocking thread.
    pub fn open_chunk(
        &self,
        id: &ChunkId,
        stored: &[u8],
        expected_len: Option<u64>,
    ) -> Result<Vec<u8>> {
        let key = id.object_key();
        let max = u64::from(crate::format::config::MAX_CHUNK_SIZE);
        let plain = blob::open(
            self.keys.blob_cipher(),
            &key,
            BlobKind::Chunk,
            &id.0,
            stored,
            max,
        )?;
        if expected_len.is_some_and(|expected| plain.len() as u64 != expected) {
            return Err(RepoError::corrupt(key, "chunk has the wrong length"));
        }
        if self.chunk_id(&plain) != *id {
            return Err(RepoError::corrupt(key, "content does not match its id"));
        }
        Ok(plain)
    }

    /// Whether the repository holds a chunk (cross-VM deduplication); a chunk found is
    /// made durable with the caller's writes, as the caller will reference it
    /// (`Backend::exists_to_reuse`).
    pub async fn chunk_exists(&self, id: &ChunkId) -> Result<bool> {
        self.backend.exists_to_reuse(&id.object_key()).await
    }

    /// Stores a sealed chunk unless it exists.
    pub async fn put_chunk(&self, id: &ChunkId, sealed: Vec<u8>) -> Result<PutOutcome> {
        self.backend
            .put_if_absent(&id.object_key(), sealed.into(), Durability::Deferred)
            .await
    }

    /// Fetches a chunk's stored blob without opening it.
    pub async fn get_chunk_blob(&self, id: &ChunkId) -> Result<Bytes> {
        self.backend.get(&id.object_key(), MAX_CHUNK_BLOB).await
    }

    /// [`Self::get_chunk_blob`] for a pass that reads each chunk once (verify),
    /// past the page cache where the backend allows ([`Backend::get_once`]).
    pub async fn get_chunk_blob_once(&self, id: &ChunkId) -> Result<Bytes> {
        self.backend
            .get_once(&id.object_key(), MAX_CHUNK_BLOB)
            .await
    }

    /// Fetches, checks and opens a chunk.
    pub async fn read_chunk(
        self: &std::sync::Arc<Self>,
        id: ChunkId,
        expected_len: Option<u64>,
    ) -> Result<Vec<u8>> {
        let stored = self.get_chunk_blob(&id).await?;
        let repo = self.clone();
        tokio::task::spawn_blocking(move || repo.open_chunk(&id, &stored, expected_len))
            .await
            .map_err(join_error)?
    }

    /// Reads a chunk once, past the page cache where the backend allows, and checks it
    /// fully without keeping its content; returns its stored length. Verify and repair
    /// both judge a chunk this way, so "good" means the same to both.
    pub(crate) async fn check_chunk(self: &std::sync::Arc<Self>, id: ChunkId) -> Result<u64> {
        let stored = self.get_chunk_blob_once(&id).await?;
        let len = stored.len() as u64;
        let repo = self.clone();
        tokio::task::spawn_blocking(move || repo.open_chunk(&id, &stored, None).map(|_| len))
            .await
            .map_err(join_error)?
    }

    /// Makes every chunk written so far durable; call before [`Self::write_index`].
    pub async fn barrier(&self) -> Result<()> {
        self.backend.barrier().await
    }

    /// Stores the index of one disk of a snapshot; returns its manifest entry fields
    /// `(key, digest)`.
    pub async fn write_index(
        &self,
        snapshot: &SnapshotId,
        disk: &str,
        index: &FixedIndex,
    ) -> Result<(String, String)> {
        let key = snapshot.index_key(disk);
        let plain = index.encode();
        let digest = hex::encode(self.keys.chunk_digest(&plain));
        let sealed = blob::seal(
            self.keys.blob_cipher(),
            BlobKind::Index,
            key.as_bytes(),
            &plain,
        )?;
        // An index left by a crashed backup at the same key is never referenced by a
        // manifest. If it holds the same slots (a retried backup of an unchanged
        // disk), it is kept: nothing needs replacing, which an append-only storage key
        // could not do. Otherwise it is replaced, which needs a key that may delete.
        if self
            .backend
            .put_if_absent(&key, sealed.clone().into(), Durability::Immediate)
            .await?
            == PutOutcome::AlreadyExisted
        {
            if self.stored_index_is(&key, &plain).await {
                return Ok((key, digest));
            }
            if let Err(error) = self.backend.delete(&key).await {
                if matches!(error, RepoError::NotPermitted { .. }) {
                    tracing::warn!(
                        %key,
                        "an index left by a crashed backup is in the way and this storage key may not replace it; `haven gc` with the delete key removes it once older than its margin"
                    );
                }
                return Err(error);
            }
            self.backend
                .put_if_absent(&key, sealed.into(), Durability::Immediate)
                .await?;
        }
        Ok((key, digest))
    }

    /// Whether the index stored at `key` opens to exactly `plain`.
    async fn stored_index_is(&self, key: &str, plain: &[u8]) -> bool {
        let limit = plain.len() as u64;
        let Ok(stored) = self.backend.get(key, limit + BLOB_OVERHEAD).await else {
            return false;
        };
        blob::open(
            self.keys.blob_cipher(),
            key,
            BlobKind::Index,
            key.as_bytes(),
            &stored,
            limit,
        )
        .is_ok_and(|stored_plain| stored_plain == plain)
    }

    /// Reads and checks the index of a disk named by a manifest.
    pub async fn read_index(&self, disk: &DiskEntry) -> Result<FixedIndex> {
        let stored = self.get_index_blob(disk).await?;
        self.open_index(disk, &stored)
    }

    /// Fetches the stored blob of a disk's index without opening it (repair).
    pub(crate) async fn get_index_blob(&self, disk: &DiskEntry) -> Result<Bytes> {
        let max_plain = FixedIndex::encoded_len(disk.size, disk.chunk_size);
        self.backend
            .get(&disk.index, max_plain + BLOB_OVERHEAD)
            .await
    }

    /// Checks and opens an index blob against its manifest entry.
    pub(crate) fn open_index(&self, disk: &DiskEntry, stored: &[u8]) -> Result<FixedIndex> {
        let max_plain = FixedIndex::encoded_len(disk.size, disk.chunk_size);
        let plain = blob::open(
            self.keys.blob_cipher(),
            &disk.index,
            BlobKind::Index,
            disk.index.as_bytes(),
            stored,
            max_plain,
        )?;
        if hex::encode(self.keys.chunk_digest(&plain)) != disk.index_digest {
            return Err(RepoError::corrupt(
                &disk.index,
                "index does not match the digest in its manifest",
            ));
        }
        let index = FixedIndex::decode(&plain, &disk.index)?;
        if index.disk_size() != disk.size || index.chunk_size() != disk.chunk_size {
            return Err(RepoError::corrupt(
                &disk.index,
                "index geometry differs from its manifest",
            ));
        }
        Ok(index)
    }

    /// Publishes a manifest: the commit point of a snapshot. Fails if another manifest
    /// exists under its name; finding this very manifest there (a duplicated delivery
    /// of the write, or a retry after its reply was lost) is success.
    pub async fn commit_manifest(&self, manifest: &Manifest) -> Result<SnapshotId> {
        let (id, sealed) = self.seal_manifest(manifest)?;
        let key = id.manifest_key();
        match self
            .backend
            .put_if_absent(&key, sealed.into(), Durability::Immediate)
            .await?
        {
            PutOutcome::Created => Ok(id),
            PutOutcome::AlreadyExisted => match self.read_manifest(&id).await {
                Ok(stored) if stored == *manifest => Ok(id),
                _ => Err(RepoError::AlreadyExists(key)),
            },
        }
    }

    /// Validates and seals a manifest without writing it: a cluster worker hands the
    /// sealed blob to the coordinator, which publishes it under its fenced commit
    /// (the coordinator holds no key and cannot read or forge it).
    pub fn seal_manifest(&self, manifest: &Manifest) -> Result<(SnapshotId, Vec<u8>)> {
        let id = manifest.id()?;
        let key = id.manifest_key();
        manifest.validate(&key)?;
        let plain = serde_json::to_vec(manifest).map_err(json_error)?;
        let sealed = blob::seal(
            self.keys.blob_cipher(),
            BlobKind::Manifest,
            key.as_bytes(),
            &plain,
        )?;
        Ok((id, sealed))
    }

    /// Reads and checks a manifest.
    pub async fn read_manifest(&self, id: &SnapshotId) -> Result<Manifest> {
        let stored = self.get_manifest_blob(id).await?;
        self.open_manifest(id, &stored)
    }

    /// Fetches a manifest's stored blob without opening it (repair).
    pub(crate) async fn get_manifest_blob(&self, id: &SnapshotId) -> Result<Bytes> {
        self.backend.get(&id.manifest_key(), MAX_MANIFEST).await
    }

    /// Checks and opens a manifest blob stored as snapshot `id`.
    pub(crate) fn open_manifest(&self, id: &SnapshotId, stored: &[u8]) -> Result<Manifest> {
        let key = id.manifest_key();
        let plain = blob::open(
            self.keys.blob_cipher(),
            &key,
            BlobKind::Manifest,
            key.as_bytes(),
            stored,
            MAX_MANIFEST,
        )?;
        parse_manifest(&plain, &key)
    }

    /// Committed snapshots, oldest first; all VMs when `vm` is `None`.
    pub async fn list_snapshots(&self, vm: Option<&str>) -> Result<Vec<SnapshotId>> {
        list_ids(
            &self.backend,
            "snapshots",
            vm,
            SnapshotId::from_manifest_key,
        )
        .await
    }

    /// Turns `VM@TIME` or `VM@latest` into a committed snapshot.
    pub async fn resolve(&self, reference: &SnapshotRef) -> Result<SnapshotId> {
        let snapshots = self.list_snapshots(Some(&reference.vm)).await?;
        let found = match &reference.timestamp {
            None => snapshots.last(),
            Some(timestamp) => snapshots.iter().find(|id| &id.timestamp == timestamp),
        };
        found.cloned().ok_or_else(|| {
            RepoError::NoSuchSnapshot(format!(
                "{}@{}",
                reference.vm,
                reference.timestamp.as_deref().unwrap_or("latest")
            ))
        })
    }

    /// Reads an index object that no manifest names yet (a backup between writing its
    /// index and its manifest), for garbage collection's mark: the blob is
    /// authenticated against its key, but there is no digest to compare with. Its size
    /// is bounded by the largest disk Haven backs up (16 TiB) at this repository's
    /// chunk size.
    pub(crate) async fn read_unreferenced_index(&self, key: &str) -> Result<FixedIndex> {
        let max_plain = FixedIndex::encoded_len(MAX_UNREFERENCED_DISK, self.config.chunk_size);
        let stored = self.backend.get(key, max_plain + BLOB_OVERHEAD).await?;
        let plain = blob::open(
            self.keys.blob_cipher(),
            key,
            BlobKind::Index,
            key.as_bytes(),
            &stored,
            max_plain,
        )?;
        FixedIndex::decode(&plain, key)
    }
}

/// Reads and parses `config` (not yet authenticated: that needs the key).
pub(crate) async fn read_config(backend: &Backend) -> Result<RepoConfig> {
    let config_bytes = match backend.get(CONFIG_KEY, MAX_SMALL_OBJECT).await {
        Ok(bytes) => bytes,
        Err(RepoError::NotFound(_)) => {
            return Err(RepoError::NotARepository(backend.location().into()));
        }
        Err(error) => return Err(error),
    };
    RepoConfig::parse(&config_bytes, backend.location())
}

pub(crate) fn random_hex(len: usize) -> Result<String> {
    let mut bytes = vec![0u8; len];
    fill_random(&mut bytes)?;
    Ok(hex::encode(bytes))
}

fn json_error(error: serde_json::Error) -> RepoError {
    RepoError::Io {
        context: "json encoding failed".into(),
        source: std::io::Error::other(error),
    }
}

/// The snapshot ids of the keys under `top/` (only `vm`'s when given), parsed by
/// `parse`, oldest first per VM: manifests (`snapshots/`) and a replica's tombstones
/// (`pruned/`) are listed the same way.
pub(crate) async fn list_ids(
    backend: &Backend,
    top: &str,
    vm: Option<&str>,
    parse: fn(&str) -> Option<SnapshotId>,
) -> Result<Vec<SnapshotId>> {
    let prefix = match vm {
        Some(vm) => {
            crate::format::manifest::validate_name(vm)?;
            format!("{top}/{vm}")
        }
        None => top.to_string(),
    };
    let mut ids: Vec<SnapshotId> = backend
        .list(&prefix)
        .await?
        .iter()
        .filter_map(|key| parse(key))
        .collect();
    ids.sort_by(|a, b| (&a.vm, a.time()).cmp(&(&b.vm, b.time())));
    Ok(ids)
}

/// A manifest's decrypted bytes read from `key`: parsed and validated.
pub(crate) fn parse_manifest(plain: &[u8], key: &str) -> Result<Manifest> {
    let manifest: Manifest = serde_json::from_slice(plain)
        .map_err(|error| RepoError::corrupt(key, format!("bad manifest: {error}")))?;
    manifest.validate(key)?;
    Ok(manifest)
}
