//! Consent-scoped transfers of studies between nodes.
//!
//! 1. Negotiation (`/medmesh/transfer/1`): a requester asks for a study; the
//!    holder checks trust, then consent and site policy
//!    ([`ConsentService::check`](crate::home::consent::ConsentService::check)), and answers with a signed [`wire::Grant`],
//!    a denial, or "pending" (queued for `medmesh approvals`). A holder may
//!    also share a study on its own, under the same checks.
//! 2. Preparation: the holder reads every object once (checking it against
//!    the hash recorded at import), hashes it per chunk, picks an ephemeral
//!    X25519 key, derives the transfer key from X25519(ephemeral, recipient)
//!    and signs a [`wire::Manifest`] that names the grant by its hash.
//! 3. Streaming (`/medmesh/stream/1`, see [`engine`]): chunks sealed with the
//!    transfer key in the sealed-object format (ChaCha20-Poly1305, STREAM
//!    nonces); the recipient checks each chunk's tag and BLAKE3 before it
//!    writes it, each object's hash at its end, and keeps the chunks as they
//!    arrived (already sealed to it): the transfer key becomes the study's
//!    data key, wrapped under the recipient's master key.
//! 4. Resume: the recipient records verified chunks per object; a new
//!    session sends only what is missing.
//! 5. Landing and receipt: the recipient stores the study with its grant
//!    and sends a signed [`wire::Receipt`]; the holder's transfer is complete
//!    only with it. A received study is locked (its key destroyed) when its
//!    grant expires.

pub mod admission;
mod deid;
pub mod engine;
#[cfg(test)]
mod landing_tests;
pub mod protocol;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod vectors;
pub mod wire;

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Mutex;

use consent_schema::{DeidLevel, ObjectFacts, ObjectScope, Purpose, Role};
use medmesh_seal::{DataKey, HEADER_LEN, Header, Opener, TAG_LEN, open_box, seal_box};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use self::wire::{
    AnswerBody, CHUNK_SIZE, GRANT_DOMAIN, Grant, KEY_CONTEXT, MANIFEST_DOMAIN, MAX_MANIFEST, MAX_MESSAGE, Manifest,
    ManifestObject, ObjectKind, Open, RECEIPT_DOMAIN, Receipt, Refuse, StudyIndex, WIRE_VERSION,
};
use crate::cbor;
use crate::home::consent::{CheckQuery, Reason, Verdict};
use crate::home::trust::now;
use crate::home::{HomeError, Node, rfc3339};
use crate::identity::peer_id_of;
use crate::ledger::Event;
use crate::store::{DOC_ATTESTATION, DOC_INDEX, DOC_KEY, DOC_MANIFEST, DOC_OBJECTS, DOC_PREP_KEY};
use crate::store::{
    InstanceMeta, InstanceRow, LandedObject, Origin, ROW_VERSION, ReceivedGrant, StoreError, StudyRef, StudyRow,
};

/// Largest signed attestation read from a manifest (bytes).
const MAX_MANIFEST_ATTESTATION: usize = wire::MAX_MANIFEST;

/// BLAKE3 `derive_key` context of the key that seals transfer records.
const RECORD_CONTEXT: &str = "medmesh/v1/transfer record key";
/// Version of the transfer record format.
const RECORD_VERSION: u32 = 1;
/// Largest sealed transfer record, bytes.
const MAX_RECORD: usize = 1024 * 1024;
/// Bytes received between two durable progress records, per object.
const SYNC_EVERY: u64 = 8 * 1024 * 1024;

/// A transfer id.
pub type TransferId = [u8; 16];

/// Errors of transfers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// No transfer with that id.
    #[error("no transfer {0} at this node")]
    Unknown(String),
    /// The id is not 32 hex digits.
    #[error("transfer id {0:?}: expected 32 hex digits")]
    BadId(String),
    /// The operation does not fit the transfer's state.
    #[error("transfer {id}: {reason}")]
    State {
        /// The transfer.
        id: String,
        /// Why.
        reason: String,
    },
    /// A stored record or document could not be read.
    #[error("transfer {id}: damaged record: {reason}")]
    Damaged {
        /// The transfer.
        id: String,
        /// Why.
        reason: String,
    },
    /// A file of the transfer could not be read or written.
    #[error("transfer {id}: {path}: {cause}")]
    Io {
        /// The transfer.
        id: String,
        /// The file.
        path: String,
        /// The cause.
        cause: std::io::Error,
    },
    /// A stored object failed verification while being prepared.
    #[error("transfer {id}: stored object {object} failed verification: {reason}")]
    Integrity {
        /// The transfer.
        id: String,
        /// The object (its blob's short address; never a UID, as this is logged).
        object: String,
        /// Why.
        reason: String,
    },
    /// The network is not running (transfers need `medmesh run`).
    #[error("{0}")]
    Network(String),
    /// A received study was refused at landing (nothing of it is stored).
    #[error("transfer {id}: {reason} [{code}]")]
    Refused {
        /// The transfer.
        id: String,
        /// The reason code (`bad-object`, `already-held`, ...).
        code: &'static str,
        /// Why (no patient data: objects by index, studies by reference).
        reason: String,
    },
}

/// Which side of a transfer this node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// This node holds the study and sends it.
    Outgoing,
    /// This node receives it.
    Incoming,
}

/// How a transfer started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Initiated {
    /// The recipient asked (`medmesh request`).
    Request,
    /// The holder pushed (`medmesh share`).
    Share,
}

/// Where a transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Waiting for a person at the holder.
    Pending,
    /// Refused (by trust, consent, policy or a person).
    Denied,
    /// Granted; the data has not started to flow.
    Granted,
    /// Data flowing (or waiting to resume).
    Streaming,
    /// Holder: every chunk acknowledged; waiting for the receipt.
    AwaitingReceipt,
    /// Recipient: stored; the holder has not yet acknowledged the receipt.
    Landed,
    /// Done: the holder holds the signed receipt (and the recipient knows it).
    Complete,
    /// Stopped for good; see `error`.
    Failed,
}

impl State {
    /// The spelling used in listings.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Denied => "denied",
            State::Granted => "granted",
            State::Streaming => "streaming",
            State::AwaitingReceipt => "awaiting-receipt",
            State::Landed => "landed",
            State::Complete => "complete",
            State::Failed => "failed",
        }
    }

    /// True when nothing more will happen.
    #[must_use]
    pub fn is_final(self) -> bool {
        matches!(self, State::Denied | State::Complete | State::Failed)
    }
}

/// A transfer as this node records it (sealed at rest: it names the study).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransferRecord {
    /// [`RECORD_VERSION`].
    pub v: u32,
    /// The transfer id (hex).
    pub id: String,
    /// Which side this node is.
    pub direction: Direction,
    /// How it started.
    pub initiated: Initiated,
    /// The other node (peer id).
    pub peer: String,
    /// Its institution, as certified.
    pub institution: String,
    /// Study Instance UID.
    pub study_uid: String,
    /// Purpose.
    pub purpose: Purpose,
    /// Requesting role.
    pub role: Role,
    /// Level asked for.
    pub requested_level: Option<DeidLevel>,
    /// Level granted.
    pub level: Option<DeidLevel>,
    /// Where it stands.
    pub state: State,
    /// Why it was denied, is pending, or failed (at the holder, in full).
    pub reasons: Vec<Reason>,
    /// The requester's request id.
    pub request_id: Option<String>,
    /// The signed grant (envelope CBOR), once granted.
    #[serde(with = "serde_bytes")]
    pub grant: Vec<u8>,
    /// The signed receipt (envelope CBOR), once delivered.
    #[serde(with = "serde_bytes")]
    pub receipt: Vec<u8>,
    /// Created (Unix seconds).
    pub created: i64,
    /// Last changed (Unix seconds).
    pub updated: i64,
    /// Grant end (Unix seconds).
    pub expires: Option<i64>,
    /// Objects in the manifest (the index object included).
    pub objects: u64,
    /// Plaintext bytes in the manifest.
    pub bytes: u64,
    /// Holder: bytes sent, resends included.
    pub bytes_sent: u64,
    /// Holder: sessions started.
    pub sessions: u32,
    /// Last error (a failed session, a refusal by the recipient).
    pub error: Option<String>,
    /// Holder: the transfer was ended (see [`Node::end_affected_transfers`])
    /// and the recipient has not yet been told (a permanent refusal).
    #[serde(default)]
    pub tell: bool,
    /// Holder: objects of the granted series left out of the manifest
    /// because they are outside the consent's object-level scope (a
    /// reference to the object, never its UID, and why).
    #[serde(default)]
    pub left_out: Vec<LeftOut>,
}

/// An object left out of a transfer's manifest, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeftOut {
    /// The object's reference: the first 16 hex digits of its content address
    /// (`study show` and `store check` name objects the same way).
    pub object: String,
    /// Its Modality (0008,0060), as stored.
    pub modality: String,
    /// Stable reason code (`modality-not-covered`, `sop-class-not-covered`, `denied-by-consent`, ...).
    pub code: String,
    /// Why, in words.
    pub text: String,
}

impl TransferRecord {
    /// A new record: denied until decided, nothing granted, sent or received.
    fn new(
        id: TransferId,
        direction: Direction,
        initiated: Initiated,
        peer: &str,
        study_uid: &str,
        purpose: Purpose,
        role: Role,
    ) -> Self {
        let t = now();
        TransferRecord {
            v: RECORD_VERSION,
            id: hex::encode(id),
            direction,
            initiated,
            peer: peer.to_string(),
            institution: String::new(),
            study_uid: study_uid.to_string(),
            purpose,
            role,
            requested_level: None,
            level: None,
            state: State::Denied,
            reasons: Vec::new(),
            request_id: None,
            grant: Vec::new(),
            receipt: Vec::new(),
            created: t,
            updated: t,
            expires: None,
            objects: 0,
            bytes: 0,
            bytes_sent: 0,
            sessions: 0,
            error: None,
            tell: false,
            left_out: Vec::new(),
        }
    }
}

/// A transfer for listings (`medmesh transfers list`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferView {
    /// Transfer id.
    pub id: String,
    /// `outgoing` (this node sends) or `incoming`.
    pub direction: Direction,
    /// `request` or `share`.
    pub initiated: Initiated,
    /// State.
    pub state: State,
    /// The other node.
    pub peer: String,
    /// Its institution.
    pub institution: String,
    /// Study Instance UID.
    pub study_uid: String,
    /// Purpose.
    pub purpose: Purpose,
    /// Role.
    pub role: Role,
    /// Level granted.
    pub level: Option<DeidLevel>,
    /// Created (RFC 3339).
    pub created: String,
    /// Last changed (RFC 3339).
    pub updated: String,
    /// Grant end (RFC 3339).
    pub expires: Option<String>,
    /// Objects (the study index included).
    pub objects: u64,
    /// Bytes.
    pub bytes: u64,
    /// Objects received and verified (as far as this node knows).
    pub done_objects: u64,
    /// Bytes received and verified (as far as this node knows).
    pub done_bytes: u64,
    /// Holder: bytes sent, resends included.
    pub bytes_sent: u64,
    /// Holder: sessions started.
    pub sessions: u32,
    /// Reasons (denied, pending, failed).
    pub reasons: Vec<Reason>,
    /// Last error.
    pub error: Option<String>,
    /// Whether the signed delivery receipt is held.
    pub receipt: bool,
    /// Holder: objects left out of the manifest (outside the consent's
    /// object-level scope), by reference, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub left_out: Vec<LeftOut>,
}

/// Live progress of transfers in this process (for `transfers watch`).
#[derive(Debug, Default)]
pub struct Live {
    map: Mutex<HashMap<TransferId, Progress>>,
    /// Request ids sent to a holder whose answer is not recorded yet.
    asking: Mutex<HashSet<String>>,
    /// Transfers ended while a session may be streaming them: the session
    /// stops before its next frame.
    ended: Mutex<HashSet<TransferId>>,
}

/// A request sent to a holder whose answer is not recorded yet ([`Live::asking`]);
/// dropped once it is recorded (or will not be).
#[derive(Debug)]
pub struct Asking<'a> {
    live: &'a Live,
    request_id: String,
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        let mut set = self
            .live
            .asking
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        set.remove(&self.request_id);
    }
}

/// Progress of one transfer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Objects verified by the recipient.
    pub done_objects: u64,
    /// Bytes verified by the recipient.
    pub done_bytes: u64,
    /// Bytes sent (holder), resends included.
    pub bytes_sent: u64,
}

impl Live {
    /// Changes the progress of `id`.
    pub fn update(&self, id: &TransferId, f: impl FnOnce(&mut Progress)) {
        let mut map = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        f(map.entry(*id).or_default());
    }

    /// The progress of `id`, if any this run.
    #[must_use]
    pub fn get(&self, id: &TransferId) -> Option<Progress> {
        let map = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(id).copied()
    }

