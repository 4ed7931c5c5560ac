//! Tests of notification delivery: the DICOM audit messages against the
//! published schema (PS3.15 A.5.1, kept in `node/tests/data/atna/`), the
//! outbox invariant, and real deliveries to a webhook and syslog listeners
//! on 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use proptest::prelude::*;
use relax_ng::{Content, DatatypeRegistry, Element, ExpandedName, ResolveError, Schema, SchemaResolver, SchemaSource};

use super::*;
use crate::config::{Secret, SyslogConfig, SyslogTransport, WebhookConfig};
use crate::keystore::{MasterKey, Passphrase};

const SCHEMA: &str = include_str!("../../tests/data/atna/audit-message.rnc");
const STUDY_UID: &str = "1.2.826.0.1.3680043.8.498.4242";

struct NoIncludes;
impl SchemaResolver for NoIncludes {
    fn resolve(&self, href: &str, _base: &str) -> Result<SchemaSource, ResolveError> {
        Err(ResolveError::new(format!("no include expected: {href}")))
    }
}

#[derive(Clone)]
struct Node<'a, 'i>(roxmltree::Node<'a, 'i>);

impl Element for Node<'_, '_> {
    type Location = String;
    fn name(&self) -> ExpandedName {
        ExpandedName::new(
            self.0.tag_name().namespace().map(str::to_string),
            self.0.tag_name().name(),
        )
    }
    fn attributes(&self) -> impl Iterator<Item = (ExpandedName, String)> {
        self.0.attributes().map(|a| {
            (
                ExpandedName::new(a.namespace().map(str::to_string), a.name()),
                a.value().to_string(),
            )
        })
    }
    fn children(&self) -> impl Iterator<Item = Content<Self>> {
        self.0.children().filter_map(|c| {
            if c.is_element() {
                Some(Content::Element(Node(c)))
            } else if c.is_text() {
                Some(Content::Text(c.text().unwrap_or_default().to_string()))
            } else {
                None
            }
        })
    }
}

fn schema() -> &'static Schema {
    static S: OnceLock<Schema> = OnceLock::new();
    S.get_or_init(|| {
        let src = SchemaSource::new(SCHEMA, "file:/audit-message.rnc", relax_ng::SchemaSyntax::Compact);
        Schema::compile(&src, &NoIncludes).unwrap()
    })
}

/// Validates an audit message (XML bytes) against the DICOM schema.
fn validate(xml: &[u8]) -> Result<(), Vec<String>> {
    let text = std::str::from_utf8(xml).unwrap();
    let doc = roxmltree::Document::parse(text).map_err(|e| vec![e.to_string()])?;
    let errors = schema()
        .validate(&DatatypeRegistry::default(), &Node(doc.root_element()))
        .map_err(|e| vec![e.to_string()])?;
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.iter().map(ToString::to_string).collect())
    }
}

fn origin() -> Origin {
    Origin {
        peer_id: "12D3KooWHolderHolderHolder".into(),
        institution: "St. Elsewhere <Radiology> & \"Imaging\"".into(),
        hostname: "pacs-gw.example.org".into(),
    }
}

fn commitment() -> String {
    hex::encode([0xc0u8; 32])
}

