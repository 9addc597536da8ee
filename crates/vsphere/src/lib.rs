//! A small vSphere client for backups: the dozen SOAP calls Haven makes, and ranged
//! reads of datastore files over HTTPS.
//!
//! Why not generated bindings: the full vSphere WSDL makes crates far too large to build
//! on small machines, and a backup needs a dozen calls and a few fields of a few types.
//! So requests are written by hand and replies are parsed into a bounded XML tree
//! ([`xml::Element`]) read field by field; a reply that is truncated, too large, nested
//! too deep or of the wrong type is a [`VsphereError::Reply`] naming what is wrong,
//! never a panic. TLS is always verified, against the system's roots or a CA file.
//!
//! Calls: `RetrieveServiceContent`, `Login`, `Logout`, `CreateContainerView` +
//! `RetrieveProperties` + `DestroyView` (find a VM by name), `RetrieveProperties`
//! (hardware, snapshots, parents, tasks), `ReconfigVM_Task` (change tracking on),
//! `CreateSnapshot_Task`, `RemoveSnapshot_Task`, `QueryChangedDiskAreas` (paged).

#![warn(missing_docs)]

mod client;
mod credentials;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod model;
pub mod xml;

pub use client::{Client, ConnectOptions, MAX_REPLY_BYTES};
pub use credentials::{Credentials, PASSWORD_ENV, USER_ENV};
pub use error::{Result, VsphereError};
pub use model::{
    Area, MoRef, Nic, SnapshotEntry, VirtualDisk, VmInfo, VmSummary, datastore_path, flat_file,
};
/// URLs of datastore files ([`Client::datastore_url`]).
pub use reqwest::Url;
