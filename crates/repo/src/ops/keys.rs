//! Key management: several passwords for one repository (`haven key`).
//!
//! Every password has its own key slot, `keys/ID`, wrapping the one master key; `ID`
//! is random and never reused. Each change is therefore one create-only write or one
//! delete, never an overwrite, which is all the storage contract offers (and all an
//! append-only storage key or an object lock allows):
//!
//! - **add** creates a new slot; a crash leaves it either absent or complete (a
//!   create-only put publishes whole objects), and the old passwords are untouched;
//! - **passwd** creates the new password's slot, then deletes the slot the current
//!   password opened. A crash in between leaves both, so the old and the new password
//!   both open the repository; running `passwd` again, or `remove`, finishes the job;
//! - **remove** deletes one slot.
//!
//! One file listing every slot would have needed an overwrite, and a torn or lost
//! overwrite would take every password with it.
//!
//! Rules of `remove`: the id is a slot id or a unique prefix of one; the slot the
//! current password opened is removed only with `force` (that password stops
//! working); and the last usable slot (readable, at or above the minimum Argon2id
//! cost) is never removed, `force` or not. Slots opened by other passwords cannot be
//! checked without them: a usable slot is assumed to open the repository. Key changes
//! are not locked against each other: two operators removing each other's slots at the
//! same moment can both succeed, so run one key change at a time.
//!
//! Replicas receive new slots on the next `haven replicate`, but a removed slot stays
//! on a replica that already has it: remove it there too.

use serde::Serialize;

use crate::error::{RepoError, Result};
use crate::format::keyfile::{KeyFile, KeyLabel};
use crate::repository::key_slots::{
    Unlocked, label_here, read_slot, slot_ids, slot_object, unlock,
};
use crate::repository::{random_hex, read_config};
use crate::storage::backend::{Backend, Durability, PutOutcome};

/// One key slot as `haven key list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct KeySlot {
    /// The slot's id (`keys/ID`).
    pub id: String,
    /// Whether the current password opened this slot.
    pub current: bool,
    /// When, where and by whom it was added, if recorded (the slot written by
    /// `repo init` of older versions has only the repository's creation time).
    pub label: Option<KeyLabel>,
    /// Argon2id memory cost in KiB (0 when unreadable).
    pub memory_kib: u32,
    /// Argon2id passes.
    pub iterations: u32,
    /// Argon2id lanes.
    pub parallelism: u32,
    /// Why this slot is never tried (below the minimum cost, unreadable), if it is not.
    pub refused: Option<String>,
}

/// The result of `haven key passwd`.
#[derive(Debug, Clone, Serialize)]
pub struct PasswordChange {
    /// The new password's slot.
    pub added: String,
    /// The old password's slot, now removed.
    pub removed: String,
}

/// Every key slot of the repository at `backend`, marking the one `password` opens.
pub async fn list_keys(backend: &Backend, password: &[u8]) -> Result<Vec<KeySlot>> {
    let config = read_config(backend).await?;
    let unlocked = unlock(backend, &config, password).await?;
    let mut slots = Vec::new();
    for id in slot_ids(backend).await? {
        let mut slot = KeySlot {
            current: id == unlocked.slot,
            id,
            label: None,
            memory_kib: 0,
            iterations: 0,
            parallelism: 0,
            refused: None,
        };
        match read_slot(backend, &slot.id).await {
            Ok(file) => {
                slot.refused = file
                    .kdf
                    .check_minimum(&slot.id)
                    .err()
                    .map(|e| e.to_string());
                slot.memory_kib = file.kdf.memory_kib;
                slot.iterations = file.kdf.iterations;
                slot.parallelism = file.kdf.parallelism;
                slot.label = file.label.or_else(|| {
                    (slot.id == config.key_id).then(|| KeyLabel {
                        created: config.created.clone(),
                        ..KeyLabel::default()
                    })
                });
            }
            Err(RepoError::NotFound(_)) => continue,
            Err(error @ RepoError::Corrupt { .. }) => slot.refused = Some(error.to_string()),
            Err(error) => return Err(error),
        }
        slots.push(slot);
    }
    Ok(slots)
}