/// Every kind a notification can have, with its event (as the holder of
/// the entry would have it).
fn every_kind() -> Vec<(String, Option<Event>, String)> {
    let t = "00112233445566778899aabbccddeeff".to_string();
    let peer = "12D3KooWHolderHolderHolder".to_string();
    let c = commitment();
    let events = vec![
        Event::TransferRequested {
            transfer: t.clone(),
            peer: peer.clone(),
            purpose: "treatment".into(),
            role: "radiologist".into(),
            direction: "sent".into(),
            study: Some(c.clone()),
        },
        Event::TransferGranted {
            transfer: t.clone(),
            peer: peer.clone(),
            purpose: "treatment".into(),
            level: "identifiable".into(),
            study: c.clone(),
            expires: 1_900_000_000,
        },
        Event::TransferDenied {
            transfer: t.clone(),
            peer: peer.clone(),
            purpose: "research".into(),
            codes: vec!["no-consent".into()],
        },
        Event::TransferPending {
            transfer: t.clone(),
            peer: peer.clone(),
            purpose: "research".into(),
        },
        Event::TransferApproved {
            transfer: t.clone(),
            peer: peer.clone(),
        },
        Event::TransferSent {
            transfer: t.clone(),
            peer: peer.clone(),
            study: c.clone(),
            objects: 12,
            bytes: 1234,
            level: "pseudonymised".into(),
        },
        Event::TransferReceived {
            transfer: t.clone(),
            peer: peer.clone(),
            study: c.clone(),
            objects: 12,
            level: "anonymised".into(),
        },
        Event::Accessed {
            action: "export".into(),
            study: Some(c.clone()),
            objects: 3,
            role: "site-admin".into(),
        },
        Event::Accessed {
            action: "deid-export".into(),
            study: Some(c.clone()),
            objects: 3,
            role: "site-admin".into(),
        },
        Event::Accessed {
            action: "relink".into(),
            study: None,
            objects: 1,
            role: "site-admin".into(),
        },
        Event::ConsentAdded { consent: "c-1".into() },
        Event::ConsentWithdrawn { consent: "c-1".into() },
        Event::TrustJoined {
            consortium: "eu-imaging".into(),
        },
        Event::PeerAdded { peer: peer.clone() },
        Event::PeerRevoked { peer: peer.clone() },
        Event::PeerBlocked { peer },
        Event::StudyLocked { study: c.clone() },
        Event::StudyPurged {
            study: c.clone(),
            reason: "erasure".into(),
        },
    ];
    let mut out: Vec<(String, Option<Event>, String)> = events
        .into_iter()
        .map(|e| {
            let study = e.study().unwrap_or_default().to_string();
            (e.kind().to_string(), Some(e), study)
        })
        .collect();
    for alert in [
        "alert-equivocation",
        "alert-split-view",
        "alert-refused-entry",
        "alert-future-kind",
    ] {
        out.push((alert.into(), None, String::new()));
    }
    // An alert that names a study, and a kind without its entry.
    out.push(("alert-equivocation".into(), None, c.clone()));
    out.push(("transfer-received".into(), None, c));
    out
}

fn notice(kind: &str, event: Option<Event>, study: &str, study_uid: Option<&str>) -> Notice {
    Notice {
        seq: 7,
        entry: [0xabu8; 32],
        row: NotificationRow {
            v: 1,
            author: "12D3KooWRecipient<&>".into(),
            seq: 3,
            kind: kind.into(),
            time: 1_700_000_000,
            study: study.into(),
            noted: 1_700_000_005,
            read: false,
        },
        event,
        study_uid: study_uid.map(str::to_string),
    }
}

#[test]
fn the_schema_rejects_what_it_must() {
    let good = audit_message(&notice("transfer-received", None, &commitment(), None), &origin()).unwrap();
    validate(&good).unwrap();
    let text = String::from_utf8(good).unwrap();
    for (from, to) in [
        ("EventOutcomeIndicator=\"0\"", "EventOutcomeIndicator=\"3\""),
        ("UserIsRequestor=\"true\"", "UserIsRequestor=\"yes\""),
        ("EventDateTime=\"2023-11-14T22:13:20Z\"", "EventDateTime=\"yesterday\""),
        (" originalText=\"DICOM Instances Transferred\"", ""),
        (
            "<AuditSourceTypeCode csd-code=\"4\"/>",
            "<AuditSourceTypeCode csd-code=\"4\"/><Bogus/>",
        ),
    ] {
        assert!(text.contains(from), "{from} not in {text}");
        let bad = text.replace(from, to);
        assert!(validate(bad.as_bytes()).is_err(), "accepted with {to:?}");
    }
}

