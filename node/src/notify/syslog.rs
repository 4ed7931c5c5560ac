//! Syslog delivery: RFC 5424 messages carrying a DICOM audit message, over
//! UDP (RFC 5426), TCP with octet counting (RFC 6587) or TLS (RFC 5425).

use std::time::Duration;

use futures::FutureExt as _;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpStream, UdpSocket};

use super::{DeliveryError, Notice, Origin, SinkConfigError};
use crate::config::{SyslogConfig, SyslogTransport};

/// APP-NAME of every message.
pub const APP_NAME: &str = "medmesh";
/// MSGID of every message: the IHE ATNA convention for DICOM audit messages.
pub const MSG_ID: &str = "IHE+RFC-3881";
/// Severity of alerts (warning).
pub const SEVERITY_ALERT: u8 = 4;
/// Severity of other notifications (notice).
pub const SEVERITY_NOTICE: u8 = 5;
/// Seconds to connect to the collector.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Seconds to close a connection cleanly.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The RFC 5424 message (without transport framing) for a notification:
/// `<PRI>1 TIMESTAMP HOSTNAME medmesh PROCID IHE+RFC-3881 - BOM XML`.
///
/// # Errors
/// The audit message could not be written (never in practice).
pub fn message(
    n: &Notice,
    origin: &Origin,
    facility: u8,
    now: chrono::DateTime<chrono::Utc>,
) -> std::io::Result<Vec<u8>> {
    let severity = if super::is_alert(&n.row.kind) {
        SEVERITY_ALERT
    } else {
        SEVERITY_NOTICE
    };
    let pri = u16::from(facility) * 8 + u16::from(severity);
    let header = format!(
        "<{pri}>1 {} {} {APP_NAME} {} {MSG_ID} - \u{feff}",
        now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        origin.hostname,
        std::process::id(),
    );
    let mut out = header.into_bytes();
    out.extend_from_slice(&super::audit::audit_message(n, origin)?);
    Ok(out)
}

/// This machine's host name for the HOSTNAME field, or `-` (RFC 5424 NILVALUE).
#[must_use]
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty() && h.len() <= 255 && h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "-".into())
}

enum Conn {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Conn {
    /// Reads, without waiting, whatever the collector sent: false when it
    /// closed the connection (end of stream, TLS close_notify or alert, an
    /// error). Over TLS this goes through the TLS layer, which consumes
    /// what a TLS 1.3 server sends after the handshake (session tickets):
    /// those are not a sign of a dead connection, and reading them leaves
    /// no unread data that would make closing the socket reset it. A
    /// collector sends no syslog data; anything else is read and dropped.
    fn alive(&mut self) -> bool {
        use tokio::io::AsyncReadExt as _;
        let mut buf = [0u8; 4096];
        // Bounded: a collector that keeps sending cannot hold the worker here.
        for _ in 0..64 {
            let read = match self {
                Conn::Tcp(s) => match s.try_read(&mut buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                    r => r,
                },
                Conn::Tls(s) => match s.read(&mut buf).now_or_never() {
                    None => return true,
                    Some(r) => r,
                },
            };
            match read {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
        }
        true
    }

    async fn write(&mut self, frame: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => {
                s.write_all(frame).await?;
                s.flush().await
            }
            Conn::Tls(s) => {
                s.write_all(frame).await?;
                s.flush().await
            }
        }
    }

    /// Closes the connection cleanly: reads what the collector sent (so the
    /// close is not a reset, which could discard messages it has not read
    /// yet), then TLS close_notify and TCP shutdown.
    async fn close(mut self) {
        self.alive();
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            match &mut self {
                Conn::Tcp(s) => s.shutdown().await,
                Conn::Tls(s) => s.shutdown().await,
            }
        })
        .await;
    }
}

/// A configured syslog collector.
pub struct Syslog {
    host: String,
    port: u16,
    transport: SyslogTransport,
    facility: u8,
    tls: Option<tokio_rustls::TlsConnector>,
    conn: Option<Conn>,
}

impl std::fmt::Debug for Syslog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Syslog")
            .field("target", &self.shown())
            .finish_non_exhaustive()
    }
}

