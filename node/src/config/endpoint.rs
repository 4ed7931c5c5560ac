//! The addresses `[notify]` names (the webhook's URL, the syslog
//! collector's `host:port`): parsed and checked here, where the
//! configuration is loaded, and used by `notify` to deliver.

use super::Secret;

/// Why an address of `[notify]` cannot be used. No secret is shown: URLs
/// appear without their user information and query ([`redact_url`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// The webhook URL does not parse.
    #[error("{shown:?} is not a URL: {source}")]
    NotUrl {
        /// The URL, redacted.
        shown: String,
        /// The parser's reason.
        source: hyper::http::uri::InvalidUri,
    },
    /// The webhook URL is neither http:// nor https://.
    #[error("{shown:?}: the scheme must be http:// or https://")]
    Scheme {
        /// The URL, redacted.
        shown: String,
    },
    /// The webhook URL names no host.
    #[error("{shown:?} has no host")]
    NoHost {
        /// The URL, redacted.
        shown: String,
    },
    /// The webhook URL holds `user:password@`.
    #[error("must not hold credentials (user:password@): use token")]
    Credentials,
    /// A token would be sent over plain http:// across the network.
    #[error(
        "notify.webhook.token is set but the URL {shown} is plain http://: the token would cross the network \
         in clear text; use an https:// URL (http:// with a token is accepted only to 127.0.0.1, ::1 or \
         localhost)"
    )]
    TokenInClear {
        /// The URL without its query.
        shown: String,
    },
    /// The syslog address is not `host:port`.
    #[error("{address:?} is not host:port (e.g. \"audit.example.org:6514\")")]
    NotHostPort {
        /// The address as configured.
        address: String,
    },
}

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
    /// [`EndpointError`]: why the URL is not acceptable.
    pub fn parse(url: &str) -> Result<Self, EndpointError> {
        let shown = redact_url(url);
        let uri: hyper::Uri = match url.parse() {
            Ok(uri) => uri,
            Err(source) => return Err(EndpointError::NotUrl { shown, source }),
        };
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(EndpointError::Scheme { shown }),
        };
        let Some(auth) = uri.authority() else {
            return Err(EndpointError::NoHost { shown });
        };
        if auth.as_str().contains('@') {
            return Err(EndpointError::Credentials);
        }
        let host = auth.host().trim_start_matches('[').trim_end_matches(']').to_string();
        if host.is_empty() {
            return Err(EndpointError::NoHost { shown });
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
    /// [`EndpointError::TokenInClear`], naming `notify.webhook.token`.
    pub fn check_token(&self, token: &Secret) -> Result<(), EndpointError> {
        if token.is_empty() || self.https || self.is_loopback() {
            return Ok(());
        }
        Err(EndpointError::TokenInClear { shown: self.shown() })
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

/// Splits `host:port` (`[v6]:port` for IPv6).
///
/// # Errors
/// [`EndpointError::NotHostPort`].
pub fn split_host_port(address: &str) -> Result<(String, u16), EndpointError> {
    let bad = || EndpointError::NotHostPort {
        address: address.to_string(),
    };
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let host = match host.strip_prefix('[') {
        Some(h) => h.strip_suffix(']').ok_or_else(bad)?,
        None if host.contains(':') => return Err(bad()),
        None => host,
    };
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 || host.chars().any(char::is_whitespace) {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}
