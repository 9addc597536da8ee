//! Entry points for the coverage-guided fuzz targets in `fuzz/`, not part of the API.
//!
//! Each function runs the node's own parsing of what clients send (object keys and
//! their file names, continuation tokens, batch pull requests) on arbitrary input and
//! checks what must hold whatever the input; a panic is a finding.

use std::path::Component;

use crate::config::ReplicationConfig;
use crate::extension::pull::{allowed_source, parse_request, signature_headers};
use crate::keypath::{OBJECT_SUFFIX, escape_segment, key_to_path, unescape_segment};
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