#[test]
fn audit_messages_of_every_kind_validate_against_the_dicom_schema() {
    for (kind, event, study) in every_kind() {
        for uid in [None, Some(STUDY_UID)] {
            let n = notice(&kind, event.clone(), &study, uid);
            let xml = audit_message(&n, &origin()).unwrap();
            if let Err(errors) = validate(&xml) {
                panic!("{kind} (uid {uid:?}): {errors:?}\n{}", String::from_utf8_lossy(&xml));
            }
            let text = String::from_utf8(xml).unwrap();
            assert_eq!(text.contains(STUDY_UID), uid.is_some() && !study.is_empty(), "{kind}");
            let a = audit_event(&kind, event.as_ref());
            assert!(text.contains(&format!("csd-code=\"{}\"", a.code)), "{kind}");
            // Values are escaped, not pasted.
            assert!(
                text.contains("St. Elsewhere &lt;Radiology&gt; &amp; &quot;Imaging&quot;"),
                "{text}"
            );
        }
    }
}

#[test]
fn the_mapping_table() {
    let export = Event::Accessed {
        action: "export".into(),
        study: None,
        objects: 1,
        role: "site-admin".into(),
    };
    let relink = Event::Accessed {
        action: "relink".into(),
        study: None,
        objects: 1,
        role: "site-admin".into(),
    };
    for (kind, event, want) in [
        ("transfer-requested", None, ("110112", "E", "0")),
        ("transfer-denied", None, ("110112", "E", "4")),
        ("transfer-granted", None, ("110102", "E", "0")),
        ("transfer-sent", None, ("110104", "R", "0")),
        ("transfer-received", None, ("110104", "C", "0")),
        ("accessed", Some(&export), ("110106", "R", "0")),
        ("accessed", Some(&relink), ("110103", "R", "0")),
        ("study-locked", None, ("110105", "D", "0")),
        ("study-purged", None, ("110105", "D", "0")),
        ("study-forwarded", None, ("110104", "R", "0")),
        ("study-imported", None, ("110107", "C", "0")),
        ("alert-equivocation", None, ("110113", "E", "8")),
        ("alert-split-view", None, ("110113", "E", "8")),
        ("alert-refused-entry", None, ("110113", "E", "4")),
        ("something-new", None, ("110100", "E", "0")),
    ] {
        let a = audit_event(kind, event);
        assert_eq!((a.code, a.action, a.outcome), want, "{kind}");
    }
}

#[test]
fn webhook_documents_are_versioned_and_carry_no_uid_by_default() {
    let n = notice("transfer-received", every_kind()[6].1.clone(), &commitment(), None);
    let doc = webhook_json(&n, &origin());
    assert_eq!(doc["v"], 1);
    assert_eq!(doc["delivery"], 7);
    assert_eq!(doc["entry"], hex::encode([0xabu8; 32]));
    assert_eq!(doc["kind"], "transfer-received");
    assert_eq!(doc["time"], "2023-11-14T22:13:20+00:00");
    assert_eq!(doc["study"], commitment());
    assert_eq!(doc["event"]["objects"], 12);
    assert!(doc.get("study_uid").is_none());
    let with = webhook_json(
        &notice("transfer-received", None, &commitment(), Some(STUDY_UID)),
        &origin(),
    );
    assert_eq!(with["study_uid"], STUDY_UID);
    assert!(with.get("event").is_none());
}

