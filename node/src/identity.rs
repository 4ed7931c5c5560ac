//! Node identity: the Ed25519 identity key (which is also the libp2p PeerId),
//! the X25519 static key for end-to-end encryption, and the signed
//! [`NodeRecord`] that introduces a node to others.
//!
//! Signed messages use one envelope, [`SignedEnvelope`]: the payload bytes
//! exactly as signed, a domain string naming what the payload is, the
//! signer's public key and an Ed25519 signature over
//! `"medmesh/v1/envelope" || 0x00 || domain || 0x00 || payload`. Signatures
//! always cover the bytes as received, never a re-encoding.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey as X25519Public, StaticSecret};
use zeroize::Zeroizing;

use crate::cbor::{self, CodecError};

/// Version of the [`NodeRecord`] format.
pub const NODE_RECORD_VERSION: u32 = 1;
/// Version of the [`SignedEnvelope`] format.
pub const ENVELOPE_VERSION: u32 = 1;
/// Domain of a signed node record.
pub const NODE_RECORD_DOMAIN: &str = "medmesh/v1/node-record";
/// Largest encoded envelope accepted (64 KiB).
pub const MAX_ENVELOPE_LEN: usize = 64 * 1024;
const SIGNATURE_LABEL: &[u8] = b"medmesh/v1/envelope";

/// Errors of identity handling.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A key has the wrong length or is not a valid curve point.
    #[error("invalid {what} key: {reason}")]
    BadKey {
        /// Which key.
        what: &'static str,
        /// Why.
        reason: KeyFault,
    },
    /// A signature does not verify.
    #[error("signature on {domain} does not verify")]
    BadSignature {
        /// What was signed.
        domain: String,
    },
    /// An envelope holds a different kind of payload than expected.
    #[error("expected a signed {expected}, found a signed {found}")]
    WrongDomain {
        /// What the caller expected.
        expected: &'static str,
        /// What the envelope says.
        found: String,
    },
    /// A node record contradicts its own keys.
    #[error("node record is inconsistent: {0}")]
    Inconsistent(Inconsistency),
    /// The jurisdiction is not an assigned ISO 3166-1 alpha-2 code.
    #[error("invalid jurisdiction: {code:?} is not an assigned ISO 3166-1 alpha-2 code such as DE or FR: {source}")]
    BadJurisdiction {
        /// The code given.
        code: String,
        /// The parser's reason.
        source: consent_schema::IdError,
    },
    /// Encoding or decoding failed.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Why a key is refused ([`IdentityError::BadKey`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFault {
    /// It is not 32 bytes long.
    #[error("must be 32 bytes")]
    Length,
    /// The system's random source failed while making it.
    #[error(transparent)]
    Random(getrandom::Error),
    /// libp2p does not take it.
    #[error(transparent)]
    Decoding(libp2p_identity::DecodingError),
    /// It is not a valid Ed25519 point.
    #[error(transparent)]
    Curve(ed25519_dalek::SignatureError),
}

/// How a node record contradicts its keys ([`IdentityError::Inconsistent`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Inconsistency {
    /// The record's key is not the key signing it.
    #[error("record key is not the signer's key")]
    NotSignersKey,
    /// The record is signed by a key other than its own.
    #[error("signed by a key other than the record's")]
    SignedByOther,
    /// The record's peer id does not derive from its key.
    #[error("peer id {peer_id} does not derive from the record's key")]
    PeerId {
        /// The peer id the record names.
        peer_id: String,
    },
    /// The home's identity key does not match its node record.
    #[error("the identity key does not match node-record.cbor")]
    HomeKey,
}

/// The node's secret keys. Zeroized on drop, never printed.
pub struct Identity {
    signing: SigningKey,
    x25519: StaticSecret,
    /// The libp2p PeerId of `signing`'s public key.
    peer: libp2p_identity::PeerId,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("peer_id", &self.peer_id())
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Fresh random keys.
    ///
    /// # Errors
    /// [`IdentityError::BadKey`] if the OS RNG fails.
    pub fn generate() -> Result<Self, IdentityError> {
        let mut ed = Zeroizing::new([0u8; 32]);
        let mut x = Zeroizing::new([0u8; 32]);
        for buf in [&mut ed, &mut x] {
            getrandom::fill(&mut buf[..]).map_err(|e| IdentityError::BadKey {
                what: "random",
                reason: KeyFault::Random(e),
            })?;
        }
        Self::from_keys(SigningKey::from_bytes(&ed), StaticSecret::from(*x))
    }

