//! Test vectors of transfers (docs/vectors/transfer-v1.json, docs/PROTOCOL.md §12):
//! fixed keys, a fixed ephemeral key, fixed salts and times give fixed bytes
//! (Ed25519 signatures are deterministic). The test decodes the file's bytes
//! and checks every value against an independent computation, then compares
//! the whole file with what this build generates. Run with
//! `MEDMESH_WRITE_VECTORS=1` to rewrite the file after a deliberate format
//! change.

use std::collections::BTreeMap;

use consent_schema::{DeidLevel, Purpose, Role};
use ed25519_dalek::{Signature, VerifyingKey};
use medmesh_seal::{DataKey, HEADER_LEN, Header, Sealer, TAG_LEN};
use serde_json::{Value, json};

use super::wire::{
    self, Answer, AnswerBody, CHUNK_SIZE, GRANT_DOMAIN, Grant, Have, KEY_CONTEXT, MANIFEST_DOMAIN, MAX_MANIFEST,
    MAX_MESSAGE, Manifest, ManifestObject, Msg, MsgBody, ObjectKind, Open, RECEIPT_DOMAIN, ROOT_CONTEXT, Receipt,
    Refuse, StudyIndex, WIRE_VERSION, chunk_hashes, frame,
};
use crate::consent::Reason;
use crate::dicom::StudyAttributes;
use crate::identity::Identity;
use crate::store::{InstanceMeta, SeriesMeta, StudyMeta};

const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/vectors/transfer-v1.json");

const HOLDER_ED25519: [u8; 32] = [0x11; 32];
const HOLDER_X25519: [u8; 32] = [0x12; 32];
const RECIPIENT_ED25519: [u8; 32] = [0x21; 32];
const RECIPIENT_X25519: [u8; 32] = [0x22; 32];
const EPHEMERAL_X25519: [u8; 32] = [0x33; 32];
const TRANSFER_ID: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
const REQUEST_ID: &str = "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";
const STUDY_UID: &str = "1.2.826.0.1.3680043.10.1161.1";
const SERIES_UID: &str = "1.2.826.0.1.3680043.10.1161.1.1";
const SESSION: u64 = 0x0102_0304_0506_0708;
const ISSUED: i64 = 1_750_000_000;
const EXPIRES: i64 = 1_752_592_000;
const CREATED: i64 = 1_750_000_060;
const RECEIVED: i64 = 1_750_000_120;
/// Largest `OPEN` body accepted by the engine (its `MAX_FRAME`).
const MAX_OPEN: usize = MAX_MANIFEST + MAX_MESSAGE + 4096;

fn hx(b: &[u8]) -> String {
    hex::encode(b)
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap_or_else(|| panic!("not a hex string: {v}"))).unwrap()
}

fn holder() -> Identity {
    Identity::from_secrets(&HOLDER_ED25519, &HOLDER_X25519).unwrap()
}

fn recipient() -> Identity {
    Identity::from_secrets(&RECIPIENT_ED25519, &RECIPIENT_X25519).unwrap()
}

/// The plaintext of the two DICOM objects (not real DICOM: the format does
/// not look inside them).
fn dicom_objects() -> Vec<Vec<u8>> {
    vec![b"medmesh transfer vector, object 0".to_vec(), (0u8..100).collect()]
}

fn salt(i: usize) -> [u8; 32] {
    [0x40 + u8::try_from(i).unwrap(); 32]
}

fn study_index(objects: &[Vec<u8>]) -> StudyIndex {
    let mut series = BTreeMap::new();
    series.insert(
        SERIES_UID.to_string(),
        SeriesMeta {
            number: Some(1),
            description: "vector series".into(),
            modality: "CT".into(),
            instances: 2,
        },
    );
    StudyIndex {
        v: WIRE_VERSION,
        study: StudyMeta {
            study_uid: STUDY_UID.into(),
            attrs: StudyAttributes {
                patient_name: "Vector^Patient".into(),
                patient_id: "VEC-0001".into(),
                issuer_of_patient_id: "VECTOR-HOSPITAL".into(),
                birth_date: "19700101".into(),
                sex: "O".into(),
                accession_number: "A0001".into(),
                study_id: "1".into(),
                study_date: "20250615".into(),
                study_time: "120000".into(),
                study_description: "Vector study".into(),
                referring_physician: String::new(),
                institution: "Vector Hospital".into(),
                admission_id: Some("ADM-0001".into()),
            },
            series,
        },
        instances: objects
            .iter()
            .enumerate()
            .map(|(i, o)| InstanceMeta {
                sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
                sop_instance_uid: format!("{SERIES_UID}.{}", i + 1),
                series_uid: SERIES_UID.into(),
                instance_number: Some(i64::try_from(i).unwrap() + 1),
                transfer_syntax: "1.2.840.10008.1.2.1".into(),
                blake3: blake3::hash(o).as_bytes().to_vec(),
                part10: true,
                frames: 1,
                notes: Vec::new(),
                chunks: chunk_hashes(o),
                modality: None,
            })
            .collect(),
    }
}

