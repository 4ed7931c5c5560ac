//! Delivery of notifications to a webhook (JSON) and to a syslog collector
//! (DICOM audit messages, IHE ATNA), configured in `[notify]`.
//!
//! Every notification has a sequence in the store's outbox (written with
//! it, in one transaction). One worker per configured sink reads the
//! outbox a batch at a time after the sink's cursor, delivers in order,
//! and moves the cursor only after a delivery succeeded; a failure is
//! retried with exponential backoff and jitter (1 s doubling up to 5 min)
//! until it succeeds. So every notification is delivered at least once, in
//! order, none skipped, across restarts; the receiver deduplicates by the
//! entry id (the webhook's `Idempotency-Key`). A sink configured for the
//! first time delivers the whole backlog. An unconfigured sink delivers
//! nothing and its cursor stays. Notifications recorded before the outbox
//! existed were given sequences when the store opened (a one-time
//! migration, whether or not a sink is configured), so a sink configured
//! later delivers them too.

mod audit;
mod syslog;
mod tls;
mod webhook;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use crate::config::{WebhookTarget, redact_url, split_host_port};
pub use audit::{AuditEvent, audit_event, audit_message, is_alert};
pub use syslog::{APP_NAME, MSG_ID, Syslog, hostname, message as syslog_message};
pub use webhook::{WEBHOOK_VERSION, Webhook, webhook_json};

use crate::clock::rfc3339;
use crate::config::{EndpointError, NotifyConfig};
use crate::identity::VerifiedNodeRecord;
use crate::ledger::Event;
use crate::store::{NotificationRow, OutboxItem, Store, StoreError};

/// Name of the webhook sink (its cursor's key).
pub const WEBHOOK: &str = "webhook";
/// Name of the syslog sink (its cursor's key).
pub const SYSLOG: &str = "syslog";
/// Notifications read from the outbox at a time.
pub const BATCH: usize = 64;

/// Errors of notification delivery.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    /// A sink's configuration cannot be used (a certificate file, ...).
    #[error("[notify.{sink}]: {source}")]
    Config {
        /// Which sink.
        sink: &'static str,
        /// Why (boxed: a TLS error is large).
        source: Box<SinkConfigError>,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a sink's settings cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkConfigError {
    /// The URL or address is not acceptable.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The token header is not a header name.
    #[error("{header:?} is not a header name")]
    HeaderName {
        /// The header name as configured.
        header: String,
    },
    /// The syslog facility is not one of those known.
    #[error("unknown facility {facility:?}")]
    Facility {
        /// The facility as configured.
        facility: String,
    },
    /// A PEM file cannot be read or parsed.
    #[error("{file}: {source}")]
    Pem {
        /// The file.
        file: String,
        /// The cause.
        source: rustls::pki_types::pem::Error,
    },
    /// A certificate or key of a file is refused.
    #[error("{file}: {source}")]
    Tls {
        /// The file.
        file: String,
        /// The cause.
        source: rustls::Error,
    },
    /// A PEM file holds no certificate.
    #[error("{file}: no certificate")]
    NoCertificate {
        /// The PEM file.
        file: String,
    },
    /// The TLS library cannot be set up.
    #[error(transparent)]
    Protocols(rustls::Error),
}

