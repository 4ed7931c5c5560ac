//! Login at the site's OpenID provider (the `openidconnect` crate):
//! discovery, the authorization code flow with PKCE (S256), a nonce and a
//! state, the ID token checked (signature against the provider's keys,
//! issuer, audience, expiry, nonce), the second factor required by
//! `[web] require_mfa` (`amr`/`acr`), the roles claim mapped to site roles,
//! and RP-initiated logout. Bearer tokens of machine clients are checked in
//! [`super::bearer`] against the same provider's keys.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreErrorResponseType, CoreGenderClaim, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet, EndpointSet, IdTokenFields,
    IssuerUrl, LogoutRequest, Nonce, PkceCodeChallenge, PkceCodeVerifier, PostLogoutRedirectUrl,
    ProviderMetadataWithLogout, RedirectUrl, Scope, StandardErrorResponse, StandardTokenResponse, TokenResponse,
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::http::{Client as Http, HttpError};
use crate::access::SiteRole;
use crate::config::web::{OidcConfig, WebConfig};

/// The claims of an ID token beyond the standard ones, kept as they came
/// (the roles claim is read from them by its configured name).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Extra {
    /// Every claim not read by the crate.
    #[serde(flatten)]
    pub claims: BTreeMap<String, serde_json::Value>,
}

impl openidconnect::AdditionalClaims for Extra {}

type Fields = IdTokenFields<
    Extra,
    openidconnect::EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type Tokens = StandardTokenResponse<Fields, CoreTokenType>;
/// The ID token as this module reads it.
pub type IdToken =
    openidconnect::IdToken<Extra, CoreGenderClaim, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm>;
type OidcClient = openidconnect::Client<
    Extra,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    Tokens,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// How long discovered metadata and keys are used before being read again.
const METADATA_TTL: Duration = Duration::from_secs(3600);
/// Keys are read again on an unknown key id at most this often.
const KEYS_REFRESH_MIN: Duration = Duration::from_secs(30);

