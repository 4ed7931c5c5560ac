//! The gossipsub side of `/medmesh/ledger/1` (PROTOCOL.md §14.5): new
//! entries go out to every member as soon as they are written, and each node
//! countersigns, every few seconds, the feed heads it holds (a *witness*),
//! so that an author showing one history to some peers and another to
//! others is caught wherever the two views meet.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::sync::Head;
use super::{LEDGER_VERSION, LedgerError, MAX_ENTRY, RecordFault};
use crate::cbor;
use crate::identity::{Identity, SignedEnvelope, peer_id_of};

/// The gossipsub topic.
pub const TOPIC: &str = "/medmesh/ledger/1";
/// Signature domain of a witness.
pub const WITNESS_DOMAIN: &str = "medmesh/v1/ledger-witness";
/// Most heads one witness names.
pub const MAX_WITNESS_HEADS: usize = 2000;
/// Largest witness envelope (bytes).
pub const MAX_WITNESS: usize = 192 * 1024;
/// Largest gossip message (bytes).
pub const MAX_GOSSIP: usize = MAX_WITNESS + 1024;

// An entry must fit in a gossip message with room to spare.
const _: () = assert!(MAX_ENTRY + 1024 <= MAX_GOSSIP);

/// A message on [`TOPIC`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum GossipMsg {
    /// A new entry (its signed envelope, as the author wrote it).
    Entry {
        /// [`LEDGER_VERSION`].
        v: u32,
        /// The envelope.
        entry: ByteBuf,
    },
    /// A countersignature of feed heads (a signed [`Witness`] envelope).
    Witness {
        /// [`LEDGER_VERSION`].
        v: u32,
        /// The envelope.
        witness: ByteBuf,
    },
    /// A consortium revocation ([`crate::trust::Revocation`], as its admins
    /// signed it), published by the member that applied it first and passed
    /// on only by members that verified its admin signatures (PROTOCOL.md §7.4).
    Revocation {
        /// [`LEDGER_VERSION`].
        v: u32,
        /// The revocation's bytes.
        revocation: ByteBuf,
    },
}

impl GossipMsg {
    /// Encodes.
    ///
    /// # Errors
    /// [`LedgerError::Invalid`] (CBOR).
    pub fn to_bytes(&self) -> Result<Vec<u8>, LedgerError> {
        cbor::encode("ledger gossip message", self).map_err(|e| LedgerError::Invalid {
            entry: "(gossip message)".into(),
            reason: e.into(),
        })
    }

    /// Decodes (at most [`MAX_GOSSIP`] bytes, version 1).
    ///
    /// # Errors
    /// [`cbor::CodecError`]: it does not decode, or is of another version.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, cbor::CodecError> {
        let m: Self = cbor::decode("ledger gossip message", bytes, MAX_GOSSIP)?;
        let v = match &m {
            Self::Entry { v, .. } | Self::Witness { v, .. } | Self::Revocation { v, .. } => *v,
        };
        cbor::check_version("ledger gossip message", v, LEDGER_VERSION)?;
        Ok(m)
    }
}

/// What a witness says: at `time`, `witness` held these feed heads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Witness {
    /// [`LEDGER_VERSION`].
    pub v: u32,
    /// The witness's Ed25519 key.
    #[serde(with = "serde_bytes")]
    pub witness: Vec<u8>,
    /// Unix seconds.
    pub time: i64,
    /// One per feed, by author key, authors unique.
    pub heads: Vec<Head>,
}

/// A witness as signed, with its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedWitness {
    /// The statement.
    pub witness: Witness,
    /// The envelope, as signed.
    pub bytes: Vec<u8>,
}

impl SignedWitness {
    /// The witness's key.
    ///
    /// # Panics
    /// Never: [`open_witness`] and [`make_witness`] only make 32-byte keys.
    #[must_use]
    pub fn key(&self) -> [u8; 32] {
        let mut k = [0u8; 32];
        if self.witness.witness.len() == 32 {
            k.copy_from_slice(&self.witness.witness);
        }
        k
    }

    /// The witness's peer id (text).
    #[must_use]
    pub fn peer(&self) -> String {
        peer_id_of(&self.key()).unwrap_or_else(|_| hex::encode(&self.witness.witness))
    }
}

fn invalid(reason: impl Into<RecordFault>) -> LedgerError {
    LedgerError::Witness { reason: reason.into() }
}

fn check_heads(heads: &[Head]) -> Result<(), LedgerError> {
    if heads.len() > MAX_WITNESS_HEADS {
        return Err(invalid(RecordFault::TooManyHeads {
            count: heads.len(),
            max: MAX_WITNESS_HEADS,
        }));
    }
    for (i, h) in heads.iter().enumerate() {
        if h.author.len() != 32 || h.id.len() != 32 || h.seq == 0 {
            return Err(invalid(RecordFault::MalformedHead { index: i }));
        }
        if i > 0 && heads[i - 1].author >= h.author {
            return Err(invalid(RecordFault::HeadOrder { index: i }));
        }
    }
    Ok(())
}

/// Signs a witness of `heads` (sorted here by author).
///
/// # Errors
/// [`LedgerError::Witness`] when there are too many heads or one is malformed.
pub fn make_witness(identity: &Identity, time: i64, mut heads: Vec<Head>) -> Result<SignedWitness, LedgerError> {
    heads.sort_by(|a, b| a.author.cmp(&b.author));
    check_heads(&heads)?;
    let witness = Witness {
        v: LEDGER_VERSION,
        witness: identity.ed25519_public().to_vec(),
        time,
        heads,
    };
    let payload = cbor::encode("ledger witness", &witness).map_err(invalid)?;
    let bytes = identity.sign(WITNESS_DOMAIN, payload).to_bytes().map_err(invalid)?;
    Ok(SignedWitness { witness, bytes })
}

/// Opens a witness: envelope (at most [`MAX_WITNESS`]), domain, signature,
/// version, signer is the witness, heads well formed.
///
/// # Errors
/// [`LedgerError::Witness`] saying why.
pub fn open_witness(bytes: &[u8]) -> Result<SignedWitness, LedgerError> {
    if bytes.len() > MAX_WITNESS {
        return Err(invalid(RecordFault::TooLarge {
            len: bytes.len(),
            max: MAX_WITNESS,
        }));
    }
    let env = SignedEnvelope::from_bytes(bytes).map_err(invalid)?;
    let (signer, payload) = env.verify(WITNESS_DOMAIN).map_err(invalid)?;
    let witness: Witness = cbor::decode("ledger witness", payload, MAX_WITNESS).map_err(invalid)?;
    cbor::check_version("ledger witness", witness.v, LEDGER_VERSION).map_err(invalid)?;
    if witness.witness != signer {
        return Err(invalid(RecordFault::NotSignedByWitness));
    }
    check_heads(&witness.heads)?;
    Ok(SignedWitness {
        witness,
        bytes: bytes.to_vec(),
    })
}
