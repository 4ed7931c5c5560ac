//! Test vectors of the ledger (docs/vectors/ledger-v1.json, docs/PROTOCOL.md
//! §14): a feed of seven entries from a fixed key (Ed25519 signatures are
//! deterministic), a study commitment, and entries that must be refused. The
//! test checks every value independently where it can, then compares the
//! whole file with what this build generates (rewrite with
//! `MEDMESH_WRITE_VECTORS=1` after a deliberate format change).
#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};

use super::*;
use crate::identity::Identity;

const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/vectors/ledger-v1.json");
const AUTHOR_ED25519: [u8; 32] = [0x61; 32];
const AUTHOR_X25519: [u8; 32] = [0x62; 32];
const SALT: [u8; 32] = [0x5a; 32];
const STUDY_UID: &str = "1.2.826.0.1.3680043.10.1000.1";
const TIME: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

fn author() -> Identity {
    Identity::from_secrets(&AUTHOR_ED25519, &AUTHOR_X25519).unwrap()
}

fn events() -> Vec<Event> {
    let study = hex::encode(commitment(&SALT, STUDY_UID));
    vec![
        Event::ConsentAdded {
            consent: "c-0123456789abcdef".into(),
        },
        Event::TransferGranted {
            transfer: "000102030405060708090a0b0c0d0e0f".into(),
            peer: "12D3KooWExamplePeer".into(),
            purpose: "treatment".into(),
            level: "identifiable".into(),
            study: study.clone(),
            expires: TIME + 30 * 86400,
        },
        Event::Accessed {
            action: "export".into(),
            study: Some(study.clone()),
            objects: 2,
            role: "site-admin".into(),
        },
        Event::StudyPurged {
            study: study.clone(),
            reason: "erasure".into(),
        },
        Event::StudyForwarded {
            study: study.clone(),
            destination: "PACS".into(),
            objects: 2,
        },
        Event::StudyImported {
            study,
            objects: 3,
            source: "dicom".into(),
            calling_ae: Some("CT_SCANNER".into()),
        },
        Event::PersonActed {
            user: "0f1e2d3c4b5a69788796a5b4c3d2e1f0".into(),
            role: "data-steward".into(),
            operation: "decide-approval".into(),
            route: "/v1/approvals/approve".into(),
            via: "console".into(),
            target: Some("000102030405060708090a0b0c0d0e0f".into()),
        },
    ]
}

fn feed() -> Vec<SignedEntry> {
    let a = author();
    let mut out: Vec<SignedEntry> = Vec::new();
    for (i, ev) in events().into_iter().enumerate() {
        let head = out.last().map(|e| (e.entry.seq, e.id));
        out.push(make_entry(&a, head, TIME + i64::try_from(i).unwrap(), ev).unwrap());
    }
    out
}

fn generate() -> Value {
    let a = author();
    let f = feed();
    let mut flipped = f[1].bytes.clone();
    let n = flipped.len();
    flipped[n - 1] ^= 1;
    let mut broken = f[2].entry.clone();
    broken.prev = vec![0u8; 32];
    let broken = a
        .sign(ENTRY_DOMAIN, cbor::encode("e", &broken).unwrap())
        .to_bytes()
        .unwrap();
    let witness = gossip::make_witness(
        &a,
        1_767_229_200,
        vec![sync::Head {
            author: a.ed25519_public().to_vec(),
            seq: 3,
            id: f[2].id.to_vec(),
        }],
    )
    .unwrap();
    json!({
        "description": "medmesh ledger, version 1 (docs/PROTOCOL.md section 14): a feed of seven entries by the author with Ed25519 secret 32 x 0x61 (X25519 32 x 0x62), times from 2026-01-01T00:00:00Z, a study commitment from salt 32 x 0x5a, and two entries that must be refused as the successor of entry 1 or 2. Checked by node/src/ledger/vectors.rs; rewrite with MEDMESH_WRITE_VECTORS=1 after a deliberate format change.",
        "author": { "ed25519_secret": hex::encode(AUTHOR_ED25519), "ed25519": hex::encode(a.ed25519_public()), "peer_id": a.peer_id() },
        "commitment": { "context": COMMITMENT_CONTEXT, "salt": hex::encode(SALT), "study_uid": STUDY_UID, "commitment": hex::encode(commitment(&SALT, STUDY_UID)) },
        "entries": f.iter().map(|e| json!({
            "seq": e.entry.seq,
            "kind": e.entry.event.kind(),
            "payload": hex::encode(cbor::encode("e", &e.entry).unwrap()),
            "envelope": hex::encode(&e.bytes),
            "id": hex::encode(e.id),
            "prev": hex::encode(&e.entry.prev),
        })).collect::<Vec<_>>(),
        "sync": {
            "heads_request": hex::encode(cbor::encode("s", &sync::SyncRequest::Heads { v: LEDGER_VERSION }).unwrap()),
            "range_request": hex::encode(cbor::encode("s", &sync::SyncRequest::Range { v: LEDGER_VERSION, author: a.ed25519_public().to_vec(), from: 2, limit: 2 }).unwrap()),
            "heads_response": hex::encode(cbor::encode("s", &sync::SyncResponse::Heads { v: LEDGER_VERSION, heads: vec![sync::Head { author: a.ed25519_public().to_vec(), seq: 3, id: f[2].id.to_vec() }] }).unwrap()),
            "entries_response": hex::encode(cbor::encode("s", &sync::SyncResponse::Entries { v: LEDGER_VERSION, entries: f[1..].iter().map(|e| serde_bytes::ByteBuf::from(e.bytes.clone())).collect(), credentials: None }).unwrap()),
        },
        "gossip": {
            "topic": gossip::TOPIC,
            "entry_message": hex::encode(gossip::GossipMsg::Entry { v: LEDGER_VERSION, entry: serde_bytes::ByteBuf::from(f[2].bytes.clone()) }.to_bytes().unwrap()),
            "witness": {
                "what": "the author countersigns its own head at 2026-01-01T01:00:00Z (any member may; a node ignores its own)",
                "envelope": hex::encode(&witness.bytes),
                "message": hex::encode(gossip::GossipMsg::Witness { v: LEDGER_VERSION, witness: serde_bytes::ByteBuf::from(witness.bytes.clone()) }.to_bytes().unwrap()),
            },
        },
        "invalid": [
            { "what": "entry 2 with its last signature byte flipped", "envelope": hex::encode(flipped), "error": "signature" },
            { "what": "entry 3 signed by its author but naming no previous entry", "envelope": hex::encode(broken), "error": "does not name entry 2" },
        ],
    })
}

