//! Landing never overwrites or deletes what the site holds (issue 16, item
//! 2), and every action commits its ledger entry with its state change
//! (item 5): real homes, the stream played in process (no network), crashes
//! injected between the steps of a change (`Store::crash_at`) and the home
//! opened again.
#![allow(clippy::unwrap_used)]

use crate::home::Node;
use std::collections::BTreeMap;
use std::path::Path;

use consent_schema::{ConsentedBy, DeidLevel, Purpose, Role};

use super::tests::{CT, STUDY, consent_at, corpus, home, trust};
use super::wire::{self, ATTESTATION_DOMAIN, MANIFEST_DOMAIN, Manifest, Open, WIRE_VERSION};
use super::*;
use crate::consent::{FhirImport, NewConsent};
use crate::keystore::Passphrase;
use crate::retention::PurgeReason;
use crate::store::{Landing, StudyUpdate};

/// A study other than [`STUDY`], imported at the recipient (an earlier copy).
const OTHER: &str = "ct/ct_brain_siemens_sc-jpeg_fake-phi.dcm";
const PASS: &str = "correct horse battery staple transfer";

struct Sites {
    dir: tempfile::TempDir,
    holder: Node,
    /// A second holder of the same study.
    second: Node,
    recipient: Node,
}

/// Two holders of the CT study, each with a consent for the recipient; the
/// recipient holds another study, imported there.
fn sites() -> Sites {
    let dir = tempfile::tempdir().unwrap();
    let holder = home(dir.path(), "holder", "DE");
    let second = home(dir.path(), "second", "DE");
    let recipient = home(dir.path(), "recipient", "DE");
    for (a, b) in [
        (&holder, &recipient),
        (&recipient, &holder),
        (&second, &recipient),
        (&recipient, &second),
    ] {
        trust(a, b);
    }
    for h in [&holder, &second] {
        h.studies().import(&[corpus(CT)], |_| {}).unwrap();
        consent_at(h, STUDY, &[&recipient], DeidLevel::Identifiable);
    }
    recipient.studies().import(&[corpus(OTHER)], |_| {}).unwrap();
    let held = recipient.studies().list(None).unwrap();
    assert!(held.len() == 1 && held[0].study_uid != STUDY);
    Sites {
        dir,
        holder,
        second,
        recipient,
    }
}

fn reopen(dir: &Path, name: &str) -> Node {
    Node::open(&dir.join(name), &Passphrase::new(PASS.into())).unwrap()
}

/// `holder` grants request `request` of `recipient` (recorded at the
/// recipient as `medmesh request` does) and prepares it.
fn requested(holder: &Node, recipient: &Node, request: u8) -> (TransferId, Open, SendPlan) {
    let rid = hex::encode([request; 16]);
    let (t, c) = (Purpose::Treatment, Role::Clinician);
    let answer = holder
        .transfers()
        .answer_request(recipient.identity().peer(), &rid, STUDY, t, c, None)
        .unwrap();
    let AnswerBody::Granted { transfer_id, grant } = answer.clone() else {
        panic!("not granted: {answer:?}");
    };
    recipient
        .transfers()
        .note_answer(holder.identity().peer(), &rid, STUDY, t, c, None, &answer)
        .unwrap();
    let id = parse_id(&transfer_id).unwrap();
    holder.transfers().prepare(&id).unwrap();
    let plan = holder.transfers().send_plan(&id).unwrap();
    let open = Open {
        v: WIRE_VERSION,
        session: 1,
        grant,
        manifest: plan.manifest_bytes.clone(),
    };
    (id, open, plan)
}

/// The plaintext of every object of a plan, in manifest order.
fn plaintexts(plan: &SendPlan) -> Vec<Vec<u8>> {
    plan.sources
        .iter()
        .map(|s| match s {
            Source::Blob { file, key, .. } => {
                let mut r = medmesh_seal::OpenReader::new(key, file.open().unwrap()).unwrap();
                let mut v = Vec::new();
                r.read_to_end(&mut v).unwrap();
                v
            }
            Source::Memory(b) => b.to_vec(),
        })
        .collect()
}

