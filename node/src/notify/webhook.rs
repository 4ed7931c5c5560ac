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

use super::{Notice, Origin};
use crate::config::{Secret, WebhookConfig};

/// Version of the webhook document.
pub const WEBHOOK_VERSION: u32 = 1;

/// `url` fit for logs, `Debug` and error messages: its user information
/// (`user:password@`) and its query and fragment (which may hold a secret,
/// `?key=...`) replaced by `(redacted)`. Works on any text, URL or not.
#[must_use]
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    let mut out = String::with_capacity(url.len());
    if let Some(scheme) = scheme {
        out.push_str(scheme);
        out.push_str("://");
    }
    match authority.rsplit_once('@') {
        Some((_, host)) => {
            out.push_str("(redacted)@");
            out.push_str(host);
        }
        None => out.push_str(authority),
    }
    match tail.find(['?', '#']) {
        Some(at) => {
            let (path, rest) = tail.split_at(at);
            out.push_str(path);
            out.push_str(if rest.starts_with('?') {
                "?(redacted)"
            } else {
                "#(redacted)"
            });
        }
        None => out.push_str(tail),
    }
    out
}

/// A parsed webhook URL.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    /// https (else http).
    pub https: bool,
    /// Host name or address (without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// `host[:port]` as in the URL, for the Host header.
    pub authority: String,
    /// Path and query.
    pub path: String,
}

impl std::fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookTarget")
            .field("https", &self.https)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("authority", &self.authority)
            .field("path", &redact_url(&self.path))
            .finish()
    }
}

impl WebhookTarget {
    /// Parses an `http://` or `https://` URL. Error messages show it
    /// without its user information and query ([`redact_url`]).
    ///
    /// # Errors
    /// Why the URL is not acceptable.
    pub fn parse(url: &str) -> Result<Self, String> {
        let shown = redact_url(url);
        let uri: hyper::Uri = url.parse().map_err(|e| format!("{shown:?} is not a URL: {e}"))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("{shown:?}: the scheme must be http:// or https://")),
        };
        let Some(auth) = uri.authority() else {
            return Err(format!("{shown:?} has no host"));
        };
        if auth.as_str().contains('@') {
            return Err("must not hold credentials (user:password@): use token".into());
        }
        let host = auth.host().trim_start_matches('[').trim_end_matches(']').to_string();
        if host.is_empty() {
            return Err(format!("{shown:?} has no host"));
        }
        Ok(Self {
            https,
            host,
            port: auth.port_u16().unwrap_or(if https { 443 } else { 80 }),
            authority: auth.as_str().to_string(),
            path: uri
                .path_and_query()
                .map_or_else(|| "/".into(), |p| p.as_str().to_string()),
        })
    }

    /// True when the host is this machine (`localhost`, 127.0.0.0/8, `::1`).
    #[must_use]
    pub fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self.host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// Whether a token may be sent to this URL: over https://, or over
    /// plain http:// only to this machine (a token sent in clear text over
    /// the network can be read on the way).
    ///
    /// # Errors
    /// Why not, naming `notify.webhook.token`.
    pub fn check_token(&self, token: &Secret) -> Result<(), String> {
        if token.is_empty() || self.https || self.is_loopback() {
            return Ok(());
        }
        Err(format!(
            "notify.webhook.token is set but the URL {} is plain http://: the token would cross the network \
             in clear text; use an https:// URL (http:// with a token is accepted only to 127.0.0.1, ::1 or \
             localhost)",
            self.shown()
        ))
    }

    /// The URL without its query (which may hold a secret), for status and logs.
    #[must_use]
    pub fn shown(&self) -> String {
        let path = self.path.split('?').next().unwrap_or("/");
        format!(
            "{}://{}{path}",
            if self.https { "https" } else { "http" },
            self.authority
        )
    }
}

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
        "time": crate::home::rfc3339(row.time),
        "noted": crate::home::rfc3339(row.noted),
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
    /// A bad URL, header name or CA file, as a message.
    pub fn from_config(c: &WebhookConfig) -> Result<Option<Self>, String> {
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
            token_header: c
                .token_header
                .parse()
                .map_err(|_| format!("{:?} is not a header name", c.token_header))?,
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
    pub async fn post(&self, body: Vec<u8>, entry: &str) -> Result<(), String> {
        match tokio::time::timeout(self.timeout, self.post_inner(body, entry)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {} s", self.timeout.as_secs())),
        }
    }

    async fn post_inner(&self, body: Vec<u8>, entry: &str) -> Result<(), String> {
        let t = &self.target;
        let tcp = TcpStream::connect((t.host.as_str(), t.port))
            .await
            .map_err(|e| format!("connect {}:{}: {e}", t.host, t.port))?;
        match &self.tls {
            Some(tls) => {
                let name =
                    rustls::pki_types::ServerName::try_from(t.host.clone()).map_err(|e| format!("{}: {e}", t.host))?;
                let stream = tls.connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?;
                self.exchange(stream, body, entry).await
            }
            None => self.exchange(tcp, body, entry).await,
        }
    }

    async fn exchange<S>(&self, io: S, body: Vec<u8>, entry: &str) -> Result<(), String>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let conn = tokio::spawn(conn);
        let mut req = hyper::Request::post(self.target.path.as_str())
            .header(hyper::header::HOST, self.target.authority.as_str())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(
                hyper::header::USER_AGENT,
                concat!("medmesh/", env!("CARGO_PKG_VERSION")),
            )
            .header("idempotency-key", entry)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("request: {e}"))?;
        if !self.token.is_empty() {
            let value = if self.token_header == hyper::header::AUTHORIZATION {
                HeaderValue::from_str(&format!("Bearer {}", self.token.expose()))
            } else {
                HeaderValue::from_str(self.token.expose())
            };
            let mut value = value.map_err(|_| "the token cannot be sent in a header".to_string())?;
            value.set_sensitive(true);
            req.headers_mut().insert(self.token_header.clone(), value);
        }
        let resp = sender.send_request(req).await.map_err(|e| format!("HTTP: {e}"));
        conn.abort();
        let status = resp?.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {status}"))
        }
    }
}
