//! Multipart uploads: each part is a complete object file of its own under
//! `uploads/ID/`; completion concatenates verified parts into one new object.

use std::path::PathBuf;

use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::{Store, WriteCondition, durable};
use crate::error::StoreError;
use crate::object_file::{BLOCK_SIZE, ObjectMeta, ObjectReader, ObjectWriter, PartRecord};

/// Smallest part other than the last (the S3 rule).
const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// Highest part number (the S3 rule).
pub const MAX_PART_NUMBER: i32 = 10_000;

/// The highest part number a client may upload.
pub fn uploads_max_part_number() -> i32 {
    MAX_PART_NUMBER
}

/// What was known when the upload started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadInfo {
    /// Target bucket.
    pub bucket: String,
    /// Target key.
    pub key: String,
    /// Access key that started it; only it may continue.
    pub owner: String,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    pub created: time::OffsetDateTime,
    /// Metadata for the final object (attributes, retention).
    pub meta: ObjectMeta,
    /// The checksum algorithm every part carries (`CRC32`, ...), if the upload
    /// named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_algorithm: Option<String>,
    /// `COMPOSITE` or `FULL_OBJECT`, with `checksum_algorithm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_type: Option<String>,
}

/// Sees every byte of an object being completed, in order, and then completes
/// its metadata (a full-object checksum), or refuses the completion.
pub trait WholeDigest: Send + 'static {
    /// The next bytes of the object.
    fn update(&mut self, data: &[u8]);
    /// Called once every byte was seen, before the object is written.
    fn finish(self: Box<Self>, meta: &mut ObjectMeta) -> Result<(), StoreError>;
}

/// What a completion request asks for.
pub struct Completion {
    /// (part number, ETag) of each part, in order.
    pub parts: Vec<(i32, String)>,
    /// The key of the part checksums kept in the object's part records (the
    /// upload's algorithm), if any.
    pub part_checksum: Option<&'static str>,
    /// A digest over the whole object, if one is wanted.
    pub digest: Option<Box<dyn WholeDigest>>,
}

/// A stored part.
#[derive(Debug, Clone)]
pub struct PartInfo {
    /// Part number.
    pub number: i32,
    /// Size in bytes.
    pub size: u64,
    /// MD5 hex.
    pub etag: String,
    /// Unix nanoseconds.
    pub last_modified_ns: i128,
    /// Its verified checksums, by algorithm key.
    pub checksums: std::collections::BTreeMap<String, String>,
}

impl Store {
    fn upload_dir(&self, upload_id: &str) -> Result<PathBuf, StoreError> {
        let valid = upload_id.len() == 32 && upload_id.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid {
            return Err(StoreError::NoSuchUpload);
        }
        Ok(self.dirs[self.upload_home(upload_id)]
            .join("uploads")
            .join(upload_id))
    }

    /// Index of the data directory that holds upload `upload_id`.
    fn upload_home(&self, upload_id: &str) -> usize {
        super::placement::place_upload(upload_id, self.dirs.len())
    }

    /// Starts writing a part of upload `upload_id` in the `tmp/` of the
    /// directory that holds the upload.
    pub fn new_part_writer(&self, upload_id: &str) -> Result<ObjectWriter, StoreError> {
        self.upload_dir(upload_id)?;
        Ok(ObjectWriter::create(
            self.temp_path_in(self.upload_home(upload_id)),
        )?)
    }

    /// Starts an upload and returns its id.
    pub async fn create_upload(&self, info: &UploadInfo) -> Result<String, StoreError> {
        self.bucket_config(&info.bucket).await?;
        crate::keypath::key_to_path(&info.key)?;
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        let id = hex::encode(id);
        let dir = self.upload_dir(&id)?;
        let json =
            serde_json::to_vec(info).map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
        let home = self.upload_home(&id);
        let temp = self.temp_path_in(home);
        let uploads = self.dirs[home].join("uploads");
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir(&dir)?;
            durable::sync_dir(&uploads)?;
            durable::write_atomic(&dir.join("upload.json"), &temp, &json)
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
        Ok(id)
    }

