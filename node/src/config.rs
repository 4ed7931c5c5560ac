//! The node's configuration file, `config.toml` in the home.
//!
//! Every setting has a default; `medmesh init` writes the file with every
//! setting, its default and what it does ([`TEMPLATE`]). Unknown keys are an
//! error, and cross-field checks run at load.
//!
//! Direction: `config` holds the types of every setting, those of the
//! services included (`[deid]`'s [`DeidOption`] and [`MaskRule`],
//! `[notify]`'s addresses in [`endpoint`]), and imports no service; the
//! services (`deid`, `notify`, ...) import their settings from here and
//! re-export what their callers name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use consent_schema::{DeidLevel, GrantDays, Jurisdiction, Purpose, RoleRule, SitePolicy};
use serde::{Deserialize, Serialize};

pub mod endpoint;
pub mod gateway;
pub mod web;

pub use endpoint::{EndpointError, WebhookTarget, redact_url, split_host_port};

/// Version of the configuration format.
pub const CONFIG_VERSION: u32 = 1;

/// The file `medmesh init` writes: every setting with its default, documented.
pub const TEMPLATE: &str = r#"# medmesh node configuration.
# Every setting is listed with its default value. Unknown keys are an error.
# Identity (institution, jurisdiction) lives in the signed node record, not here.

# Format version of this file.
config_version = 1

[store]
# Plaintext bytes per sealed chunk for studies at rest: a power of two
# between 4096 (4 KiB) and 16777216 (16 MiB).
chunk_size = 65536
# Files up to this many bytes are parsed completely on import (pixel data
# included). Larger files are parsed up to the pixel data, whose declared
# length is then checked against the file size; memory stays bounded.
full_parse_limit = 67108864
# Flush to disk (fsync) imported blob files and every durable database
# commit before they are acknowledged. Off, a power loss or OS crash can lose
# recent commits of any kind (imported or received objects, and ledger
# entries the node signed and sent). What the node signs and sends away or
# shows as done (index rows, received studies, transfers, consents, ledger
# entries) is written before it is acknowledged either way, so a killed
# process loses none of it. Turn off only for throwaway homes and benchmarks.
fsync = true
# Files per import batch: each batch is one index transaction.
batch_files = 256
# Plaintext bytes per import batch (the batch closes at whichever limit comes first).
batch_bytes = 268435456
# Worker threads that parse and seal files during import; 0 = one per CPU core.
import_threads = 0

[network]
# Multiaddresses to listen on: TCP (Noise + Yamux) and QUIC. The default is
# port 7460 on all interfaces, TCP and UDP. Port 0 picks a free port.
listen = ["/ip4/0.0.0.0/tcp/7460", "/ip4/0.0.0.0/udp/7460/quic-v1"]
# Peers to contact at start and to join the Kademlia network through: full
# multiaddresses ending in /p2p/<peer id>, e.g.
# "/dns4/pacs-gw.example.org/tcp/7460/p2p/12D3KooW...". They are dialled, and
# talked to only once they prove trust like any other peer.
bootstrap = []
# Discover peers on the local network by mDNS (multicast). For LAN sites
# only: never switch it on where the interface reaches networks you do not control.
mdns = false
# Seconds a connected peer has to present a valid hello (node record and
# certificates) before it is disconnected.
hello_timeout_secs = 10
# Seconds an idle connection to a trusted peer stays open (it is dialled
# again by the maintenance check when it has closed).
idle_timeout_secs = 3600
# Seconds between checks that re-dial known and bootstrap peers and re-check
# the trust of connected peers (certificate expiry).
maintenance_secs = 30

[policy]
# The site's own rules, applied on top of patient consent to every transfer
# (`medmesh consent check` shows the decision for a study, a peer and a
# purpose without sending anything). Levels, weakest to strongest:
# "identifiable", "pseudonymised", "anonymised". Purposes: "treatment",
# "second-opinion", "research", "teaching", "quality", "public-health".
# The site's own jurisdiction is the one in its signed node record.
#
# Level required for a transfer to a peer in another jurisdiction, unless a
# consent relied on names that jurisdiction, that peer or that institution
# explicitly (naming a consortium is not enough).
cross_border_level = "anonymised"
# Minimum level per purpose, whatever the consent says. Purposes not listed
# have no minimum; listing this table replaces the whole default.
min_level = { research = "pseudonymised", teaching = "anonymised" }
# Purposes for which an ethics-board waiver (`consent add --by waiver`)
# stands in for patient consent; for any other purpose a waiver does not apply.
waiver_purposes = ["research"]
# Level required whenever an ethics-board waiver is relied on.
waiver_level = "anonymised"
# Purposes whose requests always go to a human, even when consent and the
# rules above allow them.
approval_required = ["research", "teaching"]
# Longest a grant may last, in days (1 to 3650); a grant ends earlier when a
# consent it relies on ends or is withdrawn.
max_grant_days = 30
# A trusted peer's request for a study this node does not hold yet fetches
# it from the site's PACS first ([gateway.pacs], by C-MOVE to this node's
# own SCP; needs [gateway] enabled), then is decided as usual: the requester
# sees "pending" meanwhile, and a study the PACS does not have either is
# "not available".
fetch_from_pacs = false
#
# Role rules: the requesting role (clinician, radiologist, researcher,
# educator, quality-officer, public-health-officer, data-steward) x purpose
# x modality -> allow or deny. None by default: the role is recorded but
# decides nothing. Each series of a study is decided by the FIRST rule, in
# the order written, whose role, purpose and modality match it ("*" = any;
# no modality = every modality); a series no rule matches is decided by
# consent and the rules above alone. Rules only ever make a decision
# stricter: "deny" withholds the series (denied-by-role-rule when none is
# left), "allow" lets consent and policy decide, raised to min_level (the
# stronger level wins) and, with approval = true, sent to a person. A deny
# takes neither min_level nor approval. Example, researchers get no
# mammograms, and everything else only anonymised and approved:
#
# [[policy.role_rule]]
# role = "researcher"
# purpose = "*"
# modality = ["MG"]
# effect = "deny"
#
# [[policy.role_rule]]
# role = "researcher"
# effect = "allow"
# min_level = "anonymised"
# approval = true

