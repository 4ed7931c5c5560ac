//! Test vectors of the trust formats and the hello (docs/vectors/trust-v1.json)
//! and of revocations that spread (docs/vectors/revocation-v2.json):
//! fixed keys give fixed bytes (Ed25519 signatures are deterministic). Run
//! with `MEDMESH_WRITE_VECTORS=1` to rewrite the file after a deliberate
//! format change.

use consent_schema::Purpose;

use crate::identity::{Identity, NODE_RECORD_VERSION, NodeRecord, VerifiedNodeRecord, ed25519_public_of};
use crate::trust::hello::{self, Hello};
use crate::trust::{Certificate, Consortium, Revocation, RevocationTarget, TrustState, verify_revocation};

const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/vectors/trust-v1.json");

struct Made {
    consortium: Vec<u8>,
    record: Vec<u8>,
    certificate: Vec<u8>,
    revocation: Vec<u8>,
    hello: Vec<u8>,
    peer_id: String,
}

fn make() -> Made {
    let id = Identity::from_secrets(&[1u8; 32], &[2u8; 32]).unwrap();
    let admin = [3u8; 32];
    let consortium = Consortium::new("vector consortium", vec![ed25519_public_of(&admin)], 1, 1_700_000_000).unwrap();
    let rec = NodeRecord {
        v: NODE_RECORD_VERSION,
        peer_id: id.peer_id(),
        ed25519: id.ed25519_public().to_vec(),
        x25519: id.x25519_public().to_vec(),
        institution: "Vector Hospital".into(),
        jurisdiction: "FR".into(),
        addrs: vec![],
        created: 1_700_000_000,
    };
    let record = VerifiedNodeRecord::from_envelope(rec.sign(&id).unwrap()).unwrap();
    let cert = Certificate::issue(
        &consortium,
        &admin,
        &record,
        vec![Purpose::Treatment, Purpose::Research],
        1_700_000_000,
        1_800_000_000,
        12345,
    )
    .unwrap();
    let rev = Revocation::issue(
        &consortium,
        &admin,
        RevocationTarget::Serial(12345),
        "vector",
        1_750_000_000,
    )
    .unwrap();
    let record_bytes = record.envelope().to_bytes().unwrap();
    let cert_bytes = cert.to_bytes().unwrap();
    Made {
        consortium: consortium.to_bytes().unwrap(),
        hello: Hello::new(record_bytes.clone(), vec![cert_bytes.clone()])
            .to_bytes()
            .unwrap(),
        record: record_bytes,
        certificate: cert_bytes,
        revocation: rev.to_bytes().unwrap(),
        peer_id: id.peer_id(),
    }
}

#[test]
fn trust_and_hello_vectors() {
    let m = make();
    let json = serde_json::json!({
        "description": "medmesh trust formats and /medmesh/hello/1, version 1 (docs/PROTOCOL.md sections 5, 7, 8). Keys: identity Ed25519 secret = 32 x 0x01, X25519 secret = 32 x 0x02, admin Ed25519 secret = 32 x 0x03.",
        "peer_id": m.peer_id,
        "consortium": hex::encode(&m.consortium),
        "node_record": hex::encode(&m.record),
        "certificate": hex::encode(&m.certificate),
        "revocation": hex::encode(&m.revocation),
        "hello": hex::encode(&m.hello),
        "decisions": [
            {"time": 1_750_000_000, "revocation_applied": false, "result": "trusted"},
            {"time": 1_750_000_000, "revocation_applied": true, "result": "revoked"},
            {"time": 1_900_000_000, "revocation_applied": false, "result": "expired"},
            {"time": 1_600_000_000, "revocation_applied": false, "result": "not-yet-valid"}
        ]
    });
    if std::env::var_os("MEDMESH_WRITE_VECTORS").is_some() {
        std::fs::write(FILE, serde_json::to_string_pretty(&json).unwrap() + "\n").unwrap();
    }
    let file: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(FILE).unwrap()).unwrap();
    for key in [
        "peer_id",
        "consortium",
        "node_record",
        "certificate",
        "revocation",
        "hello",
    ] {
        assert_eq!(file[key], json[key], "{key} differs from docs/vectors/trust-v1.json");
    }
    // Decode from the file's bytes and check the decisions.
    let bytes = |k: &str| hex::decode(file[k].as_str().unwrap()).unwrap();
    let consortium = Consortium::from_bytes(&bytes("consortium")).unwrap();
    let hello = Hello::from_bytes(&bytes("hello")).unwrap();
    let rev = verify_revocation(&Revocation::from_bytes(&bytes("revocation")).unwrap(), &consortium).unwrap();
    let peer = file["peer_id"].as_str().unwrap();
    for d in file["decisions"].as_array().unwrap() {
        let mut state = TrustState {
            consortia: vec![consortium.clone()],
            ..TrustState::default()
        };
        if d["revocation_applied"] == true {
            state.revocations.push(rev.clone());
        }
        let got = match hello::evaluate(&state, peer, &hello, d["time"].as_i64().unwrap()) {
            Ok(_) => "trusted".to_string(),
            Err(r) => r.code().to_string(),
        };
        assert_eq!(got, d["result"].as_str().unwrap(), "{d}");
    }
}

