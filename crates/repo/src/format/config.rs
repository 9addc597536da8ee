//! The `config` object: what a reader must know before it can read anything else.

use serde::{Deserialize, Serialize};

use crate::error::{RepoError, Result};
use crate::format::crypto::RepoKeys;

/// The repository format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Value of the `format` field, so a stray JSON file is not mistaken for a repository.
pub const FORMAT_NAME: &str = "haven-repository";
/// Smallest and largest chunk sizes a repository may use.
pub const MIN_CHUNK_SIZE: u32 = 64 * 1024;
/// See [`MIN_CHUNK_SIZE`].
pub const MAX_CHUNK_SIZE: u32 = 16 * 1024 * 1024;
/// Chunk size chosen by measurement (see docs/benchmarks.md).
pub const DEFAULT_CHUNK_SIZE: u32 = 512 * 1024;

/// The plaintext `config` document.
///
/// It is readable without the key (it names the key file to use) and authenticated
/// with it (`mac`), so nobody without the key can change the chunk size or the id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepoConfig {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// Format version.
    pub version: u32,
    /// Random repository id, hex.
    pub id: String,
    /// Chunk size in bytes; a power of two between the limits above.
    pub chunk_size: u32,
    /// Name of the key file under `keys/`.
    pub key_id: String,
    /// When the repository was created, RFC 3339 UTC.
    pub created: String,
    /// Keyed BLAKE3 of [`RepoConfig::authenticated_bytes`], hex.
    pub mac: String,
}

impl RepoConfig {
    /// The bytes the MAC covers: every field but `created` and `mac`, one per line.
    pub fn authenticated_bytes(&self) -> Vec<u8> {
        format!(
            "{}\n{}\n{}\n{}\n{}\n",
            self.format, self.version, self.id, self.chunk_size, self.key_id
        )
        .into_bytes()
    }

    /// Parses the stored document, refusing other formats and versions before anything else.
    pub fn parse(bytes: &[u8], location: &str) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|error| RepoError::corrupt("config", format!("not json: {error}")))?;
        if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT_NAME) {
            return Err(RepoError::NotARepository(location.to_string()));
        }
        let version = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
        if version != u64::from(FORMAT_VERSION) {
            return Err(RepoError::UnsupportedVersion {
                found: u32::try_from(version).unwrap_or(u32::MAX),
                supported: FORMAT_VERSION,
            });
        }
        let config: RepoConfig = serde_json::from_value(value)
            .map_err(|error| RepoError::corrupt("config", error.to_string()))?;
        validate_chunk_size(config.chunk_size).map_err(|_| {
            RepoError::corrupt(
                "config",
                format!("invalid chunk size {}", config.chunk_size),
            )
        })?;
        if !is_safe_id(&config.key_id) {
            return Err(RepoError::corrupt("config", "invalid key id"));
        }
        Ok(config)
    }

    /// Checks the MAC once the key is known.
    pub fn check_mac(&self, keys: &RepoKeys) -> Result<()> {
        let expected = hex::encode(keys.config_mac(&self.authenticated_bytes()));
        if expected != self.mac {
            return Err(RepoError::corrupt(
                "config",
                "authentication failed (config altered or key file of another repository)",
            ));
        }
        Ok(())
    }
}

/// Refuses chunk sizes that are not a power of two within the supported range.
pub fn validate_chunk_size(chunk_size: u32) -> Result<()> {
    if !chunk_size.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        return Err(RepoError::InvalidName {
            name: chunk_size.to_string(),
            reason: "chunk size must be a power of two from 64 KiB to 16 MiB",
        });
    }
    Ok(())
}

/// Whether `id` can name a key slot: 1 to 64 hex digits, so `keys/ID` stays one plain path.
pub(crate) fn is_safe_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}
