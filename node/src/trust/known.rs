//! The peers this node met: one row per peer in the trust table, under
//! `known/<peer id>`, holding the last hello it accepted from that peer
//! (its node record and certificates), the addresses it was reached at and
//! when. The network reads them at start (to dial them again) and writes one
//! on every accepted hello; transfers, consent and the ledger read the hello
//! of a peer met to judge it. The row's CBOR is fixed (version 1).

use serde::{Deserialize, Serialize};

use crate::cbor::{self, CodecError};
use crate::store::{Store, StoreError};

/// Trust-table key prefix of peers met.
pub const KNOWN_PREFIX: &str = "known/";

/// Largest row read (twice the largest hello the network accepts).
pub const MAX_ROW: usize = 2 * 64 * 1024;

/// The row (CBOR, version 1).
#[derive(Serialize, Deserialize)]
struct KnownRow {
    v: u32,
    #[serde(with = "serde_bytes")]
    hello: Vec<u8>,
    addrs: Vec<String>,
    last_seen: i64,
}

/// A peer met, as its row holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownPeer {
    /// The row's key (`known/<peer id>`).
    pub key: String,
    /// The peer id, as the key names it.
    pub peer: String,
    /// The last hello accepted from it (its encoding).
    pub hello: Vec<u8>,
    /// Addresses it was reached at, newest first.
    pub addrs: Vec<String>,
    /// When its hello was last accepted (Unix seconds).
    pub last_seen: i64,
}

/// Errors of the known-peer rows.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KnownError {
    /// The trust table could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A row could not be encoded.
    #[error(transparent)]
    Encode(#[from] CodecError),
}

fn key(peer: &str) -> String {
    format!("{KNOWN_PREFIX}{peer}")
}

fn decode(bytes: &[u8]) -> Result<KnownRow, CodecError> {
    cbor::decode::<KnownRow>("known peer", bytes, MAX_ROW)
}

/// Every peer met; a row that does not decode is skipped (and logged).
///
/// # Errors
/// Store errors.
pub fn load(store: &Store) -> Result<Vec<KnownPeer>, StoreError> {
    let mut out = Vec::new();
    for (key, bytes) in store.trust_records(KNOWN_PREFIX)? {
        match decode(&bytes) {
            Ok(row) => out.push(KnownPeer {
                peer: key.trim_start_matches(KNOWN_PREFIX).to_string(),
                key,
                hello: row.hello,
                addrs: row.addrs,
                last_seen: row.last_seen,
            }),
            Err(_) => tracing::warn!(record = %key, "skipping a damaged known-peer record"),
        }
    }
    Ok(out)
}

/// The last hello accepted from `peer` (its encoding), if its row reads.
///
/// # Errors
/// Store errors.
pub fn hello_of(store: &Store, peer: &str) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(store
        .trust_get(&key(peer))?
        .and_then(|bytes| decode(&bytes).ok())
        .map(|row| row.hello))
}

/// The row of a peer whose hello (`hello`, encoded) was accepted at
/// `last_seen`, reached at `addrs`: its key and bytes.
///
/// # Errors
/// [`KnownError::Encode`].
pub fn row(peer: &str, hello: Vec<u8>, addrs: Vec<String>, last_seen: i64) -> Result<(String, Vec<u8>), KnownError> {
    let row = KnownRow {
        v: 1,
        hello,
        addrs,
        last_seen,
    };
    Ok((key(peer), cbor::encode("known peer", &row)?))
}

/// Writes a row made by [`row`].
///
/// # Errors
/// Store errors.
pub fn save(store: &Store, key: &str, row: &[u8]) -> Result<(), StoreError> {
    store.trust_put(key, row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_bytes_are_stable() {
        let (k, bytes) = row(
            "12D3KooW",
            vec![1, 2, 3],
            vec!["/ip4/10.0.0.1/tcp/7460".into()],
            1_700_000_000,
        )
        .unwrap();
        assert_eq!(k, "known/12D3KooW");
        let back = decode(&bytes).unwrap();
        assert_eq!((back.v, back.hello, back.last_seen), (1, vec![1, 2, 3], 1_700_000_000));
        // Field order and byte-string encoding of the hello are the format.
        assert_eq!(
            hex::encode(&bytes),
            "a46176016568656c6c6f430102036561646472738176".to_string()
                + &hex::encode("/ip4/10.0.0.1/tcp/7460")
                + "696c6173745f7365656e1a6553f100"
        );
    }
}
