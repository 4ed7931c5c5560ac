//! Wire formats of transfers (docs/PROTOCOL.md §12): the `/medmesh/transfer/1`
//! request-response messages, the signed grant, manifest and receipt, and the
//! frames of `/medmesh/stream/1`. Every message is CBOR with a version
//! field first checked; signed documents travel as [`SignedEnvelope`]s whose
//! signature covers the exact payload bytes.

use consent_schema::{DeidLevel, Purpose, Role};
use serde::{Deserialize, Serialize};

use crate::cbor;
use crate::consent::Reason;
use crate::identity::SignedEnvelope;
use crate::ids::{PeerId, peer_text};

/// Request-response protocol of negotiation.
pub const PROTOCOL: &str = "/medmesh/transfer/1";
/// Raw-stream protocol of the data.
pub const STREAM_PROTOCOL: &str = "/medmesh/stream/1";
/// Version of every transfer message and document.
pub const WIRE_VERSION: u32 = 1;
/// Signature domain of a grant.
pub const GRANT_DOMAIN: &str = "medmesh/v1/transfer-grant";
/// Signature domain of a manifest.
pub const MANIFEST_DOMAIN: &str = "medmesh/v1/transfer-manifest";
/// Signature domain of a de-identification attestation.
pub const ATTESTATION_DOMAIN: &str = "medmesh/v1/deid-attestation";
/// Signature domain of a delivery receipt.
pub const RECEIPT_DOMAIN: &str = "medmesh/v1/transfer-receipt";
/// Largest request-response message, bytes.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Largest signed manifest, bytes (about 130 GB of study at 256 KiB chunks).
pub const MAX_MANIFEST: usize = 16 * 1024 * 1024;
pub use crate::store::{CHUNK_SIZE, chunk_hashes};

/// Objects in one transfer, at most (the study's index object included).
pub const MAX_OBJECTS: usize = 200_000;
/// Largest index object (study and instance metadata), bytes.
pub const MAX_INDEX: usize = 64 * 1024 * 1024;
/// BLAKE3 `derive_key` context of the transfer key.
pub const KEY_CONTEXT: &str = "medmesh/v1/transfer key";
/// BLAKE3 `derive_key` context of the objects root of a receipt.
pub const ROOT_CONTEXT: &str = "medmesh/v1/transfer objects root";

/// A request of `/medmesh/transfer/1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Msg {
    /// [`WIRE_VERSION`].
    pub v: u32,
    /// What it is.
    pub body: MsgBody,
}

/// The requests of `/medmesh/transfer/1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum MsgBody {
    /// Requester to holder: send me this study.
    Request {
        /// Requester's id of the request (32 hex digits).
        request_id: String,
        /// Study Instance UID.
        study_uid: String,
        /// Why.
        purpose: Purpose,
        /// On whose behalf.
        role: Role,
        /// The level asked for; the weakest allowed when absent.
        level: Option<DeidLevel>,
    },
    /// Holder to requester: a pending request was decided against by a person.
    Decided {
        /// The transfer.
        transfer_id: String,
        /// Why.
        reasons: Vec<Reason>,
    },
    /// Receiver to holder: the signed delivery receipt.
    Receipt {
        /// The [`SignedEnvelope`] of a [`Receipt`], CBOR.
        #[serde(with = "serde_bytes")]
        receipt: Vec<u8>,
    },
}

/// An answer of `/medmesh/transfer/1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// [`WIRE_VERSION`].
    pub v: u32,
    /// What it is.
    pub body: AnswerBody,
}

/// The answers of `/medmesh/transfer/1`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum AnswerBody {
    /// Granted: the study will stream under this grant.
    Granted {
        /// The transfer.
        transfer_id: String,
        /// The [`SignedEnvelope`] of the [`Grant`], CBOR.
        #[serde(with = "serde_bytes")]
        grant: Vec<u8>,
    },
    /// Denied.
    Denied {
        /// The transfer, when the holder recorded one.
        transfer_id: Option<String>,
        /// Why (stable codes). A study the holder does not have and one the
        /// requester may not know of get the same reason.
        reasons: Vec<Reason>,
    },
    /// Waiting for a person at the holder (`medmesh approvals`).
    Pending {
        /// The transfer (the approval id at the holder).
        transfer_id: String,
        /// Why a person must approve.
        reasons: Vec<Reason>,
    },
    /// Taken note of.
    Ack,
    /// The message itself was refused (malformed, unknown transfer, bad signature).
    Refused {
        /// Stable code.
        #[serde(deserialize_with = "crate::text::de::code")]
        code: String,
        /// Why (cleaned and capped on decoding: [`crate::text::clean`]).
        #[serde(deserialize_with = "crate::text::de::reason")]
        text: String,
    },
    /// Not taken now, nothing recorded: the sender is over a limit of the
    /// holder (`rate-limited`, `approvals-full`) and sends it again no
    /// sooner than `retry_after_secs` from now (PROTOCOL.md §12.1).
    RetryLater {
        /// Stable code.
        code: String,
        /// Why.
        text: String,
        /// Seconds to wait before sending it again (at least 1).
        retry_after_secs: u64,
    },
}

