//! What the client reads out of vSphere, in plain types (no generated bindings).

use std::collections::HashMap;

use serde::Serialize;

use crate::xml::{Element, XmlResult};

/// A managed object reference: the object's type and its id (`VirtualMachine`, `vm-42`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct MoRef {
    /// The managed object type.
    pub kind: String,
    /// The id.
    pub value: String,
}

impl MoRef {
    /// A reference to object `value` of type `kind`.
    pub fn new(kind: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            value: value.into(),
        }
    }

    /// The reference as element `name` of a request.
    pub fn to_xml(&self, name: &str) -> String {
        format!(
            "<{name} type=\"{}\">{}</{name}>",
            crate::xml::escape(&self.kind),
            crate::xml::escape(&self.value)
        )
    }
}

/// A VM's virtual disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VirtualDisk {
    /// Device key, which `QueryChangedDiskAreas` takes.
    pub key: i32,
    /// The label vSphere shows (`Hard disk 1`).
    pub label: String,
    /// Descriptor path, `[datastore] folder/name.vmdk`.
    pub file_name: String,
    /// Size in bytes.
    pub capacity: u64,
    /// The change-tracking id of this disk's state, when tracking is on.
    pub change_id: Option<String>,
    /// The type of the controller it hangs on (`ParaVirtualSCSIController`, ...).
    pub controller: String,
    /// The backing's type (`VirtualDiskFlatVer2BackingInfo`, ...).
    pub backing: String,
}

/// A VM's network card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Nic {
    /// The card's model, as vSphere types it (`VirtualVmxnet3`, `VirtualE1000`, ...).
    pub model: String,
    /// MAC address.
    pub mac: Option<String>,
    /// The network or port group it is connected to (its label).
    pub network: Option<String>,
}

/// A VM's hardware and state, as a backup records and uses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmInfo {
    /// The VM's reference.
    #[serde(skip)]
    pub vm: MoRef,
    /// Its name.
    pub name: String,
    /// BIOS UUID.
    pub uuid: Option<String>,
    /// Guest OS id (`otherGuest`, `ubuntu64Guest`, ...).
    pub guest_id: Option<String>,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// `bios` or `efi`.
    pub firmware: Option<String>,
    /// Virtual disks, in device order.
    pub disks: Vec<VirtualDisk>,
    /// Network cards.
    pub nics: Vec<Nic>,
    /// Whether changed block tracking is on.
    #[serde(skip)]
    pub change_tracking: bool,
    /// Whether VMware Tools run in the guest (a quiesced snapshot needs them).
    #[serde(skip)]
    pub tools_running: bool,
    /// Every snapshot of the VM, the tree flattened.
    #[serde(skip)]
    pub snapshots: Vec<SnapshotEntry>,
}

/// A VM as an inventory lists it: its name and disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSummary {
    /// The VM's reference.
    pub vm: MoRef,
    /// Its name.
    pub name: String,
    /// Its virtual disks, in device order.
    pub disks: Vec<VirtualDisk>,
}

/// One snapshot of a VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotEntry {
    /// Its reference.
    pub snapshot: MoRef,
    /// Its name.
    pub name: String,
}

/// One changed area of a disk, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Area {
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub length: u64,
}

/// The disks of a device list (`config.hardware.device`), each with its controller's type.
pub(crate) fn disks(devices: &[&Element]) -> XmlResult<Vec<VirtualDisk>> {
    // Device types by key, in one pass: a reply may list hundreds of thousands of
    // devices, and a search per disk would take the square of that. The first device
    // of a key names it.
    let mut types: HashMap<i32, Option<&str>> = HashMap::new();
    for device in devices {
        if let Ok(key) = device.number::<i32>("key") {
            types.entry(key).or_insert(device.xsi_type.as_deref());
        }
    }
    let controller_type = |key: i32| -> String {
        types
            .get(&key)
            .copied()
            .flatten()
            .unwrap_or("unknown")
            .to_string()
    };
    let mut disks = Vec::new();
    for device in devices {
        if device.xsi_type.as_deref() != Some("VirtualDisk") {
            continue;
        }
        let key = device.number::<i32>("key")?;
        let capacity = match device.optional_number::<i64>("capacityInBytes")? {
            Some(bytes) if bytes > 0 => bytes,
            _ => device
                .number::<i64>("capacityInKB")?
                .checked_mul(1024)
                .ok_or("<capacityInKB> overflows")?,
        };
        let capacity =
            u64::try_from(capacity).map_err(|_| format!("disk {key} has a negative capacity"))?;
        let backing = device.require("backing")?;
        let change_id = backing
            .child("changeId")
            .map(|id| id.text.trim().to_string())
            .filter(|id| !id.is_empty());
        disks.push(VirtualDisk {
            key,
            label: device
                .child("deviceInfo")
                .and_then(|info| info.child("label"))
                .map(|label| label.text.trim().to_string())
                .unwrap_or_else(|| format!("disk {key}")),
            file_name: backing.text_of("fileName")?.to_string(),
            capacity,
            change_id,
            controller: match device.optional_number::<i32>("controllerKey")? {
                Some(controller) => controller_type(controller),
                None => "unknown".into(),
            },
            backing: backing.xsi_type.clone().unwrap_or_default(),
        });
    }
    Ok(disks)
}

