//! Trust: consortia, membership certificates, revocations, bilateral trust
//! and blocks, and the one question the rest of the node asks: is this peer
//! trusted, and for what?
//!
//! - A [`Consortium`] is a name, a list of admin Ed25519 keys and a
//!   threshold k. Its id is a hash of those contents, so a descriptor cannot
//!   be changed without changing its id. Sites install it out of band
//!   (`medmesh trust join`), as they would a CA certificate.
//! - A [`Certificate`] admits one node: its payload names the node's peer id,
//!   keys, institution, jurisdiction, allowed purposes and validity period,
//!   and carries signatures of the consortium's admins. It is valid only with
//!   at least k valid signatures of distinct admins of that consortium. For a
//!   cross-border consortium k > 1 means no single member admits others.
//! - A [`Revocation`] names a certificate serial or a peer. It needs the
//!   consortium's `revocation_threshold` valid signatures of distinct admins
//!   (one unless the descriptor says otherwise, descriptor version 2), so
//!   that where the consortium chose more, one rogue admin cannot cut every
//!   member off. Revocations spread to every member by themselves (gossip and
//!   catch-up, docs/PROTOCOL.md §7.4), each member checking them here.
//! - Bilateral trust is a site admin trusting one peer's signed node record
//!   directly; a block refuses a peer whatever else says.
//!
//! [`decide`] answers per request (zero trust): blocked first, then
//! bilateral trust, then each presented certificate (consortium known,
//! signatures and threshold, validity period, subject = the peer, not
//! revoked). Every refusal carries a [`Refusal`] with a stable code and a
//! sentence an admin understands.
//!
//! Signatures use the domain-separated input of [`crate::identity`], with
//! domains [`CERTIFICATE_DOMAIN`] and [`REVOCATION_DOMAIN`]. Formats:
//! docs/PROTOCOL.md §7.

use std::collections::BTreeSet;
use std::fmt;

use consent_schema::Purpose;
use serde::{Deserialize, Serialize};

use crate::cbor::{self, CodecError};
use crate::identity::{self, IdentityError, VerifiedNodeRecord};

pub mod hello;
pub mod known;
pub mod service;

/// Version of the consortium, certificate and revocation formats.
pub const TRUST_VERSION: u32 = 1;
/// Version of a consortium descriptor whose revocations need more than one
/// admin signature (it carries `revocation_threshold`). A descriptor of
/// version [`TRUST_VERSION`] has no such field: one signature suffices.
pub const CONSORTIUM_VERSION_REVOCATION_THRESHOLD: u32 = 2;
/// Signature domain of membership certificates.
pub const CERTIFICATE_DOMAIN: &str = "medmesh/v1/membership-certificate";
/// Signature domain of revocations.
pub const REVOCATION_DOMAIN: &str = "medmesh/v1/revocation";
/// Largest encoded consortium, certificate or revocation accepted.
pub const MAX_TRUST_RECORD: usize = 64 * 1024;
/// Most admins a consortium may have.
pub const MAX_ADMINS: usize = 32;
const CONSORTIUM_ID_CONTEXT: &str = "medmesh/v1/consortium id";

/// Errors of building or decoding trust records (not trust decisions: those are [`Refusal`]s).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// A field is not acceptable.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// Which field.
        field: &'static str,
        /// Why.
        reason: TrustFault,
    },
    /// Decoding failed.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A key or signature is malformed.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A revocation has fewer valid admin signatures than its consortium requires.
    #[error(
        "the revocation has {valid} valid admin signature(s), the consortium requires {threshold}{}",
        if *invalid > 0 { format!(" ({invalid} signature(s) did not verify or are not an admin's)") } else { String::new() }
    )]
    RevocationBelowThreshold {
        /// Valid signatures of distinct admins.
        valid: u32,
        /// Signatures that failed to verify or are not of an admin.
        invalid: u32,
        /// The consortium's revocation threshold.
        threshold: u32,
    },
}

