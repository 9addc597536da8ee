//! Blob framing, checksums, authentication and decompression (`haven-repo`).
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: haven_fuzz::seeds::write_if_asked("repo_blob"),
    |data: &[u8]| haven_repo::fuzzing::blob(data)
);