#[test]
fn host_port_and_urls() {
    for (text, want) in [
        ("127.0.0.1:514", Some(("127.0.0.1", 514))),
        ("audit.example.org:6514", Some(("audit.example.org", 6514))),
        ("[::1]:6514", Some(("::1", 6514))),
        ("::1:6514", None),
        ("audit.example.org", None),
        ("audit.example.org:0", None),
        (":514", None),
        ("a b:514", None),
        ("host:99999", None),
    ] {
        let got = split_host_port(text).ok();
        assert_eq!(got, want.map(|(h, p)| (h.to_string(), p)), "{text}");
    }
    let t = WebhookTarget::parse("https://hooks.example.org/medmesh?key=secret").unwrap();
    assert_eq!((t.https, t.port, t.path.as_str()), (true, 443, "/medmesh?key=secret"));
    assert_eq!(t.shown(), "https://hooks.example.org/medmesh");
    for bad in ["ftp://x/", "http://user:pw@x/", "/relative", "http://"] {
        assert!(WebhookTarget::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn webhook_secrets_stay_out_of_debug_and_errors() {
    for (url, want) in [
        (
            "https://hooks.example.org/m?key=secret",
            "https://hooks.example.org/m?(redacted)",
        ),
        (
            "https://u:secret@hooks.example.org/m",
            "https://(redacted)@hooks.example.org/m",
        ),
        (
            "http://u:secret@h:8080?key=secret#x",
            "http://(redacted)@h:8080?(redacted)",
        ),
        ("https://h/m#secret", "https://h/m#(redacted)"),
        ("ftp://h/m?secret", "ftp://h/m?(redacted)"),
        ("not a url ?secret", "not a url ?(redacted)"),
        ("https://h/m", "https://h/m"),
        ("", ""),
    ] {
        assert_eq!(redact_url(url), want, "{url}");
    }
    let t = WebhookTarget::parse("https://hooks.example.org/medmesh?key=secret").unwrap();
    assert!(!format!("{t:?}").contains("secret"), "{t:?}");
    for bad in [
        "ftp://x/m?key=secret",
        "http://user:secret@x/",
        "/relative?key=secret",
        "http:///m?key=secret",
        "https://x y/?key=secret",
    ] {
        let err = WebhookTarget::parse(bad).unwrap_err().to_string();
        assert!(!err.contains("secret"), "{bad}: {err}");
    }
    let config = WebhookConfig {
        url: "https://hooks.example.org/medmesh?key=secret".into(),
        token: Secret::from("t0ken"),
        ..WebhookConfig::default()
    };
    let hook = Webhook::from_config(&config).unwrap().unwrap();
    let shown = format!("{hook:?} {:?} {}", config, hook.shown());
    assert!(!shown.contains("secret") && !shown.contains("t0ken"), "{shown}");
    // A token over plain http only to this machine.
    let plain = WebhookConfig {
        url: "http://hooks.example.org/medmesh?key=secret".into(),
        ..config.clone()
    };
    let err = sinks(&NotifyConfig {
        webhook: plain,
        ..NotifyConfig::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("notify.webhook.token") && err.contains("https://") && !err.contains("secret"),
        "{err}"
    );
    for url in ["http://127.0.0.1:9/h", "http://[::1]:9/h", "http://localhost:9/h"] {
        let local = WebhookConfig {
            url: url.into(),
            ..config.clone()
        };
        assert!(Webhook::from_config(&local).unwrap().is_some(), "{url}");
    }
}

#[test]
fn backoff_doubles_up_to_the_cap_with_jitter() {
    let b = Backoff::DEFAULT;
    for (failures, full) in [(1u32, 1u64), (2, 2), (3, 4), (9, 256), (10, 300), (1000, 300)] {
        for _ in 0..20 {
            let d = b.delay(failures);
            let full = Duration::from_secs(full);
            assert!(d >= full / 2 && d <= full, "{failures}: {d:?}");
        }
    }
}

// ---- the outbox and the worker ---------------------------------------------------------------

fn new_store(dir: &std::path::Path) -> Store {
    let pass = Passphrase::new("correct horse battery".into());
    let master = MasterKey::create(&dir.join("master.key"), &pass).unwrap();
    Store::create(&dir.join("index.redb"), &dir.join("blobs"), master, false).unwrap()
}

fn id(n: u64) -> [u8; 32] {
    *blake3::hash(&n.to_be_bytes()).as_bytes()
}

fn row(n: u64, kind: &str, study: &str) -> NotificationRow {
    NotificationRow {
        v: 1,
        author: "12D3KooWRecipient".into(),
        seq: n,
        kind: kind.into(),
        time: 1_700_000_000 + i64::try_from(n).unwrap(),
        study: study.into(),
        noted: 1_700_000_000,
        read: false,
    }
}

fn shared_store() -> &'static Store {
    static S: OnceLock<(tempfile::TempDir, Store)> = OnceLock::new();
    &S.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let s = new_store(dir.path());
        for n in 1..=20 {
            s.notification_put(&id(n), &row(n, "transfer-received", &commitment()))
                .unwrap();
        }
        (dir, s)
    })
    .1
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Whatever the sink answers, in whatever order, the cursor never
    /// skips and never goes back: the notifications reach the sink in
    /// outbox order, each accepted exactly once, until all are delivered.
    #[test]
    fn any_outcomes_deliver_everything_in_order(outcomes in proptest::collection::vec(any::<bool>(), 0..200), batch in 1usize..8) {
        static CASE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let store = shared_store();
        let sink = format!("prop-{}", CASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let head = store.outbox_head().unwrap();
        let mut accepted = Vec::new();
        let mut outcomes = outcomes.into_iter().chain(std::iter::repeat(true));
        loop {
            let cursor = store.sink_open(&sink).unwrap().delivered;
            let items = store.outbox_batch(cursor, batch).unwrap();
            prop_assert!(items.len() <= batch);
            if items.is_empty() {
                break;
            }
            for item in items {
                if outcomes.next().unwrap_or(true) {
                    accepted.push(item.seq);
                    store.sink_delivered(&sink, item.seq, 1).unwrap();
                } else {
                    store.sink_failed(&sink, "refused", 1, 2).unwrap();
                    break;
                }
            }
        }
        prop_assert_eq!(accepted, (1..=head).collect::<Vec<_>>());
        prop_assert_eq!(store.sink_state(&sink).unwrap().unwrap().failures, 0);
    }
}

fn fast() -> Backoff {
    Backoff {
        min: Duration::from_millis(20),
        max: Duration::from_millis(100),
    }
}

type Seen = Arc<Mutex<Vec<(BTreeMap<String, String>, serde_json::Value)>>>;

/// A webhook server on `listener` that answers 503 to the first `fail`
/// requests, then 200, keeping what it accepted.
async fn webhook_server(listener: tokio::net::TcpListener, fail: usize, seen: Seen) {
    use http_body_util::BodyExt as _;
    let failures = Arc::new(std::sync::atomic::AtomicUsize::new(fail));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let seen = Arc::clone(&seen);
        let failures = Arc::clone(&failures);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let seen = Arc::clone(&seen);
                let failures = Arc::clone(&failures);
                async move {
                    let headers: BTreeMap<String, String> = req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
                        .collect();
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let left = failures.load(std::sync::atomic::Ordering::SeqCst);
                    let status = if left > 0 {
                        failures.store(left - 1, std::sync::atomic::Ordering::SeqCst);
                        503
                    } else {
                        seen.lock()
                            .unwrap()
                            .push((headers, serde_json::from_slice(&body).unwrap()));
                        200
                    };
                    let resp = hyper::Response::builder()
                        .status(status)
                        .body(http_body_util::Full::new(bytes::Bytes::new()))
                        .unwrap();
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_gets_every_notification_in_order_despite_failures() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(new_store(dir.path()));
    for n in 1..=3 {
        store
            .notification_put(&id(n), &row(n, "transfer-received", &commitment()))
            .unwrap();
    }
    // A port nobody listens on yet: the first attempts are refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = WebhookConfig {
        url: format!("http://127.0.0.1:{port}/hook?k=v"),
        token: Secret::from("s3cret-token"),
        ..WebhookConfig::default()
    };
    let hook = Webhook::from_config(&config).unwrap().unwrap();
    assert!(!format!("{hook:?}").contains("s3cret"), "the token is not in Debug");
    let sink = Sink::Webhook { hook, study_uid: false };
    let (stop_tx, stop_rx) = watch::channel(false);
    let worker = tokio::spawn(run_sink(Arc::clone(&store), origin(), sink, fast(), stop_rx));
    // Refused for a while: the cursor stays, the failure is recorded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let st = store.sink_state(WEBHOOK).unwrap().unwrap_or_default();
        if st.failures >= 2 {
            assert_eq!(st.delivered, 0);
            assert!(st.last_error.unwrap().contains("connect"));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no failed attempt recorded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen: Seen = Arc::default();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let server = tokio::spawn(webhook_server(listener, 2, Arc::clone(&seen)));
    // Two more while delivering: added to the outbox, the worker is woken.
    for n in 4..=5 {
        store
            .notification_put(&id(n), &row(n, "accessed", &commitment()))
            .unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.lock().unwrap().len() < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all delivered: {:?}",
            seen.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 5, "each once (no failure between delivery and cursor)");
    for (i, (headers, doc)) in seen.iter().enumerate() {
        let n = u64::try_from(i).unwrap() + 1;
        assert_eq!(doc["delivery"], n);
        assert_eq!(doc["entry"], hex::encode(id(n)));
        assert_eq!(headers["idempotency-key"], hex::encode(id(n)));
        assert_eq!(headers["authorization"], "Bearer s3cret-token");
        assert_eq!(headers["content-type"], "application/json");
    }
    let st = store.sink_state(WEBHOOK).unwrap().unwrap();
    assert_eq!((st.delivered, st.failures), (5, 0));
    let status = status(
        &store,
        &NotifyConfig {
            webhook: config,
            ..NotifyConfig::default()
        },
    )
    .unwrap();
    assert_eq!((status[0].delivered, status[0].pending), (5, 0));
    assert_eq!(status[0].target, format!("http://127.0.0.1:{port}/hook"));
    assert!(!status[1].configured);
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), worker)
        .await
        .unwrap()
        .unwrap();
    server.abort();
}

/// Stores one notification of every kind that names the study (resolvable
/// here) or none (alerts); returns how many.
fn fill_every_kind(store: &Store) -> u64 {
    let c = hex::encode(store.study_commitment(&store.study_ref(STUDY_UID), STUDY_UID).unwrap());
    let mut n = 0;
    for (kind, _, study) in every_kind() {
        n += 1;
        let study = if study.is_empty() { String::new() } else { c.clone() };
        store.notification_put(&id(n), &row(n, &kind, &study)).unwrap();
    }
    n
}

/// Splits an RFC 5424 message into its header fields and the XML.
fn parse_5424(msg: &[u8]) -> (Vec<String>, String) {
    let text = std::str::from_utf8(msg).unwrap();
    let (header, xml) = text
        .split_once(" - \u{feff}")
        .expect("structured data NILVALUE then BOM");
    (header.split(' ').map(str::to_string).collect(), xml.to_string())
}

fn check_syslog_messages(msgs: &[Vec<u8>], count: u64, uid_expected: bool) {
    assert_eq!(u64::try_from(msgs.len()).unwrap(), count);
    let kinds: Vec<String> = every_kind().into_iter().map(|(k, _, _)| k).collect();
    for (msg, kind) in msgs.iter().zip(&kinds) {
        let (h, xml) = parse_5424(msg);
        let pri: u16 = h[0].trim_start_matches('<').split('>').next().unwrap().parse().unwrap();
        assert_eq!(pri / 8, 10, "authpriv");
        assert_eq!(pri % 8, if kind.starts_with("alert-") { 4 } else { 5 }, "{kind}");
        assert!(h[0].ends_with(">1"), "version 1: {}", h[0]);
        assert!(chrono::DateTime::parse_from_rfc3339(&h[1]).is_ok(), "{}", h[1]);
        assert_eq!((h[3].as_str(), h[5].as_str()), (APP_NAME, MSG_ID));
        validate(xml.as_bytes()).unwrap_or_else(|e| panic!("{kind}: {e:?}\n{xml}"));
        assert!(xml.contains(&format!("csd-code=\"{kind}\"")), "{kind}: in order");
        assert_eq!(
            xml.contains(STUDY_UID),
            uid_expected && xml.contains("110180"),
            "{kind}"
        );
        if !uid_expected {
            assert!(!xml.contains(STUDY_UID), "{kind}: no Study Instance UID by default");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_over_udp_carries_valid_audit_messages_for_every_kind() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(new_store(dir.path()));
    let count = fill_every_kind(&store);
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let config = SyslogConfig {
        address: sock.local_addr().unwrap().to_string(),
        transport: SyslogTransport::Udp,
        ..SyslogConfig::default()
    };
    let log = Syslog::from_config(&config).unwrap().unwrap();
    let sink = Sink::Syslog { log, study_uid: false };
    let (stop_tx, stop_rx) = watch::channel(false);
    let worker = tokio::spawn(run_sink(Arc::clone(&store), origin(), sink, fast(), stop_rx));
    let mut msgs = Vec::new();
    let mut buf = vec![0u8; 65536];
    while u64::try_from(msgs.len()).unwrap() < count {
        let len = tokio::time::timeout(Duration::from_secs(10), sock.recv(&mut buf))
            .await
            .expect("a datagram")
            .unwrap();
        msgs.push(buf[..len].to_vec());
    }
    check_syslog_messages(&msgs, count, false);
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), worker)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.sink_state(SYSLOG).unwrap().unwrap().delivered, count);
}