/// Why a field of a trust document is refused ([`TrustError::Invalid`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustFault {
    /// The consortium's name is empty or too long.
    #[error("must be 1 to 200 characters")]
    NameLength,
    /// No admins, or too many.
    #[error("must be 1 to {max} keys")]
    AdminCount {
        /// The most admins a consortium has.
        max: usize,
    },
    /// Two admin keys are the same, or one is not 32 bytes.
    #[error("must be distinct 32-byte Ed25519 keys")]
    AdminKeys,
    /// A threshold is 0 or above the number of admins.
    #[error("must be from 1 to {admins} (the number of admins)")]
    Threshold {
        /// The number of admins.
        admins: usize,
    },
    /// The descriptor's version cannot carry its revocation threshold.
    #[error("a version {version} descriptor cannot require {threshold} revocation signature(s)")]
    VersionThreshold {
        /// The descriptor's version.
        version: u32,
        /// Its revocation threshold.
        threshold: u32,
    },
    /// The id does not match the descriptor's contents.
    #[error("does not match the descriptor's contents (altered descriptor)")]
    IdMismatch,
    /// A certificate names no purpose.
    #[error("at least one purpose")]
    NoPurpose,
    /// A certificate's validity ends before it starts.
    #[error("must end after it starts")]
    Validity,
    /// A revocation gives no reason.
    #[error("a revocation needs a reason")]
    NoReason,
    /// The key is not an admin key of the consortium.
    #[error("is not an admin key of this consortium")]
    NotAnAdmin,
    /// The admin has signed the document already.
    #[error("has already signed this {document}")]
    AlreadySigned {
        /// Which document (certificate, revocation).
        document: &'static str,
    },
    /// The document is of another consortium.
    #[error("the {document} is for consortium {of}, not {expected}")]
    OtherConsortium {
        /// Which document (certificate, revocation).
        document: &'static str,
        /// The consortium it is for.
        of: String,
        /// The consortium it was checked against.
        expected: String,
    },
}

fn invalid(field: &'static str, reason: TrustFault) -> TrustError {
    TrustError::Invalid { field, reason }
}

/// A consortium descriptor: who may admit members, and how many must agree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consortium {
    /// Format version.
    pub v: u32,
    /// Hex id: the first 16 bytes of BLAKE3-derive_key("medmesh/v1/consortium id", CBOR of name, admins, threshold, created).
    pub id: String,
    /// Human name.
    pub name: String,
    /// Admin Ed25519 public keys.
    pub admins: Vec<serde_bytes::ByteBuf>,
    /// Signatures of distinct admins needed on a certificate.
    pub threshold: u32,
    /// Creation time, Unix seconds.
    pub created: i64,
    /// Signatures of distinct admins needed on a revocation. Absent (and
    /// then 1) in version 1 descriptors; present only in version 2.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub revocation_threshold: u32,
}

fn one() -> u32 {
    1
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_one(n: &u32) -> bool {
    *n == 1
}

#[derive(Serialize)]
struct ConsortiumIdInput<'a> {
    name: &'a str,
    admins: &'a [serde_bytes::ByteBuf],
    threshold: u32,
    created: i64,
    // Left out when 1, so that version 1 ids stay what they were.
    #[serde(skip_serializing_if = "is_one")]
    revocation_threshold: u32,
}

impl Consortium {
    /// A new descriptor.
    ///
    /// # Errors
    /// [`TrustError::Invalid`] for an empty name, no admins, duplicate
    /// admins, a threshold of 0 or above the number of admins.
    pub fn new(name: &str, admins: Vec<[u8; 32]>, threshold: u32, created: i64) -> Result<Self, TrustError> {
        let mut c = Consortium {
            v: TRUST_VERSION,
            id: String::new(),
            name: name.trim().to_string(),
            admins: admins
                .into_iter()
                .map(|a| serde_bytes::ByteBuf::from(a.to_vec()))
                .collect(),
            threshold,
            created,
            revocation_threshold: 1,
        };
        c.id = c.compute_id()?;
        c.check()?;
        Ok(c)
    }

    /// The same consortium with revocations needing `k` admin signatures
    /// (a version 2 descriptor when `k` > 1; the id changes with it).
    ///
    /// # Errors
    /// [`TrustError::Invalid`] for 0 or more than the number of admins.
    pub fn with_revocation_threshold(mut self, k: u32) -> Result<Self, TrustError> {
        self.revocation_threshold = k;
        self.v = if k == 1 {
            TRUST_VERSION
        } else {
            CONSORTIUM_VERSION_REVOCATION_THRESHOLD
        };
        self.id = self.compute_id()?;
        self.check()?;
        Ok(self)
    }

    fn compute_id(&self) -> Result<String, TrustError> {
        let input = ConsortiumIdInput {
            name: &self.name,
            admins: &self.admins,
            threshold: self.threshold,
            created: self.created,
            revocation_threshold: self.revocation_threshold,
        };
        let bytes = cbor::encode("consortium id input", &input)?;
        Ok(hex::encode(&blake3::derive_key(CONSORTIUM_ID_CONTEXT, &bytes)[..16]))
    }