    /// Notes that request `request_id` is being sent, until the guard is
    /// dropped: a holder may grant it and open its stream before the answer is
    /// recorded here, and such a stream is then refused for now, not for good.
    #[must_use]
    pub fn asking(&self, request_id: &str) -> Asking<'_> {
        let mut set = self.asking.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        set.insert(request_id.to_string());
        Asking {
            live: self,
            request_id: request_id.to_string(),
        }
    }

    /// Whether the answer to request `request_id` is still to be recorded.
    #[must_use]
    pub fn is_asking(&self, request_id: &str) -> bool {
        let set = self.asking.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        set.contains(request_id)
    }

    /// Notes that `id` was ended: a running session stops.
    pub fn end(&self, id: &TransferId) {
        let mut set = self.ended.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        set.insert(*id);
    }

    /// Whether `id` was ended while this process runs.
    #[must_use]
    pub fn is_ended(&self, id: &TransferId) -> bool {
        let set = self.ended.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        set.contains(id)
    }

    /// Forgets `id`.
    pub fn remove(&self, id: &TransferId) {
        let mut map = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.remove(id);
    }
}

/// Parses a transfer id.
///
/// # Errors
/// [`TransferError::BadId`].
pub fn parse_id(s: &str) -> Result<TransferId, TransferError> {
    let bytes = hex::decode(s.trim()).map_err(|_| TransferError::BadId(s.to_string()))?;
    <[u8; 16]>::try_from(bytes.as_slice()).map_err(|_| TransferError::BadId(s.to_string()))
}

fn new_id() -> Result<TransferId, TransferError> {
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|e| TransferError::Network(format!("the OS random generator failed: {e}")))?;
    Ok(id)
}

fn reason(code: &str, text: impl Into<String>) -> Reason {
    Reason {
        code: code.into(),
        text: text.into(),
    }
}

/// The answer a requester gets for a study the holder does not have, and
/// for one it may not learn of (consent or policy refuse): the same.
fn not_available() -> Reason {
    reason(
        "not-available",
        "the holder has no study with that UID that it can send to you for this purpose",
    )
}

/// The consent check of a transfer record: its study, peer, purpose, role and level.
fn consent_query(rec: &TransferRecord) -> CheckQuery {
    CheckQuery {
        study_uid: rec.study_uid.clone(),
        peer_id: rec.peer.clone(),
        purpose: rec.purpose,
        role: Some(rec.role),
        level: rec.requested_level,
    }
}

fn refuse(code: &str, text: impl Into<String>, permanent: bool) -> Refuse {
    Refuse {
        v: WIRE_VERSION,
        code: code.into(),
        text: text.into(),
        permanent,
    }
}

/// The reason code a transfer ends with when the recipient's trust fails
/// (codes of [`crate::trust::Refusal`] and of the purpose check).
fn ended_trust_code(code: &str) -> &'static str {
    match code {
        "revoked" => "peer-revoked",
        "blocked" => "peer-blocked",
        "purpose-not-trusted" => "purpose-removed",
        "expired" => "certificate-expired",
        _ => "peer-untrusted",
    }
}

/// The reason a transfer ends with when consent and policy now deny it.
fn ended_consent_reason(reasons: &[Reason]) -> Reason {
    let has = |code: &str| reasons.iter().find(|r| r.code == code);
    let (code, text) = if let Some(r) = has("consent-withdrawn") {
        ("consent-withdrawn", r.text.clone())
    } else if let Some(r) = has("consent-expired") {
        ("consent-expired", r.text.clone())
    } else {
        let codes: Vec<&str> = reasons.iter().map(|r| r.code.as_str()).collect();
        (
            "consent-denied",
            format!("consent and policy no longer allow it ({})", codes.join(", ")),
        )
    };
    reason(code, text)
}

/// A reason code sent by a peer, kept only if it looks like one.
fn peer_code(code: &str) -> String {
    if !code.is_empty()
        && code.len() <= 40
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        code.to_string()
    } else {
        "ended-by-holder".into()
    }
}

fn damaged(id: &str, reason: impl Into<String>) -> TransferError {
    TransferError::Damaged {
        id: id.to_string(),
        reason: reason.into(),
    }
}

/// The transfer key: BLAKE3 `derive_key` over the X25519 shared secret, both
/// public keys and the transfer id.
fn transfer_key(shared: &[u8; 32], ephemeral: &[u8; 32], recipient: &[u8; 32], id: &TransferId) -> DataKey {
    let mut material = Zeroizing::new([0u8; 32 * 3 + 16]);
    material[..32].copy_from_slice(shared);
    material[32..64].copy_from_slice(ephemeral);
    material[64..96].copy_from_slice(recipient);
    material[96..].copy_from_slice(id);
    DataKey::from_bytes(blake3::derive_key(KEY_CONTEXT, &material[..]))
}

fn key32(v: &[u8]) -> Option<[u8; 32]> {
    <[u8; 32]>::try_from(v).ok()
}

/// Everything the recipient needs to take chunks of an accepted stream.
#[derive(Debug)]
pub struct Accepted {
    /// The transfer.
    pub id: TransferId,
    /// The verified manifest.
    pub manifest: Manifest,
    /// The transfer key.
    pub key: DataKey,
    /// Chunks verified so far, per object.
    pub have: Vec<u64>,
}

/// Everything the holder needs to stream a prepared transfer.
#[derive(Debug)]
pub struct SendPlan {
    /// The transfer.
    pub id: TransferId,
    /// The recipient.
    pub peer: String,
    /// Signed grant bytes.
    pub grant: Vec<u8>,
    /// Signed manifest bytes.
    pub manifest_bytes: Vec<u8>,
    /// The manifest.
    pub manifest: Manifest,
    /// The transfer key.
    pub key: DataKey,
    /// Where each object's plaintext comes from.
    pub sources: Vec<Source>,
}

/// Where the plaintext of an object comes from.
pub enum Source {
    /// A stored blob, sealed under its study key.
    Blob {
        /// The blob address.
        address: [u8; 32],
        /// The blob file.
        path: PathBuf,
        /// The study's data key.
        key: DataKey,
    },
    /// The index object, in memory.
    Memory(Zeroizing<Vec<u8>>),
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Blob { address, .. } => write!(f, "Blob({})", hex::encode(&address[..8])),
            Source::Memory(b) => write!(f, "Memory({} bytes)", b.len()),
        }
    }
}

impl Node {
    fn record_key(&self) -> DataKey {
        self.store().master().derive(RECORD_CONTEXT)
    }

    fn seal_record(&self, rec: &TransferRecord) -> Result<Vec<u8>, HomeError> {
        let id = parse_id(&rec.id)?;
        let plain = Zeroizing::new(cbor::encode("transfer record", rec).map_err(|e| damaged(&rec.id, e.to_string()))?);
        Ok(seal_box(&self.record_key(), &id, &plain).map_err(|e| damaged(&rec.id, e.to_string()))?)
    }

    fn open_record(&self, id: &TransferId, sealed: &[u8]) -> Result<TransferRecord, TransferError> {
        let idh = hex::encode(id);
        let plain = open_box(&self.record_key(), id, sealed).map_err(|e| damaged(&idh, e.to_string()))?;
        let rec: TransferRecord =
            cbor::decode("transfer record", &plain, MAX_RECORD).map_err(|e| damaged(&idh, e.to_string()))?;
        cbor::check_version("transfer record", rec.v, RECORD_VERSION).map_err(|e| damaged(&idh, e.to_string()))?;
        Ok(rec)
    }

    /// A transfer record.
    ///
    /// # Errors
    /// [`TransferError::Unknown`], store errors.
    pub fn transfer(&self, id: &TransferId) -> Result<TransferRecord, HomeError> {
        let sealed = self
            .store()
            .transfer_get(id)?
            .ok_or_else(|| TransferError::Unknown(hex::encode(id)))?;
        Ok(self.open_record(id, &sealed)?)
    }

    fn save(&self, rec: &mut TransferRecord) -> Result<(), HomeError> {
        self.save_logged(rec, Vec::new())
    }

    /// Stores `rec` and appends `events` in one write transaction.
    fn save_logged(&self, rec: &mut TransferRecord, events: Vec<Event>) -> Result<(), HomeError> {
        rec.updated = now();
        let id = parse_id(&rec.id)?;
        let sealed = self.seal_record(rec)?;
        let (_, entries) = self
            .store()
            .transfer_update_logged::<HomeError>(&id, Some(&self.author()), |_| Ok((Some(sealed), events)))?;
        self.logged(&entries);
        Ok(())
    }

    /// Changes a transfer record in one transaction; `change` may refuse.
    fn update_transfer<T>(
        &self,
        id: &TransferId,
        change: impl FnOnce(&mut TransferRecord) -> Result<T, HomeError>,
    ) -> Result<(TransferRecord, T), HomeError> {
        self.update_transfer_logged(id, |rec| Ok((change(rec)?, Vec::new())))
    }

    /// Changes a transfer record and appends the entries `change` returns,
    /// in one transaction; `change` may refuse. `change` runs inside the
    /// write transaction: it must not write to the store itself (make a
    /// study commitment before).
    fn update_transfer_logged<T>(
        &self,
        id: &TransferId,
        change: impl FnOnce(&mut TransferRecord) -> Result<(T, Vec<Event>), HomeError>,
    ) -> Result<(TransferRecord, T), HomeError> {
        let mut out = None;
        let (_, entries) = self
            .store()
            .transfer_update_logged::<HomeError>(id, Some(&self.author()), |current| {
                let sealed = current.ok_or_else(|| TransferError::Unknown(hex::encode(id)))?;
                let mut rec = self.open_record(id, sealed)?;
                let (t, events) = change(&mut rec)?;
                rec.updated = now();
                let bytes = self.seal_record(&rec)?;
                out = Some((rec, t));
                Ok((Some(bytes), events))
            })?;
        self.logged(&entries);
        out.ok_or_else(|| HomeError::from(TransferError::Unknown(hex::encode(id))))
    }

