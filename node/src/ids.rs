//! Ids of this node's records: transfers, transfer requests, ledger entries.
//!
//! Each is a newtype over its bytes (no alias, no bare `String`): parsing
//! ([`FromStr`]) is the way in from text, [`fmt::Display`] prints lower hex
//! as the node always has, and serde encodes the id as that same hex text,
//! so a record that held the id as a hex `String` encodes byte for byte as
//! before. Stores and hashes take the bytes ([`TransferId::as_bytes`]).
//! Peers are libp2p's [`PeerId`]: records and messages hold it as its base58
//! text, as they did when it was a `String` ([`peer_text`]); consent ids are
//! `consent_schema`'s.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A text that is not an id of the kind expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {text:?}: expected {digits} hex digits")]
pub struct ParseIdError {
    /// The kind of id (`transfer id`, `request id`, `ledger entry id`).
    pub what: &'static str,
    /// The text given.
    pub text: String,
    /// The hex digits an id of that kind has.
    pub digits: usize,
}

macro_rules! hex_id {
    ($(#[$meta:meta])* $name:ident, $len:literal, $what:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name([u8; $len]);

        impl $name {
            /// What this id is called in errors.
            pub const WHAT: &'static str = $what;

            /// The id of these bytes.
            #[must_use]
            pub const fn from_bytes(bytes: [u8; $len]) -> Self {
                $name(bytes)
            }

            /// Its bytes.
            #[must_use]
            pub const fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// Its bytes, by value.
            #[must_use]
            pub const fn to_bytes(self) -> [u8; $len] {
                self.0
            }
        }

        impl From<[u8; $len]> for $name {
            fn from(bytes: [u8; $len]) -> Self {
                $name(bytes)
            }
        }

        impl From<$name> for [u8; $len] {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl AsRef<[u8]> for $name {
            fn as_ref(&self) -> &[u8] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }

        /// Hex digits, either case, surrounding whitespace ignored.
        impl FromStr for $name {
            type Err = ParseIdError;

            fn from_str(s: &str) -> Result<Self, ParseIdError> {
                let bad = || ParseIdError {
                    what: $what,
                    text: s.to_string(),
                    digits: 2 * $len,
                };
                let bytes = hex::decode(s.trim()).map_err(|_| bad())?;
                <[u8; $len]>::try_from(bytes.as_slice()).map($name).map_err(|_| bad())
            }
        }

        /// As its lower-hex text (what the records held before the newtype).
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A peer: libp2p's id of a node's Ed25519 key.
pub use libp2p::PeerId;

/// A text read from a record or a message that is not a peer id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {text:?}: not a libp2p peer id (base58)")]
pub struct ParsePeerError {
    /// The field that held it (`peer`, `holder`, `recipient`).
    pub field: &'static str,
    /// The text found.
    pub text: String,
}

/// Parses the peer id `text`, read from `field`.
///
/// # Errors
///
/// [`ParsePeerError`] naming the field when `text` is not a peer id.
pub fn parse_peer(field: &'static str, text: &str) -> Result<PeerId, ParsePeerError> {
    text.parse().map_err(|_| ParsePeerError {
        field,
        text: text.to_owned(),
    })
}

/// Serde for a [`PeerId`] field as its base58 text, exactly what the field
/// held when it was a `String`: `#[serde(with = "crate::ids::peer_text::holder")]`.
/// One module per field name, so that a value that is not a peer id fails
/// decoding with a [`ParsePeerError`] naming the field.
pub mod peer_text {
    use super::{PeerId, parse_peer};
    use serde::{Deserialize, Deserializer, Serializer};

    fn serialize<S: Serializer>(peer: &PeerId, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(peer)
    }

    fn deserialize<'de, D: Deserializer<'de>>(field: &'static str, deserializer: D) -> Result<PeerId, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_peer(field, &text).map_err(serde::de::Error::custom)
    }

    macro_rules! field {
        ($($name:ident),*) => {$(
            /// Serde of a [`PeerId`] field of this name as its base58 text.
            pub mod $name {
                use super::PeerId;
                use serde::{Deserializer, Serializer};

                /// As its base58 text.
                ///
                /// # Errors
                ///
                /// As the serializer's.
                pub fn serialize<S: Serializer>(peer: &PeerId, serializer: S) -> Result<S::Ok, S::Error> {
                    super::serialize(peer, serializer)
                }

                /// From its base58 text.
                ///
                /// # Errors
                ///
                /// A [`super::super::ParsePeerError`] naming the field, or the deserializer's.
                pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<PeerId, D::Error> {
                    super::deserialize(stringify!($name), deserializer)
                }
            }
        )*};
    }

    field!(peer, holder, recipient, from_peer);
}

hex_id!(
    /// A transfer's id: 16 random bytes chosen by the side that records it
    /// first, printed as 32 hex digits.
    TransferId,
    16,
    "transfer id"
);

hex_id!(
    /// The id of a transfer request: 16 random bytes chosen by the requester,
    /// sent as 32 hex digits and echoed in the grant.
    RequestId,
    16,
    "request id"
);

hex_id!(
    /// A ledger entry's id: the BLAKE3 hash of its signed envelope, printed
    /// as 64 hex digits (`medmesh log show ID`).
    EntryId,
    32,
    "ledger entry id"
);

impl TransferId {
    /// A new random transfer id.
    ///
    /// # Errors
    /// The OS random generator failed.
    pub fn random() -> Result<Self, getrandom::Error> {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id)?;
        Ok(TransferId(id))
    }
}

impl RequestId {
    /// A new random request id.
    ///
    /// # Errors
    /// The OS random generator failed.
    pub fn random() -> Result<Self, getrandom::Error> {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id)?;
        Ok(RequestId(id))
    }
}

impl EntryId {
    /// The id of an entry: BLAKE3 of its signed envelope's bytes.
    #[must_use]
    pub fn of(envelope: &[u8]) -> Self {
        EntryId(*blake3::hash(envelope).as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::{EntryId, RequestId, TransferId};

    /// A record as it was: the id as a hex `String`.
    #[derive(Serialize, Deserialize)]
    struct Old {
        v: u32,
        id: String,
        others: Option<String>,
    }

    /// The same record with the newtype.
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct New<T> {
        v: u32,
        id: T,
        others: Option<T>,
    }

    /// Encodes a record holding `id` in CBOR and JSON and checks both
    /// against the record of the old representation, both ways.
    fn same_bytes<T>(id: T, hex_text: &str)
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug + Copy,
    {
        let old = Old {
            v: 1,
            id: hex_text.to_string(),
            others: Some(hex_text.to_string()),
        };
        let new = New {
            v: 1,
            id,
            others: Some(id),
        };
        let old_cbor = crate::cbor::encode("old", &old).unwrap();
        let new_cbor = crate::cbor::encode("new", &new).unwrap();
        assert_eq!(new_cbor, old_cbor);
        let back: New<T> = crate::cbor::decode("new", &old_cbor, 1 << 16).unwrap();
        assert_eq!(back, new);
        assert_eq!(serde_json::to_vec(&new).unwrap(), serde_json::to_vec(&old).unwrap());
    }

    #[test]
    fn transfer_id_encodes_as_the_hex_string_it_replaces() {
        let bytes: [u8; 16] = *b"0123456789abcdef";
        let id = TransferId::from(bytes);
        let text = hex::encode(bytes);
        assert_eq!(id.to_string(), text);
        assert_eq!(id.as_bytes(), &bytes);
        same_bytes(id, &text);
        // Exactly what an old record held: CBOR text string of 32 characters.
        let cbor = crate::cbor::encode("id", &id).unwrap();
        assert_eq!(cbor[..2], [0x78, 32]);
        assert_eq!(&cbor[2..], text.as_bytes());
    }

    #[test]
    fn request_id_encodes_as_the_hex_string_it_replaces() {
        let bytes: [u8; 16] = *b"fedcba9876543210";
        let id = RequestId::from(bytes);
        let text = hex::encode(bytes);
        assert_eq!(id.to_string(), text);
        same_bytes(id, &text);
    }

    #[test]
    fn entry_id_encodes_as_the_hex_string_it_replaces() {
        let envelope = b"a signed envelope";
        let id = EntryId::of(envelope);
        let text = blake3::hash(envelope).to_hex().to_string();
        assert_eq!(id.to_string(), text);
        assert_eq!(id.as_bytes(), blake3::hash(envelope).as_bytes());
        same_bytes(id, &text);
    }

    /// A record as it was: the peer as a base58 `String`.
    #[derive(Serialize, Deserialize)]
    struct OldPeer {
        holder: String,
    }

    /// The same record with a [`super::PeerId`].
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct NewPeer {
        #[serde(with = "super::peer_text::holder")]
        holder: super::PeerId,
    }

    #[test]
    fn a_peer_encodes_as_the_base58_string_it_replaces_and_a_bad_one_names_its_field() {
        let peer = crate::identity::Identity::from_secrets(&[0x11; 32], &[0x12; 32])
            .unwrap()
            .peer();
        let old = OldPeer {
            holder: peer.to_base58(),
        };
        let new = NewPeer { holder: peer };
        let old_cbor = crate::cbor::encode("old", &old).unwrap();
        assert_eq!(crate::cbor::encode("new", &new).unwrap(), old_cbor);
        assert_eq!(crate::cbor::decode::<NewPeer>("new", &old_cbor, 1 << 16).unwrap(), new);
        assert_eq!(serde_json::to_vec(&new).unwrap(), serde_json::to_vec(&old).unwrap());
        // Not a peer id: an error naming the field, not a panic.
        let bad = crate::cbor::encode(
            "old",
            &OldPeer {
                holder: "12D3KooWExamplePeer".into(),
            },
        )
        .unwrap();
        let e = crate::cbor::decode::<NewPeer>("record", &bad, 1 << 16)
            .unwrap_err()
            .to_string();
        // (The CBOR decoder's message quotes the text again, escaped.)
        assert!(
            e.contains("holder") && e.contains("12D3KooWExamplePeer") && e.contains("not a libp2p peer id"),
            "{e}"
        );
        let e = serde_json::from_str::<NewPeer>(r#"{"holder": ""}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("holder \"\": not a libp2p peer id"), "{e}");
    }

    #[test]
    fn parsing_takes_either_case_and_names_the_field() {
        let id: TransferId = " 000102030405060708090A0B0C0D0E0F\n".parse().unwrap();
        assert_eq!(id.as_bytes(), &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
        let e = "00".parse::<TransferId>().unwrap_err();
        assert_eq!(e.to_string(), "transfer id \"00\": expected 32 hex digits");
        let e = "zz".parse::<RequestId>().unwrap_err();
        assert_eq!(e.to_string(), "request id \"zz\": expected 32 hex digits");
        let e = "0011".parse::<EntryId>().unwrap_err();
        assert_eq!(e.to_string(), "ledger entry id \"0011\": expected 64 hex digits");
        // A record whose id is not hex does not decode.
        let old = Old {
            v: 1,
            id: "not an id".into(),
            others: None,
        };
        let bytes = crate::cbor::encode("old", &old).unwrap();
        assert!(crate::cbor::decode::<New<TransferId>>("new", &bytes, 1 << 16).is_err());
    }
}
