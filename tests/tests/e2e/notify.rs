//! Notification delivery between real `medmesh run` processes: the holder's
//! config names a webhook and a syslog collector (both listeners of this
//! test on 127.0.0.1); after a transfer, the recipient's `transfer-received`
//! entry reaches the holder and is delivered to both, without the study's
//! identifiers.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use medmesh_testnet::cluster::Cluster;
use medmesh_testnet::{StudySpec, generate};

use crate::util::*;

type Posts = Arc<Mutex<Vec<(String, serde_json::Value)>>>;

/// A minimal HTTP/1.1 server: keeps (headers, JSON body) of each POST and
/// answers 200; stops when `stop` is set.
fn webhook_server(listener: TcpListener, posts: Posts, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let Ok((mut stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            };
            stream.set_nonblocking(false).expect("blocking");
            stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let (head, body) = loop {
                let Ok(n) = stream.read(&mut chunk) else {
                    break (String::new(), Vec::new());
                };
                if n == 0 {
                    break (String::new(), Vec::new());
                }
                buf.extend_from_slice(&chunk[..n]);
                let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    break (head, buf[end + 4..end + 4 + len].to_vec());
                }
            };
            if let Ok(doc) = serde_json::from_slice(&body) {
                posts.lock().expect("lock").push((head, doc));
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    })
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8")
}

#[test]
fn a_transfer_notification_reaches_the_webhook_and_the_syslog_collector() {
    let dir = tempfile::tempdir().expect("tempdir");
    let http = TcpListener::bind("127.0.0.1:0").expect("bind");
    let http_port = http.local_addr().expect("addr").port();
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
    udp.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    let udp_addr = udp.local_addr().expect("addr");
    let posts: Posts = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let server = webhook_server(http, Arc::clone(&posts), Arc::clone(&stop));

    let mut net = Cluster::create(dir.path(), 2).expect("create");
    let cfg = net.nodes[0].home.join("config.toml");
    let text = std::fs::read_to_string(&cfg).expect("config");
    let edited = text
        .replacen(
            "url = \"\"",
            &format!("url = \"http://127.0.0.1:{http_port}/medmesh\""),
            1,
        )
        .replacen("token = \"\"", "token = \"e2e-secret-token\"", 1)
        .replacen("address = \"\"", &format!("address = \"{udp_addr}\""), 1)
        .replacen("transport = \"tls\"", "transport = \"udp\"", 1);
    assert_ne!(text, edited, "the config has the [notify] template");
    std::fs::write(&cfg, edited).expect("config");
    net.start().expect("start");
    net.wait_mesh(Duration::from_secs(60)).expect("mesh");
    let holder = net.nodes[0].home.clone();
    let recipient = net.nodes[1].home.clone();
    let recipient_peer = net.nodes[1].peer_id.clone();
    let holder_peer = net.nodes[0].peer_id.clone();

    // A study at the holder, consent for the recipient, a transfer.
    let study_dir = dir.path().join("study");
    let g = generate(
        &StudySpec {
            seed: 77,
            slices: 2,
            rows: 32,
            cols: 32,
            ..StudySpec::default()
        },
        &study_dir,
    )
    .expect("generate");
    expect_code(
        &run(&holder, &["study", "import", s(&study_dir)]).expect("run"),
        0,
        "import",
    );
    let consent = [
        "consent",
        "add",
        "--patient-id",
        &g.phi.patient_id,
        "--issuer",
        &g.phi.issuer_of_patient_id,
        "--purpose",
        "treatment",
        "--recipient-peer",
        &recipient_peer,
        "--level",
        "identifiable",
    ];
    expect_code(&run(&holder, &consent).expect("run"), 0, "consent add");
    let out = run(
        &recipient,
        &[
            "request",
            "--peer",
            &holder_peer,
            "--study",
            &g.study_uid,
            "--purpose",
            "treatment",
            "--json",
            "--wait",
            "--timeout",
            "120",
        ],
    )
    .expect("run");
    expect_code(&out, 0, "request --wait");

    // The recipient's transfer-received entry reaches the holder (catch-up
    // every 2 s), becomes a notification, and is delivered to both sinks.
    let start = Instant::now();
    let mut syslog = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        if let Ok(n) = udp.recv(&mut buf) {
            syslog.push(String::from_utf8_lossy(&buf[..n]).to_string());
        }
        let posted = posts
            .lock()
            .expect("lock")
            .iter()
            .any(|(_, d)| d["kind"] == "transfer-received");
        let logged = syslog.iter().any(|m| m.contains("csd-code=\"transfer-received\""));
        if posted && logged {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not delivered: webhook {:?}, syslog {syslog:?}",
            posts.lock().expect("lock")
        );
    }
    let posts = posts.lock().expect("lock").clone();
    let (head, doc) = posts
        .iter()
        .find(|(_, d)| d["kind"] == "transfer-received")
        .expect("posted");
    assert_eq!(doc["v"], 1);
    assert_eq!(doc["author"], recipient_peer.as_str());
    assert_eq!(doc["node"], holder_peer.as_str());
    let entry = doc["entry"].as_str().expect("entry");
    assert!(
        head.to_ascii_lowercase().contains(&format!("idempotency-key: {entry}")),
        "{head}"
    );
    assert!(head.contains("Bearer e2e-secret-token"), "{head}");
    let msg = syslog
        .iter()
        .find(|m| m.contains("csd-code=\"transfer-received\""))
        .expect("logged");
    assert!(msg.starts_with("<85>1 "), "authpriv.notice, RFC 5424: {msg}");
    assert!(msg.contains(" medmesh ") && msg.contains(" IHE+RFC-3881 - "), "{msg}");
    assert!(
        msg.contains("csd-code=\"110104\""),
        "DICOM Instances Transferred: {msg}"
    );
    assert!(
        msg.contains(doc["study"].as_str().expect("study")),
        "named by its commitment"
    );
    // No identifier leaves the node by default.
    let everything = format!("{posts:?}{syslog:?}");
    for needle in [&g.study_uid, &g.phi.patient_id, &g.phi.patient_name] {
        assert!(!everything.contains(needle.as_str()), "{needle} was delivered");
    }
    assert!(
        !std::fs::read_to_string(holder.join("node.log"))
            .unwrap_or_default()
            .contains("e2e-secret-token")
    );

    // Delivery status through the running node's API.
    let out = run(&holder, &["notifications", "--status", "--json"]).expect("run");
    expect_code(&out, 0, "notifications --status");
    let status = json_lines(&out.stdout);
    for (_, st) in &status {
        assert_eq!(st["configured"], true, "{st}");
        assert!(st["delivered"].as_u64().unwrap_or(0) >= 1, "{st}");
    }
    assert_eq!(status.len(), 2);
    net.stop();
    stop.store(true, Ordering::SeqCst);
    server.join().expect("server thread");
}
