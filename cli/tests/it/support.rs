//! Everything the integration tests share: scratch beds and disk images (`bed`), live
//! QEMU processes and QMP (`qemu`), the cluster's etcd, VMs and CLI (`cluster`), a
//! private libvirtd (`libvirt`) and the storage node with its S3 clients
//! (`storage_node`).

pub mod bed;
pub mod cluster;
pub mod libvirt;
pub mod qemu;
pub mod storage_node;