/// Device types that are network cards.
const NIC_TYPES: &[&str] = &[
    "VirtualE1000",
    "VirtualE1000e",
    "VirtualPCNet32",
    "VirtualVmxnet",
    "VirtualVmxnet2",
    "VirtualVmxnet3",
    "VirtualVmxnet3Vrdma",
    "VirtualSriovEthernetCard",
];

/// The network cards of a device list.
pub(crate) fn nics(devices: &[&Element]) -> Vec<Nic> {
    devices
        .iter()
        .filter_map(|device| {
            let model = device.xsi_type.as_deref()?;
            NIC_TYPES.contains(&model).then(|| Nic {
                model: model.to_string(),
                mac: device
                    .child("macAddress")
                    .map(|mac| mac.text.trim().to_string()),
                network: device
                    .child("deviceInfo")
                    .and_then(|info| info.child("summary"))
                    .map(|summary| summary.text.trim().to_string()),
            })
        })
        .collect()
}

/// Every snapshot of a `rootSnapshotList` tree (nesting is bounded by the parser).
pub(crate) fn snapshot_tree(list: &[&Element], into: &mut Vec<SnapshotEntry>) -> XmlResult<()> {
    for node in list {
        into.push(SnapshotEntry {
            snapshot: node.require("snapshot")?.moref()?,
            name: node.text_of("name")?.to_string(),
        });
        let children: Vec<&Element> = node.children("childSnapshotList").collect();
        snapshot_tree(&children, into)?;
    }
    Ok(())
}

/// The datastore and path of a `[datastore] folder/name.vmdk` file name.
pub fn datastore_path(file_name: &str) -> Option<(&str, &str)> {
    let rest = file_name.strip_prefix('[')?;
    let (datastore, path) = rest.split_once(']')?;
    let path = path.trim();
    (!datastore.is_empty() && !path.is_empty()).then_some((datastore, path))
}

/// The raw data file of a flat disk: `name.vmdk`'s `name-flat.vmdk`, where ESXi keeps
/// the disk's bytes as they are.
pub fn flat_file(path: &str) -> Option<String> {
    path.strip_suffix(".vmdk")
        .map(|stem| format!("{stem}-flat.vmdk"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_disk_names_its_controller_s_type() {
        let reply = br#"<devices xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
            <device xsi:type="VirtualDisk"><key>2000</key><controllerKey>1000</controllerKey>
              <capacityInBytes>1048576</capacityInBytes>
              <backing xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>[ds] a.vmdk</fileName></backing></device>
            <device xsi:type="ParaVirtualSCSIController"><key>1000</key></device>
            <device xsi:type="VirtualIDEController"><key>200</key></device>
            <device xsi:type="VirtualDisk"><key>3000</key><controllerKey>200</controllerKey>
              <capacityInKB>1024</capacityInKB>
              <backing xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>[ds] b.vmdk</fileName></backing></device>
            <device xsi:type="VirtualDisk"><key>3001</key><controllerKey>7</controllerKey>
              <capacityInKB>1024</capacityInKB>
              <backing xsi:type="VirtualDiskFlatVer2BackingInfo"><fileName>[ds] c.vmdk</fileName></backing></device>
            </devices>"#;
        let root = Element::parse(reply).unwrap();
        let devices: Vec<&Element> = root.children("device").collect();
        let found: Vec<(i32, String)> = disks(&devices)
            .unwrap()
            .into_iter()
            .map(|disk| (disk.key, disk.controller))
            .collect();
        assert_eq!(
            found,
            [
                (2000, "ParaVirtualSCSIController".to_string()),
                (3000, "VirtualIDEController".to_string()),
                (3001, "unknown".to_string()),
            ]
        );
    }

    #[test]
    fn datastore_paths() {
        assert_eq!(
            datastore_path("[LocalDS_0] vm/disk1.vmdk"),
            Some(("LocalDS_0", "vm/disk1.vmdk"))
        );
        assert_eq!(datastore_path("vm/disk1.vmdk"), None);
        assert_eq!(datastore_path("[] x"), None);
        assert_eq!(
            flat_file("vm/disk1.vmdk").as_deref(),
            Some("vm/disk1-flat.vmdk")
        );
    }
}
