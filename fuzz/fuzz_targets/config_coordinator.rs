//! `coordinator.toml` (`haven-coordinator`, through `haven-config`).
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: haven_fuzz::seeds::write_if_asked("config_coordinator"),
    |data: &[u8]| {
        if let Ok(text) = std::str::from_utf8(data) {
            let _ = haven_coordinator::CoordinatorConfig::parse("coordinator.toml", text);
            haven_fuzz::check_env_expansion("coordinator.toml", text);
        }
    }
);
