//! `[gateway]`: the node as a DICOM Application Entity on the site's
//! network (the `gateway` module): its own AE, the calling AEs it accepts,
//! the destinations it forwards to, the site's PACS and the routing rules.
//!
//! ```toml
//! [gateway]
//! enabled = true
//! ae_title = "MEDMESH"
//! listen = "0.0.0.0:11112"
//! max_associations = 8
//! # tls_cert = "/etc/medmesh/dicom.crt"   # PEM chain; with tls_key: DICOM TLS
//! # tls_key = "/etc/medmesh/dicom.key"
//! # tls_client_ca = "/etc/medmesh/modalities-ca.pem"   # require client certificates
//!
//! [[gateway.calling]]
//! ae_title = "CT01"
//! host = "10.1.2.3"
//!
//! [[gateway.destination]]
//! name = "pacs"
//! ae_title = "PACS"
//! host = "10.1.2.10"
//! port = 104
//!
//! [gateway.pacs]
//! name = "pacs"
//! ae_title = "PACS"
//! host = "10.1.2.10"
//! port = 104
//!
//! [[gateway.route]]
//! destination = "pacs"
//! level = "identified"
//! ```
//!
//! Forwarding retries with back-off (`retry_min_secs`, doubled up to
//! `retry_max_secs`; `give_up_after` failed attempts, 0 = never), and
//! forwards a received study only when the site keeps studies of its
//! grant's purpose and level (`keep_purposes`, `keep_levels`).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// The gateway settings (`[gateway]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Run the DICOM SCP inside `medmesh run`.
    pub enabled: bool,
    /// This node's AE title (the called AE title the SCP answers to).
    pub ae_title: String,
    /// `address:port` the SCP listens on.
    pub listen: String,
    /// Associations served at once; more are refused (temporary congestion).
    pub max_associations: u32,
    /// PEM certificate chain of the SCP (DICOM TLS when set, with `tls_key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<String>,
    /// PEM private key of `tls_cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<String>,
    /// PEM CA certificates: when set, a client certificate signed by one of
    /// them is required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_ca: Option<String>,
    /// The calling AEs accepted (the allow-list; empty = nobody).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub calling: Vec<CallingAe>,
    /// Where studies can be forwarded.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destination: Vec<DicomPeer>,
    /// The site's PACS, for find and fetch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pacs: Option<DicomPeer>,
    /// Forwarding rules.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub route: Vec<Route>,
    /// Seconds before the first retry of a study that could not be
    /// forwarded; doubled after each failure up to `retry_max_secs`.
    pub retry_min_secs: u64,
    /// The longest wait between two attempts (seconds).
    pub retry_max_secs: u64,
    /// Failed attempts after which an item is given up (`0`: never; a
    /// given-up item is sent again by `medmesh gateway retry`).
    pub give_up_after: u32,
    /// The purposes under which a received study may be kept at this site,
    /// and so forwarded to its PACS; a study received under another purpose
    /// is never forwarded.
    pub keep_purposes: Vec<consent_schema::Purpose>,
    /// The de-identification levels at which a received study may be kept
    /// at this site (and forwarded).
    pub keep_levels: Vec<consent_schema::DeidLevel>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            ae_title: "MEDMESH".into(),
            listen: "127.0.0.1:11112".into(),
            max_associations: 8,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            calling: Vec::new(),
            destination: Vec::new(),
            pacs: None,
            route: Vec::new(),
            retry_min_secs: 30,
            retry_max_secs: 3600,
            give_up_after: 0,
            keep_purposes: vec![
                consent_schema::Purpose::Treatment,
                consent_schema::Purpose::SecondOpinion,
            ],
            keep_levels: vec![
                consent_schema::DeidLevel::Identifiable,
                consent_schema::DeidLevel::Pseudonymised,
                consent_schema::DeidLevel::Anonymised,
            ],
        }
    }
}

/// A calling AE allowed to associate (`[[gateway.calling]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallingAe {
    /// Its AE title.
    pub ae_title: String,
    /// The IP address it connects from.
    pub host: String,
}

/// A remote DICOM AE this node calls (`[[gateway.destination]]`,
/// `[gateway.pacs]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DicomPeer {
    /// The name routes refer to.
    pub name: String,
    /// Its AE title (the called AE title).
    pub ae_title: String,
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Connect with DICOM TLS.
    #[serde(default)]
    pub tls: bool,
    /// PEM CA certificates trusted for its server certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<String>,
    /// PEM client certificate chain this node presents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<String>,
    /// PEM private key of `tls_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<String>,
}

