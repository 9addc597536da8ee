//! The backup pipeline: the stage between an adapter's export and the repository.
//!
//! [`backup::backup_disk`] reads one disk (over NBD through a [`pool::ClientPool`], or
//! in place through [`local_disk`]: a raw image ([`raw_image`]) or a Hyper-V
//! checkpoint chain ([`vhdx`])), classifies, hashes, deduplicates,
//! compresses, encrypts and uploads its chunks; [`snapshot`] names the snapshot, finds
//! its base and publishes it (chunks, then indexes, then the manifest as the commit
//! point).

pub mod backup;
pub mod local_disk;
pub mod pool;
pub mod ranged;
pub mod raw_image;
pub mod snapshot;
pub mod vhdx;