/// A grant, signed by the holder ([`GRANT_DOMAIN`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// [`WIRE_VERSION`].
    pub v: u32,
    /// The transfer (32 hex digits).
    pub transfer_id: String,
    /// The request it answers; `None` when the holder shared on its own.
    pub request_id: Option<String>,
    /// Holder peer id (the signer).
    #[serde(with = "peer_text::holder")]
    pub holder: PeerId,
    /// Recipient peer id.
    #[serde(with = "peer_text::recipient")]
    pub recipient: PeerId,
    /// Recipient's certified X25519 key, to which the data is sealed.
    #[serde(with = "serde_bytes")]
    pub recipient_x25519: Vec<u8>,
    /// Study Instance UID.
    pub study_uid: String,
    /// Purpose.
    pub purpose: Purpose,
    /// Requesting role.
    pub role: Role,
    /// De-identification level of the objects sent.
    pub level: DeidLevel,
    /// Series Instance UIDs covered.
    pub series: Vec<String>,
    /// Consents relied on (ids).
    pub consents: Vec<String>,
    /// Issued (Unix seconds).
    pub issued: i64,
    /// Ends (Unix seconds): the recipient locks the study then.
    pub expires: i64,
    /// The holder's ledger commitment of the study (PROTOCOL.md §14), which
    /// both sides' ledger entries name it by.
    #[serde(default, with = "serde_bytes")]
    pub study_ref: Vec<u8>,
}

/// What an object of a manifest is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ObjectKind {
    /// A DICOM object.
    Dicom,
    /// The study's index: study and instance metadata (CBOR [`StudyIndex`]), last.
    Index,
}

/// One object of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestObject {
    /// What it is.
    pub kind: ObjectKind,
    /// Plaintext bytes.
    pub size: u64,
    /// BLAKE3 of the plaintext.
    #[serde(with = "serde_bytes")]
    pub blake3: Vec<u8>,
    /// Salt of the sealed object's header.
    #[serde(with = "serde_bytes")]
    pub salt: Vec<u8>,
    /// BLAKE3 of each chunk's plaintext, 32 bytes each, in order.
    #[serde(with = "serde_bytes")]
    pub chunks: Vec<u8>,
}

/// A manifest, signed by the holder ([`MANIFEST_DOMAIN`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`WIRE_VERSION`].
    pub v: u32,
    /// The transfer.
    pub transfer_id: String,
    /// BLAKE3 of the signed grant's envelope bytes.
    #[serde(with = "serde_bytes")]
    pub grant_hash: Vec<u8>,
    /// Holder peer id.
    #[serde(with = "peer_text::holder")]
    pub holder: PeerId,
    /// Recipient peer id.
    #[serde(with = "peer_text::recipient")]
    pub recipient: PeerId,
    /// Recipient's X25519 key.
    #[serde(with = "serde_bytes")]
    pub recipient_x25519: Vec<u8>,
    /// The holder's ephemeral X25519 key of this transfer.
    #[serde(with = "serde_bytes")]
    pub ephemeral_x25519: Vec<u8>,
    /// Plaintext bytes per chunk.
    pub chunk_size: u32,
    /// The objects, in order; object `i` is sealed with object index `i`.
    pub objects: Vec<ManifestObject>,
    /// Made (Unix seconds).
    pub created: i64,
    /// The holder's signed de-identification attestation of this transfer
    /// ([`Attestation`] under [`ATTESTATION_DOMAIN`]).
    #[serde(default, with = "serde_bytes")]
    pub attestation: Vec<u8>,
}

/// A coded concept of an attestation (CID 7050).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestedCode {
    /// Code Value.
    pub value: String,
    /// Coding Scheme Designator.
    pub scheme: String,
    /// Code Meaning.
    pub meaning: String,
}

/// One DICOM object of a transfer, before and after de-identification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestedObject {
    /// BLAKE3 of the object as held.
    #[serde(with = "serde_bytes")]
    pub before: Vec<u8>,
    /// BLAKE3 of the object as sent (the manifest object's hash).
    #[serde(with = "serde_bytes")]
    pub after: Vec<u8>,
}