    fn check(&self) -> Result<(), TrustError> {
        if self.v != CONSORTIUM_VERSION_REVOCATION_THRESHOLD {
            cbor::check_version("consortium", self.v, TRUST_VERSION)?;
        }
        if self.name.is_empty() || self.name.chars().count() > 200 {
            return Err(invalid("name", TrustFault::NameLength));
        }
        if self.admins.is_empty() || self.admins.len() > MAX_ADMINS {
            return Err(invalid("admins", TrustFault::AdminCount { max: MAX_ADMINS }));
        }
        let distinct: BTreeSet<&[u8]> = self.admins.iter().map(|a| a.as_slice()).collect();
        if distinct.len() != self.admins.len() || self.admins.iter().any(|a| a.len() != 32) {
            return Err(invalid("admins", TrustFault::AdminKeys));
        }
        if self.threshold == 0 || self.threshold as usize > self.admins.len() {
            return Err(invalid(
                "threshold",
                TrustFault::Threshold {
                    admins: self.admins.len(),
                },
            ));
        }
        if self.revocation_threshold == 0 || self.revocation_threshold as usize > self.admins.len() {
            return Err(invalid(
                "revocation_threshold",
                TrustFault::Threshold {
                    admins: self.admins.len(),
                },
            ));
        }
        // Version 1 knows no revocation threshold; version 2 exists only to carry one.
        if (self.v == TRUST_VERSION) != (self.revocation_threshold == 1) {
            return Err(invalid(
                "revocation_threshold",
                TrustFault::VersionThreshold {
                    version: self.v,
                    threshold: self.revocation_threshold,
                },
            ));
        }
        if self.compute_id()? != self.id {
            return Err(invalid("id", TrustFault::IdMismatch));
        }
        Ok(())
    }

    /// Encodes the descriptor.
    ///
    /// # Errors
    /// [`TrustError::Codec`] (not expected).
    pub fn to_bytes(&self) -> Result<Vec<u8>, TrustError> {
        Ok(cbor::encode("consortium", self)?)
    }

    /// Decodes and checks a descriptor (id, version, admins, threshold).
    ///
    /// # Errors
    /// [`TrustError`] naming what is wrong.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TrustError> {
        let c: Consortium = cbor::decode("consortium", bytes, MAX_TRUST_RECORD)?;
        c.check()?;
        Ok(c)
    }

    fn is_admin(&self, key: &[u8]) -> bool {
        self.admins.iter().any(|a| a.as_slice() == key)
    }
}

/// One admin's signature on a certificate or revocation payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminSignature {
    /// The admin's Ed25519 public key.
    #[serde(with = "serde_bytes")]
    pub admin: Vec<u8>,
    /// The signature over the payload bytes.
    #[serde(with = "serde_bytes")]
    pub sig: Vec<u8>,
}

/// What a membership certificate says about its subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificatePayload {
    /// Format version.
    pub v: u32,
    /// Consortium id.
    pub consortium: String,
    /// Serial number, unique within the consortium (random).
    pub serial: u64,
    /// BLAKE3 of the subject's signed node record, as presented to the admin.
    #[serde(with = "serde_bytes")]
    pub record_hash: Vec<u8>,
    /// Subject peer id.
    pub peer_id: String,
    /// Subject Ed25519 key.
    #[serde(with = "serde_bytes")]
    pub ed25519: Vec<u8>,
    /// Subject X25519 key.
    #[serde(with = "serde_bytes")]
    pub x25519: Vec<u8>,
    /// Subject institution (cleaned on decoding: [`crate::text::clean`]).
    #[serde(deserialize_with = "crate::text::de::name")]
    pub institution: String,
    /// Subject jurisdiction.
    pub jurisdiction: String,
    /// Purposes the subject may request and receive data for.
    pub purposes: Vec<Purpose>,
    /// Valid from, Unix seconds.
    pub not_before: i64,
    /// Valid until, Unix seconds.
    pub not_after: i64,
}

/// A membership certificate: payload bytes as signed, and admin signatures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    /// Format version.
    pub v: u32,
    /// CBOR of [`CertificatePayload`], exactly as signed.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// Admin signatures.
    pub signatures: Vec<AdminSignature>,
}

impl Certificate {
    /// Issues a certificate for a verified node record, signed by one admin.
    ///
    /// # Errors
    /// [`TrustError::Invalid`] for no purposes or a non-positive validity.
    pub fn issue(
        consortium: &Consortium,
        admin_secret: &[u8; 32],
        record: &VerifiedNodeRecord,
        purposes: Vec<Purpose>,
        not_before: i64,
        not_after: i64,
        serial: u64,
    ) -> Result<Self, TrustError> {
        if purposes.is_empty() {
            return Err(invalid("purposes", TrustFault::NoPurpose));
        }
        if not_after <= not_before {
            return Err(invalid("validity", TrustFault::Validity));
        }
        let r = record.record();
        let record_bytes = record.envelope().to_bytes()?;
        let payload = CertificatePayload {
            v: TRUST_VERSION,
            consortium: consortium.id.clone(),
            serial,
            record_hash: blake3::hash(&record_bytes).as_bytes().to_vec(),
            peer_id: r.peer_id.clone(),
            ed25519: r.ed25519.clone(),
            x25519: r.x25519.clone(),
            institution: r.institution.clone(),
            jurisdiction: r.jurisdiction.clone(),
            purposes,
            not_before,
            not_after,
        };
        let mut cert = Certificate {
            v: TRUST_VERSION,
            payload: cbor::encode("certificate payload", &payload)?,
            signatures: Vec::new(),
        };
        cert.cosign(consortium, admin_secret)?;
        Ok(cert)
    }

