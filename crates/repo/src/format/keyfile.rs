//! Key files: the master key wrapped by a passphrase.
//!
//! `keys/ID` holds the master key encrypted with a key-encryption key derived from the
//! passphrase by Argon2id. Several key files may wrap the same master key (one per
//! operator or per passphrase); changing a passphrase rewrites one small file, never data.

mod kdf_memory;

use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{RepoError, Result};
use crate::format::crypto::{Aead, KEY_LEN, MasterKey, TAG_LEN, fill_random};
use kdf_memory::KdfMemory;

/// Version of the key-file layout.
pub const KEY_FILE_VERSION: u32 = 1;

/// Argon2id cost: 64 MiB and 3 passes, about a quarter of a second here, the cost
/// OWASP recommends for interactive logins.
const DEFAULT_MEMORY_KIB: u32 = 64 * 1024;
const DEFAULT_ITERATIONS: u32 = 3;
const DEFAULT_PARALLELISM: u32 = 1;
/// Upper bounds accepted when reading a key file, so a hostile file cannot make us
/// allocate gigabytes or spin for hours.
const MAX_MEMORY_KIB: u32 = 1024 * 1024;
const MAX_ITERATIONS: u32 = 64;
const MAX_PARALLELISM: u32 = 16;

/// Argon2id parameters as stored in a key file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KdfParams {
    /// Always `argon2id` in version 1.
    pub algorithm: String,
    /// Memory cost in KiB.
    pub memory_kib: u32,
    /// Number of passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
    /// Random salt, hex.
    pub salt: String,
}

/// The JSON document stored at `keys/ID`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyFile {
    /// Layout version, [`KEY_FILE_VERSION`].
    pub version: u32,
    /// How the passphrase becomes the key-encryption key.
    pub kdf: KdfParams,
    /// AES-256-GCM nonce, hex.
    pub nonce: String,
    /// The master key encrypted with the key-encryption key, tag appended, hex.
    pub wrapped_key: String,
}

impl KeyFile {
    /// Wraps `master` under `password`; `key_id` is bound into the ciphertext.
    pub fn wrap(master: &MasterKey, password: &[u8], key_id: &str) -> Result<Self> {
        let mut salt = [0u8; 16];
        fill_random(&mut salt)?;
        let kdf = KdfParams {
            algorithm: "argon2id".into(),
            memory_kib: DEFAULT_MEMORY_KIB,
            iterations: DEFAULT_ITERATIONS,
            parallelism: DEFAULT_PARALLELISM,
            salt: hex::encode(salt),
        };
        let kek = derive_kek(&kdf, password)?;
        let mut nonce = [0u8; 12];
        fill_random(&mut nonce)?;
        let mut wrapped = master.as_bytes().to_vec();
        Aead::new(kek.as_ref())?.seal_with_nonce(nonce, key_id.as_bytes(), &mut wrapped)?;
        Ok(Self {
            version: KEY_FILE_VERSION,
            kdf,
            nonce: hex::encode(nonce),
            wrapped_key: hex::encode(wrapped),
        })
    }

    /// Recovers the master key; a wrong password is [`RepoError::WrongPassword`].
    pub fn unwrap_key(&self, password: &[u8], key_id: &str, object: &str) -> Result<MasterKey> {
        let corrupt = |reason: &str| RepoError::corrupt(object, reason);
        if self.version != KEY_FILE_VERSION {
            return Err(corrupt("unsupported key file version"));
        }
        let kek = derive_kek(&self.kdf, password).map_err(|_| corrupt("bad kdf parameters"))?;
        let nonce: [u8; 12] = hex::decode(&self.nonce)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| corrupt("bad nonce"))?;
        let wrapped = hex::decode(&self.wrapped_key).map_err(|_| corrupt("bad hex"))?;
        if wrapped.len() != KEY_LEN + TAG_LEN {
            return Err(corrupt("wrapped key has the wrong length"));
        }
        let unwrapped = Aead::new(kek.as_ref())?
            .open_to_vec(nonce, key_id.as_bytes(), &wrapped)
            .map(Zeroizing::new)
            .ok_or(RepoError::WrongPassword)?;
        let bytes: [u8; KEY_LEN] = unwrapped[..]
            .try_into()
            .map_err(|_| corrupt("unwrapped key has the wrong length"))?;
        Ok(MasterKey::from_bytes(bytes))
    }
}

fn derive_kek(kdf: &KdfParams, password: &[u8]) -> Result<Zeroizing<[u8; KEY_LEN]>> {
    let bad = RepoError::Crypto("invalid argon2id parameters");
    if kdf.algorithm != "argon2id"
        || kdf.memory_kib > MAX_MEMORY_KIB
        || kdf.iterations > MAX_ITERATIONS
        || kdf.parallelism > MAX_PARALLELISM
    {
        return Err(bad);
    }
    let salt = hex::decode(&kdf.salt).map_err(|_| RepoError::Crypto("bad salt"))?;
    let params = Params::new(
        kdf.memory_kib,
        kdf.iterations,
        kdf.parallelism,
        Some(KEY_LEN),
    )
    .map_err(|_| RepoError::Crypto("invalid argon2id parameters"))?;
    let mut kek = Zeroizing::new([0u8; KEY_LEN]);
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let hashed = match KdfMemory::new(argon2.params().block_count()) {
        Some(memory) => {
            argon2.hash_password_into_with_memory(password, &salt, kek.as_mut(), memory)
        }
        None => argon2.hash_password_into(password, &salt, kek.as_mut()),
    };
    hashed.map_err(|_| RepoError::Crypto("argon2id failed"))?;
    Ok(kek)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_and_unwrap() {
        let master = MasterKey::generate().unwrap();
        let file = KeyFile::wrap(&master, b"secret", "k1").unwrap();
        let back = file.unwrap_key(b"secret", "k1", "keys/k1").unwrap();
        assert_eq!(back.as_bytes(), master.as_bytes());
        assert!(matches!(
            file.unwrap_key(b"wrong", "k1", "keys/k1"),
            Err(RepoError::WrongPassword)
        ));
        assert!(file.unwrap_key(b"secret", "k2", "keys/k1").is_err());
    }

    #[test]
    fn huge_page_memory_derives_the_same_key_as_argon2s_own() {
        for (memory_kib, parallelism) in [(8 * 1024, 1), (4 * 1024, 2)] {
            let kdf = KdfParams {
                algorithm: "argon2id".into(),
                memory_kib,
                iterations: 2,
                parallelism,
                salt: "000102030405060708090a0b0c0d0e0f".into(),
            };
            let params = Params::new(memory_kib, 2, parallelism, Some(KEY_LEN)).unwrap();
            let mut expected = [0u8; KEY_LEN];
            Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password_into(b"password", &hex::decode(&kdf.salt).unwrap(), &mut expected)
                .unwrap();
            assert_eq!(*derive_kek(&kdf, b"password").unwrap(), expected);
        }
    }

    #[test]
    fn hostile_parameters_are_refused() {
        let master = MasterKey::generate().unwrap();
        let mut file = KeyFile::wrap(&master, b"secret", "k1").unwrap();
        file.kdf.memory_kib = u32::MAX;
        assert!(matches!(
            file.unwrap_key(b"secret", "k1", "keys/k1"),
            Err(RepoError::Corrupt { .. })
        ));
    }
}