    /// Every transfer record, newest first.
    ///
    /// # Errors
    /// Store errors; a damaged record is an error naming it.
    pub fn transfer_records(&self) -> Result<Vec<TransferRecord>, HomeError> {
        let mut out = Vec::new();
        for (id, sealed) in self.store().transfers()? {
            out.push(self.open_record(&id, &sealed)?);
        }
        out.sort_by(|a, b| b.created.cmp(&a.created).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// A record for listings, with progress.
    ///
    /// # Errors
    /// Store errors.
    pub fn transfer_view(&self, rec: &TransferRecord) -> Result<TransferView, HomeError> {
        let id = parse_id(&rec.id)?;
        let live = self.live().get(&id);
        let (mut done_objects, mut done_bytes) = (0, 0);
        if matches!(rec.state, State::Complete | State::Landed | State::AwaitingReceipt) {
            done_objects = rec.objects;
            done_bytes = rec.bytes;
        } else if rec.direction == Direction::Incoming && rec.state == State::Streaming {
            if let Some(doc) = self.store().transfer_doc(&id, DOC_MANIFEST)?
                && let Ok((_, m)) = wire::open_signed::<Manifest>("manifest", MANIFEST_DOMAIN, &doc, MAX_MANIFEST)
            {
                for (obj, count) in self.store().chunks_done(&id)? {
                    if let Some(o) = m.objects.get(obj as usize) {
                        let n = o.size.div_ceil(u64::from(m.chunk_size)).max(1);
                        done_bytes += (count * u64::from(m.chunk_size)).min(o.size);
                        if count >= n {
                            done_objects += 1;
                        }
                    }
                }
            }
            if let Some(l) = live {
                done_bytes = done_bytes.max(l.done_bytes);
                done_objects = done_objects.max(l.done_objects);
            }
        } else if let Some(l) = live {
            done_bytes = l.done_bytes;
            done_objects = l.done_objects;
        }
        Ok(TransferView {
            id: rec.id.clone(),
            direction: rec.direction,
            initiated: rec.initiated,
            state: rec.state,
            peer: rec.peer.clone(),
            institution: rec.institution.clone(),
            study_uid: rec.study_uid.clone(),
            purpose: rec.purpose,
            role: rec.role,
            level: rec.level,
            created: rfc3339(rec.created),
            updated: rfc3339(rec.updated),
            expires: rec.expires.map(rfc3339),
            objects: rec.objects,
            bytes: rec.bytes,
            done_objects,
            done_bytes,
            bytes_sent: live.map_or(rec.bytes_sent, |l| l.bytes_sent.max(rec.bytes_sent)),
            sessions: rec.sessions,
            reasons: rec.reasons.clone(),
            error: rec.error.clone(),
            receipt: !rec.receipt.is_empty(),
            left_out: rec.left_out.clone(),
        })
    }

    /// Every transfer, newest first, for listings.
    ///
    /// # Errors
    /// Store errors.
    pub fn transfers(&self) -> Result<Vec<TransferView>, HomeError> {
        self.transfer_records()?.iter().map(|r| self.transfer_view(r)).collect()
    }

    /// One transfer, for `transfers watch`.
    ///
    /// # Errors
    /// [`TransferError::Unknown`], [`TransferError::BadId`], store errors.
    pub fn transfer_show(&self, id: &str) -> Result<TransferView, HomeError> {
        let rec = self.transfer(&parse_id(id)?)?;
        self.transfer_view(&rec)
    }

    // ----- holder -----

    /// The holder's decision on a request from `peer` (trust, then consent
    /// and policy); records the transfer and returns the answer to send.
    ///
    /// # Errors
    /// Store errors (the requester then gets no answer).
    pub fn answer_request(
        &self,
        peer: &str,
        request_id: &str,
        study_uid: &str,
        purpose: Purpose,
        role: Role,
        level: Option<DeidLevel>,
    ) -> Result<AnswerBody, HomeError> {
        let id = new_id()?;
        let mut rec = TransferRecord::new(
            id,
            Direction::Outgoing,
            Initiated::Request,
            peer,
            study_uid,
            purpose,
            role,
        );
        rec.requested_level = level;
        rec.request_id = Some(request_id.to_string());
        let shown = self.decide(&mut rec, false)?;
        // The record (with its grant) and its entries in one transaction.
        let mut events = vec![Event::TransferRequested {
            transfer: rec.id.clone(),
            peer: peer.to_string(),
            purpose: purpose.to_string(),
            role: role.to_string(),
            direction: "received".into(),
            study: None,
        }];
        events.extend(self.decision_event(&rec)?);
        self.save_logged(&mut rec, events)?;
        tracing::info!(transfer = %rec.id, peer = %peer, purpose = %purpose, state = rec.state.as_str(), "transfer request decided");
        Ok(match rec.state {
            State::Granted => AnswerBody::Granted {
                transfer_id: rec.id.clone(),
                grant: rec.grant.clone(),
            },
            State::Pending => AnswerBody::Pending {
                transfer_id: rec.id.clone(),
                reasons: rec.reasons.clone(),
            },
            _ => AnswerBody::Denied {
                transfer_id: Some(rec.id.clone()),
                reasons: shown,
            },
        })
    }

    /// The entry of the holder's decision on `rec`, written with the record
    /// that carries it. A grant names the study by its commitment (made now
    /// if it is the first): call it before a write transaction.
    fn decision_event(&self, rec: &TransferRecord) -> Result<Option<Event>, HomeError> {
        Ok(Some(match rec.state {
            State::Granted => Event::TransferGranted {
                transfer: rec.id.clone(),
                peer: rec.peer.clone(),
                purpose: rec.purpose.to_string(),
                level: rec.level.map_or("", DeidLevel::as_str).to_string(),
                study: hex::encode(self.study_commitment(&rec.study_uid)?),
                expires: rec.expires.unwrap_or(0),
            },
            State::Pending => Event::TransferPending {
                transfer: rec.id.clone(),
                peer: rec.peer.clone(),
                purpose: rec.purpose.to_string(),
            },
            State::Denied => Event::TransferDenied {
                transfer: rec.id.clone(),
                peer: rec.peer.clone(),
                purpose: rec.purpose.to_string(),
                codes: rec.reasons.iter().map(|r| r.code.clone()).collect(),
            },
            _ => return Ok(None),
        }))
    }

    /// Decides `rec` (trust, study, consent and policy) and sets its state,
    /// reasons and grant. `approved`: a person approved it (a needs-approval
    /// outcome is then a grant). Returns the reasons the requester may see.
    fn decide(&self, rec: &mut TransferRecord, approved: bool) -> Result<Vec<Reason>, HomeError> {
        // 1. Trust (checked again on every request: zero trust).
        let (facts, trust) = self.consents().peer_facts(&rec.peer, rec.purpose)?;
        if let Some(f) = &facts {
            rec.institution.clone_from(&f.institution);
        }
        if !trust.is_empty() || facts.is_none() {
            rec.state = State::Denied;
            rec.reasons.clone_from(&trust);
            return Ok(trust);
        }
        // 2. The study: held here, imported here, not locked.
        let study = self.store().study_ref(&rec.study_uid);
        let available = match self.store().study_row(&study)? {
            None => Err("no such study here"),
            Some(row) if !matches!(row.origin, Origin::Local) => {
                Err("the study was received from another site; it is not passed on")
            }
            Some(row) if row.wrapped_key.is_empty() => Err("the study is locked"),
            Some(_) => Ok(()),
        };
        if let Err(why) = available {
            rec.state = State::Denied;
            rec.reasons = vec![reason("not-available", why)];
            return Ok(vec![not_available()]);
        }
        // 3. Consent and policy.
        let check = self.consents().check(&consent_query(rec))?;
        match (check.decision, check.grant) {
            (Verdict::Allow, Some(g)) | (Verdict::NeedsApproval, Some(g))
                if check.decision == Verdict::Allow || approved =>
            {
                // 4. Burned-in identifiers: a de-identified transfer leaves out
                // every series with an object that may show identifiers in its
                // pixels and that no masking rule covers.
                let mut series = g.series;
                let mut notes = Vec::new();
                if g.level != DeidLevel::Identifiable {
                    let profile = self.deid().profile(g.level, &[])?;
                    for (uid, why) in self.burned_in_screen(&rec.study_uid, &series, &profile)? {
                        series.retain(|s| *s != uid);
                        notes.push(reason("burned-in", format!("series {uid} left out: {why}")));
                    }
                    if series.is_empty() {
                        rec.state = State::Denied;
                        rec.reasons = notes;
                        return Ok(vec![not_available()]);
                    }
                }
                self.issue_grant(rec, g.level, series, g.consents, g.expires_at.timestamp())?;
                rec.reasons = notes;
                Ok(Vec::new())
            }
            (Verdict::NeedsApproval, _) => {
                rec.state = State::Pending;
                rec.reasons = check.approval;
                Ok(rec.reasons.clone())
            }
            _ => {
                rec.state = State::Denied;
                rec.reasons = check.trust.into_iter().chain(check.reasons).collect();
                if rec.reasons.is_empty() {
                    rec.reasons.push(reason("denied", "consent and policy do not allow it"));
                }
                Ok(vec![not_available()])
            }
        }
    }

    fn issue_grant(
        &self,
        rec: &mut TransferRecord,
        level: DeidLevel,
        series: Vec<String>,
        consents: Vec<String>,
        expires: i64,
    ) -> Result<(), HomeError> {
        let state = self.trust().state()?;
        let hello = crate::net::peer_hello(self, &state, &rec.peer)?.ok_or_else(|| TransferError::State {
            id: rec.id.clone(),
            reason: "the recipient's node record is unknown".into(),
        })?;
        let record = crate::identity::VerifiedNodeRecord::from_bytes(&hello.record)?;
        let grant = Grant {
            v: WIRE_VERSION,
            transfer_id: rec.id.clone(),
            request_id: rec.request_id.clone(),
            holder: self.identity().peer_id(),
            recipient: rec.peer.clone(),
            recipient_x25519: record.record().x25519.clone(),
            study_uid: rec.study_uid.clone(),
            purpose: rec.purpose,
            role: rec.role,
            level,
            series,
            consents,
            issued: now(),
            expires,
            study_ref: self.study_commitment(&rec.study_uid)?.to_vec(),
        };
        let payload = wire::encode("grant", &grant).map_err(|e| damaged(&rec.id, e.to_string()))?;
        rec.grant = self.identity().sign(GRANT_DOMAIN, payload).to_bytes()?;
        rec.level = Some(level);
        rec.expires = Some(expires);
        rec.state = State::Granted;
        rec.reasons.clear();
        Ok(())
    }

    /// Shares a study with `peer` on this node's initiative, under the same
    /// checks as a request.
    ///
    /// # Errors
    /// Store errors.
    pub fn share(
        &self,
        peer: &str,
        study_uid: &str,
        purpose: Purpose,
        role: Role,
        level: Option<DeidLevel>,
    ) -> Result<TransferView, HomeError> {
        crate::dicom::check_uid(study_uid).map_err(|e| TransferError::State {
            id: String::new(),
            reason: format!("study UID {study_uid:?}: {e}"),
        })?;
        let id = new_id()?;
        let mut rec = TransferRecord::new(
            id,
            Direction::Outgoing,
            Initiated::Share,
            peer,
            study_uid,
            purpose,
            role,
        );
        rec.requested_level = level;
        self.decide(&mut rec, false)?;
        let events = self.decision_event(&rec)?.into_iter().collect();
        self.save_logged(&mut rec, events)?;
        self.transfer_view(&rec)
    }

    /// Transfers waiting for a person at this node.
    ///
    /// # Errors
    /// Store errors.
    pub fn approvals(&self) -> Result<Vec<TransferView>, HomeError> {
        Ok(self
            .transfers()?
            .into_iter()
            .filter(|t| t.direction == Direction::Outgoing && t.state == State::Pending)
            .collect())
    }

    /// Approves a pending transfer: trust, consent and policy are checked
    /// again, and a grant is issued unless they now refuse (then the
    /// message for the requester is returned too).
    ///
    /// # Errors
    /// [`TransferError::State`] when it is not pending; store errors.
    pub fn approve(&self, id: &str) -> Result<(TransferView, Option<wire::Msg>), HomeError> {
        let tid = parse_id(id)?;
        // The grant names the study by its commitment: made now, outside the
        // record's write transaction (redb has one writer at a time).
        // Decided outside the record's write transaction (the decision reads
        // the study and makes its commitment; redb has one writer at a time),
        // then stored only if the request is still pending.
        let mut draft = self.transfer(&tid)?;
        let not_pending = |rec: &TransferRecord| -> HomeError {
            TransferError::State {
                id: rec.id.clone(),
                reason: format!("is {}, not a pending request to this node", rec.state.as_str()),
            }
            .into()
        };
        if draft.direction != Direction::Outgoing || draft.state != State::Pending {
            return Err(not_pending(&draft));
        }
        self.decide(&mut draft, true)?;
        // The decision and its entries in one transaction.
        let mut events = Vec::new();
        if draft.state == State::Granted {
            events.push(Event::TransferApproved {
                transfer: draft.id.clone(),
                peer: draft.peer.clone(),
            });
        }
        events.extend(self.decision_event(&draft)?);
        let (rec, ()) = self.update_transfer_logged(&tid, |rec| {
            if rec.direction != Direction::Outgoing || rec.state != State::Pending {
                return Err(not_pending(rec));
            }
            rec.state = draft.state;
            rec.reasons.clone_from(&draft.reasons);
            rec.grant.clone_from(&draft.grant);
            rec.level = draft.level;
            rec.expires = draft.expires;
            rec.institution.clone_from(&draft.institution);
            Ok(((), events))
        })?;
        tracing::info!(transfer = %rec.id, state = rec.state.as_str(), "approval decided");
        // Checked again and now refused (a consent withdrawn meanwhile): the requester is told.
        let msg = (rec.state == State::Denied && rec.initiated == Initiated::Request).then(|| wire::Msg {
            v: WIRE_VERSION,
            body: wire::MsgBody::Decided {
                transfer_id: rec.id.clone(),
                reasons: vec![not_available()],
            },
        });
        Ok((self.transfer_view(&rec)?, msg))
    }

    /// Denies a pending transfer. Returns the record and, for a request,
    /// the message that tells the requester.
    ///
    /// # Errors
    /// [`TransferError::State`] when it is not pending; store errors.
    pub fn deny_approval(&self, id: &str, why: &str) -> Result<(TransferView, Option<wire::Msg>), HomeError> {
        let tid = parse_id(id)?;
        let why = why.trim();
        if why.is_empty() {
            return Err(TransferError::State {
                id: id.to_string(),
                reason: "a denial needs a reason (--reason)".into(),
            }
            .into());
        }
        let (rec, ()) = self.update_transfer_logged(&tid, |rec| {
            if rec.direction != Direction::Outgoing || rec.state != State::Pending {
                return Err(TransferError::State {
                    id: rec.id.clone(),
                    reason: format!("is {}, not a pending request to this node", rec.state.as_str()),
                }
                .into());
            }
            rec.state = State::Denied;
            rec.reasons = vec![reason("denied-by-approver", why)];
            // A denial names no study: its entry needs no commitment.
            let event = self.decision_event(rec)?;
            Ok(((), event.into_iter().collect()))
        })?;
        let msg = (rec.initiated == Initiated::Request).then(|| wire::Msg {
            v: WIRE_VERSION,
            body: wire::MsgBody::Decided {
                transfer_id: rec.id.clone(),
                reasons: rec.reasons.clone(),
            },
        });
        Ok((self.transfer_view(&rec)?, msg))
    }

    /// Prepares a granted transfer: reads and checks every object, hashes
    /// it per chunk, derives the transfer key and signs the manifest.
    /// Idempotent: a transfer already prepared is left as it is.
    ///
    /// # Errors
    /// [`TransferError::Integrity`] for a stored object that fails its
    /// check; store and file errors.
    pub fn prepare(&self, id: &TransferId) -> Result<(), HomeError> {
        let rec = self.transfer(id)?;
        if rec.state != State::Granted || rec.direction != Direction::Outgoing {
            return Ok(());
        }
        // The decision, taken again before anything is read or sealed.
        let objects = match self.redecide(&rec)? {
            Ok(o) => o,
            Err(why) => {
                self.end_transfer(id, &why)?;
                return Ok(());
            }
        };
        let idh = rec.id.clone();
        let (_, grant) = wire::open_signed::<Grant>("grant", GRANT_DOMAIN, &rec.grant, MAX_MESSAGE)
            .map_err(|e| damaged(&idh, e.to_string()))?;
        let study = self.store().study_ref(&rec.study_uid);
        let row = self
            .store()
            .study_row(&study)?
            .ok_or_else(|| StoreError::UnknownStudy(rec.study_uid.clone()))?;
        let study_key = self.store().unwrap_study_key(&study, &row)?;
        let mut meta = self.store().open_study_meta(&study, &study_key, &row)?;
        meta.series.retain(|uid, _| grant.series.contains(uid));
        let mut items: Vec<([u8; 32], InstanceRow, InstanceMeta)> = Vec::new();
        for (address, irow) in self.store().instances(&study)? {
            let m = self.store().open_instance_meta(&study, &address, &study_key, &irow)?;
            if grant.series.contains(&m.series_uid) {
                items.push((address, irow, m));
            }
        }
        // Scope per object: each object of the granted series on its own
        // Modality (the series' for objects stored before it was recorded)
        // and SOP Class; those outside it are left out and named by reference.
        let mut left_out = Vec::new();
        items.retain(|(address, _, m)| {
            let modality = m
                .modality
                .clone()
                .or_else(|| meta.series.get(&m.series_uid).map(|s| s.modality.clone()))
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty());
            let facts = ObjectFacts {
                modality: modality.as_deref().and_then(|s| s.parse().ok()),
                sop_class: m.sop_class_uid.clone(),
            };
            match objects.admit(&facts) {
                Ok(()) => true,
                Err(e) => {
                    left_out.push(LeftOut {
                        object: hex::encode(&address[..8]),
                        modality: modality.unwrap_or_default(),
                        code: e.code().to_string(),
                        text: e.to_string(),
                    });
                    false
                }
            }
        });
        if !left_out.is_empty() {
            tracing::info!(transfer = %idh, objects = left_out.len(), "objects outside the consent's scope left out");
        }
        if items.is_empty() {
            self.end_transfer(
                id,
                &reason(
                    "nothing-in-scope",
                    "no object of the granted series is within the consent's scope",
                ),
            )?;
            return Ok(());
        }
        items.sort_by(|a, b| {
            (&a.2.series_uid, a.2.instance_number, &a.2.sop_instance_uid).cmp(&(
                &b.2.series_uid,
                b.2.instance_number,
                &b.2.sop_instance_uid,
            ))
        });
        for s in meta.series.values_mut() {
            s.instances = 0;
        }
        for (_, _, m) in &items {
            if let Some(s) = meta.series.get_mut(&m.series_uid) {
                s.instances += 1;
            }
        }
        // At the identifiable level the objects go as held: per-chunk hashes
        // recorded at import (objects imported before they were recorded are
        // read and hashed now, against their import hash). Below it, every
        // object is de-identified now and the index describes the outputs.
        let (hashed, index, prep, attestation) = if grant.level == DeidLevel::Identifiable {
            let hashed = hash_objects(self, &study_key, &items, &idh)?;
            let hashes: Vec<[u8; 32]> = hashed.iter().map(|h| h.2).collect();
            let attestation = self.identity_attestation(id, &hashes)?;
            let index = StudyIndex {
                v: WIRE_VERSION,
                study: meta,
                instances: items.iter().map(|(_, _, m)| m.clone()).collect(),
            };
            (hashed, index, None, attestation)
        } else {
            let p = self.prepare_deid(id, &grant, &study_key, &items)?;
            let index = StudyIndex {
                v: WIRE_VERSION,
                study: p.study,
                instances: p.instances,
            };
            (p.hashed, index, Some(p.key), p.attestation)
        };
        let index_bytes =
            Zeroizing::new(wire::encode("study index", &index).map_err(|e| damaged(&idh, e.to_string()))?);
        let mut objects = Vec::with_capacity(items.len() + 1);
        for (chunks, size, whole) in hashed {
            let salt = random32(&idh)?;
            objects.push(ManifestObject {
                kind: ObjectKind::Dicom,
                size,
                blake3: whole.to_vec(),
                salt: salt.to_vec(),
                chunks,
            });
        }
        let index_chunks = wire::chunk_hashes(&index_bytes);
        objects.push(ManifestObject {
            kind: ObjectKind::Index,
            size: index_bytes.len() as u64,
            blake3: blake3::hash(&index_bytes).as_bytes().to_vec(),
            salt: random32(&idh)?.to_vec(),
            chunks: index_chunks,
        });
        // The transfer key, from a fresh ephemeral key and the recipient's.
        let recipient = key32(&grant.recipient_x25519).ok_or_else(|| damaged(&idh, "recipient key is not 32 bytes"))?;
        let mut eph_bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut eph_bytes[..]).map_err(|e| damaged(&idh, format!("random: {e}")))?;
        let eph = x25519_dalek::StaticSecret::from(*eph_bytes);
        let eph_pub = x25519_dalek::PublicKey::from(&eph).to_bytes();
        let shared = eph.diffie_hellman(&x25519_dalek::PublicKey::from(recipient));
        if !shared.was_contributory() {
            return Err(damaged(&idh, "the recipient's X25519 key is a low-order point").into());
        }
        let key = transfer_key(shared.as_bytes(), &eph_pub, &recipient, id);
        drop(eph);
        let manifest = Manifest {
            v: WIRE_VERSION,
            transfer_id: idh.clone(),
            grant_hash: blake3::hash(&rec.grant).as_bytes().to_vec(),
            holder: self.identity().peer_id(),
            recipient: rec.peer.clone(),
            recipient_x25519: recipient.to_vec(),
            ephemeral_x25519: eph_pub.to_vec(),
            chunk_size: CHUNK_SIZE,
            objects,
            created: now(),
            attestation: attestation.clone(),
        };
        wire::check_manifest(&manifest).map_err(|e| damaged(&idh, e.to_string()))?;
        let total: u64 = manifest.objects.iter().map(|o| o.size).sum();
        let count = manifest.objects.len() as u64;
        let payload = wire::encode("manifest", &manifest).map_err(|e| damaged(&idh, e.to_string()))?;
        let env = self.identity().sign(MANIFEST_DOMAIN, payload).to_bytes()?;
        let wrapped = self.store().master().wrap(&key, id)?;
        let mut addresses = Vec::with_capacity(items.len() * 32);
        for (a, _, _) in &items {
            addresses.extend_from_slice(a);
        }
        let sealed_index = seal_box(&key, id, &index_bytes).map_err(|e| damaged(&idh, e.to_string()))?;
        self.store().transfer_doc_put(id, DOC_KEY, wrapped.as_bytes())?;
        self.store().transfer_doc_put(id, DOC_OBJECTS, &addresses)?;
        self.store().transfer_doc_put(id, DOC_INDEX, &sealed_index)?;
        if let Some(k) = &prep {
            let wrapped = self.store().master().wrap(k, id)?;
            self.store().transfer_doc_put(id, DOC_PREP_KEY, wrapped.as_bytes())?;
        }
        self.store().transfer_doc_put(id, DOC_ATTESTATION, &attestation)?;
        self.store().transfer_doc_put(id, DOC_MANIFEST, &env)?;
        self.update_transfer(id, |r| {
            if r.state == State::Granted {
                r.state = State::Streaming;
                r.objects = count;
                r.bytes = total;
                r.left_out = left_out;
            }
            Ok(())
        })?;
        tracing::info!(transfer = %idh, objects = count, bytes = total, "transfer prepared");
        Ok(())
    }

