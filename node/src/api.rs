//! The local admin API of a running node: HTTP/1.1 with JSON bodies on the
//! Unix socket `HOME/node.sock` (mode 0600, in the 0700 home: only the node's
//! user reaches it, so it needs no further authentication).
//!
//! The CLI uses it for every command on a home whose node runs; `curl
//! --unix-socket HOME/node.sock http://medmesh/v1/peers` works too. The
//! routes are listed in docs/PROTOCOL.md ("Admin API"). Answers are JSON;
//! long operations (import, export) answer with JSON Lines, one
//! `{"type", "data"}` record per line as they progress, the last one being
//! the summary or `{"type": "error", "data": {"message": ...}}`. Errors of
//! other routes are HTTP 4xx/5xx with `{"error": message}`.
//!
//! Every route is defined once, in [`routes`]: its method, path, request,
//! answer and handler ([`route`]). The [`server`] dispatches from that
//! table, the [`client`] calls it by type (`client.call::<R>(request)`), and
//! the CLI serves the same handlers in its own process when no node runs.

pub mod client;
pub mod route;
pub mod routes;
pub mod server;

use std::path::PathBuf;

use consent_schema::Purpose;
use serde::{Deserialize, Serialize};

use crate::home::IdInfo;
use crate::net::NetStatus;

/// Version prefix of every route.
pub const PREFIX: &str = "/v1";
/// Largest request body accepted, bytes.
pub const MAX_REQUEST: usize = 1024 * 1024;

/// The request of [`routes::TrustJoin`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// Consortium descriptor bytes, hex.
    pub descriptor: String,
    /// This node's certificate bytes, hex.
    pub certificate: String,
}

/// The request of [`routes::TrustAddPeer`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddPeerRequest {
    /// The peer's signed node record, hex.
    pub record: String,
    /// Purposes.
    pub purposes: Vec<Purpose>,
    /// Days of validity, unlimited when absent.
    pub valid_days: Option<u32>,
}

/// The request of [`routes::TrustApply`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApplyRequest {
    /// The revocation bytes, hex.
    pub revocation: String,
}

/// The request of [`routes::TrustBlock`] and [`routes::TrustUnblock`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlockRequest {
    /// Peer id.
    pub peer_id: String,
    /// Why (block only).
    #[serde(default)]
    pub reason: String,
}

/// The request of [`routes::StudiesList`]. `Debug` does not show the patient.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct ListRequest {
    /// Patient ID and issuer to look up.
    pub patient: Option<(String, String)>,
}

impl std::fmt::Debug for ListRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListRequest")
            .field("patient", &self.patient.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The request of [`routes::StudiesShow`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShowRequest {
    /// Study Instance UID.
    pub study_uid: String,
}

/// The request of [`routes::StudiesImport`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportRequest {
    /// Absolute paths of files and folders.
    pub paths: Vec<PathBuf>,
}

/// The request of [`routes::StudiesExport`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportRequest {
    /// Study Instance UID.
    pub study_uid: String,
    /// Absolute output folder.
    pub out: PathBuf,
    /// Overwrite existing files.
    pub force: bool,
}

/// The request of [`routes::StudiesDeid`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeidRequest {
    /// Absolute paths of files and folders.
    pub paths: Vec<PathBuf>,
    /// Absolute output folder.
    pub out: PathBuf,
    /// `pseudonymised` or `anonymised`.
    pub level: consent_schema::DeidLevel,
    /// Options on top of the configured ones.
    pub options: Vec<crate::deid::DeidOption>,
}

/// The request of [`routes::Notifications`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NotificationsRequest {
    /// Only those not shown before.
    pub unread: bool,
}

/// The request of [`routes::LogTail`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogTailRequest {
    /// How many entries.
    pub limit: usize,
}

/// One feed's head, as [`routes::LogHeads`] answers it (and `medmesh log
/// heads --json` prints it): the last entry of that author held here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadView {
    /// Author peer id.
    pub author: String,
    /// Author Ed25519 key (hex).
    pub key: String,
    /// Its last seq held here.
    pub seq: u64,
    /// That entry's id (hex).
    pub id: String,
}

impl HeadView {
    /// The views of `heads` (from [`crate::home::Node::ledger_heads`]), in
    /// the same order. An author key that is not a valid Ed25519 key (none
    /// is stored: entries are verified before they are kept) gets an empty
    /// peer id.
    #[must_use]
    pub fn list(heads: &[crate::ledger::sync::Head]) -> Vec<Self> {
        heads
            .iter()
            .map(|h| Self {
                author: <[u8; 32]>::try_from(h.author.as_slice())
                    .ok()
                    .and_then(|k| crate::identity::peer_id_of(&k).ok())
                    .unwrap_or_default(),
                key: hex::encode(&h.author),
                seq: h.seq,
                id: hex::encode(&h.id),
            })
            .collect()
    }
}

/// The request of [`routes::StudiesRelink`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelinkRequest {
    /// The pseudonym to resolve.
    pub pseudonym: String,
}

/// The request of [`routes::StoreCheck`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckRequest {
    /// Open and verify every object.
    pub deep: bool,
}

