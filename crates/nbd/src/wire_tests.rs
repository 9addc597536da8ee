use super::*;

fn assert_protocol<T: std::fmt::Debug>(result: Result<T, NbdError>, needle: &str) {
    match result {
        Err(NbdError::Protocol(message)) => {
            assert!(message.contains(needle), "{message:?} lacks {needle:?}")
        }
        other => panic!("expected a protocol error containing {needle:?}, got {other:?}"),
    }
}

#[test]
fn option_request_layout() {
    let bytes = encode_option(OPT_GO, &[1, 2, 3]);
    assert_eq!(&bytes[0..8], b"IHAVEOPT");
    assert_eq!(&bytes[8..12], &[0, 0, 0, 7]);
    assert_eq!(&bytes[12..16], &[0, 0, 0, 3]);
    assert_eq!(&bytes[16..], &[1, 2, 3]);
}

#[test]
fn magics_spell_their_names() {
    assert_eq!(&NBDMAGIC.to_be_bytes(), b"NBDMAGIC");
    assert_eq!(&IHAVEOPT.to_be_bytes(), b"IHAVEOPT");
}

#[test]
fn go_payload_layout() {
    let bytes = encode_go("vm", &[INFO_BLOCK_SIZE]);
    assert_eq!(bytes, vec![0, 0, 0, 2, b'v', b'm', 0, 1, 0, 3]);
}

#[test]
fn set_meta_context_payload_layout() {
    let bytes = encode_set_meta_context("d", &["base:allocation".to_string(), "x".to_string()]);
    let mut expected = vec![0, 0, 0, 1, b'd', 0, 0, 0, 2, 0, 0, 0, 15];
    expected.extend_from_slice(b"base:allocation");
    expected.extend_from_slice(&[0, 0, 0, 1, b'x']);
    assert_eq!(bytes, expected);
}

fn option_reply(magic: u64, option: u32, reply_type: u32, length: u32) -> [u8; 20] {
    let mut out = [0u8; 20];
    out[0..8].copy_from_slice(&magic.to_be_bytes());
    out[8..12].copy_from_slice(&option.to_be_bytes());
    out[12..16].copy_from_slice(&reply_type.to_be_bytes());
    out[16..20].copy_from_slice(&length.to_be_bytes());
    out
}

#[test]
fn option_reply_header_validation() {
    let ok = option_reply(OPTION_REPLY_MAGIC, OPT_GO, REP_ACK, 0);
    assert_eq!(
        OptionReplyHeader::decode(&ok, OPT_GO).unwrap(),
        OptionReplyHeader {
            option: OPT_GO,
            reply_type: REP_ACK,
            length: 0
        }
    );
    let limit = option_reply(OPTION_REPLY_MAGIC, OPT_GO, REP_INFO, MAX_OPTION_REPLY);
    assert!(OptionReplyHeader::decode(&limit, OPT_GO).is_ok());

    assert_protocol(
        OptionReplyHeader::decode(&option_reply(1, OPT_GO, REP_ACK, 0), OPT_GO),
        "magic",
    );
    assert_protocol(
        OptionReplyHeader::decode(&ok, OPT_STRUCTURED_REPLY),
        "waiting for option 8",
    );
    let big = option_reply(OPTION_REPLY_MAGIC, OPT_GO, REP_INFO, MAX_OPTION_REPLY + 1);
    assert_protocol(OptionReplyHeader::decode(&big, OPT_GO), "exceeds the limit");
}

#[test]
fn info_export_and_block_size() {
    let mut export = vec![0, 0];
    export.extend_from_slice(&(1u64 << 30).to_be_bytes());
    export.extend_from_slice(&(TFLAG_HAS_FLAGS | TFLAG_READ_ONLY).to_be_bytes());
    assert_eq!(
        decode_info(&export).unwrap(),
        Info::Export {
            size: 1 << 30,
            flags: TFLAG_HAS_FLAGS | TFLAG_READ_ONLY
        }
    );

    let mut huge = vec![0, 0];
    huge.extend_from_slice(&u64::MAX.to_be_bytes());
    huge.extend_from_slice(&TFLAG_HAS_FLAGS.to_be_bytes());
    assert_protocol(decode_info(&huge), "exceeds 2^63");

    let mut no_flags = vec![0, 0];
    no_flags.extend_from_slice(&4096u64.to_be_bytes());
    no_flags.extend_from_slice(&0u16.to_be_bytes());
    assert_protocol(decode_info(&no_flags), "HAS_FLAGS");

    assert_protocol(decode_info(&export[..5]), "truncated");
    let mut trailing = export.clone();
    trailing.push(0);
    assert_protocol(decode_info(&trailing), "trailing");

    let mut block = vec![0, 3];
    for value in [512u32, 4096, 32 * 1024 * 1024] {
        block.extend_from_slice(&value.to_be_bytes());
    }
    assert_eq!(
        decode_info(&block).unwrap(),
        Info::BlockSize(BlockSize {
            minimum: 512,
            preferred: 4096,
            maximum: 32 * 1024 * 1024
        })
    );
    assert_eq!(decode_info(&[0, 9, 1, 2]).unwrap(), Info::Other(9));
}

