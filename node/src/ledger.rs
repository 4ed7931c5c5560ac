//! The access ledger: every node appends what it did (requests, grants,
//! denials, transfers, accesses, consent and trust changes, locks) to its own
//! feed of entries, each signed by the node and chained to the one before,
//! so a feed can be verified by anyone who has it and cannot be changed
//! without the change showing. Entries carry no patient data: a study is
//! named by a salted commitment only its holder can resolve
//! ([`commitment`]), people by role and site.
//!
//! Entry: CBOR `{v, author, seq, prev, time, event}` in a signed envelope
//! ([`ENTRY_DOMAIN`]); its id is the BLAKE3 of the envelope bytes; `prev` is
//! the id of the author's entry `seq - 1` (32 zero bytes for seq 1). See
//! docs/PROTOCOL.md §14.

pub mod gossip;
pub mod sync;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod vectors;

use serde::{Deserialize, Serialize};

use crate::cbor;
use crate::identity::{Identity, IdentityError, SignedEnvelope, peer_id_of};

/// Version of the entry format.
pub const LEDGER_VERSION: u32 = 1;
/// Signature domain of an entry.
pub const ENTRY_DOMAIN: &str = "medmesh/v1/ledger-entry";
/// Largest entry envelope (bytes).
pub const MAX_ENTRY: usize = 64 * 1024;

/// Who does what at a site, as entries name people: by role and site only.
pub const ADMIN_ROLE: &str = "site-admin";
/// Context of the salted study commitment.
pub const COMMITMENT_CONTEXT: &str = "medmesh/v1/ledger study commitment";

/// Errors of the ledger.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// An entry does not decode or verify.
    #[error("ledger entry {entry}: {reason}")]
    Invalid {
        /// Which entry (author and seq, or its id).
        entry: String,
        /// Why.
        reason: RecordFault,
    },
    /// A witness does not decode or verify.
    #[error("ledger witness: {reason}")]
    Witness {
        /// Why.
        reason: RecordFault,
    },
    /// A feed breaks its chain.
    #[error("feed of {author}: {reason}")]
    Chain {
        /// The author's peer id.
        author: String,
        /// Where and how.
        reason: ChainBreak,
    },
}

/// Why a ledger entry or witness is refused ([`LedgerError::Invalid`],
/// [`LedgerError::Witness`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecordFault {
    /// It is longer than allowed.
    #[error("{len} bytes, over {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// It does not encode or decode, or has another version.
    #[error(transparent)]
    Codec(#[from] cbor::CodecError),
    /// Its envelope does not decode or verify (boxed: it is large).
    #[error(transparent)]
    Envelope(Box<IdentityError>),
    /// The signer is not the entry's author.
    #[error("not signed by its author")]
    NotSignedByAuthor,
    /// The signer is not the witness it names.
    #[error("not signed by its witness")]
    NotSignedByWitness,
    /// It is not in the one encoding this crate writes.
    #[error("not in the canonical encoding")]
    NotCanonical,
    /// Seq 0, or a previous id of another length than 32 bytes.
    #[error("seq 0 or a previous id that is not 32 bytes")]
    BadLink,
    /// The first entry of a feed names a previous one.
    #[error("the first entry names a previous one")]
    FirstNamesPrevious,
    /// The feed is at the largest seq: no entry can follow.
    #[error("the feed is at the largest seq")]
    FeedFull,
    /// A witness names more heads than allowed.
    #[error("{count} heads, at most {max}")]
    TooManyHeads {
        /// Heads named.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A head of a witness is malformed.
    #[error("head {index}: author and id must be 32 bytes, seq at least 1")]
    MalformedHead {
        /// The head's index.
        index: usize,
    },
    /// The heads of a witness are not in ascending order of author.
    #[error("head {index}: authors not in ascending order")]
    HeadOrder {
        /// The head's index.
        index: usize,
    },
}

impl From<IdentityError> for RecordFault {
    fn from(e: IdentityError) -> Self {
        Self::Envelope(Box::new(e))
    }
}

/// How a feed breaks its chain ([`LedgerError::Chain`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainBreak {
    /// The two entries are of different authors.
    #[error("entries of two authors")]
    TwoAuthors,
    /// A seq is skipped.
    #[error("seq {next} follows seq {prev} (a gap)")]
    Gap {
        /// The earlier entry's seq.
        prev: u64,
        /// The later entry's seq.
        next: u64,
    },
    /// The later entry names another entry as its previous one.
    #[error("entry {next} does not name entry {prev} as its previous one")]
    WrongPrevious {
        /// The earlier entry's seq.
        prev: u64,
        /// The later entry's seq.
        next: u64,
    },
}

