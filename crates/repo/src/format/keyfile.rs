//! Key files: the master key wrapped by a passphrase.
//!
//! `keys/ID` holds the master key encrypted with a key-encryption key derived from the
//! passphrase by Argon2id. Several key files may wrap the same master key (one per
//! operator or per passphrase); changing a passphrase rewrites one small file, never data.
//!
//! Opening refuses a key file whose Argon2id cost is below [`MIN_MEMORY_KIB`] and
//! [`MIN_ITERATIONS`] before deriving anything: Haven has only ever written its
//! defaults, so a cheaper file was written by someone else, and a password typed into it
//! would be cheap to guess offline. The optional label (when and where the key was
//! made) is bound into the ciphertext's associated data, so it cannot be altered to
//! make an operator remove the wrong key.

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
/// Least Argon2id memory (KiB) a key file may use to be opened: Haven's default, the
/// only cost it has ever written.
pub const MIN_MEMORY_KIB: u32 = DEFAULT_MEMORY_KIB;
/// Least number of Argon2id passes a key file may use to be opened (Haven's default).
pub const MIN_ITERATIONS: u32 = DEFAULT_ITERATIONS;
const _: () = assert!(MIN_MEMORY_KIB <= DEFAULT_MEMORY_KIB && MIN_ITERATIONS <= DEFAULT_ITERATIONS);
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

impl KdfParams {
    /// Refuses parameters below the minimum, naming the key slot: such a file was not
    /// written by Haven and would make the password cheap to attack.
    pub fn check_minimum(&self, key_id: &str) -> Result<()> {
        if self.memory_kib < MIN_MEMORY_KIB || self.iterations < MIN_ITERATIONS {
            return Err(RepoError::WeakKeyFile {
                key_id: key_id.to_string(),
                memory_kib: self.memory_kib,
                iterations: self.iterations,
                min_memory_kib: MIN_MEMORY_KIB,
                min_iterations: MIN_ITERATIONS,
            });
        }
        Ok(())
    }
}

/// Who made a key and when, shown by `haven key list`. Informational, but
/// authenticated: it is part of the wrapped key's associated data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyLabel {
    /// When the key was added, RFC 3339 UTC.
    pub created: String,
    /// Host name of the machine that added it.
    #[serde(default)]
    pub host: String,
    /// User name of whoever added it.
    #[serde(default)]
    pub user: String,
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
    /// When and where the key was made; absent in key files of older Haven versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<KeyLabel>,
}

impl KeyFile {
    /// Wraps `master` under `password`; `key_id` and `label` are bound into the
    /// ciphertext.
    pub fn wrap(
        master: &MasterKey,
        password: &[u8],
        key_id: &str,
        label: Option<KeyLabel>,
    ) -> Result<Self> {
        Self::wrap_with_cost(
            master,
            password,
            key_id,
            label,
            DEFAULT_MEMORY_KIB,
            DEFAULT_ITERATIONS,
        )
    }

    /// [`Self::wrap`] at another Argon2id cost: only the crate's tests write key files
    /// below the minimum, to check that opening refuses them.
    pub(crate) fn wrap_with_cost(
        master: &MasterKey,
        password: &[u8],
        key_id: &str,
        label: Option<KeyLabel>,
        memory_kib: u32,
        iterations: u32,
    ) -> Result<Self> {
        let mut salt = [0u8; 16];
        fill_random(&mut salt)?;
        let kdf = KdfParams {
            algorithm: "argon2id".into(),
            memory_kib,
            iterations,
            parallelism: DEFAULT_PARALLELISM,
            salt: hex::encode(salt),
        };
        let kek = derive_kek(&kdf, password)?;
        let mut nonce = [0u8; 12];
        fill_random(&mut nonce)?;
        let mut file = Self {
            version: KEY_FILE_VERSION,
            kdf,
            nonce: hex::encode(nonce),
            wrapped_key: String::new(),
            label,
        };
        let mut wrapped = master.as_bytes().to_vec();
        Aead::new(kek.as_ref())?.seal_with_nonce(
            nonce,
            &file.associated_data(key_id)?,
            &mut wrapped,
        )?;
        file.wrapped_key = hex::encode(wrapped);
        Ok(file)
    }

