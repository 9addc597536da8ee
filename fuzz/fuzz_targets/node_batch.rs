//! The storage node's batch streams (`haven-node-protocol`): records of key, size,
//! ETag, CRC-32 and data, read by the node (batch writes, pulls) and by Haven's
//! client (batch reads). The first byte sets the size of the pieces the body
//! arrives in; every object's data adds up to its declared size.
#![no_main]

use bytes::Bytes;
use haven_node_protocol::{Decoder, Event, Record};

libfuzzer_sys::fuzz_target!(
    init: haven_fuzz::seeds::write_if_asked("node_batch"),
    |data: &[u8]| {
        let Some((&piece, body)) = data.split_first() else {
            return;
        };
        let mut decoder = Decoder::new();
        let mut current: Option<(u64, u64)> = None;
        for part in body.chunks(usize::from(piece) + 1) {
            decoder.push(Bytes::copy_from_slice(part));
            loop {
                match decoder.next_event() {
                    Ok(Some(Event::Record(record))) => {
                        assert!(current.is_none(), "a record inside an object");
                        assert!(record.key().len() <= haven_node_protocol::MAX_KEY_LEN);
                        if let Record::Object { info, .. } = &record {
                            current = Some((info.size, 0));
                        }
                    }
                    Ok(Some(Event::Data(bytes))) => {
                        let (size, got) = current.as_mut().expect("data outside an object");
                        *got += bytes.len() as u64;
                        assert!(*got <= *size, "more data than the object's size");
                    }
                    Ok(Some(Event::ObjectEnd)) => {
                        let (size, got) = current.take().expect("an end outside an object");
                        assert_eq!(size, got, "an object ended short");
                    }
                    Ok(None) => break,
                    Err(_) => return,
                }
            }
        }
        if decoder.finish().is_ok() {
            assert!(current.is_none(), "a finished stream inside an object");
        }
    }
);