/// Every chunk of every object sealed under `key` and taken by the
/// recipient's writers, as the engine does, and recorded.
fn stream_all(recipient: &Node, a: &Accepted, plain: &[Vec<u8>], key: &DataKey) {
    let m = &a.manifest;
    let mut scratch = Zeroizing::new(Vec::new());
    for (i, p) in plain.iter().enumerate() {
        let o = &m.objects[i];
        let header = Header {
            chunk_size: m.chunk_size,
            object_index: u32::try_from(i).unwrap(),
            plaintext_len: o.size,
            salt: key32(&o.salt).unwrap(),
            streamed: false,
        };
        let mut w = ObjectWriter::open(recipient.store(), a, header.object_index, 0).unwrap();
        for c in 0..header.chunk_count() {
            let start = usize::try_from(c * u64::from(m.chunk_size)).unwrap();
            let len = usize::try_from(header.chunk_plain_len(c)).unwrap();
            let mut sealed = p[start..start + len].to_vec();
            let tag = medmesh_seal::Sealer::new(key, header)
                .seal_chunk_at(c, &mut sealed)
                .unwrap();
            sealed.extend_from_slice(&tag);
            w.write_chunk(c, &sealed, m, &mut scratch).unwrap();
        }
        w.checkpoint(recipient.store(), true).unwrap();
    }
}

/// A granted transfer of the CT study from `holder`, wholly received (not landed).
fn delivered(holder: &Node, recipient: &Node, request: u8) -> (TransferId, Accepted) {
    let (id, open, plan) = requested(holder, recipient, request);
    let a = recipient
        .transfers()
        .accept_stream(holder.identity().peer(), &open)
        .unwrap();
    stream_all(recipient, &a, &plaintexts(&plan), &plan.key);
    (id, a)
}

/// What the store holds: per study, its row and each object's blob file (hashed).
type Snapshot = BTreeMap<crate::store::StudyRef, (String, Vec<([u8; 32], blake3::Hash)>)>;

fn snapshot(n: &Node) -> Snapshot {
    let s = n.store();
    s.studies()
        .unwrap()
        .into_iter()
        .map(|(study, row)| {
            let files = s
                .instances(&study)
                .unwrap()
                .into_iter()
                .map(|(a, _)| (a, blake3::hash(&std::fs::read(s.blob_path(&a)).unwrap())))
                .collect();
            (study, (format!("{row:?}"), files))
        })
        .collect()
}

/// Everything `before` held is held as it was.
fn intact(n: &Node, before: &Snapshot) {
    let now = snapshot(n);
    for (study, held) in before {
        assert_eq!(now.get(study), Some(held), "study {study:?} changed");
    }
    let check = n.store().check(true).unwrap();
    assert!(check.is_clean(), "{check:?}");
}

/// How many entries of `kind` this node wrote.
fn entries(n: &Node, kind: &str) -> usize {
    n.audit()
        .log_tail(10_000)
        .unwrap()
        .iter()
        .filter(|e| e.kind == kind)
        .count()
}

fn refusal(e: &TransferError) -> &'static str {
    match e {
        TransferError::Refused { code, .. } => code.as_str(),
        other => panic!("not a refusal: {other}"),
    }
}

#[test]
fn a_landing_never_renames_over_an_object_held_here_nor_changes_its_owner() {
    let s = sites();
    let (id, a) = delivered(&s.holder, &s.recipient, 1);
    // Meanwhile the site imports the very same study itself.
    s.recipient.studies().import(&[corpus(CT)], |_| {}).unwrap();
    let before = snapshot(&s.recipient);
    let e = s.recipient.transfers().land(&a).unwrap_err();
    assert_eq!(refusal(&e), "already-held", "{e}");
    intact(&s.recipient, &before);
    assert_eq!(s.recipient.transfers().transfer(&id).unwrap().state, State::Streaming);
    // The store itself refuses objects whose blob address is held, under
    // whatever study they would land: the held blob keeps its bytes and owner.
    let local = s.recipient.store().study_ref(STUDY);
    let held: Vec<[u8; 32]> = s
        .recipient
        .store()
        .instances(&local)
        .unwrap()
        .into_iter()
        .map(|(a, _)| a)
        .collect();
    let dir = s.recipient.store().incoming_dir(&id);
    let objects = held
        .iter()
        .enumerate()
        .map(|(i, address)| LandedObject {
            address: *address,
            file: dir.join(i.to_string()),
            row: s.recipient.store().instances(&local).unwrap()[i].1.clone(),
        })
        .collect();
    let elsewhere = s.recipient.store().study_ref("1.2.3.4.5");
    let row = s.recipient.store().study_row(&local).unwrap().unwrap();
    let landing = Landing {
        transfer: &id,
        study: &elsewhere,
        row: &row,
        patient: None,
        objects,
    };
    let r = s
        .recipient
        .store()
        .land_study(landing, &s.recipient.audit().author(), |_| -> Result<_, StoreError> {
            panic!("never reaches the record")
        });
    assert!(matches!(r, Err(StoreError::Held(_))), "{r:?}");
    intact(&s.recipient, &before);
    assert!(s.recipient.store().study_row(&elsewhere).unwrap().is_none());
}

