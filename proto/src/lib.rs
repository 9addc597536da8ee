//! Haven's gRPC contracts, version 1, and a client that always talks to the leader.
//!
//! The `.proto` files under `haven/v1/` are the contract between the coordinator, the
//! workers and the CLI; this crate only compiles them (tonic/prost) and adds the one
//! piece of client logic every caller needs: finding the leading coordinator replica
//! and following it when leadership moves, plus the jittered backoff every retry loop
//! of the control plane waits with (`backoff`).

pub mod backoff;
mod error_chain;
pub mod leader;

/// Generated messages and services of `haven.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("haven.v1");
}

pub use backoff::Backoff;
pub use error_chain::error_chain;
pub use leader::{AuthChannel, ClientSecurity, LeaderClient, LeaderError};

/// Response metadata key in which a follower replica names the leader's URL.
pub const LEADER_METADATA: &str = "haven-leader";
