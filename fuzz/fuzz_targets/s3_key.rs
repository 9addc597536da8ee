//! Object keys as S3 clients send them to the storage node: their escaping into file
//! names, which must stay inside the bucket and read back as the same key, and the
//! listings' URL encoding and continuation tokens (`haven-storage-node`).
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: haven_fuzz::seeds::write_if_asked("s3_key"),
    |data: &[u8]| {
        if let Ok(key) = std::str::from_utf8(data) {
            haven_storage_node::fuzzing::object_key(key);
        }
    }
);