[transfer]
# Objects of a study streamed at once to a peer, each on its own stream
# (1 to 16). Memory per transfer is about streams x 5 x 256 KiB.
streams = 3
# Cap on the bytes per second this node sends, per transfer, in MB/s
# (10^6 bytes); 0 = no cap. For sites that share a thin link with clinical traffic.
max_rate_mb_s = 0
# Seconds between attempts to reach a peer again for an unfinished transfer
# (a transfer resumes by itself after a dropped connection or a restart).
retry_secs = 2

[retention]
# Days after which a received study locked at the end of its grant (its data
# key destroyed, so nothing of it can be read) is purged: its rows and files
# deleted and a study-purged entry (reason retention) written, which tells its
# holder. 0 = keep locked copies. A study imported at this site is only ever
# purged by `medmesh study purge`.
locked_days = 30

[deid]
# De-identification (PS3.15 Annex E, Basic Application Level Confidentiality
# Profile). Options applied to every de-identified transfer and by default to
# `medmesh study deid`: any of "retain-safe-private", "retain-uids"
# (pseudonymised only), "retain-device-identity",
# "retain-institution-identity", "retain-patient-characteristics",
# "retain-long-full-dates", "retain-long-modified-dates" (dates shifted by a
# keyed per-patient number of days), "clean-descriptors",
# "clean-structured-content", "clean-graphics".
options = []
# Names of this site that must not survive de-identification: the host
# names (and IP addresses) of its PACS, RIS and web viewers, its AE titles,
# other names of the institution. Wherever a kept text or link (SR text,
# comments, descriptions, URLs) holds one, ignoring case, it is replaced by
# "*" (a link becomes "http://anonymized.invalid"). The institution name of
# this node's record is always added. Each name has 3 to 200 characters.
# Example: site_names = ["pacs01.klinikum-nord.example", "10.20.0.15", "KNPACS"]
site_names = []
# Pixel-masking rules. An object with Burned In Annotation (0028,0301) YES, or
# of a kind that often shows text in its pixels (US, XC, ES, OT, secondary
# capture) without that attribute, is not de-identified unless a rule covers
# it: the first rule whose modality ("*" for any), manufacturer (contained,
# any case), rows and columns match blanks its rectangles ([x, y, width,
# height] from the top left, in every frame of uncompressed pixel data).
# A rule with `rects = []` declares that kind of image free of burned-in text.
# No rules: `mask = []`. To add rules, replace that line with tables such as
#   [[deid.mask]]
#   modality = "US"
#   manufacturer = "Acme"
#   rows = 600
#   columns = 800
#   rects = [[0, 0, 800, 48]]
mask = []

[limits]
# What a peer (however trusted) can make this node spend. Each limit is
# enforced before the resource is spent; docs/OPERATIONS.md lists them all.
#
# Unsolicited shares (a peer sends a study this node did not request):
# "trusted" takes them from any peer this site trusts for the share's
# purpose, "listed" only from the peers in share_peers (trusted as well),
# "none" refuses every unsolicited share.
shares_from = "trusted"
# Peer ids whose unsolicited shares are taken when shares_from = "listed".
share_peers = []
# Unsolicited shares from one peer not yet landed (granted or streaming), at
# most; a further share is refused for now (the holder tries again later).
pending_shares_per_peer = 4
# Plaintext bytes of the unsolicited shares from one peer not yet landed, at
# most (the new share's manifest included).
pending_share_bytes_per_peer = 68719476736
# Seconds an incoming transfer (shared or requested) may go without
# receiving anything before it is failed as stale and its parts deleted.
incoming_stale_secs = 604800
# Inbound /medmesh/stream/1 streams open at once from one peer; a further
# stream is reset before anything of it is read.
streams_per_peer = 32
# Transfer requests taken from one peer: a token bucket of request_burst
# requests refilled at requests_per_minute. A request over it is answered
# retry-later with the seconds to wait, before anything is recorded. The
# defaults let a research export of thousands of studies through at about
# 50 requests a second while bounding what one peer can make this node write.
requests_per_minute = 3000
# Requests one peer may send at once before the rate above applies.
request_burst = 300
# Requests from one peer waiting for a person here (`medmesh approvals`), at
# most; a further one is answered retry-later until some are decided.
pending_approvals_per_peer = 50

[metrics]
# Operators' endpoints on a plain-HTTP listener of their own (docs/OPERATIONS.md
# "Metrics and health checks"): GET /metrics (Prometheus text format, no
# patient data), /healthz and /readyz. Absent = off. They have no
# authentication: keep them on loopback (or a management network) and let the
# Prometheus server scrape there; another address is logged as a warning.
# Port 0 picks a free port (`medmesh status` shows the one bound).
# listen = "127.0.0.1:9464"