/// A sync or gossip message that cannot be taken.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// It does not decode, or is of another version.
    #[error(transparent)]
    Codec(#[from] cbor::CodecError),
    /// A heads answer naming more feeds than allowed.
    #[error("{count} heads (at most {max})")]
    TooManyHeads {
        /// Heads named.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An entries answer holding more entries than a batch.
    #[error("{count} entries (at most {max})")]
    TooManyEntries {
        /// Entries held.
        count: usize,
        /// The limit.
        max: u64,
    },
}

/// What an entry records. Studies are [`commitment`]s (hex), transfers their
/// id (hex), peers their peer id; no patient data.
///
/// Peers stay base58 text here, not [`crate::ids::PeerId`]: an entry is
/// signed and hashed as the bytes its author wrote, and replicated entries
/// (and the test vectors, whose example peers are not real peer ids) must
/// decode whatever text they hold so that the chain still verifies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Event {
    /// A transfer request this node sent or received.
    TransferRequested {
        /// Transfer id (hex).
        transfer: String,
        /// The other side.
        peer: String,
        /// Purpose.
        purpose: String,
        /// Requesting role.
        role: String,
        /// `sent` (this node asked) or `received` (this node holds the study).
        direction: String,
        /// The study's commitment (the holder's), when known to the author.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        study: Option<String>,
    },
    /// The holder granted a transfer.
    TransferGranted {
        /// Transfer id.
        transfer: String,
        /// Recipient.
        peer: String,
        /// Purpose.
        purpose: String,
        /// Granted level.
        level: String,
        /// Study commitment.
        study: String,
        /// Grant end (Unix seconds).
        expires: i64,
    },
    /// The holder denied a transfer.
    TransferDenied {
        /// Transfer id.
        transfer: String,
        /// Requester.
        peer: String,
        /// Purpose.
        purpose: String,
        /// Reason codes.
        codes: Vec<String>,
    },
    /// The holder queued a transfer for a person's approval.
    TransferPending {
        /// Transfer id.
        transfer: String,
        /// Requester.
        peer: String,
        /// Purpose.
        purpose: String,
    },
    /// A person at the holder approved a pending transfer.
    TransferApproved {
        /// Transfer id.
        transfer: String,
        /// Requester.
        peer: String,
    },
    /// The holder's transfer is complete (the recipient's receipt is in).
    TransferSent {
        /// Transfer id.
        transfer: String,
        /// Recipient.
        peer: String,
        /// Study commitment.
        study: String,
        /// Objects sent.
        objects: u64,
        /// Bytes sent.
        bytes: u64,
        /// Level sent at.
        level: String,
    },
    /// The recipient landed a transfer.
    TransferReceived {
        /// Transfer id.
        transfer: String,
        /// Holder.
        peer: String,
        /// The holder's study commitment (from the grant).
        study: String,
        /// Objects received.
        objects: u64,
        /// Level received at.
        level: String,
    },
    /// A transfer that had not completed was ended because the decision,
    /// taken again, no longer allows it (consent withdrawn, grant expired,
    /// peer revoked or blocked, purpose removed, ...), or because the holder
    /// said so (at the recipient).
    TransferEnded {
        /// Transfer id.
        transfer: String,
        /// The other side.
        peer: String,
        /// Reason code (`consent-withdrawn`, `grant-expired`, `peer-revoked`, ...).
        code: String,
    },
    /// Data was opened at this node.
    Accessed {
        /// `export`, `deid-export` or `relink`.
        action: String,
        /// The study's commitment, when it is one study of this node.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        study: Option<String>,
        /// Objects concerned.
        objects: u64,
        /// Who, as a role at this site.
        role: String,
    },
    /// A consent was recorded (pseudonymous: its keyed reference only).
    ConsentAdded {
        /// The consent's keyed reference (`Node::consent_ref`), never its id.
        consent: String,
    },
    /// A consent was withdrawn.
    ConsentWithdrawn {
        /// The consent's keyed reference (`Node::consent_ref`), never its id.
        consent: String,
    },
    /// This node joined a consortium.
    TrustJoined {
        /// Consortium id.
        consortium: String,
    },
    /// This node trusted a peer bilaterally.
    PeerAdded {
        /// The peer.
        peer: String,
    },
    /// A revocation was applied.
    PeerRevoked {
        /// The peer revoked.
        peer: String,
    },
    /// A peer was blocked.
    PeerBlocked {
        /// The peer.
        peer: String,
    },
    /// A received study was locked (its key destroyed) at grant expiry.
    StudyLocked {
        /// The holder's study commitment.
        study: String,
    },
    /// A study was purged here (its rows, files and data key deleted) and,
    /// for this node's own study, its commitment salt erased right after
    /// this entry was written.
    StudyPurged {
        /// The study's commitment: this node's, or the holder's for a received copy.
        study: String,
        /// `retention` or `erasure`.
        reason: String,
    },
    /// Objects came into a study of this node from outside the consortium:
    /// `study import` of files, or the gateway's SCP (a modality, or the
    /// site's PACS answering `gateway fetch`). One entry per study and
    /// import run or association; duplicates are not counted.
    StudyImported {
        /// The study's commitment.
        study: String,
        /// New objects stored.
        objects: u64,
        /// `files` (`study import`) or `dicom` (C-STORE to the gateway's SCP).
        source: String,
        /// The calling AE title, for `dicom`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        calling_ae: Option<String>,
    },
    /// The gateway forwarded a study to a DICOM destination (every object
    /// stored there).
    StudyForwarded {
        /// The study's commitment: this node's, or the holder's for a received copy.
        study: String,
        /// The destination's AE title.
        destination: String,
        /// Objects stored by the destination.
        objects: u64,
    },
    /// A person (or machine client) of this site acted through the web
    /// console or API: who, as a keyed reference of their identity
    /// provider's subject that only this site can resolve, and in which role.
    PersonActed {
        /// Keyed reference of the provider's issuer and subject (32 hex digits).
        user: String,
        /// The site role the action was allowed by (`data-steward`).
        role: String,
        /// The permission-table operation (`decide-approval`).
        operation: String,
        /// The API route (`/v1/approvals/approve`).
        route: String,
        /// `console` (a login session) or `api` (a bearer token).
        via: String,
        /// What it concerned: a transfer id, a consent's keyed reference.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<String>,
    },
}

