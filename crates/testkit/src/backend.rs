//! The conformance suite of `haven_repo::Backend`, the object store under a
//! repository.
//!
//! Crash safety, replication and garbage collection rest on the same few promises of
//! every backend (`memory://`, `file://` with direct or buffered writes, S3, a Haven
//! storage node with or without its extensions). [`run_suite`] checks them through
//! `Backend`'s public API:
//!
//! - writes ([`writes`]): `put_if_absent` is create-only, for deferred and immediate
//!   durability alike: a second put of a key reports `AlreadyExisted` and leaves the
//!   first content; of concurrent puts of one key exactly one creates it and its
//!   content is the one stored; objects of any size (0 bytes, around the 4 KiB
//!   direct-I/O block, several MiB) read back exactly; `overwrite_for_repair`
//!   replaces an object (or creates a missing one) and later creates still refuse;
//!   `barrier` succeeds with and without pending writes;
//! - reads ([`reads`]): `get` and `get_once` return the stored bytes, `NotFound` for a
//!   missing key, and refuse an object larger than the limit given as `Corrupt`;
//!   `exists` answers one key and many concurrent keys (batched on a storage node)
//!   alike; `delete` removes an object from reads, existence and listings, and
//!   deleting a missing object succeeds;
//! - listings ([`listing`]): `list` and `list_with_sizes` return every object under
//!   a folder-like prefix exactly once, nothing from a sibling prefix that merely
//!   starts with the same letters, the sizes stored, and past one page of the S3 API.
//!
//! The suite needs an empty backend (a fresh directory, bucket prefix or memory
//! store). Listing order is not part of the contract and is not checked.

mod listing;
mod reads;
mod writes;

use bytes::Bytes;
use haven_repo::{Backend, RepoError};

/// Runs every check of the suite against `backend`, which must be empty; panics at
/// the first violation, naming it.
pub async fn run_suite(backend: &Backend) {
    let keys = Keys;
    let all = ok(backend.list("").await, "list of an empty prefix");
    assert!(
        all.is_empty(),
        "the suite needs an empty backend; found {all:?}"
    );
    writes::run(backend, &keys).await;
    reads::run(backend, &keys).await;
    listing::prefixes(backend).await;
    listing::past_one_page(backend, &keys).await;
}

/// The suite's key names.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Keys;

impl Keys {
    /// The chunk key of `number` below `chunks/<group>/` (`group`: two hex digits).
    pub(crate) fn chunk_in(&self, group: u8, number: u64) -> String {
        format!("chunks/{group:02x}/{group:02x}{number:062x}")
    }

    /// A chunk key of `number` in group `ab`.
    pub(crate) fn chunk(&self, number: u64) -> String {
        self.chunk_in(0xab, number)
    }

    /// A key shaped like a manifest's (`-` in the VM name: never a plain key).
    pub(crate) fn manifest(&self, number: u64) -> String {
        format!("manifests/vm-a/20260101T{number:06}Z")
    }
}

/// Announces the check about to run: the test harness shows it when the test fails.
pub(crate) fn announce(check: &str) {
    eprintln!("backend conformance: {check}");
}

/// The value of a backend call that must succeed.
pub(crate) fn ok<T>(result: Result<T, RepoError>, what: &str) -> T {
    result.unwrap_or_else(|error| panic!("{what}: the backend failed: {error}"))
}

/// Deterministic bytes of `len`, different for each `seed`.
pub(crate) fn content(len: usize, seed: u64) -> Bytes {
    let seed = seed.to_le_bytes();
    (0..len)
        .map(|index| (index as u8).wrapping_mul(167) ^ (index >> 8) as u8 ^ seed[index % 8])
        .collect::<Vec<u8>>()
        .into()
}

/// Asserts that `key` holds `expected`; `what` says why it must.
pub(crate) async fn assert_stored(backend: &Backend, key: &str, expected: &Bytes, what: &str) {
    let stored = read(backend, key).await;
    assert!(
        stored == *expected,
        "{what}: {key} holds {} bytes, not the {} expected (or other bytes)",
        stored.len(),
        expected.len()
    );
}

/// The bytes stored under `key`, which must exist.
pub(crate) async fn read(backend: &Backend, key: &str) -> Bytes {
    ok(backend.get(key, u64::MAX).await, &format!("get {key}"))
}
