//! Live QEMU: backups of running QEMU processes and restores that QEMU attaches.

mod live;
mod restore;