/// Which copies of a study a route forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteLevel {
    /// Only identified copies.
    Identified,
    /// Only de-identified copies.
    Deidentified,
    /// Either.
    Any,
}

/// A forwarding rule (`[[gateway.route]]`): every condition given must
/// match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// The `name` of a `[[gateway.destination]]`.
    pub destination: String,
    /// The peer the study came from (peer id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_peer: Option<String>,
    /// The institution the study came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub institution: Option<String>,
    /// The purpose of the grant it came under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// A modality of the study (e.g. `CT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modality: Option<String>,
    /// Identified or de-identified copies (absent = any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<RouteLevel>,
}

/// Why an AE title is not acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AeTitleError {
    /// Empty or only spaces.
    #[error("is empty or only spaces")]
    Blank,
    /// More than 16 characters.
    #[error("is longer than 16 characters")]
    TooLong,
    /// A backslash, a control character or a character outside the
    /// DICOM default repertoire (printable ASCII).
    #[error("holds a character that an AE title cannot (backslash, control or non-ASCII)")]
    BadCharacter,
}

/// Checks an AE title: 1 to 16 characters of the DICOM default character
/// repertoire (printable ASCII), no backslash, not all spaces (PS3.5 §6.2, AE).
///
/// # Errors
/// [`AeTitleError`] naming the fault.
pub fn check_ae_title(ae: &str) -> Result<(), AeTitleError> {
    if ae.chars().any(|c| c == '\\' || !(' '..='~').contains(&c)) {
        return Err(AeTitleError::BadCharacter);
    }
    if ae.len() > 16 {
        return Err(AeTitleError::TooLong);
    }
    if ae.trim().is_empty() {
        return Err(AeTitleError::Blank);
    }
    Ok(())
}

