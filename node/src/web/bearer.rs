//! OAuth 2 bearer tokens of machine clients (RFC 6750): a JWT access token
//! of the site's provider (RFC 9068), checked here: signed (RS/PS/ES/EdDSA,
//! never `none` or a shared-secret HMAC) by a key the provider publishes,
//! issued by the configured issuer, for `[web.api] audience`, not expired
//! nor used before its time, holding `[web.api] scope`, and carrying a role
//! of this site in the roles claim. Each refusal says which check failed.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::core::{CoreJsonWebKey, CoreJwsSigningAlgorithm};
use openidconnect::{JsonWebKey, JsonWebKeyId};

use super::oidc::{Provider, claim_values};
use crate::access::SiteRole;

/// Seconds of clock difference tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: i64 = 2;

/// Why a bearer token was refused. [`BearerError::status`] is 401 for a
/// token that is not valid, 403 for a valid one that does not allow the API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BearerError {
    /// Not a compact JWS.
    #[error("the token is not a JWT")]
    Malformed,
    /// Its header names no usable algorithm.
    #[error("the token's algorithm {alg:?} is not accepted (asymmetric signatures only)")]
    Algorithm {
        /// The `alg` of its header.
        alg: String,
    },
    /// Another issuer.
    #[error("the token was issued by {found:?}, not by this site's provider {expected:?}")]
    Issuer {
        /// `iss`.
        found: String,
        /// The configured issuer.
        expected: String,
    },
    /// No published key verifies it.
    #[error("the token's signature does not verify with the provider's keys")]
    Signature,
    /// The provider's keys could not be read.
    #[error("the provider's keys cannot be read now: {0}")]
    Keys(#[source] Box<super::oidc::OidcError>),
    /// Another audience.
    #[error("the token is for audience {found:?}, not {expected:?}")]
    Audience {
        /// `aud`.
        found: Vec<String>,
        /// The configured audience.
        expected: String,
    },
    /// Expired.
    #[error("the token expired {0} s ago")]
    Expired(i64),
    /// Not yet valid, or no `exp`.
    #[error("the token has no valid time span (exp, nbf)")]
    Time,
    /// No `sub`.
    #[error("the token has no subject")]
    NoSubject,
    /// The scope is missing.
    #[error("the token lacks the scope {scope:?}")]
    Scope {
        /// The scope required.
        scope: String,
    },
    /// No role of this site.
    #[error("the token carries no medmesh role of this site (claim {claim:?})")]
    NoRole {
        /// The roles claim read.
        claim: String,
    },
}

impl BearerError {
    /// The HTTP status: 401 for an invalid token, 403 for an insufficient one.
    #[must_use]
    pub fn status(&self) -> u16 {
        match self {
            Self::Scope { .. } | Self::NoRole { .. } => 403,
            _ => 401,
        }
    }

    /// The RFC 6750 error code of the `WWW-Authenticate` header.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::Scope { .. } | Self::NoRole { .. } => "insufficient_scope",
            _ => "invalid_token",
        }
    }
}

/// A token that passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bearer {
    /// `sub`.
    pub subject: String,
    /// The site roles of its roles claim.
    pub roles: Vec<SiteRole>,
}

/// The parts of a compact JWS, decoded.
struct Jws {
    alg: String,
    kid: Option<String>,
    claims: BTreeMap<String, serde_json::Value>,
    signed: Vec<u8>,
    signature: Vec<u8>,
}

fn decode(token: &str) -> Result<Jws, BearerError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(BearerError::Malformed);
    };
    let b64 = |x: &str| URL_SAFE_NO_PAD.decode(x).map_err(|_| BearerError::Malformed);
    let header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&b64(h)?).map_err(|_| BearerError::Malformed)?;
    let claims = serde_json::from_slice(&b64(p)?).map_err(|_| BearerError::Malformed)?;
    let alg = header
        .get("alg")
        .and_then(|a| a.as_str())
        .ok_or(BearerError::Malformed)?
        .to_owned();
    Ok(Jws {
        alg,
        kid: header.get("kid").and_then(|k| k.as_str()).map(str::to_owned),
        claims,
        signed: format!("{h}.{p}").into_bytes(),
        signature: b64(s)?,
    })
}