/// Reads RFC 6587 octet-counted frames from `stream` until `want` frames or EOF.
async fn read_frames(stream: &mut (impl tokio::io::AsyncRead + Unpin), want: usize, out: &mut Vec<Vec<u8>>) {
    use tokio::io::AsyncReadExt as _;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    while out.len() < want {
        while let Some(sp) = buf.iter().position(|b| *b == b' ') {
            let len: usize = std::str::from_utf8(&buf[..sp]).unwrap().parse().expect("octet count");
            if buf.len() < sp + 1 + len {
                break;
            }
            out.push(buf[sp + 1..sp + 1 + len].to_vec());
            buf.drain(..sp + 1 + len);
        }
        if out.len() >= want {
            break;
        }
        let n = stream.read(&mut chunk).await.unwrap();
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_over_tcp_frames_by_octet_counting_and_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(new_store(dir.path()));
    let count = fill_every_kind(&store);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = SyslogConfig {
        address: listener.local_addr().unwrap().to_string(),
        transport: SyslogTransport::Tcp,
        facility: "authpriv".into(),
        study_uid: true,
        ..SyslogConfig::default()
    };
    let log = Syslog::from_config(&config).unwrap().unwrap();
    let sink = Sink::Syslog { log, study_uid: true };
    let (stop_tx, stop_rx) = watch::channel(false);
    let worker = tokio::spawn(run_sink(Arc::clone(&store), origin(), sink, fast(), stop_rx));
    let want = usize::try_from(count).unwrap();
    let mut msgs = Vec::new();
    let (mut first, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), read_frames(&mut first, want, &mut msgs))
        .await
        .unwrap();
    check_syslog_messages(&msgs, count, true);
    // The collector goes away; the next notifications go over a new connection.
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    for n in count + 1..=count + 2 {
        store
            .notification_put(&id(n), &row(n, "transfer-received", ""))
            .unwrap();
    }
    let (mut second, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut more = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), read_frames(&mut second, 2, &mut more))
        .await
        .unwrap();
    assert_eq!(more.len(), 2);
    for (m, n) in more.iter().zip(count + 1..) {
        let (_, xml) = parse_5424(m);
        validate(xml.as_bytes()).unwrap();
        assert!(xml.contains(&hex::encode(id(n))), "entry {n} in order");
    }
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), worker)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.sink_state(SYSLOG).unwrap().unwrap().delivered, count + 2);
}

