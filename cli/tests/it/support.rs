//! Everything the integration tests share, one module per fixture:
//!
//! - `process`: guards that kill child processes, runs that must succeed, waits for
//!   sockets and lines, free ports;
//! - `haven`: the `haven` command builder and a client of one repository;
//! - `bed`, `image`, `tree`, `report`: a scratch repository, disk images, files on disk
//!   and backup reports;
//! - `avhdx`: Hyper-V checkpoint chains (differencing VHDX) and libvhdi's view of them;
//! - `qemu`: QMP, `qemu-storage-daemon` VMs and live `haven backup qemu` runs;
//! - `freeze`: a fake guest agent and a QMP proxy that holds the snapshot point;
//! - `guest`: the test guest (real Debian) booted under QEMU, its console and agent;
//! - `etcd`, `cluster`: an etcd cluster, cluster VMs and the CLI against a coordinator;
//! - `libvirt`: a private libvirtd (one at a time: see its lock) and domains;
//! - `netns`: network namespaces joined by veth pairs, cut and healed for partitions;
//! - `storage_node`, `s3`, `metrics`: the storage node, S3 credentials, `/metrics`;
//! - `prometheus`: a real Prometheus server scraping given targets, and its query API;
//! - `tls`: a CA and X.509 credentials in QEMU's directory layout;
//! - `webhook`: an HTTP(S) receiver of notifications that fails its first requests;
//! - `browser`: headless Chromium driven over WebDriver (`chromedriver`);
//! - `vsphere`: a vCenter simulator with change tracking, and `haven backup vsphere`.
//!
//! Not every test uses every helper, hence `dead_code` is allowed here only.
#![allow(dead_code)]

pub mod avhdx;
pub mod bed;
pub mod browser;
pub mod cluster;
pub mod etcd;
pub mod freeze;
pub mod guest;
pub mod haven;
pub mod image;
pub mod libvirt;
pub mod metrics;
pub mod netns;
pub mod otlp;
pub mod pki;
pub mod process;
pub mod prometheus;
pub mod qemu;
pub mod report;
pub mod s3;
pub mod storage_node;
pub mod tls;
pub mod tree;
pub mod vsphere;
pub mod webhook;