/// The asymmetric algorithm `alg` names.
fn algorithm(alg: &str) -> Result<CoreJwsSigningAlgorithm, BearerError> {
    let parsed: CoreJwsSigningAlgorithm = serde_json::from_value(serde_json::Value::String(alg.to_owned()))
        .map_err(|_| BearerError::Algorithm { alg: alg.to_owned() })?;
    match parsed {
        CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256
        | CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384
        | CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512
        | CoreJwsSigningAlgorithm::RsaSsaPssSha256
        | CoreJwsSigningAlgorithm::RsaSsaPssSha384
        | CoreJwsSigningAlgorithm::RsaSsaPssSha512
        | CoreJwsSigningAlgorithm::EcdsaP256Sha256
        | CoreJwsSigningAlgorithm::EcdsaP384Sha384
        | CoreJwsSigningAlgorithm::EdDsa => Ok(parsed),
        _ => Err(BearerError::Algorithm { alg: alg.to_owned() }),
    }
}

fn verifies(keys: &[CoreJsonWebKey], jws: &Jws, alg: &CoreJwsSigningAlgorithm) -> bool {
    keys.iter()
        .filter(|k| match (&jws.kid, k.key_id()) {
            (Some(kid), Some(id)) => *id == JsonWebKeyId::new(kid.clone()),
            _ => true,
        })
        .any(|k| k.verify_signature(alg, &jws.signed, &jws.signature).is_ok())
}

/// The claims of a token whose form and algorithm are acceptable, before
/// any signature check (what [`check`] reads first; the fuzz target's entry).
///
/// # Errors
/// [`BearerError::Malformed`], [`BearerError::Algorithm`].
pub fn unverified_claims(token: &str) -> Result<BTreeMap<String, serde_json::Value>, BearerError> {
    let jws = decode(token)?;
    algorithm(&jws.alg)?;
    Ok(jws.claims)
}

/// Checks `token` against `provider` at Unix time `now`.
///
/// # Errors
/// [`BearerError`] naming the check that failed.
pub async fn check(provider: &Provider, token: &str, now: i64) -> Result<Bearer, BearerError> {
    let jws = decode(token)?;
    let alg = algorithm(&jws.alg)?;
    let issuer = jws.claims.get("iss").and_then(|v| v.as_str()).unwrap_or_default();
    if issuer.trim_end_matches('/') != provider.issuer().trim_end_matches('/') {
        return Err(BearerError::Issuer {
            found: issuer.to_owned(),
            expected: provider.issuer().to_owned(),
        });
    }
    let keys = provider.keys(false).await.map_err(|e| BearerError::Keys(Box::new(e)))?;
    if !verifies(&keys, &jws, &alg) {
        // The provider may have rotated its keys since they were read.
        let keys = provider.keys(true).await.map_err(|e| BearerError::Keys(Box::new(e)))?;
        if !verifies(&keys, &jws, &alg) {
            return Err(BearerError::Signature);
        }
    }
    check_claims(provider.web(), &jws.claims, now)
}

