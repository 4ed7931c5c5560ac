//! `/medmesh/hello/1`: the first thing said on a connection. The dialer sends
//! its signed node record and its membership certificates; the listener
//! checks them and answers with its own only when the dialer is trusted, so
//! an untrusted peer learns nothing. The dialer checks the answer the same way.
//!
//! Each side also says which revocations it applied (a count and digest per
//! consortium, [`RevocationSummary`]): where the two differ, each asks the
//! other for its revocations (`/medmesh/ledger/1`, docs/PROTOCOL.md §7.4), so a
//! member that was away catches up as it reconnects.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::{self as trust, Certificate, Refusal, RevocationSummary, TrustDecision, TrustState, Trusted};
use crate::cbor;
use crate::identity::VerifiedNodeRecord;

/// Protocol name.
pub const PROTOCOL: &str = "/medmesh/hello/1";
/// Version of the hello message.
pub const HELLO_VERSION: u32 = 1;
/// Largest hello accepted, bytes.
pub const MAX_HELLO: usize = 64 * 1024;
/// Most certificates a hello may carry.
pub const MAX_CERTIFICATES: usize = 16;
/// Most revocation summaries (one per consortium) a hello may carry.
pub const MAX_REVOCATION_SUMMARIES: usize = 16;

/// The hello message (request and response alike).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Format version ([`HELLO_VERSION`]).
    pub v: u32,
    /// The sender's signed node record (a `SignedEnvelope`, as signed).
    #[serde(with = "serde_bytes")]
    pub record: Vec<u8>,
    /// The sender's membership certificates, each as issued.
    pub certificates: Vec<ByteBuf>,
    /// The revocations the sender applied, per consortium (left out when
    /// none, so a hello without revocations encodes as before).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revocations: Vec<RevocationSummary>,
}

/// Errors of encoding or decoding a hello.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HelloError {
    /// CBOR or version error.
    #[error(transparent)]
    Codec(#[from] cbor::CodecError),
    /// More certificates than allowed.
    #[error("the hello carries {0} certificates, at most {MAX_CERTIFICATES} are accepted")]
    TooManyCertificates(usize),
    /// More revocation summaries than allowed, or a malformed one.
    #[error("the hello's revocation summaries are not acceptable: {0}")]
    BadRevocations(RevocationsFault),
}

/// Why a hello's revocation summaries are refused ([`HelloError::BadRevocations`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RevocationsFault {
    /// More summaries than allowed.
    #[error("{count} summaries, at most {max}")]
    TooMany {
        /// Summaries carried.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A summary is malformed.
    #[error("a digest is not 32 bytes or a consortium id is not 1 to 64 characters")]
    Malformed,
}

impl Hello {
    /// A hello for this node.
    #[must_use]
    pub fn new(record: Vec<u8>, certificates: Vec<Vec<u8>>) -> Self {
        Self {
            v: HELLO_VERSION,
            record,
            certificates: certificates.into_iter().map(ByteBuf::from).collect(),
            revocations: Vec::new(),
        }
    }

    /// The same hello, saying which revocations the sender applied.
    #[must_use]
    pub fn with_revocations(mut self, revocations: Vec<RevocationSummary>) -> Self {
        self.revocations = revocations;
        self
    }

    /// The consortia whose revocations differ between this hello's sender
    /// and `ours`, among those both name or this hello names with a count
    /// above 0: the ones to ask the sender for.
    #[must_use]
    pub fn revocations_behind(&self, ours: &[RevocationSummary]) -> Vec<String> {
        self.revocations
            .iter()
            .filter(|t| t.count > 0)
            .filter(|t| ours.iter().find(|o| o.consortium == t.consortium) != Some(*t))
            .map(|t| t.consortium.clone())
            .collect()
    }

    /// Encodes.
    ///
    /// # Errors
    /// [`HelloError::Codec`].
    pub fn to_bytes(&self) -> Result<Vec<u8>, HelloError> {
        Ok(cbor::encode("hello", self)?)
    }

    /// Decodes and checks version and size.
    ///
    /// # Errors
    /// [`HelloError`] naming what is wrong.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, HelloError> {
        let hello: Hello = cbor::decode("hello", bytes, MAX_HELLO)?;
        cbor::check_version("hello", hello.v, HELLO_VERSION)?;
        if hello.certificates.len() > MAX_CERTIFICATES {
            return Err(HelloError::TooManyCertificates(hello.certificates.len()));
        }
        if hello.revocations.len() > MAX_REVOCATION_SUMMARIES {
            return Err(HelloError::BadRevocations(RevocationsFault::TooMany {
                count: hello.revocations.len(),
                max: MAX_REVOCATION_SUMMARIES,
            }));
        }
        if hello
            .revocations
            .iter()
            .any(|r| r.digest.len() != 32 || r.consortium.is_empty() || r.consortium.len() > 64)
        {
            return Err(HelloError::BadRevocations(RevocationsFault::Malformed));
        }
        Ok(hello)
    }
}

