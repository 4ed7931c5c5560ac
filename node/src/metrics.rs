//! Operators' metrics and health checks (`[metrics] listen`, docs/OPERATIONS.md
//! "Metrics and health checks"): a plain-HTTP listener of its own, apart
//! from the admin socket, serving
//!
//! - `GET /metrics`: the node's metrics in the Prometheus text format
//!   (`text/plain; version=0.0.4`), or in OpenMetrics 1.0 when the scraper
//!   asks for `application/openmetrics-text` (as Prometheus does), encoded
//!   with `prometheus-client`;
//! - `GET /healthz`: 200 while the process serves;
//! - `GET /readyz`: 200 when the store can be read, the network listens and
//!   the ledger can be read; 503 with the reason otherwise;
//! - anything else: 404 (405 for another method on these paths).
//!
//! Two kinds of values: **counters** ([`Counters`]) are incremented where
//! the event happens (bytes a transfer sends or receives, refusals) and live
//! as long as the process; **state** ([`Sample`]) is read from the node at
//! scrape time by a [`Source`] (transfers by state, ledger entries, peers,
//! queue lengths) and rendered by a `prometheus-client` collector.
//!
//! No label carries patient data, a study UID, a peer id or any text a peer
//! chose: labels are this node's own codes (transfer states, forwarding
//! states, sink names, refusal reasons). A refusal reason is taken only when
//! it is a short lower-case code, and at most [`MAX_REASONS`] distinct ones
//! are kept; any other is counted as `other`, so the number of series stays
//! bounded whatever a caller passes.
//!
//! This module imports nothing of the crate: the services count into
//! [`Counters`] (the transfer service holds them in its `Live`), and the
//! daemon implements [`Source`] over the node and its network.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Prefix of every metric name.
pub const PREFIX: &str = "medmesh";

/// Distinct refusal reasons counted under their own label; later ones are `other`.
pub const MAX_REASONS: usize = 64;

/// Longest refusal reason taken as a label.
const MAX_REASON_LEN: usize = 48;

/// The content type of the Prometheus text format.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The content type of OpenMetrics text.
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Errors of the metrics listener.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// The listener could not be bound.
    #[error("cannot listen on {addr} for [metrics]: {source}")]
    Bind {
        /// The address of `[metrics] listen`.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The metrics could not be encoded (a bug).
    #[error("cannot encode the metrics")]
    Encode(#[source] std::fmt::Error),
}

/// Why the node is not ready (`/readyz` answers 503 with it).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotReady {
    /// The store cannot be read.
    #[error("the store cannot be read: {0}")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The network is not listening on any address.
    #[error("the network is not listening")]
    NotListening,
    /// The network task does not answer.
    #[error("the network does not answer: {0}")]
    Network(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The ledger cannot be read.
    #[error("the ledger cannot be read: {0}")]
    Ledger(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The label of [`Counters::refused`].
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

/// What this process counts as events happen: bytes and chunks of
/// transfers, refusals by reason. Cheap to update (atomics); shared by the
/// services through the transfer service's `Live`.
#[derive(Debug)]
pub struct Counters {
    started: Instant,
    started_unix: f64,
    sent_bytes: Counter,
    received_bytes: Counter,
    received_chunks: Counter,
    received_objects: Counter,
    refusals: Family<ReasonLabel, Counter>,
    reasons: Mutex<BTreeSet<String>>,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            sent_bytes: Counter::default(),
            received_bytes: Counter::default(),
            received_chunks: Counter::default(),
            received_objects: Counter::default(),
            refusals: Family::default(),
            reasons: Mutex::new(BTreeSet::new()),
        }
    }
}

impl Counters {
    /// A holder sent `bytes` of a transfer's stream (frames, resends included).
    pub fn sent(&self, bytes: u64) {
        self.sent_bytes.inc_by(bytes);
    }

    /// A recipient verified and wrote a chunk of `bytes` (plaintext bytes
    /// of the object); `object_done`: it completed its object.
    pub fn received(&self, bytes: u64, object_done: bool) {
        self.received_bytes.inc_by(bytes);
        self.received_chunks.inc();
        if object_done {
            self.received_objects.inc();
        }
    }

    /// This node refused a peer's request, share or stream for `reason`
    /// (its own code: `no-consent`, `rate-limited`, ...).
    pub fn refused(&self, reason: &str) {
        let label = ReasonLabel {
            reason: self.reason_label(reason),
        };
        self.refusals.get_or_create(&label).inc();
    }

    /// The count of refusals for `reason` so far (tests, status).
    #[must_use]
    pub fn refusals(&self, reason: &str) -> u64 {
        self.refusals
            .get(&ReasonLabel {
                reason: reason.to_string(),
            })
            .map_or(0, |c| c.get())
    }

    /// Bytes sent by transfers so far.
    #[must_use]
    pub fn sent_bytes(&self) -> u64 {
        self.sent_bytes.get()
    }

    /// Bytes received by transfers so far.
    #[must_use]
    pub fn received_bytes(&self) -> u64 {
        self.received_bytes.get()
    }

    /// `reason` when it is a code of ours and the set of reasons is not
    /// full, else `other`.
    fn reason_label(&self, reason: &str) -> String {
        let code = !reason.is_empty()
            && reason.len() <= MAX_REASON_LEN
            && reason.as_bytes()[0].is_ascii_lowercase()
            && reason
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !code {
            return "other".into();
        }
        let mut known = self.reasons.lock().unwrap_or_else(PoisonError::into_inner);
        if known.contains(reason) || known.len() < MAX_REASONS {
            known.insert(reason.to_string());
            reason.to_string()
        } else {
            "other".into()
        }
    }
}

/// The node's state at a scrape, read by a [`Source`]. A part that could
/// not be read is `None` and left out of the answer (the cause is logged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    /// Transfer records by (direction, state), every pair (zeros included).
    pub transfers: Option<Vec<(&'static str, &'static str, u64)>>,
    /// Requests of peers waiting for a person here (`medmesh approvals`).
    pub approvals_pending: Option<u64>,
    /// Ledger entries held: (this node's own feed, every other feed, feeds).
    pub ledger: Option<LedgerSample>,
    /// Peers connected and trusted, and connections (all peers).
    pub peers: Option<PeersSample>,
    /// Items of the gateway's forwarding queue by state, every state.
    pub forward_queue: Option<Vec<(&'static str, u64)>>,
    /// Notifications not yet delivered, by configured sink (`webhook`, `syslog`).
    pub outbox: Option<Vec<(&'static str, u64)>>,
}

/// The ledger's size in a [`Sample`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LedgerSample {
    /// Entries of this node's own feed.
    pub own: u64,
    /// Entries of every other author's feed held here.
    pub peers: u64,
    /// Feeds (authors) held.
    pub feeds: u64,
}

/// The network in a [`Sample`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeersSample {
    /// Peers connected and trusted.
    pub trusted: u64,
    /// Connections, all peers.
    pub connections: u64,
}