/// Why the provider could not be used, or a login was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OidcError {
    /// The client secret file cannot be read.
    #[error("web.oidc.client_secret_file {file}: {source}")]
    Secret {
        /// The file.
        file: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A configured URL is not one.
    #[error("web.oidc.{key}: {value:?} is not a URL")]
    Url {
        /// The key.
        key: &'static str,
        /// The value.
        value: String,
    },
    /// Discovery or the key set failed.
    #[error("reading the OpenID provider {issuer}: {}", error_chain(source))]
    Discovery {
        /// The issuer.
        issuer: String,
        /// The cause.
        source: Box<openidconnect::DiscoveryError<HttpError>>,
    },
    /// The provider's TLS roots cannot be loaded.
    #[error("web.oidc.ca_file: {0}")]
    Tls(#[from] crate::gateway::tls::TlsError),
    /// The provider's metadata names no token endpoint.
    #[error("the OpenID provider names no token endpoint: {0}")]
    NoTokenEndpoint(#[source] openidconnect::ConfigurationError),
    /// The code could not be exchanged.
    #[error("the OpenID provider refused the code exchange: {}", error_chain(.0))]
    Exchange(#[source] Box<openidconnect::RequestTokenError<HttpError, StandardErrorResponse<CoreErrorResponseType>>>),
    /// The token answer has no ID token.
    #[error("the OpenID provider sent no ID token")]
    NoIdToken,
    /// The ID token is not valid.
    #[error("the ID token is not valid: {0}")]
    IdToken(#[source] openidconnect::ClaimsVerificationError),
    /// The login showed no second factor.
    #[error(
        "this login used no second factor (amr {amr:?}, acr {acr:?}); the site requires multi-factor authentication: log in again with your second factor"
    )]
    NoMfa {
        /// The `amr` values.
        amr: Vec<String>,
        /// The `acr` value.
        acr: Option<String>,
    },
    /// The person holds no role of this site.
    #[error("your account holds no medmesh role at this site (claim {claim:?}); ask the site's administrator")]
    NoRole {
        /// The claim read.
        claim: String,
    },
}

/// A person who logged in.
#[derive(Clone)]
pub struct Login {
    /// The provider's issuer.
    pub issuer: String,
    /// The provider's subject (never logged; the ledger has its keyed reference).
    pub subject: String,
    /// A display name, when the provider gives one.
    pub name: Option<String>,
    /// Their site roles.
    pub roles: Vec<SiteRole>,
    /// The raw ID token, as the logout hint.
    pub id_token: Zeroizing<String>,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

/// A login begun: what the callback needs to finish it.
pub struct Pending {
    /// The PKCE verifier.
    pub verifier: PkceCodeVerifier,
    /// The nonce the ID token must carry.
    pub nonce: Nonce,
    /// The `state` the callback must bring back.
    pub state: String,
    /// The console page to return to.
    pub return_to: String,
    /// When it began.
    pub started: Instant,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("return_to", &self.return_to)
            .finish_non_exhaustive()
    }
}

struct Discovered {
    meta: ProviderMetadataWithLogout,
    fetched: Instant,
}

/// The site's provider, as configured, discovered lazily (a provider down
/// at start does not stop the node: each login tries again).
pub struct Provider {
    oidc: OidcConfig,
    web: WebConfig,
    secret: ClientSecret,
    http: Http,
    issuer: IssuerUrl,
    redirect: RedirectUrl,
    discovered: tokio::sync::Mutex<Option<Arc<Discovered>>>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("issuer", &self.oidc.issuer)
            .finish_non_exhaustive()
    }
}

impl Provider {
    /// The provider of `web` (which has `[web.oidc]`): reads the client
    /// secret and the TLS roots now, the metadata at first use.
    ///
    /// # Errors
    /// [`OidcError`] naming the setting.
    pub fn new(web: &WebConfig, oidc: &OidcConfig) -> Result<Self, OidcError> {
        let secret = std::fs::read_to_string(&oidc.client_secret_file).map_err(|source| OidcError::Secret {
            file: oidc.client_secret_file.display().to_string(),
            source,
        })?;
        let secret = Zeroizing::new(secret);
        let tls = match &oidc.ca_file {
            Some(ca) => crate::gateway::tls::client_config(ca, None)?,
            None => crate::gateway::tls::client_config_system_roots(None)?,
        };
        let issuer = IssuerUrl::new(oidc.issuer.clone()).map_err(|_| OidcError::Url {
            key: "issuer",
            value: oidc.issuer.clone(),
        })?;
        let redirect = RedirectUrl::new(oidc.redirect_url.clone()).map_err(|_| OidcError::Url {
            key: "redirect_url",
            value: oidc.redirect_url.clone(),
        })?;
        Ok(Self {
            oidc: oidc.clone(),
            web: web.clone(),
            secret: ClientSecret::new(secret.trim().to_owned()),
            http: Http::new(tls),
            issuer,
            redirect,
            discovered: tokio::sync::Mutex::new(None),
        })
    }

    /// The issuer URL.
    #[must_use]
    pub fn issuer(&self) -> &str {
        self.issuer.as_str()
    }

    /// The metadata and keys, read again when older than an hour, or (with
    /// `refresh`) when older than [`KEYS_REFRESH_MIN`].
    async fn discovered(&self, refresh: bool) -> Result<Arc<Discovered>, OidcError> {
        let mut slot = self.discovered.lock().await;
        if let Some(d) = slot.as_ref() {
            let age = d.fetched.elapsed();
            if age < METADATA_TTL && !(refresh && age > KEYS_REFRESH_MIN) {
                return Ok(Arc::clone(d));
            }
        }
        let meta = ProviderMetadataWithLogout::discover_async(self.issuer.clone(), &self.http)
            .await
            .map_err(|e| OidcError::Discovery {
                issuer: self.oidc.issuer.clone(),
                source: Box::new(e),
            })?;
        let d = Arc::new(Discovered {
            meta,
            fetched: Instant::now(),
        });
        *slot = Some(Arc::clone(&d));
        Ok(d)
    }

    fn client(&self, d: &Discovered) -> OidcClient {
        OidcClient::from_provider_metadata(
            d.meta.clone(),
            ClientId::new(self.oidc.client_id.clone()),
            Some(self.secret.clone()),
        )
        .set_redirect_uri(self.redirect.clone())
    }

    /// Begins a login: the provider's authorization URL to send the browser
    /// to, and what the callback needs.
    ///
    /// # Errors
    /// [`OidcError::Discovery`] when the provider cannot be read.
    pub async fn begin(&self, return_to: String) -> Result<(String, Pending), OidcError> {
        let d = self.discovered(false).await?;
        let client = self.client(&d);
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        for s in &self.oidc.scopes {
            req = req.add_scope(Scope::new(s.clone()));
        }
        if !self.web.mfa_acr.is_empty() {
            req = req.add_extra_param("acr_values", self.web.mfa_acr.join(" "));
        }
        let (url, state, nonce) = req.url();
        Ok((
            url.to_string(),
            Pending {
                verifier,
                nonce,
                state: state.secret().clone(),
                return_to,
                started: Instant::now(),
            },
        ))
    }

    /// Finishes a login with the callback's `code`.
    ///
    /// # Errors
    /// [`OidcError`]: the exchange failed, the ID token is not valid, no
    /// second factor, no role.
    pub async fn finish(&self, pending: Pending, code: String) -> Result<Login, OidcError> {
        let d = self.discovered(false).await?;
        let client = self.client(&d);
        let tokens = client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(OidcError::NoTokenEndpoint)?
            .set_pkce_verifier(pending.verifier)
            .request_async(&self.http)
            .await
            .map_err(|e| OidcError::Exchange(Box::new(e)))?;
        let id_token = tokens.id_token().ok_or(OidcError::NoIdToken)?.clone();
        let verify = |client: &OidcClient| id_token.claims(&client.id_token_verifier(), &pending.nonce).cloned();
        let claims = match verify(&client) {
            Ok(c) => c,
            // Keys rotated since they were read: read them again once.
            Err(_) => {
                let d = self.discovered(true).await?;
                verify(&self.client(&d)).map_err(OidcError::IdToken)?
            }
        };
        let amr: Vec<String> = claims
            .auth_method_refs()
            .map(|v| v.iter().map(|a| a.as_str().to_owned()).collect())
            .unwrap_or_default();
        let acr = claims.auth_context_ref().map(|a| a.as_str().to_owned());
        if self.web.require_mfa && !mfa_shown(&self.web, &amr, acr.as_deref()) {
            return Err(OidcError::NoMfa { amr, acr });
        }
        let roles = self.web.roles.roles_of(
            claim_values(&claims.additional_claims().claims, &self.web.roles.claim)
                .iter()
                .map(String::as_str),
        );
        if roles.is_empty() {
            return Err(OidcError::NoRole {
                claim: self.web.roles.claim.clone(),
            });
        }
        let name = claims
            .name()
            .and_then(|n| n.get(None))
            .map(|n| n.as_str().to_owned())
            .or_else(|| claims.preferred_username().map(|u| u.as_str().to_owned()));
        Ok(Login {
            issuer: self.oidc.issuer.clone(),
            subject: claims.subject().as_str().to_owned(),
            name,
            roles,
            id_token: Zeroizing::new(id_token.to_string()),
        })
    }

    /// The provider's logout URL for a session (RP-initiated logout), that
    /// sends the browser back to `after`; `None` when the provider offers
    /// no end-session endpoint.
    pub async fn logout_url(&self, id_token: &str, after: &str) -> Option<String> {
        let d = self.discovered(false).await.ok()?;
        let end = d.meta.additional_metadata().end_session_endpoint.clone()?;
        let mut req = LogoutRequest::from(end).set_client_id(ClientId::new(self.oidc.client_id.clone()));
        if let Ok(token) = id_token.parse::<IdToken>() {
            req = req.set_id_token_hint(&token);
        }
        if let Ok(after) = PostLogoutRedirectUrl::new(after.to_owned()) {
            req = req.set_post_logout_redirect_uri(after);
        }
        Some(req.http_get_url().to_string())
    }

    /// The provider's signing keys (for bearer tokens), read again when
    /// `refresh` and not read in the last [`KEYS_REFRESH_MIN`].
    ///
    /// # Errors
    /// [`OidcError::Discovery`].
    pub async fn keys(&self, refresh: bool) -> Result<Vec<CoreJsonWebKey>, OidcError> {
        Ok(self.discovered(refresh).await?.meta.jwks().keys().clone())
    }

    /// The settings.
    #[must_use]
    pub fn web(&self) -> &WebConfig {
        &self.web
    }
}

/// Whether `amr`/`acr` show a second factor by `web`'s lists.
#[must_use]
pub fn mfa_shown(web: &WebConfig, amr: &[String], acr: Option<&str>) -> bool {
    amr.iter().any(|a| web.mfa_amr.iter().any(|m| m == a)) || acr.is_some_and(|a| web.mfa_acr.iter().any(|m| m == a))
}

/// The string values of claim `name`: one string, or the strings of an
/// array (anything else: none).
#[must_use]
pub fn claim_values(claims: &BTreeMap<String, serde_json::Value>, name: &str) -> Vec<String> {
    match claims.get(name) {
        Some(serde_json::Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
        _ => Vec::new(),
    }
}

/// An error and its causes, on one line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}