#[test]
fn a_second_landing_of_the_same_study_is_refused_and_the_first_copy_kept() {
    let s = sites();
    let (first, a) = delivered(&s.holder, &s.recipient, 1);
    s.recipient.transfers().land(&a).unwrap();
    let before = snapshot(&s.recipient);
    assert_eq!(before.len(), 2);
    // From another peer, and from the same peer under another transfer.
    for (holder, request) in [(&s.second, 2), (&s.holder, 3)] {
        let (id, a) = delivered(holder, &s.recipient, request);
        let e = s.recipient.transfers().land(&a).unwrap_err();
        assert_eq!(refusal(&e), "already-held", "{e}");
        assert_ne!(s.recipient.transfers().transfer(&id).unwrap().state, State::Landed);
        intact(&s.recipient, &before);
    }
    let row = s
        .recipient
        .store()
        .study_row(&s.recipient.store().study_ref(STUDY))
        .unwrap()
        .unwrap();
    assert!(matches!(&row.origin, Origin::Received(g) if g.transfer_id == hex::encode(first)));
    assert_eq!(entries(&s.recipient, "transfer-received"), 1);
}

/// The chunk hashes of `plain` at `chunk` bytes each.
fn chunk_hashes(plain: &[u8], chunk: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for c in plain.chunks(chunk as usize) {
        out.extend_from_slice(blake3::hash(c).as_bytes());
    }
    if plain.is_empty() {
        out.extend_from_slice(blake3::hash(b"").as_bytes());
    }
    out
}

#[test]
fn an_object_of_another_study_in_the_stream_is_refused_as_bad_object() {
    let s = sites();
    let (id, open, plan) = requested(&s.holder, &s.recipient, 1);
    // A holder that slips another study's object in under the grant (the
    // same series and instance, another Study Instance UID), with an index,
    // manifest and attestation made (and signed) to match it.
    let mut plain = plaintexts(&plan);
    let last = plain.len() - 1;
    let other_uid = format!("{}9", &STUDY[..STUDY.len() - 1]);
    assert_ne!(other_uid, STUDY);
    let at = plain[0]
        .windows(STUDY.len())
        .position(|w| w == STUDY.as_bytes())
        .unwrap();
    plain[0][at..at + STUDY.len()].copy_from_slice(other_uid.as_bytes());
    let mut index: StudyIndex = wire::decode("study index", &plain[last], wire::MAX_INDEX).unwrap();
    index.instances[0].blake3 = blake3::hash(&plain[0]).as_bytes().to_vec();
    plain[last] = wire::encode("study index", &index).unwrap();
    let (_, mut m) = wire::open_signed::<Manifest>("manifest", MANIFEST_DOMAIN, &open.manifest, MAX_MANIFEST).unwrap();
    for i in [0, last] {
        let o = &mut m.objects[i];
        o.size = plain[i].len() as u64;
        o.blake3 = blake3::hash(&plain[i]).as_bytes().to_vec();
        o.chunks = chunk_hashes(&plain[i], m.chunk_size);
    }
    let (_, mut att) =
        wire::open_signed::<wire::Attestation>("attestation", ATTESTATION_DOMAIN, &m.attestation, MAX_MANIFEST)
            .unwrap();
    att.objects[0].before.clone_from(&m.objects[0].blake3);
    att.objects[0].after.clone_from(&m.objects[0].blake3);
    let sign = |domain, bytes| s.holder.identity().sign(domain, bytes).to_bytes().unwrap();
    m.attestation = sign(ATTESTATION_DOMAIN, wire::encode("attestation", &att).unwrap());
    let open = Open {
        manifest: sign(MANIFEST_DOMAIN, wire::encode("manifest", &m).unwrap()),
        ..open
    };
    let a = s
        .recipient
        .transfers()
        .accept_stream(s.holder.identity().peer(), &open)
        .unwrap();
    stream_all(&s.recipient, &a, &plain, &plan.key);
    let before = snapshot(&s.recipient);
    let e = s.recipient.transfers().land(&a).unwrap_err();
    assert_eq!(refusal(&e), "bad-object", "{e}");
    assert!(!e.to_string().contains(STUDY), "no UID in the error: {e}");
    intact(&s.recipient, &before);
    assert!(
        s.recipient
            .store()
            .study_row(&s.recipient.store().study_ref(STUDY))
            .unwrap()
            .is_none()
    );
    assert_ne!(s.recipient.transfers().transfer(&id).unwrap().state, State::Landed);
}

