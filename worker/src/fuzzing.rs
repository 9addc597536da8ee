//! Entry points for the coverage-guided fuzz targets in `fuzz/`, not part of the API.
//!
//! They run the worker's own readers of what QEMU and libvirt answer, and of Hyper-V
//! checkpoint chains, on arbitrary input; a panic is a finding.

mod vhdx;

use serde_json::Value;

use crate::adapters::libvirt::job::is_haven_job;
use crate::adapters::libvirt::virsh::{parse_capacity, parse_disks};
use crate::adapters::qemu::graph::{parse_devices, parse_nodes, select_disks};

pub use vhdx::vhdx_chain;

/// A QMP reply's `return` value read as the block graph (`query-named-block-nodes`,
/// `query-block`) and the disks chosen from it, by default and by name.
pub fn qmp_block_graph(value: &Value) {
    let devices = parse_devices(value);
    let nodes = parse_nodes(value).unwrap_or_default();
    if let Ok(disks) = select_disks(&devices, &nodes, &[]) {
        for disk in &disks {
            assert!(
                nodes.iter().any(|node| node.name == disk.node),
                "a disk chosen on a node that is not in the graph"
            );
        }
    }
    let wanted: Vec<String> = devices.iter().map(|device| device.name.clone()).collect();
    let _ = select_disks(&devices, &nodes, &wanted);
}

/// What `virsh` prints: `domblklist --details`, `domblkinfo` and `backup-dumpxml`.
pub fn virsh_output(text: &str) {
    for disk in parse_disks(text) {
        assert!(!disk.source.is_empty() && disk.source != "-");
    }
    let _ = parse_capacity(text);
    let _ = is_haven_job(text);
}