    /// The plan for streaming a prepared transfer.
    ///
    /// # Errors
    /// A damaged record or document, store errors.
    pub fn send_plan(&self, id: &TransferId) -> Result<SendPlan, HomeError> {
        let rec = self.transfer(id)?;
        let idh = rec.id.clone();
        let doc = |kind| -> Result<Vec<u8>, HomeError> {
            Ok(self
                .store()
                .transfer_doc(id, kind)?
                .ok_or_else(|| damaged(&idh, format!("document {kind} is missing")))?)
        };
        let manifest_bytes = doc(DOC_MANIFEST)?;
        let (_, manifest) = wire::open_signed::<Manifest>("manifest", MANIFEST_DOMAIN, &manifest_bytes, MAX_MANIFEST)
            .map_err(|e| damaged(&idh, e.to_string()))?;
        let wrapped = medmesh_seal::WrappedKey::from_bytes(&doc(DOC_KEY)?).map_err(|e| damaged(&idh, e.to_string()))?;
        let key = self.store().master().unwrap(&wrapped, id)?;
        let addresses = doc(DOC_OBJECTS)?;
        let index = open_box(&key, id, &doc(DOC_INDEX)?).map_err(|e| damaged(&idh, e.to_string()))?;
        let study = self.store().study_ref(&rec.study_uid);
        let row = self
            .store()
            .study_row(&study)?
            .ok_or_else(|| StoreError::UnknownStudy(rec.study_uid.clone()))?;
        let study_key = self.store().unwrap_study_key(&study, &row)?;
        // De-identified objects were sealed into blobs/outgoing/<id>/ under
        // the preparation key; identifiable ones are sent from their blobs.
        let prep = match self.store().transfer_doc(id, DOC_PREP_KEY)? {
            Some(w) => {
                let w = medmesh_seal::WrappedKey::from_bytes(&w).map_err(|e| damaged(&idh, e.to_string()))?;
                Some(self.store().master().unwrap(&w, id)?)
            }
            None => None,
        };
        let mut sources = Vec::with_capacity(manifest.objects.len());
        for (i, a) in addresses.chunks_exact(32).enumerate() {
            let address = key32(a).ok_or_else(|| damaged(&idh, "bad object address"))?;
            sources.push(match &prep {
                Some(k) => Source::Blob {
                    address,
                    path: self.store().outgoing_dir(id).join(i.to_string()),
                    key: k.clone(),
                },
                None => Source::Blob {
                    address,
                    path: self.store().blob_path(&address),
                    key: study_key.clone(),
                },
            });
        }
        sources.push(Source::Memory(index));
        if sources.len() != manifest.objects.len() {
            return Err(damaged(&idh, "the object list does not match the manifest").into());
        }
        Ok(SendPlan {
            id: *id,
            peer: rec.peer,
            grant: rec.grant,
            manifest_bytes,
            manifest,
            key,
            sources,
        })
    }

    /// Records the outcome of a holder's session.
    ///
    /// # Errors
    /// Store errors.
    pub fn note_session(
        &self,
        id: &TransferId,
        sent: u64,
        all_acknowledged: bool,
        error: Option<String>,
    ) -> Result<(), HomeError> {
        self.update_transfer(id, |r| {
            r.bytes_sent += sent;
            r.sessions += 1;
            if let Some(e) = &error
                && !r.state.is_final()
            {
                r.error = Some(e.clone());
            }
            if all_acknowledged && r.state == State::Streaming {
                r.state = State::AwaitingReceipt;
                r.error = None;
            }
            Ok(())
        })?;
        Ok(())
    }

    /// Marks a transfer failed for good.
    ///
    /// # Errors
    /// Store errors.
    pub fn fail_transfer(&self, id: &TransferId, why: &str) -> Result<(), HomeError> {
        self.update_transfer(id, |r| {
            if !r.state.is_final() {
                r.state = State::Failed;
                r.error = Some(why.to_string());
            }
            Ok(())
        })?;
        self.remove_outgoing(id);
        Ok(())
    }

    /// The holder's decision on an outgoing transfer, taken again now as at
    /// the grant: the grant's expiry, the recipient's trust and certified
    /// purposes, the study, consent and site policy (level and series).
    /// `None`: it may go on; otherwise the reason it must end.
    ///
    /// # Errors
    /// Store errors, and a damaged record.
    pub fn recheck(&self, rec: &TransferRecord) -> Result<Option<Reason>, HomeError> {
        Ok(self.redecide(rec)?.err())
    }

