//! The web console and its JSON API for the people of the site (`[web]`,
//! docs/OPERATIONS.md "The web console").
//!
//! `medmesh run` serves, over HTTPS ([`server`], rustls), the console's
//! pages ([`console`]) and `/api/v1`, which is the admin API's route table
//! served to people and machine clients: one implementation of each
//! operation, checked against the caller's roles ([`crate::access`]) on
//! every request. People log in at the site's OpenID provider
//! ([`oidc`]: authorization code flow with PKCE, a second factor
//! required, roles from a claim) and get a session ([`session`]: cookie,
//! CSRF token, idle and absolute timeouts, logout at the provider too);
//! machine clients present the provider's JWT access tokens ([`bearer`]).
//! Each person's action is in the ledger (`person-acted`) with their keyed
//! reference and role.

pub mod bearer;
pub mod console;
pub mod http;
pub mod oidc;
pub mod server;
pub mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::api::route::Ctx;

/// Errors of starting the web listener.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebError {
    /// The address cannot be bound.
    #[error("web.listen {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The certificate or key cannot be used.
    #[error("web.tls_cert/tls_key: {0}")]
    Tls(#[from] crate::gateway::tls::TlsError),
    /// The provider's settings cannot be used.
    #[error(transparent)]
    Oidc(#[from] oidc::OidcError),
}

/// A web listener bound and ready to serve.
#[derive(Debug)]
pub struct Bound {
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    provider: oidc::Provider,
    /// The address bound (its port chosen by the system when 0 was asked).
    pub addr: SocketAddr,
}

/// Binds `[web] listen` and loads the certificate, key and provider
/// settings; `None` when the console is off.
///
/// # Errors
/// [`WebError`] naming the setting.
pub async fn bind(config: &crate::config::Config) -> Result<Option<Bound>, WebError> {
    let web = &config.web;
    let (Some(listen), Some(cert), Some(key), Some(oidc)) = (web.listen, &web.tls_cert, &web.tls_key, &web.oidc) else {
        return Ok(None);
    };
    let tls = crate::gateway::tls::server_config(cert, key, None)?;
    let provider = oidc::Provider::new(web, oidc)?;
    let listener = server::bind(listen).await?;
    let addr = listener
        .local_addr()
        .map_err(|source| WebError::Bind { addr: listen, source })?;
    if !addr.ip().is_loopback() {
        tracing::info!(%addr, "web console listening on the network");
    }
    Ok(Some(Bound {
        listener,
        tls,
        provider,
        addr,
    }))
}

/// Serves a bound listener until `shutdown`.
pub async fn serve(bound: Bound, ctx: Ctx, shutdown: watch::Receiver<bool>) {
    let web = ctx.node().config().web.clone();
    let origin = web
        .oidc
        .as_ref()
        .and_then(|o| url::Url::parse(&o.redirect_url).ok())
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_else(|| format!("https://{}", bound.addr));
    let app = Arc::new(server::App {
        ctx,
        provider: bound.provider,
        sessions: session::Sessions::new(
            Duration::from_secs(u64::from(web.session_idle_secs)),
            Duration::from_secs(u64::from(web.session_max_secs)),
        ),
        origin,
    });
    tracing::info!(addr = %bound.addr, "web console and API listening");
    server::serve(bound.listener, bound.tls, app, shutdown).await;
}
