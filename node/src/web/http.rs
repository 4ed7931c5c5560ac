//! The HTTP client the OpenID Connect code calls the provider with
//! (discovery, keys, the token endpoint): one HTTP/1.1 exchange per call
//! over TCP or rustls, no redirects followed (a provider's token endpoint
//! must answer itself), answers of at most [`MAX_ANSWER`] bytes, a
//! deadline of [`TIMEOUT`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Largest answer read from the provider.
pub const MAX_ANSWER: usize = 1024 * 1024;
/// Deadline of one exchange.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call to the provider failed (no secret in it).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The URL has no host, or a scheme other than http and https.
    #[error("{url}: not an http(s) URL with a host")]
    Url {
        /// The URL.
        url: String,
    },
    /// Plain http to a host that is not a loopback address.
    #[error("{url}: plain http is used only to a loopback address")]
    Insecure {
        /// The URL.
        url: String,
    },
    /// The TCP connection failed.
    #[error("connecting to {target}: {source}")]
    Connect {
        /// host:port.
        target: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The TLS handshake failed (certificate not trusted, ...).
    #[error("TLS with {host}: {source}")]
    Tls {
        /// The host.
        host: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The host is not a valid TLS server name.
    #[error("{host}: not a TLS server name")]
    ServerName {
        /// The host.
        host: String,
    },
    /// HTTP failed.
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// The request could not be built.
    #[error("HTTP request: {0}")]
    Request(#[from] hyper::http::Error),
    /// The answer is longer than [`MAX_ANSWER`] or was cut.
    #[error("reading the answer: {0}")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// No answer within [`TIMEOUT`].
    #[error("no answer within {} s", TIMEOUT.as_secs())]
    Timeout,
}

/// The client: trusts `tls`'s roots for https.
#[derive(Clone)]
pub struct Client {
    tls: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Client {
    /// A client using `tls` for https URLs.
    #[must_use]
    pub fn new(tls: Arc<rustls::ClientConfig>) -> Self {
        Self {
            tls: tokio_rustls::TlsConnector::from(tls),
        }
    }

    /// Performs one exchange.
    ///
    /// # Errors
    /// [`HttpError`].
    pub async fn exchange(
        &self,
        request: hyper::http::Request<Vec<u8>>,
    ) -> Result<hyper::http::Response<Vec<u8>>, HttpError> {
        match tokio::time::timeout(TIMEOUT, self.exchange_inner(request)).await {
            Ok(r) => r,
            Err(_) => Err(HttpError::Timeout),
        }
    }

    async fn exchange_inner(
        &self,
        request: hyper::http::Request<Vec<u8>>,
    ) -> Result<hyper::http::Response<Vec<u8>>, HttpError> {
        let uri = request.uri().clone();
        let shown = uri.to_string();
        let host = uri
            .host()
            .ok_or_else(|| HttpError::Url { url: shown.clone() })?
            .to_owned();
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(HttpError::Url { url: shown }),
        };
        if !https && !crate::config::web::secure_or_loopback(&shown) {
            return Err(HttpError::Insecure { url: shown });
        }
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        // An IPv6 literal comes bracketed in the URI.
        let bare = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let tcp = TcpStream::connect((bare.as_str(), port))
            .await
            .map_err(|source| HttpError::Connect {
                target: format!("{host}:{port}"),
                source,
            })?;
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_else(|| host.clone());
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let (mut parts, body) = request.into_parts();
        parts.uri = path.parse().map_err(hyper::http::Error::from)?;
        parts.headers.insert(
            hyper::header::HOST,
            hyper::header::HeaderValue::from_str(&authority).map_err(hyper::http::Error::from)?,
        );
        parts.headers.insert(
            hyper::header::USER_AGENT,
            hyper::header::HeaderValue::from_static(concat!("medmesh/", env!("CARGO_PKG_VERSION"))),
        );
        let request = hyper::Request::from_parts(parts, Full::new(Bytes::from(body)));
        if https {
            let name = rustls::pki_types::ServerName::try_from(bare.clone())
                .map_err(|_| HttpError::ServerName { host: bare.clone() })?;
            let stream = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|source| HttpError::Tls { host: bare, source })?;
            send(stream, request).await
        } else {
            send(tcp, request).await
        }
    }
}

async fn send<S>(io: S, request: hyper::Request<Full<Bytes>>) -> Result<hyper::http::Response<Vec<u8>>, HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let conn = tokio::spawn(conn);
    let result = async {
        let resp = sender.send_request(request).await?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_ANSWER)
            .collect()
            .await
            .map_err(HttpError::Body)?
            .to_bytes();
        Ok(hyper::http::Response::from_parts(parts, body.to_vec()))
    }
    .await;
    conn.abort();
    result
}

impl<'c> openidconnect::AsyncHttpClient<'c> for Client {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<openidconnect::HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: openidconnect::HttpRequest) -> Self::Future {
        Box::pin(self.exchange(request))
    }
}
