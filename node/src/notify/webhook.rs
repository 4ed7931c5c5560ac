//! Webhook delivery: one HTTP/1.1 POST of a versioned JSON document per
//! notification; 2xx = delivered, anything else (another status, a
//! connection error, a timeout) = retried.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::{DeliveryError, Notice, Origin, SinkConfigError};
use crate::config::{Secret, WebhookConfig, WebhookTarget};

/// Version of the webhook document.
pub const WEBHOOK_VERSION: u32 = 1;

/// The JSON document posted for a notification (`v` = [`WEBHOOK_VERSION`]).
#[must_use]
pub fn webhook_json(n: &Notice, origin: &Origin) -> serde_json::Value {
    let row = &n.row;
    let mut doc = serde_json::json!({
        "v": WEBHOOK_VERSION,
        "delivery": n.seq,
        "entry": hex::encode(n.entry),
        "author": row.author,
        "seq": row.seq,
        "kind": row.kind,
        "alert": super::is_alert(&row.kind),
        "time": crate::clock::rfc3339(row.time),
        "noted": crate::clock::rfc3339(row.noted),
        "study": row.study,
        "node": origin.peer_id,
        "institution": origin.institution,
    });
    if let Some(map) = doc.as_object_mut() {
        if let Some(uid) = &n.study_uid {
            map.insert("study_uid".into(), uid.clone().into());
        }
        if let Some(event) = &n.event
            && let Ok(v) = serde_json::to_value(event)
        {
            map.insert("event".into(), v);
        }
    }
    doc
}

/// A configured webhook.
pub struct Webhook {
    target: WebhookTarget,
    token: Secret,
    token_header: HeaderName,
    timeout: Duration,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("target", &self.target.shown())
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl Webhook {
    /// The webhook of `[notify.webhook]`, if a URL is set.
    ///
    /// # Errors
    /// [`SinkConfigError`]: a bad URL, header name or CA file.
    pub fn from_config(c: &WebhookConfig) -> Result<Option<Self>, SinkConfigError> {
        if c.url.is_empty() {
            return Ok(None);
        }
        let target = WebhookTarget::parse(&c.url)?;
        target.check_token(&c.token)?;
        let tls = if target.https {
            Some(tokio_rustls::TlsConnector::from(super::tls::client_config(
                &c.ca_file, None,
            )?))
        } else {
            None
        };
        Ok(Some(Self {
            target,
            token: c.token.clone(),
            token_header: c.token_header.parse().map_err(|_| SinkConfigError::HeaderName {
                header: c.token_header.clone(),
            })?,
            timeout: Duration::from_secs(c.timeout_secs),
            tls,
        }))
    }

    /// The URL shown in status and logs.
    #[must_use]
    pub fn shown(&self) -> String {
        self.target.shown()
    }

    /// Posts `body` for entry `entry` (hex, also the Idempotency-Key).
    ///
    /// # Errors
    /// Why the POST did not succeed (no secret in it).
    pub async fn post(&self, body: Vec<u8>, entry: &str) -> Result<(), DeliveryError> {
        match tokio::time::timeout(self.timeout, self.post_inner(body, entry)).await {
            Ok(r) => r,
            Err(_) => Err(DeliveryError::Timeout(self.timeout.as_secs())),
        }
    }

    async fn post_inner(&self, body: Vec<u8>, entry: &str) -> Result<(), DeliveryError> {
        let t = &self.target;
        let tcp = TcpStream::connect((t.host.as_str(), t.port))
            .await
            .map_err(|source| DeliveryError::Connect {
                target: format!("{}:{}", t.host, t.port),
                source,
            })?;
        match &self.tls {
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(t.host.clone()).map_err(|source| {
                    DeliveryError::ServerName {
                        host: t.host.clone(),
                        source,
                    }
                })?;
                let stream = tls.connect(name, tcp).await.map_err(DeliveryError::Tls)?;
                self.exchange(stream, body, entry).await
            }
            None => self.exchange(tcp, body, entry).await,
        }
    }

    async fn exchange<S>(&self, io: S, body: Vec<u8>, entry: &str) -> Result<(), DeliveryError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        let conn = tokio::spawn(conn);
        let mut req = hyper::Request::post(self.target.path.as_str())
            .header(hyper::header::HOST, self.target.authority.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("medmesh/", env!("CARGO_PKG_VERSION")),
            )
            .header("idempotency-key", entry)
            .body(Full::new(Bytes::from(body)))?;
        if !self.token.is_empty() {
            let value = if self.token_header == hyper::header::AUTHORIZATION {
                HeaderValue::from_str(&format!("Bearer {}", self.token.expose()))
            } else {
                HeaderValue::from_str(self.token.expose())
            };
            let mut value = value.map_err(|_| DeliveryError::TokenHeader)?;
            value.set_sensitive(true);
            req.headers_mut().insert(self.token_header.clone(), value);
        }
        let resp = sender.send_request(req).await.map_err(DeliveryError::Http);
        conn.abort();
        let status = resp?.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(DeliveryError::Status(status))
        }
    }
}
