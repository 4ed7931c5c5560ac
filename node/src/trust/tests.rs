use proptest::prelude::*;

use super::*;
use crate::identity::{Identity, NODE_RECORD_VERSION, NodeRecord};

const NOW: i64 = 1_800_000_000;
const DAY: i64 = 86_400;

fn admin(i: u8) -> [u8; 32] {
    [i; 32]
}

fn consortium(admins: u8, threshold: u32) -> Consortium {
    let keys = (1..=admins).map(|i| identity::ed25519_public_of(&admin(i))).collect();
    Consortium::new("EU imaging", keys, threshold, NOW - 10 * DAY).unwrap()
}

fn node(institution: &str) -> (Identity, VerifiedNodeRecord) {
    let id = Identity::generate().unwrap();
    let record = NodeRecord {
        v: NODE_RECORD_VERSION,
        peer_id: id.peer_id(),
        ed25519: id.ed25519_public().to_vec(),
        x25519: id.x25519_public().to_vec(),
        institution: institution.into(),
        jurisdiction: "DE".into(),
        addrs: vec![],
        created: NOW - DAY,
    };
    let v = VerifiedNodeRecord::from_envelope(record.sign(&id).unwrap()).unwrap();
    (id, v)
}

fn cert(c: &Consortium, signers: &[u8], record: &VerifiedNodeRecord, serial: u64) -> Certificate {
    let mut cert = Certificate::issue(
        c,
        &admin(signers[0]),
        record,
        vec![Purpose::Treatment],
        NOW - DAY,
        NOW + 30 * DAY,
        serial,
    )
    .unwrap();
    for s in &signers[1..] {
        cert.cosign(c, &admin(*s)).unwrap();
    }
    cert
}

fn state(c: &Consortium) -> TrustState {
    TrustState {
        consortia: vec![c.clone()],
        ..TrustState::default()
    }
}

fn code(d: &TrustDecision) -> &'static str {
    match d {
        TrustDecision::Trust(_) => "trust",
        TrustDecision::Refuse(r) => r.code(),
    }
}

