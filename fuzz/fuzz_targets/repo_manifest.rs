//! Snapshot manifests and snapshot names (`haven-repo`).
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: haven_fuzz::seeds::write_if_asked("repo_manifest"),
    |data: &[u8]| haven_repo::fuzzing::manifest(data)
);
