//! The other node-protocol documents: a batch pull request as the storage node checks
//! it, a pull's answer (a JSON list of outcomes) and the `1`/`0` lines of existence
//! queries and batch writes, as Haven's client reads them.
#![no_main]

use haven_node_protocol::PullOutcome;

libfuzzer_sys::fuzz_target!(
    init: haven_fuzz::seeds::write_if_asked("node_pull"),
    |data: &[u8]| {
        haven_storage_node::fuzzing::pull_request(data);
        if let Ok(outcomes) = serde_json::from_slice::<Vec<PullOutcome>>(data) {
            let json = serde_json::to_vec(&outcomes).expect("outcomes encode");
            let again: Vec<PullOutcome> = serde_json::from_slice(&json).expect("outcomes parse");
            assert_eq!(again, outcomes);
        }
        if let Ok(text) = std::str::from_utf8(data) {
            haven_repo::fuzzing::yes_no_lines(text);
        }
    }
);