fn header(i: usize, plain: &[u8]) -> Header {
    Header {
        chunk_size: CHUNK_SIZE,
        object_index: u32::try_from(i).unwrap(),
        plaintext_len: plain.len() as u64,
        salt: salt(i),
        streamed: false,
    }
}

/// Object `i` sealed with the transfer key: the sealed object of §1.
fn seal(key: &DataKey, i: usize, plain: &[u8]) -> Vec<u8> {
    let h = header(i, plain);
    let mut sealer = Sealer::new(key, h);
    let mut out = h.encode().to_vec();
    for (n, c) in plain.chunks(CHUNK_SIZE as usize).enumerate() {
        let mut chunk = c.to_vec();
        let tag = sealer.seal_chunk_at(n as u64, &mut chunk).unwrap();
        out.extend_from_slice(&chunk);
        out.extend_from_slice(&tag);
    }
    if plain.is_empty() {
        let tag = sealer.seal_chunk(&mut []).unwrap();
        out.extend_from_slice(&tag);
    }
    out
}

fn frame_bytes(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut f = u32::try_from(body.len() + 1).unwrap().to_be_bytes().to_vec();
    f.push(kind);
    f.extend_from_slice(body);
    f
}

fn grant_doc(holder: &Identity, recipient: &Identity) -> Grant {
    Grant {
        v: WIRE_VERSION,
        transfer_id: hex::encode(TRANSFER_ID),
        request_id: Some(REQUEST_ID.into()),
        holder: holder.peer(),
        recipient: recipient.peer(),
        recipient_x25519: recipient.x25519_public().to_vec(),
        study_uid: STUDY_UID.into(),
        purpose: Purpose::Treatment,
        role: Role::Radiologist,
        level: DeidLevel::Identifiable,
        series: vec![SERIES_UID.into()],
        consents: vec!["c-0123456789abcdef".into()],
        issued: ISSUED,
        expires: EXPIRES,
        // The holder's ledger commitment of the study, from salt 32 x 0x5a.
        study_ref: crate::ledger::commitment(&[0x5a; 32], STUDY_UID).to_vec(),
    }
}

fn sign(id: &Identity, domain: &str, payload: &[u8]) -> Vec<u8> {
    id.sign(domain, payload.to_vec()).to_bytes().unwrap()
}

fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    wire::encode("vector", v).unwrap()
}

