//! Live QEMU: backups of running QEMU processes and restores that QEMU attaches.

mod agent;
mod hooks;
mod live;
mod restore;
