//! Where objects live: the [`backend::Backend`] over memory, a local directory, S3 or a
//! Haven storage node, and what makes each of them fast and durable.
//!
//! Nothing here knows the format: keys and bytes go in and out unchanged. The backend
//! picks one implementation when its URL is opened; local disks (`local`) get `O_DIRECT`
//! chunk I/O (`local_direct`) and background fsyncs with a barrier (`local_sync`); S3
//! URLs (`s3`) that may name a storage node get the client of its extensions
//! (`node_client`) and batched existence checks (`exists_batcher`); both carry the
//! caller's trace context (`trace_context`). An `s3://` URL naming several storage
//! nodes of one site (`placed`) spreads objects over them by rendezvous hashing
//! (`rendezvous`), each member an ordinary storage-node backend.

pub(crate) mod backend;
pub(crate) mod exists_batcher;
pub(crate) mod local;
pub(crate) mod local_direct;
pub(crate) mod local_sync;
pub(crate) mod node_client;
pub(crate) mod placed;
pub(crate) mod put_batcher;
pub(crate) mod rendezvous;
pub(crate) mod s3;
pub(crate) mod s3_refusal;
pub(crate) mod trace_context;