[gateway]
# The DICOM gateway (docs/DICOM-CONFORMANCE.md, docs/OPERATIONS.md
# "Connecting the PACS"): medmesh as a DICOM Application Entity beside the
# site's PACS. When enabled, `medmesh run` serves C-ECHO and C-STORE on
# `listen`; every object received is imported as `study import` imports a
# file.
enabled = false
# This node's AE title (1 to 16 characters, no backslash or control characters).
ae_title = "MEDMESH"
# address:port the SCP listens on (104 and 11112 are DICOM's usual ports).
listen = "127.0.0.1:11112"
# Associations served at once; more are refused with "temporary congestion".
max_associations = 8
# Forwarding to the site's PACS ([[gateway.destination]], [[gateway.route]]):
# a study that could not be forwarded is tried again after retry_min_secs,
# the wait doubling after each failure up to retry_max_secs.
retry_min_secs = 30
# The longest wait between two attempts (at most a week).
retry_max_secs = 3600
# Failed attempts after which a study is given up (`medmesh gateway retry`
# tries it again); 0 = never give up.
give_up_after = 0
# A study received from a peer is forwarded only if the site keeps studies
# received for its grant's purpose and at its level (a grant for research or
# teaching does not make the study part of the patient's record here).
keep_purposes = ["treatment", "second-opinion"]
# The levels at which received studies are kept (and so forwarded).
keep_levels = ["identifiable", "pseudonymised", "anonymised"]
# DICOM TLS: PEM certificate chain and key of the SCP; with tls_client_ca,
# callers must present a certificate signed by one of its CAs. TLS 1.2/1.3.
# tls_cert = "/etc/medmesh/dicom.crt"
# tls_key = "/etc/medmesh/dicom.key"
# tls_client_ca = "/etc/medmesh/dicom-clients-ca.crt"
#
# The calling AEs accepted (AE title and the IP address it connects from);
# any other is rejected at association ("calling AE title not recognised").
# [[gateway.calling]]
# ae_title = "MODALITY1"
# host = "10.1.2.3"
#
# The site's PACS, for `medmesh gateway find` and `gateway fetch`.
# [gateway.pacs]
# name = "pacs"
# ae_title = "PACS"
# host = "10.1.2.10"
# port = 104
# tls = false
#
# Where studies are forwarded, and the rules that choose them (every
# condition given must match: source_peer, institution, purpose, modality,
# level = "identified" | "deidentified" | "any").
# [[gateway.destination]]
# name = "pacs"
# ae_title = "PACS"
# host = "10.1.2.10"
# port = 104
# [[gateway.route]]
# destination = "pacs"
# modality = "CT"

[notify.webhook]
# Notifications (an entry of another site concerns a study of this one, and
# ledger alerts) can be posted to a webhook as JSON (docs/PROTOCOL.md §14.7):
# one HTTP POST per notification, in order, retried with backoff until the
# server answers 2xx. Every notification recorded since the node first ran
# is delivered, the backlog included. "" = off. http:// or https://
# (certificates checked against the Mozilla roots, or against ca_file).
url = ""
# Secret sent with every POST (in the header below); "" = none. Keep this
# file readable by the node's user only when it holds one. A token needs an
# https:// url (plain http:// only to 127.0.0.1, ::1 or localhost).
token = ""
# Header that carries the token: "authorization" sends "Bearer <token>",
# any other header name sends the token as it is.
token_header = "authorization"
# Seconds a POST may take before it counts as failed and is retried.
timeout_secs = 10
# Send the Study Instance UID (resolved on this node) instead of only the
# ledger's study commitment. Never patient names or IDs.
study_uid = false
# PEM file of the CA certificates to trust for https:// instead of the
# Mozilla roots; "" = the Mozilla roots.
ca_file = ""

[notify.syslog]
# Notifications sent to a syslog collector (an IHE ATNA audit record
# repository) as DICOM audit messages (PS3.15 A.5) in RFC 5424 syslog
# messages, in order, retried with backoff. "" = off; otherwise host:port,
# e.g. "audit.example.org:6514".
address = ""
# "udp" (RFC 5426: fire and forget, no acknowledgement), "tcp" (RFC 6587
# octet counting) or "tls" (RFC 5425, what ATNA requires).
transport = "tls"
# Syslog facility: "authpriv" (10), "auth" (4) or "local0" to "local7".
facility = "authpriv"
# Put the Study Instance UID (resolved on this node) in the audit messages
# instead of the ledger's study commitment. Never patient names or IDs.
study_uid = false
# PEM file of the CA certificates that sign the collector's certificate
# (tls); "" = the Mozilla roots.
ca_file = ""
# PEM files of this node's client certificate chain and private key, for
# collectors that authenticate nodes (ATNA mutual TLS); "" = none.
cert_file = ""
# The private key of cert_file (PEM, PKCS#8, PKCS#1 or SEC1).
key_file = ""

[web]
# The web console and its JSON API (/api/v1) over HTTPS, for the people of
# the site (docs/OPERATIONS.md "The web console"). Off while listen is unset.
# listen = "0.0.0.0:8443"
# tls_cert = "/etc/medmesh/web.crt"
# tls_key = "/etc/medmesh/web.key"
# A login must show a second factor: the ID token's amr holds one of
# mfa_amr (RFC 8176 values), or its acr is one of mfa_acr.
require_mfa = true
# The amr values that count as a second factor.
mfa_amr = ["mfa", "otp", "hwk", "swk", "sms", "tel", "fpt", "face", "iris", "retina", "vbm", "sc"]
# acr values that count as multi-factor; when set they are asked for
# (acr_values) at login.
mfa_acr = []
# A console session ends after session_idle_secs unused, and after
# session_max_secs in any case (and at logout, at the provider too).
session_idle_secs = 1800
# The absolute end of a session, in seconds.
session_max_secs = 43200
#
# The site's OpenID provider (authorization code flow with PKCE). Register
# redirect_url (this listener's /auth/callback) and, for logout, this
# listener's /logged-out as a post-logout redirect URI.
# [web.oidc]
# issuer = "https://idp.example.org/realms/hospital"
# client_id = "medmesh"
# client_secret_file = "/etc/medmesh/oidc-secret"
# redirect_url = "https://medmesh.example.org:8443/auth/callback"
# ca_file = "/etc/medmesh/idp-ca.pem"   # the provider's CA, if not a public one
# scopes = ["profile"]

