//! `haven-nbd`: the NBD client Haven workers use to read virtual disks for
//! backup (data plus `base:allocation` and `qemu:dirty-bitmap:*` block
//! status) and to write them back on restore.
//!
//! It speaks the fixed newstyle handshake with `NBD_OPT_STRUCTURED_REPLY`,
//! `NBD_OPT_SET_META_CONTEXT` and `NBD_OPT_GO`, then READ, WRITE, FLUSH,
//! WRITE_ZEROES, BLOCK_STATUS and DISC. The client supports neither TLS
//! (workers reach QEMU over local Unix sockets) nor extended headers.
//!
//! The [`NbdServer`] is the other side: a read-only server over any
//! [`ExportSource`], used to export snapshots for instant recovery, with
//! `NBD_OPT_STARTTLS` and X.509 credentials in QEMU's layout ([`ServerTls`]) so
//! a decrypted disk never crosses a network in clear.
//!
//! # Invariants
//!
//! - The server is untrusted. Every length it sends is bounded before
//!   anything is allocated or read (option replies 64 KiB, read chunks the
//!   request plus header, block status chunks 2 MiB), cookies must match,
//!   chunk offsets must lie inside the request, a READ must be covered
//!   exactly once, block status extents must be non-empty and make progress.
//!   Violations are [`NbdError::Protocol`], never a panic or wrong data.
//! - Every socket exchange runs under [`ConnectOptions::timeout`]: each
//!   handshake step and each request with its whole reply.
//! - One request is in flight per [`Client`]; parallelism comes from opening
//!   several clients. Any error that may leave the stream out of sync
//!   (I/O, timeout, protocol) poisons the client; server error replies do not.
//! - Requests never exceed the server's maximum block size, capped at 32 MiB,
//!   and must be aligned to its minimum block size (qemu exports use 1 or
//!   512): unaligned ranges are refused with [`NbdError::InvalidArgument`]
//!   rather than emulated with read-modify-write.
//!
//! # Layout
//!
//! `wire` holds constants and pure encoders/decoders, `transport` the
//! socket and timeout wrapper, `handshake` the option negotiation, `session`
//! one request/reply exchange at a time (with `coverage` proving READ
//! replies complete), `client` the public API on top.

#![warn(missing_docs)]

mod client;
mod coverage;
mod endpoint;
mod error;
mod extent;
mod handshake;
mod server;
mod session;
mod transport;
mod wire;

pub use client::{Client, ConnectOptions};
pub use endpoint::Endpoint;
pub use error::NbdError;
pub use extent::{
    CONTEXT_BASE_ALLOCATION, Extent, STATE_DIRTY, STATE_HOLE, STATE_ZERO, dirty_bitmap_context,
};
pub use server::{
    ExportSource, NbdServer, PATTERN_BLOCK, PatternExport, PeerVerification, ServerConfig,
    ServerListener, ServerTls, TlsCredentialsError,
};
