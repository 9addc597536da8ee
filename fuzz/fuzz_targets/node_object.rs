//! An object file as the storage node reads it back from its disk: its footer and
//! metadata parsed and checked against its length, as a GET or a HEAD opens it.
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: haven_fuzz::seeds::write_if_asked("node_object"),
    |data: &[u8]| haven_storage_node::fuzzing::object_file(data)
);
