//! Reading QEMU's block graph: which nodes are the VM's disks, their sizes and bitmaps.
//!
//! Everything here parses QMP replies, which come from outside: missing or mistyped
//! fields are errors or "unknown", never panics.

use serde_json::Value;

use crate::error::{Result, WorkerError};

/// Prefix of every block node, job and export Haven creates, so leftovers of an
/// interrupted run can be recognised and removed.
pub const HAVEN_PREFIX: &str = "haven-";

/// A dirty bitmap as `query-named-block-nodes` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BitmapInfo {
    /// Bitmap name.
    pub name: String,
    /// Whether it is recording writes (enabled).
    pub recording: bool,
    /// Whether an operation (an export, a job) is using it.
    pub busy: bool,
    /// Whether it is stored in the image (survives a clean restart).
    pub persistent: bool,
    /// Set when QEMU stopped without saving it: its content cannot be trusted.
    pub inconsistent: bool,
}

/// One named block node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node name.
    pub name: String,
    /// Block driver (`qcow2`, `raw`, `file`, ...).
    pub driver: String,
    /// Guest-visible size in bytes.
    pub size: u64,
    /// Image file name as QEMU reports it.
    pub filename: String,
    /// Read-only nodes are backing files, never the active layer of a disk.
    pub read_only: bool,
    /// Its dirty bitmaps.
    pub bitmaps: Vec<BitmapInfo>,
}

/// A disk chosen for backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveDisk {
    /// Name in the snapshot: the guest device id (`vda`) when QEMU has one, else the
    /// node name.
    pub name: String,
    /// Format node holding the data and the bitmaps.
    pub node: String,
    /// Size in bytes.
    pub size: u64,
    /// Its dirty bitmaps.
    pub bitmaps: Vec<BitmapInfo>,
}

/// Parses the reply of `query-named-block-nodes` (`flat: true`).
pub fn parse_nodes(reply: &Value) -> Result<Vec<NodeInfo>> {
    let list = reply
        .as_array()
        .ok_or_else(|| invalid("query-named-block-nodes did not return a list"))?;
    let mut nodes = Vec::with_capacity(list.len());
    for node in list {
        let Some(name) = node.get("node-name").and_then(Value::as_str) else {
            return Err(invalid("a block node without a node-name"));
        };
        let image = node.get("image");
        let bitmaps = node
            .get("dirty-bitmaps")
            .and_then(Value::as_array)
            .map(|list| list.iter().filter_map(parse_bitmap).collect())
            .unwrap_or_default();
        nodes.push(NodeInfo {
            name: name.to_string(),
            driver: text(node, "drv"),
            size: image
                .and_then(|image| image.get("virtual-size"))
                .and_then(Value::as_u64)
                .unwrap_or(0),
            filename: text(node, "file"),
            read_only: node.get("ro").and_then(Value::as_bool).unwrap_or(false),
            bitmaps,
        });
    }
    Ok(nodes)
}

/// Anonymous bitmaps (no name) belong to QEMU's own jobs and are ignored.
fn parse_bitmap(bitmap: &Value) -> Option<BitmapInfo> {
    let flag = |key: &str| bitmap.get(key).and_then(Value::as_bool).unwrap_or(false);
    Some(BitmapInfo {
        name: bitmap.get("name")?.as_str()?.to_string(),
        recording: flag("recording"),
        busy: flag("busy"),
        persistent: flag("persistent"),
        inconsistent: flag("inconsistent"),
    })
}

fn text(value: &Value, key: &str) -> String {
    value
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn invalid(message: &str) -> WorkerError {
    WorkerError::qemu(message)
}

/// A guest device and the node attached to it, from `query-block`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// `vda` for `/machine/peripheral/vda/virtio-backend`, else the drive id.
    pub name: String,
    /// Root node of the medium.
    pub node: String,
}

/// Parses `query-block`: devices with a medium (a qemu-storage-daemon has none).
pub fn parse_devices(reply: &Value) -> Vec<Device> {
    let Some(list) = reply.as_array() else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|block| {
            let node = block.get("inserted")?.get("node-name")?.as_str()?;
            let qdev = block
                .get("qdev")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let device = block
                .get("device")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let name = qdev
                .strip_prefix("/machine/peripheral/")
                .and_then(|rest| rest.split('/').next())
                .filter(|id| !id.is_empty())
                .or((!device.is_empty()).then_some(device))
                .unwrap_or(node);
            Some(Device {
                name: name.to_string(),
                node: node.to_string(),
            })
        })
        .collect()
}

