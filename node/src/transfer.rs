//! Consent-scoped transfers of studies between nodes.
//!
//! 1. Negotiation (`/medmesh/transfer/1`): a requester asks for a study; the
//!    holder checks trust, then consent and site policy
//!    ([`Node::consent_check`]), and answers with a signed [`wire::Grant`],
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
mod codec;
mod codes;
mod deid;
pub mod engine;
mod landing;
#[cfg(test)]
mod landing_tests;
mod negotiation;
mod preparation;
pub mod protocol;
mod receiving;
mod records;
mod sessions;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod vectors;
pub mod wire;

pub use self::codes::{END_CODES, EndCode, PENDING_CODES, PendingCode, REFUSE_CODES, RefuseCode};
pub use self::landing::BadObject;
pub use self::preparation::{SendPlan, Source};
pub use self::receiving::{Accepted, ChunkError, ObjectWriter};
pub use self::records::{Asking, Direction, Initiated, LeftOut, Live, Progress, State, TransferRecord, TransferView};

use std::collections::{HashMap, HashSet};
use std::fs::File;
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
use crate::clock::now;
use crate::clock::rfc3339;
use crate::consent::{CheckQuery, Reason, Verdict};
use crate::identity::peer_of;
use crate::ids::{PeerId, peer_text};
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

pub use crate::ids::{ParseIdError, RequestId, TransferId};