    /// Parses a stored key file.
    pub fn parse(bytes: &[u8], object: &str) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|error| RepoError::corrupt(object, error.to_string()))
    }

    /// The stored form.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        serde_json::to_vec_pretty(self).map_err(|error| RepoError::Io {
            context: "json encoding failed".into(),
            source: std::io::Error::other(error),
        })
    }

    /// What the wrapped key is bound to: the key id, then the label as compact JSON
    /// when there is one (key files without a label keep the id alone).
    fn associated_data(&self, key_id: &str) -> Result<Vec<u8>> {
        let mut data = key_id.as_bytes().to_vec();
        if let Some(label) = &self.label {
            data.push(b'\n');
            let json = serde_json::to_vec(label).map_err(|error| RepoError::Io {
                context: "json encoding failed".into(),
                source: std::io::Error::other(error),
            })?;
            data.extend_from_slice(&json);
        }
        Ok(data)
    }

    /// Recovers the master key; a wrong password is [`RepoError::WrongPassword`], a
    /// key file below the minimum cost [`RepoError::WeakKeyFile`] (refused before any
    /// derivation).
    pub fn unwrap_key(&self, password: &[u8], key_id: &str, object: &str) -> Result<MasterKey> {
        let corrupt = |reason: &str| RepoError::corrupt(object, reason);
        let (nonce, wrapped, associated_data) = self.checked_parts(key_id, object)?;
        let kek = derive_kek(&self.kdf, password).map_err(|_| corrupt("bad kdf parameters"))?;
        let unwrapped = Aead::new(kek.as_ref())?
            .open_to_vec(nonce, &associated_data, &wrapped)
            .map(Zeroizing::new)
            .ok_or(RepoError::WrongPassword)?;
        let bytes: [u8; KEY_LEN] = unwrapped[..]
            .try_into()
            .map_err(|_| corrupt("unwrapped key has the wrong length"))?;
        Ok(MasterKey::from_bytes(bytes))
    }

    /// The nonce, the wrapped key and the associated data, with the version, the
    /// algorithm and the cost checked: everything that can be refused is refused
    /// before anything is derived, so a malformed file costs no Argon2id memory or time.
    pub(crate) fn checked_parts(
        &self,
        key_id: &str,
        object: &str,
    ) -> Result<([u8; 12], Vec<u8>, Vec<u8>)> {
        let corrupt = |reason: &str| RepoError::corrupt(object, reason);
        if self.version != KEY_FILE_VERSION {
            return Err(corrupt("unsupported key file version"));
        }
        if self.kdf.algorithm != "argon2id" {
            return Err(corrupt("unsupported key derivation"));
        }
        self.kdf.check_minimum(key_id)?;
        let nonce: [u8; 12] = hex::decode(&self.nonce)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| corrupt("bad nonce"))?;
        let wrapped = hex::decode(&self.wrapped_key).map_err(|_| corrupt("bad hex"))?;
        if wrapped.len() != KEY_LEN + TAG_LEN {
            return Err(corrupt("wrapped key has the wrong length"));
        }
        Ok((nonce, wrapped, self.associated_data(key_id)?))
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

    fn label() -> KeyLabel {
        KeyLabel {
            created: "2026-12-06T08:00:00Z".into(),
            host: "backup-1".into(),
            user: "alice".into(),
        }
    }

    #[test]
    fn wrap_and_unwrap() {
        let master = MasterKey::generate().unwrap();
        let file = KeyFile::wrap(&master, b"secret", "k1", Some(label())).unwrap();
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
        let mut file = KeyFile::wrap(&master, b"secret", "k1", None).unwrap();
        file.kdf.memory_kib = u32::MAX;
        assert!(matches!(
            file.unwrap_key(b"secret", "k1", "keys/k1"),
            Err(RepoError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_file_without_label_still_opens_and_a_label_cannot_be_changed() {
        let master = MasterKey::generate().unwrap();
        let legacy = KeyFile::wrap(&master, b"secret", "k1", None).unwrap();
        let json = String::from_utf8(legacy.to_json().unwrap()).unwrap();
        assert!(!json.contains("label"), "{json}");
        let parsed = KeyFile::parse(json.as_bytes(), "keys/k1").unwrap();
        let back = parsed.unwrap_key(b"secret", "k1", "keys/k1").unwrap();
        assert_eq!(back.as_bytes(), master.as_bytes());

        let labelled = KeyFile::wrap(&master, b"secret", "k1", Some(label())).unwrap();
        for tamper in [
            |file: &mut KeyFile| file.label = None,
            |file: &mut KeyFile| file.label.as_mut().unwrap().user = "mallory".into(),
        ] {
            let mut changed = labelled.clone();
            tamper(&mut changed);
            assert!(matches!(
                changed.unwrap_key(b"secret", "k1", "keys/k1"),
                Err(RepoError::WrongPassword)
            ));
        }
        let mut added = legacy.clone();
        added.label = Some(label());
        assert!(added.unwrap_key(b"secret", "k1", "keys/k1").is_err());
    }

    #[test]
    fn parameters_below_the_minimum_are_refused_before_any_derivation() {
        let master = MasterKey::generate().unwrap();
        let good = KeyFile::wrap(&master, b"secret", "k1", None).unwrap();
        assert_eq!(good.kdf.memory_kib, MIN_MEMORY_KIB);
        assert_eq!(good.kdf.iterations, MIN_ITERATIONS);
        for (memory_kib, iterations) in [(8, 1), (MIN_MEMORY_KIB - 1, 3), (MIN_MEMORY_KIB, 2)] {
            let mut weak = good.clone();
            weak.kdf.memory_kib = memory_kib;
            weak.kdf.iterations = iterations;
            let error = weak.unwrap_key(b"secret", "k1", "keys/k1").unwrap_err();
            assert!(
                matches!(error, RepoError::WeakKeyFile { ref key_id, .. } if key_id == "k1"),
                "{error:?}"
            );
            let text = error.to_string();
            assert!(
                text.contains(&format!("{memory_kib} KiB"))
                    && text.contains("below the minimum")
                    && text.contains("planted"),
                "{text}"
            );
        }
        // A genuine cheap file, which the password would open, is refused all the same.
        let cheap = KeyFile::wrap_with_cost(&master, b"secret", "k1", None, 8, 1).unwrap();
        assert!(matches!(
            cheap.unwrap_key(b"secret", "k1", "keys/k1"),
            Err(RepoError::WeakKeyFile {
                memory_kib: 8,
                iterations: 1,
                ..
            })
        ));
    }
}