/// Chooses the disks: the nodes named by `wanted` (by disk or node name), else every
/// guest device, else (qemu-storage-daemon) every named, writable qcow2 node.
pub fn select_disks(
    devices: &[Device],
    nodes: &[NodeInfo],
    wanted: &[String],
) -> Result<Vec<LiveDisk>> {
    let node = |name: &str| nodes.iter().find(|node| node.name == name);
    let mut candidates: Vec<(String, String)> = devices
        .iter()
        .map(|device| (device.name.clone(), device.node.clone()))
        .collect();
    if candidates.is_empty() || !wanted.is_empty() {
        let mut sorted: Vec<&NodeInfo> = nodes.iter().collect();
        // QEMU lists the newest node first; disk order should not depend on that.
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        for info in sorted {
            let known = candidates.iter().any(|(_, node)| *node == info.name);
            let automatic = info.driver == "qcow2"
                && !info.read_only
                && !info.name.starts_with('#')
                && !info.name.starts_with(HAVEN_PREFIX);
            if !known && (automatic || wanted.contains(&info.name)) {
                candidates.push((info.name.clone(), info.name.clone()));
            }
        }
    }
    let chosen: Vec<(String, String)> = if wanted.is_empty() {
        candidates
    } else {
        let mut chosen = Vec::new();
        for want in wanted {
            let found = candidates
                .iter()
                .find(|(name, node)| name == want || node == want)
                .ok_or_else(|| {
                    let names: Vec<&str> =
                        candidates.iter().map(|(name, _)| name.as_str()).collect();
                    WorkerError::InvalidInput(format!(
                        "qemu has no disk or block node {want:?} (disks: {})",
                        names.join(", ")
                    ))
                })?;
            chosen.push(found.clone());
        }
        chosen
    };
    if chosen.is_empty() {
        return Err(WorkerError::InvalidInput(
            "qemu shows no disk to back up: name the block nodes with --disk".into(),
        ));
    }
    let mut disks = Vec::with_capacity(chosen.len());
    for (name, node_name) in chosen {
        let info = node(&node_name)
            .ok_or_else(|| WorkerError::qemu(format!("block node {node_name:?} not found")))?;
        if disks
            .iter()
            .any(|disk: &LiveDisk| disk.node == node_name || disk.name == name)
        {
            return Err(WorkerError::InvalidInput(format!(
                "disk {name:?} chosen twice"
            )));
        }
        haven_repo::validate_name(&name).map_err(|_| {
            WorkerError::InvalidInput(format!(
                "disk name {name:?} is not a valid snapshot disk name: choose the node with --disk"
            ))
        })?;
        disks.push(LiveDisk {
            name,
            node: node_name,
            size: info.size,
            bitmaps: info.bitmaps.clone(),
        });
    }
    Ok(disks)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn nodes() -> Vec<NodeInfo> {
        parse_nodes(&json!([
            {"node-name": "top", "drv": "raw", "ro": false, "image": {"virtual-size": 100}},
            {"node-name": "disk0", "drv": "qcow2", "ro": false, "file": "/d0.qcow2",
             "image": {"virtual-size": 100},
             "dirty-bitmaps": [{"name": "haven.vm.20260101T000000Z", "recording": true,
                                "busy": false, "persistent": true, "granularity": 65536, "count": 0},
                               {"recording": false, "granularity": 65536, "count": 0}]},
            {"node-name": "base", "drv": "qcow2", "ro": true, "image": {"virtual-size": 100}},
            {"node-name": "disk1", "drv": "qcow2", "ro": false, "image": {"virtual-size": 200}},
            {"node-name": "haven-fleece-0", "drv": "qcow2", "ro": false, "image": {"virtual-size": 100}},
            {"node-name": "#block1", "drv": "file", "ro": false}
        ]))
        .unwrap()
    }

    #[test]
    fn storage_daemon_disks_are_writable_named_qcow2_nodes() {
        let disks = select_disks(&[], &nodes(), &[]).unwrap();
        let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["disk0", "disk1"]);
        assert_eq!(disks[0].bitmaps.len(), 1, "anonymous bitmaps are ignored");
        let chosen = select_disks(&[], &nodes(), &["disk1".into()]).unwrap();
        assert_eq!(chosen[0].size, 200);
        let error = select_disks(&[], &nodes(), &["nope".into()]).unwrap_err();
        assert!(error.to_string().contains("\"nope\""), "{error}");
    }

    #[test]
    fn vm_disks_are_named_after_their_device() {
        let devices = parse_devices(&json!([
            {"device": "", "qdev": "/machine/peripheral/vda/virtio-backend",
             "inserted": {"node-name": "disk0"}},
            {"device": "cd0", "qdev": "", "inserted": {"node-name": "disk1"}},
            {"device": "floppy", "qdev": ""}
        ]));
        assert_eq!(devices.len(), 2);
        let disks = select_disks(&devices, &nodes(), &[]).unwrap();
        let names: Vec<(&str, &str)> = disks
            .iter()
            .map(|d| (d.name.as_str(), d.node.as_str()))
            .collect();
        assert_eq!(names, [("vda", "disk0"), ("cd0", "disk1")]);
        let by_node = select_disks(&devices, &nodes(), &["disk0".into()]).unwrap();
        assert_eq!(by_node[0].name, "vda");
    }

    #[test]
    fn malformed_replies_are_errors() {
        assert!(parse_nodes(&json!({"x": 1})).is_err());
        assert!(parse_nodes(&json!([{"drv": "qcow2"}])).is_err());
        assert!(parse_devices(&json!("nonsense")).is_empty());
        assert!(select_disks(&[], &[], &[]).is_err());
    }
}