#[test]
fn block_size_rules() {
    // (minimum, preferred, maximum, valid)
    let table = [
        (1, 4096, u32::MAX, true),
        (512, 4096, 512, true),
        (4096, 4096, 1 << 25, true),
        (3, 4096, 3, false),
        (1 << 17, 1 << 17, 1 << 17, false),
        (512, 1000, 4096, false),
        (512, 256, 4096, false),
        (512, 4096, 256, false),
        (512, 4096, 1000, false),
    ];
    for (minimum, preferred, maximum, valid) in table {
        assert_eq!(
            BlockSize::validate(minimum, preferred, maximum).is_ok(),
            valid,
            "{minimum} {preferred} {maximum}"
        );
    }
    assert_eq!(BlockSize::DEFAULT.max_request(), 32 << 20);
    let unlimited = BlockSize::validate(4096, 4096, u32::MAX).unwrap();
    assert_eq!(unlimited.max_request(), 32 << 20);
    let small = BlockSize::validate(512, 4096, 1 << 20).unwrap();
    assert_eq!(small.max_request(), 1 << 20);
}

#[test]
fn meta_context_reply() {
    let mut payload = 7u32.to_be_bytes().to_vec();
    payload.extend_from_slice(b"qemu:dirty-bitmap:bm0");
    assert_eq!(
        decode_meta_context(&payload).unwrap(),
        (7, "qemu:dirty-bitmap:bm0".to_string())
    );
    assert_protocol(decode_meta_context(&[0, 1]), "truncated");
    assert_protocol(decode_meta_context(&[0, 0, 0, 1, 0xff]), "utf-8");
}

#[test]
fn request_header_layout() {
    let header = RequestHeader {
        flags: 0x0102,
        command: CMD_BLOCK_STATUS,
        cookie: 0x1122_3344_5566_7788,
        offset: 0x0000_0001_0000_0000,
        length: 0x0010_0000,
    };
    let bytes = header.encode();
    assert_eq!(&bytes[0..4], &[0x25, 0x60, 0x95, 0x13]);
    assert_eq!(&bytes[4..6], &[1, 2]);
    assert_eq!(&bytes[6..8], &[0, 7]);
    assert_eq!(
        &bytes[8..16],
        &[0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]
    );
    assert_eq!(&bytes[16..24], &[0, 0, 0, 1, 0, 0, 0, 0]);
    assert_eq!(&bytes[24..28], &[0, 0x10, 0, 0]);
}

#[test]
fn reply_headers() {
    let mut simple = [0u8; 12];
    simple[0..4].copy_from_slice(&EIO.to_be_bytes());
    simple[4..12].copy_from_slice(&42u64.to_be_bytes());
    assert_eq!(decode_simple_reply(&simple).unwrap(), (EIO, 42));

    let mut chunk = [0u8; 16];
    chunk[0..2].copy_from_slice(&REPLY_FLAG_DONE.to_be_bytes());
    chunk[2..4].copy_from_slice(&CHUNK_OFFSET_DATA.to_be_bytes());
    chunk[4..12].copy_from_slice(&9u64.to_be_bytes());
    chunk[12..16].copy_from_slice(&4104u32.to_be_bytes());
    let header = ChunkHeader::decode(&chunk).unwrap();
    assert!(header.is_done());
    assert_eq!(header.chunk_type, CHUNK_OFFSET_DATA);
    assert_eq!(header.cookie, 9);
    assert_eq!(header.length, 4104);
}

#[test]
fn offset_hole_payload() {
    let mut payload = 4096u64.to_be_bytes().to_vec();
    payload.extend_from_slice(&512u32.to_be_bytes());
    assert_eq!(decode_offset_hole(&payload).unwrap(), (4096, 512));
    assert_protocol(decode_offset_hole(&payload[..11]), "truncated");
}

#[test]
fn error_chunks() {
    let mut payload = EIO.to_be_bytes().to_vec();
    payload.extend_from_slice(&3u16.to_be_bytes());
    payload.extend_from_slice(b"bad");
    assert_eq!(
        decode_error_chunk(CHUNK_ERROR, &payload).unwrap(),
        ErrorChunk {
            errno: EIO,
            message: "bad".into(),
            offset: None
        }
    );
    let mut with_offset = payload.clone();
    with_offset.extend_from_slice(&8192u64.to_be_bytes());
    assert_eq!(
        decode_error_chunk(CHUNK_ERROR_OFFSET, &with_offset)
            .unwrap()
            .offset,
        Some(8192)
    );
    assert_protocol(
        decode_error_chunk(CHUNK_ERROR_OFFSET, &payload),
        "truncated",
    );
    assert_protocol(decode_error_chunk(CHUNK_ERROR, &with_offset), "trailing");

    let mut lying_length = EIO.to_be_bytes().to_vec();
    lying_length.extend_from_slice(&100u16.to_be_bytes());
    lying_length.extend_from_slice(b"short");
    assert_protocol(decode_error_chunk(CHUNK_ERROR, &lying_length), "truncated");

    let mut zero = 0u32.to_be_bytes().to_vec();
    zero.extend_from_slice(&0u16.to_be_bytes());
    assert_protocol(decode_error_chunk(CHUNK_ERROR, &zero), "error value 0");
}

#[test]
fn block_status_payload() {
    let mut payload = 3u32.to_be_bytes().to_vec();
    for (length, flags) in [(65536u32, 0u32), (4096, 3)] {
        payload.extend_from_slice(&length.to_be_bytes());
        payload.extend_from_slice(&flags.to_be_bytes());
    }
    assert_eq!(
        decode_block_status(&payload).unwrap(),
        (3, vec![(65536, 0), (4096, 3)])
    );
    assert_protocol(decode_block_status(&payload[..4]), "descriptors");
    assert_protocol(decode_block_status(&payload[..10]), "descriptors");
}

#[test]
fn names_for_messages() {
    assert_eq!(errno_name(ENOSPC), "ENOSPC");
    assert_eq!(errno_name(999), "unknown error");
    assert_eq!(option_error_name(REP_ERR_UNKNOWN), "NBD_REP_ERR_UNKNOWN");
}