/// Everything the file holds, made from the fixed inputs.
#[allow(clippy::too_many_lines)] // one document after the other, as in the file
fn generate() -> Value {
    let (holder, recipient) = (holder(), recipient());
    let id = TRANSFER_ID;
    // Transfer key.
    let eph = x25519_dalek::StaticSecret::from(EPHEMERAL_X25519);
    let eph_pub = x25519_dalek::PublicKey::from(&eph).to_bytes();
    let shared = eph.diffie_hellman(&x25519_dalek::PublicKey::from(recipient.x25519_public()));
    assert!(shared.was_contributory());
    let key = super::transfer_key(shared.as_bytes(), &eph_pub, &recipient.x25519_public(), &id);

    // Grant.
    let grant = grant_doc(&holder, &recipient);
    let grant_payload = enc(&grant);
    let grant_env = sign(&holder, GRANT_DOMAIN, &grant_payload);

    // Objects: two DICOM objects, then the study index.
    let dicom = dicom_objects();
    let index = study_index(&dicom);
    let mut plains = dicom.clone();
    plains.push(enc(&index));
    let objects: Vec<ManifestObject> = plains
        .iter()
        .enumerate()
        .map(|(i, p)| ManifestObject {
            kind: if i + 1 == plains.len() {
                ObjectKind::Index
            } else {
                ObjectKind::Dicom
            },
            size: p.len() as u64,
            blake3: blake3::hash(p).as_bytes().to_vec(),
            salt: salt(i).to_vec(),
            chunks: chunk_hashes(p),
        })
        .collect();
    let root = wire::objects_root(&objects);

    // The identifiable transfer's attestation: no profile, hashes unchanged.
    let attestation = wire::Attestation {
        v: WIRE_VERSION,
        transfer_id: hex::encode(id),
        holder: holder.peer(),
        level: DeidLevel::Identifiable,
        profile: Vec::new(),
        options: Vec::new(),
        table_version: String::new(),
        objects: objects
            .iter()
            .filter(|o| o.kind == ObjectKind::Dicom)
            .map(|o| wire::AttestedObject {
                before: o.blake3.clone(),
                after: o.blake3.clone(),
            })
            .collect(),
        created: CREATED,
    };
    let attestation_env = sign(&holder, wire::ATTESTATION_DOMAIN, &enc(&attestation));

    // Manifest.
    let manifest = Manifest {
        v: WIRE_VERSION,
        transfer_id: hex::encode(id),
        grant_hash: blake3::hash(&grant_env).as_bytes().to_vec(),
        holder: holder.peer(),
        recipient: recipient.peer(),
        recipient_x25519: recipient.x25519_public().to_vec(),
        ephemeral_x25519: eph_pub.to_vec(),
        chunk_size: CHUNK_SIZE,
        objects: objects.clone(),
        created: CREATED,
        attestation: attestation_env.clone(),
    };
    let manifest_payload = enc(&manifest);
    let manifest_env = sign(&holder, MANIFEST_DOMAIN, &manifest_payload);

    // Receipt.
    let receipt = Receipt {
        v: WIRE_VERSION,
        transfer_id: hex::encode(id),
        manifest_hash: blake3::hash(&manifest_env).as_bytes().to_vec(),
        objects_root: root.to_vec(),
        holder: holder.peer(),
        recipient: recipient.peer(),
        received: RECEIVED,
    };
    let receipt_payload = enc(&receipt);
    let receipt_env = sign(&recipient, RECEIPT_DOMAIN, &receipt_payload);

    // Sealed objects and the CHUNK frame of object 0, chunk 0.
    let sealed: Vec<Vec<u8>> = plains.iter().enumerate().map(|(i, p)| seal(&key, i, p)).collect();
    let mut chunk_body = 0u32.to_be_bytes().to_vec();
    chunk_body.extend_from_slice(&0u64.to_be_bytes());
    chunk_body.extend_from_slice(&sealed[0][HEADER_LEN..]);

    // Stream frames.
    let open = Open {
        v: WIRE_VERSION,
        session: SESSION,
        grant: grant_env.clone(),
        manifest: manifest_env.clone(),
    };
    let have = |chunks: Vec<u64>| Have {
        v: WIRE_VERSION,
        chunks,
    };
    let refuse = Refuse {
        v: WIRE_VERSION,
        code: "grant-expired".into(),
        text: "the grant has expired".into(),
        permanent: true,
    };
    let frames = [
        ("open", frame::OPEN, enc(&open)),
        ("have-nothing", frame::HAVE, enc(&have(vec![0, 0, 0]))),
        ("refuse", frame::REFUSE, enc(&refuse)),
        ("chunk-object-0-chunk-0", frame::CHUNK, chunk_body),
        ("done", frame::DONE, Vec::new()),
        ("have-everything", frame::HAVE, enc(&have(vec![1, 1, 1]))),
    ];

    // Messages of /medmesh/transfer/1.
    let msg = |body| enc(&Msg { v: WIRE_VERSION, body });
    let answer = |body| enc(&Answer { v: WIRE_VERSION, body });
    let messages = [
        (
            "request",
            "msg",
            msg(MsgBody::Request {
                request_id: REQUEST_ID.into(),
                study_uid: STUDY_UID.into(),
                purpose: Purpose::Treatment,
                role: Role::Radiologist,
                level: None,
            }),
        ),
        (
            "decided",
            "msg",
            msg(MsgBody::Decided {
                transfer_id: hex::encode(id),
                reasons: vec![Reason {
                    code: "denied-by-approver".into(),
                    text: "not for this purpose".into(),
                }],
            }),
        ),
        (
            "receipt",
            "msg",
            msg(MsgBody::Receipt {
                receipt: receipt_env.clone(),
            }),
        ),
        (
            "granted",
            "answer",
            answer(AnswerBody::Granted {
                transfer_id: hex::encode(id),
                grant: grant_env.clone(),
            }),
        ),
        (
            "denied",
            "answer",
            answer(AnswerBody::Denied {
                transfer_id: Some(hex::encode(id)),
                reasons: vec![super::not_available()],
            }),
        ),
        (
            "pending",
            "answer",
            answer(AnswerBody::Pending {
                transfer_id: hex::encode(id),
                reasons: vec![Reason {
                    code: "purpose-requires-approval".into(),
                    text: "site policy sends every research request to a human (policy.approval_required)".into(),
                }],
            }),
        ),
        ("ack", "answer", answer(AnswerBody::Ack)),
        (
            "refused",
            "answer",
            answer(AnswerBody::Refused {
                code: "receipt-mismatch".into(),
                text: "the receipt names another manifest or other objects".into(),
            }),
        ),
        (
            "retry-later",
            "answer",
            answer(AnswerBody::RetryLater {
                code: "rate-limited".into(),
                text: "more than 30 transfer requests a minute from this peer; try again in 2 s".into(),
                retry_after_secs: 2,
            }),
        ),
    ];

    json!({
        "description": "medmesh transfers, version 1 (docs/PROTOCOL.md section 12): /medmesh/transfer/1 messages, the signed grant, manifest and receipt, the transfer key, sealed objects and /medmesh/stream/1 frames, made from fixed keys. Holder Ed25519 secret = 32 x 0x11, X25519 = 32 x 0x12; recipient Ed25519 = 32 x 0x21, X25519 = 32 x 0x22; the holder's ephemeral X25519 secret = 32 x 0x33; object i has salt 32 x (0x40 + i). The two DICOM objects are short byte strings (the format does not look inside them). Checked by node/src/transfer/vectors.rs; rewrite with MEDMESH_WRITE_VECTORS=1 after a deliberate format change.",
        "keys": {
            "holder_ed25519_secret": hx(&HOLDER_ED25519),
            "holder_x25519_secret": hx(&HOLDER_X25519),
            "holder_ed25519": hx(&holder.ed25519_public()),
            "holder_peer_id": holder.peer_id(),
            "recipient_ed25519_secret": hx(&RECIPIENT_ED25519),
            "recipient_x25519_secret": hx(&RECIPIENT_X25519),
            "recipient_ed25519": hx(&recipient.ed25519_public()),
            "recipient_x25519": hx(&recipient.x25519_public()),
            "recipient_peer_id": recipient.peer_id(),
            "ephemeral_x25519_secret": hx(&EPHEMERAL_X25519),
            "ephemeral_x25519": hx(&eph_pub),
        },
        "transfer_id": hex::encode(id),
        "transfer_key": {
            "context": KEY_CONTEXT,
            "shared_secret": hx(shared.as_bytes()),
            "key_material": hx(&[shared.as_bytes().as_slice(), &eph_pub, &recipient.x25519_public(), &id].concat()),
            "key": hx(key.expose_secret()),
        },
        "grant": {
            "payload": hx(&grant_payload),
            "envelope": hx(&grant_env),
            "envelope_blake3": hx(blake3::hash(&grant_env).as_bytes()),
        },
        "objects": plains.iter().zip(&sealed).enumerate().map(|(i, (p, s))| json!({
            "kind": if i + 1 == plains.len() { "index" } else { "dicom" },
            "object_index": i,
            "plaintext": hx(p),
            "salt": hx(&salt(i)),
            "blake3": hx(blake3::hash(p).as_bytes()),
            "sealed": hx(s),
        })).collect::<Vec<_>>(),
        "manifest": {
            "payload": hx(&manifest_payload),
            "envelope": hx(&manifest_env),
            "envelope_blake3": hx(blake3::hash(&manifest_env).as_bytes()),
        },
        "objects_root": {
            "context": ROOT_CONTEXT,
            "root": hx(&root),
        },
        "receipt": {
            "payload": hx(&receipt_payload),
            "envelope": hx(&receipt_env),
        },
        "frames": frames.iter().map(|(name, kind, body)| json!({
            "name": name,
            "type": kind,
            "frame": hx(&frame_bytes(*kind, body)),
        })).collect::<Vec<_>>(),
        "messages": messages.iter().map(|(name, decoder, bytes)| json!({
            "name": name,
            "decoder": decoder,
            "cbor": hx(bytes),
        })).collect::<Vec<_>>(),
        "invalid": invalid(&holder, &recipient, &grant_env, &manifest, &receipt),
    })
}