[web.roles]
# The claim (of ID tokens and access tokens) holding a person's roles, and
# its values mapped to site roles: site-admin, data-steward, clinician,
# radiologist, researcher, privacy-officer, auditor. With no map, a value
# that spells a site role is taken as it is.
claim = "roles"
# [web.roles.map]
# "imaging-stewards" = "data-steward"

[web.api]
# Machine clients call /api/v1 with an OAuth 2 bearer token of the provider:
# a JWT whose aud names audience and whose scope holds scope.
audience = "medmesh-api"
# The scope a token must carry (space-separated `scope`, or an `scp` array).
scope = "medmesh.api"
"#;

/// Errors of loading the configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("config {path} is invalid: {source}")]
    Parse {
        /// The file.
        path: String,
        /// The TOML parser's error, with the key and line.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A setting has an unacceptable value.
    #[error("config {path}: {key} {reason}")]
    Value {
        /// The file.
        path: String,
        /// Which key.
        key: &'static str,
        /// Why (boxed: an address error is large).
        reason: Box<ValueFault>,
    },
    /// A `[gateway]` setting has an unacceptable value.
    #[error("config {path}: {key} {reason}")]
    Gateway {
        /// The file.
        path: String,
        /// Which key.
        key: &'static str,
        /// Why.
        reason: Box<gateway::GatewayFault>,
    },
    /// A `[web]` setting has an unacceptable value.
    #[error("config {path}: {key} {reason}")]
    Web {
        /// The file.
        path: String,
        /// Which key.
        key: &'static str,
        /// Why.
        reason: Box<web::WebFault>,
    },
}

/// A [`ValueFault::Range`].
fn range(min: u64, max: u64) -> ValueFault {
    ValueFault::Range { min, max }
}

/// Why a setting is refused ([`ConfigError::Value`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ValueFault {
    /// The file is of another version than this build reads.
    #[error("is {found}, this build reads version {supported}")]
    Version {
        /// The version found.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// The chunk size is not a power of two in range.
    #[error("is {size}: must be a power of two from 4096 to 16777216")]
    ChunkSize {
        /// The size given.
        size: u32,
    },
    /// The value is outside its range.
    #[error("must be from {min} to {max}")]
    Range {
        /// The least value.
        min: u64,
        /// The greatest value.
        max: u64,
    },
    /// The value is below its least value.
    #[error("must be at least {min}")]
    AtLeast {
        /// The least value.
        min: u64,
    },
    /// The value is above its greatest value.
    #[error("must be at most {max}")]
    AtMost {
        /// The greatest value.
        max: u64,
    },
    /// A batch is smaller than one chunk.
    #[error("must be at least one chunk")]
    BelowOneChunk,
    /// Pending share bytes below 1 MiB.
    #[error("must be at least 1048576 (1 MiB)")]
    BelowOneMiB,
    /// A stale time outside a minute to a year.
    #[error("must be from 60 to 31536000 (a year)")]
    StaleSecs,
    /// A network address does not parse.
    #[error(transparent)]
    Address(AddrError),
    /// A URL or address of a notification sink is not acceptable.
    #[error(transparent)]
    Endpoint(EndpointError),
    /// `retain-uids` among the site's options.
    #[error("retain-uids keeps original UIDs and is refused at the anonymised level; give it per export with --option")]
    RetainUids,
    /// Both long date options.
    #[error("retain-long-full-dates and retain-long-modified-dates exclude each other")]
    ExclusiveDates,
    /// A site name is too short or too long.
    #[error("name {number}: must have 3 to 200 characters (a shorter one would hit common words)")]
    SiteName {
        /// Its number (from 1).
        number: usize,
    },
    /// A mask rule has no modality.
    #[error("rule {number}: modality is empty (\"*\" for any)")]
    MaskModality {
        /// Its number (from 1).
        number: usize,
    },
    /// A mask rectangle has no width or height.
    #[error("rule {number}: a rectangle has no width or height")]
    MaskRect {
        /// Its number (from 1).
        number: usize,
    },
    /// Fewer streams per peer than a sender opens.
    #[error(
        "is {per_peer}, less than transfer.streams ({streams}): a peer sending with these settings would have streams of every session refused"
    )]
    StreamsPerPeer {
        /// limits.streams_per_peer.
        per_peer: u32,
        /// transfer.streams.
        streams: u8,
    },
    /// A token would cross the network in clear text.
    #[error(
        "is set but notify.webhook.url ({url}) is plain http://: the token would cross the network in clear text. Use an https:// URL (http:// with a token is accepted only to 127.0.0.1, ::1 or localhost), or remove the token"
    )]
    TokenInClear {
        /// The URL as shown (without user information and query).
        url: String,
    },
    /// Not a header name.
    #[error("{header:?} is not a header name")]
    HeaderName {
        /// The name as configured.
        header: String,
    },
    /// The token holds what a header cannot carry.
    #[error("holds characters a header cannot carry (control characters, or spaces at either end)")]
    TokenChars,
    /// An unknown syslog facility.
    #[error("is {facility:?}: must be \"authpriv\", \"auth\" or \"local0\" to \"local7\"")]
    Facility {
        /// The facility as configured.
        facility: String,
    },
    /// A certificate without its key, or a key without its certificate.
    #[error("cert_file and key_file go together: give both or neither")]
    CertWithoutKey,
    /// TLS files without the TLS transport.
    #[error("is not \"tls\", but ca_file or cert_file is set")]
    TlsFilesWithoutTls,
    /// Not a peer id.
    #[error("{given:?} is not a peer id")]
    NotAPeerId {
        /// The value given.
        given: String,
    },
    /// shares_from = "listed" with no peer listed.
    #[error("is empty but shares_from is \"listed\": list the peers, or set shares_from = \"none\"")]
    ListedButEmpty,
    /// Peers listed while shares_from is not "listed".
    #[error("is set but shares_from is not \"listed\": the list would be ignored")]
    ListedButIgnored,
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Format version of the file.
    #[serde(default = "default_version")]
    pub config_version: u32,
    /// Storage settings.
    #[serde(default)]
    pub store: StoreConfig,
    /// Network settings.
    #[serde(default)]
    pub network: NetworkConfig,
    /// The site's consent policy.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Transfer settings.
    #[serde(default)]
    pub transfer: TransferConfig,
    /// Disposal of locked received copies.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// De-identification settings.
    #[serde(default)]
    pub deid: DeidConfig,
    /// Delivery of notifications to a webhook and a syslog collector.
    #[serde(default)]
    pub notify: NotifyConfig,
    /// What a peer can make this node spend.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The DICOM gateway (`[gateway]`, [`gateway::GatewayConfig`]).
    #[serde(default)]
    pub gateway: gateway::GatewayConfig,
    /// The web console and API (`[web]`, [`web::WebConfig`]).
    #[serde(default)]
    pub web: web::WebConfig,
    /// Operators' `/metrics`, `/healthz` and `/readyz` (`[metrics]`).
    #[serde(default)]
    pub metrics: MetricsConfig,
}