#[test]
fn a_crash_at_any_step_of_a_landing_keeps_every_earlier_copy_and_the_landing_recoverable() {
    for step in [
        "landing: intent recorded",
        "landing: blobs linked",
        "landing: rows committed",
    ] {
        let s = sites();
        let (id, a) = delivered(&s.holder, &s.recipient, 1);
        let before = snapshot(&s.recipient);
        s.recipient.store().crash_at(step);
        assert!(s.recipient.transfers().land(&a).is_err(), "{step}");
        drop(s.recipient);
        let recipient = reopen(s.dir.path(), "recipient");
        intact(&recipient, &before);
        let committed = step == "landing: rows committed";
        let state = recipient.transfers().transfer(&id).unwrap().state;
        assert_eq!(
            state,
            if committed { State::Landed } else { State::Streaming },
            "{step}"
        );
        assert_eq!(
            entries(&recipient, "transfer-received"),
            usize::from(committed),
            "{step}"
        );
        // The landing runs again (or finds itself done) and ends as one.
        recipient.transfers().land(&a).unwrap();
        assert_eq!(
            recipient.transfers().transfer(&id).unwrap().state,
            State::Landed,
            "{step}"
        );
        assert_eq!(entries(&recipient, "transfer-received"), 1, "{step}");
        assert_eq!(recipient.studies().list(None).unwrap().len(), 2, "{step}");
        assert!(!recipient.store().incoming_dir(&id).exists(), "{step}");
        intact(&recipient, &before);
        assert!(recipient.audit().log_verify().unwrap().ok);
    }
}

// ----- item 5: an action and its ledger entry never come apart -----

const APPEND: &str = "ledger: append";

#[test]
fn a_grant_and_its_entries_are_committed_together() {
    let s = sites();
    let peer = s.recipient.identity().peer();
    let ask = || {
        s.holder.transfers().answer_request(
            peer,
            &hex::encode([1u8; 16]),
            STUDY,
            Purpose::Treatment,
            Role::Clinician,
            None,
        )
    };
    s.holder.store().crash_at(APPEND);
    assert!(ask().is_err());
    assert!(s.holder.transfers().transfer_records().unwrap().is_empty());
    assert_eq!(entries(&s.holder, "transfer-granted"), 0);
    assert!(matches!(ask().unwrap(), AnswerBody::Granted { .. }));
    assert_eq!(
        s.holder.transfers().transfer_records().unwrap()[0].state,
        State::Granted
    );
    assert_eq!(entries(&s.holder, "transfer-granted"), 1);
    assert_eq!(entries(&s.holder, "transfer-requested"), 1);
}

