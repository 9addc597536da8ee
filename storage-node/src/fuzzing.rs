//! Entry points for the coverage-guided fuzz targets in `fuzz/`, not part of the API.
//!
//! Each function runs the node's own parsing of what clients send (object keys and
//! their file names, continuation tokens, batch pull requests) or of what it reads
//! back from its disk (object files) on arbitrary input and checks what must hold
//! whatever the input; a panic is a finding.

use std::path::Component;

use crate::aligned_block::ALIGNMENT;
use crate::config::ReplicationConfig;
use crate::extension::pull::{allowed_source, parse_request, signature_headers};
use crate::keypath::{OBJECT_SUFFIX, escape_segment, key_to_path, unescape_segment};
use crate::object_file::{self, BLOCK_SIZE, FOOTER_LEN, ObjectMeta, ObjectWriter};
use crate::s3::listing::{key_of_token, token_for, url_encode};

/// An object key as a client sends it: its file path stays inside the bucket, reads
/// back as the same key, and its continuation token resumes after the same key.
pub fn object_key(key: &str) {
    if let Ok(path) = key_to_path(key) {
        let mut segments = Vec::new();
        let components: Vec<Component<'_>> = path.components().collect();
        for (index, component) in components.iter().enumerate() {
            let Component::Normal(name) = component else {
                panic!("{key:?} maps to {path:?}, which leaves its bucket");
            };
            let name = name.to_str().expect("escaped names are ASCII");
            let name = if index + 1 == components.len() {
                name.strip_suffix(OBJECT_SUFFIX)
                    .expect("an object file carries the suffix")
            } else {
                name
            };
            segments.push(unescape_segment(name).expect("an escaped name unescapes"));
        }
        assert_eq!(segments.join("/"), key, "a key's file reads as another key");
    }
    for segment in key.split('/') {
        assert_eq!(
            unescape_segment(&escape_segment(segment)).as_deref(),
            Some(segment)
        );
    }
    let _ = unescape_segment(key);
    let _ = url_encode(key);
    assert_eq!(key_of_token(&token_for(key)).ok().as_deref(), Some(key));
    let _ = key_of_token(key);
}

/// A batch pull request's body, checked as the node checks it before it connects
/// anywhere: the source must be a batch read at an allowed node, and only signature
/// headers may travel.
pub fn pull_request(body: &[u8]) {
    let Ok(request) = parse_request(body) else {
        return;
    };
    let replication = ReplicationConfig {
        pull_sources: vec!["http://127.0.0.1:9000".into(), "https://node-b".into()],
        pull_ca_file: None,
    };
    if let Ok(url) = allowed_source(&request, &replication) {
        assert!(
            replication.allows_source(&url),
            "a pull may reach {url}, which is not allowed"
        );
    }
    let _ = signature_headers(&request.headers);
    let _ = request.source_body();
}

/// An object file as the node reads it back from its disk, where bit rot, a torn
/// copy or a hand can have changed any byte: it is refused, or its metadata
/// describes data that lies inside the file, one checksum per block, and the same
/// data and metadata written again read back as the same metadata.
///
/// The input is a flag byte, then the file. With the flag's low bit set, the footer's
/// metadata checksum is made right first, so that changed metadata reaches the JSON
/// parser and the checks after it instead of stopping at the checksum.
pub fn object_file(input: &[u8]) {
    let Some((flag, file)) = input.split_first() else {
        return;
    };
    let mut file = file.to_vec();
    if flag & 1 == 1 {
        seal_metadata(&mut file);
    }
    let Ok(meta) = object_file::meta_of_whole(&file) else {
        return;
    };
    let size = usize::try_from(meta.size).expect("the data lies inside the file");
    let data = file.get(..size).expect("the data lies inside the file");
    assert_eq!(
        meta.block_crc32.len(),
        data.chunks(BLOCK_SIZE as usize).count()
    );
    let _ = meta.whole_crc32();
    let mut again = data.to_vec();
    again.extend(
        object_file::trailer(&meta, Some(ALIGNMENT as u64))
            .expect("metadata that was read encodes"),
    );
    let reread = object_file::meta_of_whole(&again).expect("a file written again reads");
    assert_eq!(
        serde_json::to_value(&reread).expect("metadata encodes"),
        serde_json::to_value(&meta).expect("metadata encodes")
    );
}

/// Sets the metadata checksum in an object file's footer to that of the metadata
/// its length field names, where the file is long enough to hold both.
fn seal_metadata(file: &mut [u8]) {
    let Some(footer_start) = file.len().checked_sub(FOOTER_LEN as usize) else {
        return;
    };
    let (body, footer) = file.split_at_mut(footer_start);
    let json_len = u32::from_le_bytes([footer[0], footer[1], footer[2], footer[3]]);
    let Some(json_start) = usize::try_from(json_len)
        .ok()
        .and_then(|len| body.len().checked_sub(len))
    else {
        return;
    };
    footer[4..8].copy_from_slice(&crc32fast::hash(&body[json_start..]).to_le_bytes());
}

/// Object files as the node writes them (empty, small, with attributes, of a
/// multipart upload), written through [`ObjectWriter`] into the system's temporary folder and
/// read back, each as it is and with the flag that reseals changed metadata: the
/// seeds of [`object_file`].
pub fn object_file_seeds() -> Vec<Vec<u8>> {
    let samples: [(usize, ObjectMeta); 3] = [
        (0, ObjectMeta::default()),
        (
            5_000,
            ObjectMeta {
                etag: "9e107d9d372bb6826bd81d3542a419d6".into(),
                content_type: Some("application/octet-stream".into()),
                user_metadata: [("vm".to_owned(), "db-1".to_owned())].into(),
                ..ObjectMeta::default()
            },
        ),
        (
            20_003,
            ObjectMeta {
                etag: "d41d8cd98f00b204e9800998ecf8427e-2".into(),
                parts_count: Some(2),
                ..ObjectMeta::default()
            },
        ),
    ];
    samples
        .into_iter()
        .enumerate()
        .map(|(number, (len, meta))| {
            let path = std::env::temp_dir()
                .join(format!("haven-object-seed-{}-{number}", std::process::id()));
            let mut writer = ObjectWriter::create(path).expect("a temporary object file");
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            writer.write(&data).expect("the seed's data");
            let (path, _) = writer.finish(meta).expect("the seed's metadata");
            let bytes = std::fs::read(&path).expect("the seed reads back");
            let _ = std::fs::remove_file(&path);
            bytes
        })
        .flat_map(|file| [0u8, 1].map(|flag| [&[flag][..], &file].concat()))
        .collect()
}