/// Adds a slot for `new_password`, proving the right to with `password`; returns the
/// new slot's id.
pub async fn add_key(backend: &Backend, password: &[u8], new_password: &[u8]) -> Result<String> {
    let unlocked = open(backend, password).await?;
    write_slot(backend, &unlocked, new_password).await
}

/// Replaces the slot `password` opens with one for `new_password` (see the module doc
/// for why a crash in between leaves both working).
pub async fn change_password(
    backend: &Backend,
    password: &[u8],
    new_password: &[u8],
) -> Result<PasswordChange> {
    let unlocked = open(backend, password).await?;
    let added = write_slot(backend, &unlocked, new_password).await?;
    backend
        .delete(&slot_object(&unlocked.slot))
        .await
        .map_err(|error| {
            RepoError::KeyRefused(format!(
                "the new password works (key {added}), but the old key {} could not be removed ({error}): remove it with `haven key remove {} --force`",
                unlocked.slot, unlocked.slot
            ))
        })?;
    Ok(PasswordChange {
        added,
        removed: unlocked.slot,
    })
}

/// Removes the slot `id` (or the one slot whose id starts with it), under the rules of
/// the module doc; returns the removed slot's full id.
pub async fn remove_key(
    backend: &Backend,
    password: &[u8],
    id: &str,
    force: bool,
) -> Result<String> {
    let ids = slot_ids(backend).await?;
    let target = resolve(&ids, id)?;
    let unlocked = open(backend, password).await?;
    if target == unlocked.slot && !force {
        return Err(RepoError::KeyRefused(format!(
            "key {target} is the one this password opens: removing it locks this password out (use `haven key passwd` to change it, or --force to remove it when another password will be used)"
        )));
    }
    let mut usable_left = 0;
    for other in ids.iter().filter(|other| **other != target) {
        match read_slot(backend, other).await {
            Ok(file) if file.kdf.check_minimum(other).is_ok() => usable_left += 1,
            Ok(_) | Err(RepoError::NotFound(_)) | Err(RepoError::Corrupt { .. }) => {}
            Err(error) => return Err(error),
        }
    }
    if usable_left == 0 {
        return Err(RepoError::KeyRefused(format!(
            "key {target} is the last usable key of the repository: without it no password opens any snapshot"
        )));
    }
    backend.delete(&slot_object(&target)).await?;
    Ok(target)
}

/// The slot named exactly, or the only one whose id starts with `id`.
fn resolve(ids: &[String], id: &str) -> Result<String> {
    if let Some(exact) = ids.iter().find(|candidate| *candidate == id) {
        return Ok(exact.clone());
    }
    let matching: Vec<&String> = if id.is_empty() {
        Vec::new()
    } else {
        ids.iter()
            .filter(|candidate| candidate.starts_with(id))
            .collect()
    };
    match matching.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(RepoError::KeyRefused(format!(
            "no key {id:?} in the repository (`haven key list` shows its keys)"
        ))),
        _ => Err(RepoError::KeyRefused(format!(
            "{id:?} starts {} key ids: give more of the id",
            matching.len()
        ))),
    }
}

async fn open(backend: &Backend, password: &[u8]) -> Result<Unlocked> {
    let config = read_config(backend).await?;
    unlock(backend, &config, password).await
}

