//! `worker.toml` (`haven-worker`, through `haven-config`).
#![no_main]

libfuzzer_sys::fuzz_target!(
    init: haven_fuzz::seeds::write_if_asked("config_worker"),
    |data: &[u8]| {
        if let Ok(text) = std::str::from_utf8(data) {
            if let Ok(config) = haven_worker::WorkerConfig::parse("worker.toml", text) {
                for host in &config.hosts {
                    let _ = host.vm_sockets();
                }
            }
        }
    }
);