fn default_version() -> u32 {
    CONFIG_VERSION
}

impl Default for Config {
    fn default() -> Self {
        Self {
            config_version: CONFIG_VERSION,
            store: StoreConfig::default(),
            network: NetworkConfig::default(),
            policy: PolicyConfig::default(),
            transfer: TransferConfig::default(),
            retention: RetentionConfig::default(),
            deid: DeidConfig::default(),
            notify: NotifyConfig::default(),
            limits: LimitsConfig::default(),
            gateway: gateway::GatewayConfig::default(),
            web: web::WebConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

/// The site policy (`[policy]`): every rule of [`SitePolicy`] but the home
/// jurisdiction, which is the one of the signed node record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Level required for a transfer to another jurisdiction.
    pub cross_border_level: DeidLevel,
    /// Minimum level per purpose.
    pub min_level: BTreeMap<Purpose, DeidLevel>,
    /// Purposes an ethics-board waiver stands in for consent for.
    pub waiver_purposes: BTreeSet<Purpose>,
    /// Level required when a waiver is relied on.
    pub waiver_level: DeidLevel,
    /// Purposes that always go to a human.
    pub approval_required: BTreeSet<Purpose>,
    /// Longest grant, in days.
    pub max_grant_days: GrantDays,
    /// A peer's request for a study not held yet fetches it from the PACS first.
    pub fetch_from_pacs: bool,
    /// Rules on the requesting role (`[[policy.role_rule]]`), in order; none by default.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub role_rule: Vec<RoleRule>,
}

impl PolicyConfig {
    /// The rules of `policy` for a site in `home`.
    #[must_use]
    pub fn site_policy(&self, home: Jurisdiction) -> SitePolicy {
        SitePolicy {
            home_jurisdiction: home,
            cross_border_level: self.cross_border_level,
            min_level: self.min_level.clone(),
            waiver_purposes: self.waiver_purposes.clone(),
            waiver_level: self.waiver_level,
            approval_required: self.approval_required.clone(),
            max_grant_days: self.max_grant_days,
            role_rules: self.role_rule.clone(),
        }
    }
}

impl Default for PolicyConfig {
    /// The defaults of [`SitePolicy::new`].
    fn default() -> Self {
        Self {
            cross_border_level: DeidLevel::Anonymised,
            min_level: [
                (Purpose::Research, DeidLevel::Pseudonymised),
                (Purpose::Teaching, DeidLevel::Anonymised),
            ]
            .into(),
            waiver_purposes: [Purpose::Research].into(),
            waiver_level: DeidLevel::Anonymised,
            approval_required: [Purpose::Research, Purpose::Teaching].into(),
            max_grant_days: GrantDays::default(),
            fetch_from_pacs: false,
            role_rule: Vec::new(),
        }
    }
}

/// Transfer settings (`[transfer]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransferConfig {
    /// Objects streamed at once per transfer.
    pub streams: u8,
    /// Send-rate cap per transfer in MB/s; 0 = none.
    pub max_rate_mb_s: u32,
    /// Seconds between attempts to resume an unfinished transfer.
    pub retry_secs: u64,
}

impl Default for TransferConfig {
    fn default() -> Self {
        Self {
            streams: 3,
            max_rate_mb_s: 0,
            retry_secs: 2,
        }
    }
}

/// Disposal settings (`[retention]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Days after its lock that a locked received study is purged; 0 = never.
    pub locked_days: u32,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self { locked_days: 30 }
    }
}

/// An option of the Basic Application Level Confidentiality Profile
/// (PS3.15 E.3), with its code in CID 7050.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeidOption {
    /// Retain Safe Private Option (113111).
    RetainSafePrivate,
    /// Retain UIDs Option (113110).
    RetainUids,
    /// Retain Device Identity Option (113109).
    RetainDeviceIdentity,
    /// Retain Institution Identity Option (113112).
    RetainInstitutionIdentity,
    /// Retain Patient Characteristics Option (113108).
    RetainPatientCharacteristics,
    /// Retain Longitudinal Temporal Information with Full Dates Option (113106).
    RetainLongFullDates,
    /// Retain Longitudinal Temporal Information with Modified Dates Option (113107).
    RetainLongModifiedDates,
    /// Clean Descriptors Option (113105).
    CleanDescriptors,
    /// Clean Structured Content Option (113104).
    CleanStructuredContent,
    /// Clean Graphics Option (113103).
    CleanGraphics,
}

