//! vSphere SOAP replies: the bounded XML reader and every field reader the client
//! applies to a reply (`haven-vsphere`).
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: haven_fuzz::seeds::write_if_asked("vsphere_soap"),
    |data: &[u8]| haven_vsphere::fuzzing::reply(data)
);
