//! Real etcd clusters: `haven_testkit`'s fixture (free loopback ports, data in a
//! temporary directory, members killed on drop and restartable for quorum tests).

pub use haven_testkit::etcd::{Etcd, EtcdctlUser};
