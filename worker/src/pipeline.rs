//! The backup pipeline: the stage between an adapter's export and the repository.
//!
//! [`backup::backup_disk`] reads one disk (over NBD through a [`pool::ClientPool`], or
//! a raw image in place through [`raw_image`]), classifies, hashes, deduplicates,
//! compresses, encrypts and uploads its chunks; [`snapshot`] names the snapshot, finds
//! its base and publishes it (chunks, then indexes, then the manifest as the commit
//! point).

pub mod backup;
pub mod pool;
pub mod ranged;
pub mod raw_image;
pub mod snapshot;
