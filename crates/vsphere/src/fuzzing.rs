//! Entry point for the coverage-guided fuzz target in `fuzz/`, not part of the API.
//!
//! A vSphere server's SOAP replies are read by [`crate::xml::Element::parse`] and then
//! field by field; this runs every reader the client applies to a reply on arbitrary
//! bytes. A panic, or a reply read into something that breaks the client's own
//! promises, is a finding.

use crate::client::{changed_page, object_contents, parse_reply, snapshot_devices, vm_info_of};
use crate::model::{self, MoRef};
use crate::xml::Element;

/// Every call whose reply the client reads.
const CALLS: &[&str] = &[
    "RetrieveServiceContent",
    "Login",
    "RetrieveProperties",
    "CreateContainerView",
    "QueryChangedDiskAreas",
    "CreateSnapshot_Task",
];

/// Reads `body` as the reply to each call the client makes, with each status a
/// server may answer.
pub fn reply(body: &[u8]) {
    for status in [200, 500] {
        for call in CALLS {
            if let Ok(reply) = parse_reply(call, status, body) {
                read_reply(&reply);
            }
        }
    }
}

fn read_reply(reply: &Element) {
    let _ = reply.require("returnval").and_then(Element::moref);
    if let Ok(objects) = object_contents(reply) {
        let vm = MoRef::new("VirtualMachine", "vm-1");
        for object in &objects {
            let _ = vm_info_of(&vm, object);
            let _ = model::disks(&snapshot_devices(object));
        }
    }
    // A disk's changed areas, paged as the client pages them.
    let capacity = 1 << 40;
    let mut areas = Vec::new();
    if let Ok(end) = changed_page(reply, 0, capacity, &mut areas) {
        assert!(end > 0 && end <= capacity);
        let mut previous_end = 0;
        for area in &areas {
            assert!(area.length > 0 && area.start >= previous_end);
            previous_end = area.start + area.length;
            assert!(previous_end <= end);
        }
    }
}
