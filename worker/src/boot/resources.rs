//! CPUs and memory of the sandbox: what the snapshot's recorded VM configuration asks
//! for, held within the limits the caller sets (boot tests share a worker with
//! backups, and a hostile configuration must not ask for the whole machine).

use haven_repo::Manifest;
use quick_xml::Reader;
use quick_xml::events::Event;

use crate::restore::vm::LIBVIRT_XML;

/// Memory used when the snapshot records none, in MiB.
pub const DEFAULT_MEMORY_MIB: u64 = 512;
/// Least memory a guest is given, in MiB (below it a stock kernel and initrd do not
/// come up, which would be a false failure).
pub const MIN_MEMORY_MIB: u64 = 256;

/// What the sandbox gives the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    /// Virtual CPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
}

/// The upper bounds of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// At most this many virtual CPUs.
    pub max_cpus: u32,
    /// At most this much memory, in MiB.
    pub max_memory_mib: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_cpus: 2,
            max_memory_mib: 2048,
        }
    }
}

/// The resources for `manifest`'s guest: its libvirt `<vcpu>` and `<memory>` when it
/// recorded a domain, else one CPU and [`DEFAULT_MEMORY_MIB`]; always within `limits`.
pub fn resources(manifest: &Manifest, limits: Limits) -> Resources {
    let (cpus, memory_mib) = match &manifest.vm_config {
        Some(config) if config.kind == LIBVIRT_XML => libvirt_resources(&config.data),
        _ => (None, None),
    };
    Resources {
        cpus: cpus.unwrap_or(1).clamp(1, limits.max_cpus.max(1)),
        memory_mib: memory_mib
            .unwrap_or(DEFAULT_MEMORY_MIB)
            .clamp(MIN_MEMORY_MIB, limits.max_memory_mib.max(MIN_MEMORY_MIB)),
    }
}

/// `<domain><vcpu>N</vcpu><memory unit="U">N</memory>` of a libvirt domain XML;
/// anything unreadable is `None` (the defaults apply).
fn libvirt_resources(xml: &str) -> (Option<u32>, Option<u64>) {
    let mut reader = Reader::from_str(xml);
    let mut path: Vec<String> = Vec::new();
    let mut unit = String::from("KiB");
    let (mut cpus, mut memory) = (None, None);
    loop {
        match reader.read_event() {
            Ok(Event::Start(start)) => {
                let name = String::from_utf8_lossy(start.name().as_ref()).into_owned();
                if name == "memory" {
                    unit = start
                        .attributes()
                        .flatten()
                        .find(|attribute| attribute.key.as_ref() == b"unit")
                        .map(|attribute| String::from_utf8_lossy(&attribute.value).into_owned())
                        .unwrap_or_else(|| "KiB".into());
                }
                path.push(name);
            }
            Ok(Event::End(_)) => {
                path.pop();
            }
            Ok(Event::Text(text)) if path.len() == 2 && path[0] == "domain" => {
                let value = String::from_utf8_lossy(&text);
                let value = value.trim();
                match path[1].as_str() {
                    "vcpu" => cpus = value.parse().ok(),
                    "memory" => {
                        memory = value
                            .parse::<u64>()
                            .ok()
                            .and_then(|amount| to_mib(amount, &unit))
                    }
                    _ => {}
                }
            }
            Ok(Event::Eof) | Err(_) => break,
            Ok(_) => {}
        }
    }
    (cpus, memory)
}

/// `amount` of libvirt's `unit` in MiB.
fn to_mib(amount: u64, unit: &str) -> Option<u64> {
    let bytes_per_unit: u64 = match unit {
        "b" | "bytes" => 1,
        "KB" => 1000,
        "k" | "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "G" | "GiB" => 1 << 30,
        _ => return None,
    };
    Some(amount.checked_mul(bytes_per_unit)? >> 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libvirt_domain_values_are_read_and_units_converted() {
        let xml = "<domain type='kvm'><name>web</name><memory unit='KiB'>1048576</memory>\
                   <vcpu placement='static'>4</vcpu><devices><memory unit='GiB'>9</memory>\
                   </devices></domain>";
        assert_eq!(libvirt_resources(xml), (Some(4), Some(1024)));
        assert_eq!(
            libvirt_resources("<domain><memory unit='GiB'>3</memory></domain>"),
            (None, Some(3072))
        );
        assert_eq!(libvirt_resources("<domain><vcpu>x</vcpu>"), (None, None));
        assert_eq!(to_mib(u64::MAX, "GiB"), None);
    }
}
