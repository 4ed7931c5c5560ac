//! Tests of `metrics`: the rendering, the label guard, the Prometheus text
//! conversion, and the listener's routes over TCP.
use super::*;

fn sample() -> Sample {
    Sample {
        transfers: Some(vec![
            ("incoming", "complete", 2),
            ("outgoing", "denied", 1),
            ("outgoing", "pending", 0),
        ]),
        approvals_pending: Some(0),
        ledger: Some(LedgerSample {
            own: 7,
            peers: 3,
            feeds: 2,
        }),
        peers: Some(PeersSample {
            trusted: 1,
            connections: 2,
        }),
        forward_queue: Some(vec![("queued", 1), ("sent", 4)]),
        outbox: Some(vec![("webhook", 5)]),
    }
}

/// The value of the sample line `series` (name with its labels) in `text`.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn counters_and_the_sample_are_rendered_with_their_values() {
    let c = Counters::default();
    c.sent(1000);
    c.received(600, false);
    c.received(400, true);
    c.refused("no-consent");
    c.refused("no-consent");
    c.refused("rate-limited");
    let om = render_openmetrics(&c, sample()).unwrap();
    assert!(om.ends_with("# EOF\n"), "{om}");
    for (series, want) in [
        ("medmesh_transfer_sent_bytes_total", 1000.0),
        ("medmesh_transfer_received_bytes_total", 1000.0),
        ("medmesh_transfer_received_chunks_total", 2.0),
        ("medmesh_transfer_received_objects_total", 1.0),
        ("medmesh_refusals_total{reason=\"no-consent\"}", 2.0),
        ("medmesh_refusals_total{reason=\"rate-limited\"}", 1.0),
        ("medmesh_transfers{direction=\"incoming\",state=\"complete\"}", 2.0),
        ("medmesh_transfers{direction=\"outgoing\",state=\"denied\"}", 1.0),
        ("medmesh_transfers{direction=\"outgoing\",state=\"pending\"}", 0.0),
        ("medmesh_approvals_pending", 0.0),
        ("medmesh_ledger_entries{feed=\"own\"}", 7.0),
        ("medmesh_ledger_entries{feed=\"peers\"}", 3.0),
        ("medmesh_ledger_feeds", 2.0),
        ("medmesh_peers_connected", 1.0),
        ("medmesh_connections", 2.0),
        ("medmesh_gateway_forward_queue{state=\"queued\"}", 1.0),
        ("medmesh_gateway_forward_queue{state=\"sent\"}", 4.0),
        ("medmesh_notifications_pending{sink=\"webhook\"}", 5.0),
        ("medmesh_build_info{version=\"0.1.0\"}", 1.0),
    ] {
        assert_eq!(value(&om, series), Some(want), "{series} in\n{om}");
    }
    assert!(value(&om, "medmesh_uptime_seconds").is_some_and(|v| v >= 0.0));
    assert!(value(&om, "medmesh_start_time_seconds").is_some_and(|v| v > 1.7e9));
    assert!(om.contains("# TYPE medmesh_refusals counter\n"), "{om}");
    assert!(om.contains("# UNIT medmesh_transfer_sent_bytes bytes\n"), "{om}");
}

#[test]
fn a_part_not_read_is_left_out_and_the_rest_is_rendered() {
    let om = render_openmetrics(&Counters::default(), Sample::default()).unwrap();
    for absent in [
        "medmesh_transfers",
        "medmesh_ledger_entries",
        "medmesh_peers_connected",
        "medmesh_gateway_forward_queue",
    ] {
        assert!(!om.contains(&format!("# TYPE {absent} ")), "{absent} in\n{om}");
    }
    assert_eq!(value(&om, "medmesh_transfer_sent_bytes_total"), Some(0.0));
    assert!(om.contains("# TYPE medmesh_uptime_seconds gauge"));
}

#[test]
fn refusal_labels_are_our_codes_and_bounded() {
    let c = Counters::default();
    for (given, label) in [
        ("no-consent", "no-consent"),
        ("denied-by-role-rule", "denied-by-role-rule"),
        ("shares-refused", "shares-refused"),
        ("", "other"),
        ("No-Consent", "other"),
        ("no consent", "other"),
        ("1.2.840.113619.2.55", "other"),
        ("-x", "other"),
        ("peer\"}injected{x=\"", "other"),
        ("Müller", "other"),
        (&"a".repeat(49), "other"),
    ] {
        assert_eq!(c.reason_label(given), label, "{given:?}");
    }
    // At most MAX_REASONS distinct labels: later codes are `other`, known ones stay.
    let c = Counters::default();
    for i in 0..MAX_REASONS + 10 {
        c.refused(&format!("code-{i}"));
    }
    c.refused("code-0");
    assert_eq!(c.refusals("code-0"), 2);
    assert_eq!(c.refusals(&format!("code-{}", MAX_REASONS - 1)), 1);
    assert_eq!(c.refusals(&format!("code-{MAX_REASONS}")), 0);
    assert_eq!(c.refusals("other"), 10);
    let om = render_openmetrics(&c, Sample::default()).unwrap();
    assert_eq!(om.matches("medmesh_refusals_total{").count(), MAX_REASONS + 1);
}