const REVOCATION_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/vectors/revocation-v2.json");

/// A version 2 consortium (revocations need 2 of 3 admins), a revocation
/// signed by one admin (refused) and by two (valid), a hello carrying a
/// revocation summary, and the gossip and catch-up messages that carry
/// revocations (docs/PROTOCOL.md §7, §7.4, §8, §14.4, §14.5).
#[test]
fn revocation_spreading_vectors() {
    use crate::ledger::LEDGER_VERSION;
    use crate::ledger::gossip::GossipMsg;
    use crate::ledger::sync::{SyncRequest, SyncResponse};
    let m = make();
    let admins: Vec<[u8; 32]> = vec![[3u8; 32], [4u8; 32], [5u8; 32]];
    let consortium = Consortium::new(
        "vector consortium",
        admins.iter().map(ed25519_public_of).collect(),
        1,
        1_700_000_000,
    )
    .unwrap()
    .with_revocation_threshold(2)
    .unwrap();
    let one = Revocation::issue(
        &consortium,
        &admins[0],
        RevocationTarget::Peer(m.peer_id.clone()),
        "vector",
        1_750_000_000,
    )
    .unwrap();
    let mut two = one.clone();
    two.cosign(&consortium, &admins[2]).unwrap();
    let two_bytes = two.to_bytes().unwrap();
    let summary = crate::trust::summarize_revocations(&[(consortium.id.clone(), *blake3::hash(&two_bytes).as_bytes())]);
    let hello = Hello::new(m.record.clone(), vec![]).with_revocations(summary.clone());
    let json = serde_json::json!({
        "description": "medmesh revocations that reach every member (docs/PROTOCOL.md sections 7, 7.4, 8, 14.4, 14.5). Admin Ed25519 secrets = 32 x 0x03, 0x04, 0x05; the node record is trust-v1.json's.",
        "consortium_v2": hex::encode(consortium.to_bytes().unwrap()),
        "revocation_one_signature": hex::encode(one.to_bytes().unwrap()),
        "revocation_two_signatures": hex::encode(&two_bytes),
        "hello_with_summary": hex::encode(hello.to_bytes().unwrap()),
        "gossip_message": hex::encode(GossipMsg::Revocation { v: LEDGER_VERSION, revocation: serde_bytes::ByteBuf::from(two_bytes.clone()) }.to_bytes().unwrap()),
        "catch_up_request": enc_hex(&SyncRequest::Revocations { v: LEDGER_VERSION, consortium: consortium.id.clone(), digest: vec![] }),
        "catch_up_response": enc_hex(&SyncResponse::Revocations { v: LEDGER_VERSION, consortium: consortium.id.clone(), revocations: vec![serde_bytes::ByteBuf::from(two_bytes.clone())] }),
    });
    if std::env::var_os("MEDMESH_WRITE_VECTORS").is_some() {
        std::fs::write(REVOCATION_FILE, serde_json::to_string_pretty(&json).unwrap() + "\n").unwrap();
    }
    let file: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(REVOCATION_FILE).unwrap()).unwrap();
    assert_eq!(file, json, "differs from docs/vectors/revocation-v2.json");
    let bytes = |k: &str| hex::decode(file[k].as_str().unwrap()).unwrap();
    let c = Consortium::from_bytes(&bytes("consortium_v2")).unwrap();
    assert_eq!((c.v, c.revocation_threshold), (2, 2));
    assert!(verify_revocation(&Revocation::from_bytes(&bytes("revocation_one_signature")).unwrap(), &c).is_err());
    assert!(
        verify_revocation(
            &Revocation::from_bytes(&bytes("revocation_two_signatures")).unwrap(),
            &c
        )
        .is_ok()
    );
    assert_eq!(
        Hello::from_bytes(&bytes("hello_with_summary")).unwrap().revocations,
        summary
    );
    assert!(matches!(
        GossipMsg::from_bytes(&bytes("gossip_message")).unwrap(),
        GossipMsg::Revocation { .. }
    ));
    assert!(matches!(
        crate::ledger::sync::decode_request(&bytes("catch_up_request")).unwrap(),
        SyncRequest::Revocations { .. }
    ));
    assert!(matches!(
        crate::ledger::sync::decode_response(&bytes("catch_up_response")).unwrap(),
        SyncResponse::Revocations { .. }
    ));
}

fn enc_hex<T: serde::Serialize>(v: &T) -> String {
    hex::encode(crate::cbor::encode("vector", v).unwrap())
}