/// An input that must be refused: name, decoder, bytes, times repeated, error fragment.
type Invalid = (&'static str, &'static str, Vec<u8>, Option<usize>, String);

/// Inputs that must be refused, with a fragment of the error.
fn invalid(holder: &Identity, recipient: &Identity, grant_env: &[u8], manifest: &Manifest, receipt: &Receipt) -> Value {
    let mut cases: Vec<Invalid> = Vec::new();
    let msg_v2 = enc(&Msg {
        v: 2,
        body: MsgBody::Decided {
            transfer_id: hex::encode(TRANSFER_ID),
            reasons: Vec::new(),
        },
    });
    cases.push((
        "msg-version-2",
        "msg",
        msg_v2,
        None,
        "transfer message has version 2, this build reads version 1".into(),
    ));
    cases.push((
        "answer-version-2",
        "answer",
        enc(&Answer {
            v: 2,
            body: AnswerBody::Ack,
        }),
        None,
        "transfer answer has version 2, this build reads version 1".into(),
    ));
    cases.push((
        "msg-oversize",
        "msg",
        vec![0],
        Some(MAX_MESSAGE + 1),
        format!(
            "transfer message is {} bytes, over the limit of {MAX_MESSAGE} bytes",
            MAX_MESSAGE + 1
        ),
    ));
    let mut trailing = enc(&Answer {
        v: WIRE_VERSION,
        body: AnswerBody::Ack,
    });
    trailing.push(0);
    cases.push((
        "answer-trailing-byte",
        "answer",
        trailing,
        None,
        "transfer answer has 1 trailing bytes after the record".into(),
    ));
    #[derive(serde::Serialize)]
    struct Kind {
        kind: &'static str,
    }
    #[derive(serde::Serialize)]
    struct Unknown {
        v: u32,
        body: Kind,
    }
    cases.push((
        "msg-unknown-kind",
        "msg",
        enc(&Unknown {
            v: WIRE_VERSION,
            body: Kind {
                kind: "send-everything",
            },
        }),
        None,
        "transfer message is not valid CBOR of the expected shape".into(),
    ));
    // Manifests signed by the holder whose shape is wrong.
    let signed = |m: &Manifest| sign(holder, MANIFEST_DOMAIN, &enc(m));
    let mut m = manifest.clone();
    let extra = m.objects[0].chunks.clone();
    m.objects[0].chunks.extend_from_slice(&extra);
    cases.push((
        "manifest-chunk-hash-count",
        "manifest",
        signed(&m),
        None,
        "manifest: object 0: 2 chunk hashes for 1 chunks".into(),
    ));
    let mut m = manifest.clone();
    m.chunk_size = 64 * 1024;
    cases.push((
        "manifest-chunk-size",
        "manifest",
        signed(&m),
        None,
        format!("manifest: chunk size 65536 (this node takes {CHUNK_SIZE})"),
    ));
    let mut m = manifest.clone();
    m.objects.rotate_right(1);
    cases.push((
        "manifest-index-first",
        "manifest",
        signed(&m),
        None,
        "manifest: object 0: the index object must be the last, and only it".into(),
    ));
    let mut m = manifest.clone();
    m.ephemeral_x25519.pop();
    cases.push((
        "manifest-short-ephemeral-key",
        "manifest",
        signed(&m),
        None,
        "manifest: a key or hash is not 32 bytes".into(),
    ));
    cases.push((
        "grant-opened-as-manifest",
        "manifest",
        grant_env.to_vec(),
        None,
        format!("expected a signed {MANIFEST_DOMAIN}, found a signed {GRANT_DOMAIN}"),
    ));
    let mut flipped = grant_env.to_vec();
    if let Some(b) = flipped.last_mut() {
        *b ^= 0x01;
    }
    cases.push((
        "grant-signature-flipped",
        "grant",
        flipped,
        None,
        format!("signature on {GRANT_DOMAIN} does not verify"),
    ));
    let mut r = receipt.clone();
    r.v = 2;
    cases.push((
        "receipt-version-2",
        "receipt",
        sign(recipient, RECEIPT_DOMAIN, &enc(&r)),
        None,
        "receipt has version 2, this build reads version 1".into(),
    ));
    cases.push((
        "have-version-2",
        "have",
        enc(&Have { v: 2, chunks: vec![0] }),
        None,
        "have has version 2, this build reads version 1".into(),
    ));
    Value::Array(
        cases
            .into_iter()
            .map(|(name, decoder, input, repeat, error)| {
                let mut v = json!({"name": name, "decoder": decoder, "input": hx(&input), "error": error});
                if let Some(n) = repeat {
                    v["repeat"] = json!(n);
                }
                v
            })
            .collect(),
    )
}

