//! The repository code, unchanged, over a real `haven storage-node`: init,
//! backup, snapshots, verify and restore through `s3://bucket/prefix?endpoint=…`,
//! with chunk existence answered by the node's batch query instead of HEADs and
//! chunks uploaded in batch writes instead of one PUT each.

use crate::support::{
    haven::HavenClient,
    image::{MIB, assert_same_disk, raw_image, to_qcow2},
    report::disk_stat,
    storage_node::Node,
};

/// Requests `node` counted for one S3 operation, all statuses.
fn requests(node: &Node, op: &str) -> u64 {
    let needle = format!("haven_storage_requests_total{{op=\"{op}\",");
    node.metrics()
        .lines()
        .filter(|line| line.starts_with(&needle))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn backup_and_restore_through_a_storage_node_use_the_batch_existence_query() {
    let started = std::time::Instant::now();
    let node = Node::start();
    node.aws_ok(&["s3", "mb", "s3://haven"]);
    let client = HavenClient::on_node(format!("s3://haven/site-a?endpoint={}", node.endpoint()));
    client.ok(&["repo", "init"]);
    // Everything lands under the URL's prefix.
    let files = node.object_files();
    assert!(!files.is_empty());
    for file in &files {
        let relative = file.strip_prefix(node.data()).expect("below data");
        assert!(
            relative.starts_with("buckets/haven/objects/site-a"),
            "{}",
            relative.display()
        );
    }

    // Data with a hole and a partial last chunk.
    let size = 24 * MIB + 3 * 512;
    let image = node.path("web1.raw");
    raw_image(
        &image,
        size,
        &[
            (0, 9 * MIB as usize),
            (14 * MIB + 123, 2 * MIB as usize),
            (size - 4000, 4000),
        ],
    );
    let puts = requests(&node, "PutObject");
    let first = client.backup("web1", &[&image]);
    let stored_chunks = disk_stat(&first, "new_chunks");
    assert!(stored_chunks >= 12, "{first}");
    assert_eq!(disk_stat(&first, "existing_chunks"), 0);
    // Chunks travel in batch writes; PUTs carry the index, the manifest and the lease.
    let chunk_batches = requests(&node, "HavenBatchPut");
    assert!(
        (1..stored_chunks).contains(&chunk_batches),
        "{chunk_batches} batch writes for {stored_chunks} chunks"
    );
    let written = requests(&node, "PutObject") - puts;
    assert!(written <= 4, "{written} PUTs: chunks were not batched");
    let batches_after_first = requests(&node, "HavenExists");
    assert!(batches_after_first >= 1, "no batch query was sent");
    assert!(
        batches_after_first < stored_chunks + 1,
        "{batches_after_first} batches for {stored_chunks} chunks: not batched"
    );

    // An unchanged image uploads nothing.
    let puts = requests(&node, "PutObject");
    let second = client.backup("web1", &[&image]);
    assert_eq!(disk_stat(&second, "new_chunks"), 0, "{second}");
    assert_eq!(disk_stat(&second, "uploaded_bytes"), 0, "{second}");
    // The index, the manifest and the backup's GC lease (refreshed only by long
    // backups, so at most once more here); never a chunk.
    let written = requests(&node, "PutObject") - puts;
    assert!(
        (3..=4).contains(&written),
        "{written} objects written: only the index, the manifest and the lease may be"
    );

    // A second VM cloned from the same image finds every chunk through the
    // batch query, without a single HEAD.
    let clone = node.path("web2.qcow2");
    to_qcow2(&image, &clone);
    let batches = requests(&node, "HavenExists");
    let third = client.backup("web2", &[&clone]);
    assert_eq!(disk_stat(&third, "new_chunks"), 0, "{third}");
    assert_eq!(
        disk_stat(&third, "existing_chunks"),
        stored_chunks,
        "{third}"
    );
    let clone_batches = requests(&node, "HavenExists") - batches;
    assert!(
        (1..stored_chunks).contains(&clone_batches),
        "{clone_batches} batch queries for {stored_chunks} chunks"
    );
    assert_eq!(
        requests(&node, "HeadObject"),
        0,
        "per-chunk HEADs were sent"
    );
    eprintln!(
        "{stored_chunks} chunks: {batches_after_first} batch queries for the first backup, \
         {clone_batches} for the clone, 0 HEADs"
    );

    // Batched chunks carry the CRC-32 ETag (a HEAD of our own, after the count above).
    let chunk = node
        .object_files()
        .into_iter()
        .find(|file| file.to_string_lossy().contains("/chunks/"))
        .expect("a chunk file");
    let chunk_key = chunk
        .strip_prefix(node.data().join("buckets/haven/objects"))
        .expect("below the bucket")
        .to_string_lossy()
        .trim_end_matches('@')
        .to_owned();
    let head = node.aws_ok(&[
        "s3api",
        "head-object",
        "--bucket",
        "haven",
        "--key",
        &chunk_key,
    ]);
    assert!(head.contains("\\\"crc32-"), "chunk ETag: {head}");

    let snapshots = client.json(&["snapshots"]);
    let names: Vec<&str> = snapshots
        .as_array()
        .expect("snapshot list")
        .iter()
        .filter_map(|s| s["snapshot"].as_str())
        .collect();
    assert_eq!(names.len(), 3, "{snapshots}");
    assert_eq!(
        names.iter().filter(|n| n.contains("web1")).count(),
        2,
        "{snapshots}"
    );
    assert_eq!(
        names.iter().filter(|n| n.contains("web2")).count(),
        1,
        "{snapshots}"
    );
    client.ok(&["verify"]);

    for (vm, format) in [("web1", "raw"), ("web2", "qcow2")] {
        let out = node.path(&format!("restored-{vm}.{format}"));
        let spec = format!("{vm}@latest");
        let out_text = out.display().to_string();
        client.ok(&["restore", &spec, "--to", &out_text, "--format", format]);
        assert_same_disk(&image, &out);
    }
    eprintln!(
        "storage node repository round trip: {:?}",
        started.elapsed()
    );
}