    /// [`Node::recheck`], giving the decision's object-level scope when the
    /// transfer may go on.
    fn redecide(&self, rec: &TransferRecord) -> Result<Result<ObjectScope, Reason>, HomeError> {
        if rec.expires.is_some_and(|e| e <= now()) {
            return Ok(Err(reason("grant-expired", "the grant has expired")));
        }
        let (facts, trust) = self.consents().peer_facts(&rec.peer, rec.purpose)?;
        if let Some(r) = trust.first() {
            return Ok(Err(reason(ended_trust_code(&r.code), r.text.clone())));
        }
        if facts.is_none() {
            return Ok(Err(reason("peer-untrusted", "the recipient is no longer trusted")));
        }
        let study = self.store().study_ref(&rec.study_uid);
        match self.store().study_row(&study)? {
            Some(row) if matches!(row.origin, Origin::Local) && !row.wrapped_key.is_empty() => {}
            _ => {
                return Ok(Err(reason(
                    "study-unavailable",
                    "the study is no longer held here, or is locked",
                )));
            }
        }
        let check = self.consents().check(&consent_query(rec))?;
        if let Some(r) = check.trust.first() {
            return Ok(Err(reason(ended_trust_code(&r.code), r.text.clone())));
        }
        let Some(now_grant) = check.grant.filter(|_| check.decision != Verdict::Deny) else {
            return Ok(Err(ended_consent_reason(&check.reasons)));
        };
        if rec.level.is_some_and(|l| now_grant.level > l) {
            return Ok(Err(reason(
                "level-raised",
                format!(
                    "consent and policy now require the {} level, stronger than the one granted",
                    now_grant.level.as_str()
                ),
            )));
        }
        if !rec.grant.is_empty() {
            let (_, granted) = wire::open_signed::<Grant>("grant", GRANT_DOMAIN, &rec.grant, MAX_MESSAGE)
                .map_err(|e| damaged(&rec.id, e.to_string()))?;
            let dropped = granted.series.iter().filter(|s| !now_grant.series.contains(s)).count();
            if dropped > 0 {
                return Ok(Err(reason(
                    "scope-narrowed",
                    format!("consent now covers {dropped} fewer of the granted series"),
                )));
            }
        }
        Ok(Ok(now_grant.objects))
    }

    /// Before a holder's session (or its preparation): the decision taken
    /// again. True: the session may run; false: the transfer has ended (it
    /// had, or it ends now, with its reason).
    ///
    /// # Errors
    /// Store errors (the session does not run).
    pub fn session_check(&self, id: &TransferId) -> Result<bool, HomeError> {
        let rec = self.transfer(id)?;
        if rec.direction != Direction::Outgoing || !matches!(rec.state, State::Granted | State::Streaming) {
            return Ok(false);
        }
        match self.recheck(&rec)? {
            None => Ok(true),
            Some(why) => {
                self.end_transfer(id, &why)?;
                Ok(false)
            }
        }
    }