/// A masking rule: the rectangles to blank in images of one kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskRule {
    /// Modality (0008,0060) it applies to, e.g. "US"; `*` for any.
    pub modality: String,
    /// Applies only when Manufacturer (0008,0070) contains this (any case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    /// Applies only to images with this many rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u16>,
    /// Applies only to images with this many columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<u16>,
    /// Rectangles to blank: `[x, y, width, height]` in pixels, from the top
    /// left. None: the site declares that images of this kind carry no
    /// burned-in identifiers (they are sent unchanged).
    pub rects: Vec<[u32; 4]>,
}

/// De-identification settings (`[deid]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeidConfig {
    /// Options of the profile applied to de-identified transfers and exports.
    pub options: Vec<DeidOption>,
    /// Pixel-masking rules for objects with burned-in identifiers.
    pub mask: Vec<MaskRule>,
    /// The site's host names and other names, removed from free text and
    /// links (the node's institution name is added to them).
    pub site_names: Vec<String>,
}

/// A secret from the configuration (a webhook token): zeroized on drop,
/// never shown by `Debug` and never serialized.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(zeroize::Zeroizing<String>);

impl Secret {
    /// The secret.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when no secret is set.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(zeroize::Zeroizing::new(s.to_string()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "Secret(none)"
        } else {
            "Secret(redacted)"
        })
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "(redacted)" })
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Secret(zeroize::Zeroizing::new(String::deserialize(d)?)))
    }
}

/// Delivery of notifications (`[notify]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// The webhook.
    pub webhook: WebhookConfig,
    /// The syslog collector.
    pub syslog: SyslogConfig,
}

/// The webhook (`[notify.webhook]`). Its `Debug` shows the URL without
/// user information and query (which may hold a secret) and no token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL; empty = off.
    pub url: String,
    /// Secret sent in `token_header`; empty = none.
    pub token: Secret,
    /// Header carrying the token (`authorization` = `Bearer <token>`).
    pub token_header: String,
    /// Seconds a POST may take.
    pub timeout_secs: u64,
    /// Send the Study Instance UID instead of the commitment.
    pub study_uid: bool,
    /// PEM CA certificates for https (empty = Mozilla roots).
    pub ca_file: String,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &redact_url(&self.url))
            .field("token", &self.token)
            .field("token_header", &self.token_header)
            .field("timeout_secs", &self.timeout_secs)
            .field("study_uid", &self.study_uid)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            token: Secret::default(),
            token_header: "authorization".into(),
            timeout_secs: 10,
            study_uid: false,
            ca_file: String::new(),
        }
    }
}

/// Transport to a syslog collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyslogTransport {
    /// RFC 5426.
    Udp,
    /// RFC 6587, octet counting.
    Tcp,
    /// RFC 5425.
    Tls,
}

/// The syslog collector (`[notify.syslog]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyslogConfig {
    /// `host:port`; empty = off.
    pub address: String,
    /// Transport.
    pub transport: SyslogTransport,
    /// Facility name.
    pub facility: String,
    /// Send the Study Instance UID instead of the commitment.
    pub study_uid: bool,
    /// PEM CA certificates for tls (empty = Mozilla roots).
    pub ca_file: String,
    /// PEM client certificate chain (empty = none).
    pub cert_file: String,
    /// PEM private key of `cert_file`.
    pub key_file: String,
}

impl Default for SyslogConfig {
    fn default() -> Self {
        Self {
            address: String::new(),
            transport: SyslogTransport::Tls,
            facility: "authpriv".into(),
            study_uid: false,
            ca_file: String::new(),
            cert_file: String::new(),
            key_file: String::new(),
        }
    }
}

impl SyslogConfig {
    /// The facility's number, if the name is one of those accepted.
    #[must_use]
    pub fn facility_code(&self) -> Option<u8> {
        match self.facility.as_str() {
            "auth" => Some(4),
            "authpriv" => Some(10),
            f => f
                .strip_prefix("local")
                .and_then(|n| n.parse::<u8>().ok())
                .filter(|n| *n <= 7)
                .map(|n| 16 + n),
        }
    }
}

impl NotifyConfig {
    fn check(&self, value: &dyn Fn(&'static str, ValueFault) -> ConfigError) -> Result<(), ConfigError> {
        let w = &self.webhook;
        if !w.url.is_empty() {
            let target =
                WebhookTarget::parse(&w.url).map_err(|e| value("notify.webhook.url", ValueFault::Endpoint(e)))?;
            if target.check_token(&w.token).is_err() {
                return Err(value(
                    "notify.webhook.token",
                    ValueFault::TokenInClear {
                        url: target.shown().to_string(),
                    },
                ));
            }
        }
        if !(1..=300).contains(&w.timeout_secs) {
            return Err(value("notify.webhook.timeout_secs", range(1, 300)));
        }
        if w.token_header.parse::<hyper::header::HeaderName>().is_err() {
            return Err(value(
                "notify.webhook.token_header",
                ValueFault::HeaderName {
                    header: w.token_header.clone(),
                },
            ));
        }
        if hyper::header::HeaderValue::from_str(w.token.expose()).is_err()
            || w.token.expose().trim() != w.token.expose()
        {
            return Err(value("notify.webhook.token", ValueFault::TokenChars));
        }
        let l = &self.syslog;
        if l.facility_code().is_none() {
            return Err(value(
                "notify.syslog.facility",
                ValueFault::Facility {
                    facility: l.facility.clone(),
                },
            ));
        }
        if !l.address.is_empty() {
            split_host_port(&l.address).map_err(|e| value("notify.syslog.address", ValueFault::Endpoint(e)))?;
        }
        if l.cert_file.is_empty() != l.key_file.is_empty() {
            return Err(value("notify.syslog.key_file", ValueFault::CertWithoutKey));
        }
        if l.transport != SyslogTransport::Tls && !(l.ca_file.is_empty() && l.cert_file.is_empty()) {
            return Err(value("notify.syslog.transport", ValueFault::TlsFilesWithoutTls));
        }
        Ok(())
    }
}

/// From whom unsolicited shares are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SharesFrom {
    /// Any peer this site trusts for the share's purpose.
    Trusted,
    /// Only the peers in `share_peers` (trusted as well).
    Listed,
    /// Nobody.
    None,
}

