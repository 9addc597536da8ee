//! libvirt documents: a stored domain XML rewritten for a restore
//! (`--libvirt-define`) and read for a boot test's CPUs and memory, and what `virsh`
//! prints (`haven-worker`).
#![no_main]

use haven_repo::{Consistency, Manifest, SourceInfo, VmConfig};
use haven_worker::boot::resources::{Limits, resources};
use haven_worker::restore::vm::RestoredDiskFile;
use haven_worker::restore::vm::domain_xml::rewrite_domain_xml;

libfuzzer_sys::fuzz_target!(
    init: haven_fuzz::seeds::write_if_asked("libvirt_xml"),
    |data: &[u8]| {
        let Ok(xml) = std::str::from_utf8(data) else {
            return;
        };
        let disks = [RestoredDiskFile {
            name: "vda".into(),
            path: "/restore/vm-copy-vda.qcow2".into(),
            format: "qcow2".into(),
        }];
        if let Ok(rewritten) = rewrite_domain_xml(xml, "vm-copy", &disks) {
            // What is written is a domain the rewrite reads again.
            rewrite_domain_xml(&rewritten.xml, "vm-copy", &disks)
                .expect("a rewritten domain can be rewritten again");
        }
        let manifest = Manifest {
            version: 1,
            vm: "vm".into(),
            timestamp: "2026-12-06T00:00:00Z".into(),
            created_by: "haven".into(),
            source: SourceInfo {
                kind: "libvirt".into(),
                origin: "qemu:///system".into(),
            },
            consistency: Consistency::CrashConsistent,
            consistency_reason: None,
            parent: None,
            disks: Vec::new(),
            vm_config: Some(VmConfig {
                kind: "libvirt-xml".into(),
                data: xml.into(),
            }),
            labels: Default::default(),
        };
        let limits = Limits::default();
        let chosen = resources(&manifest, limits);
        assert!(chosen.cpus >= 1 && chosen.cpus <= limits.max_cpus);
        assert!(chosen.memory_mib <= limits.max_memory_mib);
        haven_worker::fuzzing::virsh_output(xml);
    }
);