/// Decodes `bytes` as the decoder named in the file does on a node.
fn decode(decoder: &str, bytes: &[u8]) -> Result<(), String> {
    let e = |e: wire::WireError| e.to_string();
    match decoder {
        "msg" => wire::decode::<Msg>("transfer message", bytes, MAX_MESSAGE)
            .map(drop)
            .map_err(e),
        "answer" => wire::decode::<Answer>("transfer answer", bytes, MAX_MESSAGE)
            .map(drop)
            .map_err(e),
        "grant" => wire::open_signed::<Grant>("grant", GRANT_DOMAIN, bytes, MAX_MESSAGE)
            .map(drop)
            .map_err(e),
        "manifest" => {
            let (_, m) = wire::open_signed::<Manifest>("manifest", MANIFEST_DOMAIN, bytes, MAX_MANIFEST).map_err(e)?;
            wire::check_manifest(&m).map_err(e)
        }
        "receipt" => wire::open_signed::<Receipt>("receipt", RECEIPT_DOMAIN, bytes, MAX_MESSAGE)
            .map(drop)
            .map_err(e),
        "have" => wire::decode::<Have>("have", bytes, MAX_MESSAGE).map(drop).map_err(e),
        other => panic!("unknown decoder {other}"),
    }
}

/// Checks an envelope's Ed25519 signature directly (§5 signing input), not through the decoder.
fn check_signature(env: &[u8], domain: &str, payload: &[u8], signer: &[u8; 32]) {
    let e = crate::identity::SignedEnvelope::from_bytes(env).unwrap();
    assert_eq!(e.domain, domain);
    assert_eq!(
        e.payload, payload,
        "{domain}: envelope payload differs from the file's payload"
    );
    assert_eq!(e.signer, signer, "{domain}: signer");
    let mut input = b"medmesh/v1/envelope\0".to_vec();
    input.extend_from_slice(domain.as_bytes());
    input.push(0);
    input.extend_from_slice(payload);
    let sig = Signature::from_slice(&e.signature).unwrap();
    VerifyingKey::from_bytes(signer)
        .unwrap()
        .verify_strict(&input, &sig)
        .unwrap_or_else(|_| panic!("{domain}: signature does not verify"));
}