#[test]
fn decision_table() {
    let c = consortium(3, 2);
    let other = Consortium::new("Other", vec![identity::ed25519_public_of(&admin(9))], 1, NOW).unwrap();
    let (_, rec) = node("Klinikum Nord");
    let (_, rec2) = node("Hôpital Sud");
    let peer = rec.record().peer_id.clone();

    let good = cert(&c, &[1, 2], &rec, 7);
    let one_sig = cert(&c, &[1], &rec, 8);
    let mut flipped = good.clone();
    flipped.signatures[1].sig[0] ^= 1;
    let mut forged_admin = cert(&c, &[1], &rec, 9);
    forged_admin.signatures.push(AdminSignature {
        admin: identity::ed25519_public_of(&admin(9)).to_vec(),
        sig: identity::sign_raw(&admin(9), CERTIFICATE_DOMAIN, &forged_admin.payload).to_vec(),
    });
    let mut twice = cert(&c, &[1], &rec, 10);
    twice.signatures.push(twice.signatures[0].clone());
    let expired = {
        let mut x = Certificate::issue(
            &c,
            &admin(1),
            &rec,
            vec![Purpose::Research],
            NOW - 40 * DAY,
            NOW - DAY,
            11,
        )
        .unwrap();
        x.cosign(&c, &admin(3)).unwrap();
        x
    };
    let future = {
        let mut x = Certificate::issue(
            &c,
            &admin(1),
            &rec,
            vec![Purpose::Research],
            NOW + DAY,
            NOW + 40 * DAY,
            12,
        )
        .unwrap();
        x.cosign(&c, &admin(2)).unwrap();
        x
    };
    let someone_else = cert(&c, &[1, 2], &rec2, 13);
    let foreign = Certificate::issue(
        &other,
        &admin(9),
        &rec,
        vec![Purpose::Treatment],
        NOW - DAY,
        NOW + DAY,
        14,
    )
    .unwrap();

    let mut revoked_serial = state(&c);
    revoked_serial.revocations.push(
        verify_revocation(
            &Revocation::issue(&c, &admin(3), RevocationTarget::Serial(7), "left the consortium", NOW).unwrap(),
            &c,
        )
        .unwrap(),
    );
    let mut revoked_peer = state(&c);
    revoked_peer.revocations.push(
        verify_revocation(
            &Revocation::issue(
                &c,
                &admin(2),
                RevocationTarget::Peer(peer.clone()),
                "key compromised",
                NOW,
            )
            .unwrap(),
            &c,
        )
        .unwrap(),
    );
    let mut blocked = state(&c);
    blocked.blocked.push((peer.clone(), "blocked by the site admin".into()));
    let mut bilateral = TrustState::default();
    bilateral.bilateral.push(Bilateral {
        record: rec.clone(),
        purposes: vec![Purpose::SecondOpinion],
        until: Some(NOW + DAY),
    });
    let mut bilateral_expired = TrustState::default();
    bilateral_expired.bilateral.push(Bilateral {
        record: rec.clone(),
        purposes: vec![Purpose::SecondOpinion],
        until: Some(NOW - 1),
    });
    let mut blocked_bilateral = bilateral.clone();
    blocked_bilateral.blocked.push((peer.clone(), "incident".into()));

    let plain = state(&c);
    let none = TrustState::default();
    let cases: Vec<(&str, &TrustState, Vec<Certificate>, &str)> = vec![
        ("2-of-3 certificate", &plain, vec![good.clone()], "trust"),
        ("no certificate, no bilateral", &plain, vec![], "no-trust"),
        (
            "1-of-2 where the threshold is 2",
            &plain,
            vec![one_sig],
            "below-threshold",
        ),
        ("one flipped signature bit", &plain, vec![flipped], "below-threshold"),
        (
            "second signature by a non-admin",
            &plain,
            vec![forged_admin],
            "below-threshold",
        ),
        ("the same admin twice", &plain, vec![twice], "below-threshold"),
        ("expired", &plain, vec![expired], "expired"),
        ("not yet valid", &plain, vec![future], "not-yet-valid"),
        (
            "certificate of another peer",
            &plain,
            vec![someone_else],
            "subject-mismatch",
        ),
        (
            "certificate of a consortium not joined",
            &plain,
            vec![foreign],
            "unknown-consortium",
        ),
        ("revoked serial", &revoked_serial, vec![good.clone()], "revoked"),
        ("revoked peer", &revoked_peer, vec![good.clone()], "revoked"),
        (
            "blocked peer with a good certificate",
            &blocked,
            vec![good.clone()],
            "blocked",
        ),
        ("bilateral trust", &bilateral, vec![], "trust"),
        ("bilateral trust expired", &bilateral_expired, vec![], "no-trust"),
        ("blocked bilateral peer", &blocked_bilateral, vec![], "blocked"),
        ("no consortium joined", &none, vec![good.clone()], "unknown-consortium"),
    ];
    for (name, st, certs, expected) in cases {
        let d = decide(st, &peer, &certs, NOW);
        assert_eq!(code(&d), expected, "{name}: {d:?}");
        if let TrustDecision::Refuse(r) = &d {
            assert!(r.to_string().len() > 20, "{name}: refusal sentence {r}");
        }
    }
    // The trusted answer carries the certified facts.
    let TrustDecision::Trust(t) = decide(&state(&c), &peer, &[good], NOW) else {
        panic!()
    };
    assert_eq!(t.institution, "Klinikum Nord");
    assert_eq!(t.purposes, vec![Purpose::Treatment]);
    assert_eq!(
        t.via,
        Via::Consortium {
            consortium: c.id.clone(),
            serial: 7
        }
    );
}

#[test]
fn descriptors_are_checked() {
    let c = consortium(3, 2);
    let bytes = c.to_bytes().unwrap();
    assert_eq!(Consortium::from_bytes(&bytes).unwrap(), c);
    let mut altered = c.clone();
    altered.threshold = 1;
    assert!(
        Consortium::from_bytes(&altered.to_bytes().unwrap()).is_err(),
        "changing the threshold changes the id"
    );
    let k = identity::ed25519_public_of(&admin(1));
    assert!(Consortium::new("x", vec![k, k], 1, NOW).is_err());
    assert!(Consortium::new("x", vec![k], 2, NOW).is_err());
    assert!(Consortium::new("x", vec![k], 0, NOW).is_err());
    assert!(Consortium::new("", vec![k], 1, NOW).is_err());
    assert!(Consortium::new("x", vec![], 1, NOW).is_err());
}