/// A TLS 1.3 server configuration for 127.0.0.1 whose certificate is
/// signed by a CA written to `dir/ca.pem` (returned).
fn tls_collector_config(dir: &std::path::Path) -> (String, Arc<rustls::ServerConfig>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "medmesh test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    // What made a kept connection look dead: data from the server after the handshake.
    assert!(
        config.send_tls13_tickets > 0,
        "the collector sends TLS 1.3 session tickets"
    );
    (ca_file.to_string_lossy().into_owned(), Arc::new(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_over_tls_keeps_one_connection_and_closes_it_cleanly() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(new_store(dir.path()));
    let count = fill_every_kind(&store);
    let (ca_file, server) = tls_collector_config(dir.path());
    let acceptor = tokio_rustls::TlsAcceptor::from(server);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = SyslogConfig {
        address: listener.local_addr().unwrap().to_string(),
        transport: SyslogTransport::Tls,
        ca_file,
        ..SyslogConfig::default()
    };
    let log = Syslog::from_config(&config).unwrap().unwrap();
    assert!(log.shown().starts_with("tls://127.0.0.1:"));
    let sink = Sink::Syslog { log, study_uid: false };
    let (stop_tx, stop_rx) = watch::channel(false);
    let worker = tokio::spawn(run_sink(Arc::clone(&store), origin(), sink, fast(), stop_rx));
    let accept = async || {
        let (tcp, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("a connection")
            .unwrap();
        acceptor.accept(tcp).await.unwrap()
    };
    // Every message over one connection, in order, each a valid audit message.
    let mut first = accept().await;
    let want = usize::try_from(count).unwrap();
    let mut msgs = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), read_frames(&mut first, want, &mut msgs))
        .await
        .expect("every message on the first connection");
    check_syslog_messages(&msgs, count, false);
    for n in count + 1..=count + 3 {
        store
            .notification_put(&id(n), &row(n, "transfer-received", ""))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut more = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), read_frames(&mut first, 3, &mut more))
        .await
        .expect("later messages on the same connection");
    for (m, n) in more.iter().zip(count + 1..) {
        let (_, xml) = parse_5424(m);
        validate(xml.as_bytes()).unwrap();
        assert!(xml.contains(&hex::encode(id(n))), "entry {n} in order");
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), listener.accept())
            .await
            .is_err(),
        "no second connection while the first one is open"
    );
    // The collector closes (close_notify); the node closes its side cleanly
    // (close_notify, not a reset) and sends the next message over a new connection.
    first.shutdown().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let next = count + 4;
    store
        .notification_put(&id(next), &row(next, "transfer-received", ""))
        .unwrap();
    let mut second = accept().await;
    let mut last = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), read_frames(&mut second, 1, &mut last))
        .await
        .unwrap();
    assert_eq!(last.len(), 1);
    assert!(parse_5424(&last[0]).1.contains(&hex::encode(id(next))));
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(5), first.read_to_end(&mut rest))
        .await
        .expect("the node closed the first connection");
    assert_eq!(end.unwrap(), 0, "closed with close_notify, nothing more sent");
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), worker)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(store.sink_state(SYSLOG).unwrap().unwrap().delivered, next);
}

#[test]
fn unconfigured_sinks_deliver_nothing() {
    assert!(sinks(&NotifyConfig::default()).unwrap().is_empty());
    let dir = tempfile::tempdir().unwrap();
    let store = new_store(dir.path());
    store
        .notification_put(&id(1), &row(1, "accessed", &commitment()))
        .unwrap();
    let st = status(&store, &NotifyConfig::default()).unwrap();
    assert!(st.iter().all(|s| !s.configured && s.delivered == 0 && s.pending == 1));
    assert_eq!(store.sink_state(WEBHOOK).unwrap(), None, "no cursor written");
}

/// Moved from config's tests (config imports no service): the rule that a
/// token goes over https:// only holds when the sink is built from a
/// configuration made in code too.
#[test]
fn a_sink_built_in_code_refuses_a_token_over_http() {
    let w = WebhookConfig {
        url: "http://hooks.example.org/m".into(),
        token: Secret::from("abc"),
        ..WebhookConfig::default()
    };
    let err = Webhook::from_config(&w).unwrap_err().to_string();
    assert!(err.contains("notify.webhook.token"), "{err}");
}