/// A peer whose hello was accepted.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// Its verified node record.
    pub record: VerifiedNodeRecord,
    /// The certificates it presented that decode (kept to re-check trust later).
    pub certificates: Vec<Certificate>,
    /// Why and for what it is trusted.
    pub trusted: Trusted,
}

/// Checks the hello of the authenticated peer `peer_id` at `now`: the node
/// record verifies and is that peer's, then [`trust::decide`] over the
/// presented certificates, then the certified X25519 key is the record's.
///
/// # Errors
/// The [`Refusal`], with a stable code, for the log and `medmesh peers`.
pub fn evaluate(state: &TrustState, peer_id: &str, hello: &Hello, now: i64) -> Result<Accepted, Refusal> {
    if let Some((_, reason)) = state.blocked.iter().find(|(p, _)| p == peer_id) {
        return Err(Refusal::Blocked { reason: reason.clone() });
    }
    let record = VerifiedNodeRecord::from_bytes(&hello.record).map_err(|e| Refusal::BadHello {
        detail: format!("node record: {e}"),
    })?;
    if record.record().peer_id != peer_id {
        return Err(Refusal::BadHello {
            detail: format!("the node record is of peer {}", record.record().peer_id),
        });
    }
    let mut certificates = Vec::new();
    let mut first_bad = None;
    for bytes in &hello.certificates {
        match Certificate::from_bytes(bytes) {
            Ok(c) => certificates.push(c),
            Err(e) => {
                first_bad.get_or_insert(Refusal::Malformed { detail: e.to_string() });
            }
        }
    }
    let trusted = match trust::decide(state, peer_id, &certificates, now) {
        TrustDecision::Trust(t) => t,
        // With nothing usable presented, say why the first certificate was unreadable.
        TrustDecision::Refuse(Refusal::NoTrust) => return Err(first_bad.unwrap_or(Refusal::NoTrust)),
        TrustDecision::Refuse(r) => return Err(r),
    };
    if trusted.x25519 != hex::encode(&record.record().x25519) {
        return Err(Refusal::SubjectMismatch {
            detail: "the X25519 key of the node record is not the trusted one".into(),
        });
    }
    Ok(Accepted {
        record,
        certificates,
        trusted,
    })
}