    /// Adds one admin's signature (an admin already on the certificate is refused).
    ///
    /// # Errors
    /// [`TrustError::Invalid`] when the key is not an admin of the
    /// certificate's consortium or has signed already.
    pub fn cosign(&mut self, consortium: &Consortium, admin_secret: &[u8; 32]) -> Result<(), TrustError> {
        let payload = self.payload()?;
        add_admin_signature(
            &mut self.signatures,
            ("certificate", CERTIFICATE_DOMAIN, &self.payload),
            &payload.consortium,
            consortium,
            admin_secret,
        )
    }

    /// The decoded payload (signatures not checked).
    ///
    /// # Errors
    /// [`TrustError::Codec`].
    pub fn payload(&self) -> Result<CertificatePayload, TrustError> {
        let p: CertificatePayload = cbor::decode("certificate payload", &self.payload, MAX_TRUST_RECORD)?;
        cbor::check_version("certificate payload", p.v, TRUST_VERSION)?;
        Ok(p)
    }

    /// Encodes the certificate.
    ///
    /// # Errors
    /// [`TrustError::Codec`] (not expected).
    pub fn to_bytes(&self) -> Result<Vec<u8>, TrustError> {
        Ok(cbor::encode("certificate", self)?)
    }

    /// Decodes a certificate (signatures are checked by [`verify_certificate`]).
    ///
    /// # Errors
    /// [`TrustError::Codec`] for oversize, malformed or unknown-version input.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TrustError> {
        let c: Certificate = cbor::decode("certificate", bytes, MAX_TRUST_RECORD)?;
        cbor::check_version("certificate", c.v, TRUST_VERSION)?;
        c.payload()?;
        Ok(c)
    }
}

/// What a revocation names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RevocationTarget {
    /// A certificate serial.
    Serial(u64),
    /// Every certificate of a peer.
    Peer(String),
}

impl fmt::Display for RevocationTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RevocationTarget::Serial(s) => write!(f, "certificate serial {s}"),
            RevocationTarget::Peer(p) => write!(f, "peer {p}"),
        }
    }
}

/// What a revocation says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationPayload {
    /// Format version.
    pub v: u32,
    /// Consortium id.
    pub consortium: String,
    /// What is revoked.
    pub target: RevocationTarget,
    /// Why (free text; no patient data).
    pub reason: String,
    /// When, Unix seconds.
    pub time: i64,
}

/// A signed revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Format version.
    pub v: u32,
    /// CBOR of [`RevocationPayload`], exactly as signed.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// Admin signatures (the consortium's `revocation_threshold` of distinct admins needed).
    pub signatures: Vec<AdminSignature>,
}

impl Revocation {
    /// A revocation signed by one admin.
    ///
    /// # Errors
    /// [`TrustError::Invalid`] when the key is not an admin or the reason is empty.
    pub fn issue(
        consortium: &Consortium,
        admin_secret: &[u8; 32],
        target: RevocationTarget,
        reason: &str,
        time: i64,
    ) -> Result<Self, TrustError> {
        if reason.trim().is_empty() {
            return Err(invalid("reason", TrustFault::NoReason));
        }
        let admin = identity::ed25519_public_of(admin_secret);
        if !consortium.is_admin(&admin) {
            return Err(invalid("admin key", TrustFault::NotAnAdmin));
        }
        let payload = RevocationPayload {
            v: TRUST_VERSION,
            consortium: consortium.id.clone(),
            target,
            reason: reason.trim().into(),
            time,
        };
        let payload = cbor::encode("revocation payload", &payload)?;
        let sig = identity::sign_raw(admin_secret, REVOCATION_DOMAIN, &payload);
        Ok(Revocation {
            v: TRUST_VERSION,
            payload,
            signatures: vec![AdminSignature {
                admin: admin.to_vec(),
                sig: sig.to_vec(),
            }],
        })
    }

    /// Adds one admin's signature (an admin already on the revocation is
    /// refused), for consortia whose revocations need more than one.
    ///
    /// # Errors
    /// [`TrustError::Invalid`] when the revocation is of another consortium,
    /// the key is not one of its admins or has signed already.
    pub fn cosign(&mut self, consortium: &Consortium, admin_secret: &[u8; 32]) -> Result<(), TrustError> {
        let payload = self.payload()?;
        add_admin_signature(
            &mut self.signatures,
            ("revocation", REVOCATION_DOMAIN, &self.payload),
            &payload.consortium,
            consortium,
            admin_secret,
        )
    }