impl Event {
    /// The kind, as written in the entry.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Event::TransferRequested { .. } => "transfer-requested",
            Event::TransferGranted { .. } => "transfer-granted",
            Event::TransferDenied { .. } => "transfer-denied",
            Event::TransferPending { .. } => "transfer-pending",
            Event::TransferApproved { .. } => "transfer-approved",
            Event::TransferSent { .. } => "transfer-sent",
            Event::TransferReceived { .. } => "transfer-received",
            Event::TransferEnded { .. } => "transfer-ended",
            Event::Accessed { .. } => "accessed",
            Event::ConsentAdded { .. } => "consent-added",
            Event::ConsentWithdrawn { .. } => "consent-withdrawn",
            Event::TrustJoined { .. } => "trust-joined",
            Event::PeerAdded { .. } => "peer-added",
            Event::PeerRevoked { .. } => "peer-revoked",
            Event::PeerBlocked { .. } => "peer-blocked",
            Event::StudyLocked { .. } => "study-locked",
            Event::StudyPurged { .. } => "study-purged",
            Event::StudyForwarded { .. } => "study-forwarded",
            Event::StudyImported { .. } => "study-imported",
            Event::PersonActed { .. } => "person-acted",
        }
    }

    /// The role behind the access the event records, when it names one
    /// (a request's requesting role, the role that opened data here, the
    /// site role of a person's action).
    #[must_use]
    pub fn role(&self) -> Option<&str> {
        match self {
            Event::TransferRequested { role, .. } | Event::Accessed { role, .. } | Event::PersonActed { role, .. } => {
                Some(role)
            }
            _ => None,
        }
    }

    /// The transfer the event is about, if any (hex id).
    #[must_use]
    pub fn transfer(&self) -> Option<&str> {
        match self {
            Event::TransferRequested { transfer, .. }
            | Event::TransferGranted { transfer, .. }
            | Event::TransferDenied { transfer, .. }
            | Event::TransferPending { transfer, .. }
            | Event::TransferApproved { transfer, .. }
            | Event::TransferSent { transfer, .. }
            | Event::TransferReceived { transfer, .. }
            | Event::TransferEnded { transfer, .. } => Some(transfer),
            _ => None,
        }
    }

    /// The study commitment the event names, if any.
    #[must_use]
    pub fn study(&self) -> Option<&str> {
        match self {
            Event::TransferGranted { study, .. }
            | Event::TransferSent { study, .. }
            | Event::TransferReceived { study, .. }
            | Event::StudyLocked { study }
            | Event::StudyPurged { study, .. }
            | Event::StudyForwarded { study, .. }
            | Event::StudyImported { study, .. } => Some(study),
            Event::TransferRequested { study, .. } | Event::Accessed { study, .. } => study.as_deref(),
            _ => None,
        }
    }
}

