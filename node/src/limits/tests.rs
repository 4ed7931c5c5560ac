//! Table tests of the limiters and the share policy, and abuse loops on real
//! homes (no network): far more than each limit is sent, and what is kept
//! (records, parts, evidence, allocations) stays bounded while other peers
//! are still served.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use consent_schema::{ConsentedBy, DeidLevel, Purpose, Role};

use super::*;
use crate::consent::NewConsent;
use crate::home::Node;
use crate::ids::PeerId;
use crate::keystore::Passphrase;
use crate::transfer::admission::{admit_message, retry_later};
use crate::transfer::wire::{self, Answer, AnswerBody, Manifest, Msg, MsgBody, Open, Refuse, WIRE_VERSION};
use crate::transfer::{Direction, State, TransferId, parse_id};

const CT: &str = "ct/ct_ge_small_explicit-le.dcm";
const STUDY: &str = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322";
const PASS: &str = "correct horse battery staple limits";

fn corpus(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/corpus")
        .join(file)
}

/// A home whose config.toml has `edit` applied (`from` → `to` pairs).
fn home(dir: &Path, name: &str, edit: &[(&str, &str)]) -> Node {
    let pass = Passphrase::new(PASS.into());
    let root = dir.join(name);
    let node = Node::init(&root, &format!("Hospital {name}"), "DE", &pass).unwrap();
    if edit.is_empty() {
        return node;
    }
    drop(node);
    let path = root.join("config.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    for (from, to) in edit {
        assert!(text.contains(from), "{from}");
        text = text.replace(from, to);
    }
    std::fs::write(&path, text).unwrap();
    Node::open(&root, &Passphrase::new(PASS.into())).unwrap()
}

fn trust(a: &Node, b: &Node) {
    let record = b.record().envelope().to_bytes().unwrap();
    a.trust().add_peer(&record, vec![Purpose::Treatment], None).unwrap();
}