    /// Encodes the revocation.
    ///
    /// # Errors
    /// [`TrustError::Codec`] (not expected).
    pub fn to_bytes(&self) -> Result<Vec<u8>, TrustError> {
        Ok(cbor::encode("revocation", self)?)
    }

    /// Decodes a revocation (signatures are checked by [`verify_revocation`]).
    ///
    /// # Errors
    /// [`TrustError::Codec`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TrustError> {
        let r: Revocation = cbor::decode("revocation", bytes, MAX_TRUST_RECORD)?;
        cbor::check_version("revocation", r.v, TRUST_VERSION)?;
        Ok(r)
    }

    /// The decoded payload (signatures not checked).
    ///
    /// # Errors
    /// [`TrustError::Codec`].
    pub fn payload(&self) -> Result<RevocationPayload, TrustError> {
        let p: RevocationPayload = cbor::decode("revocation payload", &self.payload, MAX_TRUST_RECORD)?;
        cbor::check_version("revocation payload", p.v, TRUST_VERSION)?;
        Ok(p)
    }
}

/// Why a peer, certificate or revocation is not accepted. Stable codes for
/// logs and the ledger; `Display` is the sentence for an admin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Refusal {
    /// The site admin blocked this peer.
    Blocked {
        /// When and why, as recorded.
        reason: String,
    },
    /// No bilateral trust and no certificate presented.
    NoTrust,
    /// The certificate is from a consortium this node has not joined.
    UnknownConsortium {
        /// Its id.
        consortium: String,
    },
    /// Too few valid admin signatures.
    BelowThreshold {
        /// Valid signatures of distinct admins.
        valid: u32,
        /// Signatures that failed to verify or are not of an admin.
        invalid: u32,
        /// The consortium's threshold.
        threshold: u32,
    },
    /// Not valid yet.
    NotYetValid {
        /// Valid from (Unix seconds).
        not_before: i64,
    },
    /// Expired.
    Expired {
        /// Valid until (Unix seconds).
        not_after: i64,
    },
    /// The certificate names another peer, or its keys do not match its peer id.
    SubjectMismatch {
        /// What does not match.
        detail: String,
    },
    /// Revoked.
    Revoked {
        /// What the revocation names.
        target: String,
        /// Its reason.
        reason: String,
    },
    /// The certificate cannot be decoded.
    Malformed {
        /// Why.
        detail: String,
    },
    /// The hello (or the node record in it) cannot be read, does not verify
    /// or is not the connected peer's.
    BadHello {
        /// Why.
        detail: String,
    },
    /// The peer presented no valid hello in time.
    NoHello {
        /// Seconds it had.
        secs: u64,
    },
}

impl Refusal {
    /// Stable machine code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Blocked { .. } => "blocked",
            Refusal::NoTrust => "no-trust",
            Refusal::UnknownConsortium { .. } => "unknown-consortium",
            Refusal::BelowThreshold { .. } => "below-threshold",
            Refusal::NotYetValid { .. } => "not-yet-valid",
            Refusal::Expired { .. } => "expired",
            Refusal::SubjectMismatch { .. } => "subject-mismatch",
            Refusal::Revoked { .. } => "revoked",
            Refusal::Malformed { .. } => "malformed",
            Refusal::BadHello { .. } => "bad-hello",
            Refusal::NoHello { .. } => "no-hello",
        }
    }
}

fn time(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.to_rfc3339())
        .unwrap_or_else(|| t.to_string())
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Blocked { reason } => write!(f, "the peer is blocked by this site ({reason})"),
            Refusal::NoTrust => {
                f.write_str("the peer has no certificate of a joined consortium and no bilateral trust")
            }
            Refusal::UnknownConsortium { consortium } => write!(
                f,
                "the certificate is from consortium {consortium}, which this node has not joined"
            ),
            Refusal::BelowThreshold {
                valid,
                invalid,
                threshold,
            } => write!(
                f,
                "the certificate has {valid} valid admin signature(s), the consortium requires {threshold}{}",
                if *invalid > 0 {
                    format!(" ({invalid} signature(s) did not verify or are not an admin's)")
                } else {
                    String::new()
                }
            ),
            Refusal::NotYetValid { not_before } => {
                write!(f, "the certificate is not valid before {}", time(*not_before))
            }
            Refusal::Expired { not_after } => write!(f, "the certificate expired on {}", time(*not_after)),
            Refusal::SubjectMismatch { detail } => write!(f, "the certificate does not belong to this peer: {detail}"),
            Refusal::Revoked { target, reason } => write!(f, "the consortium revoked {target}: {reason}"),
            Refusal::Malformed { detail } => write!(f, "the certificate cannot be read: {detail}"),
            Refusal::BadHello { detail } => write!(f, "the peer's hello is not acceptable: {detail}"),
            Refusal::NoHello { secs } => write!(
                f,
                "the peer sent no hello (node record and certificates) within {secs} s"
            ),
        }
    }
}

