//! The secrets `haven dev` makes at its first start and reads back at every later one:
//! certificates, the repository password, and the storage node's keys. Each is made
//! only when absent, written readable by its owner alone, and never replaced.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use haven_worker::daemon::StorageKeysConfig;

/// Creates `dir` (and its parents) if missing; the folder itself is made `0700`, as it
/// holds secrets.
pub fn private_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

/// Writes `text` to `path`, readable by its owner only, replacing it atomically (a
/// temporary file renamed over it), so a crash never leaves half a secret.
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    let temporary = path.with_extension("tmp");
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .and_then(|mut file| {
            file.write_all(text.as_bytes())?;
            file.sync_all()
        })
        .and_then(|()| std::fs::rename(&temporary, path))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// `bytes` random bytes in hex, for secrets.
fn random_hex(bytes: usize) -> Result<String> {
    use std::io::Read;
    let mut buffer = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut buffer))
        .context("cannot read /dev/urandom")?;
    Ok(buffer.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// `STATE/password`: the repository password when none is given, 32 random bytes in
/// hex. Returns the file and whether this start made it.
pub fn ensure_password(state: &Path) -> Result<(PathBuf, bool)> {
    let path = state.join("password");
    if path.exists() {
        return Ok((path, false));
    }
    write_private(&path, &format!("{}\n", random_hex(32)?))?;
    Ok((path, true))
}

/// An S3 key pair in the worker's key-file format (`access_key_id`,
/// `secret_access_key`), which the storage node's `key_file` reads too.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPair {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
}

impl KeyPair {
    fn generate(access_key_id: String) -> Result<Self> {
        Ok(Self {
            access_key_id,
            secret_access_key: random_hex(20)?,
        })
    }

    fn to_toml(&self) -> String {
        format!(
            "access_key_id = {:?}\nsecret_access_key = {:?}\n",
            self.access_key_id, self.secret_access_key
        )
    }

    fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        toml::from_str(&text).map_err(|error| {
            anyhow::anyhow!(
                "{} is not a key file (access_key_id and secret_access_key): {}",
                path.display(),
                error.message()
            )
        })
    }
}

/// The keys of `haven dev`'s storage node, made at its first start in
/// `STATE/storage-keys`: `admin.toml` (unless an admin key is given: for people and
/// tools, never for jobs), `append.toml` and `delete.toml` in the worker's key-file
/// format, and `storage-node.toml`, the node's configuration declaring the last two.
/// Backups and replication (to the same node, so it is also the destination's key)
/// sign with `append`, which can neither delete nor overwrite; only prune and GC hold
/// `delete`.
pub struct DevStorageKeys {
    dir: PathBuf,
}

impl DevStorageKeys {
    const KINDS: [&str; 2] = ["append", "delete"];

    /// Makes the append and delete keys and the node's configuration if absent.
    pub fn ensure(dir: &Path, listen: SocketAddr) -> Result<Self> {
        let keys = Self {
            dir: dir.to_owned(),
        };
        if keys.node_config().exists() {
            return Ok(keys);
        }
        private_dir(dir)?;
        let mut node = format!("listen = \"{listen}\"\n");
        for kind in Self::KINDS {
            let pair = KeyPair::generate(format!("dev-{kind}"))?;
            node.push_str(&format!(
                "[[keys]]\naccess_key = {:?}\nsecret_key = {:?}\naccess = {kind:?}\n",
                pair.access_key_id, pair.secret_access_key
            ));
            write_private(&dir.join(format!("{kind}.toml")), &pair.to_toml())?;
        }
        // Written last: its presence says the set is complete.
        write_private(&keys.node_config(), &node)?;
        Ok(keys)
    }

    /// The admin key file, made now if absent; returns it, its key and whether this
    /// start made it.
    pub fn admin(&self) -> Result<(PathBuf, KeyPair, bool)> {
        let path = self.dir.join("admin.toml");
        if path.exists() {
            return Ok((path.clone(), KeyPair::read(&path)?, false));
        }
        let pair = KeyPair::generate("dev-admin".into())?;
        write_private(&path, &pair.to_toml())?;
        Ok((path, pair, true))
    }

    /// The storage node's configuration file.
    pub fn node_config(&self) -> PathBuf {
        self.dir.join("storage-node.toml")
    }

    /// `[storage]` of the in-process worker: a replica on the same node is reached
    /// with the same keys.
    pub fn worker_config(&self) -> StorageKeysConfig {
        StorageKeysConfig {
            append_key_file: Some(self.dir.join("append.toml")),
            delete_key_file: Some(self.dir.join("delete.toml")),
            secondary_key_file: Some(self.dir.join("append.toml")),
            secondary_delete_key_file: Some(self.dir.join("delete.toml")),
        }
    }
}

/// The certificates of `haven dev`, made at its first start in `STATE/pki`: a CA,
/// the coordinator's server certificate for the listen address, the in-process
/// worker's and an admin's client certificates. Even on one machine the coordinator
/// is reached over TLS by authenticated callers only.
pub struct DevPki {
    dir: PathBuf,
}

impl DevPki {
    /// Makes the CA and certificates if absent.
    pub fn ensure(dir: &Path, listen: SocketAddr) -> Result<Self> {
        use haven_tls::pki::{CertificateAuthority, LeafRequest};
        use haven_tls::{Identity, Role};
        let pki = Self {
            dir: dir.to_owned(),
        };
        // Written last: its presence says the set is complete.
        if pki.file("admin.pem").exists() {
            return Ok(pki);
        }
        private_dir(dir)?;
        let (authority, ca) = CertificateAuthority::generate("haven dev CA", 3650)?;
        ca.write(dir, "ca", true)?;
        let mut server = LeafRequest::new("coordinator", 3650);
        server.ip_addresses.push(listen.ip());
        server.dns_names.push("localhost".into());
        authority.issue(&server)?.write(dir, "coordinator", true)?;
        for (role, name) in [(Role::Worker, "dev-worker"), (Role::Admin, "admin")] {
            let client = LeafRequest::client(Identity::new(role, name)?, 3650);
            authority.issue(&client)?.write(dir, name, true)?;
        }
        Ok(pki)
    }

    /// A file of the set: `ca.pem`, `admin.pem`, `admin-key.pem`, ...
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}