/// Why one notification was not delivered (it is retried). No secret is
/// shown.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// The document could not be encoded.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// The syslog message could not be written.
    #[error(transparent)]
    Message(std::io::Error),
    /// The webhook did not answer in time.
    #[error("no answer within {0} s")]
    Timeout(u64),
    /// No connection could be made.
    #[error("connect {target}: {source}")]
    Connect {
        /// `host:port` or the sink as shown.
        target: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The connection was not made in time.
    #[error("connect {target}: timed out")]
    ConnectTimeout {
        /// `host:port` or the sink as shown.
        target: String,
    },
    /// The host is not a name TLS can check.
    #[error("{host}: {source}")]
    ServerName {
        /// The host.
        host: String,
        /// The cause.
        source: rustls::pki_types::InvalidDnsNameError,
    },
    /// The TLS handshake failed.
    #[error("TLS: {0}")]
    Tls(std::io::Error),
    /// The TLS handshake did not finish in time.
    #[error("TLS handshake: timed out")]
    TlsTimeout,
    /// HTTP failed.
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built.
    #[error("request: {0}")]
    Request(#[from] hyper::http::Error),
    /// The token holds what a header cannot carry.
    #[error("the token cannot be sent in a header")]
    TokenHeader,
    /// The webhook answered with another status than 2xx.
    #[error("HTTP {0}")]
    Status(hyper::StatusCode),
    /// The collector's name does not resolve.
    #[error("{target}: {source}")]
    Resolve {
        /// The sink as shown.
        target: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The collector's name resolves to no address.
    #[error("{target}: no address")]
    NoAddress {
        /// The sink as shown.
        target: String,
    },
    /// No UDP socket could be made.
    #[error("UDP: {0}")]
    UdpSocket(std::io::Error),
    /// The UDP datagram could not be sent.
    #[error("UDP {addr}: {source}")]
    UdpSend {
        /// The collector's address.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// Writing to the collector failed.
    #[error("write {target}: {source}")]
    Write {
        /// The sink as shown.
        target: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store's task failed.
    #[error("store task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A notification ready to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Its outbox sequence.
    pub seq: u64,
    /// The ledger entry (its id; the idempotency key).
    pub entry: [u8; 32],
    /// The notification.
    pub row: NotificationRow,
    /// The entry's event, when this node holds the entry (not for alerts
    /// about entries it refused).
    pub event: Option<Event>,
    /// The Study Instance UID, only when the sink is configured to send it
    /// and the commitment resolves here.
    pub study_uid: Option<String>,
}

/// This node, as named in deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Its peer id.
    pub peer_id: String,
    /// Its institution (from its node record).
    pub institution: String,
    /// The machine's host name, or `-`.
    pub hostname: String,
}

impl Origin {
    /// The node of `record`, on this machine.
    #[must_use]
    pub fn of(record: &VerifiedNodeRecord) -> Self {
        let r = record.record();
        Self {
            peer_id: r.peer_id.clone(),
            institution: r.institution.clone(),
            hostname: hostname(),
        }
    }
}

/// Anything that holds the store (the node, or a bare store in tests).
pub trait HasStore: Send + Sync + 'static {
    /// The store.
    fn store(&self) -> &Store;
}

impl HasStore for Store {
    fn store(&self) -> &Store {
        self
    }
}

/// Retry delays: `min` doubling per failure up to `max`, each drawn at
/// random between half and all of it (jitter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay.
    pub min: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Backoff {
    /// 1 s doubling up to 5 min.
    pub const DEFAULT: Backoff = Backoff {
        min: Duration::from_secs(1),
        max: Duration::from_secs(300),
    };

    /// The delay after the `failures`-th failure in a row (from 1).
    #[must_use]
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(30);
        let full = self.min.saturating_mul(1u32 << exp).min(self.max);
        let mut r = [0u8; 4];
        let frac = if getrandom::fill(&mut r).is_ok() {
            f64::from(u32::from_le_bytes(r)) / f64::from(u32::MAX)
        } else {
            1.0
        };
        full / 2 + (full / 2).mul_f64(frac)
    }
}

/// A delivery sink.
#[derive(Debug)]
pub enum Sink {
    /// The webhook.
    Webhook {
        /// The client.
        hook: Webhook,
        /// Send the Study Instance UID.
        study_uid: bool,
    },
    /// The syslog collector.
    Syslog {
        /// The client.
        log: Syslog,
        /// Send the Study Instance UID.
        study_uid: bool,
    },
}

impl Sink {
    /// The sink's name ([`WEBHOOK`], [`SYSLOG`]).
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Sink::Webhook { .. } => WEBHOOK,
            Sink::Syslog { .. } => SYSLOG,
        }
    }

    fn study_uid(&self) -> bool {
        match self {
            Sink::Webhook { study_uid, .. } | Sink::Syslog { study_uid, .. } => *study_uid,
        }
    }

    /// Where it delivers, for status and logs (no secret).
    #[must_use]
    pub fn shown(&self) -> String {
        match self {
            Sink::Webhook { hook, .. } => hook.shown(),
            Sink::Syslog { log, .. } => log.shown(),
        }
    }

    /// Delivers one notification.
    ///
    /// # Errors
    /// Why it was not delivered.
    pub async fn deliver(&mut self, n: &Notice, origin: &Origin) -> Result<(), DeliveryError> {
        match self {
            Sink::Webhook { hook, .. } => {
                let body = serde_json::to_vec(&webhook_json(n, origin))?;
                hook.post(body, &hex::encode(n.entry)).await
            }
            Sink::Syslog { log, .. } => {
                let msg = syslog::message(n, origin, log.facility(), crate::clock::now_utc())
                    .map_err(DeliveryError::Message)?;
                log.send(&msg).await
            }
        }
    }
}