/// Operators' endpoints (`[metrics]`, docs/OPERATIONS.md "Metrics and
/// health checks"): `/metrics`, `/healthz` and `/readyz` on a plain-HTTP
/// listener of their own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where to listen (`127.0.0.1:9464`, say; port 0 picks one); `None`: off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<std::net::SocketAddr>,
}

/// What a peer can make this node spend (`[limits]`, docs/OPERATIONS.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// From whom unsolicited shares are taken.
    pub shares_from: SharesFrom,
    /// The peers of `SharesFrom::Listed`.
    pub share_peers: Vec<String>,
    /// Unsolicited shares per peer not yet landed.
    pub pending_shares_per_peer: u32,
    /// Plaintext bytes of those shares.
    pub pending_share_bytes_per_peer: u64,
    /// Seconds without data before an incoming transfer is failed as stale.
    pub incoming_stale_secs: u64,
    /// Inbound transfer streams at once per peer.
    pub streams_per_peer: u32,
    /// Transfer requests per minute per peer.
    pub requests_per_minute: u32,
    /// Requests at once before the rate applies.
    pub request_burst: u32,
    /// Requests per peer waiting for a person.
    pub pending_approvals_per_peer: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            shares_from: SharesFrom::Trusted,
            share_peers: Vec::new(),
            pending_shares_per_peer: 4,
            pending_share_bytes_per_peer: 64 * 1024 * 1024 * 1024,
            incoming_stale_secs: 7 * 86400,
            streams_per_peer: 32,
            requests_per_minute: 3000,
            request_burst: 300,
            pending_approvals_per_peer: 50,
        }
    }
}

impl LimitsConfig {
    fn check(&self, value: &dyn Fn(&'static str, ValueFault) -> ConfigError) -> Result<(), ConfigError> {
        for p in &self.share_peers {
            if p.parse::<libp2p::PeerId>().is_err() {
                return Err(value("limits.share_peers", ValueFault::NotAPeerId { given: p.clone() }));
            }
        }
        if self.shares_from == SharesFrom::Listed && self.share_peers.is_empty() {
            return Err(value("limits.share_peers", ValueFault::ListedButEmpty));
        }
        if self.shares_from != SharesFrom::Listed && !self.share_peers.is_empty() {
            return Err(value("limits.share_peers", ValueFault::ListedButIgnored));
        }
        if !(1..=1000).contains(&self.pending_shares_per_peer) {
            return Err(value("limits.pending_shares_per_peer", range(1, 1000)));
        }
        if self.pending_share_bytes_per_peer < 1024 * 1024 {
            return Err(value("limits.pending_share_bytes_per_peer", ValueFault::BelowOneMiB));
        }
        if !(60..=31_536_000).contains(&self.incoming_stale_secs) {
            return Err(value("limits.incoming_stale_secs", ValueFault::StaleSecs));
        }
        if !(1..=1024).contains(&self.streams_per_peer) {
            return Err(value("limits.streams_per_peer", range(1, 1024)));
        }
        if !(1..=60_000).contains(&self.requests_per_minute) {
            return Err(value("limits.requests_per_minute", range(1, 60_000)));
        }
        if !(1..=10_000).contains(&self.request_burst) {
            return Err(value("limits.request_burst", range(1, 10_000)));
        }
        if !(1..=100_000).contains(&self.pending_approvals_per_peer) {
            return Err(value("limits.pending_approvals_per_peer", range(1, 100_000)));
        }
        Ok(())
    }
}

/// The default port, TCP and UDP (QUIC).
pub const DEFAULT_PORT: u16 = 7460;

/// Network settings (`[network]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Listen multiaddresses.
    pub listen: Vec<String>,
    /// Bootstrap peers: multiaddresses ending in `/p2p/<peer id>`.
    pub bootstrap: Vec<String>,
    /// mDNS discovery on the LAN.
    pub mdns: bool,
    /// Seconds a peer has to present a valid hello.
    pub hello_timeout_secs: u64,
    /// Seconds an idle connection stays open.
    pub idle_timeout_secs: u64,
    /// Seconds between re-dials and trust re-checks.
    pub maintenance_secs: u64,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            listen: vec![
                format!("/ip4/0.0.0.0/tcp/{DEFAULT_PORT}"),
                format!("/ip4/0.0.0.0/udp/{DEFAULT_PORT}/quic-v1"),
            ],
            bootstrap: Vec::new(),
            mdns: false,
            hello_timeout_secs: 10,
            idle_timeout_secs: 3600,
            maintenance_secs: 30,
        }
    }
}

impl NetworkConfig {
    /// The listen addresses, parsed.
    ///
    /// # Errors
    /// [`AddrError::Parse`] for the first address that does not parse.
    pub fn listen_addrs(&self) -> Result<Vec<libp2p::Multiaddr>, AddrError> {
        self.listen
            .iter()
            .map(|a| {
                a.parse().map_err(|source| AddrError::Parse {
                    addr: a.clone(),
                    source,
                })
            })
            .collect()
    }

    /// The bootstrap peers, parsed into peer id and address.
    ///
    /// # Errors
    /// [`AddrError`] for the first address that does not parse or lacks
    /// `/p2p/<peer id>`.
    pub fn bootstrap_peers(&self) -> Result<Vec<(libp2p::PeerId, libp2p::Multiaddr)>, AddrError> {
        self.bootstrap
            .iter()
            .map(|a| {
                let addr: libp2p::Multiaddr = a.parse().map_err(|source| AddrError::Parse {
                    addr: a.clone(),
                    source,
                })?;
                match addr.iter().last() {
                    Some(libp2p::multiaddr::Protocol::P2p(peer)) => Ok((peer, addr)),
                    _ => Err(AddrError::NoPeerId { addr: a.clone() }),
                }
            })
            .collect()
    }
}