/// One entry of a feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// [`LEDGER_VERSION`].
    pub v: u32,
    /// The author's Ed25519 public key.
    #[serde(with = "serde_bytes")]
    pub author: Vec<u8>,
    /// Position in the author's feed, from 1.
    pub seq: u64,
    /// Id of entry `seq - 1` (32 zero bytes for the first).
    #[serde(with = "serde_bytes")]
    pub prev: Vec<u8>,
    /// When (Unix seconds).
    pub time: i64,
    /// What.
    pub event: Event,
}

/// An entry with its envelope bytes and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedEntry {
    /// The entry.
    pub entry: Entry,
    /// Its signed envelope, as stored and sent.
    pub bytes: Vec<u8>,
    /// BLAKE3 of `bytes`.
    pub id: [u8; 32],
}

impl SignedEntry {
    /// The author's peer id.
    #[must_use]
    pub fn author_peer(&self) -> String {
        <[u8; 32]>::try_from(self.entry.author.as_slice())
            .ok()
            .and_then(|k| peer_id_of(&k).ok())
            .unwrap_or_default()
    }
}

/// Makes and signs the entry that follows `head` ((seq, id) of the author's
/// last entry, or `None` for the first).
///
/// # Errors
/// [`LedgerError::Invalid`] when encoding fails.
pub fn make_entry(
    identity: &Identity,
    head: Option<(u64, [u8; 32])>,
    time: i64,
    event: Event,
) -> Result<SignedEntry, LedgerError> {
    let (seq, prev) = match head {
        Some((s, id)) => (
            s.checked_add(1).ok_or_else(|| LedgerError::Invalid {
                entry: format!("seq {s}"),
                reason: RecordFault::FeedFull,
            })?,
            id,
        ),
        None => (1, [0u8; 32]),
    };
    let entry = Entry {
        v: LEDGER_VERSION,
        author: identity.ed25519_public().to_vec(),
        seq,
        prev: prev.to_vec(),
        time,
        event,
    };
    let invalid = |reason: RecordFault| LedgerError::Invalid {
        entry: format!("seq {seq}"),
        reason,
    };
    let payload = cbor::encode("ledger entry", &entry).map_err(|e| invalid(e.into()))?;
    let bytes = identity
        .sign(ENTRY_DOMAIN, payload)
        .to_bytes()
        .map_err(|e| invalid(e.into()))?;
    let id = *blake3::hash(&bytes).as_bytes();
    Ok(SignedEntry { entry, bytes, id })
}

