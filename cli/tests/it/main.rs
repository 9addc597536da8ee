//! Haven's integration tests, one binary (`cargo test -p haven-cli --test it`): each
//! module drives the real `haven` binary against real tools (qemu, libvirt, etcd,
//! awscli, ...) for one area, and `support` holds every fixture they share. One binary
//! links once instead of once per file; tests from different areas may now run at the
//! same time, so a fixture that cannot be shared says so in `support` and serialises
//! itself.

mod support;

mod backup_restore;
mod boot;
mod ceph;
mod cluster;
mod command_line;
mod diff;
mod files;
mod garage;
mod gc;
mod hyperv;
mod integrity;
mod keys;
mod libvirt;
mod power_loss;
mod prometheus;
mod prune;
mod qemu;
mod replicate;
mod restore_nbd;
mod serve_nbd;
mod soak;
mod stats;
mod storage_node;
mod trace;
mod verify_repair;
mod vsphere;
