//! Haven's NBD client against a server that answers with the fuzzer's bytes:
//! handshake, option replies, simple and structured replies to read, block status,
//! write, write zeroes and flush (`haven-nbd`).
#![no_main]

use std::sync::OnceLock;

use haven_fuzz::{ScriptedPeer, nbd_client_session, runtime};

fn peer() -> &'static ScriptedPeer {
    static PEER: OnceLock<ScriptedPeer> = OnceLock::new();
    PEER.get_or_init(|| runtime().block_on(async { ScriptedPeer::bind("nbd-client") }))
}

libfuzzer_sys::fuzz_target!(
    init: haven_fuzz::seeds::write_if_asked("nbd_client"),
    |data: &[u8]| {
        let peer = peer();
        runtime().block_on(async {
            tokio::join!(peer.answer(data, None), nbd_client_session(peer.path()));
        });
    }
);