fn consent(holder: &Node, recipients: &[&Node]) {
    let d = holder.studies().show(STUDY).unwrap();
    holder
        .consents()
        .add(NewConsent {
            id: None,
            patient_id: d.attributes.patient_id.clone(),
            issuer: d.attributes.issuer_of_patient_id.clone(),
            by: ConsentedBy::Patient,
            deny: false,
            level: Some(DeidLevel::Identifiable),
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

struct World {
    _dir: tempfile::TempDir,
    holder: Node,
    recipient: Node,
    other: Node,
}

/// Holder (with the CT study) and two peers it may send it to, all trusting
/// each other; `holder_edit` / `recipient_edit` change their config.toml.
fn world(holder_edit: &[(&str, &str)], recipient_edit: &[(&str, &str)]) -> World {
    let dir = tempfile::tempdir().unwrap();
    let holder = home(dir.path(), "holder", holder_edit);
    let recipient = home(dir.path(), "recipient", recipient_edit);
    let other = home(dir.path(), "other", &[]);
    for (a, b) in [
        (&holder, &recipient),
        (&recipient, &holder),
        (&holder, &other),
        (&other, &holder),
        (&recipient, &other),
        (&other, &recipient),
    ] {
        trust(a, b);
    }
    holder.studies().import(&[corpus(CT)], |_| {}).unwrap();
    consent(&holder, &[&recipient, &other]);
    World {
        _dir: dir,
        holder,
        recipient,
        other,
    }
}

/// The stream opening of a share of the study from `holder` to `to`.
fn share_open(holder: &Node, to: &Node) -> (TransferId, Open) {
    let view = holder
        .transfers()
        .share(to.identity().peer(), STUDY, Purpose::Treatment, Role::Clinician, None)
        .unwrap();
    let id = parse_id(&view.id.to_string()).unwrap();
    let rec = holder.transfers().transfer(&id).unwrap();
    assert_eq!(rec.state, State::Granted, "{view:?}");
    holder.transfers().prepare(&id).unwrap();
    let plan = holder.transfers().send_plan(&id).unwrap();
    let open = Open {
        v: WIRE_VERSION,
        session: 1,
        grant: rec.grant,
        manifest: plan.manifest_bytes.clone(),
    };
    (id, open)
}

fn incoming_from(n: &Node, peer: PeerId) -> usize {
    n.transfers()
        .transfer_records()
        .unwrap()
        .iter()
        .filter(|r| r.direction == Direction::Incoming && r.peer == peer)
        .count()
}

#[test]
fn a_token_bucket_gives_its_burst_then_one_token_per_interval() {
    let t0 = Instant::now();
    let s = |n: u64| t0 + Duration::from_secs(n);
    // capacity 3, 60 a minute: one a second.
    let mut b = TokenBucket::new(3, 60, t0);
    let taken: Vec<bool> = (0..5).map(|_| b.take(t0).is_ok()).collect();
    assert_eq!(taken, [true, true, true, false, false]);
    let wait = b.take(t0).unwrap_err();
    assert!(
        wait > Duration::from_millis(900) && wait <= Duration::from_secs(1),
        "{wait:?}"
    );
    assert!(b.take(s(1)).is_ok());
    assert!(b.take(s(1)).is_err());
    // A long quiet time refills to the capacity, not beyond.
    let taken = (0..10).filter(|_| b.take(s(1000)).is_ok()).count();
    assert_eq!(taken, 3);
    // 6 a minute: the wait is 10 s.
    let mut b = TokenBucket::new(1, 6, t0);
    assert!(b.take(t0).is_ok());
    let wait = b.take(t0).unwrap_err();
    assert!(
        wait > Duration::from_secs(9) && wait <= Duration::from_secs(10),
        "{wait:?}"
    );
}

#[test]
fn requests_over_a_peers_rate_are_answered_retry_later_and_others_still_served() {
    let cfg = LimitsConfig {
        request_burst: 5,
        requests_per_minute: 30,
        ..LimitsConfig::default()
    };
    let limiter = RequestLimiter::new(&cfg);
    let t0 = Instant::now();
    let request = MsgBody::Request {
        request_id: "00".repeat(16),
        study_uid: STUDY.into(),
        purpose: Purpose::Treatment,
        role: Role::Clinician,
        level: None,
    };
    let mut taken = 0;
    for _ in 0..10_000 {
        match admit_message(&limiter, "flooder", &request, t0) {
            None => taken += 1,
            Some(AnswerBody::RetryLater {
                code, retry_after_secs, ..
            }) => {
                assert_eq!(code, "rate-limited");
                assert_eq!(retry_after_secs, 2, "30 a minute: one every 2 s");
            }
            Some(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(taken, 5);
    // Another peer is served; a receipt of the flooder is not a request.
    assert!(admit_message(&limiter, "another", &request, t0).is_none());
    let receipt = MsgBody::Receipt { receipt: Vec::new() };
    assert!(admit_message(&limiter, "flooder", &receipt, t0).is_none());
    // Honouring the retry-after is enough.
    assert!(admit_message(&limiter, "flooder", &request, t0 + Duration::from_secs(2)).is_none());
    // Ever new peer ids do not grow the table without bound.
    for i in 0..(MAX_TRACKED_PEERS * 2) {
        let _ = limiter.check(&format!("peer-{i}"), t0);
    }
    assert!(limiter.tracked() <= MAX_TRACKED_PEERS, "{}", limiter.tracked());
    // Once they have been quiet their buckets are forgotten for new ones.
    assert!(limiter.check("late", t0 + Duration::from_secs(3600)).is_ok());
}

#[test]
fn a_request_flood_records_at_most_the_burst_and_the_holder_serves_others() {
    let w = world(&[("request_burst = 300", "request_burst = 3")], &[]);
    let limiter = RequestLimiter::new(&w.holder.config().limits);
    let flooder = w.recipient.identity().peer_id();
    let entries_before = w.holder.store().ledger_entries().unwrap().len();
    let t0 = Instant::now();
    let msg = |i: u32| Msg {
        v: WIRE_VERSION,
        body: MsgBody::Request {
            request_id: format!("{i:032x}"),
            study_uid: STUDY.into(),
            purpose: Purpose::Treatment,
            role: Role::Clinician,
            level: None,
        },
    };
    // The path of the network service: the limiter, then the answer.
    let serve = |peer: &str, m: Msg| match admit_message(&limiter, peer, &m.body, t0) {
        Some(busy) => busy,
        None => crate::transfer::protocol::answer_transfer(&w.holder, peer.parse().unwrap(), m).unwrap(),
    };
    let mut later = 0;
    for i in 0..300 {
        match serve(&flooder, msg(i)) {
            AnswerBody::RetryLater { .. } => later += 1,
            AnswerBody::Granted { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(later, 297);
    let records = w.holder.transfers().transfer_records().unwrap();
    assert_eq!(records.len(), 3, "one record per request taken");
    // Each request taken writes two entries (requested, granted); refused ones none.
    let entries = w.holder.store().ledger_entries().unwrap().len() - entries_before;
    assert_eq!(entries, 6);
    // Another peer is still served.
    let answer = serve(&w.other.identity().peer_id(), msg(1000));
    assert!(matches!(answer, AnswerBody::Granted { .. }), "{answer:?}");
}

#[test]
fn requests_waiting_for_a_person_are_capped_per_peer() {
    let w = world(
        &[
            ("pending_approvals_per_peer = 50", "pending_approvals_per_peer = 2"),
            (
                "approval_required = [\"research\", \"teaching\"]",
                "approval_required = [\"treatment\"]",
            ),
        ],
        &[],
    );
    let flooder = w.recipient.identity().peer();
    let msg = |i: u32| Msg {
        v: WIRE_VERSION,
        body: MsgBody::Request {
            request_id: format!("{i:032x}"),
            study_uid: STUDY.into(),
            purpose: Purpose::Treatment,
            role: Role::Clinician,
            level: None,
        },
    };
    let answers: Vec<String> = (0..20)
        .map(
            |i| match crate::transfer::protocol::answer_transfer(&w.holder, flooder, msg(i)).unwrap() {
                AnswerBody::Pending { .. } => "pending".into(),
                AnswerBody::RetryLater {
                    code, retry_after_secs, ..
                } => {
                    assert!(retry_after_secs > 0);
                    code
                }
                other => panic!("{other:?}"),
            },
        )
        .collect();
    assert_eq!(&answers[..3], ["pending", "pending", "approvals-full"]);
    assert!(answers[2..].iter().all(|a| a == "approvals-full"));
    assert_eq!(w.holder.transfers().approvals().unwrap().len(), 2);
    // Another peer has its own queue.
    let answer = crate::transfer::protocol::answer_transfer(&w.holder, w.other.identity().peer(), msg(99)).unwrap();
    assert!(matches!(answer, AnswerBody::Pending { .. }), "{answer:?}");
}

#[test]
fn the_approvals_and_share_decisions() {
    let cfg = LimitsConfig::default();
    assert!(approvals_decision(&cfg, 49).is_ok());
    assert!(matches!(
        approvals_decision(&cfg, 50).err().map(AnswerBody::from),
        Some(AnswerBody::RetryLater { code, .. }) if code == "approvals-full"
    ));
    let listed = LimitsConfig {
        shares_from: SharesFrom::Listed,
        share_peers: vec!["friend".into()],
        ..LimitsConfig::default()
    };
    let none = LimitsConfig {
        shares_from: SharesFrom::None,
        ..LimitsConfig::default()
    };
    let gib = 1024 * 1024 * 1024;
    // (config, peer, pending, pending bytes, bytes) → refusal code and permanence, or accepted.
    type Case<'a> = (&'a LimitsConfig, &'a str, u32, u64, u64, Option<(&'a str, bool)>);
    let cases: Vec<Case<'_>> = vec![
        (&cfg, "anyone", 0, 0, 1, None),
        (&cfg, "anyone", 3, 0, 1, None),
        (&cfg, "anyone", 4, 0, 1, Some(("share-quota", false))),
        (&cfg, "anyone", 1, 60 * gib, 4 * gib, None),
        (&cfg, "anyone", 1, 60 * gib, 4 * gib + 1, Some(("share-quota", false))),
        (&cfg, "anyone", 0, 0, 65 * gib, Some(("share-quota", false))),
        (&listed, "friend", 0, 0, 1, None),
        (&listed, "stranger", 0, 0, 1, Some(("shares-refused", true))),
        (&listed, "friend", 4, 0, 1, Some(("share-quota", false))),
        (&none, "friend", 0, 0, 1, Some(("shares-refused", true))),
    ];
    for (i, (cfg, peer, pending, pending_bytes, bytes, want)) in cases.into_iter().enumerate() {
        let got = share_decision(cfg, peer, pending, pending_bytes, bytes)
            .map_err(Refuse::from)
            .err()
            .map(|r| (r.code, r.permanent));
        let want = want.map(|(c, p)| (c.to_string(), p));
        assert_eq!(got, want, "case {i}");
    }
}

#[test]
fn unsolicited_shares_beyond_the_quota_are_refused_before_anything_is_recorded() {
    let w = world(&[], &[]);
    let holder_peer = w.holder.identity().peer();
    let mut accepted = 0;
    let mut refused = 0;
    for _ in 0..12 {
        let (_, open) = share_open(&w.holder, &w.recipient);
        match w.recipient.transfers().accept_stream(holder_peer, &open) {
            Ok(_) => accepted += 1,
            Err(r) => {
                assert_eq!((r.code.as_str(), r.permanent), ("share-quota", false), "{}", r.text);
                refused += 1;
            }
        }
    }
    assert_eq!((accepted, refused), (4, 8));
    assert_eq!(
        incoming_from(&w.recipient, holder_peer),
        4,
        "no record of a refused share"
    );
    // Another peer's shares have their own quota.
    w.other.studies().import(&[corpus(CT)], |_| {}).unwrap();
    consent(&w.other, &[&w.recipient]);
    let (_, open) = share_open(&w.other, &w.recipient);
    assert!(
        w.recipient
            .transfers()
            .accept_stream(w.other.identity().peer(), &open)
            .is_ok()
    );
    // The holder's shares stay refused while four are pending.
    let (id, open) = share_open(&w.holder, &w.recipient);
    let refusal = w.recipient.transfers().accept_stream(holder_peer, &open).err().unwrap();
    assert_eq!(refusal.code, "share-quota");
    // The stale ones go after the timeout, and the quota frees.
    let later = crate::clock::now() + 7 * 86400 + 60;
    assert_eq!(w.recipient.transfers().sweep_stale_incoming(later).unwrap(), 5);
    assert!(
        w.recipient.transfers().accept_stream(holder_peer, &open).is_ok(),
        "{id:?}"
    );
}

#[test]
fn a_site_that_takes_no_shares_refuses_them_for_good() {
    let w = world(&[], &[("shares_from = \"trusted\"", "shares_from = \"none\"")]);
    let (_, open) = share_open(&w.holder, &w.recipient);
    let r = w
        .recipient
        .transfers()
        .accept_stream(w.holder.identity().peer(), &open)
        .err()
        .unwrap();
    assert_eq!((r.code.as_str(), r.permanent), ("shares-refused", true));
    assert_eq!(incoming_from(&w.recipient, w.holder.identity().peer()), 0);
}

#[test]
fn stale_incoming_transfers_are_failed_and_their_parts_deleted() {
    let w = world(&[], &[("incoming_stale_secs = 604800", "incoming_stale_secs = 60")]);
    let holder_peer = w.holder.identity().peer();
    let (id, open) = share_open(&w.holder, &w.recipient);
    let accepted = w.recipient.transfers().accept_stream(holder_peer, &open).unwrap();
    // A part received (as the stream writer leaves it).
    let dir = w.recipient.store().incoming_dir(&id);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("0"), b"sealed bytes").unwrap();
    assert_eq!(accepted.have.len(), open_objects(&open));
    let now = crate::clock::now();
    // Within the timeout: kept.
    assert_eq!(w.recipient.transfers().sweep_stale_incoming(now + 30).unwrap(), 0);
    assert!(dir.exists());
    // After it: failed, parts, progress and documents deleted.
    assert_eq!(w.recipient.transfers().sweep_stale_incoming(now + 61).unwrap(), 1);
    let rec = w.recipient.transfers().transfer(&id).unwrap();
    assert_eq!(rec.state, State::Failed);
    assert!(rec.error.as_deref().unwrap_or("").starts_with(STALE_REASON), "{rec:?}");
    assert!(!dir.exists());
    assert!(w.recipient.store().chunks_done(&id).unwrap().is_empty());
    assert!(
        w.recipient
            .store()
            .transfer_doc(&id, crate::store::DOC_MANIFEST)
            .unwrap()
            .is_none()
    );
    // The holder, back, is refused for good.
    let r = w.recipient.transfers().accept_stream(holder_peer, &open).err().unwrap();
    assert_eq!((r.code.as_str(), r.permanent), ("closed", true));
    // Done once.
    assert_eq!(w.recipient.transfers().sweep_stale_incoming(now + 1000).unwrap(), 0);
}

fn open_objects(open: &Open) -> usize {
    let (_, m) =
        wire::open_signed::<Manifest>("manifest", wire::MANIFEST_DOMAIN, &open.manifest, wire::MAX_MANIFEST).unwrap();
    m.objects.len()
}

#[test]
fn inbound_streams_are_capped_per_peer_and_given_back() {
    let slots = StreamSlots::new(8);
    let mut held = Vec::new();
    for _ in 0..10_000 {
        if let Some(s) = slots.acquire("flooder") {
            held.push(s);
        }
    }
    assert_eq!(held.len(), 8);
    assert_eq!(slots.open("flooder"), 8);
    // Another peer still gets its streams.
    let other = slots.acquire("another");
    assert!(other.is_some());
    // A stream that ends gives its place back.
    held.pop();
    assert!(
        slots.acquire("flooder").is_some(),
        "dropped at once: the place is free again"
    );
    drop(held);
    drop(other);
    assert_eq!(slots.open("flooder"), 0);
    assert!(lock(&slots.open).is_empty(), "no peer left behind");
}

/// A peer's stream that announces a large frame and then sends a little:
/// records the largest buffer the reader was asked to fill.
struct Trickle {
    data: Vec<u8>,
    at: usize,
    largest: usize,
}

impl futures::AsyncRead for Trickle {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
        self.largest = self.largest.max(buf.len());
        let n = buf.len().min(self.data.len() - self.at).min(1000);
        let at = self.at;
        buf[..n].copy_from_slice(&self.data[at..at + n]);
        self.at += n;
        Poll::Ready(Ok(n))
    }
}

#[tokio::test]
async fn frames_are_allocated_as_their_bytes_arrive() {
    // OPEN of 16 MiB announced, 10 kB sent, then the stream ends.
    let announced = u32::try_from(wire::MAX_MANIFEST).unwrap();
    let mut data = announced.to_be_bytes().to_vec();
    data.push(wire::frame::OPEN);
    data.extend(std::iter::repeat_n(0xa5, 10_000));
    let mut s = Trickle {
        data,
        at: 0,
        largest: 0,
    };
    let err = crate::transfer::engine::read_frame(&mut s, wire::MAX_MANIFEST + wire::MAX_MESSAGE)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    assert!(s.largest <= READ_STEP, "asked to fill {} bytes at once", s.largest);
    // A whole frame still reads as it was sent.
    let mut data = 70_001u32.to_be_bytes().to_vec();
    data.push(wire::frame::CHUNK);
    data.extend((0..70_000u32).map(|i| (i % 251) as u8));
    let mut s = Trickle {
        data: data.clone(),
        at: 0,
        largest: 0,
    };
    let (kind, body) = crate::transfer::engine::read_frame(&mut s, 1 << 20).await.unwrap();
    assert_eq!((kind, body.as_slice()), (wire::frame::CHUNK, &data[5..]));
}

#[tokio::test]
async fn a_requester_waits_out_the_retry_after_before_asking_again() {
    let answer = |body: AnswerBody| Answer { v: WIRE_VERSION, body };
    let later = |secs: u64| {
        answer(AnswerBody::RetryLater {
            code: "rate-limited".into(),
            text: "slow down".into(),
            retry_after_secs: secs,
        })
    };
    // Asked to wait 1 s: waits, asks again, gets the answer.
    let sent = Mutex::new(Vec::new());
    let t0 = Instant::now();
    let got = send_honouring_retry_after(
        || {
            let mut s = lock(&sent);
            s.push(t0.elapsed());
            let a = if s.len() == 1 {
                later(1)
            } else {
                answer(AnswerBody::Ack)
            };
            async move { Ok::<_, ()>(a) }
        },
        retry_later,
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(got.body, AnswerBody::Ack);
    let sent = sent.into_inner().unwrap();
    assert_eq!(sent.len(), 2);
    assert!(sent[1] >= Duration::from_secs(1), "asked again after {:?}", sent[1]);
    // Asked to wait an hour: not waited out here, reported; sent once.
    let count = Mutex::new(0);
    let got = send_honouring_retry_after(
        || {
            *lock(&count) += 1;
            async { Ok::<_, ()>(later(3600)) }
        },
        retry_later,
    )
    .await
    .unwrap();
    assert_eq!(got.unwrap_err().0, 3600);
    assert_eq!(*lock(&count), 1);
}

#[test]
fn fork_evidence_is_capped_per_author_alerted_once_an_hour_and_relayed_once() {
    use crate::audit::Verdict;
    use crate::ledger::gossip::GossipMsg;
    use crate::ledger::{self, Event, LEDGER_VERSION};
    let w = world(&[], &[]);
    let (h, r) = (&w.holder, &w.recipient);
    let author = r.identity().ed25519_public();
    let feed = r.audit().ledger_range(&author, 1, 64).unwrap();
    h.audit().ledger_accept("peer", &feed, None).unwrap();
    // The recipient signs conflicting entries 2 without end.
    let first = ledger::open_entry(&feed[0]).unwrap();
    let msg = |i: i64| {
        let fork = ledger::make_entry(
            r.identity(),
            Some((1, first.id)),
            1_700_000_000 + i,
            Event::ConsentAdded {
                consent: format!("c-{i:016x}"),
            },
        )
        .unwrap();
        GossipMsg::Entry {
            v: LEDGER_VERSION,
            entry: serde_bytes::ByteBuf::from(fork.bytes),
        }
        .to_bytes()
        .unwrap()
    };
    let mut relayed = 0;
    for i in 0..300 {
        let o = h.audit().ledger_gossip("12D3KooWsender", &msg(i)).unwrap();
        if o.verdict == Verdict::Accept {
            relayed += 1;
        }
    }
    assert_eq!(relayed, crate::store::MAX_FORKS_PER_AUTHOR);
    assert_eq!(
        h.store().ledger_forks().unwrap().len(),
        crate::store::MAX_FORKS_PER_AUTHOR
    );
    // The same evidence again is not relayed again.
    let o = h.audit().ledger_gossip("12D3KooWsender", &msg(0)).unwrap();
    assert_eq!(o.verdict, Verdict::Ignore);
    // And by catch-up: not counted, not kept.
    let fork = ledger::open_entry(&{
        let GossipMsg::Entry { entry, .. } = GossipMsg::from_bytes(&msg(1)).unwrap() else {
            panic!()
        };
        entry.into_vec()
    })
    .unwrap();
    let rep = h
        .audit()
        .ledger_accept("peer", std::slice::from_ref(&fork.bytes), None)
        .unwrap();
    assert_eq!(rep.forks, 0, "{rep:?}");
    // One alert for the author this hour.
    let alerts = h
        .audit()
        .notifications(false)
        .unwrap()
        .into_iter()
        .filter(|a| a.kind == "alert-equivocation")
        .count();
    assert_eq!(alerts, 1);
    // log verify still reports it.
    assert!(!h.audit().log_verify().unwrap().ok);
}

#[test]
fn each_limit_answers_with_its_code_and_the_sentence_peers_have_always_read() {
    let cases: Vec<(Limited, &str, bool, u64, &str)> = vec![
        (
            Limited::RateLimited {
                per_minute: 30,
                retry_after_secs: 2,
            },
            "rate-limited",
            false,
            2,
            "more than 30 transfer requests a minute from this peer; try again in 2 s",
        ),
        (
            Limited::ApprovalsFull { pending: 50, max: 50 },
            "approvals-full",
            false,
            600,
            "50 requests from this peer wait for a person at the holder (at most 50); try again when they are decided",
        ),
        (
            Limited::NoShares,
            "shares-refused",
            true,
            0,
            "this site takes no unsolicited shares: ask it to request the study",
        ),
        (
            Limited::SharesUnlisted,
            "shares-refused",
            true,
            0,
            "this site takes unsolicited shares only from the peers it lists; ask it to request the study",
        ),
        (
            Limited::ShareCount { pending: 4, max: 4 },
            "share-quota",
            false,
            0,
            "4 unsolicited shares from you are not landed yet (at most 4); try again later",
        ),
        (
            Limited::ShareBytes { bytes: 11, max: 10 },
            "share-quota",
            false,
            0,
            "unsolicited shares from you not landed yet would hold 11 bytes here (at most 10); try again later",
        ),
    ];
    for (limited, code, permanent, retry, text) in cases {
        assert_eq!(
            (
                limited.code(),
                limited.permanent(),
                limited.retry_after_secs(),
                limited.to_string().as_str()
            ),
            (code, permanent, retry, text)
        );
        let refuse = Refuse::from(limited.clone());
        assert_eq!(
            (refuse.v, refuse.code.as_str(), refuse.text.as_str(), refuse.permanent),
            (WIRE_VERSION, code, text, permanent)
        );
        assert_eq!(
            AnswerBody::from(limited),
            AnswerBody::RetryLater {
                code: code.into(),
                text: text.into(),
                retry_after_secs: retry,
            }
        );
    }
}