/// What the holder did to the objects of a transfer, signed by it
/// ([`ATTESTATION_DOMAIN`]): level, profile and options with their codes,
/// table version, and each DICOM object's hash before and after, in
/// manifest order. At the identifiable level: no profile, hashes equal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attestation {
    /// [`WIRE_VERSION`].
    pub v: u32,
    /// The transfer.
    pub transfer_id: String,
    /// Holder peer id.
    #[serde(with = "peer_text::holder")]
    pub holder: PeerId,
    /// The granted level applied.
    pub level: DeidLevel,
    /// CID 7050 codes of the profile and options applied (empty at the identifiable level).
    pub profile: Vec<AttestedCode>,
    /// Option names (as in `[deid] options`).
    pub options: Vec<String>,
    /// The Annex E table version (empty at the identifiable level).
    pub table_version: String,
    /// The DICOM objects, in manifest order.
    pub objects: Vec<AttestedObject>,
    /// Made (Unix seconds).
    pub created: i64,
}

/// A delivery receipt, signed by the recipient ([`RECEIPT_DOMAIN`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// [`WIRE_VERSION`].
    pub v: u32,
    /// The transfer.
    pub transfer_id: String,
    /// BLAKE3 of the signed manifest's envelope bytes.
    #[serde(with = "serde_bytes")]
    pub manifest_hash: Vec<u8>,
    /// [`objects_root`] of the objects' hashes.
    #[serde(with = "serde_bytes")]
    pub objects_root: Vec<u8>,
    /// Holder peer id.
    #[serde(with = "peer_text::holder")]
    pub holder: PeerId,
    /// Recipient peer id (the signer).
    #[serde(with = "peer_text::recipient")]
    pub recipient: PeerId,
    /// Every object verified and stored at (Unix seconds).
    pub received: i64,
}

/// The study index object: what the recipient needs to list the study
/// without parsing every object again. Sent sealed like any object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StudyIndex {
    /// [`WIRE_VERSION`].
    pub v: u32,
    /// Study metadata (identifying: only ever sealed).
    pub study: crate::store::StudyMeta,
    /// Metadata of each DICOM object, in manifest order.
    pub instances: Vec<crate::store::InstanceMeta>,
}

/// The root a receipt names: BLAKE3 in derive-key mode ([`ROOT_CONTEXT`]) over the
/// objects' hashes in manifest order.
#[must_use]
pub fn objects_root(objects: &[ManifestObject]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(ROOT_CONTEXT);
    h.update(&(objects.len() as u64).to_le_bytes());
    for o in objects {
        h.update(&o.blake3);
    }
    *h.finalize().as_bytes()
}

/// A wire error: what and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct WireError {
    /// Which message.
    pub what: &'static str,
    /// Why.
    pub reason: String,
}

fn werr(what: &'static str, reason: impl Into<String>) -> WireError {
    WireError {
        what,
        reason: reason.into(),
    }
}

/// Encodes a message or document.
///
/// # Errors
/// [`WireError`] (not expected).
pub fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, WireError> {
    cbor::encode(what, value).map_err(|e| werr(what, e.to_string()))
}

/// Decodes a message or document of at most `max` bytes and checks its version.
///
/// # Errors
/// [`WireError`] for oversize, malformed or unknown-version input.
pub fn decode<T: serde::de::DeserializeOwned + Versioned>(
    what: &'static str,
    bytes: &[u8],
    max: usize,
) -> Result<T, WireError> {
    let value: T = cbor::decode(what, bytes, max).map_err(|e| werr(what, e.to_string()))?;
    cbor::check_version(what, value.version(), WIRE_VERSION).map_err(|e| werr(what, e.to_string()))?;
    Ok(value)
}

/// Messages that carry a version.
pub trait Versioned {
    /// The version field.
    fn version(&self) -> u32;
}

macro_rules! versioned {
    ($($t:ty),*) => {$(impl Versioned for $t { fn version(&self) -> u32 { self.v } })*};
}
versioned!(Msg, Answer, Grant, Manifest, Receipt, StudyIndex, Attestation);

/// Opens a signed document: decodes the envelope (at most `max` bytes),
/// checks domain and signature, decodes the payload. Returns the signer's
/// Ed25519 key with the document.
///
/// # Errors
/// [`WireError`] naming the document.
pub fn open_signed<T: serde::de::DeserializeOwned + Versioned>(
    what: &'static str,
    domain: &'static str,
    bytes: &[u8],
    max: usize,
) -> Result<([u8; 32], T), WireError> {
    let env: SignedEnvelope = cbor::decode(what, bytes, max).map_err(|e| werr(what, e.to_string()))?;
    cbor::check_version(what, env.v, crate::identity::ENVELOPE_VERSION).map_err(|e| werr(what, e.to_string()))?;
    let (signer, payload) = env.verify(domain).map_err(|e| werr(what, e.to_string()))?;
    let doc = decode(what, payload, max)?;
    Ok((signer, doc))
}

