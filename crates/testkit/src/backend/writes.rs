//! Writes: create-only puts, sizes, races, repair overwrites, the barrier.

use haven_repo::{Backend, Durability, PutOutcome};

use super::{Keys, announce, assert_stored, content, ok};

/// Every durability, with the name used in messages.
const DURABILITIES: [(Durability, &str); 2] = [
    (Durability::Deferred, "deferred"),
    (Durability::Immediate, "immediate"),
];

async fn put(
    backend: &Backend,
    key: &str,
    data: bytes::Bytes,
    durability: Durability,
) -> PutOutcome {
    ok(
        backend.put_if_absent(key, data, durability).await,
        &format!("put_if_absent {key}"),
    )
}

/// Every check of this module.
pub(crate) async fn run(backend: &Backend, keys: &Keys) {
    create_only(backend, keys).await;
    sizes(backend, keys).await;
    concurrent_creates(backend, keys).await;
    overwrite_for_repair(backend, keys).await;
    barrier(backend, keys).await;
}

/// A first put creates; a second put of the key, with other content, reports
/// `AlreadyExisted` and the first content stays; for chunk and manifest keys, with
/// either durability.
async fn create_only(backend: &Backend, keys: &Keys) {
    announce("create-only puts");
    let mut seed = 0;
    for key in [keys.chunk(1), keys.manifest(1)] {
        for (durability, name) in DURABILITIES {
            seed += 1;
            let key = format!("{key}{seed}");
            let first = content(1000, seed);
            assert_eq!(
                put(backend, &key, first.clone(), durability).await,
                PutOutcome::Created,
                "a first {name} put of {key} creates it"
            );
            assert_eq!(
                put(backend, &key, content(1000, seed + 100), durability).await,
                PutOutcome::AlreadyExisted,
                "a second {name} put of {key} is refused as already existing"
            );
            assert_stored(
                backend,
                &key,
                &first,
                &format!("the first content of {key} stays"),
            )
            .await;
            assert!(ok(backend.exists(&key).await, "exists"), "{key} exists");
        }
    }
}

/// Objects of 0 bytes, around the 4 KiB block of direct I/O and of several MiB read
/// back exactly, with `get` and `get_once`, and are listed with their sizes.
async fn sizes(backend: &Backend, keys: &Keys) {
    announce("object sizes");
    let lengths = [0, 1, 4095, 4096, 4097, (5 << 20) + 3];
    for (index, len) in lengths.into_iter().enumerate() {
        for (durability, name) in DURABILITIES {
            let number = (index as u64) << 1 | u64::from(durability == Durability::Immediate);
            let key = keys.chunk_in(0x51, number);
            let data = content(len, number + 1);
            put(backend, &key, data.clone(), durability).await;
            assert_stored(
                backend,
                &key,
                &data,
                &format!("{name} object of {len} bytes reads back"),
            )
            .await;
            let once = ok(backend.get_once(&key, len as u64).await, "get_once");
            assert_eq!(once, data, "get_once of a {name} object of {len} bytes");
        }
    }
    let listed = ok(
        backend.list_with_sizes("chunks/51").await,
        "list_with_sizes",
    );
    let mut sizes: Vec<u64> = listed.iter().map(|(_, size)| *size).collect();
    sizes.sort_unstable();
    let mut expected: Vec<u64> = lengths.iter().flat_map(|&len| [len as u64; 2]).collect();
    expected.sort_unstable();
    assert_eq!(sizes, expected, "list_with_sizes reports the stored sizes");
}

/// Of concurrent puts of one key with different content, exactly one creates it and
/// its content is what is stored: two writers racing never leave a mixture.
async fn concurrent_creates(backend: &Backend, keys: &Keys) {
    announce("concurrent creates");
    for (key, durability) in [
        (keys.chunk(2), Durability::Deferred),
        (keys.manifest(2), Durability::Immediate),
    ] {
        let writers = (0..8u64).map(|writer| {
            let key = key.clone();
            async move {
                let data = content(64 * 1024 + 17, 1000 + writer);
                let outcome = put(backend, &key, data.clone(), durability).await;
                (outcome, data)
            }
        });
        let outcomes = futures::future::join_all(writers).await;
        let created: Vec<&bytes::Bytes> = outcomes
            .iter()
            .filter(|(outcome, _)| *outcome == PutOutcome::Created)
            .map(|(_, data)| data)
            .collect();
        assert_eq!(
            created.len(),
            1,
            "exactly one of 8 concurrent puts of {key} creates it"
        );
        assert_stored(
            backend,
            &key,
            created[0],
            &format!("the stored content of {key} is the creator's"),
        )
        .await;
    }
}

/// `overwrite_for_repair` replaces an object's content, and creates a missing one;
/// create-only puts still refuse the key afterwards.
async fn overwrite_for_repair(backend: &Backend, keys: &Keys) {
    announce("overwrite for repair");
    let key = keys.chunk(3);
    put(backend, &key, content(5000, 1), Durability::Deferred).await;
    let good = content(4000, 2);
    ok(
        backend.overwrite_for_repair(&key, good.clone()).await,
        "overwrite_for_repair",
    );
    assert_stored(backend, &key, &good, "the repair replaced the content").await;
    assert_eq!(
        put(backend, &key, content(3000, 3), Durability::Deferred).await,
        PutOutcome::AlreadyExisted,
        "a repaired object is still refused by create-only puts"
    );
    assert_stored(backend, &key, &good, "and keeps the repaired content").await;

    let missing = keys.chunk(4);
    ok(
        backend.overwrite_for_repair(&missing, good.clone()).await,
        "overwrite_for_repair",
    );
    assert_stored(
        backend,
        &missing,
        &good,
        "a repair creates a missing object",
    )
    .await;
}

/// `barrier` succeeds after deferred writes and with nothing pending, and the
/// objects written before it read back after it.
async fn barrier(backend: &Backend, keys: &Keys) {
    announce("barrier");
    let written: Vec<(String, bytes::Bytes)> = (0..16u64)
        .map(|number| {
            (
                keys.chunk_in(0xba, number),
                content(8192 + number as usize, number),
            )
        })
        .collect();
    let puts = written
        .iter()
        .map(|(key, data)| put(backend, key, data.clone(), Durability::Deferred));
    futures::future::join_all(puts).await;
    ok(backend.barrier().await, "barrier after deferred writes");
    ok(backend.barrier().await, "barrier with nothing pending");
    for (key, data) in &written {
        assert_stored(
            backend,
            key,
            data,
            &format!("{key} reads back after the barrier"),
        )
        .await;
    }
}
