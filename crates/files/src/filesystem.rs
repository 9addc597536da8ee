//! The file-system drivers, one module per family, each wrapping a maintained crate
//! behind the same four calls (`open`, `stat`, `list`, `copy`) that [`crate::Volume`]
//! dispatches to. A driver reads through a [`crate::DeviceSlice`] and answers in
//! [`crate::Entry`] values; it knows nothing of volumes or extraction.

pub(crate) mod ext;
pub(crate) mod fat;
pub(crate) mod ntfs;
