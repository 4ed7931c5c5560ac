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
//! | [`access`] | the people at the site: their roles and the one permission table of the console and API |
//! | [`identity`] | Ed25519 identity (= libp2p PeerId), X25519 key, signed `NodeRecord`, signed envelopes |
//! | [`ids`] | the ids of transfers, requests and ledger entries (newtypes over their bytes, hex as text); peers as libp2p's `PeerId`, base58 as text |
//! | [`keystore`] | master key from the passphrase (Argon2id), key wrapping, secret key files |
//! | [`seal`] | the chunked AEAD sealed-object format (re-export of `medmesh-seal`) |
//! | [`config`] | the TOML configuration: the types of every setting, services' included |
//! | [`ledger`] | the signed, chained access ledger's model: entries, feeds, study commitments, gossip and sync messages |
//! | [`store`] | redb index and the encrypted, content-addressed blob store: the only code that opens either |
//! | [`effects`] | the hooks a change in one service sets off in the others (ledger entries, transfers to end) |
//! | [`dicom`] | ingest (parse, validate, group), export |
//! | [`gateway`] | the DICOM gateway: DIMSE over dicom-ul, association policy, the storage SCP, the SCU (echo, store, find, move), DICOM TLS |
//! | [`deid`] | de-identification: PS3.15 Annex E profile and options, UID remap, date shift, pixel masking; the de-identification service |
//! | [`notify`] | the notification service: delivery of the outbox to a webhook and a syslog collector (ATNA) |
//! | [`trust`] | consortia, membership certificates, revocations, bilateral trust, blocks: is this peer trusted; the trust service |
//! | [`consent`] | the consent service: patients' consents (FHIR import too), site policy, the decision for a study, peer and purpose |
//! | [`studies`] | the studies service: import, list, show, export |
//! | [`retention`] | the retention service: purges by a person or by the policy |
//! | [`audit`] | the ledger service: this node's entries, `log tail/show/verify`, peers' entries, replication, notifications |
//! | [`limits`] | what a peer can make this node spend (`[limits]`) |
//! | [`transfer`] | the transfer service: consent-scoped transfers of studies between nodes |
//! | [`net`] | the libp2p swarm: transports, peer gating, a router of protocols the services register |
//! | [`home`] | the node home directory and the [`home::Node`] that opens it and builds the services (the composition root) |
//! | [`metrics`] | operators' `/metrics` (Prometheus text), `/healthz` and `/readyz` on a listener of their own; the counters services increment |
//! | [`api`] | the local admin API on the home's Unix socket: one typed route table shared with the client |
//! | [`daemon`] | `medmesh run`: the node as a service until SIGINT or SIGTERM |
//!
//! Import direction (checked by `node/tests/architecture.rs`; a module
//! imports only modules above it in this list, never one below):
//!
//! 1. leaves, importing no other module of this crate: `clock`, `cbor`, `ids`,
//!    `fsutil`, `access`, `metrics`; then `text` (none), `keystore` (`cbor`, `fsutil`),
//!    `identity` (`cbor`, `text`);
//! 2. `config` (no service: the services' settings are its types);
//! 3. `ledger` (the model: `cbor`, `identity`, `text`);
//! 4. `store` (the foundation and `ledger`'s entry types, which it indexes),
//!    then `effects` (hooks over the store's and the ledger's types);
//! 5. `dicom` (`store`, `clock`, `fsutil`);
//! 6. services, each given narrow handles and hooks, never the node:
//!    `deid`, `notify`, `trust`, `consent`, `studies`, `retention`,
//!    `audit`, `limits`, `transfer` (which reaches the others through its
//!    `Host` trait, as `audit::replication` does);
//! 7. `net` (knows no service: they register protocols with its router),
//!    then `home` (the composition root), `api`, `daemon`.
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

pub mod access;
pub mod api;
pub mod audit;
pub mod cbor;
pub mod clock;
pub mod config;
pub mod consent;
pub mod daemon;
pub mod deid;
pub mod dicom;
pub mod effects;
pub mod fsutil;
pub mod gateway;
pub mod home;
pub mod identity;
pub mod ids;
pub mod keystore;
pub mod ledger;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod notify;
pub mod retention;
pub mod store;
pub mod studies;
pub mod text;
pub mod transfer;
pub mod trust;
pub mod web;

pub use consent_schema;
pub use medmesh_seal as seal;