#[test]
fn cosign_and_revoke_refuse_misuse() {
    let c = consortium(2, 2);
    let (_, rec) = node("A");
    let mut x = cert(&c, &[1], &rec, 1);
    assert!(x.cosign(&c, &admin(1)).is_err(), "same admin twice");
    assert!(x.cosign(&c, &admin(7)).is_err(), "not an admin");
    x.cosign(&c, &admin(2)).unwrap();
    assert!(Certificate::issue(&c, &admin(1), &rec, vec![], NOW, NOW + 1, 2).is_err());
    assert!(Revocation::issue(&c, &admin(7), RevocationTarget::Serial(1), "r", NOW).is_err());
    assert!(Revocation::issue(&c, &admin(1), RevocationTarget::Serial(1), " ", NOW).is_err());
    let mut rev = Revocation::issue(&c, &admin(1), RevocationTarget::Serial(1), "r", NOW).unwrap();
    rev.signatures[0].sig[3] ^= 1;
    assert!(verify_revocation(&rev, &c).is_err());
    // Round trips.
    assert_eq!(Certificate::from_bytes(&x.to_bytes().unwrap()).unwrap(), x);
    let rev = Revocation::issue(&c, &admin(1), RevocationTarget::Peer("p".into()), "r", NOW).unwrap();
    assert_eq!(Revocation::from_bytes(&rev.to_bytes().unwrap()).unwrap(), rev);
    assert!(Certificate::from_bytes(b"junk").is_err());
}

fn revocation(c: &Consortium, signers: &[u8]) -> Revocation {
    let mut rev = Revocation::issue(c, &admin(signers[0]), RevocationTarget::Serial(7), "key lost", NOW).unwrap();
    for s in &signers[1..] {
        rev.cosign(c, &admin(*s)).unwrap();
    }
    rev
}

/// What [`verify_revocation`] says, as a short code.
fn rev_code(r: &Result<VerifiedRevocation, TrustError>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(TrustError::RevocationBelowThreshold {
            valid,
            invalid,
            threshold,
        }) => {
            format!("below {valid}/{threshold} bad {invalid}")
        }
        Err(TrustError::Invalid { field, .. }) => format!("invalid {field}"),
        Err(e) => format!("other {e}"),
    }
}

