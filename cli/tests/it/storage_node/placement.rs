//! One repository over several real `haven storage-node` processes of a site:
//! `s3://bucket/prefix?endpoint=E1&endpoint=E2&endpoint=E3&replicas=2`. Every object
//! must sit on exactly the members rendezvous hashing places it on; a restore and a
//! verify survive a killed member; a backup whose writes need that member fails and
//! names it; a member joins (or leaves) and `haven repo rebalance` moves objects to
//! their new placement, idempotently.

use std::collections::{BTreeMap, BTreeSet};

use haven_repo::{Backend, OpenOptions, S3Credentials};

use crate::support::{
    haven::HavenClient,
    image::{MIB, raw_image, write_at},
    storage_node::{ACCESS_KEY, Node, NodeOptions, SECRET_KEY},
};

/// A node with the bucket `haven` created at start.
fn start_node() -> Node {
    Node::start_with(NodeOptions {
        args: vec!["--create-bucket".into(), "haven".into()],
        ..NodeOptions::default()
    })
}

/// The repository URL over `nodes` with `replicas` copies of each object.
fn site_url(nodes: &[&Node], replicas: usize) -> String {
    let endpoints: Vec<String> = nodes
        .iter()
        .map(|node| format!("endpoint={}", node.endpoint()))
        .collect();
    format!(
        "s3://haven/site-a?{}&region=us-east-1&replicas={replicas}",
        endpoints.join("&")
    )
}

/// Which members hold each object of the site at `url`, asked of each member alone.
fn holders(url: &str) -> BTreeMap<String, BTreeSet<String>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let backend = open(url);
        let (members, _) = backend.members().expect("a several-node URL");
        let mut holders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (id, member) in &members {
            for key in member.list("").await.expect("list a member") {
                holders.entry(key).or_default().insert(id.clone());
            }
        }
        holders
    })
}

fn open(url: &str) -> Backend {
    let options = OpenOptions {
        credentials: Some(S3Credentials {
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: SECRET_KEY.into(),
            session_token: None,
        }),
        ..OpenOptions::default()
    };
    Backend::open(url, &options).expect("open the site")
}

/// Asserts every object of the site is on exactly its placement; returns how many
/// objects each member holds.
fn assert_exact_placement(url: &str) -> BTreeMap<String, usize> {
    let backend = open(url);
    let (members, replicas) = backend.members().expect("a several-node URL");
    let holders = holders(url);
    assert!(holders.len() > 10, "{} objects", holders.len());
    let mut per_member: BTreeMap<String, usize> =
        members.iter().map(|(id, _)| (id.clone(), 0)).collect();
    for (key, held) in &holders {
        let placed: BTreeSet<String> = backend.placement_of(key).into_iter().collect();
        assert_eq!(placed.len(), replicas);
        assert_eq!(held, &placed, "{key} is not on exactly its placement");
        for id in held {
            *per_member.entry(id.clone()).or_default() += 1;
        }
    }
    per_member
}

/// A 24 MiB disk with data in three places.
fn disk(node: &Node, name: &str) -> std::path::PathBuf {
    let image = node.path(name);
    let size = 24 * MIB;
    raw_image(
        &image,
        size,
        &[
            (0, 9 * MIB as usize),
            (14 * MIB + 123, 2 * MIB as usize),
            (size - 4000, 4000),
        ],
    );
    image
}

fn snapshot_of(report: &serde_json::Value) -> String {
    report["snapshot"]
        .as_str()
        .unwrap_or_else(|| panic!("no snapshot in {report}"))
        .to_owned()
}