/// The last hello `peer` presented (its [`crate::trust::known`] row), else
/// a hello made of its bilateral node record in `state`; `None` for a peer
/// this node has never met and does not trust directly.
///
/// # Errors
/// Store errors.
pub fn peer_hello(
    store: &crate::store::Store,
    state: &TrustState,
    peer: &str,
) -> Result<Option<Hello>, crate::store::StoreError> {
    if let Some(bytes) = crate::trust::known::hello_of(store, peer)?
        && let Ok(h) = Hello::from_bytes(&bytes)
    {
        return Ok(Some(h));
    }
    Ok(state
        .bilateral
        .iter()
        .find(|b| b.record.record().peer_id == peer)
        .and_then(|b| b.record.envelope().to_bytes().ok())
        .map(|record| Hello::new(record, Vec::new())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Identity, NodeRecord};
    use crate::trust::{Bilateral, Consortium};
    use consent_schema::Purpose;

    const NOW: i64 = 1_800_000_000;

    struct World {
        consortium: Consortium,
        admin: [u8; 32],
        other: Consortium,
        other_admin: [u8; 32],
    }

    fn world() -> World {
        let admin = [7u8; 32];
        let other_admin = [9u8; 32];
        World {
            consortium: Consortium::new("c", vec![crate::identity::ed25519_public_of(&admin)], 1, NOW).unwrap(),
            admin,
            other: Consortium::new("d", vec![crate::identity::ed25519_public_of(&other_admin)], 1, NOW).unwrap(),
            other_admin,
        }
    }

    fn node(institution: &str) -> (Identity, VerifiedNodeRecord) {
        let id = Identity::generate().unwrap();
        let rec = NodeRecord {
            v: crate::identity::NODE_RECORD_VERSION,
            peer_id: id.peer_id(),
            ed25519: id.ed25519_public().to_vec(),
            x25519: id.x25519_public().to_vec(),
            institution: institution.into(),
            jurisdiction: "DE".into(),
            addrs: vec![],
            created: NOW,
        };
        let env = rec.sign(&id).unwrap();
        let verified = VerifiedNodeRecord::from_envelope(env).unwrap();
        (id, verified)
    }

    fn cert(c: &Consortium, admin: &[u8; 32], rec: &VerifiedNodeRecord, nb: i64, na: i64) -> Vec<u8> {
        Certificate::issue(c, admin, rec, vec![Purpose::Treatment], nb, na, 42)
            .unwrap()
            .to_bytes()
            .unwrap()
    }

    fn hello(rec: &VerifiedNodeRecord, certs: Vec<Vec<u8>>) -> Hello {
        Hello::new(rec.envelope().to_bytes().unwrap(), certs)
    }

    #[test]
    fn hello_decisions() {
        let w = world();
        let state = TrustState {
            consortia: vec![w.consortium.clone()],
            ..TrustState::default()
        };
        let (_, a) = node("A");
        let (_, b) = node("B");
        let pa = a.record().peer_id.clone();
        let good = cert(&w.consortium, &w.admin, &a, NOW - 10, NOW + 100);
        let mut flipped = Certificate::from_bytes(&good).unwrap();
        flipped.signatures[0].sig[3] ^= 1;
        let flipped = flipped.to_bytes().unwrap();
        let cases: Vec<(&str, Hello, &str, Result<(), &str>)> = vec![
            ("valid certificate", hello(&a, vec![good.clone()]), &pa, Ok(())),
            ("no certificate", hello(&a, vec![]), &pa, Err("no-trust")),
            (
                "other consortium",
                hello(&a, vec![cert(&w.other, &w.other_admin, &a, NOW - 10, NOW + 100)]),
                &pa,
                Err("unknown-consortium"),
            ),
            (
                "expired",
                hello(&a, vec![cert(&w.consortium, &w.admin, &a, NOW - 100, NOW - 10)]),
                &pa,
                Err("expired"),
            ),
            (
                "flipped signature bit",
                hello(&a, vec![flipped]),
                &pa,
                Err("below-threshold"),
            ),
            (
                "certificate of another peer",
                hello(&a, vec![cert(&w.consortium, &w.admin, &b, NOW - 10, NOW + 100)]),
                &pa,
                Err("subject-mismatch"),
            ),
            (
                "record of another peer",
                hello(&b, vec![good.clone()]),
                &pa,
                Err("bad-hello"),
            ),
            (
                "garbage record",
                Hello::new(vec![1, 2, 3], vec![good.clone()]),
                &pa,
                Err("bad-hello"),
            ),
            (
                "garbage certificate",
                hello(&a, vec![vec![0xff; 8]]),
                &pa,
                Err("malformed"),
            ),
            (
                "garbage then valid certificate",
                hello(&a, vec![vec![0xff; 8], good.clone()]),
                &pa,
                Ok(()),
            ),
        ];
        for (name, h, peer, want) in cases {
            let got = evaluate(&state, peer, &h, NOW).map(|_| ()).map_err(|r| r.code());
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn blocks_win_and_bilateral_needs_no_certificate() {
        let w = world();
        let (_, a) = node("A");
        let pa = a.record().peer_id.clone();
        let mut state = TrustState {
            consortia: vec![w.consortium.clone()],
            bilateral: vec![Bilateral {
                record: a.clone(),
                purposes: vec![Purpose::Research],
                until: None,
            }],
            ..TrustState::default()
        };
        let ok = evaluate(&state, &pa, &hello(&a, vec![]), NOW).unwrap();
        assert_eq!(ok.trusted.via, trust::Via::Bilateral);
        state.blocked.push((pa.clone(), "gone".into()));
        let good = cert(&w.consortium, &w.admin, &a, NOW - 10, NOW + 100);
        assert_eq!(
            evaluate(&state, &pa, &hello(&a, vec![good]), NOW).unwrap_err().code(),
            "blocked"
        );
    }

    fn fixed_node(seed: u8) -> VerifiedNodeRecord {
        let id = Identity::from_secrets(&[seed; 32], &[seed.wrapping_add(1); 32]).unwrap();
        let rec = NodeRecord {
            v: crate::identity::NODE_RECORD_VERSION,
            peer_id: id.peer_id(),
            ed25519: id.ed25519_public().to_vec(),
            x25519: id.x25519_public().to_vec(),
            institution: format!("node {seed}"),
            jurisdiction: "NL".into(),
            addrs: vec![],
            created: NOW,
        };
        VerifiedNodeRecord::from_envelope(rec.sign(&id).unwrap()).unwrap()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// Any single flipped bit of a certificate's signed payload or signature loses trust.
        #[test]
        fn a_flipped_certificate_bit_never_earns_trust(pos in 0usize..100_000, bit in 0u8..8) {
            let w = world();
            let state = TrustState { consortia: vec![w.consortium.clone()], ..TrustState::default() };
            let a = fixed_node(40);
            let mut c = Certificate::from_bytes(&cert(&w.consortium, &w.admin, &a, NOW - 10, NOW + 100)).unwrap();
            let i = pos % (c.payload.len() + c.signatures[0].sig.len());
            if i < c.payload.len() {
                c.payload[i] ^= 1 << bit;
            } else {
                c.signatures[0].sig[i - c.payload.len()] ^= 1 << bit;
            }
            let h = hello(&a, vec![c.to_bytes().unwrap()]);
            proptest::prop_assert!(evaluate(&state, &a.record().peer_id, &h, NOW).is_err());
        }

        /// A certificate admits its subject only, whoever presents it and with whatever record.
        #[test]
        fn a_certificate_admits_only_its_subject(subject in 1u8..60, presenter in 1u8..60, record_of in 1u8..60) {
            let w = world();
            let state = TrustState { consortia: vec![w.consortium.clone()], ..TrustState::default() };
            let (s, p, r) = (fixed_node(subject), fixed_node(presenter), fixed_node(record_of));
            let h = hello(&r, vec![cert(&w.consortium, &w.admin, &s, NOW - 10, NOW + 100)]);
            let trusted = evaluate(&state, &p.record().peer_id, &h, NOW).is_ok();
            proptest::prop_assert_eq!(trusted, subject == presenter && presenter == record_of);
        }
    }

    #[test]
    fn revocation_summaries_travel_and_say_who_is_behind() {
        let (_, a) = node("A");
        let sum = |c: &str, n: u8| {
            trust::summarize_revocations(&(1..=n).map(|i| (c.to_string(), [i; 32])).collect::<Vec<_>>())
        };
        // Without revocations the hello encodes as before (the trust vectors stay valid).
        let plain = hello(&a, vec![]);
        assert_eq!(
            plain.to_bytes().unwrap(),
            plain.clone().with_revocations(vec![]).to_bytes().unwrap()
        );
        let theirs = [sum("c1", 2), sum("c2", 1)].concat();
        let h = plain.clone().with_revocations(theirs.clone());
        let back = Hello::from_bytes(&h.to_bytes().unwrap()).unwrap();
        assert_eq!(back.revocations, theirs);
        let cases: Vec<(&str, Vec<RevocationSummary>, Vec<&str>)> = vec![
            ("same", theirs.clone(), vec![]),
            ("we have none", vec![], vec!["c1", "c2"]),
            ("we have fewer of c1", [sum("c1", 1), sum("c2", 1)].concat(), vec!["c1"]),
            (
                "we have more of c1: asked anyway (digests differ)",
                [sum("c1", 3), sum("c2", 1)].concat(),
                vec!["c1"],
            ),
            (
                "we know a third consortium",
                [theirs.clone(), sum("c3", 4)].concat(),
                vec![],
            ),
        ];
        for (name, ours, want) in cases {
            assert_eq!(h.revocations_behind(&ours), want, "{name}");
        }
        // Bounds.
        let many = plain.clone().with_revocations(
            (0..=u8::try_from(MAX_REVOCATION_SUMMARIES).unwrap())
                .flat_map(|i| sum(&format!("c{i}"), 1))
                .collect(),
        );
        assert!(matches!(
            Hello::from_bytes(&many.to_bytes().unwrap()),
            Err(HelloError::BadRevocations(_))
        ));
        let mut short = sum("c1", 1);
        short[0].digest.truncate(5);
        let bad = plain.with_revocations(short);
        assert!(matches!(
            Hello::from_bytes(&bad.to_bytes().unwrap()),
            Err(HelloError::BadRevocations(_))
        ));
    }

    #[test]
    fn wire_form_is_checked() {
        let (_, a) = node("A");
        let h = hello(&a, vec![vec![1; 10]]);
        let bytes = h.to_bytes().unwrap();
        assert_eq!(Hello::from_bytes(&bytes).unwrap(), h);
        let mut v2 = h.clone();
        v2.v = 2;
        assert!(
            Hello::from_bytes(&v2.to_bytes().unwrap())
                .unwrap_err()
                .to_string()
                .contains("version")
        );
        let many = Hello::new(vec![], vec![vec![0]; MAX_CERTIFICATES + 1]);
        assert!(matches!(
            Hello::from_bytes(&many.to_bytes().unwrap()),
            Err(HelloError::TooManyCertificates(_))
        ));
        assert!(Hello::from_bytes(&[0xff; 100]).is_err());
    }
}