#[test]
fn a_landing_a_completion_and_a_lock_at_expiry_commit_their_entries_with_them() {
    let s = sites();
    let (id, a) = delivered(&s.holder, &s.recipient, 1);
    // Landing: the entry fails, so nothing lands; the store is as it was.
    let before = snapshot(&s.recipient);
    s.recipient.store().crash_at(APPEND);
    assert!(s.recipient.transfers().land(&a).is_err());
    intact(&s.recipient, &before);
    assert_eq!(before.len(), snapshot(&s.recipient).len());
    assert_eq!(s.recipient.transfers().transfer(&id).unwrap().state, State::Streaming);
    assert_eq!(entries(&s.recipient, "transfer-received"), 0);
    s.recipient.transfers().land(&a).unwrap();
    assert_eq!(entries(&s.recipient, "transfer-received"), 1);

    // Completion at the holder.
    let receipt = s.recipient.transfers().receipt(&id).unwrap();
    let peer = s.recipient.identity().peer();
    s.holder.store().crash_at(APPEND);
    assert!(s.holder.transfers().accept_receipt(peer, &receipt).is_err());
    assert_ne!(s.holder.transfers().transfer(&id).unwrap().state, State::Complete);
    assert_eq!(entries(&s.holder, "transfer-sent"), 0);
    for _ in 0..2 {
        assert_eq!(
            s.holder.transfers().accept_receipt(peer, &receipt).unwrap(),
            AnswerBody::Ack
        );
    }
    assert_eq!(s.holder.transfers().transfer(&id).unwrap().state, State::Complete);
    assert_eq!(entries(&s.holder, "transfer-sent"), 1);

    // Lock at expiry: the grant's end is put in the past.
    let study = s.recipient.store().study_ref(STUDY);
    let mut row = s.recipient.store().study_row(&study).unwrap().unwrap();
    if let Origin::Received(g) = &mut row.origin {
        g.expires = now() - 1;
    }
    let update = StudyUpdate {
        study,
        row,
        patient: None,
        arrived: None,
    };
    s.recipient.store().commit_batch(Vec::new(), vec![update]).unwrap();
    s.recipient.store().crash_at(APPEND);
    assert!(s.recipient.transfers().enforce_expiry().is_err());
    assert!(
        !s.recipient
            .store()
            .study_row(&study)
            .unwrap()
            .unwrap()
            .wrapped_key
            .is_empty()
    );
    assert!(s.recipient.store().transfer_doc(&id, DOC_MANIFEST).unwrap().is_some());
    assert_eq!(entries(&s.recipient, "study-locked"), 0);
    assert_eq!(s.recipient.transfers().enforce_expiry().unwrap(), 1);
    assert!(
        s.recipient
            .store()
            .study_row(&study)
            .unwrap()
            .unwrap()
            .wrapped_key
            .is_empty()
    );
    assert!(s.recipient.store().transfer_doc(&id, DOC_MANIFEST).unwrap().is_none());
    assert_eq!(entries(&s.recipient, "study-locked"), 1);
    // A lock whose documents were left (by a version that deleted them in
    // a second step) is finished: the documents go, no second entry.
    s.recipient
        .store()
        .transfer_doc_put(&id, DOC_MANIFEST, b"left")
        .unwrap();
    assert_eq!(s.recipient.transfers().enforce_expiry().unwrap(), 0);
    assert!(s.recipient.store().transfer_doc(&id, DOC_MANIFEST).unwrap().is_none());
    assert_eq!(entries(&s.recipient, "study-locked"), 1);
    assert!(s.recipient.audit().log_verify().unwrap().ok);
}

fn fhir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../consent-schema/tests/data/fhir")
        .join(name)
}

