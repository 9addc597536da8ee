//! A libvirt domain for a VM backed up from vSphere: the hardware the vSphere adapter
//! recorded (`vsphere-hardware`, JSON) mapped onto KVM, as virt-v2v does it.
//!
//! | vSphere | libvirt |
//! |---|---|
//! | `numCPU`, `memoryMB` | `<vcpu>`, `<memory unit='MiB'>` |
//! | firmware `efi` / `bios` | `<os firmware='efi'>` / SeaBIOS, machine `q35` |
//! | guest id `windows*` | `<clock offset='localtime'>` (else `utc`) |
//! | disk on an IDE or SATA controller | `bus='sata'` (`sda`, `sdb`, …) |
//! | disk on any other controller (PVSCSI, LSI Logic, BusLogic, NVMe) | `bus='virtio'` (`vda`, …) |
//! | NIC of any model (VMXNET3, E1000, E1000e, …), its MAC | `model='virtio'` on the libvirt network given (`default`) or QEMU's user-mode network, the same MAC |
//!
//! The domain has no UUID (libvirt makes one). MAC addresses are kept: the VM is moving
//! to KVM, and its DHCP reservations and licences follow the MAC; the original must not
//! run on the same network at the same time. Disks the snapshot holds no data for are
//! left out (`dropped_disks`). Guests need virtio drivers: every Linux has them,
//! Windows needs virtio-win installed before the move.

use std::fmt::Write as _;

use quick_xml::escape::escape;
use serde::Deserialize;

use super::RestoredDiskFile;
use super::domain_xml::RewrittenDomain;

/// Most vCPUs and memory (MiB) a recorded VM may ask for; more is a corrupt record.
const MAX_CPUS: u32 = 4096;
const MAX_MEMORY_MIB: u64 = 64 << 20;

/// How the new domain runs and where its NICs go.
#[derive(Debug, Clone)]
pub struct DomainTarget {
    /// libvirt domain type: `kvm`, or `qemu` (TCG emulation, no KVM).
    pub domain_type: String,
    /// The libvirt network every NIC joins; `None`: QEMU's user-mode network (no host
    /// set-up, outbound only).
    pub network: Option<String>,
}

/// The recorded hardware: the fields of `haven_vsphere::VmInfo` the mapping reads.
#[derive(Debug, Deserialize)]
struct Hardware {
    cpus: u32,
    memory_mib: u64,
    #[serde(default)]
    firmware: Option<String>,
    #[serde(default)]
    guest_id: Option<String>,
    disks: Vec<Disk>,
    #[serde(default)]
    nics: Vec<Nic>,
}

#[derive(Debug, Deserialize)]
struct Disk {
    file_name: String,
    controller: String,
}

#[derive(Debug, Deserialize)]
struct Nic {
    #[serde(default)]
    mac: Option<String>,
}

/// Why the recorded hardware cannot become a domain.
#[derive(Debug, thiserror::Error)]
pub enum HardwareError {
    /// Not the JSON the vSphere adapter writes.
    #[error("the recorded vSphere hardware cannot be read: {0}")]
    Parse(String),
    /// Values no VM has.
    #[error("the recorded vSphere hardware is not usable: {0}")]
    Invalid(String),
}