/// Why an address of `[network]` cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AddrError {
    /// It is not a multiaddress.
    #[error("{addr:?}: {source}")]
    Parse {
        /// The address as configured.
        addr: String,
        /// The parser's reason.
        source: libp2p::multiaddr::Error,
    },
    /// A bootstrap address does not name its peer.
    #[error("{addr:?} does not end in /p2p/<peer id>")]
    NoPeerId {
        /// The address as configured.
        addr: String,
    },
}

/// Storage settings (`[store]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Plaintext bytes per sealed chunk at rest.
    pub chunk_size: u32,
    /// Files up to this size are parsed completely on import.
    pub full_parse_limit: u64,
    /// fsync imported blob files and every durable database commit before
    /// acknowledging them (off, what the node acknowledges survives a killed
    /// process, not an OS crash or a power loss).
    pub fsync: bool,
    /// Files per import batch.
    pub batch_files: u32,
    /// Plaintext bytes per import batch.
    pub batch_bytes: u64,
    /// Import worker threads; 0 = one per CPU core.
    pub import_threads: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            chunk_size: 65536,
            full_parse_limit: 64 * 1024 * 1024,
            fsync: true,
            batch_files: 256,
            batch_bytes: 256 * 1024 * 1024,
            import_threads: 0,
        }
    }
}

impl Config {
    /// Loads and checks the configuration file. A missing file is an error,
    /// never silent defaults.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and the key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and checks configuration text (`path` is for messages).
    ///
    /// # Errors
    /// [`ConfigError`] naming the file and the key.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            source: Box::new(e),
        })?;
        config.check(path)?;
        Ok(config)
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let value = |key: &'static str, reason: ValueFault| ConfigError::Value {
            path: path.display().to_string(),
            key,
            reason: Box::new(reason),
        };
        let gateway_value = |key: &'static str, reason: gateway::GatewayFault| ConfigError::Gateway {
            path: path.display().to_string(),
            key,
            reason: Box::new(reason),
        };
        if self.config_version != CONFIG_VERSION {
            return Err(value(
                "config_version",
                ValueFault::Version {
                    found: self.config_version,
                    supported: CONFIG_VERSION,
                },
            ));
        }
        let cs = self.store.chunk_size;
        if !(medmesh_seal::MIN_CHUNK_SIZE..=medmesh_seal::MAX_CHUNK_SIZE).contains(&cs) || !cs.is_power_of_two() {
            return Err(value("store.chunk_size", ValueFault::ChunkSize { size: cs }));
        }
        if self.store.batch_files == 0 {
            return Err(value("store.batch_files", ValueFault::AtLeast { min: 1 }));
        }
        if self.store.batch_bytes < u64::from(cs) {
            return Err(value("store.batch_bytes", ValueFault::BelowOneChunk));
        }
        if self.store.import_threads > 256 {
            return Err(value("store.import_threads", ValueFault::AtMost { max: 256 }));
        }
        let n = &self.network;
        n.listen_addrs()
            .map_err(|e| value("network.listen", ValueFault::Address(e)))?;
        n.bootstrap_peers()
            .map_err(|e| value("network.bootstrap", ValueFault::Address(e)))?;
        if !(1..=3600).contains(&n.hello_timeout_secs) {
            return Err(value("network.hello_timeout_secs", range(1, 3600)));
        }
        if !(1..=86400).contains(&n.idle_timeout_secs) {
            return Err(value("network.idle_timeout_secs", range(1, 86400)));
        }
        if !(1..=86400).contains(&n.maintenance_secs) {
            return Err(value("network.maintenance_secs", range(1, 86400)));
        }
        let d = &self.deid;
        if d.options.contains(&DeidOption::RetainUids) {
            return Err(value("deid.options", ValueFault::RetainUids));
        }
        if d.options.contains(&DeidOption::RetainLongFullDates)
            && d.options.contains(&DeidOption::RetainLongModifiedDates)
        {
            return Err(value("deid.options", ValueFault::ExclusiveDates));
        }
        for (i, n) in d.site_names.iter().enumerate() {
            let len = n.trim().chars().count();
            if !(3..=200).contains(&len) {
                return Err(value("deid.site_names", ValueFault::SiteName { number: i + 1 }));
            }
        }
        for (i, m) in d.mask.iter().enumerate() {
            if m.modality.trim().is_empty() {
                return Err(value("deid.mask", ValueFault::MaskModality { number: i + 1 }));
            }
            if m.rects.iter().any(|r| r[2] == 0 || r[3] == 0) {
                return Err(value("deid.mask", ValueFault::MaskRect { number: i + 1 }));
            }
        }
        let t = &self.transfer;
        if !(1..=16).contains(&t.streams) {
            return Err(value("transfer.streams", range(1, 16)));
        }
        if !(1..=3600).contains(&t.retry_secs) {
            return Err(value("transfer.retry_secs", range(1, 3600)));
        }
        if self.retention.locked_days > 36_500 {
            return Err(value("retention.locked_days", range(0, 36_500)));
        }
        self.notify.check(&value)?;
        self.limits.check(&value)?;
        self.gateway.check(&gateway_value)?;
        self.web
            .check(&|key: &'static str, reason: web::WebFault| ConfigError::Web {
                path: path.display().to_string(),
                key,
                reason: Box::new(reason),
            })?;
        if self.limits.streams_per_peer < u32::from(t.streams) {
            return Err(value(
                "limits.streams_per_peer",
                ValueFault::StreamsPerPeer {
                    per_peer: self.limits.streams_per_peer,
                    streams: t.streams,
                },
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