/// Errors of transfers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// No transfer with that id.
    #[error("no transfer {0} at this node")]
    Unknown(TransferId),
    /// The id is not 32 hex digits.
    #[error(transparent)]
    BadId(#[from] ParseIdError),
    /// The operation does not fit the transfer's state.
    #[error("transfer {id}: {reason}")]
    State {
        /// The transfer.
        id: String,
        /// Why.
        reason: StateCause,
    },
    /// A study UID given for a request is not a valid DICOM UID.
    #[error("study UID {uid:?}: {cause}")]
    BadStudyUid {
        /// The UID as given (a UID, never patient data).
        uid: String,
        /// What is wrong with it.
        #[source]
        cause: crate::dicom::UidError,
    },
    /// A stored record or document could not be read.
    #[error("transfer {id}: damaged record: {reason}")]
    Damaged {
        /// The transfer.
        id: String,
        /// Why.
        reason: Box<Damage>,
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
        reason: IntegrityCause,
    },
    /// The OS random generator failed (a new transfer id).
    #[error("the OS random generator failed: {0}")]
    Random(#[source] getrandom::Error),
    /// De-identifying an object for the transfer failed (named by
    /// transfer and object, never by patient data).
    #[error("{}{cause}", deid_subject(transfer.as_deref(), object.as_deref()))]
    Deid {
        /// The transfer concerned, if any.
        transfer: Option<String>,
        /// The object (SOP Instance UID) concerned, if any.
        object: Option<String>,
        /// The cause.
        #[source]
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A key could not be wrapped or unwrapped under the master key.
    #[error(transparent)]
    Keystore(#[from] crate::keystore::KeystoreError),
    /// A signed envelope or node record could not be made or read.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// A service of the node that transfers consult failed: consent and
    /// The ledger service failed.
    #[error(transparent)]
    Audit(Box<crate::audit::AuditError>),
    /// The consent service failed (the decision could not be made).
    #[error(transparent)]
    Consent(Box<crate::consent::ConsentOpError>),
    /// The trust service failed.
    #[error(transparent)]
    Trust(Box<crate::trust::service::TrustOpError>),
    /// The de-identification service failed (profile, keys).
    #[error(transparent)]
    DeidService(Box<crate::deid::DeidServiceError>),
    /// The retention service failed.
    #[error(transparent)]
    Retention(Box<crate::retention::RetentionError>),
    /// A received study was refused at landing (nothing of it is stored).
    #[error("transfer {id}: {reason} [{code}]")]
    Refused {
        /// The transfer.
        id: String,
        /// The reason code ([`RefuseCode::BadObject`], [`RefuseCode::AlreadyHeld`]).
        code: RefuseCode,
        /// Why (no patient data: objects by index, studies by reference).
        reason: Box<RefuseCause>,
    },
}

/// Why an operation does not fit a transfer's state
/// ([`TransferError::State`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StateCause {
    /// A grant needs the recipient's node record, and none is held.
    #[error("the recipient's node record is unknown")]
    RecipientUnknown,
    /// Approving or denying needs a pending request to this node.
    #[error("is {}, not a pending request to this node", .0.as_str())]
    NotPending(State),
    /// A denial by a person needs their reason.
    #[error("a denial needs a reason (--reason)")]
    NoDenialReason,
    /// A record under this id exists already (a replayed answer).
    #[error("already recorded")]
    AlreadyRecorded,
    /// Landing needs a transfer being received.
    #[error("is {}, not being received", .0.as_str())]
    NotReceiving(State),
    /// The transfer ended (failed, scrubbed) while it was landing.
    #[error("became {} while it was landing", .0.as_str())]
    ChangedWhileLanding(State),
    /// Deciding after a fetch from the PACS needs a request waiting for it.
    #[error("does not wait for a study from the PACS")]
    NotAwaitingPacs,
}

/// What is wrong with a transfer's stored record or documents
/// ([`TransferError::Damaged`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Damage {
    /// A signed message or document does not encode, decode or verify.
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    /// A record does not encode or decode.
    #[error(transparent)]
    Codec(#[from] cbor::CodecError),
    /// A sealed record, document or key does not open (or could not be sealed).
    #[error(transparent)]
    Seal(#[from] medmesh_seal::SealError),
    /// The store refused to record progress.
    #[error(transparent)]
    Store(#[from] Box<StoreError>),
    /// The OS random generator failed.
    #[error("random: {0}")]
    Random(#[from] getrandom::Error),
    /// The grant's recipient key is not 32 bytes.
    #[error("recipient key is not 32 bytes")]
    RecipientKeyLength,
    /// The grant's recipient key is a low-order point.
    #[error("the recipient's X25519 key is a low-order point")]
    LowOrderRecipientKey,
    /// The stored object list and the manifest disagree.
    #[error("the object list does not match the manifest")]
    ObjectList,
    /// A stored object address is not 32 bytes.
    #[error("bad object address")]
    ObjectAddress,
    /// A document of the transfer is missing (its kind number).
    #[error("document {0} is missing")]
    MissingDocument(u8),
    /// An object of the plan was not hashed.
    #[error("an object was not hashed")]
    NotHashed,
    /// The manifest has no object of that index.
    #[error("no object {0}")]
    NoObject(u32),
    /// An object's salt in the manifest is not 32 bytes.
    #[error("salt is not 32 bytes")]
    Salt,
    /// An object's hash in the manifest is not 32 bytes.
    #[error("hash is not 32 bytes")]
    Hash,
    /// The study index does not describe the objects sent.
    #[error("the study index does not describe the objects sent")]
    Index,
    /// The study index does not describe one object (its index).
    #[error("the study index does not describe object {0}")]
    IndexObject(usize),
    /// The manifest is missing.
    #[error("manifest missing")]
    NoManifest,
    /// More objects than an object index holds.
    #[error("too many objects")]
    TooManyObjects,
    /// No object of the study is to be sent.
    #[error("no object to send")]
    NothingToSend,
}

impl From<StoreError> for Damage {
    fn from(e: StoreError) -> Self {
        Damage::Store(Box::new(e))
    }
}

/// Why a stored object failed verification ([`TransferError::Integrity`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IntegrityCause {
    /// The sealed blob does not open.
    #[error(transparent)]
    Seal(#[from] medmesh_seal::SealError),
    /// Reading (and opening) the sealed blob failed.
    #[error(transparent)]
    Read(#[from] std::io::Error),
    /// Its content hash is not the one recorded at import.
    #[error("its BLAKE3 differs from the one recorded at import")]
    Hash,
}

/// Why a received study was refused at landing ([`TransferError::Refused`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RefuseCause {
    /// The study or an object is held here already.
    #[error(transparent)]
    Held(crate::store::Conflict),
    /// An object (by its index) is not as the grant and index say.
    #[error("object {index} {why}")]
    BadObject {
        /// The object's index in the manifest.
        index: usize,
        /// What is wrong with it.
        why: BadObject,
    },
}

impl From<crate::consent::ConsentOpError> for TransferError {
    fn from(e: crate::consent::ConsentOpError) -> Self {
        TransferError::Consent(Box::new(e))
    }
}

impl From<crate::trust::service::TrustOpError> for TransferError {
    fn from(e: crate::trust::service::TrustOpError) -> Self {
        TransferError::Trust(Box::new(e))
    }
}

impl From<crate::deid::DeidServiceError> for TransferError {
    fn from(e: crate::deid::DeidServiceError) -> Self {
        TransferError::DeidService(Box::new(e))
    }
}

impl From<crate::retention::RetentionError> for TransferError {
    fn from(e: crate::retention::RetentionError) -> Self {
        TransferError::Retention(Box::new(e))
    }
}

impl From<crate::audit::AuditError> for TransferError {
    fn from(e: crate::audit::AuditError) -> Self {
        match e {
            crate::audit::AuditError::Store(s) => TransferError::Store(s),
            other => TransferError::Audit(Box::new(other)),
        }
    }
}

/// What the transfer service needs of the rest of the node: the services
/// it consults (consent and policy, trust, de-identification, retention,
/// the ledger) and the configuration (`[limits]`, `[transfer]`). The
/// composition root ([`crate::home::Node`]) implements it.
pub trait Host: Send + Sync {
    /// The consent service.
    fn consents(&self) -> crate::consent::ConsentService<'_>;
    /// The trust service.
    fn trust(&self) -> crate::trust::service::TrustService<'_>;
    /// The de-identification service.
    fn deid(&self) -> crate::deid::DeidService<'_>;
    /// The retention service.
    fn retention(&self) -> crate::retention::RetentionService<'_>;
    /// The ledger service.
    fn audit(&self) -> crate::audit::Audit<'_>;
    /// The configuration.
    fn config(&self) -> &crate::config::Config;
    /// The transfer service itself (the engine and the protocol handler
    /// hold the host, and reach the service through it).
    fn transfers(&self) -> Transfers<'_>;
    /// A received study is landed and whole (called after its landing is
    /// committed, and again when a landing is found done at a resume): the
    /// node queues it for forwarding to the site's PACS. Failures are the
    /// host's to log.
    fn study_landed(&self, study: &crate::store::StudyRef) {
        let _ = study;
    }
}

/// The transfer service: records, negotiation, preparation, sessions,
/// receiving and landing. It holds narrow handles: the store, the identity
/// and the live progress of this process, and reaches the services it
/// consults through its [`Host`].
#[derive(Clone, Copy)]
pub struct Transfers<'n> {
    store: &'n crate::store::Store,
    identity: &'n crate::identity::Identity,
    live: &'n Live,
    host: &'n dyn Host,
}

impl std::fmt::Debug for Transfers<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transfers").finish_non_exhaustive()
    }
}

impl<'n> Transfers<'n> {
    /// The service over its handles.
    #[must_use]
    pub fn new(
        store: &'n crate::store::Store,
        identity: &'n crate::identity::Identity,
        live: &'n Live,
        host: &'n dyn Host,
    ) -> Self {
        Transfers {
            store,
            identity,
            live,
            host,
        }
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &'n crate::store::Store {
        self.store
    }

    /// This node's identity.
    #[must_use]
    pub fn identity(&self) -> &'n crate::identity::Identity {
        self.identity
    }

    /// Live progress of the transfers this process runs.
    #[must_use]
    pub fn live(&self) -> &'n Live {
        self.live
    }

    /// The configuration.
    fn config(&self) -> &'n crate::config::Config {
        self.host.config()
    }
}

