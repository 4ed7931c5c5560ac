//! Table tests of the recipient's checks on real homes (no network): the
//! grant and manifest of a stream (wrong recipient, replayed or different
//! manifest, mismatched grant, untrusted holder) and the chunks (altered,
//! from another transfer, out of order), and of the holder's decision.
#![allow(clippy::unwrap_used)]

use crate::home::Node;
use std::path::Path;

use consent_schema::{ConsentedBy, DeidLevel, Purpose, Role};

use super::preparation::hash_objects;
use super::wire::{self, MANIFEST_DOMAIN, Manifest, Open, WIRE_VERSION};
use super::*;
use crate::consent::NewConsent;
use crate::keystore::Passphrase;

pub(super) const CT: &str = "ct/ct_ge_small_explicit-le.dcm";
pub(super) const STUDY: &str = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322";

pub(super) fn corpus(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/corpus")
        .join(file)
}

pub(super) fn home(dir: &Path, name: &str, cc: &str) -> Node {
    let pass = Passphrase::new("correct horse battery staple transfer".into());
    let mut node = Node::init(&dir.join(name), &format!("Hospital {name}"), cc, &pass).unwrap();
    let _ = &mut node;
    node
}

fn record(n: &Node) -> Vec<u8> {
    n.record().envelope().to_bytes().unwrap()
}

pub(super) fn trust(a: &Node, b: &Node) {
    a.trust().add_peer(&record(b), vec![Purpose::Treatment], None).unwrap();
}

/// Holder (with the CT study and a consent for `recipient`), its grant and
/// the stream opening it would send.
fn granted(holder: &Node, recipient: &Node) -> (TransferId, Open) {
    let answer = holder
        .transfers()
        .answer_request(
            recipient.identity().peer(),
            &hex::encode([7u8; 16]),
            STUDY,
            Purpose::Treatment,
            Role::Clinician,
            None,
        )
        .unwrap();
    let AnswerBody::Granted { transfer_id, grant } = answer else {
        panic!("not granted: {answer:?}");
    };
    let id = parse_id(&transfer_id).unwrap();
    let prepared = holder.transfers().prepare(&id).unwrap().expect("prepared now");
    let plan = holder.transfers().send_plan(&id).unwrap();
    // The plan preparation returned is the one a resume reads back.
    assert_eq!(prepared.manifest_bytes, plan.manifest_bytes);
    assert_eq!(prepared.grant, plan.grant);
    assert_eq!(prepared.peer, plan.peer);
    assert_eq!(format!("{:?}", prepared.sources), format!("{:?}", plan.sources));
    assert!(holder.transfers().prepare(&id).unwrap().is_none(), "prepared once");
    let open = Open {
        v: WIRE_VERSION,
        session: 1,
        grant,
        manifest: plan.manifest_bytes.clone(),
    };
    (id, open)
}

struct World {
    _dir: tempfile::TempDir,
    holder: Node,
    recipient: Node,
    other: Node,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let holder = home(dir.path(), "holder", "DE");
    let recipient = home(dir.path(), "recipient", "DE");
    let other = home(dir.path(), "other", "DE");
    for (a, b) in [
        (&holder, &recipient),
        (&recipient, &holder),
        (&other, &holder),
        (&holder, &other),
        (&recipient, &other),
    ] {
        trust(a, b);
    }
    holder.studies().import(&[corpus(CT)], |_| {}).unwrap();
    consent_at(&holder, STUDY, &[&recipient, &other], DeidLevel::Identifiable);
    World {
        _dir: dir,
        holder,
        recipient,
        other,
    }
}

/// The recipient's answer to a stream as a refusal code, or "accepted".
fn verdict(n: &Node, peer: PeerId, open: &Open) -> String {
    match n.transfers().accept_stream(peer, open) {
        Ok(_) => "accepted".into(),
        Err(r) => r.code,
    }
}

#[test]
fn a_stream_that_beats_the_answer_is_refused_for_now_not_for_good() {
    let w = world();
    let holder_peer = w.holder.identity().peer();
    let (_, open) = granted(&w.holder, &w.recipient);
    // The request (id [7; 16]) is on its way: its answer is not recorded yet.
    let asking = w.recipient.live().asking(&hex::encode([7u8; 16]));
    let r = w.recipient.transfers().accept_stream(holder_peer, &open).err().unwrap();
    assert_eq!((r.code.as_str(), r.permanent), ("not-yet", false));
    // Another request in flight does not make this one known.
    let other = w.recipient.live().asking(&hex::encode([9u8; 16]));
    drop(asking);
    let r = w.recipient.transfers().accept_stream(holder_peer, &open).err().unwrap();
    assert_eq!((r.code.as_str(), r.permanent), ("unknown-transfer", true));
    drop(other);
    assert!(!w.recipient.live().is_asking(&hex::encode([9u8; 16])));
}

