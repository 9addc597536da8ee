//! `haven-files`: file-level restore without mounting and without a helper VM.
//!
//! A backed-up disk is read through [`BlockDevice`] (in Haven, the snapshot reader, so
//! only the chunks a file needs are fetched and every byte is verified). On top of it:
//! partition tables ([`partitions`]: GPT, MBR, or a bare file system) and file systems
//! through maintained crates: `ext4-view` for ext2/3/4, `fatfs` for FAT12/16/32 and
//! `ntfs` for NTFS (regular files and directories; reparse points are listed, not
//! restored). XFS, LVM and other volume managers are not supported yet and are reported
//! as such, never guessed.
//!
//! # Invariants
//!
//! - The image is untrusted. Drivers read it lazily through bounds-checked views; a
//!   driver panic on corrupt data is caught and reported as [`FilesError::Driver`];
//!   walks are bounded in depth and entry count (directory loops end with an error) and
//!   a file larger than its file system is refused before anything is copied.
//! - Nothing is written to the image: the device is read-only and FAT writes fail.
//! - Extraction never writes outside the destination: names with `/`, `..` or NUL
//!   are refused.
//!
//! # Layers
//!
//! A [`BlockDevice`] is cut into partitions (`partition.rs`, giving [`DeviceSlice`]s);
//! each slice is read by a driver in `filesystem/` (ext, FAT, NTFS), which answers in
//! the types of `entry.rs`; [`Volume`] detects the file system and dispatches to its
//! driver; `extract.rs` copies entries out; `diff.rs` compares two listings. Each layer imports only those below it.

#![warn(missing_docs)]

mod device;
mod diff;
mod entry;
mod error;
mod extract;
mod filesystem;
mod partition;
mod volume;

pub use device::{BlockDevice, DeviceSlice};
pub use diff::{Change, Content, FileChange, diff_entries};
pub use entry::{Entry, EntryKind, Limits};
pub use error::{FilesError, Result};
pub use extract::{ExtractOptions, ExtractReport, extract};
pub use partition::{Partition, PartitionScheme, partitions};
pub use volume::{FsKind, Volume};
