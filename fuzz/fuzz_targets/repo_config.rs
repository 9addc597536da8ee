//! The repository's `config` object, read before the key is known (`haven-repo`).
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: haven_fuzz::seeds::write_if_asked("repo_config"),
    |data: &[u8]| {
        let _ = haven_repo::RepoConfig::parse(data, "file:///repo");
    }
);