#[test]
fn the_recipient_refuses_streams_it_must_not_take() {
    let w = world();
    let holder_peer = w.holder.identity().peer();
    let recipient_peer = w.recipient.identity().peer();
    let (id, open) = granted(&w.holder, &w.recipient);
    // A stream for a request the recipient never made is refused.
    assert_eq!(verdict(&w.recipient, holder_peer, &open), "unknown-transfer");
    // Recorded as requested (as `medmesh request` does when the grant comes back).
    let AnswerBody::Granted { .. } = w
        .holder
        .transfers()
        .answer_request(
            recipient_peer,
            &hex::encode([8u8; 16]),
            STUDY,
            Purpose::Treatment,
            Role::Clinician,
            None,
        )
        .unwrap()
    else {
        panic!("second grant")
    };
    w.recipient
        .transfers()
        .note_answer(
            holder_peer,
            &hex::encode([7u8; 16]),
            STUDY,
            Purpose::Treatment,
            Role::Clinician,
            None,
            &AnswerBody::Granted {
                transfer_id: hex::encode(id),
                grant: open.grant.clone(),
            },
        )
        .unwrap();

    // The same opening sent to another node: sealed to another recipient.
    assert_eq!(verdict(&w.other, holder_peer, &open), "wrong-recipient");
    // From a peer that did not sign it.
    assert_eq!(verdict(&w.recipient, w.other.identity().peer(), &open), "bad-grant");
    // A manifest not made for this grant (another transfer's manifest).
    let (_, other_open) = granted(&w.holder, &w.recipient);
    let mixed = Open {
        manifest: other_open.manifest.clone(),
        ..open.clone()
    };
    assert_eq!(verdict(&w.recipient, holder_peer, &mixed), "grant-mismatch");
    // A manifest whose signature does not hold.
    let mut forged = open.clone();
    let n = forged.manifest.len();
    forged.manifest[n - 3] ^= 1;
    assert_eq!(verdict(&w.recipient, holder_peer, &forged), "bad-manifest");
    // Attestations that do not hold: missing, signed by another node, at
    // another level than the grant's, or naming other objects.
    let (_, m) =
        wire::open_signed::<Manifest>("manifest", MANIFEST_DOMAIN, &open.manifest, wire::MAX_MANIFEST).unwrap();
    let (_, att) = wire::open_signed::<wire::Attestation>(
        "attestation",
        wire::ATTESTATION_DOMAIN,
        &m.attestation,
        wire::MAX_MANIFEST,
    )
    .unwrap();
    let sign_att = |by: &Node, a: &wire::Attestation| {
        by.identity()
            .sign(wire::ATTESTATION_DOMAIN, wire::encode("attestation", a).unwrap())
            .to_bytes()
            .unwrap()
    };
    let with = |attestation: Vec<u8>| {
        let m2 = Manifest {
            attestation,
            ..m.clone()
        };
        Open {
            manifest: w
                .holder
                .identity()
                .sign(MANIFEST_DOMAIN, wire::encode("manifest", &m2).unwrap())
                .to_bytes()
                .unwrap(),
            ..open.clone()
        }
    };
    let other_level = wire::Attestation {
        level: DeidLevel::Pseudonymised,
        ..att.clone()
    };
    let mut other_hash = att.clone();
    other_hash.objects[0].after[0] ^= 1;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("missing", Vec::new()),
        ("signed by another node", sign_att(&w.other, &att)),
        ("another level", sign_att(&w.holder, &other_level)),
        ("other objects", sign_att(&w.holder, &other_hash)),
    ];
    for (what, bytes) in cases {
        assert_eq!(
            verdict(&w.recipient, holder_peer, &with(bytes)),
            "bad-attestation",
            "{what}"
        );
    }
    // The real one is accepted, and again (resume) as long as it is the same.
    assert_eq!(verdict(&w.recipient, holder_peer, &open), "accepted");
    assert_eq!(verdict(&w.recipient, holder_peer, &open), "accepted");
    // Another manifest for the same transfer, validly signed: refused.
    let mut m2 = m.clone();
    m2.created += 1;
    let resigned = w
        .holder
        .identity()
        .sign(MANIFEST_DOMAIN, wire::encode("manifest", &m2).unwrap())
        .to_bytes()
        .unwrap();
    let replay = Open {
        manifest: resigned,
        ..open.clone()
    };
    assert_eq!(verdict(&w.recipient, holder_peer, &replay), "manifest-mismatch");
    // Once complete, the manifest sent again (a replay) is refused.
    w.recipient
        .transfers()
        .update_transfer(&id, |r| {
            r.state = State::Complete;
            Ok(())
        })
        .unwrap();
    assert_eq!(verdict(&w.recipient, holder_peer, &open), "replayed");
    // A holder no longer trusted: refused whatever it sends.
    w.other.trust().block(&holder_peer.to_base58(), "test").unwrap();
    assert_eq!(verdict(&w.other, holder_peer, &open), "untrusted");
}

#[test]
fn chunks_are_verified_before_they_are_written() {
    let w = world();
    let holder_peer = w.holder.identity().peer();
    let (id, open) = granted(&w.holder, &w.recipient);
    w.recipient
        .transfers()
        .note_answer(
            holder_peer,
            &hex::encode([7u8; 16]),
            STUDY,
            Purpose::Treatment,
            Role::Clinician,
            None,
            &AnswerBody::Granted {
                transfer_id: hex::encode(id),
                grant: open.grant.clone(),
            },
        )
        .unwrap();
    let accepted = w.recipient.transfers().accept_stream(holder_peer, &open).unwrap();
    let plan = w.holder.transfers().send_plan(&id).unwrap();
    let m = &accepted.manifest;
    // Seal chunk `index` of object 0 under `key`.
    let o = &m.objects[0];
    let header = Header {
        chunk_size: m.chunk_size,
        object_index: 0,
        plaintext_len: o.size,
        salt: key32(&o.salt).unwrap(),
        streamed: false,
    };
    let Source::Blob { file, key, .. } = &plan.sources[0] else {
        panic!("object 0 is a blob")
    };
    let mut reader = medmesh_seal::OpenReader::new(key, file.open().unwrap()).unwrap();
    let mut plain = Vec::new();
    reader.read_to_end(&mut plain).unwrap();
    let seal = |key: &DataKey, index: u64| {
        let start = usize::try_from(index * u64::from(m.chunk_size)).unwrap();
        let len = usize::try_from(header.chunk_plain_len(index)).unwrap();
        let mut c = plain[start..start + len].to_vec();
        let tag = medmesh_seal::Sealer::new(key, header)
            .seal_chunk_at(index, &mut c)
            .unwrap();
        c.extend_from_slice(&tag);
        c
    };
    let mut writer = ObjectWriter::open(w.recipient.store(), &accepted, 0, 0).unwrap();
    let mut scratch = zeroize::Zeroizing::new(Vec::new());
    let good = seal(&plan.key, 0);
    let cases: Vec<(&str, Vec<u8>, u64)> = vec![
        (
            "altered",
            {
                let mut c = good.clone();
                c[3] ^= 1;
                c
            },
            0,
        ),
        ("from another transfer", seal(&DataKey::generate(), 0), 0),
        ("truncated", good[..good.len() - 1].to_vec(), 0),
        ("out of order", good.clone(), 1),
    ];
    for (what, chunk, index) in cases {
        let before = std::fs::metadata(&writer.path).unwrap().len();
        let err = writer.write_chunk(index, &chunk, m, &mut scratch).unwrap_err();
        assert_eq!(err.chunk, index, "{what}");
        assert_eq!(
            std::fs::metadata(&writer.path).unwrap().len(),
            before,
            "{what}: nothing written"
        );
        assert_eq!(writer.next(), 0, "{what}");
    }
    // The genuine chunks go in, and the object verifies at its end.
    let n = header.chunk_count();
    for i in 0..n {
        writer.write_chunk(i, &seal(&plan.key, i), m, &mut scratch).unwrap();
    }
    assert!(writer.is_complete());
    writer.checkpoint(w.recipient.store(), true).unwrap();
    assert_eq!(w.recipient.store().chunks_done(&id).unwrap(), vec![(0, n)]);
    // A new writer resumes after the recorded chunks (re-reading them).
    let resumed = ObjectWriter::open(w.recipient.store(), &accepted, 0, n).unwrap();
    assert_eq!(resumed.next(), n);
}