    /// Reads an upload's settings, checking it belongs to this bucket and key.
    pub async fn upload_info(
        &self,
        upload_id: &str,
        bucket: &str,
        key: &str,
    ) -> Result<UploadInfo, StoreError> {
        let path = self.upload_dir(upload_id)?.join("upload.json");
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NoSuchUpload);
            }
            Err(error) => return Err(error.into()),
        };
        let info: UploadInfo = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Corrupt(format!("upload.json: {e}")))?;
        if info.bucket != bucket || info.key != key {
            return Err(StoreError::NoSuchUpload);
        }
        Ok(info)
    }

    /// Stores a finished part file (written with [`Store::new_part_writer`]).
    pub async fn commit_part(
        &self,
        upload_id: &str,
        number: i32,
        temp: PathBuf,
    ) -> Result<(), StoreError> {
        let dir = self.upload_dir(upload_id)?;
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let target = dir.join(format!("part-{number:05}"));
            let result = std::fs::rename(&temp, &target);
            if result.is_err() {
                let _ = std::fs::remove_file(&temp);
            }
            result?;
            durable::sync_dir(&dir)
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))??;
        Ok(())
    }

    /// Lists the stored parts in order.
    pub async fn list_parts(&self, upload_id: &str) -> Result<Vec<PartInfo>, StoreError> {
        let dir = self.upload_dir(upload_id)?;
        let result = tokio::task::spawn_blocking(move || -> Result<Vec<PartInfo>, StoreError> {
            let mut parts = Vec::new();
            let read = match std::fs::read_dir(&dir) {
                Ok(read) => read,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    return Err(StoreError::NoSuchUpload);
                }
                Err(error) => return Err(error.into()),
            };
            for entry in read {
                let entry = entry?;
                let name = entry.file_name();
                let Some(number) = name
                    .to_str()
                    .and_then(|n| n.strip_prefix("part-"))
                    .and_then(|n| n.parse().ok())
                else {
                    continue;
                };
                let reader = ObjectReader::open(&entry.path())?;
                parts.push(PartInfo {
                    number,
                    size: reader.meta.size,
                    etag: reader.meta.etag.clone(),
                    last_modified_ns: reader.meta.last_modified_ns,
                    checksums: reader.meta.checksums.clone(),
                });
            }
            parts.sort_by_key(|p| p.number);
            Ok(parts)
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))?;
        result.map_err(|e| self.note(e))
    }

    /// Concatenates the named parts into the final object and publishes it.
    /// Returns the final metadata.
    pub async fn complete_upload(
        &self,
        upload_id: &str,
        info: UploadInfo,
        completion: Completion,
        condition: &WriteCondition,
    ) -> Result<ObjectMeta, StoreError> {
        let Completion {
            parts,
            part_checksum,
            mut digest,
        } = completion;
        if parts.is_empty() {
            return Err(StoreError::InvalidPart(
                "at least one part is required".to_owned(),
            ));
        }
        if parts.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(StoreError::InvalidPartOrder);
        }
        let dir = self.upload_dir(upload_id)?;
        let writer = self.new_writer(&info.bucket, &info.key)?;
        let mut meta = info.meta.clone();
        meta.parts.clear();
        let part_dir = dir.clone();
        let built =
            tokio::task::spawn_blocking(move || -> Result<(PathBuf, ObjectMeta), StoreError> {
                let mut writer: ObjectWriter = writer;
                let mut md5_of_md5s = Vec::with_capacity(parts.len() * 16);
                let last = parts.len() - 1;
                for (index, (number, etag)) in parts.iter().enumerate() {
                    let path = part_dir.join(format!("part-{number:05}"));
                    let reader = match ObjectReader::open(&path) {
                        Ok(reader) => reader,
                        Err(crate::object_file::ObjectFileError::Io(e))
                            if e.kind() == std::io::ErrorKind::NotFound =>
                        {
                            return Err(StoreError::InvalidPart(format!(
                                "part {number} was not uploaded"
                            )));
                        }
                        Err(error) => return Err(error.into()),
                    };
                    if reader.meta.etag != etag.trim_matches('"') {
                        return Err(StoreError::InvalidPart(format!(
                            "part {number} has another etag"
                        )));
                    }
                    if index != last && reader.meta.size < MIN_PART_SIZE {
                        return Err(StoreError::EntityTooSmall);
                    }
                    for block in 0..reader.meta.size.div_ceil(BLOCK_SIZE) {
                        let data = reader.read_block(block)?;
                        if let Some(digest) = digest.as_mut() {
                            digest.update(&data);
                        }
                        writer.write(&data)?;
                    }
                    let part_md5 = hex::decode(&reader.meta.etag)
                        .map_err(|_| StoreError::Corrupt(format!("part {number} etag")))?;
                    md5_of_md5s.extend_from_slice(&part_md5);
                    meta.parts.push(PartRecord {
                        size: reader.meta.size,
                        checksums: part_checksum
                            .and_then(|key| {
                                let value = reader.meta.checksums.get(key)?;
                                Some((key.to_owned(), value.clone()))
                            })
                            .into_iter()
                            .collect(),
                    });
                }
                if let Some(digest) = digest {
                    digest.finish(&mut meta)?;
                }
                let mut md5 = crate::md5::Md5::new();
                md5.update(&md5_of_md5s);
                meta.etag = format!("{}-{}", hex::encode(md5.finalize()), parts.len());
                meta.parts_count = u32::try_from(parts.len()).ok();
                meta.last_modified_ns = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
                Ok(writer.finish(meta)?)
            })
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
            .map_err(|e| self.note(e))?;
        let (temp, meta) = built;
        self.commit(&info.bucket, &info.key, temp, condition)
            .await?;
        self.abort_upload(upload_id).await?;
        Ok(meta)
    }

    /// Removes an upload and its parts.
    pub async fn abort_upload(&self, upload_id: &str) -> Result<(), StoreError> {
        let dir = self.upload_dir(upload_id)?;
        let trash = self.temp_path_in(self.upload_home(upload_id));
        tokio::task::spawn_blocking(move || -> Result<(), StoreError> {
            match std::fs::rename(&dir, &trash) {
                Ok(()) => {}
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                    return Err(StoreError::NoSuchUpload);
                }
                Err(error) => return Err(error.into()),
            }
            std::fs::remove_dir_all(&trash)?;
            Ok(())
        })
        .await
        .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
    }

    /// Lists uploads in progress for a bucket: (key, id, created).
    pub async fn list_uploads(
        &self,
        bucket: &str,
    ) -> Result<Vec<(String, String, time::OffsetDateTime)>, StoreError> {
        let mut out = Vec::new();
        for root in &self.dirs {
            let mut dir = tokio::fs::read_dir(root.join("uploads")).await?;
            while let Some(entry) = dir.next_entry().await? {
                let Ok(bytes) = tokio::fs::read(entry.path().join("upload.json")).await else {
                    continue;
                };
                let Ok(info) = serde_json::from_slice::<UploadInfo>(&bytes) else {
                    continue;
                };
                if info.bucket == bucket
                    && let Some(id) = entry.file_name().to_str()
                {
                    out.push((info.key, id.to_owned(), info.created));
                }
            }
        }
        out.sort();
        Ok(out)
    }
}
