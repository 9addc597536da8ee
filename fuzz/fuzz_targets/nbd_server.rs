//! Haven's NBD server (`haven serve-nbd`) against a client that sends the fuzzer's
//! bytes: greeting, options, requests (`haven-nbd`).
#![no_main]

use haven_fuzz::{nbd_serve, runtime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

libfuzzer_sys::fuzz_target!(
    init: haven_fuzz::seeds::write_if_asked("nbd_server"),
    |data: &[u8]| {
        runtime().block_on(async {
            let (client, server) = tokio::io::duplex(256 * 1024);
            let (mut from_server, mut to_server) = tokio::io::split(client);
            let send = async {
                let _ = to_server.write_all(data).await;
                let _ = to_server.shutdown().await;
            };
            let swallow = async {
                let mut sink = [0u8; 64 * 1024];
                while matches!(from_server.read(&mut sink).await, Ok(read) if read > 0) {}
            };
            tokio::join!(nbd_serve(server), send, swallow);
        });
    }
);