#[test]
fn revocation_verification_table() {
    let c1 = consortium(3, 2); // revocations: one signature (a version 1 descriptor)
    let c2 = consortium(3, 2).with_revocation_threshold(2).unwrap();
    let c3 = consortium(3, 1).with_revocation_threshold(3).unwrap();
    let other = Consortium::new(
        "other",
        (1..=3).map(|i| identity::ed25519_public_of(&admin(i))).collect(),
        1,
        NOW,
    )
    .unwrap();
    let forged = |mut r: Revocation, i: usize| {
        r.signatures[i].sig[5] ^= 1;
        r
    };
    let unknown_admin = |mut r: Revocation| {
        // Signed correctly, by a key that is not an admin of the consortium.
        let k = admin(9);
        r.signatures.push(AdminSignature {
            admin: identity::ed25519_public_of(&k).to_vec(),
            sig: identity::sign_raw(&k, REVOCATION_DOMAIN, &r.payload).to_vec(),
        });
        r
    };
    let twice = |mut r: Revocation| {
        let again = r.signatures[0].clone();
        r.signatures.push(again);
        r
    };
    let cases: Vec<(&str, Revocation, &Consortium, &str)> = vec![
        ("1 of 1 needed", revocation(&c1, &[1]), &c1, "ok"),
        ("1 of 2 needed", revocation(&c2, &[1]), &c2, "below 1/2 bad 0"),
        ("2 of 2 needed", revocation(&c2, &[1, 3]), &c2, "ok"),
        ("3 of 2 needed", revocation(&c2, &[1, 2, 3]), &c2, "ok"),
        ("2 of 3 needed", revocation(&c3, &[2, 3]), &c3, "below 2/3 bad 0"),
        ("3 of 3 needed", revocation(&c3, &[3, 1, 2]), &c3, "ok"),
        (
            "same admin twice counts once",
            twice(revocation(&c2, &[1])),
            &c2,
            "below 1/2 bad 0",
        ),
        (
            "forged only signature",
            forged(revocation(&c1, &[1]), 0),
            &c1,
            "below 0/1 bad 1",
        ),
        (
            "forged second of two",
            forged(revocation(&c2, &[1, 2]), 1),
            &c2,
            "below 1/2 bad 1",
        ),
        (
            "forged one of three, two left",
            forged(revocation(&c2, &[1, 2, 3]), 0),
            &c2,
            "ok",
        ),
        (
            "unknown admin adds nothing",
            unknown_admin(revocation(&c2, &[1])),
            &c2,
            "below 1/2 bad 1",
        ),
        (
            "unknown admin alone",
            {
                let mut r = unknown_admin(revocation(&c1, &[1]));
                r.signatures.remove(0);
                r
            },
            &c1,
            "below 0/1 bad 1",
        ),
        ("wrong consortium", revocation(&other, &[1]), &c1, "invalid consortium"),
        (
            "right signatures, checked under a stricter consortium",
            revocation(&c1, &[1]),
            &c2,
            "invalid consortium",
        ),
    ];
    for (name, rev, c, want) in cases {
        assert_eq!(rev_code(&verify_revocation(&rev, c)), want, "{name}");
    }
    // A revocation that verifies also survives its encoding.
    let r = revocation(&c2, &[2, 3]);
    let back = Revocation::from_bytes(&r.to_bytes().unwrap()).unwrap();
    assert!(verify_revocation(&back, &c2).is_ok());
}

#[test]
fn revocations_are_cosigned_like_certificates() {
    let c = consortium(3, 1).with_revocation_threshold(2).unwrap();
    let other = consortium(2, 1);
    let mut rev = revocation(&c, &[1]);
    assert!(rev.cosign(&c, &admin(1)).is_err(), "same admin twice");
    assert!(rev.cosign(&c, &admin(7)).is_err(), "not an admin");
    assert!(rev.cosign(&other, &admin(2)).is_err(), "another consortium");
    assert_eq!(rev.signatures.len(), 1);
    rev.cosign(&c, &admin(2)).unwrap();
    assert!(verify_revocation(&rev, &c).is_ok());
}

#[test]
fn the_revocation_threshold_is_part_of_the_descriptor() {
    let v1 = consortium(3, 2);
    assert_eq!((v1.v, v1.revocation_threshold), (1, 1));
    // Version 1 descriptors encode as before (no field) and keep their id.
    let bytes = v1.to_bytes().unwrap();
    assert!(!bytes.windows(20).any(|w| w == b"revocation_threshold"));
    assert_eq!(v1.clone().with_revocation_threshold(1).unwrap(), v1);
    let v2 = v1.clone().with_revocation_threshold(2).unwrap();
    assert_eq!(v2.v, CONSORTIUM_VERSION_REVOCATION_THRESHOLD);
    assert_ne!(v2.id, v1.id, "the revocation threshold is bound into the id");
    assert_eq!(Consortium::from_bytes(&v2.to_bytes().unwrap()).unwrap(), v2);
    // Altering it is detected.
    let mut lowered = v2.clone();
    lowered.revocation_threshold = 1;
    lowered.v = 1;
    assert!(
        Consortium::from_bytes(&lowered.to_bytes().unwrap()).is_err(),
        "lowered to 1"
    );
    let mut lowered = v2.clone();
    lowered.revocation_threshold = 3;
    assert!(
        Consortium::from_bytes(&lowered.to_bytes().unwrap()).is_err(),
        "raised, id kept"
    );
    // Out of range, and a version that does not match the field.
    assert!(v1.clone().with_revocation_threshold(0).is_err());
    assert!(v1.clone().with_revocation_threshold(4).is_err());
    let mut v2_with_one = v2.clone();
    v2_with_one.revocation_threshold = 1;
    v2_with_one.id = v2_with_one.compute_id().unwrap();
    assert!(
        v2_with_one.check().is_err(),
        "a version 2 descriptor exists only to carry a threshold above 1"
    );
    let mut v3 = v2;
    v3.v = 3;
    assert!(v3.check().is_err());
}