/// A certificate whose signatures, threshold, period and subject were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCertificate {
    payload: CertificatePayload,
}

impl VerifiedCertificate {
    /// The checked payload.
    #[must_use]
    pub fn payload(&self) -> &CertificatePayload {
        &self.payload
    }
}

/// Counts valid signatures of distinct admins and the others.
fn count_signatures(consortium: &Consortium, domain: &str, payload: &[u8], sigs: &[AdminSignature]) -> (u32, u32) {
    let mut valid = BTreeSet::new();
    let mut bad = 0u32;
    for s in sigs {
        if consortium.is_admin(&s.admin) && identity::verify_raw(&s.admin, domain, payload, &s.sig).is_ok() {
            valid.insert(s.admin.clone());
        } else {
            bad += 1;
        }
    }
    (u32::try_from(valid.len()).unwrap_or(u32::MAX), bad)
}

/// Checks a certificate against a consortium at time `now`: consortium,
/// signatures and threshold, validity period, and that its peer id derives
/// from its key.
///
/// # Errors
/// The [`Refusal`] that applies.
pub fn verify_certificate(
    cert: &Certificate,
    consortium: &Consortium,
    now: i64,
) -> Result<VerifiedCertificate, Refusal> {
    let payload = cert
        .payload()
        .map_err(|e| Refusal::Malformed { detail: e.to_string() })?;
    if payload.consortium != consortium.id {
        return Err(Refusal::UnknownConsortium {
            consortium: payload.consortium,
        });
    }
    let (valid, invalid) = count_signatures(consortium, CERTIFICATE_DOMAIN, &cert.payload, &cert.signatures);
    if valid < consortium.threshold {
        return Err(Refusal::BelowThreshold {
            valid,
            invalid,
            threshold: consortium.threshold,
        });
    }
    if now < payload.not_before {
        return Err(Refusal::NotYetValid {
            not_before: payload.not_before,
        });
    }
    if now > payload.not_after {
        return Err(Refusal::Expired {
            not_after: payload.not_after,
        });
    }
    let key: [u8; 32] = payload.ed25519.as_slice().try_into().map_err(|_| Refusal::Malformed {
        detail: "the subject key is not 32 bytes".into(),
    })?;
    match identity::peer_id_of(&key) {
        Ok(p) if p == payload.peer_id => {}
        _ => {
            return Err(Refusal::SubjectMismatch {
                detail: "its peer id does not derive from its key".into(),
            });
        }
    }
    if payload.x25519.len() != 32 {
        return Err(Refusal::Malformed {
            detail: "the subject X25519 key is not 32 bytes".into(),
        });
    }
    Ok(VerifiedCertificate { payload })
}

/// A revocation with enough valid admin signatures of its consortium.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRevocation {
    payload: RevocationPayload,
}

impl VerifiedRevocation {
    /// The checked payload.
    #[must_use]
    pub fn payload(&self) -> &RevocationPayload {
        &self.payload
    }
}

/// Checks a revocation against its consortium: same consortium, and at
/// least the consortium's `revocation_threshold` valid signatures of
/// distinct admins (a signature of a key that is not an admin, a forged
/// one, and a second signature of the same admin count for nothing).
///
/// # Errors
/// [`TrustError::Invalid`] for another consortium,
/// [`TrustError::RevocationBelowThreshold`] for too few signatures.
pub fn verify_revocation(rev: &Revocation, consortium: &Consortium) -> Result<VerifiedRevocation, TrustError> {
    let payload = rev.payload()?;
    if payload.consortium != consortium.id {
        return Err(invalid(
            "consortium",
            TrustFault::OtherConsortium {
                document: "revocation",
                of: payload.consortium.clone(),
                expected: consortium.id.clone(),
            },
        ));
    }
    let (valid, invalid) = count_signatures(consortium, REVOCATION_DOMAIN, &rev.payload, &rev.signatures);
    if valid < consortium.revocation_threshold.max(1) {
        return Err(TrustError::RevocationBelowThreshold {
            valid,
            invalid,
            threshold: consortium.revocation_threshold.max(1),
        });
    }
    Ok(VerifiedRevocation { payload })
}

