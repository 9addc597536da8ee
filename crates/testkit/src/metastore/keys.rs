//! Reads and plain writes: get, put, delete, list, range.

use haven_coordinator::store::{MetaStore, Op};

use super::{KeySpace, announce, assert_missing, get_existing, ok, put, try_txn};

/// Every check of this module, each in its own part of `space`.
pub(crate) async fn run(store: &dyn MetaStore, space: &KeySpace) {
    get_put_delete(store, &space.sub("get-put-delete")).await;
    list_by_prefix(store, &space.sub("list")).await;
    ranges(store, &space.sub("range")).await;
}

/// A missing key reads as `None`; a put reads back with its value, no lease and the
/// transaction's revision; a second put replaces it at a later revision; a delete
/// removes it, and deleting a missing key succeeds; an empty value is a value.
async fn get_put_delete(store: &dyn MetaStore, space: &KeySpace) {
    announce("get, put and delete");
    let key = space.key("value");
    assert_missing(store, &key, "a key never written reads as None").await;
    let first = put(store, &key, b"one").await;
    let stored = get_existing(store, &key).await;
    assert_eq!(stored.key, key, "get returns the key asked for");
    assert_eq!(stored.value, b"one", "get returns the value put");
    assert_eq!(
        stored.mod_revision, first,
        "a written key's mod_revision is the revision its transaction reported"
    );
    assert_eq!(
        stored.lease, 0,
        "a put without lease leaves the key without lease"
    );

    let second = put(store, &key, b"two").await;
    assert!(second > first, "a later write has a later revision");
    let stored = get_existing(store, &key).await;
    assert_eq!(stored.value, b"two", "a second put replaces the value");
    assert_eq!(stored.mod_revision, second, "and moves mod_revision");

    let (deleted, _) = try_txn(store, vec![], vec![Op::Delete(key.clone())]).await;
    assert!(deleted, "a delete without compares succeeds");
    assert_missing(store, &key, "a deleted key is gone").await;
    let (again, _) = try_txn(store, vec![], vec![Op::Delete(key.clone())]).await;
    assert!(again, "deleting a missing key succeeds");

    let empty = space.key("empty");
    put(store, &empty, b"").await;
    assert_eq!(
        get_existing(store, &empty).await.value,
        b"",
        "an empty value is stored and read back, not taken for absence"
    );
}

/// `list` returns exactly the keys that start with the prefix (not a folder: `dir`
/// also matches `dir0`), in byte order, each as `get` returns it.
async fn list_by_prefix(store: &dyn MetaStore, space: &KeySpace) {
    announce("list by prefix");
    // Written out of order; '/' (0x2f) sorts before '0' (0x30).
    for name in ["dir0", "dir/b/c", "dir", "dis", "dir/a", "dir/b"] {
        put(store, &space.key(name), name.as_bytes()).await;
    }
    let names = |listed: &[haven_coordinator::store::KeyValue]| -> Vec<String> {
        listed
            .iter()
            .map(|kv| kv.key.trim_start_matches(space.prefix()).to_string())
            .collect()
    };
    let folder = ok(store.list(&space.key("dir/")).await, "list");
    assert_eq!(
        names(&folder),
        ["dir/a", "dir/b", "dir/b/c"],
        "list returns the keys under the prefix, in key order"
    );
    for kv in &folder {
        assert_eq!(
            *kv,
            get_existing(store, &kv.key).await,
            "list returns each key as get does"
        );
    }
    let bare = ok(store.list(&space.key("dir")).await, "list");
    assert_eq!(
        names(&bare),
        ["dir", "dir/a", "dir/b", "dir/b/c", "dir0"],
        "a prefix is a byte prefix, the key equal to it included, in byte order"
    );
    let none = ok(store.list(&space.key("nothing/")).await, "list");
    assert!(none.is_empty(), "a prefix without keys lists nothing");
}

/// `range` returns the keys from `start` (included) to `end` (excluded), in byte
/// order, the first `limit` of them, each as `get` returns it; an empty or inverted
/// range is empty.
async fn ranges(store: &dyn MetaStore, space: &KeySpace) {
    announce("range with a limit");
    for name in ["t03", "t01", "t05", "t02", "t04", "u00"] {
        put(store, &space.key(name), name.as_bytes()).await;
    }
    let names = |listed: Vec<haven_coordinator::store::KeyValue>| -> Vec<String> {
        listed
            .iter()
            .map(|kv| kv.key.trim_start_matches(space.prefix()).to_string())
            .collect()
    };
    let range = |start: &str, end: &str, limit: usize| {
        let (start, end) = (space.key(start), space.key(end));
        async move { names(ok(store.range(&start, &end, limit).await, "range")) }
    };
    assert_eq!(
        range("t02", "t05", 10).await,
        ["t02", "t03", "t04"],
        "start is included, end excluded, in key order"
    );
    assert_eq!(
        range("t", "u", 2).await,
        ["t01", "t02"],
        "a limit keeps the first keys"
    );
    assert_eq!(range("t", "u", 0).await, Vec::<String>::new(), "limit 0");
    assert_eq!(range("t03", "t03", 10).await, Vec::<String>::new(), "empty");
    assert_eq!(
        range("t04", "t02", 10).await,
        Vec::<String>::new(),
        "inverted"
    );
    let read = ok(
        store.range(&space.key("t05"), &space.key("t06"), 1).await,
        "range",
    );
    assert_eq!(read.len(), 1);
    assert_eq!(
        read[0],
        get_existing(store, &space.key("t05")).await,
        "range returns each key as get does"
    );
}
