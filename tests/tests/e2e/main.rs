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
//! - `revocation`: a revocation applied at one of five nodes reaches every member by
//!   itself (gossip, catch-up, a node that was down refuses the peer on its return);
//!   forged and under-signed revocations are applied and passed on by nobody.
//! - `notify`: a transfer's notification delivered by a running holder to a webhook and a
//!   syslog collector (DICOM audit message), without the study's identifiers.
//! - `recheck`: the holder decides again at every step: a consent withdrawn, a revocation
//!   or a grant expiry while the recipient is away ends the transfer on both sides.
//! - `scope`: scope decided per object: an OT object filed in a CT series is left out under a
//!   CT-only consent and named (by reference) in the holder's `transfers show`.
//! - `limits`: a trusted peer that floods a running node with requests is answered
//!   retry-later beyond its burst, and nothing of the excess is recorded.
//! - `gateway`: `medmesh run`'s DICOM SCP fed by dcmtk's storescu, `status --json`, and
//!   `gateway echo / find / fetch` and `[policy] fetch_from_pacs` against dcmqrscp as the PACS.
//! - `gateway_forward`: storescu → node A's SCP → a consented transfer → node B's routes
//!   forward to storescp and Orthanc (data sets and pixel data identical, `study-forwarded`
//!   per AE; a pseudonymised grant forwards only de-identified objects); the queue survives
//!   B's SIGKILL while the PACS is down and delivers every instance once; `gateway find /
//!   fetch` and `fetch_from_pacs` against Orthanc.
//! - `idp` (with `browser`): the web tests' real parts, a real OpenID provider
//!   (tests/web/idp.mjs, `oidc-provider`) and headless Chromium (tests/web/browser.mjs,
//!   `playwright-core`): discovery, keys, machine tokens, a browser login with and without MFA.
//! - `web`: the web console and API of a running node with a real OpenID provider and
//!   headless Chromium: MFA required, roles, a steward's approval in the console completing
//!   a cross-border transfer, CSRF, logout, session expiry, bearer tokens refused for each fault.
//! - `metrics`: `[metrics] listen` on two running nodes: `/metrics` scraped over TCP moves
//!   with a denial (refusals by reason) and a transfer (bytes, states, ledger, peers) and
//!   passes `promtool check metrics`; `/healthz`, `/readyz`, 404 for anything else.
//! - `testnet`: the README's main command (`medmesh-testnet demo`) and `scenario all`.
#![forbid(unsafe_code)]

mod browser;
mod consent;
mod corpus;
mod crash;
mod deid;
mod durability;
mod gateway;
mod gateway_forward;
mod home;
mod idp;
mod integrity;
mod ledger;
mod limits;
mod metrics;
mod net;
mod notify;
mod privacy;
mod recheck;
mod revocation;
mod scope;
mod testnet;
mod transfer;
mod trust;
mod util;
mod web;
