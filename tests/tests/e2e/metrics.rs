//! `[metrics] listen` on real `medmesh run` processes: the holder's and the
//! recipient's `/metrics`, scraped over TCP, move with a denial and a
//! transfer; `promtool check metrics` accepts them; `/healthz` and `/readyz`
//! answer, anything else is 404.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use crate::transfer::{consent, import_study, network_with, request, wait_state};
use crate::util::*;

/// Turns `[metrics] listen` on, on an ephemeral port of 127.0.0.1.
fn with_metrics(config: &str) -> String {
    let out = config.replace("# listen = \"127.0.0.1:9464\"", "listen = \"127.0.0.1:0\"");
    assert_ne!(out, config, "the template's [metrics] example");
    out
}

/// The address `medmesh status --json` reports for `/metrics`.
fn metrics_addr(home: &Path) -> SocketAddr {
    let out = run(home, &["status", "--json"]).expect("run");
    expect_code(&out, 0, "status");
    let status = json_lines(&out.stdout).remove(0).1;
    let addr: SocketAddr = status["metrics"]
        .as_str()
        .unwrap_or_else(|| panic!("no metrics address in {status}"))
        .parse()
        .expect("address");
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    addr
}

/// One plain HTTP/1.1 GET: (status, body).
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("status");
    (status, body.to_string())
}

fn scrape(addr: SocketAddr) -> String {
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// The value of the sample `series` (name and labels as printed), if present.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn must(text: &str, series: &str) -> f64 {
    value(text, series).unwrap_or_else(|| panic!("{series} missing in\n{text}"))
}

/// `promtool check metrics` on `text`; a missing promtool fails under CI=true.
fn promtool_check(text: &str) {
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "promtool (Debian package prometheus) is missing: scripts/system-deps.sh installs it"
            );
            eprintln!("promtool not installed: `promtool check metrics` skipped");
            return;
        }
        Err(e) => panic!("promtool: {e}"),
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_move_with_a_denial_and_a_transfer_and_promtool_accepts_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut net = network_with(dir.path(), with_metrics, |net| {
        let cfg = net.nodes[1].home.join("config.toml");
        let text = std::fs::read_to_string(&cfg).expect("config");
        std::fs::write(&cfg, with_metrics(&text)).expect("config");
    });
    let (holder, recipient) = (net.nodes[0].home.clone(), net.nodes[1].home.clone());
    let (holder_peer, recipient_peer) = (net.nodes[0].peer_id.clone(), net.nodes[1].peer_id.clone());
    let (at_holder, at_recipient) = (metrics_addr(&holder), metrics_addr(&recipient));
    assert_ne!(at_holder, at_recipient);

    // Health and readiness of a node that runs; nothing else is served.
    assert_eq!(get(at_holder, "/healthz"), (200, "ok\n".to_string()));
    assert_eq!(get(at_holder, "/readyz"), (200, "ready\n".to_string()));
    for path in ["/", "/v1/status", "/metrics/x"] {
        assert_eq!(get(at_holder, path).0, 404, "{path}");
    }

    let study = import_study(&holder, dir.path(), 21, 6, 128);
    let before = scrape(at_holder);
    assert_eq!(must(&before, "medmesh_peers_connected"), 1.0);
    assert_eq!(value(&before, "medmesh_refusals_total{reason=\"no-consent\"}"), None);
    assert_eq!(must(&before, "medmesh_transfer_sent_bytes_total"), 0.0);
    let own_before = must(&before, "medmesh_ledger_entries{feed=\"own\"}");

    // No consent: denied; the holder counts why (the requester only sees not-available).
    let (code, denied) = request(&recipient, &holder_peer, &study.uid, true);
    assert_eq!((code, denied["state"].as_str()), (1, Some("denied")), "{denied}");
    let after_denial = scrape(at_holder);
    assert_eq!(
        must(&after_denial, "medmesh_refusals_total{reason=\"no-consent\"}"),
        1.0
    );
    assert_eq!(
        must(
            &after_denial,
            "medmesh_transfers{direction=\"outgoing\",state=\"denied\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&after_denial, "medmesh_refusals_total{reason=\"not-available\"}"),
        None
    );

    // Consent: granted, streamed, landed, receipted.
    consent(&holder, &study, &recipient_peer, &[]);
    let (code, done) = request(&recipient, &holder_peer, &study.uid, true);
    assert_eq!(code, 0, "{done}");
    let id = done["id"].as_str().expect("id").to_string();
    wait_state(&holder, &id, &["complete"], Duration::from_secs(60));
    wait_state(&recipient, &id, &["complete"], Duration::from_secs(60));
    let held = scrape(at_holder);
    let got = scrape(at_recipient);
    let objects = study.hashes.len() as f64 + 1.0; // and the study index
    assert!(
        must(&held, "medmesh_transfer_sent_bytes_total") >= study.bytes as f64,
        "{held}"
    );
    assert!(
        must(&got, "medmesh_transfer_received_bytes_total") >= study.bytes as f64,
        "{got}"
    );
    assert_eq!(must(&got, "medmesh_transfer_received_objects_total"), objects);
    assert!(must(&got, "medmesh_transfer_received_chunks_total") >= objects);
    assert_eq!(
        must(&held, "medmesh_transfers{direction=\"outgoing\",state=\"complete\"}"),
        1.0
    );
    assert_eq!(
        must(&got, "medmesh_transfers{direction=\"incoming\",state=\"complete\"}"),
        1.0
    );
    assert_eq!(
        must(&got, "medmesh_transfers{direction=\"incoming\",state=\"denied\"}"),
        1.0
    );
    assert_eq!(must(&held, "medmesh_approvals_pending"), 0.0);
    assert!(must(&held, "medmesh_ledger_entries{feed=\"own\"}") > own_before);
    assert!(must(&got, "medmesh_ledger_entries{feed=\"peers\"}") >= 1.0);
    assert_eq!(must(&got, "medmesh_peers_connected"), 1.0);
    assert!(must(&held, "medmesh_uptime_seconds") > 0.0);
    // No identifier of the study or the patient, no peer id, in either answer.
    for text in [&held, &got] {
        for needle in [
            study.uid.as_str(),
            study.patient.as_str(),
            holder_peer.as_str(),
            recipient_peer.as_str(),
        ] {
            assert!(!text.contains(needle), "{needle} in\n{text}");
        }
    }
    promtool_check(&held);
    promtool_check(&got);

    // A stopped node serves nothing any more.
    net.stop();
    assert!(TcpStream::connect_timeout(&at_holder, Duration::from_secs(2)).is_err());
}
