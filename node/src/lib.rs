//! medmesh-node: the engine of a medmesh node.
//!
//! A node holds a site's DICOM studies in an encrypted store and (in later
//! layers) exchanges them with trusted peers under patient consent. This
//! crate is the library that the `medmesh` binary drives; every module owns
//! one concern and its own error type:
//!
//! | module | owns |
//! |---|---|
//! | [`clock`] | the one clock: now (Unix seconds, UTC instant) and RFC 3339 text |
//! | [`cbor`] | CBOR encoding of every record, on disk and on the wire, with size caps |
//! | [`text`] | text from peers and files made safe to store and print (control characters escaped, length capped) |
//! | [`fsutil`] | private files and folders, atomic writes, the one walker of folders |
//! | [`identity`] | Ed25519 identity (= libp2p PeerId), X25519 key, signed `NodeRecord`, signed envelopes |
//! | [`keystore`] | master key from the passphrase (Argon2id), key wrapping, secret key files |
//! | [`seal`] | the chunked AEAD sealed-object format (re-export of `medmesh-seal`) |
//! | [`config`] | the TOML configuration: the types of every setting, services' included |
//! | [`ledger`] | the signed, chained access ledger's model: entries, feeds, study commitments, gossip and sync messages |
//! | [`store`] | redb index and the encrypted, content-addressed blob store: the only code that opens either |
//! | [`dicom`] | ingest (parse, validate, group), export |
//! | [`gateway`] | the DICOM gateway: DIMSE over dicom-ul, association policy, the storage SCP, the SCU (echo, store, find, move), DICOM TLS |
//! | [`deid`] | de-identification: PS3.15 Annex E profile and options, UID remap, date shift, pixel masking; the de-identification service |
//! | [`notify`] | the notification service: delivery of the outbox to a webhook and a syslog collector (ATNA) |
//! | [`trust`] | consortia, membership certificates, revocations, bilateral trust, blocks: is this peer trusted |
//! | [`limits`] | what a peer can make this node spend (`[limits]`) |
//! | [`transfer`] | consent-scoped transfers of studies between nodes |
//! | [`net`] | the libp2p swarm: transports, peer gating, the protocols |
//! | [`home`] | the node home directory and the [`home::Node`] that opens it and builds the services |
//! | [`api`] | the local admin API on the home's Unix socket |
//! | [`daemon`] | `medmesh run`: the node as a service until SIGINT or SIGTERM |
//!
//! Import direction (draft for issue 17; a module imports only modules
//! above it in this list, never one below):
//!
//! 1. leaves, importing no other module of this crate: `clock`, `cbor`,
//!    `fsutil`; then `text` (none), `keystore` (`cbor`, `fsutil`),
//!    `identity` (`cbor`, `text`);
//! 2. `config` (no service: the services' settings are its types);
//! 3. `ledger` (the model: `cbor`, `identity`, `text`);
//! 4. `store` (the foundation and `ledger`'s entry types, which it indexes);
//! 5. `dicom` (`store`, `clock`, `fsutil`);
//! 6. services: `deid` (`config`, `dicom`, `store`, `fsutil`), `notify`
//!    (`clock`, `config`, `identity`, `ledger`, `store`), and the others
//!    (`trust`, `limits`, `transfer`, ...);
//! 7. `net`, then `home` (the composition root), `api`, `daemon`.
//!
//! Test modules may reach further (`text`'s tests decode a transfer refusal
//! and a consent reason, to check they go through its sanitiser).
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
pub mod gateway;
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