    fn from_keys(signing: SigningKey, x25519: StaticSecret) -> Result<Self, IdentityError> {
        let peer = peer_of(&signing.verifying_key().to_bytes())?;
        Ok(Self { signing, x25519, peer })
    }

    /// Rebuilds an identity from its secret key bytes.
    ///
    /// # Errors
    /// [`IdentityError::BadKey`] when a secret is not 32 bytes.
    pub fn from_secrets(ed25519: &[u8], x25519: &[u8]) -> Result<Self, IdentityError> {
        let ed: Zeroizing<[u8; 32]> = Zeroizing::new(ed25519.try_into().map_err(|_| bad_len("Ed25519 secret"))?);
        let x: Zeroizing<[u8; 32]> = Zeroizing::new(x25519.try_into().map_err(|_| bad_len("X25519 secret"))?);
        Self::from_keys(SigningKey::from_bytes(&ed), StaticSecret::from(*x))
    }

    /// The Ed25519 secret key bytes, for sealing into the key file only.
    #[must_use]
    pub fn ed25519_secret(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_bytes())
    }

    /// The X25519 secret key bytes, for sealing into the key file only.
    #[must_use]
    pub fn x25519_secret(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.x25519.to_bytes())
    }

    /// The Ed25519 public key.
    #[must_use]
    pub fn ed25519_public(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// The X25519 public key.
    #[must_use]
    pub fn x25519_public(&self) -> [u8; 32] {
        X25519Public::from(&self.x25519).to_bytes()
    }

    /// The libp2p PeerId of this node, as base58 text.
    #[must_use]
    pub fn peer_id(&self) -> String {
        self.peer().to_base58()
    }

    /// The libp2p PeerId of this node.
    #[must_use]
    pub fn peer(&self) -> libp2p_identity::PeerId {
        self.peer
    }

    /// The libp2p keypair of this identity (same Ed25519 key).
    ///
    /// # Errors
    /// [`IdentityError::BadKey`] (not expected: the key is valid by construction).
    pub fn libp2p_keypair(&self) -> Result<libp2p_identity::Keypair, IdentityError> {
        let mut secret = self.ed25519_secret();
        libp2p_identity::Keypair::ed25519_from_bytes(&mut secret[..]).map_err(|e| IdentityError::BadKey {
            what: "Ed25519",
            reason: KeyFault::Decoding(e),
        })
    }

    /// Signs `payload` as a message of kind `domain`.
    ///
    /// # Errors
    /// Never in practice; kept fallible for encoding.
    pub fn sign(&self, domain: &str, payload: Vec<u8>) -> SignedEnvelope {
        let signature = self.signing.sign(&signing_input(domain, &payload));
        SignedEnvelope {
            v: ENVELOPE_VERSION,
            domain: domain.into(),
            payload,
            signer: self.ed25519_public().to_vec(),
            signature: signature.to_bytes().to_vec(),
        }
    }
}

fn bad_len(what: &'static str) -> IdentityError {
    IdentityError::BadKey {
        what,
        reason: KeyFault::Length,
    }
}

/// The libp2p PeerId (base58) of an Ed25519 public key.
///
/// # Errors
/// [`IdentityError::BadKey`] when the bytes are not an Ed25519 public key.
pub fn peer_id_of(ed25519_public: &[u8; 32]) -> Result<String, IdentityError> {
    peer_of(ed25519_public).map(|p| p.to_base58())
}

