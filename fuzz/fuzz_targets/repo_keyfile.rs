//! Key files (`keys/ID`), up to the Argon2id derivation (`haven-repo`).
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: haven_fuzz::seeds::write_if_asked("repo_keyfile"),
    |data: &[u8]| haven_repo::fuzzing::key_file(data)
);