    /// Ends every transfer that has not completed and that the decision,
    /// taken again now, no longer allows: the one step every change of
    /// consent or trust runs (consent withdrawn or imported, revocation
    /// applied, peer blocked or trusted again with other purposes, own
    /// certificate changed) and the engine's periodic check (grant expiry).
    /// Outgoing transfers are decided again ([`Node::recheck`]); incoming
    /// ones end at their grant's expiry. Returns the transfers ended, with
    /// their reason codes.
    ///
    /// # Errors
    /// Store errors reading the records; a transfer that cannot be decided
    /// again is logged and left for the next check.
    pub fn end_affected_transfers(&self) -> Result<Vec<(String, String)>, HomeError> {
        let mut ended = Vec::new();
        let mut own_revoked = None;
        for rec in self.transfer_records()? {
            let why = match (rec.direction, rec.state) {
                (Direction::Outgoing, State::Pending | State::Granted | State::Streaming) => self.recheck(&rec),
                (Direction::Incoming, State::Granted | State::Streaming) => {
                    if own_revoked.is_none() {
                        own_revoked = Some(self.own_revocation()?);
                    }
                    self.recheck_incoming(&rec, own_revoked.clone().flatten())
                }
                _ => Ok(None),
            };
            let why = match why {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(transfer = %rec.id, cause = %e, "cannot decide the transfer again");
                    continue;
                }
            };
            if let Some(why) = why {
                let id = parse_id(&rec.id)?;
                if self.end_transfer(&id, &why)? {
                    ended.push((rec.id, why.code));
                }
            }
        }
        Ok(ended)
    }

    /// Recipient: why an incoming transfer must end, if it must: its grant
    /// expired, the holder is no longer trusted here, or this node's own
    /// membership was revoked (`own_revoked`).
    fn recheck_incoming(&self, rec: &TransferRecord, own_revoked: Option<Reason>) -> Result<Option<Reason>, HomeError> {
        if rec.expires.is_some_and(|e| e <= now()) {
            return Ok(Some(reason("grant-expired", "the grant has expired")));
        }
        if let Some(r) = own_revoked {
            return Ok(Some(r));
        }
        let (_, trust) = self.consents().peer_facts(&rec.peer, rec.purpose)?;
        Ok(trust
            .into_iter()
            .find(|r| matches!(r.code.as_str(), "revoked" | "blocked"))
            .map(|r| reason(ended_trust_code(&r.code), r.text)))
    }

    /// This node's own membership revoked (every certificate it holds is),
    /// as the reason its incoming transfers end.
    fn own_revocation(&self) -> Result<Option<Reason>, HomeError> {
        let certs = self.trust().own_certificates()?;
        if certs.is_empty() {
            return Ok(None);
        }
        let state = self.trust().state()?;
        Ok(
            match crate::trust::decide(&state, &self.identity().peer_id(), &certs, now()) {
                crate::trust::TrustDecision::Refuse(crate::trust::Refusal::Revoked { .. }) => Some(reason(
                    "peer-revoked",
                    "this node's membership was revoked; transfers granted to it end",
                )),
                _ => None,
            },
        )
    }

    /// [`Node::end_affected_transfers`] after a change of consent or trust
    /// that is already stored: a failure is logged, not returned (the change
    /// stands; the engine's periodic check runs the step again).
    pub fn end_affected_transfers_after(&self, change: &str) {
        match self.end_affected_transfers() {
            Ok(ended) if !ended.is_empty() => {
                tracing::info!(
                    change,
                    count = ended.len(),
                    "transfers ended by a change of consent or trust"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(change, cause = %e, "cannot check transfers against the change"),
        }
    }

    /// Ends one unfinished transfer for good with `why`: failed with its
    /// reason, written to the ledger (`transfer-ended`), a running session
    /// stopped before its next frame. At the holder, the de-identified
    /// copies are deleted and the recipient is told (a permanent refusal,
    /// when it is next connected); at the recipient, what it received of it
    /// (parts, chunk records, manifest) is deleted. False when it had
    /// already finished.
    ///
    /// # Errors
    /// Store errors.
    pub fn end_transfer(&self, id: &TransferId, why: &Reason) -> Result<bool, HomeError> {
        let (rec, ended) = self.update_transfer(id, |r| {
            if !matches!(r.state, State::Pending | State::Granted | State::Streaming) {
                return Ok(false);
            }
            r.state = State::Failed;
            r.error = Some(format!("ended: {} [{}]", why.text, why.code));
            r.reasons = vec![why.clone()];
            r.tell = r.direction == Direction::Outgoing;
            Ok(true)
        })?;
        if !ended {
            return Ok(false);
        }
        self.live().end(id);
        self.live().remove(id);
        self.log(Event::TransferEnded {
            transfer: rec.id.clone(),
            peer: rec.peer.clone(),
            code: why.code.clone(),
        })?;
        match rec.direction {
            Direction::Outgoing => self.remove_outgoing(id),
            Direction::Incoming => self.discard_incoming(id)?,
        }
        tracing::warn!(transfer = %rec.id, peer = %rec.peer, code = %why.code, "transfer ended");
        Ok(true)
    }

    /// Recipient: deletes what was received of a transfer that will not
    /// land (parts, chunk records, manifest and key documents).
    fn discard_incoming(&self, id: &TransferId) -> Result<(), HomeError> {
        self.store().transfer_docs_remove(id)?;
        self.store().clear_chunks(id)?;
        let incoming = self.store().incoming_dir(id);
        if incoming.exists()
            && let Err(e) = std::fs::remove_dir_all(&incoming)
        {
            tracing::warn!(transfer = %hex::encode(id), cause = %e, "cannot remove the objects received so far");
        }
        Ok(())
    }

    /// Holder: the message that tells the recipient that `rec` was ended
    /// (a permanent refusal: it deletes what it received of it), if it is
    /// still to be told.
    #[must_use]
    pub fn ended_message(&self, rec: &TransferRecord) -> Option<wire::Msg> {
        if !rec.tell || rec.direction != Direction::Outgoing || rec.state != State::Failed {
            return None;
        }
        // A request never granted learns no more than a denial would tell it.
        let why = if rec.grant.is_empty() {
            not_available()
        } else {
            let code = rec.reasons.first().map_or("ended-by-holder", |r| r.code.as_str());
            reason(
                code,
                format!("the holder ended this transfer ({code}); delete what you received of it"),
            )
        };
        Some(wire::Msg {
            v: WIRE_VERSION,
            body: wire::MsgBody::Decided {
                transfer_id: rec.id.clone(),
                reasons: vec![why],
            },
        })
    }

    /// Holder: the recipient was told that the transfer ended.
    ///
    /// # Errors
    /// Store errors.
    pub fn ended_told(&self, id: &TransferId) -> Result<(), HomeError> {
        self.update_transfer(id, |r| {
            r.tell = false;
            Ok(())
        })?;
        Ok(())
    }

    /// Clears a transfer of a purged study: it fails if unfinished, its
    /// record no longer names the study (UID, signed grant, reasons), and the
    /// documents that would derive its keys, its chunk progress and its
    /// de-identified copies are deleted.
    ///
    /// # Errors
    /// Store errors.
    pub fn scrub_transfer(&self, id: &TransferId) -> Result<(), HomeError> {
        self.update_transfer(id, |r| {
            // The signed grant names the study and its series, and reasons
            // and errors may name UIDs: only the record of the exchange stays.
            r.error = if r.state.is_final() {
                None
            } else {
                r.state = State::Failed;
                Some("the study was purged at this site".into())
            };
            r.study_uid.clear();
            r.grant.clear();
            r.reasons.clear();
            Ok(())
        })?;
        self.live().remove(id);
        self.store().transfer_docs_remove(id)?;
        self.store().clear_chunks(id)?;
        self.remove_outgoing(id);
        let incoming = self.store().incoming_dir(id);
        if incoming.exists()
            && let Err(e) = std::fs::remove_dir_all(&incoming)
        {
            tracing::warn!(transfer = %hex::encode(id), cause = %e, "cannot remove the objects received so far");
        }
        Ok(())
    }

    /// Deletes the de-identified copies of an outgoing transfer that ended
    /// (they are sealed; their key is in the transfer's documents).
    fn remove_outgoing(&self, id: &TransferId) {
        let dir = self.store().outgoing_dir(id);
        if dir.exists()
            && let Err(e) = std::fs::remove_dir_all(&dir)
        {
            tracing::warn!(transfer = %hex::encode(id), cause = %e, "cannot remove the de-identified copies");
        }
    }

    /// The holder takes a delivery receipt from `peer`.
    ///
    /// # Errors
    /// Store errors; a bad receipt is an answer, not an error.
    pub fn accept_receipt(&self, peer: &str, bytes: &[u8]) -> Result<AnswerBody, HomeError> {
        let refused = |code: &str, text: String| AnswerBody::Refused {
            code: code.into(),
            text,
        };
        let (signer, receipt) = match wire::open_signed::<Receipt>("receipt", RECEIPT_DOMAIN, bytes, MAX_MESSAGE) {
            Ok(r) => r,
            Err(e) => return Ok(refused("bad-receipt", e.to_string())),
        };
        if peer_id_of(&signer).ok().as_deref() != Some(peer)
            || receipt.recipient != peer
            || receipt.holder != self.identity().peer_id()
        {
            return Ok(refused(
                "bad-receipt",
                "the receipt is not signed by the peer that sent it".into(),
            ));
        }
        let Ok(id) = parse_id(&receipt.transfer_id) else {
            return Ok(refused("unknown-transfer", "bad transfer id".into()));
        };
        let rec = match self.transfer(&id) {
            Ok(r) if r.direction == Direction::Outgoing && r.peer == peer => r,
            Ok(_) | Err(HomeError::Transfer(TransferError::Unknown(_))) => {
                return Ok(refused(
                    "unknown-transfer",
                    format!("no transfer {} to you", receipt.transfer_id),
                ));
            }
            Err(e) => return Err(e),
        };
        if rec.state == State::Complete {
            return Ok(AnswerBody::Ack);
        }
        let Some(manifest_bytes) = self.store().transfer_doc(&id, DOC_MANIFEST)? else {
            return Ok(refused("unknown-transfer", "the transfer was never prepared".into()));
        };
        let (_, manifest) = wire::open_signed::<Manifest>("manifest", MANIFEST_DOMAIN, &manifest_bytes, MAX_MANIFEST)
            .map_err(|e| damaged(&rec.id, e.to_string()))?;
        if receipt.manifest_hash != blake3::hash(&manifest_bytes).as_bytes()
            || receipt.objects_root != wire::objects_root(&manifest.objects)
        {
            return Ok(refused(
                "receipt-mismatch",
                "the receipt names another manifest or other objects".into(),
            ));
        }
        let receipt_bytes = bytes.to_vec();
        let event = Event::TransferSent {
            transfer: rec.id.clone(),
            peer: peer.to_string(),
            study: hex::encode(self.study_commitment(&rec.study_uid)?),
            objects: manifest.objects.len() as u64,
            bytes: manifest.objects.iter().map(|o| o.size).sum(),
            level: rec.level.map_or("", DeidLevel::as_str).to_string(),
        };
        // The completion and its entry in one transaction (once: a receipt
        // sent twice completes the transfer once).
        self.update_transfer_logged(&id, |r| {
            if r.state == State::Complete {
                return Ok(((), Vec::new()));
            }
            r.receipt = receipt_bytes;
            r.state = State::Complete;
            r.error = None;
            Ok(((), vec![event]))
        })?;
        self.live().remove(&id);
        self.remove_outgoing(&id);
        tracing::info!(transfer = %rec.id, peer = %peer, "delivery receipt received: transfer complete");
        Ok(AnswerBody::Ack)
    }

    // ----- recipient -----

    /// Records the answer to a request this node sent.
    ///
    /// # Errors
    /// Store errors; a grant that does not verify is recorded as failed.
    #[allow(clippy::too_many_arguments)] // the request, as sent
    pub fn note_answer(
        &self,
        peer: &str,
        request_id: &str,
        study_uid: &str,
        purpose: Purpose,
        role: Role,
        level: Option<DeidLevel>,
        answer: &AnswerBody,
    ) -> Result<TransferView, HomeError> {
        let (id, state, reasons, grant) = match answer {
            AnswerBody::Granted { transfer_id, grant } => {
                (transfer_id.clone(), State::Granted, Vec::new(), grant.clone())
            }
            AnswerBody::Pending { transfer_id, reasons } => {
                (transfer_id.clone(), State::Pending, reasons.clone(), Vec::new())
            }
            AnswerBody::Denied { transfer_id, reasons } => (
                transfer_id
                    .clone()
                    .unwrap_or_else(|| hex::encode(new_id().unwrap_or_default())),
                State::Denied,
                reasons.clone(),
                Vec::new(),
            ),
            AnswerBody::Ack | AnswerBody::Refused { .. } | AnswerBody::RetryLater { .. } => (
                hex::encode(new_id()?),
                State::Failed,
                vec![reason("refused", format!("{answer:?}"))],
                Vec::new(),
            ),
        };
        let tid = parse_id(&id)?;
        let mut rec = TransferRecord::new(
            tid,
            Direction::Incoming,
            Initiated::Request,
            peer,
            study_uid,
            purpose,
            role,
        );
        rec.requested_level = level;
        rec.state = state;
        rec.reasons = reasons;
        rec.request_id = Some(request_id.to_string());
        rec.grant = grant;
        if let Ok((facts, _)) = self.consents().peer_facts(peer, purpose)
            && let Some(f) = facts
        {
            rec.institution = f.institution;
        }
        if rec.state == State::Granted {
            match self.check_grant(peer, &rec.grant) {
                Ok(g)
                    if g.study_uid == study_uid
                        && g.request_id.as_deref() == Some(request_id)
                        && g.transfer_id == rec.id =>
                {
                    rec.level = Some(g.level);
                    rec.expires = Some(g.expires);
                }
                Ok(_) => {
                    rec.state = State::Failed;
                    rec.error = Some("the grant does not answer this request".into());
                }
                Err(r) => {
                    rec.state = State::Failed;
                    rec.error = Some(format!("{} [{}]", r.text, r.code));
                }
            }
        }
        // A record under this id already (a replayed answer) is not overwritten.
        if self.store().transfer_get(&tid)?.is_some() {
            return Err(TransferError::State {
                id: rec.id,
                reason: "already recorded".into(),
            }
            .into());
        }
        let study = wire::open_signed::<Grant>("grant", GRANT_DOMAIN, &rec.grant, MAX_MESSAGE)
            .ok()
            .map(|(_, g)| hex::encode(g.study_ref))
            .filter(|s| !s.is_empty());
        let event = Event::TransferRequested {
            transfer: rec.id.clone(),
            peer: peer.to_string(),
            purpose: purpose.to_string(),
            role: role.to_string(),
            direction: "sent".into(),
            study,
        };
        self.save_logged(&mut rec, vec![event])?;
        self.transfer_view(&rec)
    }

    /// The recipient learns the holder's decision on a transfer: a pending
    /// request denied by a person, or a granted transfer the holder ended
    /// (its decision taken again no longer allows it). An ended transfer
    /// fails for good here too, and what arrived of it is deleted.
    ///
    /// # Errors
    /// Store errors.
    pub fn note_decided(&self, peer: &str, transfer_id: &str, reasons: Vec<Reason>) -> Result<AnswerBody, HomeError> {
        let Ok(id) = parse_id(transfer_id) else {
            return Ok(AnswerBody::Refused {
                code: "unknown-transfer".into(),
                text: "bad transfer id".into(),
            });
        };
        let first = reasons.first().map(|r| {
            let code = peer_code(&r.code);
            reason(&code, format!("the holder ended this transfer [{code}]"))
        });
        let ended = match self.update_transfer(&id, |r| {
            if r.peer != peer || r.direction != Direction::Incoming {
                return Err(TransferError::Unknown(r.id.clone()).into());
            }
            if r.state == State::Pending {
                r.state = State::Denied;
                r.reasons = reasons;
                return Ok(false);
            }
            Ok(matches!(r.state, State::Granted | State::Streaming))
        }) {
            Ok((_, ended)) => ended,
            Err(HomeError::Transfer(TransferError::Unknown(_))) => {
                return Ok(AnswerBody::Refused {
                    code: "unknown-transfer".into(),
                    text: format!("no transfer {transfer_id} from you"),
                });
            }
            Err(e) => return Err(e),
        };
        // A granted transfer the holder ended (consent withdrawn, grant
        // expired, ...): a permanent refusal; what arrived of it is deleted.
        if ended {
            let why = first.unwrap_or_else(|| reason("ended-by-holder", "the holder ended this transfer"));
            self.end_transfer(&id, &why)?;
        }
        Ok(AnswerBody::Ack)
    }

    /// Verifies a grant from `peer` for this node.
    fn check_grant(&self, peer: &str, grant_bytes: &[u8]) -> Result<Grant, Refuse> {
        let (signer, grant) = wire::open_signed::<Grant>("grant", GRANT_DOMAIN, grant_bytes, MAX_MESSAGE)
            .map_err(|e| refuse("bad-grant", e.to_string(), true))?;
        if peer_id_of(&signer).ok().as_deref() != Some(peer) || grant.holder != peer {
            return Err(refuse(
                "bad-grant",
                "the grant is not signed by the peer that sent it",
                true,
            ));
        }
        if grant.recipient != self.identity().peer_id() || grant.recipient_x25519 != self.identity().x25519_public() {
            return Err(refuse(
                "wrong-recipient",
                "the grant is for another recipient or key",
                true,
            ));
        }
        if grant.expires <= now() {
            return Err(refuse("grant-expired", "the grant has expired", true));
        }
        Ok(grant)
    }

    /// The recipient checks the opening of a stream from `peer`: grant,
    /// manifest, and what it already holds of the transfer.
    ///
    /// # Errors
    /// The [`Refuse`] to send back.
    pub fn accept_stream(&self, peer: &str, open: &Open) -> Result<Accepted, Refuse> {
        let internal = |e: HomeError| {
            // The cause stays here: a peer gets a code and a fixed sentence.
            tracing::error!(peer, cause = %e, "cannot check an incoming transfer stream");
            refuse(
                "internal",
                "the recipient could not check the stream; it will be tried again",
                false,
            )
        };
        // Trust first, checked again for this stream, for the grant's purpose.
        let (_, unchecked) = wire::open_signed::<Grant>("grant", GRANT_DOMAIN, &open.grant, MAX_MESSAGE)
            .map_err(|e| refuse("bad-grant", e.to_string(), true))?;
        let (_, trust) = self
            .consents()
            .peer_facts(peer, unchecked.purpose)
            .map_err(|e| internal(e.into()))?;
        if let Some(r) = trust.first() {
            return Err(refuse("untrusted", format!("{} [{}]", r.text, r.code), true));
        }
        let grant = self.check_grant(peer, &open.grant)?;
        let (msigner, manifest) =
            wire::open_signed::<Manifest>("manifest", MANIFEST_DOMAIN, &open.manifest, MAX_MANIFEST)
                .map_err(|e| refuse("bad-manifest", e.to_string(), true))?;
        if peer_id_of(&msigner).ok().as_deref() != Some(peer) || manifest.holder != peer {
            return Err(refuse(
                "bad-manifest",
                "the manifest is not signed by the peer that sent it",
                true,
            ));
        }
        if manifest.recipient != self.identity().peer_id()
            || manifest.recipient_x25519 != self.identity().x25519_public()
        {
            return Err(refuse(
                "wrong-recipient",
                "the manifest is sealed to another recipient or key",
                true,
            ));
        }
        if manifest.transfer_id != grant.transfer_id || manifest.grant_hash != blake3::hash(&open.grant).as_bytes() {
            return Err(refuse(
                "grant-mismatch",
                "the manifest was not made for the grant sent with it",
                true,
            ));
        }
        wire::check_manifest(&manifest).map_err(|e| refuse("bad-manifest", e.to_string(), true))?;
        deid::check_attestation(peer, &grant, &manifest)?;
        let id = parse_id(&manifest.transfer_id).map_err(|e| refuse("bad-manifest", e.to_string(), true))?;
        let study = self.store().study_ref(&grant.study_uid);
        if grant.level == DeidLevel::Identifiable
            && let Ok(Some(row)) = self.store().study_row(&study)
            && matches!(row.origin, Origin::Local)
        {
            return Err(refuse(
                "held-locally",
                "the recipient holds this study already (imported there)",
                true,
            ));
        }
        let manifest_hash = blake3::hash(&open.manifest);
        let existing = match self.transfer(&id) {
            Ok(r) => Some(r),
            Err(HomeError::Transfer(TransferError::Unknown(_))) => None,
            Err(e) => return Err(internal(e)),
        };
        match existing {
            Some(rec) if rec.direction != Direction::Incoming || rec.peer != peer => {
                return Err(refuse("unknown-transfer", "no such transfer from you", true));
            }
            Some(rec) if matches!(rec.state, State::Landed | State::Complete) => {
                return Err(refuse(
                    "replayed",
                    "this transfer is complete; a manifest sent again is refused",
                    true,
                ));
            }
            Some(rec) if matches!(rec.state, State::Denied | State::Failed) => {
                return Err(refuse(
                    "closed",
                    format!("this transfer is {}", rec.state.as_str()),
                    true,
                ));
            }
            Some(rec) if rec.state == State::Streaming => {
                let stored = self
                    .store()
                    .transfer_doc(&id, DOC_MANIFEST)
                    .map_err(|e| internal(e.into()))?;
                if stored.as_deref().map(blake3::hash) != Some(manifest_hash) {
                    return Err(refuse(
                        "manifest-mismatch",
                        "this transfer started under another manifest; a different or replayed one is refused",
                        true,
                    ));
                }
            }
            Some(rec) => {
                // Granted or pending (approved since): this grant must answer our request.
                if grant.request_id != rec.request_id || grant.study_uid != rec.study_uid {
                    return Err(refuse("grant-mismatch", "the grant does not answer our request", true));
                }
                self.start_incoming(&id, &grant, &open.grant, &open.manifest, &manifest)
                    .map_err(internal)?;
            }
            None => {
                if let Some(rid) = &grant.request_id {
                    // The holder may stream before our record of its answer is written.
                    if self.live().is_asking(rid) {
                        return Err(refuse(
                            "not-yet",
                            "the answer to this request is still being recorded; try again",
                            false,
                        ));
                    }
                    return Err(refuse("unknown-transfer", "no request of ours has this id", true));
                }
                self.admit_share(peer, &manifest)?;
                let mut rec = TransferRecord::new(
                    id,
                    Direction::Incoming,
                    Initiated::Share,
                    peer,
                    &grant.study_uid,
                    grant.purpose,
                    grant.role,
                );
                rec.institution = self
                    .consents()
                    .peer_facts(peer, grant.purpose)
                    .ok()
                    .and_then(|(f, _)| f)
                    .map(|f| f.institution)
                    .unwrap_or_default();
                rec.level = Some(grant.level);
                rec.state = State::Granted;
                rec.grant = open.grant.clone();
                rec.expires = Some(grant.expires);
                self.save(&mut rec).map_err(internal)?;
                self.start_incoming(&id, &grant, &open.grant, &open.manifest, &manifest)
                    .map_err(internal)?;
            }
        }
        let eph = key32(&manifest.ephemeral_x25519).ok_or_else(|| refuse("bad-manifest", "ephemeral key", true))?;
        let secret = x25519_dalek::StaticSecret::from(*self.identity().x25519_secret());
        let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(eph));
        if !shared.was_contributory() {
            return Err(refuse("bad-manifest", "the ephemeral key is a low-order point", true));
        }
        let key = transfer_key(shared.as_bytes(), &eph, &self.identity().x25519_public(), &id);
        let mut have = vec![0u64; manifest.objects.len()];
        for (obj, count) in self.store().chunks_done(&id).map_err(|e| internal(e.into()))? {
            if let Some(h) = have.get_mut(obj as usize) {
                *h = count;
            }
        }
        Ok(Accepted {
            id,
            manifest,
            key,
            have,
        })
    }

    fn start_incoming(
        &self,
        id: &TransferId,
        grant: &Grant,
        grant_bytes: &[u8],
        manifest_bytes: &[u8],
        manifest: &Manifest,
    ) -> Result<(), HomeError> {
        self.store().clear_chunks(id)?;
        self.store().transfer_doc_put(id, DOC_MANIFEST, manifest_bytes)?;
        let total: u64 = manifest.objects.iter().map(|o| o.size).sum();
        let count = manifest.objects.len() as u64;
        let (grant_bytes, level, expires) = (grant_bytes.to_vec(), grant.level, grant.expires);
        self.update_transfer(id, |r| {
            r.state = State::Streaming;
            r.grant = grant_bytes;
            r.level = Some(level);
            r.expires = Some(expires);
            r.objects = count;
            r.bytes = total;
            Ok(())
        })?;
        tracing::info!(transfer = %hex::encode(id), objects = count, bytes = total, "receiving a transfer");
        Ok(())
    }

    /// Lands a fully received transfer: checks the index object and that
    /// every object belongs to the granted study, then moves the objects
    /// into the store under the grant, marks the transfer landed and writes
    /// its `transfer-received` entry, all in one transaction
    /// ([`crate::store::Store::land_study`]). Never replaces or deletes
    /// anything the site holds. Idempotent.
    ///
    /// # Errors
    /// [`TransferError::Refused`] (`bad-object`: an object of another study
    /// or not as the index describes it; `already-held`: the study or an
    /// object is held here already); store and file errors; a bad index
    /// fails the transfer.
    pub fn land(&self, accepted: &Accepted) -> Result<(), HomeError> {
        let id = &accepted.id;
        let rec = self.transfer(id)?;
        let idh = rec.id.clone();
        if matches!(rec.state, State::Landed | State::Complete) {
            // Landed before (a crash before the received copies were removed).
            self.store().clear_chunks(id)?;
            return Ok(());
        }
        if rec.state != State::Streaming {
            return Err(TransferError::State {
                id: idh,
                reason: format!("is {}, not being received", rec.state.as_str()),
            }
            .into());
        }
        let (_, grant) = wire::open_signed::<Grant>("grant", GRANT_DOMAIN, &rec.grant, MAX_MESSAGE)
            .map_err(|e| damaged(&idh, e.to_string()))?;
        let index = self.read_index(accepted, &idh)?;
        // A de-identified study lands under its new Study Instance UID (the
        // index's: the holder signed its hash in the manifest).
        let landed_uid = if grant.level == DeidLevel::Identifiable {
            grant.study_uid.clone()
        } else {
            index.study.study_uid.clone()
        };
        let study = self.store().study_ref(&landed_uid);
        let (objects, row, patient) = self.land_objects(accepted, &rec, &grant, &study, &index, &landed_uid)?;
        let event = Event::TransferReceived {
            transfer: idh.clone(),
            peer: rec.peer.clone(),
            study: hex::encode(&grant.study_ref),
            objects: (accepted.manifest.objects.len() - 1) as u64,
            level: grant.level.as_str().to_string(),
        };
        let landing = crate::store::Landing {
            transfer: id,
            study: &study,
            row: &row,
            patient,
            objects,
        };
        let result = self.store().land_study(landing, &self.author(), |current| {
            // Inside the landing's transaction: a transfer ended meanwhile
            // (failed, scrubbed) does not land.
            let sealed = current.ok_or_else(|| TransferError::Unknown(idh.clone()))?;
            let mut r = self.open_record(id, sealed)?;
            if r.state != State::Streaming {
                return Err(HomeError::from(TransferError::State {
                    id: idh.clone(),
                    reason: format!("became {} while it was landing", r.state.as_str()),
                }));
            }
            r.state = State::Landed;
            r.updated = now();
            Ok((self.seal_record(&r)?, vec![event]))
        });
        let entries = match result {
            Ok(entries) => entries,
            Err(HomeError::Store(StoreError::Conflict(why))) => {
                return Err(TransferError::Refused {
                    id: idh,
                    code: "already-held",
                    reason: why,
                }
                .into());
            }
            Err(e) => return Err(e),
        };
        self.logged(&entries);
        tracing::info!(transfer = %idh, "study received, verified and stored");
        Ok(())
    }

    /// Checks every received object against the index and the granted study
    /// and makes the study's rows.
    #[allow(clippy::type_complexity)]
    fn land_objects(
        &self,
        a: &Accepted,
        rec: &TransferRecord,
        grant: &Grant,
        study: &StudyRef,
        index: &StudyIndex,
        landed_uid: &str,
    ) -> Result<(Vec<LandedObject>, StudyRow, Option<[u8; 32]>), HomeError> {
        let idh = &rec.id;
        let dir = self.store().incoming_dir(&a.id);
        let last = a.manifest.objects.len() - 1;
        let identifiable = grant.level == DeidLevel::Identifiable;
        if index.instances.len() != last
            || (identifiable && index.study.study_uid != grant.study_uid)
            || crate::dicom::check_uid(&index.study.study_uid).is_err()
        {
            return Err(damaged(idh, "the study index does not describe the objects sent").into());
        }
        let bad_object = |i: usize, why: &str| -> HomeError {
            TransferError::Refused {
                id: idh.clone(),
                code: "bad-object",
                reason: format!("object {i} {why}"),
            }
            .into()
        };
        let mut objects = Vec::with_capacity(last);
        let mut seen = std::collections::BTreeSet::new();
        let mut total = 0u64;
        for (i, m) in index.instances.iter().enumerate() {
            let o = &a.manifest.objects[i];
            // De-identified series have new UIDs; the attestation ties them to the grant.
            if m.blake3 != o.blake3 || (identifiable && !grant.series.contains(&m.series_uid)) {
                return Err(damaged(idh, format!("the study index does not describe object {i}")).into());
            }
            let path = dir.join(i.to_string());
            // The object itself must say it is of the granted study (and be
            // the instance the index names): a holder cannot slip another
            // study's object in under this grant.
            let uids = object_uids(&path, &a.key, m.part10, o.size).map_err(|why| bad_object(i, &why))?;
            if uids.study != landed_uid {
                return Err(bad_object(i, "is not of the granted study"));
            }
            if uids.series != m.series_uid || uids.sop != m.sop_instance_uid {
                return Err(bad_object(i, "is not the instance the study index names"));
            }
            let hash = blake3::Hash::from_bytes(key32(&o.blake3).ok_or_else(|| damaged(idh, "hash"))?);
            let address = self.store().blob_address(&hash);
            if !seen.insert(address) {
                // The same bytes twice: stored once.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            total += o.size;
            objects.push(LandedObject {
                address,
                file: path,
                row: InstanceRow {
                    v: ROW_VERSION,
                    blob: address.to_vec(),
                    size: o.size,
                    meta: self.store().seal_instance_meta(study, &address, &a.key, m)?,
                },
            });
        }
        let t = now();
        let grant_hash = blake3::hash(&rec.grant);
        let row = StudyRow {
            v: ROW_VERSION,
            wrapped_key: self.store().wrap_study_key(study, &a.key)?,
            meta: self.store().seal_study_meta(study, &a.key, &index.study)?,
            origin: Origin::Received(ReceivedGrant {
                transfer_id: idh.clone(),
                peer: rec.peer.clone(),
                institution: rec.institution.clone(),
                purpose: grant.purpose,
                level: grant.level,
                expires: grant.expires,
                grant_hash: grant_hash.to_hex().to_string(),
                received: t,
                locked: None,
                attestation: a.manifest.attestation.clone(),
                study_ref: grant.study_ref.clone(),
            }),
            created: t,
            updated: t,
            instances: objects.len() as u64,
            bytes: total,
        };
        let attrs = &index.study.attrs;
        let patient = (!attrs.patient_id.trim().is_empty()).then(|| {
            self.store()
                .patient_ref(attrs.patient_id.trim(), attrs.issuer_of_patient_id.trim())
        });
        Ok((objects, row, patient))
    }

    /// The study index object of a received transfer (the last object).
    fn read_index(&self, a: &Accepted, idh: &str) -> Result<StudyIndex, HomeError> {
        let dir = self.store().incoming_dir(&a.id);
        let last = a.manifest.objects.len() - 1;
        let index_path = dir.join(last.to_string());
        let file = File::open(&index_path).map_err(|cause| io_err(idh, &index_path, cause))?;
        let mut reader = medmesh_seal::OpenReader::new(&a.key, file).map_err(|e| damaged(idh, e.to_string()))?;
        let mut bytes = Zeroizing::new(Vec::new());
        reader
            .read_to_end(&mut bytes)
            .map_err(|cause| io_err(idh, &index_path, cause))?;
        Ok(wire::decode("study index", &bytes, wire::MAX_INDEX).map_err(|e| damaged(idh, e.to_string()))?)
    }

    /// The signed delivery receipt of a landed transfer (made once, then
    /// sent again as it is).
    ///
    /// # Errors
    /// Store errors.
    pub fn receipt(&self, id: &TransferId) -> Result<Vec<u8>, HomeError> {
        let rec = self.transfer(id)?;
        if !rec.receipt.is_empty() {
            return Ok(rec.receipt);
        }
        let manifest_bytes = self
            .store()
            .transfer_doc(id, DOC_MANIFEST)?
            .ok_or_else(|| damaged(&rec.id, "manifest missing"))?;
        let (_, manifest) = wire::open_signed::<Manifest>("manifest", MANIFEST_DOMAIN, &manifest_bytes, MAX_MANIFEST)
            .map_err(|e| damaged(&rec.id, e.to_string()))?;
        let receipt = Receipt {
            v: WIRE_VERSION,
            transfer_id: rec.id.clone(),
            manifest_hash: blake3::hash(&manifest_bytes).as_bytes().to_vec(),
            objects_root: wire::objects_root(&manifest.objects).to_vec(),
            holder: rec.peer.clone(),
            recipient: self.identity().peer_id(),
            received: now(),
        };
        let payload = wire::encode("receipt", &receipt).map_err(|e| damaged(&rec.id, e.to_string()))?;
        let bytes = self.identity().sign(RECEIPT_DOMAIN, payload).to_bytes()?;
        let keep = bytes.clone();
        let (rec, ()) = self.update_transfer(id, |r| {
            if r.receipt.is_empty() {
                r.receipt = keep;
            }
            Ok(())
        })?;
        Ok(rec.receipt)
    }

    /// The recipient notes that the holder acknowledged the receipt.
    ///
    /// # Errors
    /// Store errors.
    pub fn receipt_acknowledged(&self, id: &TransferId) -> Result<(), HomeError> {
        self.update_transfer(id, |r| {
            if r.state == State::Landed {
                r.state = State::Complete;
            }
            Ok(())
        })?;
        self.live().remove(id);
        Ok(())
    }

    /// Locks every received study whose grant has ended: its data key is
    /// destroyed, the transfer's documents that would derive it again go,
    /// and its `study-locked` entry is written, in one transaction. Returns
    /// how many were locked. A locked study whose documents are still there
    /// (locked by an older version that deleted them in a second step) has
    /// them deleted now. Then applies the retention policy to locked copies
    /// ([`RetentionService::enforce_retention`](crate::home::retention::RetentionService::enforce_retention)).
    ///
    /// # Errors
    /// Store errors.
    pub fn enforce_expiry(&self) -> Result<u64, HomeError> {
        let t = now();
        let mut locked = 0;
        for (study, row) in self.store().studies()? {
            let Origin::Received(g) = &row.origin else {
                continue;
            };
            if g.expires > t {
                continue;
            }
            // The manifest's ephemeral key and the node's X25519 key would
            // derive the data key again: the transfer's documents go too.
            let transfer = parse_id(&g.transfer_id).ok();
            if row.wrapped_key.is_empty() {
                if let Some(id) = transfer
                    && (self.store().transfer_doc(&id, DOC_MANIFEST)?.is_some()
                        || self.store().transfer_doc(&id, DOC_KEY)?.is_some())
                {
                    self.store().transfer_docs_remove(&id)?;
                    tracing::info!(transfer = %g.transfer_id, "the key documents of a locked study deleted");
                }
                continue;
            }
            let event = Event::StudyLocked {
                study: hex::encode(&g.study_ref),
            };
            let entry = self
                .store()
                .lock_study(&study, transfer.as_ref(), &self.author(), event, |r| {
                    if let Origin::Received(g) = &mut r.origin {
                        g.locked = Some(t);
                    }
                })?;
            if let Some(entry) = entry {
                self.logged(std::slice::from_ref(&entry));
                locked += 1;
                tracing::info!(study = %study.short(), transfer = %g.transfer_id, "grant expired: study locked (data key destroyed)");
            }
        }
        self.retention().enforce_retention(t)?;
        Ok(locked)
    }
}

/// The UIDs a received object carries.
struct ObjectUids {
    study: String,
    series: String,
    sop: String,
}

/// Largest received object read whole to find its UIDs when it is not a
/// Part 10 file (a Part 10 file is read up to its Pixel Data).
const MAX_BARE_OBJECT: u64 = 64 * 1024 * 1024;

/// Reads the Study, Series and SOP Instance UIDs of a received object (a
/// sealed file under the transfer key). Errors are texts without UIDs.
fn object_uids(path: &std::path::Path, key: &DataKey, part10: bool, size: u64) -> Result<ObjectUids, String> {
    use dicom_dictionary_std::tags;
    use dicom_object::file::ReadPreamble;
    let file = File::open(path).map_err(|e| format!("cannot be read: {e}"))?;
    let mut reader =
        medmesh_seal::OpenReader::new(key, std::io::BufReader::new(file)).map_err(|e| format!("does not open: {e}"))?;
    let obj = if part10 {
        dicom_object::OpenFileOptions::new()
            .read_preamble(ReadPreamble::Auto)
            .read_until(tags::PIXEL_DATA)
            .from_reader(&mut reader)
            .map(dicom_object::FileDicomObject::into_inner)
            .map_err(|_| "is not a DICOM object that parses".to_string())?
    } else {
        if size > MAX_BARE_OBJECT {
            return Err("is a bare data set too large to check".into());
        }
        let mut bytes = Zeroizing::new(Vec::new());
        reader
            .read_to_end(&mut bytes)
            .map_err(|e| format!("does not open: {e}"))?;
        crate::dicom::parse_whole(&bytes)
            .map_err(|_| "is not a DICOM object that parses".to_string())?
            .0
    };
    let uid = |tag| {
        obj.element(tag)
            .ok()
            .and_then(|e| e.to_str().ok())
            .map(|v| v.trim_end_matches(['\0', ' ']).trim().to_string())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| "lacks a Study, Series or SOP Instance UID".to_string())
    };
    Ok(ObjectUids {
        study: uid(tags::STUDY_INSTANCE_UID)?,
        series: uid(tags::SERIES_INSTANCE_UID)?,
        sop: uid(tags::SOP_INSTANCE_UID)?,
    })
}

