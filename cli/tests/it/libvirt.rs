//! libvirt: live backups of a domain and restores that define a new one.

mod live;
mod restore;
