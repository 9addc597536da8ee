//! Haven's shared test support: one conformance suite per seam, and the processes
//! tests run against.
//!
//! Haven's correctness arguments rest on two seams with several implementations each.
//! The fencing argument (ARCHITECTURE.md, "Fencing") needs etcd and the embedded store
//! to agree on compares, revisions and leases; crash safety and replication need every
//! object store to keep puts create-only and listings complete. A suite here states
//! such a contract once, through the seam's public API only, and every implementation
//! runs the same code (the model is Quickwit's `storage_test_suite`):
//!
//! - [`metastore::run_suite`] over a `haven_coordinator::store::MetaStore`;
//! - [`backend::run_suite`] over a `haven_repo::Backend`.
//!
//! [`unreliable::UnreliableStore`] breaks the second seam on purpose: an object store
//! that fails, delays, truncates, duplicates and loses the replies of requests, drawn
//! from a seeded generator, for tests that check what survives;
//! [`hooked_store::HookedStore`] passes requests to another store after a hook of the
//! test's own, such as [`hooked_store::IgnoreCreateOnly`], which accepts create-only
//! writes without honouring them (`repo init` must refuse such a store).
//!
//! A suite is an assertion: it panics, naming the behaviour that broke, at the first
//! violation, so it is called from a `#[tokio::test]` per implementation and the
//! failing test names the implementation. Each suite prints the check it is running
//! (shown by the test harness when the test fails).
//!
//! The fixtures start what the suites (and later the integration tests) run against
//! and stop it on drop: [`etcd::Etcd`] (real `etcd` processes on free loopback ports
//! with a temporary data directory; plain, or secured as production runs it: TLS with
//! client certificates and auth confined to Haven's prefix), [`storage_node::StorageNode`] (the storage node
//! library served in-process over real HTTP), [`local::LocalRepository`] (a `file://`
//! backend whose write path is checked, not assumed), the process helpers of
//! [`process`], the `qemu-img` images of [`image`], and [`tls::TestCa`] (X.509 credentials made with `openssl`, in
//! QEMU's directory layout), and [`vcsim::Vcsim`] (govmomi's vCenter simulator with change
//! tracking, built from Debian's Go packages), and [`power_loss::PowerLoss`] (what a
//! directory tree would hold after a power loss, recorded at the sync calls of the
//! processes writing it by a preloaded shim built with gcc), and two S3 implementations
//! other than Haven's node: [`garage::Garage`] (one `garage server`) and
//! [`ceph::Ceph`] (a one-host Ceph cluster with its RGW gateway). They return
//! [`FixtureError`] rather than panicking, so a missing tool is reported as such.

#![warn(missing_docs)]

pub mod backend;
pub mod ceph;
mod error;
pub mod etcd;
pub mod garage;
pub mod guest;
pub mod hooked_store;
pub mod image;
pub mod local;
pub mod metastore;
pub mod power_loss;
pub mod process;
pub mod s3_account;
pub mod storage_node;
pub mod tls;
pub mod unreliable;
pub mod vcsim;

pub use error::FixtureError;
