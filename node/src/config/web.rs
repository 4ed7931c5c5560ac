//! `[web]`: the web console and its JSON API over HTTPS (the `web` module),
//! with login at the site's OpenID provider (`[web.oidc]`), the mapping of
//! the provider's role claim to site roles (`[web.roles]`) and the bearer
//! tokens machine clients present (`[web.api]`).
//!
//! ```toml
//! [web]
//! listen = "0.0.0.0:8443"
//! tls_cert = "/etc/medmesh/web.crt"
//! tls_key = "/etc/medmesh/web.key"
//! require_mfa = true
//!
//! [web.oidc]
//! issuer = "https://idp.example.org/realms/hospital"
//! client_id = "medmesh"
//! client_secret_file = "/etc/medmesh/oidc-secret"
//! redirect_url = "https://medmesh.example.org:8443/auth/callback"
//!
//! [web.roles]
//! claim = "roles"
//! [web.roles.map]
//! "imaging-stewards" = "data-steward"
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::access::SiteRole;

/// The web settings (`[web]`). Off while `listen` is absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// `address:port` of the HTTPS listener; absent = no console, no API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain of the listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// A login must show a second factor: the ID token's `amr` holds one of
    /// `mfa_amr`, or its `acr` is one of `mfa_acr`.
    pub require_mfa: bool,
    /// Authentication method references (RFC 8176) that count as a second
    /// factor.
    pub mfa_amr: Vec<String>,
    /// Authentication context class references that count as multi-factor
    /// (asked of the provider with `acr_values` when not empty).
    pub mfa_acr: Vec<String>,
    /// Seconds a console session lives without being used.
    pub session_idle_secs: u32,
    /// Seconds a console session lives at most, used or not.
    pub session_max_secs: u32,
    /// The site's OpenID provider (required when `listen` is set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oidc: Option<OidcConfig>,
    /// Which claim carries a person's roles and how its values map to site roles.
    pub roles: RolesConfig,
    /// What a bearer token must carry to use the API.
    pub api: ApiConfig,
}

/// The values of RFC 8176 that name a factor beyond a password.
pub const DEFAULT_MFA_AMR: [&str; 12] = [
    "mfa", "otp", "hwk", "swk", "sms", "tel", "fpt", "face", "iris", "retina", "vbm", "sc",
];

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            listen: None,
            tls_cert: None,
            tls_key: None,
            require_mfa: true,
            mfa_amr: DEFAULT_MFA_AMR.iter().map(|s| (*s).to_owned()).collect(),
            mfa_acr: Vec::new(),
            session_idle_secs: 1800,
            session_max_secs: 43_200,
            oidc: None,
            roles: RolesConfig::default(),
            api: ApiConfig::default(),
        }
    }
}

/// `[web.oidc]`: the relying party's registration at the provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The issuer URL; its `/.well-known/openid-configuration` is read at
    /// start. `https://`, or `http://` to a loopback address (testing).
    pub issuer: String,
    /// The client id registered for this node.
    pub client_id: String,
    /// A file holding the client secret (mode 0600, outside the config).
    pub client_secret_file: PathBuf,
    /// The callback URL registered at the provider: this listener's
    /// `https://.../auth/callback`.
    pub redirect_url: String,
    /// PEM CA certificates the provider's certificate is checked against
    /// instead of the Mozilla roots (a site's own CA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Scopes asked for beyond `openid`.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
}

fn default_scopes() -> Vec<String> {
    vec!["profile".to_owned()]
}

/// `[web.roles]`: the role claim and its mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RolesConfig {
    /// The claim of the ID token (and of access tokens) holding the roles:
    /// a string or an array of strings.
    pub claim: String,
    /// Claim value → site role. Empty: a value is taken when it spells a
    /// site role (`data-steward`); values that map to nothing are ignored.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub map: BTreeMap<String, SiteRole>,
}

impl Default for RolesConfig {
    fn default() -> Self {
        Self {
            claim: "roles".to_owned(),
            map: BTreeMap::new(),
        }
    }
}