/// The checks of a verified token's claims (pure: table-tested).
///
/// # Errors
/// [`BearerError`] naming the check that failed.
pub fn check_claims(
    web: &crate::config::web::WebConfig,
    claims: &BTreeMap<String, serde_json::Value>,
    now: i64,
) -> Result<Bearer, BearerError> {
    let audiences = claim_values(claims, "aud");
    if !audiences.contains(&web.api.audience) {
        return Err(BearerError::Audience {
            found: audiences,
            expected: web.api.audience.clone(),
        });
    }
    let exp = claims
        .get("exp")
        .and_then(serde_json::Value::as_i64)
        .ok_or(BearerError::Time)?;
    if now > exp + LEEWAY_SECS {
        return Err(BearerError::Expired(now - exp));
    }
    if let Some(nbf) = claims.get("nbf").and_then(serde_json::Value::as_i64)
        && now + LEEWAY_SECS < nbf
    {
        return Err(BearerError::Time);
    }
    let subject = claims
        .get("sub")
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .ok_or(BearerError::NoSubject)?
        .to_owned();
    // `scope` (RFC 9068: space-separated) or `scp` (an array, some providers).
    let mut scopes = claim_values(claims, "scope");
    scopes.extend(claim_values(claims, "scp"));
    if !scopes.contains(&web.api.scope) {
        return Err(BearerError::Scope {
            scope: web.api.scope.clone(),
        });
    }
    let roles = web
        .roles
        .roles_of(claim_values(claims, &web.roles.claim).iter().map(String::as_str));
    if roles.is_empty() {
        return Err(BearerError::NoRole {
            claim: web.roles.claim.clone(),
        });
    }
    Ok(Bearer { subject, roles })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::web::WebConfig;

    fn claims(v: serde_json::Value) -> BTreeMap<String, serde_json::Value> {
        serde_json::from_value(v).unwrap()
    }

    /// Each claim check, one row each: what the token holds, what comes out.
    #[test]
    fn claim_checks_table() {
        let web = WebConfig::default();
        let now = 1_800_000_000;
        let good = serde_json::json!({
            "sub": "svc-1", "aud": "medmesh-api", "exp": now + 60, "scope": "openid medmesh.api",
            "roles": ["auditor"]
        });
        let with = |k: &str, v: serde_json::Value| {
            let mut c = good.clone();
            c[k] = v;
            claims(c)
        };
        let without = |k: &str| {
            let mut c = claims(good.clone());
            c.remove(k);
            c
        };
        type Row = (
            &'static str,
            BTreeMap<String, serde_json::Value>,
            Result<Vec<SiteRole>, u16>,
        );
        let rows: Vec<Row> = vec![
            ("valid", claims(good.clone()), Ok(vec![SiteRole::Auditor])),
            (
                "audience array",
                with("aud", serde_json::json!(["x", "medmesh-api"])),
                Ok(vec![SiteRole::Auditor]),
            ),
            ("wrong audience", with("aud", serde_json::json!("other-api")), Err(401)),
            ("no audience", without("aud"), Err(401)),
            ("expired", with("exp", serde_json::json!(now - 10)), Err(401)),
            (
                "expired within leeway",
                with("exp", serde_json::json!(now - 1)),
                Ok(vec![SiteRole::Auditor]),
            ),
            ("no exp", without("exp"), Err(401)),
            (
                "not before the future",
                with("nbf", serde_json::json!(now + 100)),
                Err(401),
            ),
            ("no subject", without("sub"), Err(401)),
            ("no scope", with("scope", serde_json::json!("openid")), Err(403)),
            (
                "scp array",
                {
                    let mut c = without("scope");
                    c.insert("scp".into(), serde_json::json!(["medmesh.api"]));
                    c
                },
                Ok(vec![SiteRole::Auditor]),
            ),
            ("no role", without("roles"), Err(403)),
            (
                "unknown role only",
                with("roles", serde_json::json!(["janitor"])),
                Err(403),
            ),
            (
                "two roles",
                with("roles", serde_json::json!(["clinician", "auditor"])),
                Ok(vec![SiteRole::Clinician, SiteRole::Auditor]),
            ),
        ];
        for (name, c, want) in rows {
            let got = check_claims(&web, &c, now).map(|b| b.roles).map_err(|e| e.status());
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn only_asymmetric_algorithms() {
        for ok in ["RS256", "PS256", "ES256", "ES384", "EdDSA"] {
            assert!(algorithm(ok).is_ok(), "{ok}");
        }
        for bad in ["none", "HS256", "HS512", "XX1"] {
            assert!(
                matches!(algorithm(bad), Err(BearerError::Algorithm { alg }) if alg == bad),
                "{bad}"
            );
        }
    }

    #[test]
    fn malformed_tokens() {
        for t in ["", "a.b", "a.b.c.d", "!!.!!.!!", "e30.e30.", "bm90IGpzb24.e30.AA"] {
            assert!(decode(t).is_err(), "{t}");
        }
    }
}