/// The libp2p PeerId of an Ed25519 public key.
///
/// # Errors
/// [`IdentityError::BadKey`] when the bytes are not an Ed25519 public key.
pub fn peer_of(ed25519_public: &[u8; 32]) -> Result<libp2p_identity::PeerId, IdentityError> {
    let pk =
        libp2p_identity::ed25519::PublicKey::try_from_bytes(ed25519_public).map_err(|e| IdentityError::BadKey {
            what: "Ed25519 public",
            reason: KeyFault::Decoding(e),
        })?;
    Ok(libp2p_identity::PublicKey::from(pk).to_peer_id())
}

/// The Ed25519 public key of a 32-byte secret key.
#[must_use]
pub fn ed25519_public_of(secret: &[u8; 32]) -> [u8; 32] {
    SigningKey::from_bytes(secret).verifying_key().to_bytes()
}

/// Signs `payload` as a message of kind `domain` with a raw Ed25519 secret
/// key (consortium admin keys), over the same domain-separated input as
/// [`SignedEnvelope`].
#[must_use]
pub fn sign_raw(secret: &[u8; 32], domain: &str, payload: &[u8]) -> [u8; 64] {
    SigningKey::from_bytes(secret)
        .sign(&signing_input(domain, payload))
        .to_bytes()
}

/// Verifies a signature made by [`sign_raw`] (strict Ed25519 verification).
///
/// # Errors
/// [`IdentityError::BadKey`] for a malformed key, [`IdentityError::BadSignature`].
pub fn verify_raw(public: &[u8], domain: &str, payload: &[u8], signature: &[u8]) -> Result<(), IdentityError> {
    let key: [u8; 32] = public.try_into().map_err(|_| bad_len("signer"))?;
    let key = VerifyingKey::from_bytes(&key).map_err(|e| IdentityError::BadKey {
        what: "signer",
        reason: KeyFault::Curve(e),
    })?;
    let sig: [u8; 64] = signature
        .try_into()
        .map_err(|_| IdentityError::BadSignature { domain: domain.into() })?;
    key.verify_strict(&signing_input(domain, payload), &Signature::from_bytes(&sig))
        .map_err(|_| IdentityError::BadSignature { domain: domain.into() })
}

fn signing_input(domain: &str, payload: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SIGNATURE_LABEL.len() + domain.len() + payload.len() + 2);
    msg.extend_from_slice(SIGNATURE_LABEL);
    msg.push(0);
    msg.extend_from_slice(domain.as_bytes());
    msg.push(0);
    msg.extend_from_slice(payload);
    msg
}

/// A signed message: payload bytes as signed, what they are, who signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedEnvelope {
    /// Envelope format version.
    pub v: u32,
    /// What the payload is (for example [`NODE_RECORD_DOMAIN`]).
    pub domain: String,
    /// The payload bytes exactly as signed (CBOR of the record).
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// The signer's Ed25519 public key.
    #[serde(with = "serde_bytes")]
    pub signer: Vec<u8>,
    /// Ed25519 signature over the domain-separated payload.
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl SignedEnvelope {
    /// Encodes the envelope as CBOR.
    ///
    /// # Errors
    /// [`IdentityError::Codec`] (not expected).
    pub fn to_bytes(&self) -> Result<Vec<u8>, IdentityError> {
        Ok(cbor::encode("signed envelope", self)?)
    }

    /// Decodes an envelope (signature not yet checked).
    ///
    /// # Errors
    /// [`IdentityError::Codec`] for oversize, malformed, trailing or unknown-version input.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdentityError> {
        let env: SignedEnvelope = cbor::decode("signed envelope", bytes, MAX_ENVELOPE_LEN)?;
        cbor::check_version("signed envelope", env.v, ENVELOPE_VERSION)?;
        Ok(env)
    }

    /// Checks the domain and the signature; returns the signer key and payload.
    ///
    /// # Errors
    /// [`IdentityError::WrongDomain`], [`IdentityError::BadKey`], [`IdentityError::BadSignature`].
    pub fn verify(&self, expected_domain: &'static str) -> Result<([u8; 32], &[u8]), IdentityError> {
        if self.domain != expected_domain {
            return Err(IdentityError::WrongDomain {
                expected: expected_domain,
                found: self.domain.clone(),
            });
        }
        let signer: [u8; 32] = self.signer.as_slice().try_into().map_err(|_| bad_len("signer"))?;
        let key = VerifyingKey::from_bytes(&signer).map_err(|e| IdentityError::BadKey {
            what: "signer",
            reason: KeyFault::Curve(e),
        })?;
        let sig: [u8; 64] = self
            .signature
            .as_slice()
            .try_into()
            .map_err(|_| IdentityError::BadSignature {
                domain: self.domain.clone(),
            })?;
        key.verify_strict(
            &signing_input(&self.domain, &self.payload),
            &Signature::from_bytes(&sig),
        )
        .map_err(|_| IdentityError::BadSignature {
            domain: self.domain.clone(),
        })?;
        Ok((signer, &self.payload))
    }
}

