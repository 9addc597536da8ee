//! Keys and authenticated encryption.
//!
//! A repository has one random 256-bit master key. Everything else is derived from it
//! with BLAKE3's key derivation, so one secret protects the whole repository and no
//! derived key can be turned back into another:
//! - the chunk-id key makes chunk ids keyed BLAKE3 digests, so ids reveal nothing about
//!   the data to whoever can list the storage;
//! - the blob key encrypts every blob with AES-256-GCM (hardware accelerated on every
//!   x86-64 and arm64 server Haven targets);
//! - the config key authenticates the plaintext `config` object.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use zeroize::Zeroizing;

use crate::error::{RepoError, Result};

/// Length in bytes of the master key and of every derived key.
pub const KEY_LEN: usize = 32;
/// Length of the authentication tag appended to every ciphertext.
pub const TAG_LEN: usize = 16;

const CONTEXT_CHUNK_ID: &str = "haven 2026-11 chunk id v1";
const CONTEXT_BLOB: &str = "haven 2026-11 blob encryption v1";
const CONTEXT_CONFIG: &str = "haven 2026-11 config authentication v1";

/// The secret that opens a repository. Held only in memory, wiped on drop.
#[derive(Clone)]
pub struct MasterKey(Zeroizing<[u8; KEY_LEN]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// Draws a fresh key from the operating system's random generator.
    pub fn generate() -> Result<Self> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        fill_random(bytes.as_mut())?;
        Ok(Self(bytes))
    }

    /// Wraps raw key bytes, as unwrapped from a key file.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The raw key bytes, for wrapping into a key file.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Derives the keys that the repository uses day to day.
    pub fn derive(&self) -> Result<RepoKeys> {
        let chunk_id = blake3::derive_key(CONTEXT_CHUNK_ID, self.as_bytes());
        let blob = Zeroizing::new(blake3::derive_key(CONTEXT_BLOB, self.as_bytes()));
        let config = blake3::derive_key(CONTEXT_CONFIG, self.as_bytes());
        Ok(RepoKeys {
            chunk_id: blake3::Hasher::new_keyed(&chunk_id),
            blob: Aead::new(blob.as_ref())?,
            config: blake3::Hasher::new_keyed(&config),
        })
    }
}

/// The derived keys, ready to use.
pub struct RepoKeys {
    chunk_id: blake3::Hasher,
    blob: Aead,
    config: blake3::Hasher,
}

impl RepoKeys {
    /// Keyed BLAKE3 of a chunk's plaintext: its id in the repository.
    pub fn chunk_digest(&self, data: &[u8]) -> [u8; 32] {
        let mut hasher = self.chunk_id.clone();
        hasher.update(data);
        *hasher.finalize().as_bytes()
    }

    /// MAC that binds the plaintext `config` object to the master key.
    pub fn config_mac(&self, data: &[u8]) -> [u8; 32] {
        let mut hasher = self.config.clone();
        hasher.update(data);
        *hasher.finalize().as_bytes()
    }

    /// The blob cipher.
    pub fn blob_cipher(&self) -> &Aead {
        &self.blob
    }
}

/// AES-256-GCM with random 96-bit nonces.
///
/// Random nonces are safe here: even 10^10 blobs under one key leave the probability of
/// a nonce collision below 2^-30.
pub struct Aead {
    key: LessSafeKey,
}

impl Aead {
    /// Builds the cipher from a 256-bit key.
    pub fn new(key: &[u8]) -> Result<Self> {
        let unbound =
            UnboundKey::new(&AES_256_GCM, key).map_err(|_| RepoError::Crypto("bad key length"))?;
        Ok(Self {
            key: LessSafeKey::new(unbound),
        })
    }

    /// Encrypts `in_out` in place and appends the tag.
    ///
    /// The caller draws `nonce` with [`fill_random`] so that it can place the nonce inside
    /// the authenticated header before sealing.
    pub fn seal_with_nonce(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut Vec<u8>,
    ) -> Result<()> {
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), in_out)
            .map_err(|_| RepoError::Crypto("encryption failed"))
    }

    /// Encrypts `in_out` in place and returns the tag, for callers that framed the
    /// payload in a buffer of their own (no reallocation, no copy).
    pub fn seal_slice_with_nonce(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN]> {
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), in_out)
            .map_err(|_| RepoError::Crypto("encryption failed"))?;
        tag.as_ref()
            .try_into()
            .map_err(|_| RepoError::Crypto("unexpected tag length"))
    }

    /// Decrypts `sealed` (ciphertext followed by tag) into a new buffer, reading the
    /// input where it is (a blob fetched as shared `Bytes` needs no mutable copy
    /// first); `None` when authentication fails. The only way to decrypt: callers that
    /// hold secrets in the result wrap it in `Zeroizing`.
    pub fn open_to_vec(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        sealed: &[u8],
    ) -> Option<Vec<u8>> {
        let len = sealed.len().checked_sub(TAG_LEN)?;
        let (ciphertext, tag) = sealed.split_at(len);
        let mut plain = vec![0u8; len];
        self.key
            .open_separate_gather(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                ciphertext,
                tag,
                &mut plain,
            )
            .ok()?;
        Some(plain)
    }
}

/// Fills `buf` from the operating system's cryptographic random generator.
pub fn fill_random(buf: &mut [u8]) -> Result<()> {
    aws_lc_rs::rand::fill(buf).map_err(|_| RepoError::Crypto("random generator failed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_open_round_trips_and_detects_tampering() {
        let keys = MasterKey::generate().unwrap().derive().unwrap();
        let cipher = keys.blob_cipher();
        let mut data = b"hello haven".to_vec();
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce).unwrap();
        cipher.seal_with_nonce(nonce, b"aad", &mut data).unwrap();
        assert_eq!(data.len(), 11 + TAG_LEN);

        let mut flipped = data.clone();
        flipped[3] ^= 1;
        assert_eq!(
            cipher.open_to_vec(nonce, b"aad", &data).as_deref(),
            Some(&b"hello haven"[..])
        );
        assert!(cipher.open_to_vec(nonce, b"other", &data).is_none());
        assert!(cipher.open_to_vec(nonce, b"aad", &flipped).is_none());
        let mut tag_flipped = data.clone();
        tag_flipped[11] ^= 1;
        assert!(cipher.open_to_vec(nonce, b"aad", &tag_flipped).is_none());
        assert!(
            cipher
                .open_to_vec(nonce, b"aad", &data[..TAG_LEN - 1])
                .is_none()
        );
    }

    #[test]
    fn digests_depend_on_the_key() {
        let a = MasterKey::generate().unwrap().derive().unwrap();
        let b = MasterKey::generate().unwrap().derive().unwrap();
        assert_eq!(a.chunk_digest(b"x"), a.chunk_digest(b"x"));
        assert_ne!(a.chunk_digest(b"x"), b.chunk_digest(b"x"));
        assert_ne!(a.chunk_digest(b"x"), *blake3::hash(b"x").as_bytes());
    }
}