/// Signature-free summary of the revocations a node applied for one
/// consortium, carried in the hello and in revocation catch-up requests so
/// that two members notice when one is behind (docs/PROTOCOL.md §7.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationSummary {
    /// Consortium id.
    pub consortium: String,
    /// How many distinct revocations (by the BLAKE3 of their bytes).
    pub count: u32,
    /// BLAKE3-derive_key([`REVOCATION_SET_CONTEXT`], the sorted 32-byte
    /// BLAKE3 hashes of the revocations' bytes, concatenated).
    #[serde(with = "serde_bytes")]
    pub digest: Vec<u8>,
}

/// Key derivation context of [`RevocationSummary::digest`].
pub const REVOCATION_SET_CONTEXT: &str = "medmesh/v1/revocation set";

/// One summary per consortium of `(consortium id, BLAKE3 of the revocation's
/// bytes)` pairs (duplicates counted once), sorted by consortium id.
#[must_use]
pub fn summarize_revocations(revocations: &[(String, [u8; 32])]) -> Vec<RevocationSummary> {
    let mut by: std::collections::BTreeMap<&str, BTreeSet<[u8; 32]>> = std::collections::BTreeMap::new();
    for (c, h) in revocations {
        by.entry(c.as_str()).or_default().insert(*h);
    }
    by.into_iter()
        .map(|(c, hashes)| {
            let mut input = Vec::with_capacity(hashes.len() * 32);
            for h in &hashes {
                input.extend_from_slice(h);
            }
            RevocationSummary {
                consortium: c.to_string(),
                count: u32::try_from(hashes.len()).unwrap_or(u32::MAX),
                digest: blake3::derive_key(REVOCATION_SET_CONTEXT, &input).to_vec(),
            }
        })
        .collect()
}

/// A peer a site admin trusts directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bilateral {
    /// Its verified node record.
    pub record: VerifiedNodeRecord,
    /// Purposes it is trusted for.
    pub purposes: Vec<Purpose>,
    /// Trusted until (Unix seconds), if limited.
    pub until: Option<i64>,
}

/// Everything a node knows that bears on trust.
#[derive(Debug, Clone, Default)]
pub struct TrustState {
    /// Joined consortia.
    pub consortia: Vec<Consortium>,
    /// Bilateral trust.
    pub bilateral: Vec<Bilateral>,
    /// Applied revocations.
    pub revocations: Vec<VerifiedRevocation>,
    /// Blocked peers, with the recorded reason.
    pub blocked: Vec<(String, String)>,
}

/// How a peer is trusted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "via", rename_all = "kebab-case")]
pub enum Via {
    /// Through a certificate of a joined consortium.
    Consortium {
        /// Consortium id.
        consortium: String,
        /// Certificate serial.
        serial: u64,
    },
    /// Directly, by this site's admin.
    Bilateral,
}

/// A trusted peer: what it may do, until when, with which keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trusted {
    /// How.
    pub via: Via,
    /// Peer id.
    pub peer_id: String,
    /// Institution.
    pub institution: String,
    /// Jurisdiction.
    pub jurisdiction: String,
    /// Its certified X25519 key (hex).
    pub x25519: String,
    /// Purposes it is trusted for.
    pub purposes: Vec<Purpose>,
    /// Trusted until (Unix seconds), if limited.
    pub until: Option<i64>,
}

/// The answer of [`decide`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "kebab-case")]
pub enum TrustDecision {
    /// Trusted.
    Trust(Trusted),
    /// Refused, with the reason.
    Refuse(Refusal),
}

