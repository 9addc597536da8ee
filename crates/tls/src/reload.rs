//! Configurations that follow their files: certificates rotate without a restart.
//!
//! A [`Reloading`] value is built from a set of files; [`Reloading::watch`] rebuilds
//! it when any file's modification time, size or inode changes (checked every few
//! seconds, which is how cert-manager's and certbot's renewals appear) or at once on
//! SIGHUP. A rebuild that fails — a key written before its certificate, a typo — is
//! logged and the previous value kept, so a bad rotation never takes a node down.
//! New connections take [`Reloading::current`]; established ones keep what they had.
//!
//! What cannot be rebuilt synchronously (a client that must connect, such as the
//! coordinator's etcd client) uses the parts directly: [`FileStamps`] to see a
//! rotation and [`WatchTicks`] for when to look.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::TlsError;

/// How often files are looked at.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

type Build<T> = Box<dyn Fn() -> Result<T, TlsError> + Send + Sync>;

/// What identifies one version of a file.
type Stamp = Option<(SystemTime, u64, u64)>;

/// The versions of a set of files last seen: what tells a rotation happened.
///
/// A file counts as changed when its modification time, size or inode differs; a
/// missing file has no version, so its reappearance is a change too.
#[derive(Debug)]
pub struct FileStamps {
    files: Vec<PathBuf>,
    stamps: Vec<Stamp>,
}

impl FileStamps {
    /// Remembers the current versions of `files`.
    pub fn new(files: Vec<PathBuf>) -> Self {
        let stamps = files.iter().map(stamp).collect();
        Self { files, stamps }
    }

    /// Whether any file changed since the last call (or [`Self::new`]); remembers
    /// the versions seen now.
    pub fn changed(&mut self) -> bool {
        let now: Vec<Stamp> = self.files.iter().map(stamp).collect();
        let changed = now != self.stamps;
        self.stamps = now;
        changed
    }
}

/// The moments to look at watched files: every [`WATCH_INTERVAL`], and at once on
/// SIGHUP (the operator's "reload now").
pub struct WatchTicks {
    hangup: Option<tokio::signal::unix::Signal>,
}

impl WatchTicks {
    /// Listens for SIGHUP (without it, only the interval ticks). Needs a Tokio runtime.
    pub fn new() -> Self {
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        Self { hangup }
    }

    /// Waits for the next look: `true` when SIGHUP forced it.
    pub async fn next(&mut self) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(WATCH_INTERVAL) => false,
            Some(()) = async {
                match self.hangup.as_mut() {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            } => true,
        }
    }
}

impl Default for WatchTicks {
    fn default() -> Self {
        Self::new()
    }
}

/// A value rebuilt from files when they change.
pub struct Reloading<T> {
    what: String,
    build: Build<T>,
    current: RwLock<Arc<T>>,
    stamps: Mutex<FileStamps>,
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Builds the first value (an error here is fatal to the caller) and remembers
    /// how to build the next. `what` names it in logs ("coordinator TLS").
    pub fn new(
        what: impl Into<String>,
        files: Vec<PathBuf>,
        build: impl Fn() -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Arc<Self>, TlsError> {
        let stamps = FileStamps::new(files);
        let first = build()?;
        Ok(Arc::new(Self {
            what: what.into(),
            build: Box::new(build),
            current: RwLock::new(Arc::new(first)),
            stamps: Mutex::new(stamps),
        }))
    }

    /// The value for a new connection.
    pub fn current(&self) -> Arc<T> {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Rebuilds if a file changed (or always, with `force`); returns whether the
    /// value was replaced.
    pub fn reload(&self, force: bool) -> bool {
        {
            let Ok(mut stamps) = self.stamps.lock() else {
                return false;
            };
            if !stamps.changed() && !force {
                return false;
            }
        }
        match (self.build)() {
            Ok(value) => {
                if let Ok(mut current) = self.current.write() {
                    *current = Arc::new(value);
                }
                tracing::info!(what = %self.what, "reloaded certificates");
                true
            }
            Err(error) => {
                tracing::warn!(what = %self.what, %error, "certificates changed but cannot be used; keeping the previous ones");
                false
            }
        }
    }

    /// Watches the files until `shutdown`: every [`WATCH_INTERVAL`] and on SIGHUP.
    pub fn watch(self: &Arc<Self>, shutdown: CancellationToken) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut ticks = WatchTicks::new();
            loop {
                let forced = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    forced = ticks.next() => forced,
                };
                this.reload(forced);
            }
        });
    }
}

fn stamp(path: &PathBuf) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.modified().ok()?, metadata.len(), metadata.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_is_reloaded_and_a_broken_one_keeps_the_previous_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("value");
        std::fs::write(&path, "1").unwrap();
        let read = path.clone();
        let reloading = Reloading::new("test", vec![path.clone()], move || {
            let text = std::fs::read_to_string(&read).map_err(|source| TlsError::Io {
                path: read.clone(),
                source,
            })?;
            text.trim()
                .parse::<u32>()
                .map_err(|error| TlsError::Identity(error.to_string()))
        })
        .unwrap();
        assert_eq!(*reloading.current(), 1);
        assert!(!reloading.reload(false), "nothing changed");
        std::fs::write(&path, "22").unwrap();
        assert!(reloading.reload(false));
        assert_eq!(*reloading.current(), 22);
        std::fs::write(&path, "not a number").unwrap();
        assert!(!reloading.reload(false));
        assert_eq!(*reloading.current(), 22);
    }
}
