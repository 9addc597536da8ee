//! Haven's QMP and guest-agent clients against a peer that answers with the fuzzer's
//! bytes: greeting, capabilities, replies, events and errors; the block graph read
//! from what the replies return (`haven-worker`).
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use haven_fuzz::{ScriptedPeer, runtime};
use haven_worker::adapters::qemu::qmp::{GuestAgent, QmpClient};
use serde_json::json;

fn peer() -> &'static ScriptedPeer {
    static PEER: OnceLock<ScriptedPeer> = OnceLock::new();
    PEER.get_or_init(|| runtime().block_on(async { ScriptedPeer::bind("qmp") }))
}

const TIMEOUT: Duration = Duration::from_secs(5);

libfuzzer_sys::fuzz_target!(
    init: haven_fuzz::seeds::write_if_asked("qmp"),
    |data: &[u8]| {
        let peer = peer();
        runtime().block_on(async {
            let qmp = async {
                let Ok(mut client) = QmpClient::connect(peer.path(), TIMEOUT).await else {
                    return;
                };
                for command in ["query-named-block-nodes", "query-block"] {
                    if let Ok(value) = client.execute(command, json!({"flat": true})).await {
                        haven_worker::fuzzing::qmp_block_graph(&value);
                    }
                }
                let _ = client.execute("blockdev-backup", json!({})).await;
            };
            tokio::join!(peer.answer(data, None), qmp);
            let agent = async {
                if let Ok(mut agent) = GuestAgent::connect(peer.path(), TIMEOUT).await {
                    let _ = agent.execute("guest-fsfreeze-freeze", json!({})).await;
                }
            };
            tokio::join!(peer.answer(data, None), agent);
        });
    }
);