/// Is `peer_id` trusted at `now`, given what it presents and what this node knows?
/// Blocks win; then bilateral trust; then the first presented certificate
/// that verifies and is not revoked. When none does, the refusal of the
/// first certificate presented is returned (or [`Refusal::NoTrust`]).
#[must_use]
pub fn decide(state: &TrustState, peer_id: &str, presented: &[Certificate], now: i64) -> TrustDecision {
    if let Some((_, reason)) = state.blocked.iter().find(|(p, _)| p == peer_id) {
        return TrustDecision::Refuse(Refusal::Blocked { reason: reason.clone() });
    }
    let revoked_peer = |p: &str| {
        state
            .revocations
            .iter()
            .find(|r| r.payload.target == RevocationTarget::Peer(p.to_string()))
    };
    if let Some(b) = state.bilateral.iter().find(|b| b.record.record().peer_id == peer_id)
        && b.until.is_none_or(|u| now <= u)
    {
        let r = b.record.record();
        return TrustDecision::Trust(Trusted {
            via: Via::Bilateral,
            peer_id: r.peer_id.clone(),
            institution: r.institution.clone(),
            jurisdiction: r.jurisdiction.clone(),
            x25519: hex::encode(&r.x25519),
            purposes: b.purposes.clone(),
            until: b.until,
        });
    }
    let mut first_refusal = None;
    for cert in presented {
        let outcome = (|| {
            let payload = cert
                .payload()
                .map_err(|e| Refusal::Malformed { detail: e.to_string() })?;
            let consortium = state
                .consortia
                .iter()
                .find(|c| c.id == payload.consortium)
                .ok_or_else(|| Refusal::UnknownConsortium {
                    consortium: payload.consortium.clone(),
                })?;
            let verified = verify_certificate(cert, consortium, now)?;
            let p = verified.payload();
            if p.peer_id != peer_id {
                return Err(Refusal::SubjectMismatch {
                    detail: format!("it names peer {}", p.peer_id),
                });
            }
            let by_serial = state.revocations.iter().find(|r| {
                r.payload.consortium == p.consortium && r.payload.target == RevocationTarget::Serial(p.serial)
            });
            if let Some(r) =
                by_serial.or_else(|| revoked_peer(peer_id).filter(|r| r.payload.consortium == p.consortium))
            {
                return Err(Refusal::Revoked {
                    target: r.payload.target.to_string(),
                    reason: r.payload.reason.clone(),
                });
            }
            Ok(Trusted {
                via: Via::Consortium {
                    consortium: p.consortium.clone(),
                    serial: p.serial,
                },
                peer_id: p.peer_id.clone(),
                institution: p.institution.clone(),
                jurisdiction: p.jurisdiction.clone(),
                x25519: hex::encode(&p.x25519),
                purposes: p.purposes.clone(),
                until: Some(p.not_after),
            })
        })();
        match outcome {
            Ok(t) => return TrustDecision::Trust(t),
            Err(r) => {
                first_refusal.get_or_insert(r);
            }
        }
    }
    TrustDecision::Refuse(first_refusal.unwrap_or(Refusal::NoTrust))
}

/// Kind of a consortium admin key file (a passphrase-locked key file, see
/// [`crate::keystore::create_locked`]).
pub const ADMIN_KEY_KIND: &str = "consortium-admin";
const ADMIN_KEY_CONTEXT: &[u8] = b"medmesh/v1/consortium admin key";

/// Creates a new admin key and writes it locked by `passphrase` to `path`
/// (0600, refusing to overwrite); returns its public key.
///
/// # Errors
/// Keystore errors (weak passphrase, I/O naming the file).
pub fn create_admin_key(
    path: &std::path::Path,
    passphrase: &crate::keystore::Passphrase,
) -> Result<[u8; 32], crate::keystore::KeystoreError> {
    let secret = medmesh_seal::DataKey::try_generate()?;
    let public = identity::ed25519_public_of(secret.expose_secret());
    crate::keystore::create_locked(path, passphrase, ADMIN_KEY_KIND, &public, &secret, ADMIN_KEY_CONTEXT)?;
    Ok(public)
}

/// Unlocks an admin key file; the secret is zeroized on drop.
///
/// # Errors
/// [`crate::keystore::KeystoreError::WrongPassphrase`], format and I/O errors naming the file.
pub fn unlock_admin_key(
    path: &std::path::Path,
    passphrase: &crate::keystore::Passphrase,
) -> Result<zeroize::Zeroizing<[u8; 32]>, crate::keystore::KeystoreError> {
    let (_, secret) = crate::keystore::unlock_locked(path, passphrase, ADMIN_KEY_KIND, ADMIN_KEY_CONTEXT)?;
    Ok(zeroize::Zeroizing::new(*secret.expose_secret()))
}

/// Adds one admin's signature over `signed` (what, its signing domain, the
/// payload bytes) to `signatures`: the document must be of `consortium`, the
/// key one of its admins, not on the document yet.
fn add_admin_signature(
    signatures: &mut Vec<AdminSignature>,
    (what, domain, signed): (&'static str, &str, &[u8]),
    of: &str,
    consortium: &Consortium,
    admin_secret: &[u8; 32],
) -> Result<(), TrustError> {
    if of != consortium.id {
        return Err(invalid(
            "consortium",
            TrustFault::OtherConsortium {
                document: what,
                of: of.to_string(),
                expected: consortium.id.clone(),
            },
        ));
    }
    let admin = identity::ed25519_public_of(admin_secret);
    if !consortium.is_admin(&admin) {
        return Err(invalid("admin key", TrustFault::NotAnAdmin));
    }
    if signatures.iter().any(|s| s.admin == admin) {
        return Err(invalid("admin key", TrustFault::AlreadySigned { document: what }));
    }
    let sig = identity::sign_raw(admin_secret, domain, signed);
    signatures.push(AdminSignature {
        admin: admin.to_vec(),
        sig: sig.to_vec(),
    });
    Ok(())
}

#[cfg(test)]
mod tests;