/// The sinks `[notify]` configures.
///
/// # Errors
/// [`NotifyError::Config`] (a certificate file that cannot be used, ...).
pub fn sinks(config: &NotifyConfig) -> Result<Vec<Sink>, NotifyError> {
    let mut out = Vec::new();
    if let Some(hook) = Webhook::from_config(&config.webhook).map_err(|source| NotifyError::Config {
        sink: WEBHOOK,
        source: Box::new(source),
    })? {
        out.push(Sink::Webhook {
            hook,
            study_uid: config.webhook.study_uid,
        });
    }
    if let Some(log) = Syslog::from_config(&config.syslog).map_err(|source| NotifyError::Config {
        sink: SYSLOG,
        source: Box::new(source),
    })? {
        out.push(Sink::Syslog {
            log,
            study_uid: config.syslog.study_uid,
        });
    }
    Ok(out)
}

/// The notice for an outbox item: its event read from the ledger, and
/// the Study Instance UID when `study_uid`. `None` for an item whose
/// notification row is missing.
///
/// # Errors
/// [`StoreError`].
pub fn prepare(store: &Store, item: OutboxItem, study_uid: bool) -> Result<Option<Notice>, StoreError> {
    let Some(row) = item.row else {
        return Ok(None);
    };
    let event = store
        .ledger_entry(&crate::ids::EntryId::from(item.entry))?
        .and_then(|bytes| crate::ledger::open_entry(&bytes).ok())
        .map(|e| e.entry.event);
    let uid = if study_uid {
        match hex::decode(&row.study).ok().and_then(|b| <[u8; 32]>::try_from(b).ok()) {
            Some(c) => store.resolve_commitment(&c)?,
            None => None,
        }
    } else {
        None
    };
    Ok(Some(Notice {
        seq: item.seq,
        entry: item.entry,
        row,
        event,
        study_uid: uid,
    }))
}

async fn blocking<H: HasStore, T: Send + 'static>(
    h: &Arc<H>,
    f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, DeliveryError> {
    let h = Arc::clone(h);
    Ok(tokio::task::spawn_blocking(move || f(h.store())).await??)
}

/// Waits until `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

use crate::clock::now;

/// Delivers the outbox to one sink until `stop`: in order, at least once,
/// the cursor moved only after each success, failures retried per `backoff`.
pub async fn run_sink<H: HasStore>(
    h: Arc<H>,
    origin: Origin,
    mut sink: Sink,
    backoff: Backoff,
    mut stop: watch::Receiver<bool>,
) {
    let name = sink.name();
    let shown = sink.shown();
    let mut wake = h.store().outbox_watch();
    let mut failures: u32 = 0;
    tracing::info!(sink = name, target = %shown, "notification delivery started");
    'outer: loop {
        if *stop.borrow() {
            return;
        }
        // Where the sink stands (read again after any store trouble).
        let cursor = match blocking(&h, move |s| s.sink_open(name)).await {
            Ok(state) => state.delivered,
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(sink = name, error = %e, "notification delivery: cannot read the cursor");
                tokio::select! {
                    () = tokio::time::sleep(backoff.delay(failures)) => continue,
                    () = stopped(&mut stop) => return,
                }
            }
        };
        wake.borrow_and_update();
        let batch = match blocking(&h, move |s| s.outbox_batch(cursor, BATCH)).await {
            Ok(b) => b,
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(sink = name, error = %e, "notification delivery: cannot read the outbox");
                tokio::select! {
                    () = tokio::time::sleep(backoff.delay(failures)) => continue,
                    () = stopped(&mut stop) => return,
                }
            }
        };
        if batch.is_empty() {
            tokio::select! {
                r = wake.changed() => if r.is_err() { return },
                () = tokio::time::sleep(Duration::from_secs(30)) => {}
                () = stopped(&mut stop) => return,
            }
            continue;
        }
        let study_uid = sink.study_uid();
        for item in batch {
            let seq = item.seq;
            let notice = match blocking(&h, move |s| prepare(s, item, study_uid)).await {
                Ok(n) => n,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(sink = name, seq, error = %e, "notification delivery: cannot read a notification");
                    tokio::select! {
                        () = tokio::time::sleep(backoff.delay(failures)) => continue 'outer,
                        () = stopped(&mut stop) => return,
                    }
                }
            };
            if let Some(n) = &notice {
                loop {
                    let result = tokio::select! {
                        r = sink.deliver(n, &origin) => r,
                        () = stopped(&mut stop) => return,
                    };
                    match result {
                        Ok(()) => break,
                        Err(e) => {
                            failures = failures.saturating_add(1);
                            let delay = backoff.delay(failures);
                            let next = now().saturating_add(i64::try_from(delay.as_secs()).unwrap_or(i64::MAX));
                            let reason = e.to_string();
                            if let Err(se) = blocking(&h, move |s| s.sink_failed(name, &reason, now(), next)).await {
                                tracing::warn!(sink = name, error = %se, "notification delivery: cannot record a failure");
                            }
                            tracing::warn!(sink = name, target = %shown, seq, failures, error = %e, retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "notification not delivered; will retry");
                            tokio::select! {
                                () = tokio::time::sleep(delay) => {}
                                () = stopped(&mut stop) => return,
                            }
                        }
                    }
                }
            } else {
                tracing::warn!(sink = name, seq, "notification row missing: skipped");
            }
            if let Err(e) = blocking(&h, move |s| s.sink_delivered(name, seq, now())).await {
                // Delivered but not recorded: it will be delivered again (at least once).
                failures = failures.saturating_add(1);
                tracing::warn!(sink = name, seq, error = %e, "notification delivery: cannot move the cursor");
                tokio::select! {
                    () = tokio::time::sleep(backoff.delay(failures)) => continue 'outer,
                    () = stopped(&mut stop) => return,
                }
            }
            failures = 0;
            tracing::debug!(sink = name, seq, "notification delivered");
        }
    }
}

