//! `/medmesh/ledger/1`: how nodes catch up on each other's feeds. Every few
//! seconds, and when a peer's hello is accepted, a node asks each trusted
//! peer for the heads of the feeds it holds, then for the entries it lacks,
//! in batches (PROTOCOL.md §14.4).

use serde::{Deserialize, Serialize};

use super::{LEDGER_VERSION, MessageError};
use crate::cbor;

/// The protocol name.
pub const SYNC_PROTOCOL: &str = "/medmesh/ledger/1";
/// Largest request or response (bytes).
pub const MAX_SYNC: usize = 8 * 1024 * 1024;
/// Most entries asked for or sent at once.
pub const BATCH: u64 = 64;
/// Most heads in one answer.
pub const MAX_HEADS: usize = 10_000;

/// The head of one feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    /// The author's Ed25519 key.
    #[serde(with = "serde_bytes")]
    pub author: Vec<u8>,
    /// Its last seq held.
    pub seq: u64,
    /// That entry's id.
    #[serde(with = "serde_bytes")]
    pub id: Vec<u8>,
}

/// A request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum SyncRequest {
    /// The heads of every feed the peer holds.
    Heads {
        /// [`LEDGER_VERSION`].
        v: u32,
    },
    /// Entries `from ..= from + limit - 1` of `author`'s feed.
    Range {
        /// [`LEDGER_VERSION`].
        v: u32,
        /// The author's Ed25519 key.
        #[serde(with = "serde_bytes")]
        author: Vec<u8>,
        /// First seq.
        from: u64,
        /// How many (at most [`BATCH`]).
        limit: u64,
    },
    /// The revocations of a consortium the peer applied, unless their
    /// summary digest is `digest` (PROTOCOL.md §7.4).
    Revocations {
        /// [`LEDGER_VERSION`].
        v: u32,
        /// Consortium id.
        consortium: String,
        /// The asker's [`crate::trust::RevocationSummary`] digest for it (empty when it has none).
        #[serde(with = "serde_bytes")]
        digest: Vec<u8>,
    },
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum SyncResponse {
    /// The heads.
    Heads {
        /// [`LEDGER_VERSION`].
        v: u32,
        /// One per feed.
        heads: Vec<Head>,
    },
    /// Entries, in seq order (each its signed envelope).
    Entries {
        /// [`LEDGER_VERSION`].
        v: u32,
        /// The envelopes.
        entries: Vec<serde_bytes::ByteBuf>,
        /// The author's hello (signed node record and membership
        /// certificates) when the responder holds it, so that a node can
        /// take entries of a member it never met (PROTOCOL.md §14.4).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        credentials: Option<serde_bytes::ByteBuf>,
    },
    /// The revocations asked for (each as its admins signed it), empty when
    /// the asker's digest was the responder's.
    Revocations {
        /// [`LEDGER_VERSION`].
        v: u32,
        /// Consortium id.
        consortium: String,
        /// The revocations.
        revocations: Vec<serde_bytes::ByteBuf>,
    },
    /// Not answered.
    Refused {
        /// [`LEDGER_VERSION`].
        v: u32,
        /// Why (cleaned and capped on decoding: [`crate::text::clean`]).
        #[serde(deserialize_with = "crate::text::de::reason")]
        text: String,
    },
}

fn version_of_request(r: &SyncRequest) -> u32 {
    match r {
        SyncRequest::Heads { v } | SyncRequest::Range { v, .. } | SyncRequest::Revocations { v, .. } => *v,
    }
}

fn version_of_response(r: &SyncResponse) -> u32 {
    match r {
        SyncResponse::Heads { v, .. }
        | SyncResponse::Entries { v, .. }
        | SyncResponse::Revocations { v, .. }
        | SyncResponse::Refused { v, .. } => *v,
    }
}

/// Decodes a request (at most [`MAX_SYNC`] bytes, version 1).
///
/// # Errors
/// [`MessageError::Codec`].
pub fn decode_request(bytes: &[u8]) -> Result<SyncRequest, MessageError> {
    let r: SyncRequest = cbor::decode("ledger sync request", bytes, MAX_SYNC)?;
    cbor::check_version("ledger sync request", version_of_request(&r), LEDGER_VERSION)?;
    Ok(r)
}

/// Decodes a response (at most [`MAX_SYNC`] bytes, version 1).
///
/// # Errors
/// [`MessageError`].
pub fn decode_response(bytes: &[u8]) -> Result<SyncResponse, MessageError> {
    let r: SyncResponse = cbor::decode("ledger sync response", bytes, MAX_SYNC)?;
    cbor::check_version("ledger sync response", version_of_response(&r), LEDGER_VERSION)?;
    if let SyncResponse::Heads { heads, .. } = &r
        && heads.len() > MAX_HEADS
    {
        return Err(MessageError::TooManyHeads {
            count: heads.len(),
            max: MAX_HEADS,
        });
    }
    if let SyncResponse::Entries { entries, .. } = &r
        && entries.len() as u64 > BATCH
    {
        return Err(MessageError::TooManyEntries {
            count: entries.len(),
            max: BATCH,
        });
    }
    Ok(r)
}