#[test]
fn revocation_summaries() {
    let h = |b: u8| [b; 32];
    let a = summarize_revocations(&[("c1".into(), h(1)), ("c2".into(), h(2)), ("c1".into(), h(3))]);
    let b = summarize_revocations(&[
        ("c1".into(), h(3)),
        ("c1".into(), h(1)),
        ("c1".into(), h(1)),
        ("c2".into(), h(2)),
    ]);
    assert_eq!(a, b, "order and duplicates do not matter");
    assert_eq!(
        a.iter().map(|s| (s.consortium.as_str(), s.count)).collect::<Vec<_>>(),
        vec![("c1", 2), ("c2", 1)]
    );
    let c = summarize_revocations(&[("c1".into(), h(1)), ("c2".into(), h(2))]);
    assert_ne!(a[0].digest, c[0].digest);
    assert_eq!(a[1], c[1]);
    assert!(summarize_revocations(&[]).is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Removing signatures never turns a refused certificate into a trusted one,
    /// and a certificate is trusted exactly when it has >= threshold distinct admin signatures.
    #[test]
    fn trust_needs_threshold_signatures(admins in 1u8..5, threshold_seed in 0u32..5, signers in proptest::collection::btree_set(1u8..5, 1..5)) {
        let threshold = threshold_seed % u32::from(admins) + 1;
        let c = consortium(admins, threshold);
        let (_, rec) = node("P");
        let signers: Vec<u8> = signers.into_iter().filter(|s| *s <= admins).collect();
        prop_assume!(!signers.is_empty());
        let x = cert(&c, &signers, &rec, 1);
        let trusted = matches!(decide(&state(&c), &rec.record().peer_id, std::slice::from_ref(&x), NOW), TrustDecision::Trust(_));
        prop_assert_eq!(trusted, signers.len() >= threshold as usize);
        let mut fewer = x;
        fewer.signatures.pop();
        let still = matches!(decide(&state(&c), &rec.record().peer_id, &[fewer], NOW), TrustDecision::Trust(_));
        prop_assert!(!still || trusted);
    }

    /// A blocked or revoked peer is never trusted, whatever it presents.
    #[test]
    fn blocked_or_revoked_is_never_trusted(block in any::<bool>(), serial in any::<u64>()) {
        let c = consortium(1, 1);
        let (_, rec) = node("P");
        let peer = rec.record().peer_id.clone();
        let mut st = state(&c);
        if block {
            st.blocked.push((peer.clone(), "b".into()));
        } else {
            st.revocations.push(verify_revocation(&Revocation::issue(&c, &admin(1), RevocationTarget::Serial(serial), "r", NOW).unwrap(), &c).unwrap());
        }
        st.bilateral.push(Bilateral { record: rec.clone(), purposes: vec![Purpose::Treatment], until: None }.clone());
        let x = cert(&c, &[1], &rec, serial);
        let d = decide(&st, &peer, &[x], NOW);
        if block {
            let blocked = matches!(d, TrustDecision::Refuse(Refusal::Blocked { .. }));
            prop_assert!(blocked);
        } else {
            // Bilateral trust is the site's own decision and survives a consortium revocation of a certificate.
            let bilateral = matches!(d, TrustDecision::Trust(Trusted { via: Via::Bilateral, .. }));
            prop_assert!(bilateral);
            st.bilateral.clear();
            let x = cert(&c, &[1], &rec, serial);
            let revoked = matches!(decide(&st, &peer, &[x], NOW), TrustDecision::Refuse(Refusal::Revoked { .. }));
            prop_assert!(revoked);
        }
    }
}
