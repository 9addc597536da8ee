//! `haven stats` through the real binary on a `file://` repository: its figures
//! against what the backups wrote and the chunk files on disk.

use crate::support::{
    bed::Bed,
    image::{MIB, raw_image},
};

#[test]
fn stats_count_dedup_shared_and_exclusive_chunks_against_the_files_on_disk() {
    let bed = Bed::initialised(); // 1 MiB chunks
    // 4 MiB disks, two data slots and two zero slots each.
    let shared = bed.path("shared.raw");
    raw_image(
        &shared,
        4 * MIB,
        &[(0, MIB as usize), (2 * MIB, MIB as usize)],
    );
    let solo = bed.raw_image("solo.raw", 4 * MIB, &[(MIB, MIB as usize)]);
    bed.backup("web", &[&shared]);
    bed.backup("web", &[&shared]);
    bed.backup("db", &[&shared]);
    let solo_snapshot = bed.backup("solo", &[&solo])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();

    let stats = bed.json(&["stats"]);
    let web = &stats["vms"]["web"];
    assert_eq!(web["snapshots"], 2, "{stats:#}");
    assert_eq!(web["logical_bytes"], 8 * MIB);
    assert_eq!(web["data_bytes"], 4 * MIB);
    assert_eq!(web["unique_chunks"], 2);
    assert_eq!(web["unique_bytes"], 2 * MIB);
    assert_eq!(web["dedup_ratio"], 2.0);
    assert_eq!(web["exclusive_bytes"], 0, "db names the same chunks");
    assert_eq!(stats["vms"]["db"]["exclusive_bytes"], 0);
    let solo_stats = &stats["vms"]["solo"];
    assert_eq!(solo_stats["unique_chunks"], 1);
    assert!(solo_stats["stored_bytes"].as_u64().unwrap() > 0);
    assert_eq!(solo_stats["exclusive_bytes"], solo_stats["stored_bytes"]);

    let total = &stats["total"];
    assert_eq!(total["snapshots"], 4);
    assert_eq!(total["data_bytes"], 7 * MIB);
    assert_eq!(total["unique_chunks"], 3);
    assert_eq!(total["unique_bytes"], 3 * MIB);
    // Every chunk file on disk is named by a snapshot, and priced at its size.
    assert_eq!(total["stored_bytes"], bed.stored_chunk_bytes());
    assert_eq!(stats["unreferenced_chunks"], 0);
    assert!(stats["repository_bytes"].as_u64().unwrap() > bed.stored_chunk_bytes());

    // Forgotten, solo's chunk waits for GC: counted apart as unreferenced.
    bed.ok(&["forget", &solo_snapshot]);
    let after = bed.json(&["stats"]);
    assert!(after["vms"]["solo"].is_null(), "{after:#}");
    assert_eq!(after["unreferenced_chunks"], 1);
    assert_eq!(after["unreferenced_bytes"], solo_stats["exclusive_bytes"]);

    // The text form names each VM on its own line.
    let text = bed.ok(&["stats"]);
    assert!(text.starts_with("repository: "), "{text}");
    for vm in ["total", "web", "db"] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{vm}: "))),
            "{text}"
        );
    }
}
