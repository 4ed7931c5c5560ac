//! Runs the code of the cargo-fuzz targets (`fuzz/fuzz_targets/`) over their committed seed
//! corpora (`fuzz/corpus/<target>/`) on stable, so every test run exercises the decoders with
//! the seeds, and every crash input added to a corpus becomes a regression test.
//!
//! Each `run_*` function below is the body of the fuzz target of the same name; keep them in
//! step. The consent targets are exercised by the consent-schema crate itself.

use std::fs;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use medmesh_node::config::{Config, TEMPLATE};
use medmesh_node::consent_schema::DeidLevel;
use medmesh_node::deid::{DeidKeys, DeidOption, Profile, deidentify};
use medmesh_node::dicom::{parse_and_validate, parse_whole};
use medmesh_node::identity::{SignedEnvelope, VerifiedNodeRecord};
use medmesh_node::transfer::parse_id;
use medmesh_node::transfer::wire::{
    self, Answer, AnswerBody, GRANT_DOMAIN, Grant, Have, MANIFEST_DOMAIN, MAX_INDEX, MAX_MANIFEST, MAX_MESSAGE,
    Manifest, Msg, MsgBody, Open, RECEIPT_DOMAIN, Receipt, Refuse, StudyIndex,
};
use medmesh_node::trust::hello::{Hello, evaluate};
use medmesh_node::trust::{Certificate, Consortium, Revocation, TrustState};

/// Every regular file of `fuzz/corpus/<target>/`, sorted; panics on an empty corpus, so a
/// moved directory cannot make the test pass vacuously.
fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut paths: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no seeds in {}", dir.display());
    paths
        .into_iter()
        .map(|path| {
            let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path, bytes)
        })
        .collect()
}

/// Runs `body` over every seed of `target`; returns how many seeds the decoder accepted.
fn for_each_seed(target: &str, body: impl Fn(&[u8]) -> bool) -> usize {
    let mut accepted = 0;
    for (path, bytes) in seeds(target) {
        let ok = std::panic::catch_unwind(AssertUnwindSafe(|| body(&bytes)))
            .unwrap_or_else(|_| panic!("fuzz target {target} panicked on seed {}", path.display()));
        accepted += usize::from(ok);
    }
    accepted
}

/// `fuzz_targets/seal_open.rs`.
fn run_seal_open(data: &[u8]) -> bool {
    medmesh_seal::fuzzing::open_arbitrary(data);
    true
}

/// `fuzz_targets/envelope_decode.rs`.
fn run_envelope_decode(data: &[u8]) -> bool {
    if let Ok(env) = SignedEnvelope::from_bytes(data) {
        let _ = VerifiedNodeRecord::from_envelope(env);
    }
    VerifiedNodeRecord::from_bytes(data).is_ok()
}

/// `fuzz_targets/dicom_ingest.rs`.
fn run_dicom_ingest(data: &[u8]) -> bool {
    let Ok(info) = parse_and_validate(data) else {
        return false;
    };
    let again = parse_and_validate(data).expect("accepted once, refused the second time");
    assert_eq!(info, again, "parsing the same bytes twice gave different ObjectInfo");
    true
}

/// `fuzz_targets/deid.rs`: an output parses again and says the identity was removed.
fn run_deid(data: &[u8]) -> bool {
    let keys = DeidKeys::from_secret(&[1u8; 32]);
    let profile = Profile::new(
        DeidLevel::Pseudonymised,
        &[DeidOption::RetainLongModifiedDates, DeidOption::CleanDescriptors],
        Vec::new(),
    )
    .expect("a valid profile");
    let Ok(out) = deidentify(data, &profile, &keys) else {
        return false;
    };
    let (obj, _) = parse_whole(&out.bytes).expect("the output parses");
    let removed = obj
        .get(dicom_dictionary_std::tags::PATIENT_IDENTITY_REMOVED)
        .and_then(|e| e.to_str().ok().map(|s| s.trim().to_string()));
    assert_eq!(removed.as_deref(), Some("YES"));
    true
}

/// `fuzz_targets/ledger_entry.rs`.
fn run_ledger_entry(data: &[u8]) -> bool {
    use medmesh_node::ledger::gossip::{GossipMsg, MAX_WITNESS_HEADS, open_witness};
    let _ = medmesh_node::ledger::sync::decode_request(data);
    let _ = medmesh_node::ledger::sync::decode_response(data);
    let _ = GossipMsg::from_bytes(data);
    if let Ok(w) = open_witness(data) {
        assert!(w.witness.heads.len() <= MAX_WITNESS_HEADS);
        assert!(w.witness.heads.windows(2).all(|p| p[0].author < p[1].author));
        return true;
    }
    let Ok(e) = medmesh_node::ledger::open_entry(data) else {
        return false;
    };
    assert_eq!(e.bytes, data, "an entry that opens is kept as received");
    assert_eq!(&e.id, blake3::hash(data).as_bytes());
    assert!(e.entry.seq >= 1);
    true
}