#[test]
fn three_nodes_with_two_replicas_back_up_restore_and_survive_a_killed_node() {
    let mut nodes = [start_node(), start_node(), start_node()];
    let url = site_url(&nodes.iter().collect::<Vec<_>>(), 2);
    let client = HavenClient::on_node(url.clone());
    client.ok(&["repo", "init"]);
    let image = disk(&nodes[0], "web1.raw");
    let first = client.backup("web1", &[&image]);
    let snapshot = snapshot_of(&first);

    let per_member = assert_exact_placement(&url);
    for (member, count) in &per_member {
        assert!(*count > 0, "{member} holds nothing: {per_member:?}");
    }
    eprintln!("objects per member: {per_member:?}");
    let restored = nodes[0].path("restored.raw");
    client.restore_same(&snapshot, &restored, &image);

    // A second backup of the same disk finds every chunk on both its replicas.
    let second = client.backup("web1", &[&image]);
    assert_eq!(second["disks"][0]["new_chunks"], 0, "{second}");

    // One member killed: every object still has a live replica.
    let dead = nodes[1].endpoint();
    nodes[1].kill9();
    std::fs::remove_file(&restored).expect("remove the first restore");
    client.restore_same(&snapshot, &restored, &image);
    let verified = client.run(&["verify"]);
    assert!(
        verified.status.success(),
        "verify with a member down: {}",
        String::from_utf8_lossy(&verified.stderr)
    );

    // A backup with new data needs all placed replicas to acknowledge each write: it
    // fails, and says which node did not answer.
    write_at(
        &image,
        3 * MIB,
        &crate::support::image::noise(7, 4 * MIB as usize),
    );
    let output = client.backup_output("web1", &[&image]);
    assert!(
        !output.status.success(),
        "a backup succeeded with a member down"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let dead_address = dead.trim_start_matches("http://");
    assert!(
        stderr.contains(dead_address),
        "the error does not name the dead node {dead_address}: {stderr}"
    );
}

#[test]
fn a_joining_node_gets_its_objects_by_rebalance_and_a_leaving_one_is_drained() {
    let nodes = [start_node(), start_node(), start_node(), start_node()];
    let three = site_url(&[&nodes[0], &nodes[1], &nodes[2]], 2);
    let client = HavenClient::on_node(three.clone());
    client.ok(&["repo", "init"]);
    let image = disk(&nodes[0], "web1.raw");
    let snapshot = snapshot_of(&client.backup("web1", &[&image]));
    assert_exact_placement(&three);

    // The fourth member joins: before the rebalance every object is still found.
    let four = site_url(&[&nodes[0], &nodes[1], &nodes[2], &nodes[3]], 2);
    let grown = HavenClient::on_node(four.clone());
    let restored = nodes[0].path("restored.raw");
    grown.restore_same(&snapshot, &restored, &image);

    let report = grown.json(&["repo", "rebalance"]);
    let objects = report["objects"].as_u64().expect("objects");
    let copied = report["copied"].as_u64().expect("copied");
    let removed = report["removed"].as_u64().expect("removed");
    assert!(copied > 0 && removed > 0, "{report}");
    // A key the new member wins moves one copy (about 2 in 4 keys with 2 replicas).
    assert!(copied < objects, "{report}");
    assert_eq!(copied, removed, "{report}");
    let per_member = assert_exact_placement(&four);
    assert!(per_member[&nodes[3].endpoint()] > 0, "{per_member:?}");

    // Idempotent: a second pass has nothing to do.
    let again = grown.json(&["repo", "rebalance"]);
    assert_eq!(again["copied"], 0, "{again}");
    assert_eq!(again["removed"], 0, "{again}");
    std::fs::remove_file(&restored).expect("remove the first restore");
    grown.restore_same(&snapshot, &restored, &image);
    let unchanged = grown.backup("web1", &[&image]);
    assert_eq!(unchanged["disks"][0]["new_chunks"], 0, "{unchanged}");

    // The first member leaves: drained into the other three, then empty.
    let shrunk = site_url(&[&nodes[1], &nodes[2], &nodes[3]], 2);
    let left = HavenClient::on_node(shrunk.clone());
    let drained = left.json(&["repo", "rebalance", "--drain", &nodes[0].endpoint()]);
    assert!(
        drained["removed"].as_u64().expect("removed") > 0,
        "{drained}"
    );
    assert_exact_placement(&shrunk);
    assert!(
        holders(&four)
            .values()
            .all(|held| !held.contains(&nodes[0].endpoint())),
        "the drained node still holds objects"
    );
    std::fs::remove_file(&restored).expect("remove the second restore");
    left.restore_same(&snapshot, &restored, &image);
    left.ok(&["verify"]);
}