/// What a node says about itself, signed by its identity key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Format version ([`NODE_RECORD_VERSION`]).
    pub v: u32,
    /// libp2p PeerId (base58), derived from `ed25519`.
    pub peer_id: String,
    /// Ed25519 identity public key.
    #[serde(with = "serde_bytes")]
    pub ed25519: Vec<u8>,
    /// X25519 static public key for end-to-end encryption.
    #[serde(with = "serde_bytes")]
    pub x25519: Vec<u8>,
    /// Institution running the node (cleaned on decoding: [`crate::text::clean`]).
    #[serde(deserialize_with = "crate::text::de::name")]
    pub institution: String,
    /// ISO 3166-1 alpha-2 jurisdiction of the node.
    pub jurisdiction: String,
    /// Multiaddresses the node listens on (may be empty).
    pub addrs: Vec<String>,
    /// Creation time, seconds since the Unix epoch.
    pub created: i64,
}

impl NodeRecord {
    /// Signs this record with the identity that it describes.
    ///
    /// # Errors
    /// [`IdentityError::Inconsistent`] when the record is not this identity's.
    pub fn sign(&self, identity: &Identity) -> Result<SignedEnvelope, IdentityError> {
        if self.ed25519 != identity.ed25519_public() {
            return Err(IdentityError::Inconsistent(Inconsistency::NotSignersKey));
        }
        let payload = cbor::encode("node record", self)?;
        Ok(identity.sign(NODE_RECORD_DOMAIN, payload))
    }
}

/// A node record whose signature, keys and PeerId have been checked.
/// Only [`VerifiedNodeRecord::from_envelope`] builds one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedNodeRecord {
    record: NodeRecord,
    envelope: SignedEnvelope,
}

impl VerifiedNodeRecord {
    /// Verifies a signed node record: signature, signer = record key, PeerId
    /// derived from the key, X25519 key length, jurisdiction code.
    ///
    /// # Errors
    /// Any [`IdentityError`] naming what is wrong.
    pub fn from_envelope(envelope: SignedEnvelope) -> Result<Self, IdentityError> {
        let (signer, payload) = envelope.verify(NODE_RECORD_DOMAIN)?;
        let record: NodeRecord = cbor::decode("node record", payload, MAX_ENVELOPE_LEN)?;
        cbor::check_version("node record", record.v, NODE_RECORD_VERSION)?;
        if record.ed25519 != signer {
            return Err(IdentityError::Inconsistent(Inconsistency::SignedByOther));
        }
        if peer_id_of(&signer)? != record.peer_id {
            return Err(IdentityError::Inconsistent(Inconsistency::PeerId {
                peer_id: record.peer_id.clone(),
            }));
        }
        if record.x25519.len() != 32 {
            return Err(bad_len("X25519 public"));
        }
        check_jurisdiction(&record.jurisdiction)?;
        Ok(Self { record, envelope })
    }

    /// Decodes and verifies a signed node record file.
    ///
    /// # Errors
    /// As [`SignedEnvelope::from_bytes`] and [`VerifiedNodeRecord::from_envelope`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdentityError> {
        Self::from_envelope(SignedEnvelope::from_bytes(bytes)?)
    }

    /// The checked record.
    #[must_use]
    pub fn record(&self) -> &NodeRecord {
        &self.record
    }

    /// The envelope as received.
    #[must_use]
    pub fn envelope(&self) -> &SignedEnvelope {
        &self.envelope
    }
}