/// Checks the shape of a manifest against the limits (sizes, counts, hash
/// lengths, chunk size); the caller checks who it is for.
///
/// # Errors
/// [`WireError`] naming the field.
pub fn check_manifest(m: &Manifest) -> Result<(), WireError> {
    const W: &str = "manifest";
    if m.chunk_size != CHUNK_SIZE {
        return Err(werr(
            W,
            format!("chunk size {} (this node takes {CHUNK_SIZE})", m.chunk_size),
        ));
    }
    if m.objects.is_empty() || m.objects.len() > MAX_OBJECTS {
        return Err(werr(W, format!("{} objects (1 to {MAX_OBJECTS})", m.objects.len())));
    }
    if m.ephemeral_x25519.len() != 32 || m.recipient_x25519.len() != 32 || m.grant_hash.len() != 32 {
        return Err(werr(W, "a key or hash is not 32 bytes"));
    }
    for (i, o) in m.objects.iter().enumerate() {
        let last = i + 1 == m.objects.len();
        if (o.kind == ObjectKind::Index) != last {
            return Err(werr(
                W,
                format!("object {i}: the index object must be the last, and only it"),
            ));
        }
        if o.kind == ObjectKind::Index && o.size > MAX_INDEX as u64 {
            return Err(werr(W, format!("object {i}: index larger than {MAX_INDEX} bytes")));
        }
        if o.blake3.len() != 32 || o.salt.len() != 32 {
            return Err(werr(W, format!("object {i}: hash or salt is not 32 bytes")));
        }
        let header = medmesh_seal::Header {
            chunk_size: m.chunk_size,
            object_index: u32::try_from(i).map_err(|_| werr(W, "too many objects"))?,
            plaintext_len: o.size,
            salt: [0; 32],
            streamed: false,
        };
        let encoded = header.encode();
        medmesh_seal::Header::decode(&encoded).map_err(|e| werr(W, format!("object {i}: {e}")))?;
        let n = header.chunk_count();
        if o.chunks.len() as u64 != n * 32 {
            return Err(werr(
                W,
                format!("object {i}: {} chunk hashes for {n} chunks", o.chunks.len() / 32),
            ));
        }
    }
    Ok(())
}

/// Frame types of `/medmesh/stream/1`.
pub mod frame {
    /// Holder to recipient: CBOR [`super::Open`].
    pub const OPEN: u8 = 1;
    /// Recipient to holder: CBOR [`super::Have`].
    pub const HAVE: u8 = 2;
    /// Recipient to holder: CBOR [`super::Refuse`]; the stream ends.
    pub const REFUSE: u8 = 3;
    /// Holder to recipient: object `u32` BE, chunk `u64` BE, ciphertext ‖ tag.
    pub const CHUNK: u8 = 4;
    /// Holder to recipient: nothing more on this stream.
    pub const DONE: u8 = 5;
    /// Frame header: length `u32` BE (of type and body), type `u8`.
    pub const HEADER: usize = 5;
    /// Body of a chunk frame before the sealed bytes.
    pub const CHUNK_PREFIX: usize = 12;
}

/// First frame of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Open {
    /// [`WIRE_VERSION`].
    pub v: u32,
    /// The holder's session (streams of one session share it).
    pub session: u64,
    /// Signed grant envelope (CBOR).
    #[serde(with = "serde_bytes")]
    pub grant: Vec<u8>,
    /// Signed manifest envelope (CBOR).
    #[serde(with = "serde_bytes")]
    pub manifest: Vec<u8>,
}

/// What the recipient already holds: verified chunks per object, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Have {
    /// [`WIRE_VERSION`].
    pub v: u32,
    /// Chunks verified, per object of the manifest.
    pub chunks: Vec<u64>,
}

/// A refusal of a stream by the recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refuse {
    /// [`WIRE_VERSION`].
    pub v: u32,
    /// Stable code.
    #[serde(deserialize_with = "crate::text::de::code")]
    pub code: String,
    /// Why (cleaned and capped on decoding: [`crate::text::clean`]).
    #[serde(deserialize_with = "crate::text::de::reason")]
    pub text: String,
    /// True when trying again cannot help (the holder gives up).
    pub permanent: bool,
}

versioned!(Open, Have, Refuse);