/// Parses a transfer id.
///
/// # Errors
/// [`TransferError::BadId`].
pub fn parse_id(s: &str) -> Result<TransferId, TransferError> {
    Ok(s.parse()?)
}

fn new_id() -> Result<TransferId, TransferError> {
    TransferId::random().map_err(TransferError::Random)
}

fn reason(code: impl Into<String>, text: impl Into<String>) -> Reason {
    Reason {
        code: code.into(),
        text: text.into(),
    }
}

/// The answer a requester gets for a study the holder does not have, and
/// for one it may not learn of (consent or policy refuse): the same.
fn not_available() -> Reason {
    reason(
        EndCode::NotAvailable,
        "the holder has no study with that UID that it can send to you for this purpose",
    )
}

/// The consent check of a transfer record: its study, peer, purpose, role and level.
fn consent_query(rec: &TransferRecord) -> CheckQuery {
    CheckQuery {
        study_uid: rec.study_uid.clone(),
        peer_id: rec.peer.to_string(),
        purpose: rec.purpose,
        role: Some(rec.role),
        level: rec.requested_level,
    }
}

fn refuse(code: RefuseCode, text: impl Into<String>, permanent: bool) -> Refuse {
    Refuse {
        v: WIRE_VERSION,
        code: code.into(),
        text: text.into(),
        permanent,
    }
}