/// Opens an entry: envelope (at most [`MAX_ENTRY`]), domain, signature, the
/// entry (version 1), the signer is the entry's author, and envelope and
/// entry are in the one encoding this crate writes.
///
/// # Errors
/// [`LedgerError::Invalid`] saying why.
pub fn open_entry(bytes: &[u8]) -> Result<SignedEntry, LedgerError> {
    let id = *blake3::hash(bytes).as_bytes();
    let invalid = |reason: RecordFault| LedgerError::Invalid {
        entry: hex::encode(&id[..8]),
        reason,
    };
    if bytes.len() > MAX_ENTRY {
        return Err(invalid(RecordFault::TooLarge {
            len: bytes.len(),
            max: MAX_ENTRY,
        }));
    }
    let env = SignedEnvelope::from_bytes(bytes).map_err(|e| invalid(e.into()))?;
    let (signer, payload) = env.verify(ENTRY_DOMAIN).map_err(|e| invalid(e.into()))?;
    let entry: Entry = cbor::decode("ledger entry", payload, MAX_ENTRY).map_err(|e| invalid(e.into()))?;
    cbor::check_version("ledger entry", entry.v, LEDGER_VERSION).map_err(|e| invalid(e.into()))?;
    if entry.author != signer {
        return Err(invalid(RecordFault::NotSignedByAuthor));
    }
    // One encoding per entry: the id names the content, so a relayed copy
    // re-encoded differently (CBOR allows it) cannot pass for another entry
    // of the same author and seq (a false equivocation).
    let canonical_payload = cbor::encode("ledger entry", &entry).map_err(|e| invalid(e.into()))?;
    if canonical_payload != payload || env.to_bytes().map_err(|e| invalid(e.into()))? != bytes {
        return Err(invalid(RecordFault::NotCanonical));
    }
    if entry.seq == 0 || entry.prev.len() != 32 {
        return Err(invalid(RecordFault::BadLink));
    }
    if entry.seq == 1 && entry.prev != [0u8; 32] {
        return Err(invalid(RecordFault::FirstNamesPrevious));
    }
    Ok(SignedEntry {
        entry,
        bytes: bytes.to_vec(),
        id,
    })
}

/// Checks that `next` follows `prev` in one author's feed.
///
/// # Errors
/// [`LedgerError::Chain`] naming the break.
pub fn check_link(prev: &SignedEntry, next: &SignedEntry) -> Result<(), LedgerError> {
    let chain = |reason: ChainBreak| LedgerError::Chain {
        author: next.author_peer(),
        reason,
    };
    if next.entry.author != prev.entry.author {
        return Err(chain(ChainBreak::TwoAuthors));
    }
    if prev.entry.seq.checked_add(1) != Some(next.entry.seq) {
        return Err(chain(ChainBreak::Gap {
            prev: prev.entry.seq,
            next: next.entry.seq,
        }));
    }
    if next.entry.prev != prev.id {
        return Err(chain(ChainBreak::WrongPrevious {
            prev: prev.entry.seq,
            next: next.entry.seq,
        }));
    }
    Ok(())
}

/// The salted commitment of a study: `BLAKE3-derive_key(COMMITMENT_CONTEXT,
/// salt || study UID)`. Only a node holding the salt can tell which study it
/// names; erasing the salt makes every reference to it meaningless.
#[must_use]
pub fn commitment(salt: &[u8; 32], study_uid: &str) -> [u8; 32] {
    let mut material = Vec::with_capacity(32 + study_uid.len());
    material.extend_from_slice(salt);
    material.extend_from_slice(study_uid.as_bytes());
    blake3::derive_key(COMMITMENT_CONTEXT, &material)
}
