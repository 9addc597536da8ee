//! Listings: folder-like prefixes and more objects than one page.

use futures::StreamExt;
use haven_repo::{Backend, Durability};

use super::{Keys, announce, content, ok};

/// Keys the S3 API returns in one page of a listing.
const S3_PAGE: usize = 1000;

fn sorted(mut keys: Vec<String>) -> Vec<String> {
    keys.sort();
    keys
}

/// `list` returns the objects under a folder-like prefix, at any depth, and nothing
/// from a sibling whose name merely starts with the same letters; a prefix without
/// objects lists nothing; `list_with_sizes` lists the same keys.
pub(crate) async fn prefixes(backend: &Backend) {
    announce("list by prefix");
    let inside = [
        "manifests/vm-l/20260101T000001Z",
        "manifests/vm-l/20260101T000002Z",
        "manifests/vm-l/nested/1",
    ];
    let outside = [
        "manifests/vm-lm/20260101T000001Z",
        "manifests/vm-m/20260101T000001Z",
    ];
    for key in inside.iter().chain(&outside) {
        ok(
            backend
                .put_if_absent(key, content(10, 7), Durability::Immediate)
                .await,
            "put",
        );
    }
    let expected = sorted(inside.map(String::from).to_vec());
    assert_eq!(
        sorted(ok(backend.list("manifests/vm-l").await, "list")),
        expected,
        "list returns exactly the objects under the prefix"
    );
    let with_sizes = ok(
        backend.list_with_sizes("manifests/vm-l").await,
        "list_with_sizes",
    );
    assert_eq!(
        sorted(with_sizes.into_iter().map(|(key, _)| key).collect()),
        expected,
        "list_with_sizes lists the same keys"
    );
    assert!(
        ok(backend.list("manifests/vm-n").await, "list").is_empty(),
        "a prefix without objects lists nothing"
    );
    let shorter = ok(backend.list("manifests").await, "list");
    for key in inside.iter().chain(&outside) {
        assert!(
            shorter.iter().any(|listed| listed == key),
            "a shorter prefix lists every object below it: {key} missing"
        );
    }
}

/// More objects than one page of an S3 listing are all listed, each once.
pub(crate) async fn past_one_page(backend: &Backend, keys: &Keys) {
    announce("list past one page");
    let count = S3_PAGE + 50;
    let written: Vec<String> = (0..count as u64)
        .map(|number| keys.chunk_in(0x99, number))
        .collect();
    let mut puts = futures::stream::iter(&written)
        .map(|key| backend.put_if_absent(key, content(1, 9), Durability::Deferred))
        .buffer_unordered(32);
    while let Some(result) = puts.next().await {
        ok(result, "put");
    }
    drop(puts);
    let listed = ok(backend.list("chunks/99").await, "list");
    assert_eq!(
        listed.len(),
        count,
        "every object is listed once, past one page"
    );
    assert_eq!(
        sorted(listed),
        sorted(written),
        "the listing names the objects written"
    );
}
