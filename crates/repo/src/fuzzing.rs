//! Entry points for the coverage-guided fuzz targets in `fuzz/`, not part of the API.
//!
//! Each function runs one of the crate's own parsers of stored or received bytes on
//! arbitrary input, the way the repository runs it, and checks what must hold
//! whatever the input (panics are the findings). Nothing here parses on its own: the
//! fuzz targets must exercise the code that runs in production.

use std::sync::OnceLock;

use bytes::Bytes;

use crate::format::blob::{self, BlobKind, Compression};
use crate::format::crypto::{MasterKey, RepoKeys};
use crate::format::keyfile::KeyFile;

/// Largest plaintext the fuzzed blobs may declare: the repository's own largest bound
/// (a manifest's).
const MAX_PLAIN: u64 = 16 << 20;

fn keys() -> &'static RepoKeys {
    static KEYS: OnceLock<RepoKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        MasterKey::from_bytes([7; 32])
            .derive()
            .expect("fixed key derives")
    })
}

/// Blob framing and opening. The first byte picks the blob kind and how the rest is
/// used: as a stored blob (framing, CRC, pieces, authentication), or, with the high bit
/// set, as the compression flag, declared length and payload of a blob sealed with the
/// repository key, so that what follows authentication (decompression and the length
/// checks) is reached too.
pub fn blob(input: &[u8]) {
    let Some((&mode, rest)) = input.split_first() else {
        return;
    };
    let kind = blob_kind(mode);
    let cipher = keys().blob_cipher();
    if mode & 0x80 == 0 {
        let whole = blob::check_frame_only("k", rest).is_ok();
        let pieces: Vec<Bytes> = rest
            .chunks(usize::from(mode & 0x1f) + 1)
            .map(Bytes::copy_from_slice)
            .collect();
        let in_pieces = blob::check_pieces_of_kind("k", &pieces, kind).is_ok();
        assert!(whole || !in_pieces, "pieces accepted, whole blob refused");
        let _ = blob::open(cipher, "k", kind, b"k", rest, MAX_PLAIN);
        // Whatever is sealed opens to itself.
        let sealed = blob::seal(cipher, kind, b"k", rest).expect("seals");
        let opened = blob::open(cipher, "k", kind, b"k", &sealed, MAX_PLAIN).expect("opens");
        assert_eq!(opened, rest);
        return;
    }
    let [flag, l0, l1, l2, l3, body @ ..] = rest else {
        return;
    };
    let compression = if flag & 1 == 0 {
        Compression::None
    } else {
        Compression::Zstd
    };
    let plain_len = u32::from_le_bytes([*l0, *l1, *l2, *l3]) as usize;
    let Ok(sealed) = blob::seal_body(cipher, kind, b"k", plain_len, compression, body) else {
        return;
    };
    if let Ok(plain) = blob::open(cipher, "k", kind, b"k", &sealed, MAX_PLAIN) {
        assert_eq!(plain.len(), plain_len, "opened a blob of another length");
    }
}

fn blob_kind(mode: u8) -> BlobKind {
    match mode % 6 {
        0 => BlobKind::Chunk,
        1 => BlobKind::Index,
        2 => BlobKind::Manifest,
        3 => BlobKind::VerifyRecord,
        4 => BlobKind::BootRecord,
        _ => BlobKind::BootEvidence,
    }
}

/// A key file: parsed, then checked as far as opening goes before Argon2id would
/// run (deriving costs 64 MiB and a quarter of a second, which no fuzzer can afford
/// per input; the derivation itself is the `argon2` crate's).
pub fn key_file(input: &[u8]) {
    let Ok(file) = KeyFile::parse(input, "keys/k") else {
        return;
    };
    let _ = file.checked_parts("k", "keys/k");
    // What is parsed is stored again as it was read.
    let json = file.to_json().expect("a parsed key file encodes");
    let again = KeyFile::parse(&json, "keys/k").expect("an encoded key file parses");
    assert_eq!(again.to_json().expect("encodes"), json);
}

/// The storage node's `1`/`0` answers (existence queries, batch writes).
pub fn yes_no_lines(text: &str) {
    if let Ok(answers) = crate::storage::node_client::parse_yes_no(text) {
        assert_eq!(answers.len(), text.lines().count());
    }
}

/// The object name the fuzzed manifests are read from.
pub const MANIFEST_KEY: &str = "snapshots/vm/2026-12-06T00:00:00Z";

/// A manifest's decrypted JSON, read the way [`crate::Repository::read_manifest`]
/// reads it; a manifest that passes is stored again as the same document.
/// The manifest must name the snapshot it is stored as, so the fuzzed documents are
/// read as [`MANIFEST_KEY`]; object names themselves are parsed as names too.
pub fn manifest(input: &[u8]) {
    if let Ok(text) = std::str::from_utf8(input) {
        if let Some(id) = crate::SnapshotId::from_manifest_key(text) {
            assert_eq!(id.manifest_key(), text, "a manifest key reads as another");
        }
        let _ = text.parse::<crate::SnapshotRef>();
    }
    let Ok(manifest) = crate::repository::parse_manifest(input, MANIFEST_KEY) else {
        return;
    };
    let id = manifest.id();
    let json = serde_json::to_vec(&manifest).expect("a manifest encodes");
    let again = crate::repository::parse_manifest(&json, MANIFEST_KEY)
        .expect("an encoded valid manifest parses and validates");
    assert_eq!(again, manifest);
    if let Ok(id) = id {
        assert_eq!(
            crate::SnapshotId::from_manifest_key(&id.manifest_key()),
            Some(id),
            "a manifest's snapshot name does not survive its own key"
        );
    }
}