/// The reason code a transfer ends with when the recipient's trust fails
/// (codes of [`crate::trust::Refusal`] and of the purpose check).
fn ended_trust_code(code: &str) -> EndCode {
    match code {
        "revoked" => EndCode::PeerRevoked,
        "blocked" => EndCode::PeerBlocked,
        "purpose-not-trusted" => EndCode::PurposeRemoved,
        "expired" => EndCode::CertificateExpired,
        _ => EndCode::PeerUntrusted,
    }
}

/// The reason a transfer ends with when consent and policy now deny it.
fn ended_consent_reason(reasons: &[Reason]) -> Reason {
    let has = |code: &str| reasons.iter().find(|r| r.code == code);
    let (code, text) = if let Some(r) = has(EndCode::ConsentWithdrawn.as_str()) {
        (EndCode::ConsentWithdrawn, r.text.clone())
    } else if let Some(r) = has(EndCode::ConsentExpired.as_str()) {
        (EndCode::ConsentExpired, r.text.clone())
    } else {
        let codes: Vec<&str> = reasons.iter().map(|r| r.code.as_str()).collect();
        (
            EndCode::ConsentDenied,
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
        EndCode::EndedByHolder.into()
    }
}

fn deid_failed(
    transfer: Option<&str>,
    object: &str,
    cause: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> TransferError {
    TransferError::Deid {
        transfer: transfer.map(str::to_string),
        object: Some(object.to_string()),
        cause: cause.into(),
    }
}

/// The prefix of a [`TransferError::Deid`] message: `transfer T, object O: `.
fn deid_subject(transfer: Option<&str>, object: Option<&str>) -> String {
    match (transfer, object) {
        (Some(t), Some(o)) => format!("transfer {t}, object {o}: "),
        (Some(t), None) => format!("transfer {t}: "),
        (None, Some(o)) => format!("object {o}: "),
        (None, None) => String::new(),
    }
}

/// Why an object could not be de-identified for a transfer, when no other
/// error says it ([`TransferError::Deid`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeidStepError {
    /// The stored object's BLAKE3 differs from the one recorded at import.
    #[error("its BLAKE3 differs from the one recorded at import")]
    HashMismatch,
    /// The de-identified object does not parse.
    #[error("the output: {0}")]
    Output(#[source] crate::dicom::DicomError),
}

fn damaged(id: &(impl std::fmt::Display + ?Sized), reason: impl Into<Damage>) -> TransferError {
    TransferError::Damaged {
        id: id.to_string(),
        reason: Box::new(reason.into()),
    }
}

/// The transfer key: BLAKE3 `derive_key` over the X25519 shared secret, both
/// public keys and the transfer id.
fn transfer_key(shared: &[u8; 32], ephemeral: &[u8; 32], recipient: &[u8; 32], id: &[u8; 16]) -> DataKey {
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

fn io_err(id: &(impl std::fmt::Display + ?Sized), path: &std::path::Path, cause: std::io::Error) -> TransferError {
    TransferError::Io {
        id: id.to_string(),
        path: path.display().to_string(),
        cause,
    }
}

fn random32(id: &(impl std::fmt::Display + ?Sized)) -> Result<[u8; 32], TransferError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| damaged(id, e))?;
    Ok(b)
}
