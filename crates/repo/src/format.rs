//! The repository format: what the bytes of every object mean.
//!
//! Pure encoding and decoding, with no I/O: blob framing and encryption, keys and key
//! files, the `config` object, chunk ids, fixed indexes, manifests and snapshot names.
//! `docs/format.md` is the specification these modules implement; a change here is a
//! format change and needs a new [`config::FORMAT_VERSION`].

pub(crate) mod blob;
pub(crate) mod chunk;
pub(crate) mod config;
pub(crate) mod crypto;
pub(crate) mod index;
pub(crate) mod keyfile;
pub(crate) mod manifest;