/// A fixed index: decoded as a restore decodes it; what decodes encodes to the same
/// bytes (one encoding per index, so its digest in the manifest means one thing).
pub fn index(input: &[u8]) {
    if let Ok(index) = crate::FixedIndex::decode(input, "indexes/k") {
        assert_eq!(index.encode(), input, "an index has two encodings");
    }
}

/// Seed inputs for the targets above, made by the format's own encoders: a key file, a
/// manifest, indexes, blobs of each kind and a repository config, as a repository
/// stores them. `target` is `repo_blob`, `repo_keyfile`, `repo_manifest`,
/// `repo_index` or `repo_config`; any other name has no seeds here.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "repo_blob" => blob_seeds(),
        "repo_keyfile" => key_file_seeds(),
        "repo_manifest" => vec![serde_json::to_vec_pretty(&seed_manifest()).expect("encodes")],
        "repo_index" => index_seeds(),
        "repo_config" => vec![config_seed()],
        _ => Vec::new(),
    }
}

fn blob_seeds() -> Vec<Vec<u8>> {
    let cipher = keys().blob_cipher();
    let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    let random: Vec<u8> = (0..512u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut seeds = Vec::new();
    for (mode, plain) in [(0u8, &data), (0, &random), (1, &data), (2, &random)] {
        let sealed = blob::seal(cipher, blob_kind(mode), b"k", plain).expect("seals");
        seeds.push([&[mode][..], &sealed].concat());
    }
    // The authentic path: compression flag, declared length, payload.
    let compressed = zstd::bulk::compress(&data, 1).expect("compresses");
    let mut zstd_seed = vec![0x80, 1];
    zstd_seed.extend_from_slice(&(data.len() as u32).to_le_bytes());
    zstd_seed.extend_from_slice(&compressed);
    seeds.push(zstd_seed);
    let mut plain_seed = vec![0x81, 0];
    plain_seed.extend_from_slice(&(random.len() as u32).to_le_bytes());
    plain_seed.extend_from_slice(&random);
    seeds.push(plain_seed);
    seeds
}

fn key_file_seeds() -> Vec<Vec<u8>> {
    let master = MasterKey::from_bytes([9; 32]);
    let label = crate::KeyLabel {
        created: "2026-12-06T00:00:00Z".into(),
        host: "backup-1".into(),
        user: "root".into(),
    };
    [None, Some(label)]
        .into_iter()
        .map(|label| {
            // The lowest cost Argon2id allows: the layout is the same at any cost.
            KeyFile::wrap_with_cost(&master, b"secret", "k", label, 8, 1)
                .and_then(|file| file.to_json())
                .expect("a key file")
        })
        .collect()
}

fn seed_manifest() -> crate::Manifest {
    let id = crate::SnapshotId::from_manifest_key(MANIFEST_KEY).expect("a manifest key");
    let disk = |name: &str| crate::DiskEntry {
        name: name.into(),
        size: 10 << 20,
        chunk_size: 512 * 1024,
        index: id.index_key(name),
        index_digest: hex::encode([3u8; 32]),
        stats: crate::DiskStats {
            bytes_read: 4 << 20,
            zero_chunks: 12,
            reused_chunks: 2,
            existing_chunks: 1,
            new_chunks: 5,
            new_bytes: 5 << 19,
            uploaded_bytes: 1 << 20,
        },
        chain: [("bitmap".to_string(), "haven-1".to_string())].into(),
    };
    crate::Manifest {
        version: crate::format::manifest::MANIFEST_VERSION,
        vm: id.vm.clone(),
        timestamp: id.timestamp.clone(),
        created_by: "haven 0.1.0".into(),
        source: crate::SourceInfo {
            kind: "libvirt".into(),
            origin: "qemu:///system".into(),
        },
        consistency: crate::Consistency::ApplicationConsistent,
        consistency_reason: None,
        parent: Some("2026-12-05T00:00:00Z".into()),
        disks: vec![disk("vda"), disk("vdb")],
        vm_config: Some(crate::VmConfig {
            kind: "libvirt-xml".into(),
            data: "<domain type='kvm'><name>vm</name></domain>".into(),
        }),
        labels: [("tier".to_string(), "gold".to_string())].into(),
    }
}

fn index_seeds() -> Vec<Vec<u8>> {
    let mut index = crate::FixedIndex::new_zeroed((3 << 19) + 4096, 512 * 1024);
    index.set(0, crate::ChunkId([1; 32]));
    index.set(2, crate::ChunkId([2; 32]));
    vec![
        index.encode(),
        crate::FixedIndex::new_zeroed(0, 64 * 1024).encode(),
    ]
}

fn config_seed() -> Vec<u8> {
    let mut config = crate::RepoConfig {
        format: crate::format::config::FORMAT_NAME.into(),
        version: crate::FORMAT_VERSION,
        id: hex::encode([5u8; 16]),
        chunk_size: crate::DEFAULT_CHUNK_SIZE,
        key_id: "default".into(),
        created: "2026-12-06T00:00:00Z".into(),
        mac: String::new(),
    };
    config.mac = hex::encode(keys().config_mac(&config.authenticated_bytes()));
    serde_json::to_vec_pretty(&config).expect("encodes")
}