/// Runs the delivery of every sink `config` configures until `stop` (for
/// `medmesh run`), naming this node as `origin`. Returns at once when no
/// sink is configured.
pub async fn run<H: HasStore>(h: Arc<H>, config: &NotifyConfig, origin: Origin, stop: watch::Receiver<bool>) {
    let sinks = match sinks(config) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "notifications will not be delivered");
            return;
        }
    };
    if sinks.is_empty() {
        return;
    }
    let tasks: Vec<_> = sinks
        .into_iter()
        .map(|sink| {
            tokio::spawn(run_sink(
                Arc::clone(&h),
                origin.clone(),
                sink,
                Backoff::DEFAULT,
                stop.clone(),
            ))
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

/// Where a delivery sink stands, for `medmesh notifications --status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkStatus {
    /// `webhook` or `syslog`.
    pub sink: String,
    /// Where it delivers (no secret); empty when not configured.
    pub target: String,
    /// Configured now.
    pub configured: bool,
    /// The last outbox sequence delivered.
    pub delivered: u64,
    /// The outbox's last sequence.
    pub head: u64,
    /// Notifications not yet delivered.
    pub pending: u64,
    /// Failed attempts since the last success.
    pub failures: u32,
    /// The last failure's reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When it happened (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<String>,
    /// When the next attempt is due (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<String>,
    /// When the last delivery succeeded (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<String>,
}

/// The status of both sinks.
///
/// # Errors
/// [`StoreError`].
pub fn status(store: &Store, config: &NotifyConfig) -> Result<Vec<SinkStatus>, StoreError> {
    let head = store.outbox_head()?;
    let targets = [
        (
            WEBHOOK,
            (!config.webhook.url.is_empty()).then(|| {
                WebhookTarget::parse(&config.webhook.url).map_or_else(|_| "(invalid)".to_string(), |t| t.shown())
            }),
        ),
        (
            SYSLOG,
            (!config.syslog.address.is_empty())
                .then(|| format!("{:?}://{}", config.syslog.transport, config.syslog.address).to_lowercase()),
        ),
    ];
    let mut out = Vec::new();
    for (sink, target) in targets {
        let state = store.sink_state(sink)?.unwrap_or_default();
        let delivered = state.delivered.min(head);
        out.push(SinkStatus {
            sink: sink.into(),
            configured: target.is_some(),
            target: target.unwrap_or_default(),
            delivered,
            head,
            pending: head - delivered,
            failures: state.failures,
            last_error: state.last_error,
            last_error_at: state.last_error_at.map(rfc3339),
            next_attempt: state.next_attempt.map(rfc3339),
            delivered_at: state.delivered_at.map(rfc3339),
        });
    }
    Ok(out)
}

/// The notification service of a node: its store's outbox and the
/// `[notify]` settings. Delivery runs as a task ([`run`]).
#[derive(Debug, Clone, Copy)]
pub struct NotifyService<'a> {
    store: &'a Store,
    config: &'a NotifyConfig,
}

impl<'a> NotifyService<'a> {
    /// The service over `store` with the `[notify]` settings.
    #[must_use]
    pub fn new(store: &'a Store, config: &'a NotifyConfig) -> Self {
        Self { store, config }
    }

    /// Where notification delivery stands, per sink.
    ///
    /// # Errors
    /// [`NotifyError::Store`].
    pub fn status(&self) -> Result<Vec<SinkStatus>, NotifyError> {
        Ok(status(self.store, self.config)?)
    }
}

#[cfg(test)]
mod tests;