#[test]
fn consent_changes_and_their_entries_are_committed_together_fhir_import_included() {
    let dir = tempfile::tempdir().unwrap();
    let n = home(dir.path(), "site", "DE");
    let add = || {
        n.consents().add(NewConsent {
            id: Some("c-1".into()),
            patient_id: "MRN-1".into(),
            issuer: String::new(),
            by: ConsentedBy::Patient,
            deny: false,
            level: Some(DeidLevel::Identifiable),
            purposes: vec![Purpose::Treatment],
            recipient_peers: Vec::new(),
            recipient_institutions: Vec::new(),
            recipient_jurisdictions: Vec::new(),
            recipient_consortia: Vec::new(),
            modalities: Vec::new(),
            studies: Vec::new(),
            episode: None,
            from: None,
            until: None,
            data_from: None,
            data_until: None,
            legal_basis: None,
            legal_text: None,
        })
    };
    n.store().crash_at(APPEND);
    assert!(add().is_err());
    assert!(n.consents().list(None).unwrap().is_empty());
    assert_eq!(entries(&n, "consent-added"), 0);
    add().unwrap();
    assert_eq!(entries(&n, "consent-added"), 1);

    let import = FhirImport {
        files: vec![fhir("synthetic/imaging-research-permit.json")],
        issuer: "KLINIKUM".into(),
        custodians: vec!["Organization/site".into()],
        patients: vec![("Patient/p-1001".into(), "MRN-0042".into())],
        ..FhirImport::default()
    };
    n.store().crash_at(APPEND);
    assert!(n.consents().import_fhir(&import).is_err());
    assert_eq!(n.consents().list(None).unwrap().len(), 1);
    assert_eq!(entries(&n, "consent-added"), 1);
    let imported = n.consents().import_fhir(&import).unwrap();
    assert_eq!(imported[0].outcome, "added");
    assert_eq!(n.consents().list(None).unwrap().len(), 2);
    assert_eq!(entries(&n, "consent-added"), 2, "FHIR import writes consent-added");
    // Imported again unchanged: nothing new is recorded.
    n.consents().import_fhir(&import).unwrap();
    assert_eq!(entries(&n, "consent-added"), 2);

    n.store().crash_at(APPEND);
    assert!(n.consents().withdraw("c-1").is_err());
    let c1 = |n: &Node| n.store().consent(&"c-1".parse().unwrap()).unwrap().unwrap();
    assert!(c1(&n).withdrawn_at().is_none());
    assert_eq!(entries(&n, "consent-withdrawn"), 0);
    n.consents().withdraw("c-1").unwrap();
    assert!(c1(&n).withdrawn_at().is_some());
    assert_eq!(entries(&n, "consent-withdrawn"), 1);
    assert!(n.audit().log_verify().unwrap().ok);
}

#[test]
fn a_purge_and_its_entry_are_committed_together_and_its_files_go_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let n = home(dir.path(), "site", "DE");
    n.studies().import(&[corpus(CT)], |_| {}).unwrap();
    let study = n.store().study_ref(STUDY);
    // Stopped before the rows go (or as the entry is appended): neither
    // the entry nor the deletion is there.
    for step in ["purge: rows", APPEND] {
        n.store().crash_at(step);
        assert!(
            n.retention().purge_study(STUDY, PurgeReason::Erasure).is_err(),
            "{step}"
        );
        assert!(n.store().study_row(&study).unwrap().is_some(), "{step}");
        assert_eq!(entries(&n, "study-purged"), 0, "{step}");
    }
    // The commitment still names the study (the salt goes with the rows).
    assert_eq!(
        n.store()
            .resolve_commitment(&n.audit().study_commitment(STUDY).unwrap())
            .unwrap()
            .as_deref(),
        Some(STUDY)
    );
    // Stopped after the rows and the entry are committed, before the files go.
    n.store().crash_at("purge: rows committed");
    assert!(n.retention().purge_study(STUDY, PurgeReason::Erasure).is_err());
    assert!(n.store().study_row(&study).unwrap().is_none());
    assert_eq!(entries(&n, "study-purged"), 1);
    assert!(n.store().check(false).unwrap().blob_files > 0);
    drop(n);
    let n = reopen(dir.path(), "site");
    let check = n.store().check(false).unwrap();
    assert!(check.is_clean() && check.blob_files == 0, "{check:?}");
    assert_eq!(entries(&n, "study-purged"), 1);
    assert!(n.audit().log_verify().unwrap().ok);
}

/// A FHIR Consent given inline (the web console's form) imports as it does from its file,
/// named `(resource N)` in the answer.
#[test]
fn a_fhir_consent_given_inline_imports_as_from_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let n = home(dir.path(), "site", "DE");
    let text = std::fs::read_to_string(fhir("synthetic/imaging-research-permit.json")).unwrap();
    let import = FhirImport {
        resources: vec![text],
        issuer: "KLINIKUM".into(),
        custodians: vec!["Organization/site".into()],
        patients: vec![("Patient/p-1001".into(), "MRN-0042".into())],
        ..FhirImport::default()
    };
    assert!(
        !format!("{import:?}").contains("Patient/p-1001"),
        "Debug shows no resource"
    );
    let got = n.consents().import_fhir(&import).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].outcome, "added");
    assert_eq!(got[0].file, PathBuf::from("(resource 1)"));
    assert_eq!(n.consents().list(None).unwrap().len(), 1);
    assert_eq!(entries(&n, "consent-added"), 1);
}