impl Syslog {
    /// The collector of `[notify.syslog]`, if an address is set.
    ///
    /// # Errors
    /// [`SinkConfigError`]: a bad address, facility or certificate file.
    pub fn from_config(c: &SyslogConfig) -> Result<Option<Self>, SinkConfigError> {
        if c.address.is_empty() {
            return Ok(None);
        }
        let (host, port) = super::split_host_port(&c.address)?;
        let facility = c.facility_code().ok_or_else(|| SinkConfigError::Facility {
            facility: c.facility.clone(),
        })?;
        let tls = if c.transport == SyslogTransport::Tls {
            let client = (!c.cert_file.is_empty()).then_some((c.cert_file.as_str(), c.key_file.as_str()));
            Some(tokio_rustls::TlsConnector::from(super::tls::client_config(
                &c.ca_file, client,
            )?))
        } else {
            None
        };
        Ok(Some(Self {
            host,
            port,
            transport: c.transport,
            facility,
            tls,
            conn: None,
        }))
    }

    /// The facility number.
    #[must_use]
    pub fn facility(&self) -> u8 {
        self.facility
    }

    /// `transport://host:port`, for status and logs.
    #[must_use]
    pub fn shown(&self) -> String {
        let t = match self.transport {
            SyslogTransport::Udp => "udp",
            SyslogTransport::Tcp => "tcp",
            SyslogTransport::Tls => "tls",
        };
        if self.host.contains(':') {
            format!("{t}://[{}]:{}", self.host, self.port)
        } else {
            format!("{t}://{}:{}", self.host, self.port)
        }
    }

    async fn connect(&self) -> Result<Conn, DeliveryError> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((self.host.as_str(), self.port)))
            .await
            .map_err(|_| DeliveryError::ConnectTimeout { target: self.shown() })?
            .map_err(|source| DeliveryError::Connect {
                target: self.shown(),
                source,
            })?;
        match &self.tls {
            None => Ok(Conn::Tcp(tcp)),
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from(self.host.clone()).map_err(|source| {
                    DeliveryError::ServerName {
                        host: self.host.clone(),
                        source,
                    }
                })?;
                let s = tokio::time::timeout(CONNECT_TIMEOUT, tls.connect(name, tcp))
                    .await
                    .map_err(|_| DeliveryError::TlsTimeout)?
                    .map_err(DeliveryError::Tls)?;
                Ok(Conn::Tls(Box::new(s)))
            }
        }
    }

    /// Sends one syslog message (RFC 5424 bytes). Over TCP and TLS the
    /// connection is kept for the next messages; when writing to a kept
    /// connection fails, the message is sent again over a new one.
    ///
    /// # Errors
    /// Why it could not be sent; the connection is dropped and made again
    /// at the next attempt.
    pub async fn send(&mut self, msg: &[u8]) -> Result<(), DeliveryError> {
        if self.transport == SyslogTransport::Udp {
            let addr = tokio::net::lookup_host((self.host.as_str(), self.port))
                .await
                .map_err(|source| DeliveryError::Resolve {
                    target: self.shown(),
                    source,
                })?
                .next()
                .ok_or_else(|| DeliveryError::NoAddress { target: self.shown() })?;
            let local: std::net::SocketAddr = if addr.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let sock = UdpSocket::bind(local).await.map_err(DeliveryError::UdpSocket)?;
            sock.send_to(msg, addr)
                .await
                .map_err(|source| DeliveryError::UdpSend { addr, source })?;
            return Ok(());
        }
        // RFC 6587 octet counting (also RFC 5425 over TLS): "LEN SP MSG".
        let mut frame = format!("{} ", msg.len()).into_bytes();
        frame.extend_from_slice(msg);
        // The connection is kept from message to message; one the collector
        // closed is closed here too, cleanly, and made again.
        let kept = match self.conn.take() {
            Some(mut c) => {
                if c.alive() {
                    Some(c)
                } else {
                    c.close().await;
                    None
                }
            }
            None => None,
        };
        let reused = kept.is_some();
        let mut conn = match kept {
            Some(c) => c,
            None => self.connect().await?,
        };
        if let Err(e) = conn.write(&frame).await {
            drop(conn);
            if !reused {
                return Err(DeliveryError::Write {
                    target: self.shown(),
                    source: e,
                });
            }
            // The kept connection broke: this one message again, over a new one.
            tracing::debug!(target = %self.shown(), error = %e, "syslog connection lost; reconnecting");
            conn = self.connect().await?;
            conn.write(&frame).await.map_err(|source| DeliveryError::Write {
                target: self.shown(),
                source,
            })?;
        }
        self.conn = Some(conn);
        Ok(())
    }
}
