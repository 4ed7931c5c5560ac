//! medmesh-node: the engine of a medmesh node.
//!
//! A node holds a site's DICOM studies in an encrypted store and (in later
//! layers) exchanges them with trusted peers under patient consent. This
//! crate is the library that the `medmesh` binary drives; every module owns
//! one concern and its own error type:
//!
//! | module | owns |
//! |---|---|
//! | [`identity`] | Ed25519 identity (= libp2p PeerId), X25519 key, signed `NodeRecord`, signed envelopes |
//! | [`keystore`] | master key from the passphrase (Argon2id), key wrapping, secret key files |
//! | [`seal`] | the chunked AEAD sealed-object format (re-export of `medmesh-seal`) |
//! | [`store`] | redb index and the encrypted, content-addressed blob store |
//! | [`dicom`] | ingest (parse, validate, group), export |
//! | [`deid`] | de-identification: PS3.15 Annex E profile and options, UID remap, date shift, pixel masking |
//! | [`home`] | the node home directory: create, open, the operations on it |
//! | [`config`] | the TOML configuration |
//! | [`ledger`] | the signed, chained access ledger: entries, feeds, study commitments |
//! | [`text`] | text from peers and files made safe to store and print (control characters escaped, length capped) |
//!
//! ```no_run
//! use medmesh_node::{home::Node, keystore::Passphrase};
//! let pass = Passphrase::new(std::env::var("MEDMESH_PASSPHRASE")?);
//! let node = Node::open(std::path::Path::new("/var/lib/medmesh"), &pass)?;
//! for study in node.studies().list(None)? {
//!     println!("{} {} instances", study.study_uid, study.instances);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod api;
pub mod cbor;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod deid;
pub mod dicom;
pub mod fsutil;
pub mod home;
pub mod identity;
pub mod keystore;
pub mod ledger;
pub mod limits;
pub mod net;
pub mod notify;
pub mod store;
pub mod text;
pub mod transfer;
pub mod trust;

pub use consent_schema;
pub use medmesh_seal as seal;