/// The domain XML for `hardware_json` named `name` on the restored `disks` (named as in
/// the snapshot, which is the vSphere descriptor's name: `disk1` for `disk1.vmdk`).
pub fn vsphere_domain_xml(
    hardware_json: &str,
    name: &str,
    disks: &[RestoredDiskFile],
    target: &DomainTarget,
) -> Result<RewrittenDomain, HardwareError> {
    let hardware: Hardware = serde_json::from_str(hardware_json)
        .map_err(|error| HardwareError::Parse(error.to_string()))?;
    if hardware.cpus == 0 || hardware.cpus > MAX_CPUS {
        return Err(HardwareError::Invalid(format!("{} vCPUs", hardware.cpus)));
    }
    if hardware.memory_mib == 0 || hardware.memory_mib > MAX_MEMORY_MIB {
        return Err(HardwareError::Invalid(format!(
            "{} MiB of memory",
            hardware.memory_mib
        )));
    }
    let efi = hardware.firmware.as_deref() == Some("efi");
    let windows = hardware
        .guest_id
        .as_deref()
        .is_some_and(|id| id.starts_with("windows"));
    let mut xml = String::new();
    let _ = write!(
        xml,
        "<domain type='{}'>\n  <name>{}</name>\n  <memory unit='MiB'>{}</memory>\n  <vcpu>{}</vcpu>\n  \
         <os{}>\n    <type arch='x86_64' machine='q35'>hvm</type>\n    <boot dev='hd'/>\n  </os>\n  \
         <features>\n    <acpi/>\n    <apic/>\n  </features>\n  <clock offset='{}'/>\n  <devices>\n",
        escape(target.domain_type.as_str()),
        escape(name),
        hardware.memory_mib,
        hardware.cpus,
        if efi { " firmware='efi'" } else { "" },
        if windows { "localtime" } else { "utc" },
    );
    let mut dropped_disks = Vec::new();
    let (mut virtio, mut sata) = (0usize, 0usize);
    for disk in &hardware.disks {
        let disk_name = crate::adapters::vsphere::disk_name(&disk.file_name).ok();
        let Some(file) = disks
            .iter()
            .find(|file| Some(&file.name) == disk_name.as_ref())
        else {
            dropped_disks.push(disk_name.unwrap_or_else(|| disk.file_name.clone()));
            continue;
        };
        let (bus, target_dev) = if matches!(
            disk.controller.as_str(),
            "VirtualIDEController" | "VirtualAHCIController"
        ) {
            sata += 1;
            ("sata", format!("sd{}", drive_letters(sata - 1)))
        } else {
            virtio += 1;
            ("virtio", format!("vd{}", drive_letters(virtio - 1)))
        };
        let _ = write!(
            xml,
            "    <disk type='file' device='disk'>\n      <driver name='qemu' type='{}'/>\n      \
             <source file='{}'/>\n      <target dev='{target_dev}' bus='{bus}'/>\n    </disk>\n",
            escape(file.format.as_str()),
            escape(file.path.as_str()),
        );
    }
    for file in disks {
        let recorded = hardware.disks.iter().any(|disk| {
            crate::adapters::vsphere::disk_name(&disk.file_name)
                .ok()
                .as_ref()
                == Some(&file.name)
        });
        if !recorded {
            return Err(HardwareError::Invalid(format!(
                "restored disk {} is not in the recorded hardware",
                file.name
            )));
        }
    }
    for nic in &hardware.nics {
        let mac = nic
            .mac
            .as_deref()
            .filter(|mac| is_mac(mac))
            .map(|mac| format!("\n      <mac address='{}'/>", mac.to_ascii_lowercase()))
            .unwrap_or_default();
        let (kind, source) = match &target.network {
            Some(network) => (
                "network",
                format!("\n      <source network='{}'/>", escape(network.as_str())),
            ),
            None => ("user", String::new()),
        };
        let _ = write!(
            xml,
            "    <interface type='{kind}'>{mac}{source}\n      <model type='virtio'/>\n    </interface>\n",
        );
    }
    xml.push_str(
        "    <serial type='pty'/>\n    <console type='pty'/>\n    <graphics type='vnc' listen='127.0.0.1'/>\n    \
         <video>\n      <model type='virtio'/>\n    </video>\n  </devices>\n</domain>\n",
    );
    Ok(RewrittenDomain { xml, dropped_disks })
}

/// `a`…`z`, `aa`…: libvirt's target names after `vd`/`sd`.
fn drive_letters(mut index: usize) -> String {
    let mut letters = Vec::new();
    loop {
        letters.push(b'a' + (index % 26) as u8);
        if index < 26 {
            break;
        }
        index = index / 26 - 1;
    }
    letters.reverse();
    String::from_utf8(letters).unwrap_or_default()
}