#[test]
fn openmetrics_becomes_the_prometheus_text_format() {
    for (om, want) in [
        (
            "# HELP x_bytes Bytes.\n# TYPE x_bytes counter\n# UNIT x_bytes bytes\nx_bytes_total 5\n# EOF\n",
            "# HELP x_bytes_total Bytes.\n# TYPE x_bytes_total counter\nx_bytes_total 5\n",
        ),
        (
            "# HELP g A gauge.\n# TYPE g gauge\ng{a=\"b\"} 1\n# EOF\n",
            "# HELP g A gauge.\n# TYPE g gauge\ng{a=\"b\"} 1\n",
        ),
        (
            "# HELP r Refusals.\n# TYPE r counter\nr_total{reason=\"x\"} 2\n# HELP rr Not a counter.\n# TYPE rr gauge\nrr 0\n# EOF\n",
            "# HELP r_total Refusals.\n# TYPE r_total counter\nr_total{reason=\"x\"} 2\n# HELP rr Not a counter.\n# TYPE rr gauge\nrr 0\n",
        ),
        ("# EOF\n", ""),
    ] {
        assert_eq!(to_prometheus_text(om), want, "{om}");
    }
}

#[test]
fn accept_headers_choose_the_format() {
    for (accept, om) in [
        (None, false),
        (Some("*/*"), false),
        (Some("text/plain;version=0.0.4"), false),
        (
            Some(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            ),
            true,
        ),
    ] {
        assert_eq!(wants_openmetrics(accept), om, "{accept:?}");
    }
}

/// `promtool check metrics` on `text`, when promtool is installed; under
/// `CI=true` a missing promtool fails.
pub(crate) fn promtool_check(text: &str) {
    use std::io::Write;
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
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_accepts_the_prometheus_text() {
    let c = Counters::default();
    c.sent(5);
    c.received(5, true);
    c.refused("no-consent");
    let text = to_prometheus_text(&render_openmetrics(&c, sample()).unwrap());
    promtool_check(&text);
}

/// A source whose readiness is set by the test.
#[derive(Debug, Default)]
struct Fake {
    counters: Counters,
    not_listening: std::sync::atomic::AtomicBool,
}

impl Source for Fake {
    fn counters(&self) -> &Counters {
        &self.counters
    }
    fn sample(&self) -> BoxFuture<'_, Sample> {
        Box::pin(async { sample() })
    }
    fn ready(&self) -> BoxFuture<'_, Result<(), NotReady>> {
        Box::pin(async {
            if self.not_listening.load(std::sync::atomic::Ordering::Relaxed) {
                Err(NotReady::NotListening)
            } else {
                Ok(())
            }
        })
    }
}

/// One HTTP/1.1 request over TCP: status, head and body.
pub(crate) async fn get(addr: SocketAddr, method: &str, path: &str, accept: Option<&str>) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    s.write_all(format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{accept}Connection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8(buf).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_string(), body.to_string())
}

#[tokio::test]
async fn the_listener_serves_metrics_health_and_readiness_and_nothing_else() {
    let (listener, addr) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    assert_ne!(addr.port(), 0);
    let fake = Arc::new(Fake::default());
    fake.counters.refused("no-consent");
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(serve(listener, Arc::clone(&fake) as Arc<dyn Source>, stop_rx));

    let (status, head, body) = get(addr, "GET", "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert_eq!(
        value(&body, "medmesh_refusals_total{reason=\"no-consent\"}"),
        Some(1.0),
        "{body}"
    );
    assert!(!body.contains("# EOF"));
    let (status, head, body) = get(
        addr,
        "GET",
        "/metrics",
        Some("application/openmetrics-text; version=1.0.0"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(head.contains("application/openmetrics-text"), "{head}");
    assert!(body.ends_with("# EOF\n"));

    assert_eq!(get(addr, "GET", "/healthz", None).await.0, 200);
    let (status, _, body) = get(addr, "GET", "/readyz", None).await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    fake.not_listening.store(true, std::sync::atomic::Ordering::Relaxed);
    let (status, _, body) = get(addr, "GET", "/readyz", None).await;
    assert_eq!(
        (status, body.as_str()),
        (503, "not ready: the network is not listening\n")
    );
    assert_eq!(get(addr, "GET", "/healthz", None).await.0, 200, "alive while not ready");

    for path in ["/", "/metrics/", "/v1/status", "/metricsx", "/../metrics"] {
        assert_eq!(get(addr, "GET", path, None).await.0, 404, "{path}");
    }
    let (status, head, _) = get(addr, "POST", "/metrics", None).await;
    assert_eq!(status, 405);
    assert!(head.to_ascii_lowercase().contains("allow: get, head"), "{head}");

    stop_tx.send(true).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}