#[test]
#[allow(clippy::too_many_lines)] // one check after the other, in the file's order
fn transfer_vectors() {
    let generated = generate();
    if std::env::var_os("MEDMESH_WRITE_VECTORS").is_some_and(|v| v == "1") {
        std::fs::write(FILE, serde_json::to_string_pretty(&generated).unwrap() + "\n").unwrap();
    }
    let file: Value = serde_json::from_str(&std::fs::read_to_string(FILE).unwrap()).unwrap();

    // Keys: from the file's secrets.
    let k = &file["keys"];
    let secret = |name: &str| -> [u8; 32] { unhex(&k[name]).try_into().unwrap() };
    let holder = Identity::from_secrets(&secret("holder_ed25519_secret"), &secret("holder_x25519_secret")).unwrap();
    let recipient =
        Identity::from_secrets(&secret("recipient_ed25519_secret"), &secret("recipient_x25519_secret")).unwrap();
    assert_eq!(k["holder_peer_id"], holder.peer_id());
    assert_eq!(k["recipient_peer_id"], recipient.peer_id());
    assert_eq!(unhex(&k["holder_ed25519"]), holder.ed25519_public());
    assert_eq!(unhex(&k["recipient_ed25519"]), recipient.ed25519_public());
    assert_eq!(unhex(&k["recipient_x25519"]), recipient.x25519_public());
    let eph = x25519_dalek::StaticSecret::from(secret("ephemeral_x25519_secret"));
    let eph_pub: [u8; 32] = unhex(&k["ephemeral_x25519"]).try_into().unwrap();
    assert_eq!(x25519_dalek::PublicKey::from(&eph).to_bytes(), eph_pub);
    let id: [u8; 16] = unhex(&file["transfer_id"]).try_into().unwrap();

    // Transfer key: both sides of X25519 agree, the layout of the key material, the key.
    let tk = &file["transfer_key"];
    assert_eq!(tk["context"], KEY_CONTEXT);
    let holder_side = eph.diffie_hellman(&x25519_dalek::PublicKey::from(recipient.x25519_public()));
    let recipient_side = x25519_dalek::StaticSecret::from(*recipient.x25519_secret())
        .diffie_hellman(&x25519_dalek::PublicKey::from(eph_pub));
    assert!(holder_side.was_contributory() && recipient_side.was_contributory());
    assert_eq!(holder_side.as_bytes(), recipient_side.as_bytes());
    assert_eq!(unhex(&tk["shared_secret"]), holder_side.as_bytes());
    let material = [
        holder_side.as_bytes().as_slice(),
        &eph_pub,
        &recipient.x25519_public(),
        &id,
    ]
    .concat();
    assert_eq!(unhex(&tk["key_material"]), material);
    let key_bytes: [u8; 32] = unhex(&tk["key"]).try_into().unwrap();
    assert_eq!(blake3::derive_key(KEY_CONTEXT, &material), key_bytes);
    let key = super::transfer_key(recipient_side.as_bytes(), &eph_pub, &recipient.x25519_public(), &id);
    assert_eq!(key.expose_secret(), &key_bytes, "transfer_key differs from the file");
    // A low-order ephemeral key gives a non-contributory secret (the recipient refuses it).
    let low_order = x25519_dalek::StaticSecret::from(*recipient.x25519_secret())
        .diffie_hellman(&x25519_dalek::PublicKey::from([0u8; 32]));
    assert!(!low_order.was_contributory());

    // Grant.
    let g = &file["grant"];
    let grant_env = unhex(&g["envelope"]);
    let grant_payload = unhex(&g["payload"]);
    check_signature(&grant_env, GRANT_DOMAIN, &grant_payload, &holder.ed25519_public());
    let (signer, grant) = wire::open_signed::<Grant>("grant", GRANT_DOMAIN, &grant_env, MAX_MESSAGE).unwrap();
    assert_eq!(signer, holder.ed25519_public());
    assert_eq!(grant, grant_doc(&holder, &recipient));
    assert_eq!(
        enc(&grant),
        grant_payload,
        "grant does not re-encode to the file's payload"
    );
    assert_eq!(unhex(&g["envelope_blake3"]), blake3::hash(&grant_env).as_bytes());

    // Manifest.
    let m = &file["manifest"];
    let manifest_env = unhex(&m["envelope"]);
    let manifest_payload = unhex(&m["payload"]);
    check_signature(
        &manifest_env,
        MANIFEST_DOMAIN,
        &manifest_payload,
        &holder.ed25519_public(),
    );
    let (signer, manifest) =
        wire::open_signed::<Manifest>("manifest", MANIFEST_DOMAIN, &manifest_env, MAX_MANIFEST).unwrap();
    assert_eq!(signer, holder.ed25519_public());
    wire::check_manifest(&manifest).unwrap();
    assert_eq!(enc(&manifest), manifest_payload);
    assert_eq!(unhex(&m["envelope_blake3"]), blake3::hash(&manifest_env).as_bytes());
    assert_eq!(manifest.transfer_id, hex::encode(id));
    assert_eq!(manifest.transfer_id, grant.transfer_id);
    assert_eq!(manifest.grant_hash, blake3::hash(&grant_env).as_bytes());
    assert_eq!(manifest.holder, holder.peer());
    assert_eq!(manifest.recipient, recipient.peer());
    assert_eq!(manifest.recipient_x25519, recipient.x25519_public());
    assert_eq!(manifest.ephemeral_x25519, eph_pub);
    assert_eq!(manifest.chunk_size, 256 * 1024);
    assert_eq!(manifest.created, CREATED);
    // The attestation of an identifiable transfer: signed by the holder, no
    // profile, every DICOM object with its hash unchanged.
    let (asigner, att) = wire::open_signed::<wire::Attestation>(
        "attestation",
        wire::ATTESTATION_DOMAIN,
        &manifest.attestation,
        MAX_MANIFEST,
    )
    .unwrap();
    assert_eq!(asigner, holder.ed25519_public());
    assert_eq!(att.transfer_id, manifest.transfer_id);
    assert_eq!(att.level, DeidLevel::Identifiable);
    assert!(att.profile.is_empty() && att.table_version.is_empty());
    let dicom: Vec<_> = manifest
        .objects
        .iter()
        .filter(|o| o.kind == ObjectKind::Dicom)
        .collect();
    assert_eq!(att.objects.len(), dicom.len());
    for (a, o) in att.objects.iter().zip(&dicom) {
        assert_eq!((&a.before, &a.after), (&o.blake3, &o.blake3));
    }

    // Objects: plaintext → manifest entry; sealed → header, opens under the key, seals again identically.
    let objects = file["objects"].as_array().unwrap();
    assert_eq!(objects.len(), manifest.objects.len());
    assert_eq!(objects.len(), 3);
    for (i, (o, mo)) in objects.iter().zip(&manifest.objects).enumerate() {
        let plain = unhex(&o["plaintext"]);
        let last = i + 1 == objects.len();
        assert_eq!(o["object_index"], i);
        assert_eq!(o["kind"], if last { "index" } else { "dicom" });
        assert_eq!(mo.kind, if last { ObjectKind::Index } else { ObjectKind::Dicom });
        assert_eq!(mo.size, plain.len() as u64);
        assert_eq!(mo.blake3, blake3::hash(&plain).as_bytes());
        assert_eq!(unhex(&o["blake3"]), mo.blake3);
        assert_eq!(mo.chunks, chunk_hashes(&plain));
        assert_eq!(unhex(&o["salt"]), mo.salt);
        let sealed = unhex(&o["sealed"]);
        let h = Header::decode(&sealed).unwrap();
        assert_eq!(
            (h.chunk_size, h.object_index, h.plaintext_len, h.salt.to_vec()),
            (CHUNK_SIZE, u32::try_from(i).unwrap(), mo.size, mo.salt.clone())
        );
        assert_eq!(sealed.len() as u64, h.sealed_len());
        let (opened, hash) = medmesh_seal::open_to_vec(&key, &sealed).unwrap();
        assert_eq!(opened, plain, "object {i} does not open to its plaintext");
        assert_eq!(hash.as_bytes().as_slice(), mo.blake3.as_slice());
        assert_eq!(
            seal(&key, i, &plain),
            sealed,
            "object {i} does not seal to the file's bytes"
        );
        // Under another object index (or another key) the same bytes do not open.
        let mut moved = sealed.clone();
        moved[12] ^= 1;
        assert!(medmesh_seal::open_to_vec(&key, &moved).is_err());
        assert!(medmesh_seal::open_to_vec(&DataKey::from_bytes([0; 32]), &sealed).is_err());
        if last {
            let index: StudyIndex = wire::decode("study index", &plain, wire::MAX_INDEX).unwrap();
            assert_eq!(index, study_index(&dicom_objects()));
            assert_eq!(index.instances.len(), objects.len() - 1);
            assert_eq!(index.study.study_uid, grant.study_uid);
            for (inst, obj) in index.instances.iter().zip(&manifest.objects) {
                assert_eq!(inst.blake3, obj.blake3);
                assert!(grant.series.contains(&inst.series_uid));
            }
        }
    }

    // Objects root.
    let root = &file["objects_root"];
    assert_eq!(root["context"], ROOT_CONTEXT);
    let mut h = blake3::Hasher::new_derive_key(ROOT_CONTEXT);
    h.update(&(manifest.objects.len() as u64).to_le_bytes());
    for o in &manifest.objects {
        h.update(&o.blake3);
    }
    assert_eq!(unhex(&root["root"]), h.finalize().as_bytes());
    assert_eq!(unhex(&root["root"]), wire::objects_root(&manifest.objects));

    // Receipt.
    let r = &file["receipt"];
    let receipt_env = unhex(&r["envelope"]);
    let receipt_payload = unhex(&r["payload"]);
    check_signature(
        &receipt_env,
        RECEIPT_DOMAIN,
        &receipt_payload,
        &recipient.ed25519_public(),
    );
    let (signer, receipt) = wire::open_signed::<Receipt>("receipt", RECEIPT_DOMAIN, &receipt_env, MAX_MESSAGE).unwrap();
    assert_eq!(signer, recipient.ed25519_public());
    assert_eq!(enc(&receipt), receipt_payload);
    assert_eq!(receipt.transfer_id, manifest.transfer_id);
    assert_eq!(receipt.manifest_hash, blake3::hash(&manifest_env).as_bytes());
    assert_eq!(receipt.objects_root, unhex(&root["root"]));
    assert_eq!(
        (receipt.holder, receipt.recipient),
        (manifest.holder, manifest.recipient)
    );
    assert_eq!(receipt.received, RECEIVED);

    // Frames: length (BE, type included), type, body; each body decodes and re-encodes.
    let frames = file["frames"].as_array().unwrap();
    assert_eq!(frames.len(), 6);
    for f in frames {
        let name = f["name"].as_str().unwrap();
        let bytes = unhex(&f["frame"]);
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        assert_eq!(len, bytes.len() - 4, "{name}: length");
        assert_eq!(u64::from(bytes[4]), f["type"].as_u64().unwrap(), "{name}: type");
        let body = &bytes[frame::HEADER..];
        match bytes[4] {
            frame::OPEN => {
                let open: Open = wire::decode("open", body, MAX_OPEN).unwrap();
                assert_eq!(
                    (open.session, &open.grant, &open.manifest),
                    (SESSION, &grant_env, &manifest_env)
                );
                assert_eq!(enc(&open), body);
            }
            frame::HAVE => {
                let have: Have = wire::decode("have", body, MAX_MESSAGE).unwrap();
                assert_eq!(have.chunks.len(), manifest.objects.len());
                assert_eq!(enc(&have), body);
            }
            frame::REFUSE => {
                let refuse: Refuse = wire::decode("refuse", body, MAX_MESSAGE).unwrap();
                assert_eq!((refuse.code.as_str(), refuse.permanent), ("grant-expired", true));
                assert_eq!(enc(&refuse), body);
            }
            frame::CHUNK => {
                assert_eq!(&body[..frame::CHUNK_PREFIX], &[0u8; 12], "{name}: object 0, chunk 0");
                let sealed_chunk = &body[frame::CHUNK_PREFIX..];
                let sealed_object = unhex(&objects[0]["sealed"]);
                assert_eq!(sealed_chunk, &sealed_object[HEADER_LEN..]);
                let h = Header::decode(&sealed_object).unwrap();
                let (ct, tag) = sealed_chunk.split_at(sealed_chunk.len() - TAG_LEN);
                let mut plain = ct.to_vec();
                medmesh_seal::Opener::new(&key, h)
                    .open_chunk(0, &mut plain, tag.try_into().unwrap())
                    .unwrap();
                assert_eq!(plain, unhex(&objects[0]["plaintext"]));
                assert_eq!(
                    blake3::hash(&plain).as_bytes().as_slice(),
                    &manifest.objects[0].chunks[..32]
                );
            }
            frame::DONE => assert!(body.is_empty()),
            other => panic!("{name}: unknown frame type {other}"),
        }
    }

    // Messages: decode, and re-encode to the same bytes.
    let messages = file["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 9);
    for v in messages {
        let name = v["name"].as_str().unwrap();
        let bytes = unhex(&v["cbor"]);
        match v["decoder"].as_str().unwrap() {
            "msg" => {
                let m: Msg = wire::decode("transfer message", &bytes, MAX_MESSAGE).unwrap();
                assert_eq!(enc(&m), bytes, "{name}");
                if let MsgBody::Receipt { receipt } = &m.body {
                    assert_eq!(receipt, &receipt_env);
                }
            }
            "answer" => {
                let a: Answer = wire::decode("transfer answer", &bytes, MAX_MESSAGE).unwrap();
                assert_eq!(enc(&a), bytes, "{name}");
                if let AnswerBody::Granted { grant, transfer_id } = &a.body {
                    assert_eq!((grant, transfer_id.as_str()), (&grant_env, hex::encode(id).as_str()));
                }
                if let AnswerBody::RetryLater {
                    code, retry_after_secs, ..
                } = &a.body
                {
                    assert_eq!((code.as_str(), *retry_after_secs), ("rate-limited", 2));
                }
            }
            other => panic!("{name}: unknown decoder {other}"),
        }
    }

    // Refused inputs.
    let invalid = file["invalid"].as_array().unwrap();
    assert_eq!(invalid.len(), 13);
    for v in invalid {
        let name = v["name"].as_str().unwrap();
        let mut input = unhex(&v["input"]);
        if let Some(n) = v["repeat"].as_u64() {
            input = input.repeat(usize::try_from(n).unwrap());
        }
        let err = decode(v["decoder"].as_str().unwrap(), &input).expect_err(name);
        assert!(err.contains(v["error"].as_str().unwrap()), "{name}: {err}");
    }

    // Last, the whole file against what this build generates.
    for key in [
        "description",
        "keys",
        "transfer_id",
        "transfer_key",
        "grant",
        "objects",
        "manifest",
        "objects_root",
        "receipt",
        "frames",
        "messages",
        "invalid",
    ] {
        assert_eq!(
            file[key], generated[key],
            "{key} differs from docs/vectors/transfer-v1.json (rewrite it with MEDMESH_WRITE_VECTORS=1 after a deliberate change)"
        );
    }
    assert_eq!(file, generated);
}