fn io_err(id: &str, path: &std::path::Path, cause: std::io::Error) -> TransferError {
    TransferError::Io {
        id: id.to_string(),
        path: path.display().to_string(),
        cause,
    }
}

fn random32(id: &str) -> Result<[u8; 32], TransferError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| damaged(id, format!("random: {e}")))?;
    Ok(b)
}

/// Per-chunk hashes, size and whole hash of each object: those recorded at
/// import, or (for objects imported before per-chunk hashes were recorded)
/// read once and checked against the hash recorded at import. Up to four
/// threads.
#[allow(clippy::type_complexity)]
fn hash_objects(
    node: &Node,
    key: &DataKey,
    items: &[([u8; 32], InstanceRow, InstanceMeta)],
    idh: &str,
) -> Result<Vec<(Vec<u8>, u64, [u8; 32])>, HomeError> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<(Vec<u8>, u64, [u8; 32]), HomeError>>>> =
        Mutex::new((0..items.len()).map(|_| None).collect());
    let threads = std::thread::available_parallelism().map_or(2, usize::from).clamp(1, 4);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((address, row, meta)) = items.get(i) else {
                        break;
                    };
                    let chunks = row.size.div_ceil(u64::from(CHUNK_SIZE)).max(1);
                    let r = match key32(&meta.blake3) {
                        Some(whole) if meta.chunks.len() as u64 == chunks * 32 => {
                            Ok((meta.chunks.clone(), row.size, whole))
                        }
                        _ => hash_one(node, key, address, meta, idh),
                    };
                    let mut res = results.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    if let Some(slot) = res.get_mut(i) {
                        *slot = Some(r);
                    }
                }
            });
        }
    });
    let res = results.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    res.into_iter()
        .map(|r| r.unwrap_or_else(|| Err(damaged(idh, "an object was not hashed").into())))
        .collect()
}