/// What the metrics listener reads of the node.
pub trait Source: Send + Sync + 'static {
    /// The counters of this process.
    fn counters(&self) -> &Counters;
    /// The node's state now.
    fn sample(&self) -> BoxFuture<'_, Sample>;
    /// Whether the node is ready to serve.
    fn ready(&self) -> BoxFuture<'_, Result<(), NotReady>>;
}

/// The scrape-time values, as a `prometheus-client` collector.
#[derive(Debug)]
struct State {
    sample: Sample,
    uptime: f64,
    started_unix: f64,
}

fn gauge<N: prometheus_client::encoding::EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: N,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    let m = encoder.encode_descriptor(name, help, unit, g.metric_type())?;
    g.encode(m)
}

fn gauge_family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[(L, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(*value).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for State {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let version = [("version", env!("CARGO_PKG_VERSION"))];
        gauge_family(
            &mut e,
            "build_info",
            "The medmesh version this node runs (always 1).",
            &[(version, 1)],
        )?;
        gauge(
            &mut e,
            "start_time",
            "When this node process started (Unix time).",
            Some(&Unit::Seconds),
            self.started_unix,
        )?;
        gauge(
            &mut e,
            "uptime",
            "Seconds since this node process started.",
            Some(&Unit::Seconds),
            self.uptime,
        )?;
        let s = &self.sample;
        if let Some(t) = &s.transfers {
            let series: Vec<_> = t
                .iter()
                .map(|(direction, state, n)| ([("direction", *direction), ("state", *state)], *n))
                .collect();
            gauge_family(
                &mut e,
                "transfers",
                "Transfer records held, by direction and state.",
                &series,
            )?;
        }
        if let Some(n) = s.approvals_pending {
            gauge(
                &mut e,
                "approvals_pending",
                "Requests of peers waiting for a person here.",
                None,
                n,
            )?;
        }
        if let Some(l) = &s.ledger {
            let series = [([("feed", "own")], l.own), ([("feed", "peers")], l.peers)];
            gauge_family(
                &mut e,
                "ledger_entries",
                "Ledger entries held: this node's feed and its peers' feeds.",
                &series,
            )?;
            gauge(&mut e, "ledger_feeds", "Ledger feeds (authors) held.", None, l.feeds)?;
        }
        if let Some(p) = &s.peers {
            gauge(
                &mut e,
                "peers_connected",
                "Peers connected and trusted.",
                None,
                p.trusted,
            )?;
            gauge(
                &mut e,
                "connections",
                "Network connections, all peers.",
                None,
                p.connections,
            )?;
        }
        if let Some(q) = &s.forward_queue {
            let series: Vec<_> = q.iter().map(|(state, n)| ([("state", *state)], *n)).collect();
            gauge_family(
                &mut e,
                "gateway_forward_queue",
                "Items of the forwarding queue to the PACS, by state.",
                &series,
            )?;
        }
        if let Some(o) = &s.outbox {
            let series: Vec<_> = o.iter().map(|(sink, n)| ([("sink", *sink)], *n)).collect();
            gauge_family(
                &mut e,
                "notifications_pending",
                "Notifications not yet delivered, by configured sink.",
                &series,
            )?;
        }
        Ok(())
    }
}

/// Renders the counters and a sample as OpenMetrics text (ending in `# EOF`).
///
/// # Errors
/// [`MetricsError::Encode`] (a bug).
pub fn render_openmetrics(counters: &Counters, sample: Sample) -> Result<String, MetricsError> {
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register_with_unit(
        "transfer_sent",
        "Bytes this node sent in transfer streams (frames, resends included).",
        Unit::Bytes,
        counters.sent_bytes.clone(),
    );
    registry.register_with_unit(
        "transfer_received",
        "Object bytes this node received in transfer streams, verified and written.",
        Unit::Bytes,
        counters.received_bytes.clone(),
    );
    registry.register(
        "transfer_received_chunks",
        "Chunks this node received in transfer streams, verified and written.",
        counters.received_chunks.clone(),
    );
    registry.register(
        "transfer_received_objects",
        "Objects this node received completely in transfer streams.",
        counters.received_objects.clone(),
    );
    registry.register(
        "refusals",
        "Requests, shares and streams of peers this node refused, by reason (a refusal with two reasons counts under both).",
        counters.refusals.clone(),
    );
    registry.register_collector(Box::new(State {
        sample,
        uptime: counters.started.elapsed().as_secs_f64(),
        started_unix: counters.started_unix,
    }));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).map_err(MetricsError::Encode)?;
    Ok(out)
}