impl RolesConfig {
    /// The site roles that claim values map to, each once, in table order.
    #[must_use]
    pub fn roles_of<'a>(&self, values: impl IntoIterator<Item = &'a str>) -> Vec<SiteRole> {
        let mut roles: Vec<SiteRole> = values
            .into_iter()
            .filter_map(|v| {
                if self.map.is_empty() {
                    v.parse().ok()
                } else {
                    self.map.get(v).copied()
                }
            })
            .collect();
        roles.sort_unstable();
        roles.dedup();
        roles
    }
}

/// `[web.api]`: bearer tokens of machine clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// The audience (`aud`) a token must name.
    pub audience: String,
    /// The scope a token must carry.
    pub scope: String,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            audience: "medmesh-api".to_owned(),
            scope: "medmesh.api".to_owned(),
        }
    }
}

/// What is wrong with a `[web]` setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WebFault {
    /// The listener needs its certificate and key.
    #[error("is set without tls_cert and tls_key: the console is served over HTTPS only")]
    NoTls,
    /// The listener needs a provider.
    #[error("is set without [web.oidc]: people log in at the site's OpenID provider")]
    NoOidc,
    /// Not a URL of the accepted kind.
    #[error("{value:?} is not an {expected} URL")]
    Url {
        /// The value given.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A number out of its range.
    #[error("must be from {min} to {max}")]
    Range {
        /// The least.
        min: u64,
        /// The most.
        max: u64,
    },
    /// MFA required but nothing counts as MFA.
    #[error("is empty while require_mfa = true and mfa_acr is empty: no login could pass")]
    NoMfaValue,
    /// An empty string where a name is needed.
    #[error("is empty")]
    Empty,
}

impl WebConfig {
    /// Checks the settings; `fault(key, why)` makes the error.
    ///
    /// # Errors
    /// The first setting found wrong.
    pub fn check<E>(&self, fault: &impl Fn(&'static str, WebFault) -> E) -> Result<(), E> {
        if self.listen.is_none() {
            return Ok(());
        }
        if self.tls_cert.is_none() || self.tls_key.is_none() {
            return Err(fault("web.listen", WebFault::NoTls));
        }
        let Some(oidc) = &self.oidc else {
            return Err(fault("web.listen", WebFault::NoOidc));
        };
        if !(10..=86_400).contains(&self.session_idle_secs) {
            return Err(fault("web.session_idle_secs", WebFault::Range { min: 10, max: 86_400 }));
        }
        if !(60..=604_800).contains(&self.session_max_secs) {
            return Err(fault("web.session_max_secs", WebFault::Range { min: 60, max: 604_800 }));
        }
        if self.require_mfa && self.mfa_amr.is_empty() && self.mfa_acr.is_empty() {
            return Err(fault("web.mfa_amr", WebFault::NoMfaValue));
        }
        if !secure_or_loopback(&oidc.issuer) {
            return Err(fault(
                "web.oidc.issuer",
                WebFault::Url {
                    value: oidc.issuer.clone(),
                    expected: "https:// (or http:// to a loopback address)",
                },
            ));
        }
        if !oidc.redirect_url.starts_with("https://") || url::Url::parse(&oidc.redirect_url).is_err() {
            return Err(fault(
                "web.oidc.redirect_url",
                WebFault::Url {
                    value: oidc.redirect_url.clone(),
                    expected: "https://",
                },
            ));
        }
        if oidc.client_id.is_empty() {
            return Err(fault("web.oidc.client_id", WebFault::Empty));
        }
        if self.roles.claim.is_empty() {
            return Err(fault("web.roles.claim", WebFault::Empty));
        }
        if self.api.audience.is_empty() {
            return Err(fault("web.api.audience", WebFault::Empty));
        }
        if self.api.scope.is_empty() {
            return Err(fault("web.api.scope", WebFault::Empty));
        }
        Ok(())
    }
}

/// Whether `url` is `https://`, or `http://` to a loopback address.
#[must_use]
pub fn secure_or_loopback(url: &str) -> bool {
    let Ok(u) = url::Url::parse(url) else {
        return false;
    };
    match u.scheme() {
        "https" => u.host().is_some(),
        "http" => match u.host() {
            Some(url::Host::Domain(d)) => d == "localhost",
            Some(url::Host::Ipv4(a)) => IpAddr::V4(a).is_loopback(),
            Some(url::Host::Ipv6(a)) => IpAddr::V6(a).is_loopback(),
            None => false,
        },
        _ => false,
    }
}