#[test]
fn the_holder_decides_trust_first_and_hides_what_the_requester_may_not_know() {
    let w = world();
    let recipient_peer = w.recipient.identity().peer();
    let ask = |uid: &str, purpose: Purpose| {
        w.holder
            .transfers()
            .answer_request(
                recipient_peer,
                &hex::encode([1u8; 16]),
                uid,
                purpose,
                Role::Clinician,
                None,
            )
            .unwrap()
    };
    let codes = |a: &AnswerBody| match a {
        AnswerBody::Denied { reasons, .. } => reasons.iter().map(|r| r.code.clone()).collect::<Vec<_>>(),
        other => panic!("not denied: {other:?}"),
    };
    // Not trusted for research (bilateral trust for treatment only): trust answers first.
    assert_eq!(codes(&ask(STUDY, Purpose::Research)), vec!["purpose-not-trusted"]);
    // Unknown study and a study with no consent for this peer look the same.
    let unknown = codes(&ask("1.2.3.4", Purpose::Treatment));
    assert_eq!(unknown, vec!["not-available"]);
    w.holder
        .consents()
        .withdraw(w.holder.consents().list(None).unwrap()[0].id.as_str())
        .unwrap();
    assert_eq!(codes(&ask(STUDY, Purpose::Treatment)), unknown);
    // The holder's own record says why in full.
    let recs = w.holder.transfers().transfer_records().unwrap();
    assert!(recs.iter().all(|r| r.state == State::Denied && r.bytes_sent == 0));
    assert!(recs.iter().any(|r| {
        r.reasons
            .iter()
            .any(|x| x.code != "not-available" && x.code != "purpose-not-trusted")
    }));
}

#[test]
fn the_manifest_takes_the_chunk_hashes_recorded_at_import_and_hashes_older_objects() {
    let w = world();
    let (id, _) = granted(&w.holder, &w.recipient);
    let plan = w.holder.transfers().send_plan(&id).unwrap();
    let bytes = std::fs::read(corpus(CT)).unwrap();
    let dicom = &plan.manifest.objects[0];
    assert_eq!(dicom.blake3, blake3::hash(&bytes).as_bytes().to_vec());
    assert_eq!(dicom.chunks, wire::chunk_hashes(&bytes));
    // An object imported before per-chunk hashes were recorded is read and
    // hashed, with the same result.
    let store = w.holder.store();
    let study = store.study_ref(STUDY);
    let row = store.study_row(&study).unwrap().unwrap();
    let key = store.unwrap_study_key(&study, &row).unwrap();
    let items: Vec<_> = store
        .instances(&study)
        .unwrap()
        .into_iter()
        .map(|(address, irow)| {
            let m = store.open_instance_meta(&study, &address, &key, &irow).unwrap();
            (address, irow, m)
        })
        .collect();
    let recorded = hash_objects(w.holder.store(), &key, &items, "t").unwrap();
    let older: Vec<_> = items
        .iter()
        .cloned()
        .map(|(a, r, m)| {
            (
                a,
                r,
                InstanceMeta {
                    chunks: Vec::new(),
                    ..m
                },
            )
        })
        .collect();
    assert_eq!(hash_objects(w.holder.store(), &key, &older, "t").unwrap(), recorded);
    assert_eq!(recorded[0].0, wire::chunk_hashes(&bytes));
    // A recorded object hash that the data does not match fails when hashed.
    let wrong: Vec<_> = older
        .into_iter()
        .map(|(a, r, m)| {
            (
                a,
                r,
                InstanceMeta {
                    blake3: vec![0; 32],
                    ..m
                },
            )
        })
        .collect();
    assert!(hash_objects(w.holder.store(), &key, &wrong, "t").is_err());
}

