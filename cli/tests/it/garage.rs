//! Haven on Garage, an S3 implementation other than its own storage node (issue 22).
//!
//! Garage 2.5 accepts `If-None-Match: *` on PutObject and does not honour it: a second
//! create-only PUT of a key replaces the object. Haven publishes its configuration,
//! indexes and manifests create-only, so `repo init` finds this out and refuses the
//! store, with the reason, before anything makes the bucket a repository.

use haven_testkit::garage::{self, Garage};
use haven_testkit::s3_account::S3Account;

use crate::support::{haven::HavenClient, s3::S3Keys};

#[test]
fn repo_init_refuses_garage_which_ignores_create_only_writes() {
    let garage = Garage::start().expect("start garage");
    garage.create_bucket("haven").expect("create bucket haven");
    let keys = S3Keys::new(garage::ACCESS_KEY, garage::SECRET_KEY);
    let url = garage.repository_url("haven", "site-a");
    let client = HavenClient::on_node_as(url.as_str(), keys);

    let refused = client.fails(&["repo", "init"]);
    assert!(
        refused.contains("does not honour create-only writes (`If-None-Match: *`)")
            && refused.contains(&url),
        "{refused}"
    );
    // Nothing made it a repository.
    let none = client.fails(&["snapshots"]);
    assert!(none.contains("no haven repository"), "{none}");
}
