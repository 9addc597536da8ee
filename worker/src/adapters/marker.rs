//! Names of the hypervisor objects that mark a snapshot point.
//!
//! Both adapters leave an object in the hypervisor at each snapshot point (a QEMU dirty
//! bitmap, a libvirt checkpoint) that the next incremental starts from. Haven names
//! them `haven<sep>VM<sep>YYYYMMDDTHHMMSSZ` so that they never collide with other
//! tools' objects and one VM never claims another's: the compact timestamp has a fixed
//! shape that no VM name suffix can imitate.

/// The marker for `vm` at snapshot `timestamp` (RFC 3339), with `separator` between
/// the parts (each hypervisor object kind has its own naming rules).
pub fn marker_name(separator: char, vm: &str, timestamp: &str) -> String {
    let compact: String = timestamp
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    format!("haven{separator}{vm}{separator}{compact}")
}

/// Whether `name` is a marker Haven made for `vm` with `separator`.
pub fn is_marker(separator: char, vm: &str, name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix("haven")
        .and_then(|rest| rest.strip_prefix(separator))
        .and_then(|rest| rest.strip_prefix(vm))
        .and_then(|rest| rest.strip_prefix(separator))
    else {
        return false;
    };
    // 20261125T173402Z
    let bytes = rest.as_bytes();
    bytes.len() == 16
        && bytes[8] == b'T'
        && bytes[15] == b'Z'
        && bytes[..8]
            .iter()
            .chain(&bytes[9..15])
            .all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_never_cross_vms() {
        let name = marker_name('.', "web", "2026-11-25T17:34:02Z");
        assert_eq!(name, "haven.web.20261125T173402Z");
        assert!(is_marker('.', "web", &name));
        assert!(!is_marker('-', "web", &name));
        assert!(!is_marker('.', "we", &name));
        assert!(!is_marker('.', "web.20261125T173402Z", &name));
        let other = marker_name('.', "web.x", "2026-11-25T17:34:02Z");
        assert!(!is_marker('.', "web", &other));
        assert!(!is_marker('.', "web", "haven.web.2026112XT173402Z"));
        assert!(!is_marker('.', "web", "virtnbdbackup.0"));
    }
}
