//! Live QEMU: backups of running QEMU processes and restores that QEMU attaches.

mod agent;
mod live;
mod restore;