/// OpenMetrics text as the Prometheus text format (0.0.4), which
/// `promtool check metrics` and older scrapers read: a counter's `# HELP`
/// and `# TYPE` name its samples' `_total` name, `# UNIT` and `# EOF` go.
#[must_use]
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: BTreeSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "].into_iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters.contains(name).then(|| format!("{p}{name}_total {tail}"))
        });
        match meta {
            Some(l) => out.push_str(l.trim_end()),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Whether an `Accept` header asks for OpenMetrics.
fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| a.contains("application/openmetrics-text"))
}

/// Binds the listener of `[metrics] listen`; says so in the log, with a
/// warning when the address is not a loopback one (the endpoints have no
/// authentication).
///
/// # Errors
/// [`MetricsError::Bind`].
pub async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), MetricsError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| MetricsError::Bind { addr, source })?;
    if bound.ip().is_loopback() {
        tracing::info!(address = %bound, "metrics: serving /metrics, /healthz and /readyz");
    } else {
        tracing::warn!(
            address = %bound,
            "metrics: serving /metrics, /healthz and /readyz on a non-loopback address without authentication; \
             restrict who can reach it (firewall) or listen on 127.0.0.1"
        );
    }
    Ok((listener, bound))
}

/// Serves the endpoints on `listener` until `shutdown` turns true.
pub async fn serve(listener: TcpListener, source: Arc<dyn Source>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let source = Arc::clone(&source);
                    tokio::spawn(async move {
                        let service = service_fn(move |req| {
                            let source = Arc::clone(&source);
                            async move { Ok::<_, Infallible>(handle(&*source, &req).await) }
                        });
                        if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                            tracing::debug!(cause = %e, "metrics connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(cause = %e, "metrics: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
        }
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

const PLAIN: &str = "text/plain; charset=utf-8";

/// The answer to one request.
async fn handle(source: &dyn Source, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: this listener serves /metrics, /healthz and /readyz\n".into(),
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, PLAIN, "only GET\n".into());
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return r;
    }
    match path {
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n".into()),
        "/readyz" => match source.ready().await {
            Ok(()) => text(StatusCode::OK, PLAIN, "ready\n".into()),
            Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, PLAIN, format!("not ready: {e}\n")),
        },
        _ => {
            let accept = req.headers().get(hyper::header::ACCEPT).and_then(|v| v.to_str().ok());
            let sample = source.sample().await;
            match render_openmetrics(source.counters(), sample) {
                Ok(om) if wants_openmetrics(accept) => text(StatusCode::OK, OPENMETRICS_TEXT, om),
                Ok(om) => text(StatusCode::OK, PROMETHEUS_TEXT, to_prometheus_text(&om)),
                Err(e) => {
                    tracing::error!(cause = %e, "metrics: cannot encode");
                    text(StatusCode::INTERNAL_SERVER_ERROR, PLAIN, format!("{e}\n"))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