#[test]
fn ledger_vectors() {
    let generated = generate();
    if std::env::var_os("MEDMESH_WRITE_VECTORS").is_some_and(|v| v == "1") {
        std::fs::write(FILE, serde_json::to_string_pretty(&generated).unwrap() + "\n").unwrap();
    }
    let file: Value = serde_json::from_str(&std::fs::read_to_string(FILE).unwrap()).unwrap();
    let unhex = |v: &Value| hex::decode(v.as_str().unwrap()).unwrap();
    let c = &file["commitment"];
    let salt: [u8; 32] = unhex(&c["salt"]).try_into().unwrap();
    let mut material = salt.to_vec();
    material.extend_from_slice(c["study_uid"].as_str().unwrap().as_bytes());
    assert_eq!(
        unhex(&c["commitment"]),
        blake3::derive_key(c["context"].as_str().unwrap(), &material)
    );
    let author_key = unhex(&file["author"]["ed25519"]);
    let mut prev: Option<SignedEntry> = None;
    for v in file["entries"].as_array().unwrap() {
        let env = unhex(&v["envelope"]);
        assert_eq!(unhex(&v["id"]), blake3::hash(&env).as_bytes());
        let e = open_entry(&env).unwrap();
        assert_eq!(e.entry.author, author_key);
        assert_eq!(v["seq"], e.entry.seq);
        assert_eq!(v["kind"], e.entry.event.kind());
        assert_eq!(unhex(&v["payload"]), cbor::encode("e", &e.entry).unwrap());
        assert_eq!(unhex(&v["prev"]), e.entry.prev);
        match &prev {
            Some(p) => check_link(p, &e).unwrap(),
            None => assert_eq!(e.entry.prev, vec![0u8; 32]),
        }
        prev = Some(e);
    }
    let entries: Vec<SignedEntry> = file["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| open_entry(&unhex(&v["envelope"])).unwrap())
        .collect();
    for (i, v) in file["invalid"].as_array().unwrap().iter().enumerate() {
        let err = match open_entry(&unhex(&v["envelope"])) {
            Err(e) => e.to_string(),
            Ok(e) => check_link(&entries[i], &e).unwrap_err().to_string(),
        };
        assert!(err.contains(v["error"].as_str().unwrap()), "{}: {err}", v["what"]);
    }
    // The gossip messages decode, and the witness opens as the author's, naming entry 3.
    let g = &file["gossip"];
    match gossip::GossipMsg::from_bytes(&unhex(&g["entry_message"])).unwrap() {
        gossip::GossipMsg::Entry { entry, .. } => assert_eq!(open_entry(&entry).unwrap().id, entries[2].id),
        other => panic!("not an entry message: {other:?}"),
    }
    let w = gossip::open_witness(&unhex(&g["witness"]["envelope"])).unwrap();
    assert_eq!(w.witness.witness, author_key);
    assert_eq!(w.witness.heads[0].id, entries[2].id.to_vec());
    assert!(matches!(
        gossip::GossipMsg::from_bytes(&unhex(&g["witness"]["message"])).unwrap(),
        gossip::GossipMsg::Witness { .. }
    ));
    assert_eq!(
        file, generated,
        "docs/vectors/ledger-v1.json differs from this build's output"
    );
}
