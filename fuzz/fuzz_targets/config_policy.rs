//! `policy.toml`: policies, schedules, retention and the repository allowlist
//! (`haven-coordinator`).
#![no_main]

use haven_coordinator::policy::{RepositoryAllowlist, parse_policies};

libfuzzer_sys::fuzz_target!(
    init: haven_fuzz::seeds::write_if_asked("config_policy"),
    |data: &[u8]| {
        if let Ok(text) = std::str::from_utf8(data) {
            let _ = parse_policies("policy.toml", text, &RepositoryAllowlist::any());
            let narrow = RepositoryAllowlist::new(vec!["s3://backups/*".into()]);
            let _ = parse_policies("policy.toml", text, &narrow);
        }
    }
);