/// `fuzz_targets/trust_decode.rs` (decoding; verification needs a consortium, so the target
/// verifies only against a descriptor decoded from the same input).
fn run_trust_decode(data: &[u8]) -> bool {
    let c = Consortium::from_bytes(data).is_ok();
    let cert = Certificate::from_bytes(data).is_ok();
    let rev = Revocation::from_bytes(data).is_ok();
    c || cert || rev
}

/// `fuzz_targets/hello_decode.rs`.
fn run_hello_decode(data: &[u8]) -> bool {
    let Ok(hello) = Hello::from_bytes(data) else {
        return false;
    };
    let mut state = TrustState::default();
    if let Ok(c) = Consortium::from_bytes(include_bytes!("../../fuzz/fuzz_targets/vector-consortium.cbor")) {
        state.consortia.push(c);
    }
    evaluate(&state, VECTOR_PEER, &hello, 1_750_000_000).is_ok()
}

/// The peer of docs/vectors/trust-v1.json.
const VECTOR_PEER: &str = "12D3KooWK99VoVxNE7XzyBwXEzW7xhK7Gpv85r9F3V3fyKSUKPH5";

/// `fuzz_targets/transfer_msg.rs`; true when the input is a message or an answer.
fn run_transfer_msg(data: &[u8]) -> bool {
    let mut accepted = false;
    if let Ok(msg) = wire::decode::<Msg>("transfer message", data, MAX_MESSAGE) {
        match &msg.body {
            MsgBody::Request {
                request_id, study_uid, ..
            } => {
                let _ = parse_id(request_id);
                let _ = medmesh_node::dicom::check_uid(study_uid);
            }
            MsgBody::Decided { transfer_id, .. } => {
                let _ = parse_id(transfer_id);
            }
            MsgBody::Receipt { receipt } => {
                let _ = wire::open_signed::<Receipt>("receipt", RECEIPT_DOMAIN, receipt, MAX_MESSAGE);
            }
        }
        let again = wire::encode("transfer message", &msg).expect("a decoded message encodes");
        let back = wire::decode::<Msg>("transfer message", &again, usize::MAX).expect("its encoding decodes");
        assert_eq!(back, msg, "the message changed in a round trip");
        accepted = true;
    }
    if let Ok(answer) = wire::decode::<Answer>("transfer answer", data, MAX_MESSAGE) {
        match &answer.body {
            AnswerBody::Granted { transfer_id, grant } => {
                let _ = parse_id(transfer_id);
                let _ = wire::open_signed::<Grant>("grant", GRANT_DOMAIN, grant, MAX_MESSAGE);
            }
            AnswerBody::Denied { transfer_id, .. } => {
                if let Some(id) = transfer_id {
                    let _ = parse_id(id);
                }
            }
            AnswerBody::Pending { transfer_id, .. } => {
                let _ = parse_id(transfer_id);
            }
            AnswerBody::Ack | AnswerBody::Refused { .. } | AnswerBody::RetryLater { .. } => {}
        }
        let again = wire::encode("transfer answer", &answer).expect("a decoded answer encodes");
        let back = wire::decode::<Answer>("transfer answer", &again, usize::MAX).expect("its encoding decodes");
        assert_eq!(back, answer, "the answer changed in a round trip");
        accepted = true;
    }
    accepted
}

/// The body of `check` in `fuzz_targets/transfer_manifest.rs`; true when the manifest passes.
fn check_transfer_manifest(m: &Manifest) -> bool {
    if wire::check_manifest(m).is_err() {
        return false;
    }
    let _ = wire::objects_root(&m.objects);
    for (i, o) in m.objects.iter().enumerate() {
        let header = medmesh_seal::Header {
            chunk_size: m.chunk_size,
            object_index: u32::try_from(i).expect("check_manifest bounds the object count"),
            plaintext_len: o.size,
            salt: o
                .salt
                .as_slice()
                .try_into()
                .expect("check_manifest checks the salt length"),
            streamed: false,
        };
        let decoded = medmesh_seal::Header::decode(&header.encode()).expect("check_manifest accepted this header");
        assert_eq!(decoded, header);
        assert_eq!(
            o.chunks.len() as u64,
            header.chunk_count() * 32,
            "chunk hashes of object {i}"
        );
        let _ = header.sealed_len();
    }
    true
}

fn signed_transfer_manifest(bytes: &[u8]) -> bool {
    wire::open_signed::<Manifest>("manifest", MANIFEST_DOMAIN, bytes, MAX_MANIFEST)
        .is_ok_and(|(_, m)| check_transfer_manifest(&m))
}