/// A MAC address as `xx:xx:xx:xx:xx:xx` (hex).
fn is_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|part| part.len() == 2 && part.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str) -> RestoredDiskFile {
        RestoredDiskFile {
            name: name.into(),
            path: format!("/restore/vm-{name}.qcow2"),
            format: "qcow2".into(),
        }
    }

    const HARDWARE: &str = r#"{
        "name": "web", "cpus": 2, "memory_mib": 2048, "firmware": "efi", "guest_id": "windows9_64Guest",
        "disks": [
            {"file_name": "[ds] web/web.vmdk", "controller": "ParaVirtualSCSIController", "key": 2000},
            {"file_name": "[ds] web/web_1.vmdk", "controller": "VirtualAHCIController"},
            {"file_name": "[ds] web/web_2.vmdk", "controller": "VirtualLsiLogicController"},
            {"file_name": "[ds] web/web_3.vmdk", "controller": "VirtualNVMEController"}
        ],
        "nics": [
            {"model": "VirtualVmxnet3", "mac": "00:50:56:AB:CD:EF", "network": "VM Network"},
            {"model": "VirtualE1000", "mac": "not'a mac"}
        ]
    }"#;

    #[test]
    fn hardware_maps_to_virtio_sata_and_the_same_macs() {
        let target = DomainTarget {
            domain_type: "kvm".into(),
            network: Some("default".into()),
        };
        let domain = vsphere_domain_xml(
            HARDWARE,
            "web-kvm",
            &[file("web"), file("web_1"), file("web_3")],
            &target,
        )
        .unwrap();
        let xml = &domain.xml;
        assert!(xml.starts_with("<domain type='kvm'>"), "{xml}");
        assert!(xml.contains("<name>web-kvm</name>"));
        assert!(xml.contains("<vcpu>2</vcpu>") && xml.contains("<memory unit='MiB'>2048</memory>"));
        assert!(xml.contains("<os firmware='efi'>") && xml.contains("<clock offset='localtime'/>"));
        assert!(
            xml.contains(
                "<source file='/restore/vm-web.qcow2'/>\n      <target dev='vda' bus='virtio'/>"
            ),
            "{xml}"
        );
        assert!(
            xml.contains(
                "<source file='/restore/vm-web_1.qcow2'/>\n      <target dev='sda' bus='sata'/>"
            ),
            "{xml}"
        );
        assert!(
            xml.contains(
                "<source file='/restore/vm-web_3.qcow2'/>\n      <target dev='vdb' bus='virtio'/>"
            ),
            "{xml}"
        );
        assert_eq!(domain.dropped_disks, ["web_2"]);
        assert!(xml.contains("<mac address='00:50:56:ab:cd:ef'/>"), "{xml}");
        assert_eq!(
            xml.matches("<model type='virtio'/>\n    </interface>")
                .count(),
            2
        );
        assert!(!xml.contains("not'a"), "{xml}");
        assert!(!xml.contains("uuid"), "{xml}");
    }

    #[test]
    fn bad_records_are_errors() {
        let target = DomainTarget {
            domain_type: "qemu".into(),
            network: Some("default".into()),
        };
        let bad = |json: &str, disks: &[RestoredDiskFile]| {
            vsphere_domain_xml(json, "x", disks, &target)
                .unwrap_err()
                .to_string()
        };
        assert!(bad("{", &[]).contains("cannot be read"));
        let no_cpu = r#"{"cpus": 0, "memory_mib": 1, "disks": []}"#;
        assert!(bad(no_cpu, &[]).contains("0 vCPUs"));
        let other = r#"{"cpus": 1, "memory_mib": 1, "disks": []}"#;
        assert!(bad(other, &[file("disk9")]).contains("disk9"));
        assert_eq!(drive_letters(0), "a");
        assert_eq!(drive_letters(25), "z");
        assert_eq!(drive_letters(26), "aa");
    }
}