impl GatewayConfig {
    /// Cross-field checks, run by [`super::Config::parse`].
    pub(super) fn check(&self, value: &dyn Fn(&'static str, GatewayFault) -> ConfigError) -> Result<(), ConfigError> {
        check_ae_title(&self.ae_title).map_err(|e| value("gateway.ae_title", GatewayFault::AeTitle(e)))?;
        if self.listen.parse::<SocketAddr>().is_err() {
            return Err(value(
                "gateway.listen",
                GatewayFault::NotAddress {
                    value: self.listen.clone(),
                },
            ));
        }
        if !(1..=1024).contains(&self.max_associations) {
            return Err(value(
                "gateway.max_associations",
                GatewayFault::Range { min: 1, max: 1024 },
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(value("gateway.tls_key", GatewayFault::TlsPair));
        }
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() {
            return Err(value("gateway.tls_client_ca", GatewayFault::ClientCaWithoutTls));
        }
        for (i, c) in self.calling.iter().enumerate() {
            let entry = i + 1;
            check_ae_title(&c.ae_title)
                .map_err(|cause| value("gateway.calling", GatewayFault::EntryAeTitle { entry, cause }))?;
            if c.host.parse::<std::net::IpAddr>().is_err() {
                return Err(value(
                    "gateway.calling",
                    GatewayFault::NotIp {
                        entry,
                        host: c.host.clone(),
                    },
                ));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, d) in self.destination.iter().enumerate() {
            let entry = i + 1;
            d.check()
                .map_err(|cause| value("gateway.destination", GatewayFault::Peer { entry, cause }))?;
            if !names.insert(d.name.as_str()) {
                return Err(value(
                    "gateway.destination",
                    GatewayFault::NameTwice {
                        entry,
                        name: d.name.clone(),
                    },
                ));
            }
        }
        if let Some(p) = &self.pacs {
            p.check()
                .map_err(|cause| value("gateway.pacs", GatewayFault::Peer { entry: 1, cause }))?;
        }
        if !(1..=86_400).contains(&self.retry_min_secs) {
            return Err(value(
                "gateway.retry_min_secs",
                GatewayFault::Range { min: 1, max: 86_400 },
            ));
        }
        if self.retry_max_secs < self.retry_min_secs || self.retry_max_secs > 7 * 86_400 {
            return Err(value("gateway.retry_max_secs", GatewayFault::RetryMax));
        }
        for (i, r) in self.route.iter().enumerate() {
            if !names.contains(r.destination.as_str()) {
                return Err(value(
                    "gateway.route",
                    GatewayFault::UnknownDestination {
                        rule: i + 1,
                        name: r.destination.clone(),
                    },
                ));
            }
        }
        Ok(())
    }
}

/// What is wrong with a `[gateway]` setting ([`ConfigError::Gateway`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayFault {
    /// The AE title is not one.
    #[error("{0}")]
    AeTitle(AeTitleError),
    /// Not `address:port`.
    #[error("{value:?} is not address:port")]
    NotAddress {
        /// The value given.
        value: String,
    },
    /// A number out of its range.
    #[error("must be from {min} to {max}")]
    Range {
        /// The least.
        min: u64,
        /// The most.
        max: u64,
    },
    /// Only one of `tls_cert` and `tls_key`.
    #[error("tls_cert and tls_key go together: give both or neither")]
    TlsPair,
    /// `tls_client_ca` without TLS.
    #[error("is set without tls_cert: client certificates are checked only over TLS")]
    ClientCaWithoutTls,
    /// A calling AE's title is not one.
    #[error("entry {entry}: ae_title {cause}")]
    EntryAeTitle {
        /// The entry, from 1.
        entry: usize,
        /// Why.
        cause: AeTitleError,
    },
    /// A calling AE's host is not an IP address.
    #[error("entry {entry}: host {host:?} is not an IP address")]
    NotIp {
        /// The entry, from 1.
        entry: usize,
        /// The value given.
        host: String,
    },
    /// A destination or the PACS is not acceptable.
    #[error("entry {entry}: {cause}")]
    Peer {
        /// The entry, from 1.
        entry: usize,
        /// Why.
        cause: PeerFault,
    },
    /// Two destinations of one name.
    #[error("entry {entry}: name {name:?} is used twice")]
    NameTwice {
        /// The entry, from 1.
        entry: usize,
        /// The name.
        name: String,
    },
    /// `retry_max_secs` below `retry_min_secs` or above a week.
    #[error("must be at least retry_min_secs and at most 604800 (a week)")]
    RetryMax,
    /// A route names no destination.
    #[error("rule {rule}: destination {name:?} is not the name of a [[gateway.destination]]")]
    UnknownDestination {
        /// The rule, from 1.
        rule: usize,
        /// The name given.
        name: String,
    },
}

/// What is wrong with a `[[gateway.destination]]` or `[gateway.pacs]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerFault {
    /// `name` is empty.
    #[error("name is empty")]
    NoName,
    /// The AE title is not one.
    #[error("ae_title {0}")]
    AeTitle(AeTitleError),
    /// `host` is empty or holds spaces or control characters.
    #[error("host {host:?} is not a host name or address")]
    Host {
        /// The value given.
        host: String,
    },
    /// Port 0.
    #[error("port must be from 1 to 65535")]
    Port,
    /// Only one of `tls_cert` and `tls_key`.
    #[error("tls_cert and tls_key go together: give both or neither")]
    TlsPair,
    /// TLS files without `tls = true`.
    #[error("tls is false, but tls_ca or tls_cert is set")]
    TlsOff,
}

impl DicomPeer {
    fn check(&self) -> Result<(), PeerFault> {
        if self.name.trim().is_empty() {
            return Err(PeerFault::NoName);
        }
        check_ae_title(&self.ae_title).map_err(PeerFault::AeTitle)?;
        if self.host.trim().is_empty() || self.host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(PeerFault::Host {
                host: self.host.clone(),
            });
        }
        if self.port == 0 {
            return Err(PeerFault::Port);
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(PeerFault::TlsPair);
        }
        if !self.tls && (self.tls_ca.is_some() || self.tls_cert.is_some()) {
            return Err(PeerFault::TlsOff);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    #[test]
    fn ae_titles() {
        for (ae, want) in [
            ("MEDMESH", Ok(())),
            ("A", Ok(())),
            ("SIXTEEN_CHARS_AE", Ok(())),
            (" LEADING", Ok(())),
            ("with space", Ok(())),
            ("", Err(AeTitleError::Blank)),
            ("    ", Err(AeTitleError::Blank)),
            ("SEVENTEEN_CHARSAE", Err(AeTitleError::TooLong)),
            ("BACK\\SLASH", Err(AeTitleError::BadCharacter)),
            ("TAB\tAE", Err(AeTitleError::BadCharacter)),
            ("NUL\0", Err(AeTitleError::BadCharacter)),
            ("ÄRZTE", Err(AeTitleError::BadCharacter)),
        ] {
            assert_eq!(check_ae_title(ae), want, "{ae:?}");
        }
    }

    #[test]
    fn defaults_and_a_full_section() {
        let g = GatewayConfig::default();
        assert!(!g.enabled);
        assert_eq!(g.ae_title, "MEDMESH");
        assert_eq!(g.listen, "127.0.0.1:11112");
        assert_eq!(g.max_associations, 8);
        assert_eq!(Config::parse(Path::new("c.toml"), "").unwrap().gateway, g);
        let text = r#"
[gateway]
enabled = true
ae_title = "NORD"
listen = "0.0.0.0:104"
max_associations = 2
tls_cert = "c.pem"
tls_key = "k.pem"
tls_client_ca = "ca.pem"
[[gateway.calling]]
ae_title = "CT01"
host = "10.0.0.5"
[[gateway.destination]]
name = "pacs"
ae_title = "PACS"
host = "pacs.local"
port = 104
tls = true
tls_ca = "pacs-ca.pem"
[gateway.pacs]
name = "pacs"
ae_title = "PACS"
host = "pacs.local"
port = 104
[[gateway.route]]
destination = "pacs"
source_peer = "12D3KooW"
institution = "Klinikum"
purpose = "treatment"
modality = "CT"
level = "deidentified"
[[gateway.route]]
destination = "pacs"
"#;
        let g = Config::parse(Path::new("c.toml"), text).unwrap().gateway;
        assert!(g.enabled);
        assert_eq!(g.calling[0].ae_title, "CT01");
        assert_eq!(g.destination[0].tls_ca.as_deref(), Some("pacs-ca.pem"));
        assert_eq!(g.pacs.as_ref().map(|p| p.port), Some(104));
        assert_eq!(g.route[0].level, Some(RouteLevel::Deidentified));
        assert_eq!(g.route[1].level, None);
    }

    #[test]
    fn invalid_sections_name_the_key() {
        let dest = "[[gateway.destination]]\nname = \"pacs\"\nae_title = \"PACS\"\nhost = \"h\"\nport = 104\n";
        let twice = format!("{dest}{dest}");
        let unnamed = format!("{dest}[[gateway.route]]\ndestination = \"other\"\n");
        let level = format!("{dest}[[gateway.route]]\ndestination = \"pacs\"\nlevel = \"secret\"\n");
        for (text, needle) in [
            ("[gateway]\nae_title = \"\"\n", "gateway.ae_title"),
            ("[gateway]\nae_title = \"A\\\\B\"\n", "gateway.ae_title"),
            ("[gateway]\nae_title = \"ABCDEFGHIJKLMNOPQ\"\n", "longer than 16"),
            ("[gateway]\nlisten = \"localhost\"\n", "gateway.listen"),
            ("[gateway]\nmax_associations = 0\n", "gateway.max_associations"),
            ("[gateway]\ntls_cert = \"c.pem\"\n", "gateway.tls_key"),
            ("[gateway]\ntls_client_ca = \"ca.pem\"\n", "gateway.tls_client_ca"),
            ("[gateway]\nport = 104\n", "unknown field"),
            (
                "[[gateway.calling]]\nae_title = \"CT\"\nhost = \"ct.local\"\n",
                "not an IP address",
            ),
            (
                "[[gateway.calling]]\nae_title = \"  \"\nhost = \"10.0.0.1\"\n",
                "gateway.calling",
            ),
            ("[[gateway.calling]]\nae_title = \"CT\"\n", "missing field"),
            (
                "[[gateway.destination]]\nname = \"p\"\nae_title = \"P\"\nhost = \"h\"\nport = 0\n",
                "port",
            ),
            (
                "[[gateway.destination]]\nname = \"p\"\nae_title = \"P\"\nhost = \"h\"\nport = 1\ntls_ca = \"x\"\n",
                "tls is false",
            ),
            (twice.as_str(), "used twice"),
            (
                "[gateway.pacs]\nname = \"p\"\nae_title = \"\"\nhost = \"h\"\nport = 1\n",
                "gateway.pacs",
            ),
            (unnamed.as_str(), "not the name"),
            (level.as_str(), "secret"),
        ] {
            let err = Config::parse(Path::new("c.toml"), text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
