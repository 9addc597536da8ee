//! One module per verb.

pub mod backup;
pub mod repo;
pub mod restore;
pub mod snapshots;
pub mod verify;
