//! Key slots: the `keys/ID` objects, and finding the one a password opens.
//!
//! `config` names the slot written by `repo init`; `haven key` adds slots beside it
//! and may remove that first one (`config` is create-only and authenticated, so it is
//! never made to name another). Opening tries the slot `config` names first — the only
//! one in most repositories, so the usual open costs one Argon2id derivation — then
//! every other slot in id order. A slot below the minimum Argon2id cost is never tried:
//! when another slot opens, the refusal is logged as a warning; when none does, it is
//! the error, since it may be why.
//! A slot that opens must also authenticate `config`, so a slot wrapping another
//! repository's key opens nothing.

use time::OffsetDateTime;

use crate::error::{RepoError, Result, join_error};
use crate::format::config::{RepoConfig, is_safe_id};
use crate::format::crypto::{MasterKey, RepoKeys};
use crate::format::keyfile::{KeyFile, KeyLabel};
use crate::format::manifest::format_timestamp;
use crate::storage::backend::Backend;

/// Largest key file read.
const MAX_KEY_FILE: u64 = 64 * 1024;
/// Folder of the key slots.
const KEYS_PREFIX: &str = "keys";

/// The object holding key slot `id`.
pub(crate) fn slot_object(id: &str) -> String {
    format!("{KEYS_PREFIX}/{id}")
}

/// Ids of every key slot, sorted; objects under `keys/` whose names cannot be slot ids
/// (staging files, strays) are not slots.
pub(crate) async fn slot_ids(backend: &Backend) -> Result<Vec<String>> {
    let prefix = format!("{KEYS_PREFIX}/");
    let mut ids: Vec<String> = backend
        .list(KEYS_PREFIX)
        .await?
        .into_iter()
        .filter_map(|key| key.strip_prefix(&prefix).map(str::to_string))
        .filter(|id| is_safe_id(id))
        .collect();
    ids.sort();
    Ok(ids)
}

/// Reads and parses one key slot.
pub(crate) async fn read_slot(backend: &Backend, id: &str) -> Result<KeyFile> {
    let object = slot_object(id);
    let bytes = backend.get(&object, MAX_KEY_FILE).await?;
    KeyFile::parse(&bytes, &object)
}

/// The label of a key made now, by this user on this host.
pub(crate) fn label_here() -> KeyLabel {
    KeyLabel {
        created: format_timestamp(OffsetDateTime::now_utc()),
        host: host_name(),
        user: user_name(),
    }
}

fn host_name() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: gethostname writes at most `buffer.len()` bytes into the buffer.
    let result = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if result != 0 {
        return String::new();
    }
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    String::from_utf8_lossy(&buffer[..end]).into_owned()
}

/// The effective user's login name from the password database, else `$USER`, else
/// the uid.
fn user_name() -> String {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let mut entry = std::mem::MaybeUninit::<libc::passwd>::uninit();
    let mut strings = vec![0 as libc::c_char; 4096];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the sizes given; on success `found` points to
    // `entry`, whose strings live in `strings`, both alive while they are read below.
    let result = unsafe {
        libc::getpwuid_r(
            uid,
            entry.as_mut_ptr(),
            strings.as_mut_ptr(),
            strings.len(),
            &mut found,
        )
    };
    if result == 0 && !found.is_null() {
        // SAFETY: `found` is non-null, so getpwuid_r filled `entry` and its `pw_name`
        // is a NUL-terminated string inside `strings`.
        let name = unsafe { std::ffi::CStr::from_ptr((*found).pw_name) };
        if !name.is_empty() {
            return name.to_string_lossy().into_owned();
        }
    }
    std::env::var("USER").unwrap_or_else(|_| format!("uid {uid}"))
}

/// What a password opened.
pub(crate) struct Unlocked {
    /// The repository's master key, to wrap new slots with.
    pub(crate) master: MasterKey,
    /// Keys derived from it.
    pub(crate) keys: RepoKeys,
    /// The slot that opened.
    pub(crate) slot: String,
}

/// Finds the slot `password` opens (see the module doc for the order and the errors).
pub(crate) async fn unlock(
    backend: &Backend,
    config: &RepoConfig,
    password: &[u8],
) -> Result<Unlocked> {
    let mut attempts = Attempts::default();
    match try_slot(backend, config, &config.key_id, password).await {
        Ok(unlocked) => return Ok(unlocked),
        Err(error) => attempts.record(error)?,
    }
    for id in slot_ids(backend).await? {
        if id == config.key_id {
            continue;
        }
        match try_slot(backend, config, &id, password).await {
            Ok(unlocked) => {
                attempts.warn_refused();
                return Ok(unlocked);
            }
            Err(error) => attempts.record(error)?,
        }
    }
    Err(attempts.verdict(&config.key_id))
}

async fn try_slot(
    backend: &Backend,
    config: &RepoConfig,
    id: &str,
    password: &[u8],
) -> Result<Unlocked> {
    let object = slot_object(id);
    let file = read_slot(backend, id).await?;
    let password = password.to_vec();
    let slot = id.to_string();
    let master = tokio::task::spawn_blocking(move || file.unwrap_key(&password, &slot, &object))
        .await
        .map_err(join_error)??;
    let keys = master.derive()?;
    // The password opened the slot: a config that does not authenticate was altered,
    // or the slot was copied from another repository (the error names both).
    config.check_mac(&keys)?;
    Ok(Unlocked {
        master,
        keys,
        slot: id.to_string(),
    })
}

/// Why the slots tried so far did not open.
#[derive(Default)]
struct Attempts {
    weak: Option<RepoError>,
    wrong_password: bool,
    unreadable: Option<RepoError>,
}

impl Attempts {
    /// Notes a slot that did not open; storage trouble is no verdict on the password
    /// and is returned at once.
    fn record(&mut self, error: RepoError) -> Result<()> {
        match error {
            RepoError::WrongPassword => self.wrong_password = true,
            RepoError::NotFound(_) => {}
            RepoError::WeakKeyFile { .. } => {
                self.weak.get_or_insert(error);
            }
            RepoError::Corrupt { .. } => {
                self.unreadable.get_or_insert(error);
            }
            other => return Err(other),
        }
        Ok(())
    }

    /// Another slot opened: the refused ones are worth a warning, not an error.
    fn warn_refused(&self) {
        for refused in self.weak.iter().chain(&self.unreadable) {
            tracing::warn!("{refused}");
        }
    }

    fn verdict(self, first_slot: &str) -> RepoError {
        if let Some(weak) = self.weak {
            return weak;
        }
        if self.wrong_password {
            return RepoError::WrongPassword;
        }
        self.unreadable
            .unwrap_or_else(|| RepoError::NotFound(slot_object(first_slot)))
    }
}