/// `fuzz_targets/transfer_manifest.rs`; true when some decoder accepts the input (for a
/// manifest: it also passes `check_manifest`).
fn run_transfer_manifest(data: &[u8]) -> bool {
    let mut accepted = signed_transfer_manifest(data);
    if let Ok(m) = wire::decode::<Manifest>("manifest", data, MAX_MANIFEST) {
        accepted |= check_transfer_manifest(&m);
    }
    accepted |= wire::open_signed::<Grant>("grant", GRANT_DOMAIN, data, MAX_MESSAGE).is_ok();
    accepted |= wire::open_signed::<Receipt>("receipt", RECEIPT_DOMAIN, data, MAX_MESSAGE).is_ok();
    if let Ok(open) = wire::decode::<Open>("open", data, MAX_MANIFEST + MAX_MESSAGE + 4096) {
        let grant = wire::open_signed::<Grant>("grant", GRANT_DOMAIN, &open.grant, MAX_MESSAGE).is_ok();
        accepted |= grant && signed_transfer_manifest(&open.manifest);
    }
    accepted |= wire::decode::<Have>("have", data, MAX_MESSAGE).is_ok();
    accepted |= wire::decode::<Refuse>("refuse", data, MAX_MESSAGE).is_ok();
    accepted |= wire::decode::<StudyIndex>("study index", data, MAX_INDEX).is_ok();
    accepted
}

/// `fuzz_targets/config_toml.rs`.
fn run_config_toml(data: &[u8]) -> bool {
    std::str::from_utf8(data).is_ok_and(|text| Config::parse(Path::new("fuzz.toml"), text).is_ok())
}

#[test]
fn seal_open_seeds() {
    for_each_seed("seal_open", run_seal_open);
}

#[test]
fn envelope_decode_seeds() {
    // The node records generated with `medmesh id --record` verify; the corpus also holds a
    // tampered one.
    let accepted = for_each_seed("envelope_decode", run_envelope_decode);
    assert!(accepted >= 3, "only {accepted} seed node records verified");
}

#[test]
fn dicom_ingest_seeds() {
    // The corpus mixes valid objects with malformed ones; most must be accepted.
    let accepted = for_each_seed("dicom_ingest", run_dicom_ingest);
    assert!(accepted >= 10, "only {accepted} DICOM seeds were accepted");
}

#[test]
fn deid_seeds() {
    // A CT slice is de-identified; the burned-in ultrasound and the regression inputs are refused.
    let accepted = for_each_seed("deid", run_deid);
    assert_eq!(accepted, 1, "only the CT seed de-identifies");
}

#[test]
fn ledger_entry_seeds() {
    // The three vector entries and the entry that names no previous one open
    // (the chain is checked elsewhere), and the vector witness; the flipped
    // signature and the messages do not.
    let accepted = for_each_seed("ledger_entry", run_ledger_entry);
    assert_eq!(accepted, 5);
}

#[test]
fn config_toml_seeds() {
    // template.toml is a copy of TEMPLATE (node/src/config.rs), which is checked here too in
    // case the copy is stale; the corpus also holds files that must be refused.
    assert!(run_config_toml(TEMPLATE.as_bytes()), "TEMPLATE does not parse");
    let accepted = for_each_seed("config_toml", run_config_toml);
    assert!(accepted >= 3, "only {accepted} config seeds parse");
}

#[test]
fn trust_decode_seeds() {
    // A descriptor, certificates and a revocation made with the medmesh CLI decode.
    let accepted = for_each_seed("trust_decode", run_trust_decode);
    assert!(accepted >= 3, "only {accepted} trust seeds decode");
}

#[test]
fn hello_decode_seeds() {
    // The vector hello is accepted (trusted) by a node of the vector consortium; the hello
    // without certificates and the truncated one are not.
    let accepted = for_each_seed("hello_decode", run_hello_decode);
    assert_eq!(accepted, 1, "exactly the vector hello is trusted");
}

#[test]
fn transfer_msg_seeds() {
    // The eight messages of docs/vectors/transfer-v1.json decode; the four bad-* seeds do not.
    let accepted = for_each_seed("transfer_msg", run_transfer_msg);
    assert_eq!(accepted, 8, "exactly the vector messages decode");
}

#[test]
fn transfer_manifest_seeds() {
    // The vector documents, frame bodies and index decode (an OPEN with its grant and
    // manifest); the eight bad-* seeds are refused.
    let accepted = for_each_seed("transfer_manifest", run_transfer_manifest);
    assert_eq!(accepted, 9, "exactly the vector seeds are accepted");
}

/// `fuzz_targets/bearer_token.rs`.
fn run_bearer_token(data: &[u8]) -> bool {
    use medmesh_node::config::web::WebConfig;
    use medmesh_node::web::bearer::{check_claims, unverified_claims};
    let Ok(token) = std::str::from_utf8(data) else {
        return false;
    };
    match unverified_claims(token) {
        Ok(claims) => check_claims(&WebConfig::default(), &claims, 1_800_000_000).is_ok(),
        Err(_) => false,
    }
}

#[test]
fn bearer_token_seeds() {
    // Two seeds pass every claim check (the signature is checked apart); `none`, HMAC and
    // malformed tokens do not.
    assert_eq!(for_each_seed("bearer_token", run_bearer_token), 2);
}
