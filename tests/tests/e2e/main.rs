//! End-to-end tests of medmesh: real `medmesh` processes on real files.
//!
//! Table of contents:
//! - `home`: `init` (permissions, refusing to overwrite, wrong passphrase), `id --record`.
//! - `corpus`: the repository's DICOM corpus (`tests/data/corpus`): every
//!   valid file imports and exports byte-identical, every malformed file is
//!   rejected with its reason, re-import stores nothing new, DICOMDIR handling.
//! - `privacy`: no patient data in plaintext anywhere under a home after import.
//! - `integrity`: a changed byte in a stored blob fails export, naming the object.
//! - `crash`: SIGKILL in the middle of a large import leaves a consistent store.
//! - `durability`: a node SIGKILLed with `fsync = false` keeps what it acknowledged
//!   (landed studies, transfers, gossiped entries) and signs no old seq again; a
//!   command run while the node starts makes neither fail.
//! - `trust`: consortium init, k-of-n certificates, join, revoke/apply, bilateral trust, blocks.
//! - `consent`: `consent add / list / withdraw / check / import-fhir` on the files and
//!   through a running node: allow, deny with reasons, approval, withdrawal, all-or-nothing FHIR import.
//! - `net`: `medmesh run` nodes on 127.0.0.1: three nodes see each other, the CLI works
//!   through the admin API, refused certificates get no answer, revocation and blocks
//!   disconnect running peers, clean shutdown.
//! - `notify`: a transfer's notification delivered by a running holder to a webhook and a
//!   syslog collector (DICOM audit message), without the study's identifiers.
//! - `testnet`: the README's main command (`medmesh-testnet demo`) and `scenario all`.
#![forbid(unsafe_code)]

mod consent;
mod corpus;
mod crash;
mod deid;
mod durability;
mod home;
mod integrity;
mod ledger;
mod net;
mod notify;
mod privacy;
mod testnet;
mod transfer;
mod trust;
mod util;