/// The request of [`routes::ConsentsList`]. `Debug` does not show the patient.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct ConsentListRequest {
    /// Patient ID and issuer whose consents to list; every consent when absent.
    pub patient: Option<(String, String)>,
}

impl std::fmt::Debug for ConsentListRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsentListRequest")
            .field("patient", &self.patient.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The request of [`routes::StudiesPurge`] (answered with a [`crate::retention::PurgeReport`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PurgeRequest {
    /// A Study Instance UID, or 16+ hex digits of a locked study's reference.
    pub study: String,
    /// Why.
    pub reason: crate::retention::PurgeReason,
}

/// The request of [`routes::ConsentsWithdraw`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WithdrawRequest {
    /// The consent id.
    pub id: String,
}

/// The answer of [`routes::TrustUnblock`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Unblocked {
    /// Peer id.
    pub peer_id: String,
    /// Whether it was blocked.
    pub was_blocked: bool,
}

/// The answer of [`routes::GetStatus`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// The node's identity.
    pub node: IdInfo,
    /// Its network.
    pub net: NetStatus,
    /// The admin API socket.
    pub socket: PathBuf,
    /// What keeps this node from writing ledger entries (its own feed is
    /// shorter than what its peers hold), if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger_problem: Option<String>,
    /// The DICOM gateway's SCP, when `[gateway] enabled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayStatus>,
    /// The web console's address, when `[web] listen` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<std::net::SocketAddr>,
    /// The address `/metrics`, `/healthz` and `/readyz` are served on, when
    /// `[metrics] listen` is set (the port bound when it asked for 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<std::net::SocketAddr>,
}

/// The body of [`routes::GatewayEcho`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EchoRequest {
    /// The `name` of a `[[gateway.destination]]`; absent: `[gateway.pacs]`.
    #[serde(default)]
    pub to: Option<String>,
}

/// The answer of [`routes::GatewayEcho`]: the remote AE answered C-ECHO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EchoReport {
    /// The name of the remote AE in the configuration.
    pub name: String,
    /// Its AE title.
    pub ae_title: String,
    /// `host:port`.
    pub address: String,
    /// Over DICOM TLS.
    pub tls: bool,
    /// Milliseconds from connecting to the C-ECHO response.
    pub millis: u64,
}

/// The body of [`routes::GatewayFetch`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchRequest {
    /// The Study Instance UID to fetch from `[gateway.pacs]`.
    pub study_uid: String,
}

/// The answer of [`routes::GatewayFetch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchReport {
    /// The study.
    pub study_uid: String,
    /// The PACS's final C-MOVE status code (0 success, B000 some failed).
    pub status: u16,
    /// Its meaning.
    pub status_text: String,
    /// Objects the PACS sent (sub-operations completed).
    pub completed: u16,
    /// Objects it could not send (or this node refused).
    pub failed: u16,
    /// Objects sent with a warning.
    pub warning: u16,
    /// Instances of the study this node holds now.
    pub instances_held: u64,
}

/// The DICOM gateway's SCP of a running node (in [`Status`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayStatus {
    /// Its AE title.
    pub ae_title: String,
    /// The address it listens on.
    pub listen: std::net::SocketAddr,
    /// Whether it requires DICOM TLS.
    pub tls: bool,
}

/// Progress of [`routes::StudiesImport`], one JSON Lines record each.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "kebab-case")]
pub enum ImportProgress {
    /// The file list is known.
    Started {
        /// Number of files.
        files: u64,
        /// Their total size.
        bytes: u64,
    },
    /// One file is done (committed, skipped or rejected).
    File(crate::dicom::ingest::FileOutcome),
}

/// Progress of [`routes::StudiesDeid`], one JSON Lines record each.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "kebab-case")]
pub enum DeidProgress {
    /// The files were found: how many, and their bytes.
    Started {
        /// Files.
        files: u64,
        /// Their bytes.
        bytes: u64,
    },
    /// One file is done.
    File(crate::deid::DeidOutcome),
}

/// Progress of [`routes::StudiesExport`], one JSON Lines record each.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "kebab-case")]
pub enum ExportProgress {
    /// One object is done.
    Object(crate::dicom::export::ExportOutcome),
}

/// One record of a streamed answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Line {
    /// Record type (`started`, `file`, `object`, `import-summary`, `export-summary`, `error`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Its data.
    pub data: serde_json::Value,
}

/// The request of [`routes::TransfersRequest`] and [`routes::TransfersShare`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransferAsk {
    /// The other node.
    pub peer_id: String,
    /// Study Instance UID.
    pub study_uid: String,
    /// Purpose.
    pub purpose: Purpose,
    /// Role. Required on the admin socket; through the web it is the
    /// person's own (any role sent is replaced).
    #[serde(default)]
    pub role: Option<consent_schema::Role>,
    /// Level asked for; the weakest allowed when absent.
    pub level: Option<consent_schema::DeidLevel>,
}

/// The request of [`routes::TransfersShow`], [`routes::ApprovalsApprove`] and [`routes::LogShow`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdRequest {
    /// Transfer id.
    pub id: String,
}

/// The request of [`routes::ApprovalsDeny`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DenyRequest {
    /// Transfer id.
    pub id: String,
    /// Why (told to the requester).
    pub reason: String,
}