/// Writes a new slot wrapping the unlocked master key under `new_password`.
async fn write_slot(backend: &Backend, unlocked: &Unlocked, new_password: &[u8]) -> Result<String> {
    let id = random_hex(16)?;
    let master = unlocked.master.clone();
    let new_password = new_password.to_vec();
    let slot = id.clone();
    let file = tokio::task::spawn_blocking(move || {
        KeyFile::wrap(&master, &new_password, &slot, Some(label_here()))
    })
    .await
    .map_err(crate::error::join_error)??;
    let object = slot_object(&id);
    match backend
        .put_if_absent(&object, file.to_json()?.into(), Durability::Immediate)
        .await?
    {
        PutOutcome::Created => Ok(id),
        PutOutcome::AlreadyExisted => Err(RepoError::AlreadyExists(object)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Repository;

    const OLD: &[u8] = b"old password";
    const NEW: &[u8] = b"new password";

    async fn repository() -> Backend {
        let backend = Backend::memory();
        Repository::init(backend.clone(), OLD, 1 << 20)
            .await
            .unwrap();
        backend
    }

    async fn opens(backend: &Backend, password: &[u8]) -> bool {
        Repository::open(backend.clone(), password).await.is_ok()
    }

    #[tokio::test]
    async fn add_then_passwd_then_remove() {
        let backend = repository().await;
        let first = Repository::open(backend.clone(), OLD)
            .await
            .unwrap()
            .key_slot()
            .to_string();
        let added = add_key(&backend, OLD, NEW).await.unwrap();
        assert!(opens(&backend, OLD).await && opens(&backend, NEW).await);
        let opened = Repository::open(backend.clone(), NEW).await.unwrap();
        assert_eq!(opened.key_slot(), added);

        let slots = list_keys(&backend, NEW).await.unwrap();
        assert_eq!(slots.len(), 2);
        let current: Vec<&str> = slots
            .iter()
            .filter(|s| s.current)
            .map(|s| s.id.as_str())
            .collect();
        assert_eq!(current, [added.as_str()]);
        assert!(
            slots
                .iter()
                .all(|s| s.refused.is_none() && s.label.is_some())
        );

        // Changing the first password away from the slot config names.
        let change = change_password(&backend, OLD, b"third").await.unwrap();
        assert_eq!(change.removed, first);
        assert!(!opens(&backend, OLD).await);
        assert!(opens(&backend, b"third").await && opens(&backend, NEW).await);

        let error = remove_key(&backend, NEW, &added, false).await.unwrap_err();
        assert!(error.to_string().contains("--force"), "{error}");
        remove_key(&backend, NEW, &change.added[..8], true)
            .await
            .unwrap();
        assert!(!opens(&backend, b"third").await);
        let error = remove_key(&backend, NEW, &added, true).await.unwrap_err();
        assert!(error.to_string().contains("last usable key"), "{error}");
        assert!(opens(&backend, NEW).await);
    }

    #[tokio::test]
    async fn a_weak_slot_is_refused_by_name_and_never_counts_as_usable() {
        let backend = repository().await;
        let unlocked = open(&backend, OLD).await.unwrap();
        let id = "00000000000000000000000000000000";
        let weak = KeyFile::wrap_with_cost(&unlocked.master, b"weak", id, None, 8, 1).unwrap();
        backend
            .put_if_absent(
                &slot_object(id),
                weak.to_json().unwrap().into(),
                Durability::Immediate,
            )
            .await
            .unwrap();

        // The right password for the weak slot is refused, naming it.
        let error = Repository::open(backend.clone(), b"weak")
            .await
            .unwrap_err();
        assert!(
            matches!(error, RepoError::WeakKeyFile { ref key_id, memory_kib: 8, .. } if key_id == id),
            "{error}"
        );
        // The good slot still opens, and the list marks the weak one.
        assert!(opens(&backend, OLD).await);
        let slots = list_keys(&backend, OLD).await.unwrap();
        let listed = slots.iter().find(|s| s.id == id).unwrap();
        assert!(
            listed
                .refused
                .as_deref()
                .unwrap()
                .contains("below the minimum")
        );
        // It does not count as a key left: the good slot cannot go, even forced.
        let error = remove_key(&backend, OLD, &unlocked.slot, true)
            .await
            .unwrap_err();
        assert!(error.to_string().contains("last usable key"), "{error}");
        remove_key(&backend, OLD, id, false).await.unwrap();
    }

    #[test]
    fn ids_resolve_exactly_or_by_unique_prefix() {
        let ids = vec!["ab12".to_string(), "ab34".into(), "cd".into()];
        assert_eq!(resolve(&ids, "cd").unwrap(), "cd");
        assert_eq!(resolve(&ids, "ab3").unwrap(), "ab34");
        assert!(
            resolve(&ids, "ab")
                .unwrap_err()
                .to_string()
                .contains("2 key ids")
        );
        assert!(resolve(&ids, "ef").is_err());
        assert!(resolve(&ids, "").is_err());
    }
}