fn hash_one(
    node: &Node,
    key: &DataKey,
    address: &[u8; 32],
    meta: &InstanceMeta,
    idh: &str,
) -> Result<(Vec<u8>, u64, [u8; 32]), HomeError> {
    let integrity = |reason: String| TransferError::Integrity {
        id: idh.to_string(),
        // The blob's short address, not the SOP Instance UID: this error is logged.
        object: format!("blob {}", hex::encode(&address[..8])),
        reason,
    };
    let file = node.store().open_blob(address)?;
    let mut reader = medmesh_seal::OpenReader::new(key, std::io::BufReader::with_capacity(256 * 1024, file))
        .map_err(|e| integrity(e.to_string()))?;
    let size = reader.header().plaintext_len;
    let mut whole = blake3::Hasher::new();
    let mut chunks = Vec::with_capacity(usize::try_from(size / u64::from(CHUNK_SIZE) + 1).unwrap_or(0) * 32);
    let mut buf = Zeroizing::new(vec![0u8; CHUNK_SIZE as usize]);
    let mut left = size;
    loop {
        let want = usize::try_from(left.min(u64::from(CHUNK_SIZE))).unwrap_or(0);
        reader
            .read_exact(&mut buf[..want])
            .map_err(|e| integrity(e.to_string()))?;
        whole.update(&buf[..want]);
        chunks.extend_from_slice(blake3::hash(&buf[..want]).as_bytes());
        left -= want as u64;
        if left == 0 {
            break;
        }
    }
    let whole = *whole.finalize().as_bytes();
    if whole.as_slice() != meta.blake3.as_slice() {
        return Err(integrity("its BLAKE3 differs from the one recorded at import".into()).into());
    }
    Ok((chunks, size, whole))
}

/// Writes the chunks of one object being received: verifies each chunk's
/// tag and hash before writing it, the object's hash at its end, and
/// records progress durably every few MiB.
pub struct ObjectWriter {
    id: TransferId,
    object: u32,
    path: PathBuf,
    file: File,
    opener: Opener,
    header: Header,
    hasher: blake3::Hasher,
    next: u64,
    unsynced: u64,
    fsync: bool,
}

impl std::fmt::Debug for ObjectWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectWriter")
            .field("object", &self.object)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

/// Why a chunk was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("object {object} chunk {chunk}: {reason}")]
pub struct ChunkError {
    /// Object index.
    pub object: u32,
    /// Chunk index.
    pub chunk: u64,
    /// Why.
    pub reason: String,
}

impl ObjectWriter {
    /// Opens object `object` of an accepted transfer for writing after its
    /// first `have` chunks, verified before (re-reading them to resume the
    /// object hash).
    ///
    /// # Errors
    /// File errors; a stored prefix that no longer verifies starts over.
    pub fn open(node: &Node, a: &Accepted, object: u32, have: u64) -> Result<Self, TransferError> {
        let idh = hex::encode(a.id);
        let o = a
            .manifest
            .objects
            .get(object as usize)
            .ok_or_else(|| damaged(&idh, format!("no object {object}")))?;
        let header = Header {
            chunk_size: a.manifest.chunk_size,
            object_index: object,
            plaintext_len: o.size,
            salt: key32(&o.salt).ok_or_else(|| damaged(&idh, "salt"))?,
        };
        let dir = node.store().incoming_dir(&a.id);
        crate::fsutil::create_private_dir(&dir.parent().map(PathBuf::from).unwrap_or_default())
            .and_then(|()| crate::fsutil::create_private_dir(&dir))
            .map_err(|cause| io_err(&idh, &dir, cause))?;
        let path = dir.join(object.to_string());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|cause| io_err(&idh, &path, cause))?;
        let mut w = ObjectWriter {
            id: a.id,
            object,
            path,
            file,
            opener: Opener::new(&a.key, header),
            header,
            hasher: blake3::Hasher::new(),
            next: 0,
            unsynced: 0,
            fsync: node.store().fsync(),
        };
        if w.resume(have).is_err() {
            // The stored prefix no longer verifies: the object starts over,
            // and the record says so (else every session would resume past it).
            w.resume(0).map_err(|cause| io_err(&idh, &w.path, cause))?;
            node.store()
                .set_chunks_done(&a.id, object, 0)
                .map_err(|e| damaged(&idh, e.to_string()))?;
        }
        Ok(w)
    }

    /// Re-reads the first `have` chunks (feeding the hash) and truncates the
    /// file after them.
    fn resume(&mut self, have: u64) -> std::io::Result<()> {
        self.hasher = blake3::Hasher::new();
        self.next = 0;
        let sealed_chunk = u64::from(self.header.chunk_size) + TAG_LEN as u64;
        let end = HEADER_LEN as u64 + have * sealed_chunk;
        if have > 0 {
            let full = have.min(self.header.chunk_count());
            self.file.seek(SeekFrom::Start(0))?;
            let mut head = [0u8; HEADER_LEN];
            self.file.read_exact(&mut head)?;
            if head != self.header.encode() {
                return Err(std::io::Error::other("header differs"));
            }
            let mut sealed = vec![0u8; usize::try_from(sealed_chunk).unwrap_or(0)];
            for i in 0..full {
                let len = usize::try_from(self.header.chunk_plain_len(i)).unwrap_or(0);
                let buf = &mut sealed[..len + TAG_LEN];
                self.file.read_exact(buf)?;
                let (c, tag) = buf.split_at_mut(len);
                let mut t = [0u8; TAG_LEN];
                t.copy_from_slice(tag);
                self.opener
                    .open_chunk(i, c, &t)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                self.hasher.update(c);
            }
            self.next = full;
        }
        let end = if have == 0 {
            HEADER_LEN as u64
        } else {
            end.min(self.header.sealed_len())
        };
        self.file.set_len(end)?;
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(&self.header.encode())?;
        self.file.seek(SeekFrom::Start(end))?;
        Ok(())
    }

    /// Chunks verified so far.
    #[must_use]
    pub fn next(&self) -> u64 {
        self.next
    }

    /// True when every chunk is in.
    #[must_use]
    pub fn is_complete(&self) -> bool {
        self.next == self.header.chunk_count()
    }

    /// Verifies and writes chunk `index` (`sealed` is ciphertext ‖ tag).
    /// Returns the plaintext bytes it added. On a refused chunk nothing is
    /// written and the object continues from the same chunk.
    ///
    /// # Errors
    /// [`ChunkError`] for a chunk out of order, of the wrong length, failing
    /// its tag or its hash, or an object failing its hash at the end (which
    /// then starts over); file errors as `ChunkError` too.
    /// `scratch` holds the plaintext while it is checked (it grows to the
    /// chunk's length; one buffer serves every object of a stream).
    pub fn write_chunk(
        &mut self,
        index: u64,
        sealed: &[u8],
        manifest: &Manifest,
        scratch: &mut Zeroizing<Vec<u8>>,
    ) -> Result<u64, ChunkError> {
        let object = self.object;
        let err = |reason: String| ChunkError {
            object,
            chunk: index,
            reason,
        };
        if index != self.next {
            return Err(err(format!("out of order (expected chunk {})", self.next)));
        }
        if index >= self.header.chunk_count() {
            return Err(err("past the last chunk".into()));
        }
        let len = usize::try_from(self.header.chunk_plain_len(index)).unwrap_or(0);
        if sealed.len() != len + TAG_LEN {
            return Err(err(format!("{} bytes, expected {}", sealed.len(), len + TAG_LEN)));
        }
        let (ct, tag) = sealed.split_at(len);
        if scratch.len() < len {
            scratch.resize(len, 0);
        }
        let plain = &mut scratch[..len];
        plain.copy_from_slice(ct);
        let mut t = [0u8; TAG_LEN];
        t.copy_from_slice(tag);
        self.opener
            .open_chunk(index, plain, &t)
            .map_err(|_| err("authentication failed (altered, or sealed for another transfer or object)".into()))?;
        let o = &manifest.objects[self.object as usize];
        let at = usize::try_from(index * 32).unwrap_or(usize::MAX);
        let expected = o.chunks.get(at..at + 32).unwrap_or_default();
        if blake3::hash(plain).as_bytes().as_slice() != expected {
            return Err(err("BLAKE3 differs from the manifest".into()));
        }
        self.hasher.update(plain);
        self.file
            .write_all(sealed)
            .map_err(|e| err(format!("{}: {e}", self.path.display())))?;
        self.next += 1;
        self.unsynced += len as u64;
        if self.is_complete() {
            let whole = self.hasher.finalize();
            if whole.as_bytes().as_slice() != o.blake3.as_slice() {
                let _ = self.resume(0);
                return Err(err(
                    "the object's BLAKE3 differs from the manifest; it starts over".into()
                ));
            }
        }
        Ok(len as u64)
    }

    /// Makes the chunks written so far durable and records them, when
    /// enough have accumulated or `force`.
    ///
    /// # Errors
    /// File and store errors, as text.
    pub fn checkpoint(&mut self, node: &Node, force: bool) -> Result<(), String> {
        if !force && self.unsynced < SYNC_EVERY {
            return Ok(());
        }
        if self.fsync {
            self.file
                .sync_data()
                .map_err(|e| format!("{}: {e}", self.path.display()))?;
        }
        node.store()
            .set_chunks_done(&self.id, self.object, self.next)
            .map_err(|e| e.to_string())?;
        self.unsynced = 0;
        Ok(())
    }
}