/// A treatment consent at `level` for `recipients` for the patient of `study_uid`.
pub(super) fn consent_at(holder: &Node, study_uid: &str, recipients: &[&Node], level: DeidLevel) {
    let d = holder.studies().show(study_uid).unwrap();
    holder
        .consents()
        .add(NewConsent {
            id: None,
            patient_id: d.attributes.patient_id.clone(),
            issuer: d.attributes.issuer_of_patient_id.clone(),
            by: ConsentedBy::Patient,
            deny: false,
            level: Some(level),
            purposes: vec![Purpose::Treatment],
            recipient_peers: recipients.iter().map(|r| r.identity().peer_id()).collect(),
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
        .unwrap();
}

#[test]
fn de_identified_grants_leave_out_series_that_may_show_identifiers_in_their_pixels() {
    let w = world();
    w.holder
        .studies()
        .import(&[corpus("us/us_philips_burned-in-annotation-yes.dcm")], |_| {})
        .unwrap();
    let us = w
        .holder
        .studies()
        .list(None)
        .unwrap()
        .into_iter()
        .find(|s| s.study_uid != STUDY)
        .unwrap()
        .study_uid;
    consent_at(&w.holder, &us, &[&w.recipient], DeidLevel::Pseudonymised);
    consent_at(&w.holder, STUDY, &[&w.recipient], DeidLevel::Pseudonymised);
    let ask = |uid: &str| {
        w.holder
            .transfers()
            .answer_request(
                w.recipient.identity().peer(),
                &hex::encode([9u8; 16]),
                uid,
                Purpose::Treatment,
                Role::Clinician,
                Some(DeidLevel::Pseudonymised),
            )
            .unwrap()
    };
    // (study, granted?, reason the holder records)
    let cases = [
        (us.as_str(), false, "Burned In Annotation (0028,0301) is YES"),
        (STUDY, true, ""),
    ];
    for (uid, granted, why) in cases {
        let answer = ask(uid);
        let records = w.holder.transfers().transfer_records().unwrap();
        let rec = records.iter().find(|r| r.study_uid == uid).unwrap();
        match answer {
            AnswerBody::Granted { .. } => {
                assert!(granted, "{uid} was granted");
                assert!(rec.reasons.is_empty(), "{:?}", rec.reasons);
            }
            AnswerBody::Denied { reasons, .. } => {
                assert!(!granted, "{uid} was denied: {reasons:?}");
                // The requester learns nothing; the holder sees why.
                assert_eq!(reasons[0].code, "not-available");
                assert_eq!(rec.reasons[0].code, "burned-in");
                assert!(rec.reasons[0].text.contains(why), "{:?}", rec.reasons);
            }
            other => panic!("{other:?}"),
        }
    }
    // The de-identified CT transfer prepares: outputs are not the originals.
    let rec = w
        .holder
        .transfers()
        .transfer_records()
        .unwrap()
        .into_iter()
        .find(|r| r.study_uid == STUDY && r.state == State::Granted)
        .unwrap();
    let id = parse_id(&rec.id.to_string()).unwrap();
    w.holder.transfers().prepare(&id).unwrap();
    let plan = w.holder.transfers().send_plan(&id).unwrap();
    let original = blake3::hash(&std::fs::read(corpus(CT)).unwrap());
    assert_ne!(plan.manifest.objects[0].blake3, original.as_bytes().to_vec());
    let a = super::deid::check_attestation(
        w.holder.identity().peer(),
        &{
            let (_, g) = wire::open_signed::<Grant>("grant", GRANT_DOMAIN, &rec.grant, MAX_MESSAGE).unwrap();
            g
        },
        &plan.manifest,
    )
    .unwrap();
    // `before` is keyed (the recipient cannot confirm the original); the holder recomputes it.
    let bytes = std::fs::read(corpus(CT)).unwrap();
    assert_ne!(a.objects[0].before, original.as_bytes().to_vec());
    assert_eq!(
        a.objects[0].before,
        super::deid::BeforeKey::new(w.holder.store(), &id)
            .keyed(&bytes)
            .to_vec()
    );
    assert_eq!(a.level, DeidLevel::Pseudonymised);
    assert!(w.holder.store().outgoing_dir(&id).join("0").exists());
}

#[test]
fn ledger_entries_from_peers_are_checked_and_equivocation_is_kept_as_evidence() {
    use crate::ledger::{self, Event};
    let w = world();
    // The recipient writes two entries; the holder (which trusts it) takes them.
    let ev = |i: u64| Event::ConsentAdded {
        consent: format!("c-{i:016x}"),
    };
    w.recipient.audit().log(ev(1)).unwrap();
    w.recipient.audit().log(ev(2)).unwrap();
    let author = w.recipient.identity().ed25519_public();
    let theirs = w.recipient.audit().ledger_range(&author, 1, 10).unwrap();
    // What the holder lacks of the recipient's feed.
    let heads = w.recipient.audit().ledger_heads().unwrap();
    let wants = w.holder.audit().ledger_wants(&heads).unwrap();
    assert!(
        wants.iter().any(|(a, from, _)| a.as_slice() == author && *from == 1),
        "{wants:?}"
    );
    // Tampered, forged and out-of-order entries are refused, the genuine ones kept.
    let mut flipped = theirs[0].clone();
    let n = flipped.len();
    flipped[n - 1] ^= 1;
    let h = &w.holder;
    let r = h
        .audit()
        .ledger_accept("peer", &[flipped, theirs[1].clone()], None)
        .unwrap();
    assert_eq!((r.added, r.rejected.len()), (0, 2), "{r:?}");
    // (The recipient's feed also holds the peer-added entries of world().)
    let n = theirs.len() as u64;
    let r = h.audit().ledger_accept("peer", &theirs, None).unwrap();
    assert_eq!((r.added, r.duplicates, r.forks), (n, 0, 0), "{r:?}");
    let r = h.audit().ledger_accept("peer", &theirs, None).unwrap();
    assert_eq!(r.duplicates, n);
    // An author this node does not trust: refused.
    let stranger = crate::identity::Identity::from_secrets(&[0x77; 32], &[0x78; 32]).unwrap();
    let foreign = ledger::make_entry(&stranger, None, 1, ev(3)).unwrap();
    let r = h.audit().ledger_accept("peer", &[foreign.bytes], None).unwrap();
    assert!(r.rejected[0].contains("not a trusted author"), "{r:?}");
    // The recipient signs a second entry 2 (a fork): kept as evidence, and verify reports it.
    let first = ledger::open_entry(&theirs[0]).unwrap();
    let fork = ledger::make_entry(w.recipient.identity(), Some((1, first.id)), 5, ev(99)).unwrap();
    let r = h.audit().ledger_accept("peer", &[fork.bytes], None).unwrap();
    assert_eq!(r.forks, 1, "{r:?}");
    let report = h.audit().log_verify().unwrap();
    assert!(!report.ok);
    let feed = report
        .feeds
        .iter()
        .find(|f| f.author == w.recipient.identity().peer_id())
        .unwrap();
    assert_eq!(feed.head_seq, n);
    assert!(feed.problems.iter().any(|p| p.contains("equivocation")), "{feed:?}");
}

/// Issue 16 item 9: a node whose own feed is shorter than what its peers
/// hold (entries lost in a crash) refuses to append (it would sign the same
/// seqs again), says so in `log verify`, takes its entries back from a
/// peer, and only then appends.
#[test]
fn a_node_whose_own_feed_is_behind_its_peers_stops_appending_until_it_has_taken_it_back() {
    use crate::ledger::{self, Event};
    let w = world();
    let ev = |i: u64| Event::ConsentAdded {
        consent: format!("c-{i:016x}"),
    };
    let (r, h) = (&w.recipient, &w.holder);
    r.audit().log(ev(1)).unwrap();
    r.audit().log(ev(2)).unwrap();
    r.audit().log(ev(3)).unwrap();
    let own = r.identity().ed25519_public();
    let n = r.store().ledger_heads_of(&own).unwrap().unwrap().0;
    assert!(n >= 3);
    let feed = r.audit().ledger_range(&own, 1, 100).unwrap();
    let added = h.audit().ledger_accept("recipient", &feed, None).unwrap();
    assert_eq!(added.added, n, "{added:?}");
    // The recipient loses its last two entries (a crash before they were durable).
    let k = n - 2;
    r.store()
        .ledger_tamper(&own, k, &feed[usize::try_from(k - 1).unwrap()])
        .unwrap();
    assert_eq!(r.store().ledger_heads_of(&own).unwrap().unwrap().0, k);
    // Nothing tells it yet: it cannot know (a peer must say so first).
    assert!(r.audit().own_feed_problem().is_none());
    // The holder's heads show the recipient's feed further: it asks for the
    // rest of its own feed (heads are not signed: they stop nothing yet).
    let wants = r.audit().ledger_wants(&h.audit().ledger_heads().unwrap()).unwrap();
    assert!(
        wants.iter().any(|(a, from, _)| a.as_slice() == own && *from == k + 1),
        "{wants:?}"
    );
    // A signed entry of its own beyond its head (the last one, as if the
    // first answer were cut short) proves the loss: it writes nothing until
    // it has the rest, so no second entry k+1.
    let last = h.audit().ledger_range(&own, n, 1).unwrap();
    let got = r.audit().ledger_accept("holder", &last, None).unwrap();
    assert_eq!(got.added, 0, "{got:?}");
    let err = r.audit().log(ev(4)).unwrap_err().to_string();
    assert!(
        err.contains("own ledger feed ends at entry") && err.contains(&format!("up to entry {n}")),
        "{err}"
    );
    assert_eq!(r.store().ledger_heads_of(&own).unwrap().unwrap().0, k);
    assert!(r.audit().own_feed_problem().is_some());
    let report = r.audit().log_verify().unwrap();
    assert!(!report.ok);
    let mine = report
        .feeds
        .iter()
        .find(|f| f.author == r.identity().peer_id())
        .unwrap();
    assert!(mine.problems.iter().any(|p| p.contains("were lost here")), "{mine:?}");
    // Its own entries, served by the holder, verify and are taken back.
    let back = h.audit().ledger_range(&own, k + 1, 100).unwrap();
    let taken = r.audit().ledger_accept("holder", &back, None).unwrap();
    assert_eq!(taken.added, 2, "{taken:?}");
    assert!(r.audit().own_feed_problem().is_none());
    assert!(r.audit().log_verify().unwrap().ok);
    // Now it appends after them, and the holder takes the entry as the next one (no fork).
    r.audit().log(ev(4)).unwrap();
    let next = r.audit().ledger_range(&own, n + 1, 10).unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(ledger::open_entry(&next[0]).unwrap().entry.seq, n + 1);
    let took = h.audit().ledger_accept("recipient", &next, None).unwrap();
    assert_eq!((took.added, took.forks), (1, 0), "{took:?}");
    assert!(h.audit().log_verify().unwrap().ok);
}

/// An entry of its own feed that a node lacks, gossiped by a peer, also
/// stops its appending (and is taken back when it is the next one).
#[test]
fn an_own_entry_gossiped_beyond_the_head_held_stops_appending() {
    use crate::ledger::Event;
    let w = world();
    let ev = |i: u64| Event::ConsentAdded {
        consent: format!("c-{i:016x}"),
    };
    let r = &w.recipient;
    r.audit().log(ev(1)).unwrap();
    r.audit().log(ev(2)).unwrap();
    let own = r.identity().ed25519_public();
    let n = r.store().ledger_heads_of(&own).unwrap().unwrap().0;
    let feed = r.audit().ledger_range(&own, 1, 100).unwrap();
    // Loses its last two entries; a peer relays the last one (a gap here).
    r.store()
        .ledger_tamper(&own, n - 2, &feed[usize::try_from(n - 3).unwrap()])
        .unwrap();
    let last = feed[usize::try_from(n - 1).unwrap()].clone();
    let got = r.audit().ledger_accept("holder", &[last], None).unwrap();
    assert_eq!(got.added, 0, "{got:?}");
    assert!(r.audit().log(ev(3)).is_err());
    // The one before it, then the last: whole again.
    let got = r
        .audit()
        .ledger_accept("holder", &feed[usize::try_from(n - 2).unwrap()..], None)
        .unwrap();
    assert_eq!(got.added, 2, "{got:?}");
    r.audit().log(ev(3)).unwrap();
    assert!(r.audit().log_verify().unwrap().ok);
}

#[test]
fn gossip_messages_are_judged_before_they_are_passed_on() {
    use crate::audit::Verdict;
    use crate::ledger::gossip::{GossipMsg, make_witness};
    use crate::ledger::sync::Head;
    use crate::ledger::{self, Event, LEDGER_VERSION};
    let w = world();
    let ev = |i: u64| Event::ConsentAdded {
        consent: format!("c-{i:016x}"),
    };
    let entry_msg = |bytes: &[u8]| {
        GossipMsg::Entry {
            v: LEDGER_VERSION,
            entry: serde_bytes::ByteBuf::from(bytes.to_vec()),
        }
        .to_bytes()
        .unwrap()
    };
    let witness_msg = |id: &crate::identity::Identity, heads: Vec<Head>| {
        GossipMsg::Witness {
            v: LEDGER_VERSION,
            witness: serde_bytes::ByteBuf::from(make_witness(id, 1_700_000_000, heads).unwrap().bytes),
        }
        .to_bytes()
        .unwrap()
    };
    let (h, r) = (&w.holder, &w.recipient);
    let author = r.identity().ed25519_public();
    let stranger = crate::identity::Identity::from_secrets(&[0x77; 32], &[0x78; 32]).unwrap();
    // Bring the holder up to date with the recipient's feed so far.
    let so_far = r.audit().ledger_range(&author, 1, 64).unwrap();
    h.audit().ledger_accept("peer", &so_far, None).unwrap();
    let n = so_far.len() as u64;
    let next = ledger::make_entry(r.identity(), r.store().ledger_heads_of(&author).unwrap(), 10, ev(1)).unwrap();
    let after_gap = ledger::make_entry(r.identity(), Some((n + 1, next.id)), 11, ev(2)).unwrap();
    let held_last = ledger::open_entry(&so_far[so_far.len() - 1]).unwrap();
    let fork = ledger::make_entry(
        r.identity(),
        Some((n - 1, held_last.entry.prev.clone().try_into().unwrap())),
        12,
        ev(3),
    )
    .unwrap();
    let own = h
        .audit()
        .ledger_range(&h.identity().ed25519_public(), 1, 1)
        .unwrap()
        .remove(0);
    let own_rewritten = ledger::make_entry(h.identity(), None, 13, ev(4)).unwrap();
    let foreign = ledger::make_entry(&stranger, None, 14, ev(5)).unwrap();
    let mut flipped = next.bytes.clone();
    let len = flipped.len();
    flipped[len - 1] ^= 1;

    let head = |seq: u64, id: [u8; 32]| Head {
        author: author.to_vec(),
        seq,
        id: id.to_vec(),
    };
    type Case = (&'static str, Vec<u8>, Verdict, Vec<(Vec<u8>, u64, u64)>);
    let cases: Vec<Case> = vec![
        ("a bad signature", entry_msg(&flipped), Verdict::Reject, vec![]),
        ("not a gossip message", b"junk".to_vec(), Verdict::Reject, vec![]),
        (
            "an entry after a gap",
            entry_msg(&after_gap.bytes),
            Verdict::Accept,
            vec![(author.to_vec(), n + 1, 2)],
        ),
        ("the next entry", entry_msg(&next.bytes), Verdict::Accept, vec![]),
        ("the next entry again", entry_msg(&next.bytes), Verdict::Accept, vec![]),
        ("this node's own entry", entry_msg(&own), Verdict::Ignore, vec![]),
        (
            "another entry of this node's own feed",
            entry_msg(&own_rewritten.bytes),
            Verdict::Accept,
            vec![],
        ),
        (
            "an author not trusted",
            entry_msg(&foreign.bytes),
            Verdict::Ignore,
            vec![],
        ),
        ("an equivocation", entry_msg(&fork.bytes), Verdict::Accept, vec![]),
        (
            "a witness that agrees",
            witness_msg(r.identity(), vec![head(n + 1, next.id)]),
            Verdict::Accept,
            vec![],
        ),
        (
            "a witness a head ahead",
            witness_msg(w.other.identity(), vec![head(n + 2, after_gap.id)]),
            Verdict::Accept,
            vec![(author.to_vec(), n + 2, 1)],
        ),
        (
            "a witness of another entry",
            witness_msg(w.other.identity(), vec![head(n, fork.id)]),
            Verdict::Accept,
            vec![(author.to_vec(), n, 1)],
        ),
        (
            "a witness not trusted",
            witness_msg(&stranger, vec![head(n, fork.id)]),
            Verdict::Ignore,
            vec![],
        ),
    ];
    for (name, data, verdict, follow) in cases {
        let o = h.audit().ledger_gossip("12D3KooWsender", &data).unwrap();
        assert_eq!((o.verdict, &o.follow), (verdict, &follow), "{name}");
    }
    let report = h.audit().log_verify().unwrap();
    let feed = report
        .feeds
        .iter()
        .find(|f| f.author == r.identity().peer_id())
        .unwrap();
    assert_eq!(feed.head_seq, n + 1);
    assert!(feed.problems.iter().any(|p| p.contains("equivocation")), "{feed:?}");
    assert!(feed.problems.iter().any(|p| p.contains("split view")), "{feed:?}");
    assert_eq!(feed.countersigned, 1, "{feed:?}");
    // Alerts name the peer that sent a refused message and the author that equivocated.
    let alerts: Vec<(String, String)> = h
        .audit()
        .notifications(false)
        .unwrap()
        .into_iter()
        .filter(|a| a.kind.starts_with("alert-"))
        .map(|a| (a.kind, a.author))
        .collect();
    for want in [
        ("alert-refused-entry", "12D3KooWsender".to_string()),
        ("alert-equivocation", r.identity().peer_id()),
        ("alert-split-view", r.identity().peer_id()),
    ] {
        assert!(
            alerts.iter().any(|a| a.0 == want.0 && a.1 == want.1),
            "{want:?} in {alerts:?}"
        );
    }
}

#[test]
fn feeds_of_members_never_met_are_taken_with_relayed_credentials() {
    use crate::ledger::Event;
    use crate::trust::{Certificate, Consortium};
    let dir = tempfile::tempdir().unwrap();
    let t = crate::clock::now();
    let admin = [0x42u8; 32];
    let c = Consortium::new(
        "ledger relay",
        vec![crate::identity::ed25519_public_of(&admin)],
        1,
        t - 60,
    )
    .unwrap();
    let member = |name: &str| {
        let n = home(dir.path(), name, "DE");
        let cert = Certificate::issue(&c, &admin, n.record(), vec![Purpose::Treatment], t - 60, t + 86_400, 1).unwrap();
        n.trust()
            .join(&c.to_bytes().unwrap(), &cert.to_bytes().unwrap())
            .unwrap();
        (n, cert.to_bytes().unwrap())
    };
    let (reader, _) = member("reader");
    let (author, author_cert) = member("author");
    let stranger_node = home(dir.path(), "stranger", "DE");
    author
        .audit()
        .log(Event::ConsentAdded {
            consent: "c-0000000000000001".into(),
        })
        .unwrap();
    let key = author.identity().ed25519_public();
    let entries = author.audit().ledger_range(&key, 1, 64).unwrap();
    let credentials = crate::trust::hello::Hello::new(record(&author), vec![author_cert.clone()])
        .to_bytes()
        .unwrap();
    let wrong = crate::trust::hello::Hello::new(record(&stranger_node), vec![author_cert])
        .to_bytes()
        .unwrap();
    // Never met, no credentials, or another node's: not a trusted author.
    for (name, creds) in [("none", None), ("another node's", Some(wrong.as_slice()))] {
        let r = reader.audit().ledger_accept("relay", &entries, creds).unwrap();
        assert_eq!(r.added, 0, "{name}: {r:?}");
        assert!(r.rejected[0].contains("not a trusted author"), "{name}: {r:?}");
    }
    // The author's own hello, relayed: taken, and kept for later batches.
    let r = reader
        .audit()
        .ledger_accept("relay", &entries, Some(&credentials))
        .unwrap();
    assert_eq!(r.added, entries.len() as u64, "{r:?}");
    author
        .audit()
        .log(Event::ConsentAdded {
            consent: "c-0000000000000002".into(),
        })
        .unwrap();
    let next = author.audit().ledger_range(&key, entries.len() as u64 + 1, 64).unwrap();
    let r = reader.audit().ledger_accept("relay", &next, None).unwrap();
    assert_eq!(r.added, 1, "{r:?}");
    // And the reader relays them on in turn.
    assert_eq!(reader.audit().ledger_credentials(&key).unwrap(), Some(credentials));
    assert!(reader.audit().log_verify().unwrap().ok);
}

#[test]
fn a_purged_study_is_gone_and_every_entry_naming_it_still_verifies_but_names_nothing() {
    use crate::ledger::Event;
    use crate::retention::PurgeReason;
    let w = world();
    let h = &w.holder;
    consent_at(h, STUDY, &[&w.recipient], DeidLevel::Pseudonymised);
    let answer = h
        .transfers()
        .answer_request(
            w.recipient.identity().peer(),
            &hex::encode([5u8; 16]),
            STUDY,
            Purpose::Treatment,
            Role::Clinician,
            Some(DeidLevel::Pseudonymised),
        )
        .unwrap();
    let AnswerBody::Granted { transfer_id, .. } = answer else {
        panic!("not granted: {answer:?}");
    };
    let id = parse_id(&transfer_id).unwrap();
    h.transfers().prepare(&id).unwrap();
    assert!(h.store().outgoing_dir(&id).exists());
    let granted = h
        .audit()
        .log_tail(100)
        .unwrap()
        .into_iter()
        .find(|e| e.kind == "transfer-granted")
        .unwrap();
    assert_eq!(
        h.audit()
            .log_show(&granted.id.to_string())
            .unwrap()
            .study_uid
            .as_deref(),
        Some(STUDY)
    );
    let commitment = granted.event.study().unwrap().to_string();
    let files_before = h.store().check(false).unwrap().blob_files;
    assert!(files_before > 0);

    // Refused without a study it can name; the store is untouched.
    for bad in ["", "1.2.3.4", "PSN-123", "abcdef", "0123456789abcdef0123"] {
        let e = h
            .retention()
            .purge_study(bad, PurgeReason::Erasure)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no study"), "{bad:?}: {e}");
    }
    assert_eq!(h.store().check(false).unwrap().blob_files, files_before);

    let r = h.retention().purge_study(STUDY, PurgeReason::Erasure).unwrap();
    assert_eq!(r.commitment, commitment);
    assert_eq!((r.received, r.transfers, r.salt_erased), (false, 1, true), "{r:?}");
    assert!(r.instances >= 1 && r.files == r.instances && r.relinks >= 1, "{r:?}");
    // Nothing of the study is left: rows, files, re-link entries, transfer
    // documents and de-identified copies; the store checks clean.
    assert!(h.studies().list(None).unwrap().is_empty());
    assert!(h.studies().show(STUDY).is_err());
    let check = h.store().check(true).unwrap();
    assert!(check.is_clean(), "{check:?}");
    assert_eq!((check.studies, check.instances, check.blob_files), (0, 0, 0));
    assert_eq!(h.store().relink_forget_study(&h.store().study_ref(STUDY)).unwrap(), 0);
    assert!(!h.store().outgoing_dir(&id).exists());
    let rec = h.transfers().transfer(&id).unwrap();
    assert!(
        rec.study_uid.is_empty() && rec.grant.is_empty() && rec.reasons.is_empty(),
        "{rec:?}"
    );
    // The purge is in the ledger, every feed still verifies, and no entry
    // resolves to the study any more.
    let purged = h.audit().log_tail(1).unwrap().remove(0);
    assert_eq!(
        purged.event,
        Event::StudyPurged {
            study: commitment.clone(),
            reason: "erasure".into()
        }
    );
    assert!(h.audit().log_verify().unwrap().ok);
    assert_eq!(h.audit().log_show(&granted.id.to_string()).unwrap().study_uid, None);
    assert_eq!(h.audit().log_show(&purged.id.to_string()).unwrap().study_uid, None);
    // A peer that takes the holder's feed verifies it too.
    let author = h.identity().ed25519_public();
    let feed = h.audit().ledger_range(&author, 1, 1000).unwrap();
    let r = w.recipient.audit().ledger_accept("holder", &feed, None).unwrap();
    assert!(r.rejected.is_empty(), "{r:?}");
    assert!(w.recipient.audit().log_verify().unwrap().ok);
    // Purged twice: there is nothing left to purge.
    assert!(h.retention().purge_study(STUDY, PurgeReason::Erasure).is_err());
    // Imported again, the study gets a new commitment (the old one stays meaningless).
    h.studies().import(&[corpus(CT)], |_| {}).unwrap();
    assert_ne!(hex::encode(h.audit().study_commitment(STUDY).unwrap()), commitment);
}

/// A received copy locked at `locked` (no key, no objects), as a grant's end leaves it.
fn locked_copy(n: &Node, uid: &str, locked: i64) -> crate::store::StudyRef {
    use crate::store::{Origin, ReceivedGrant, StudyRow};
    let study = n.store().study_ref(uid);
    let row = StudyRow {
        v: crate::store::ROW_VERSION,
        wrapped_key: Vec::new(),
        meta: Vec::new(),
        origin: Origin::Received(ReceivedGrant {
            transfer_id: hex::encode([3u8; 16]),
            peer: "12D3KooWPqT2nMDSiXUSx5D7fasaxhxKigVhcqfkKqrLghCq9jxz".parse().unwrap(),
            institution: "Hospital holder".into(),
            purpose: Purpose::Treatment,
            level: DeidLevel::Identifiable,
            expires: locked,
            grant_hash: hex::encode([4u8; 32]),
            received: locked - 100,
            locked: Some(locked),
            attestation: Vec::new(),
            study_ref: vec![0x5a; 32],
        }),
        created: locked - 100,
        updated: locked,
        instances: 0,
        bytes: 0,
    };
    let update = crate::store::StudyUpdate {
        study,
        row,
        patient: None,
        arrived: None,
    };
    n.store().commit_batch(Vec::new(), vec![update]).unwrap();
    study
}

#[test]
fn retention_purges_locked_copies_after_locked_days_and_never_when_zero() {
    use crate::ledger::Event;
    use crate::retention::PurgeReason;
    let dir = tempfile::tempdir().unwrap();
    let n = home(dir.path(), "recipient", "DE");
    let day = 86_400;
    let t0 = 1_700_000_000;
    let a = locked_copy(&n, "1.2.3.1", t0);
    let b = locked_copy(&n, "1.2.3.2", t0 + 5 * day);
    // (now, studies left) with the default of 30 days.
    assert_eq!(n.config().retention.locked_days, 30);
    for (now, left, purged) in [
        (t0 + 30 * day - 1, 2, 0),
        (t0 + 30 * day, 1, 1),
        (t0 + 35 * day - 1, 1, 0),
        (t0 + 35 * day, 0, 1),
    ] {
        assert_eq!(n.retention().enforce_retention(now).unwrap(), purged, "at {now}");
        assert_eq!(n.store().studies().unwrap().len(), left, "at {now}");
    }
    assert!(n.store().study_row(&a).unwrap().is_none() && n.store().study_row(&b).unwrap().is_none());
    // Each purge names the holder's commitment with reason retention.
    let purges: Vec<Event> = n
        .audit()
        .log_tail(100)
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "study-purged")
        .map(|e| e.event)
        .collect();
    let want = Event::StudyPurged {
        study: hex::encode([0x5a; 32]),
        reason: PurgeReason::Retention.as_str().into(),
    };
    assert_eq!(purges, vec![want.clone(), want]);
    // locked_days = 0 keeps locked copies for ever; a locked copy is purged by its reference.
    let root = n.paths().root.clone();
    drop(n);
    let config = root.join("config.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("locked_days = 30", "locked_days = 0");
    std::fs::write(&config, text).unwrap();
    let pass = Passphrase::new("correct horse battery staple transfer".into());
    let n = Node::open(&root, &pass).unwrap();
    let c = locked_copy(&n, "1.2.3.3", t0);
    assert_eq!(n.retention().enforce_retention(t0 + 10_000 * day).unwrap(), 0);
    let r = n.retention().purge_study(&c.short(), PurgeReason::Erasure).unwrap();
    assert_eq!((r.received, r.instances, r.transfers), (true, 0, 0), "{r:?}");
    assert!(n.store().studies().unwrap().is_empty());
    assert!(n.audit().log_verify().unwrap().ok);
}

/// The holder's transfer to the recipient, granted, prepared and accepted
/// by the recipient (which holds a `streaming` record of it).
fn streaming(w: &World) -> (TransferId, Open) {
    let holder_peer = w.holder.identity().peer();
    let (id, open) = granted(&w.holder, &w.recipient);
    w.recipient
        .transfers()
        .note_answer(
            holder_peer,
            &hex::encode([7u8; 16]),
            STUDY,
            Purpose::Treatment,
            Role::Clinician,
            None,
            &AnswerBody::Granted {
                transfer_id: hex::encode(id),
                grant: open.grant.clone(),
            },
        )
        .unwrap();
    assert_eq!(verdict(&w.recipient, holder_peer, &open), "accepted");
    (id, open)
}

fn ended_codes(n: &Node, id: &TransferId) -> Vec<String> {
    n.audit()
        .log_tail(1000)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.event {
            crate::ledger::Event::TransferEnded { transfer, code, .. } if transfer == hex::encode(id) => Some(code),
            _ => None,
        })
        .collect()
}

/// Every change of consent or trust ends, at once and through the one
/// shared step, each unfinished transfer the decision (taken again) no
/// longer allows: failed with the reason code, written to the ledger; the
/// recipient, told, fails it too and deletes what it received.
#[test]
fn a_change_of_consent_or_trust_ends_the_affected_transfers_with_their_reason() {
    type Change = Box<dyn Fn(&World)>;
    let objection = |w: &World| {
        let d = w.holder.studies().show(STUDY).unwrap();
        w.holder
            .consents()
            .add(NewConsent {
                id: None,
                patient_id: d.attributes.patient_id.clone(),
                issuer: d.attributes.issuer_of_patient_id.clone(),
                by: ConsentedBy::Patient,
                deny: true,
                level: None,
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
            .unwrap();
    };
    let cases: Vec<(&str, Change, &str)> = vec![
        (
            "consent withdrawn",
            Box::new(|w: &World| {
                for c in w.holder.consents().list(None).unwrap() {
                    w.holder.consents().withdraw(c.id.as_str()).unwrap();
                }
            }),
            "consent-withdrawn",
        ),
        ("objection added", Box::new(objection), "consent-denied"),
        (
            "peer blocked",
            Box::new(|w: &World| {
                w.holder
                    .trust()
                    .block(&w.recipient.identity().peer_id(), "test")
                    .unwrap();
            }),
            "peer-blocked",
        ),
        (
            "purpose removed",
            Box::new(|w: &World| {
                w.holder
                    .trust()
                    .add_peer(&record(&w.recipient), vec![Purpose::Research], None)
                    .unwrap();
            }),
            "purpose-removed",
        ),
    ];
    for (name, change, code) in cases {
        let w = world();
        let holder_peer = w.holder.identity().peer();
        let (id, open) = streaming(&w);
        // Not affected yet: the step ends nothing.
        assert!(
            w.holder.transfers().end_affected_transfers().unwrap().is_empty(),
            "{name}"
        );
        assert!(w.holder.transfers().session_check(&id).unwrap(), "{name}");
        change(&w);
        // Ended by the change itself (no periodic check ran).
        let rec = w.holder.transfers().transfer(&id).unwrap();
        assert_eq!(rec.state, State::Failed, "{name}");
        assert_eq!(rec.reasons[0].code, code, "{name}");
        assert!(rec.tell, "{name}: the recipient is to be told");
        assert!(w.holder.live().is_ended(&id), "{name}: a running session stops");
        assert_eq!(ended_codes(&w.holder, &id), vec![code.to_string()], "{name}");
        assert!(
            !w.holder.transfers().session_check(&id).unwrap(),
            "{name}: no session again"
        );
        // The recipient is told: it fails the transfer with the code and
        // deletes what it had received; a stream is then refused.
        let msg = w.holder.transfers().ended_message(&rec).unwrap();
        let wire::MsgBody::Decided { transfer_id, reasons } = msg.body else {
            panic!("{name}: not decided")
        };
        assert_eq!(reasons[0].code, code, "{name}");
        assert_eq!(
            w.recipient
                .transfers()
                .note_decided(holder_peer, &transfer_id, reasons)
                .unwrap(),
            AnswerBody::Ack
        );
        let got = w.recipient.transfers().transfer(&id).unwrap();
        assert_eq!(
            (got.state, got.reasons[0].code.as_str()),
            (State::Failed, code),
            "{name}"
        );
        assert_eq!(ended_codes(&w.recipient, &id), vec![code.to_string()], "{name}");
        assert!(
            w.recipient.store().transfer_doc(&id, DOC_MANIFEST).unwrap().is_none(),
            "{name}"
        );
        assert!(w.recipient.store().chunks_done(&id).unwrap().is_empty(), "{name}");
        assert!(!w.recipient.store().incoming_dir(&id).exists(), "{name}");
        assert_eq!(verdict(&w.recipient, holder_peer, &open), "closed", "{name}");
        w.holder.transfers().ended_told(&id).unwrap();
        assert!(
            w.holder
                .transfers()
                .ended_message(&w.holder.transfers().transfer(&id).unwrap())
                .is_none()
        );
    }
}

/// A grant's end ends the transfer on both sides at the periodic check.
#[test]
fn a_grant_that_ends_ends_the_transfer_on_both_sides() {
    let w = world();
    let (id, _) = streaming(&w);
    for n in [&w.holder, &w.recipient] {
        n.transfers()
            .update_transfer(&id, |r| {
                r.expires = Some(now() - 1);
                Ok(())
            })
            .unwrap();
        let ended = n.transfers().end_affected_transfers().unwrap();
        assert_eq!(ended, vec![(hex::encode(id), "grant-expired".to_string())]);
        assert_eq!(n.transfers().transfer(&id).unwrap().state, State::Failed);
    }
    assert!(!w.recipient.store().incoming_dir(&id).exists());
}