/// Checks an ISO 3166-1 alpha-2 code against the assigned codes (the same
/// list consent decisions use).
///
/// # Errors
/// [`IdentityError::BadField`] otherwise.
pub fn check_jurisdiction(code: &str) -> Result<(), IdentityError> {
    code.parse::<consent_schema::Jurisdiction>()
        .map(|_| ())
        .map_err(|source| IdentityError::BadJurisdiction {
            code: code.to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &Identity) -> NodeRecord {
        NodeRecord {
            v: NODE_RECORD_VERSION,
            peer_id: id.peer_id(),
            ed25519: id.ed25519_public().to_vec(),
            x25519: id.x25519_public().to_vec(),
            institution: "Test Clinic".into(),
            jurisdiction: "DE".into(),
            addrs: vec![],
            created: 1_700_000_000,
        }
    }

    #[test]
    fn node_record_signs_and_verifies() {
        let id = Identity::generate().unwrap();
        let env = record(&id).sign(&id).unwrap();
        let bytes = env.to_bytes().unwrap();
        let v = VerifiedNodeRecord::from_bytes(&bytes).unwrap();
        assert_eq!(v.record().peer_id, id.peer_id());
        assert!(id.peer_id().starts_with("12D3KooW"));
        assert_eq!(
            id.libp2p_keypair().unwrap().public().to_peer_id().to_base58(),
            id.peer_id()
        );
    }

    #[test]
    fn tampering_is_refused() {
        let id = Identity::generate().unwrap();
        let other = Identity::generate().unwrap();
        let env = record(&id).sign(&id).unwrap();

        let mut bad = env.clone();
        bad.signature[0] ^= 1;
        assert!(matches!(
            VerifiedNodeRecord::from_envelope(bad),
            Err(IdentityError::BadSignature { .. })
        ));

        let mut bad = env.clone();
        let last = bad.payload.len() - 1;
        bad.payload[last] ^= 1;
        assert!(VerifiedNodeRecord::from_envelope(bad).is_err());

        let mut bad = env.clone();
        bad.domain = "medmesh/v1/other".into();
        assert!(matches!(
            VerifiedNodeRecord::from_envelope(bad),
            Err(IdentityError::WrongDomain { .. })
        ));

        // A record claiming another node's peer id, signed by its own key.
        let mut r = record(&id);
        r.peer_id = other.peer_id();
        let payload = cbor::encode("node record", &r).unwrap();
        let env = id.sign(NODE_RECORD_DOMAIN, payload);
        assert!(matches!(
            VerifiedNodeRecord::from_envelope(env),
            Err(IdentityError::Inconsistent(_))
        ));

        // A record of one key re-signed by another.
        let payload = cbor::encode("node record", &record(&id)).unwrap();
        let env = other.sign(NODE_RECORD_DOMAIN, payload);
        assert!(matches!(
            VerifiedNodeRecord::from_envelope(env),
            Err(IdentityError::Inconsistent(_))
        ));
    }

    #[test]
    fn trailing_bytes_and_junk_are_refused() {
        let id = Identity::generate().unwrap();
        let mut bytes = record(&id).sign(&id).unwrap().to_bytes().unwrap();
        bytes.push(0);
        assert!(VerifiedNodeRecord::from_bytes(&bytes).is_err());
        assert!(VerifiedNodeRecord::from_bytes(b"not cbor at all").is_err());
        assert!(VerifiedNodeRecord::from_bytes(&vec![0u8; MAX_ENVELOPE_LEN + 1]).is_err());
    }

    #[test]
    fn jurisdictions() {
        assert!(check_jurisdiction("DE").is_ok());
        for bad in ["de", "DEU", "", "D1", "XX", "UK"] {
            assert!(check_jurisdiction(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn debug_shows_no_secret() {
        let id = Identity::generate().unwrap();
        let s = format!("{id:?}");
        assert!(s.contains(&id.peer_id()));
        assert!(!s.contains(&hex::encode(&id.ed25519_secret()[..])));
    }
}
