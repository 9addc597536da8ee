//! QEMU's image locking, so that an offline backup and a running VM see each other.
//!
//! QEMU marks what each process does with an image by OFD read locks on single bytes of
//! the image file itself: byte `100 + p` while it uses permission `p`, byte `200 + p`
//! while it refuses to share `p` with anybody else (`p`: 0 consistent read, 1 write,
//! 3 resize). Whoever opens an image sets its bytes, then tests the bytes that would
//! conflict; both sides doing so means one of two racing processes always sees the
//! other. Haven takes the part of a reader that needs the image to hold still: it uses
//! consistent read and shares neither write nor resize. So `haven backup image` refuses
//! an image that a running VM (or a writable `qemu-nbd`) has open for writing, and a VM
//! cannot start on an image while Haven reads it: an offline backup is never a torn
//! copy of a live disk. The locks go with the file descriptor, so they last exactly as
//! long as the [`LockedImage`].

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Result, WorkerError};

const PERM_BASE: i64 = 100;
const SHARED_BASE: i64 = 200;
const CONSISTENT_READ: i64 = 0;
const WRITE: i64 = 1;
const RESIZE: i64 = 3;

/// Bytes Haven locks: it reads consistently and lets nobody write or resize.
const HELD: [i64; 3] = [
    PERM_BASE + CONSISTENT_READ,
    SHARED_BASE + WRITE,
    SHARED_BASE + RESIZE,
];

/// Bytes another process holds when it conflicts with that, and what they mean.
const CONFLICTS: [(i64, &str); 3] = [
    (PERM_BASE + WRITE, "is open for writing"),
    (PERM_BASE + RESIZE, "is open for resizing"),
    (
        SHARED_BASE + CONSISTENT_READ,
        "is held by a process that lets nobody read it",
    ),
];

/// An image file opened read-only, locked the way QEMU locks images, for as long as it
/// lives.
#[derive(Debug)]
pub struct LockedImage {
    file: File,
    path: PathBuf,
}

impl LockedImage {
    /// Opens `path` (a regular file or a block device) read-only and locks it; refuses
    /// an image that another process is writing or resizing.
    pub fn open(path: &Path) -> Result<Self> {
        let file =
            // O_NONBLOCK: opening a FIFO would otherwise wait for a writer forever;
            // regular files and block devices ignore it.
            File::options()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
                .map_err(WorkerError::io(format!("cannot open {}", path.display())))?;
        let kind = file
            .metadata()
            .map_err(WorkerError::io(format!("cannot stat {}", path.display())))?
            .file_type();
        if !(kind.is_file() || kind.is_block_device()) {
            return Err(WorkerError::InvalidInput(format!(
                "{} is neither a regular file nor a block device",
                path.display()
            )));
        }
        let image = Self {
            file,
            path: path.to_path_buf(),
        };
        image.lock()?;
        Ok(image)
    }

    /// The open file.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// The path it was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> Result<()> {
        for byte in HELD {
            match set_read_lock(&self.file, byte) {
                Ok(()) => {}
                Err(error) if locks_unsupported(&error) => {
                    // As QEMU does on such file systems (some network ones): go on
                    // unlocked, and say so.
                    tracing::warn!(
                        image = %self.path.display(),
                        %error,
                        "the file system does not support OFD locks: image not locked"
                    );
                    return Ok(());
                }
                Err(error) if matches!(error.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => {
                    return Err(self.in_use("is locked against readers"));
                }
                Err(error) => {
                    return Err(WorkerError::Io {
                        context: format!("cannot lock {}", self.path.display()),
                        source: error,
                    });
                }
            }
        }
        for (byte, what) in CONFLICTS {
            let held = held_by_another(&self.file, byte).map_err(WorkerError::io(format!(
                "cannot test the locks of {}",
                self.path.display()
            )))?;
            if held {
                return Err(self.in_use(what));
            }
        }
        Ok(())
    }

    fn in_use(&self, what: &str) -> WorkerError {
        WorkerError::InvalidInput(format!(
            "{} {what} by another process (a running VM?): back up a running VM with \
             `haven backup qemu` or `haven backup libvirt`, or stop it first",
            self.path.display()
        ))
    }
}

/// An OFD lock request for one byte.
fn one_byte(kind: libc::c_int, byte: i64) -> libc::flock {
    // SAFETY: `flock` is plain data; all zeroes is a valid value (and zeroes any
    // platform-specific padding fields).
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = byte;
    lock.l_len = 1;
    lock
}

fn set_read_lock(file: &File, byte: i64) -> std::io::Result<()> {
    let lock = one_byte(libc::F_RDLCK, byte);
    // SAFETY: the descriptor is open for the call and `lock` outlives it.
    let status = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) };
    if status == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether another open file description holds a lock on `byte` (our own never
/// conflict with us).
fn held_by_another(file: &File, byte: i64) -> std::io::Result<bool> {
    let mut lock = one_byte(libc::F_WRLCK, byte);
    // SAFETY: the descriptor is open for the call and `lock` is a valid, writable flock.
    let status = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut lock) };
    if status == -1 {
        let error = std::io::Error::last_os_error();
        return if locks_unsupported(&error) {
            Ok(false)
        } else {
            Err(error)
        };
    }
    Ok(lock.l_type != libc::F_UNLCK as libc::c_short)
}

fn locks_unsupported(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EINVAL | libc::ENOLCK | libc::EOPNOTSUPP)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writer_is_refused_and_readers_share() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        std::fs::write(&path, [0u8; 4096]).unwrap();

        // Another process's writer is another open file description: the same test.
        let writer = File::options().read(true).write(true).open(&path).unwrap();
        set_read_lock(&writer, PERM_BASE + WRITE).unwrap();
        let error = LockedImage::open(&path).unwrap_err().to_string();
        assert!(error.contains("is open for writing"), "{error}");
        drop(writer);

        // Two readers do not conflict.
        let first = LockedImage::open(&path).unwrap();
        let second = LockedImage::open(&path).unwrap();
        // A writer arriving later sees that we share no write permission.
        let late = File::options().read(true).write(true).open(&path).unwrap();
        assert!(held_by_another(&late, SHARED_BASE + WRITE).unwrap());
        drop((first, second));
        assert!(!held_by_another(&late, SHARED_BASE + WRITE).unwrap());
        assert_eq!(LockedImage::open(&path).unwrap().path(), path);

        let missing = LockedImage::open(&dir.path().join("missing")).unwrap_err();
        assert!(missing.to_string().contains("cannot open"), "{missing}");

        // A FIFO is refused at once instead of waiting for a writer.
        let fifo = dir.path().join("fifo");
        let fifo_name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo_name.as_ptr(), 0o600) }, 0);
        let error = LockedImage::open(&fifo).unwrap_err().to_string();
        assert!(error.contains("neither a regular file"), "{error}");
    }
}
