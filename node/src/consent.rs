//! Patient consent on a node home: record (`consent add`), import from HL7
//! FHIR (`consent import-fhir`), list, withdraw, and the decision for a
//! study, a peer and a purpose (`consent check`), made by
//! [`consent_schema::evaluate`] under the site policy of `[policy]`.
//!
//! Records live in the store's `consents-v1` table, sealed under a key
//! derived from the master key, and are found through `consent-patients-v1`
//! by the patient's keyed pseudonym: the same blind index of Patient ID and
//! Issuer of Patient ID that finds the patient's studies. A raw patient
//! identifier is hashed on entry and never stored. Studies are named in
//! consents by their Study Instance UID, episodes of care by the Admission
//! ID (0038,0010) of the studies.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveTime, TimeDelta, Utc};
use consent_schema::fhir::{self, FhirError, FhirPatient, ImportContext};
use consent_schema::{
    ConsentDraft, ConsentError, ConsentId, ConsentRecord, ConsentedBy, ConsortiumId, Coverage, DataPeriod, Decision,
    DeidLevel, EpisodeId, IdError, InstitutionId, Jurisdiction, LegalBasis, Modality, ModalityScope, PatientRef,
    PeerId, Provision, Purpose, Recipient, RecipientScope, Role, Scope, SeriesFacts, SeriesRef, SitePolicy, StudyFacts,
    StudyRef, TimeStatus, TransferRequest,
};
use serde::{Deserialize, Serialize};

use crate::config::PolicyConfig;
use crate::effects::Effects;
use crate::identity::VerifiedNodeRecord;
use crate::store::{Store, StoreError, StudyMeta};
use crate::trust::hello;
use crate::trust::service::{TrustOpError, TrustService};
use crate::trust::{self, TrustDecision, Via};

/// Errors of consent operations. Messages name the file, field or consent at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsentOpError {
    /// A value given for a field is not acceptable.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field (CLI flag without dashes, or record field).
        field: &'static str,
        /// Why.
        reason: Box<Invalid>,
    },
    /// The record would be impossible.
    #[error("consent {id}: {cause}")]
    Record {
        /// The consent id.
        id: String,
        /// The cause, naming the field.
        cause: ConsentError,
    },
    /// A FHIR file could not be read.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        cause: std::io::Error,
    },
    /// A FHIR resource could not be imported.
    #[error("{path}: {cause}")]
    Fhir {
        /// The file.
        path: String,
        /// The cause, naming the element (boxed: a typed refusal is large).
        cause: Box<FhirError>,
    },
    /// A FHIR resource names a study that medmesh cannot match.
    #[error(
        "{path}: consent {id}: Consent.provision.data names the study {found:?}, which is not a Study Instance UID \
         (medmesh matches imaging studies by the identifier urn:oid:<Study Instance UID>)"
    )]
    StudyReference {
        /// The file.
        path: String,
        /// The consent id.
        id: String,
        /// The reference found.
        found: String,
    },
    /// A FHIR resource names an episode by a reference that was not mapped.
    #[error(
        "{path}: consent {id}: Consent.provision.data names the episode {found:?} by reference; medmesh matches \
         episodes by the Admission ID (0038,0010) of the studies: give the EpisodeOfCare's identifier, or map the \
         reference with --episode REF=ADMISSION_ID"
    )]
    EpisodeReference {
        /// The file.
        path: String,
        /// The consent id.
        id: String,
        /// The reference found.
        found: String,
    },
    /// A consent with this id is already on record with other content.
    #[error(
        "{path}: consent {id} is already on record with other content; withdraw it, or import again with --replace"
    )]
    Exists {
        /// The file.
        path: String,
        /// The consent id.
        id: String,
    },
    /// A withdrawn consent would be replaced.
    #[error("{path}: consent {id} was withdrawn; a withdrawn consent is never revived: import it under a new id")]
    Withdrawn {
        /// The file.
        path: String,
        /// The consent id.
        id: String,
    },
    /// Two files or provisions of one import carry the same consent id.
    #[error("{path}: consent {id} appears twice in this import")]
    Duplicate {
        /// The file.
        path: String,
        /// The consent id.
        id: String,
    },
    /// No consent with this id.
    #[error("no consent {id} on record")]
    Unknown {
        /// The consent id.
        id: String,
    },
    /// Trust could not be read.
    #[error(transparent)]
    Trust(#[from] TrustOpError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a value given for a field is not acceptable
/// ([`ConsentOpError::Invalid`]). Values are quoted as given (an
/// operator's input: ids, dates, codes; never a patient id).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Invalid {
    /// An id, code or name does not parse.
    #[error(transparent)]
    Id(#[from] IdError),
    /// Neither a date nor an RFC 3339 time.
    #[error("{value:?} is neither a date (2026-03-01) nor an RFC 3339 time (2026-03-01T08:00:00Z)")]
    Time {
        /// The value given.
        value: String,
    },
    /// A recipient without its kind.
    #[error("{value:?}: write peer:ID, institution:NAME, jurisdiction:CC or consortium:ID")]
    RecipientForm {
        /// The value given.
        value: String,
    },
    /// A recipient of an unknown kind.
    #[error("{kind:?} is not a recipient kind (peer, institution, jurisdiction, consortium)")]
    RecipientKind {
        /// The kind given.
        kind: String,
    },
    /// Not a libp2p peer id.
    #[error("{value:?} is not a peer id: {cause}")]
    PeerId {
        /// The value given.
        value: String,
        /// What is wrong with it.
        #[source]
        cause: libp2p::identity::ParseError,
    },
    /// Not a Study Instance UID.
    #[error("{value:?} is not a Study Instance UID (numbers separated by dots, at most 64 characters)")]
    StudyUid {
        /// The value given.
        value: String,
    },
    /// The OS random generator failed (a new consent id).
    #[error("the OS random generator failed: {0}")]
    Random(#[source] getrandom::Error),
    /// This node's own record names a jurisdiction that does not parse.
    #[error("of this node's record, {value:?}: {cause}")]
    OwnJurisdiction {
        /// The record's jurisdiction.
        value: String,
        /// What is wrong with it.
        #[source]
        cause: IdError,
    },
    /// An empty value.
    #[error("is empty")]
    Empty,
    /// A deny with a level.
    #[error("a deny has no level")]
    DenyWithLevel,
    /// A permit without a level.
    #[error("a permit needs the weakest level it accepts: identifiable, pseudonymised or anonymised")]
    PermitWithoutLevel,
    /// Both studies and an episode.
    #[error("give either studies or an episode, not both")]
    StudiesAndEpisode,
    /// No default legal basis is known for the site's jurisdiction.
    #[error("no default legal basis for a site in {home}: give its code, e.g. a statute reference")]
    NoDefaultLegalBasis {
        /// The site's jurisdiction.
        home: String,
    },
    /// The end of validity is not after its start.
    #[error("{until} is not after {from}: the consent would never be valid")]
    NotAfter {
        /// The end, as given.
        until: String,
        /// The start, as given (`now` or `--from …`).
        from: String,
    },
    /// A consent with this id is on record.
    #[error("consent {id} is already on record")]
    Recorded {
        /// The consent id.
        id: String,
    },
    /// Not a UTC offset.
    #[error("{value:?} is not an offset such as +01:00")]
    Offset {
        /// The value given.
        value: String,
    },
    /// A peer's certified institution or jurisdiction does not parse.
    #[error("{peer}: its certified {certified}: {cause}")]
    Certified {
        /// The peer id.
        peer: String,
        /// Which certified field.
        certified: &'static str,
        /// What is wrong with it.
        #[source]
        cause: IdError,
    },
}

fn invalid(field: &'static str, reason: impl Into<Invalid>) -> ConsentOpError {
    ConsentOpError::Invalid {
        field,
        reason: Box::new(reason.into()),
    }
}

fn parse_id<T: FromStr<Err = IdError>>(field: &'static str, s: &str) -> Result<T, ConsentOpError> {
    s.parse().map_err(|e: IdError| invalid(field, e))
}

/// A consent to record (`medmesh consent add`, `POST /v1/consents/add`).
///
/// The patient identifier is hashed into the node's keyed pseudonym on entry
/// and dropped; `Debug` does not show it.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewConsent {
    /// Id of the record; a fresh `c-…` id when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// Patient ID (0010,0020) as the site's PACS holds it.
    pub patient_id: String,
    /// Issuer of Patient ID (0010,0021) qualifying it; may be empty.
    #[serde(default)]
    pub issuer: String,
    /// Who consented.
    pub by: ConsentedBy,
    /// A deny (an objection) rather than a permit.
    #[serde(default)]
    pub deny: bool,
    /// The weakest level a permit accepts (required for a permit).
    #[serde(default)]
    pub level: Option<DeidLevel>,
    /// Purposes covered (at least one).
    pub purposes: Vec<Purpose>,
    /// Recipient peers (libp2p peer ids).
    #[serde(default)]
    pub recipient_peers: Vec<String>,
    /// Recipient institutions, as their certificates name them.
    #[serde(default)]
    pub recipient_institutions: Vec<String>,
    /// Recipient jurisdictions (ISO 3166-1 alpha-2).
    #[serde(default)]
    pub recipient_jurisdictions: Vec<String>,
    /// Recipient consortia (consortium ids).
    #[serde(default)]
    pub recipient_consortia: Vec<String>,
    /// Modalities covered; all when empty.
    #[serde(default)]
    pub modalities: Vec<String>,
    /// Studies covered (Study Instance UIDs); the whole record when empty and no episode.
    #[serde(default)]
    pub studies: Vec<String>,
    /// The episode of care covered (Admission ID of its studies).
    #[serde(default)]
    pub episode: Option<String>,
    /// Valid from (date or RFC 3339); now when absent.
    #[serde(default)]
    pub from: Option<String>,
    /// Valid until (date: to the end of that day, or RFC 3339); until withdrawn when absent.
    #[serde(default)]
    pub until: Option<String>,
    /// Only studies acquired from this date.
    #[serde(default)]
    pub data_from: Option<String>,
    /// Only studies acquired until this date (to the end of that day).
    #[serde(default)]
    pub data_until: Option<String>,
    /// Legal basis code (e.g. `GDPR-9.2.a`); a default for EU/EEA and US sites.
    #[serde(default)]
    pub legal_basis: Option<String>,
    /// Legal basis text.
    #[serde(default)]
    pub legal_text: Option<String>,
}

impl fmt::Debug for NewConsent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewConsent")
            .field("id", &self.id)
            .field("by", &self.by)
            .field("deny", &self.deny)
            .field("level", &self.level)
            .field("purposes", &self.purposes)
            .finish_non_exhaustive()
    }
}

/// A FHIR import (`medmesh consent import-fhir`, `POST /v1/consents/import-fhir`).
/// `Debug` does not show the patient mappings.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FhirImport {
    /// Files, each holding one FHIR R4 Consent resource (JSON).
    pub files: Vec<PathBuf>,
    /// FHIR R4 Consent resources (JSON text) given inline, as the web
    /// console's form sends them; named `(resource N)` in answers, from 1.
    #[serde(default)]
    pub resources: Vec<String>,
    /// Issuer of Patient ID (0010,0021) that the PACS uses for the patient
    /// identifiers (`Consent.patient.identifier.value`) of these resources,
    /// whatever their system, when `issuers` is empty; also the issuer of
    /// the Patient IDs in `patients`.
    #[serde(default)]
    pub issuer: String,
    /// Identifier systems → the Issuer of Patient ID they stand for. When
    /// given, an identifier of any other system is refused.
    #[serde(default)]
    pub issuers: Vec<(String, String)>,
    /// Patient references (`Patient/p-1001`) → the Patient ID (0010,0020) they
    /// stand for, for resources whose patient has no identifier.
    #[serde(default)]
    pub patients: Vec<(String, String)>,
    /// EpisodeOfCare references → the Admission ID (0038,0010) of the stay.
    #[serde(default)]
    pub episodes: Vec<(String, String)>,
    /// References or identifier values that denote this site (custodian actors).
    #[serde(default)]
    pub custodians: Vec<String>,
    /// Recipient actors: reference → recipient (`peer:ID`, `institution:NAME`,
    /// `jurisdiction:CC`, `consortium:ID`).
    #[serde(default)]
    pub recipients: Vec<(String, String)>,
    /// The level imported permits require; identifiable when absent.
    #[serde(default)]
    pub level: Option<DeidLevel>,
    /// Who consented when `Consent.performer` is absent.
    #[serde(default)]
    pub assume_by: Option<ConsentedBy>,
    /// Purposes for permits that name none (a narrowing of "every purpose").
    #[serde(default)]
    pub default_purposes: Vec<Purpose>,
    /// UTC offset in which FHIR dates without a time are read (`+01:00`); UTC when absent.
    #[serde(default)]
    pub utc_offset: Option<String>,
    /// Replace records already on record with the same id.
    #[serde(default)]
    pub replace: bool,
}

impl fmt::Debug for FhirImport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FhirImport")
            .field("files", &self.files)
            .field("issuers", &self.issuers)
            .field("patients", &format_args!("{} mappings", self.patients.len()))
            .field("episodes", &self.episodes.len())
            .field("replace", &self.replace)
            .finish_non_exhaustive()
    }
}

/// One consent as listed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConsentEntry {
    /// Its id.
    pub id: ConsentId,
    /// `in-force`, `not-yet-valid`, `expired` or `withdrawn`, now.
    pub status: String,
    /// Studies of this patient on record (0 often means a mistyped Patient
    /// ID or issuer: the consent then matches nothing).
    pub studies: usize,
    /// The record (its patient is the keyed pseudonym).
    pub record: ConsentRecord,
}

/// What one imported record became.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImportedConsent {
    /// The file it came from.
    pub file: PathBuf,
    /// Its id.
    pub id: ConsentId,
    /// `added`, `replaced` or `unchanged`.
    pub outcome: String,
    /// Studies of this patient on record.
    pub studies: usize,
    /// The record.
    pub record: ConsentRecord,
}

/// A question for [`ConsentService::check`] (`POST /v1/consents/check`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckQuery {
    /// Study Instance UID.
    pub study_uid: String,
    /// The receiving peer.
    pub peer_id: String,
    /// Why.
    pub purpose: Purpose,
    /// On whose behalf (recorded, not decided on); `clinician` when absent.
    #[serde(default)]
    pub role: Option<Role>,
    /// The level asked for; the weakest allowed when absent.
    #[serde(default)]
    pub level: Option<DeidLevel>,
}

/// What this node knows of a peer for a decision.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerFacts {
    /// Peer id.
    pub peer_id: String,
    /// Institution, from its verified certificate or bilateral record.
    pub institution: String,
    /// Jurisdiction, likewise.
    pub jurisdiction: String,
    /// Consortia it is a verified member of.
    pub consortia: Vec<String>,
    /// How it is trusted (`bilateral`, `consortium X serial N`).
    pub via: Vec<String>,
    /// Purposes it is trusted for.
    pub purposes: Vec<Purpose>,
}

/// One reason of a decision, with its stable code and its text for people.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reason {
    /// Stable machine code (cleaned on decoding, as it may come from a peer).
    #[serde(deserialize_with = "crate::text::de::code")]
    pub code: String,
    /// The reason in words (cleaned and capped on decoding: [`crate::text::clean`]).
    #[serde(deserialize_with = "crate::text::de::reason")]
    pub text: String,
}

/// The grant an allow (or an approval) would give.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GrantView {
    /// De-identification level to apply.
    pub level: DeidLevel,
    /// When the grant ends (RFC 3339).
    pub expires_at: DateTime<Utc>,
    /// Series Instance UIDs that may be sent.
    pub series: Vec<String>,
    /// Consents relied on.
    pub consents: Vec<String>,
    /// The object-level scope: each object of the series is decided on its
    /// own Modality and SOP Class when a transfer is prepared.
    #[serde(skip)]
    pub objects: consent_schema::ObjectScope,
}

/// The answer of [`ConsentService::check`]: trust first, then consent and policy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConsentCheck {
    /// The outcome.
    pub decision: Verdict,
    /// The study.
    pub study_uid: String,
    /// The purpose.
    pub purpose: Purpose,
    /// The peer, when this node knows it.
    pub peer: Option<PeerFacts>,
    /// Why trust refuses the peer for this purpose (empty when it does not).
    pub trust: Vec<Reason>,
    /// Why consent or policy deny (empty unless they do).
    pub reasons: Vec<Reason>,
    /// Why a human must approve (empty unless needed).
    pub approval: Vec<Reason>,
    /// What would be granted (allow, or needs-approval once approved).
    pub grant: Option<GrantView>,
    /// Series left out because their Modality is missing or not a DICOM code.
    pub excluded_series: Vec<String>,
    /// Consents of the patient on record, whatever their state.
    pub consents_on_record: usize,
    /// When the decision was made.
    pub at: DateTime<Utc>,
}

/// The outcome of a [`ConsentCheck`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// The transfer may go ahead.
    Allow,
    /// Trust, consent or policy refuse it.
    Deny,
    /// Consent and policy allow it once a human approves.
    NeedsApproval,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::NeedsApproval => "needs-approval",
        })
    }
}

impl ConsentCheck {
    /// True for an allow.
    #[must_use]
    pub fn allowed(&self) -> bool {
        self.decision == Verdict::Allow
    }
}

fn status_name(r: &ConsentRecord, now: DateTime<Utc>) -> &'static str {
    match r.status_at(now) {
        TimeStatus::Withdrawn { .. } => "withdrawn",
        TimeStatus::Expired { .. } => "expired",
        TimeStatus::NotYetValid { .. } => "not-yet-valid",
        _ => "in-force",
    }
}

/// The consent service of a home: records, withdrawals and decisions.
#[derive(Clone, Copy)]
pub struct ConsentService<'a> {
    store: &'a Store,
    own: &'a VerifiedNodeRecord,
    policy: &'a PolicyConfig,
    trust: TrustService<'a>,
    effects: &'a dyn Effects,
}

impl fmt::Debug for ConsentService<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsentService").finish_non_exhaustive()
    }
}

impl<'a> ConsentService<'a> {
    /// The service over `store`, for the node of record `own` under the
    /// site policy `policy`; `trust` says what peers are, `effects` writes
    /// its ledger entries and ends the transfers a change affects.
    #[must_use]
    pub fn new(
        store: &'a Store,
        own: &'a VerifiedNodeRecord,
        policy: &'a PolicyConfig,
        trust: TrustService<'a>,
        effects: &'a dyn Effects,
    ) -> Self {
        Self {
            store,
            own,
            policy,
            trust,
            effects,
        }
    }

    /// How many stored studies of the patient the consent's scope covers
    /// (its studies or episode, data period and modalities); a locked study
    /// is not counted.
    fn studies_of(&self, r: &ConsentRecord) -> Result<usize, ConsentOpError> {
        let mut n = 0;
        for study in self.store.studies_of_patient(r.patient().as_bytes())? {
            let Some(row) = self.store.study_row(&study)? else {
                continue;
            };
            let Ok(key) = self.store.unwrap_study_key(&study, &row) else {
                continue;
            };
            let meta = self.store.open_study_meta(&study, &key, &row)?;
            let Ok(uid) = study_uid("study", &meta.study_uid) else {
                continue;
            };
            let (facts, _) = study_facts(&uid, *r.patient(), &meta);
            if scope_covers(r.scope(), &facts) {
                n += 1;
            }
        }
        Ok(n)
    }

    fn entry(&self, r: ConsentRecord, now: DateTime<Utc>) -> Result<ConsentEntry, ConsentOpError> {
        Ok(ConsentEntry {
            id: r.id().clone(),
            status: status_name(&r, now).into(),
            studies: self.studies_of(&r)?,
            record: r,
        })
    }
}

use crate::clock::now_utc as utc_now;

/// Parses a date (`2026-03-01`, a UTC day) or an RFC 3339 instant. With
/// `end_of_day`, a date means the end of that day (the next midnight).
fn parse_time(field: &'static str, s: &str, end_of_day: bool) -> Result<DateTime<Utc>, ConsentOpError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let d =
        NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| invalid(field, Invalid::Time { value: s.to_string() }))?;
    let start = d.and_time(NaiveTime::MIN).and_utc();
    Ok(if end_of_day { start + TimeDelta::days(1) } else { start })
}

fn parse_recipient(field: &'static str, s: &str) -> Result<Recipient, ConsentOpError> {
    let (kind, value) = s
        .split_once(':')
        .ok_or_else(|| invalid(field, Invalid::RecipientForm { value: s.to_string() }))?;
    Ok(match kind {
        "peer" => Recipient::Peer(peer_id(field, value)?),
        "institution" => Recipient::Institution(parse_id(field, value)?),
        "jurisdiction" => Recipient::Jurisdiction(jurisdiction(field, value)?),
        "consortium" => Recipient::Consortium(parse_id(field, value)?),
        other => {
            return Err(invalid(
                field,
                Invalid::RecipientKind {
                    kind: other.to_string(),
                },
            ));
        }
    })
}

fn peer_id(field: &'static str, s: &str) -> Result<PeerId, ConsentOpError> {
    s.parse::<libp2p::PeerId>().map_err(|cause| {
        invalid(
            field,
            Invalid::PeerId {
                value: s.to_string(),
                cause,
            },
        )
    })?;
    parse_id(field, s)
}

fn jurisdiction(field: &'static str, s: &str) -> Result<Jurisdiction, ConsentOpError> {
    s.parse().map_err(|e: IdError| invalid(field, e))
}

/// Study Instance UIDs: 1 to 64 characters of digits and dots.
fn study_uid(field: &'static str, s: &str) -> Result<StudyRef, ConsentOpError> {
    let ok = s.len() <= 64
        && s.split('.').count() >= 2
        && s.split('.')
            .all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()));
    if !ok {
        return Err(invalid(field, Invalid::StudyUid { value: s.to_string() }));
    }
    parse_id(field, s)
}

/// EU and EEA members: GDPR applies.
const GDPR: [&str; 30] = [
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT", "LV", "LT", "LU", "MT",
    "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE", "IS", "LI", "NO",
];

/// The default legal basis of a consent recorded at a site in `home`.
fn default_legal_basis(home: &str, by: ConsentedBy) -> Option<(&'static str, &'static str)> {
    let waiver = by == ConsentedBy::EthicsBoardWaiver;
    if GDPR.contains(&home) {
        Some(if waiver {
            (
                "GDPR-9.2.j",
                "research under an ethics-board waiver, with safeguards (GDPR Art. 9(2)(j))",
            )
        } else {
            ("GDPR-9.2.a", "explicit consent (GDPR Art. 9(2)(a))")
        })
    } else if home == "US" {
        Some(if waiver {
            (
                "HIPAA-164.512(i)",
                "research under an IRB or privacy board waiver (45 CFR 164.512(i))",
            )
        } else {
            ("HIPAA-164.508", "authorization by the individual (45 CFR 164.508)")
        })
    } else {
        None
    }
}

fn fresh_id() -> Result<ConsentId, ConsentOpError> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| invalid("id", Invalid::Random(e)))?;
    parse_id("id", &format!("c-{}", hex::encode(b)))
}

/// The study facts of a stored study, and the series left out for want of a
/// valid modality.
fn study_facts(study: &StudyRef, patient: PatientRef, meta: &StudyMeta) -> (StudyFacts, Vec<String>) {
    let mut series = Vec::new();
    let mut excluded = Vec::new();
    for (uid, s) in &meta.series {
        match (SeriesRef::new(uid.as_str()), Modality::new(s.modality.as_str())) {
            (Ok(series_ref), Ok(modality)) => series.push(SeriesFacts {
                series: series_ref,
                modality,
            }),
            _ => excluded.push(uid.clone()),
        }
    }
    let episode = meta
        .attrs
        .admission_id
        .as_deref()
        .and_then(|a| EpisodeId::new(a.trim()).ok());
    let facts = StudyFacts {
        study: study.clone(),
        patient,
        episode,
        acquired_at: acquired_at(&meta.attrs.study_date, &meta.attrs.study_time),
        series,
    };
    (facts, excluded)
}

/// Whether a consent's scope covers a study at all (whatever the purpose
/// and recipient): its coverage, data period and at least one modality.
fn scope_covers(scope: &Scope, study: &StudyFacts) -> bool {
    let covered = match &scope.coverage {
        Coverage::WholeRecord => true,
        Coverage::Studies(set) => set.contains(&study.study),
        Coverage::Episode(e) => study.episode.as_ref() == Some(e),
    };
    let in_period = match (&scope.data_period, study.acquired_at) {
        (None, _) => true,
        (Some(p), Some(t)) => p.contains(t),
        (Some(_), None) => false,
    };
    covered && in_period && study.series.iter().any(|s| scope.modalities.covers(&s.modality))
}

/// Study Date and Time (DA, TM) as an instant, read as UTC.
fn acquired_at(date: &str, time: &str) -> Option<DateTime<Utc>> {
    let d = NaiveDate::parse_from_str(date.trim(), "%Y%m%d").ok()?;
    // TM is HH[MM[SS[.F{1,6}]]]; anything else makes the time unknown (never guessed).
    let time = time.trim();
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    if !hms.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let part = |i: usize| match hms.get(i..i + 2) {
        Some(p) => p.parse::<u32>().ok(),
        None if hms.len() <= i => Some(0),
        None => None,
    };
    if ![0, 2, 4, 6].contains(&hms.len()) {
        return None;
    }
    let t = NaiveTime::from_hms_opt(part(0)?, part(2)?, part(4)?)?;
    Some(d.and_time(t).and_utc())
}

fn reason(code: &str, text: impl Into<String>) -> Reason {
    Reason {
        code: code.into(),
        text: text.into(),
    }
}

impl ConsentService<'_> {
    /// The site policy: `[policy]` with this node's own jurisdiction.
    ///
    /// # Errors
    /// [`ConsentOpError::Invalid`] if the node record's jurisdiction does not parse.
    pub fn site_policy(&self) -> Result<SitePolicy, ConsentOpError> {
        let own = &self.own.record().jurisdiction;
        let home = own.parse().map_err(|cause: IdError| {
            invalid(
                "jurisdiction",
                Invalid::OwnJurisdiction {
                    value: own.to_string(),
                    cause,
                },
            )
        })?;
        Ok(self.policy.site_policy(home))
    }

    /// The consent's keyed reference (`consent-` and 32 hex digits): what
    /// gossiped ledger entries and logs name instead of its id, which for a
    /// FHIR Consent is the hospital's own resource id. Only this node can
    /// tell which consent it stands for.
    #[must_use]
    pub fn consent_ref(&self, consent_id: &ConsentId) -> String {
        format!("consent-{}", hex::encode(&self.store.consent_ref(consent_id)[..16]))
    }

    /// The `consent-added` entry of a consent: named by its keyed reference, never its id.
    fn consent_added(&self, id: &ConsentId) -> crate::ledger::Event {
        crate::ledger::Event::ConsentAdded {
            consent: self.consent_ref(id),
        }
    }

    fn patient_ref(&self, patient_id: &str, issuer: &str) -> PatientRef {
        PatientRef::from_bytes(self.store.patient_ref(patient_id, issuer))
    }

    /// Records a consent and returns it.
    ///
    /// # Errors
    /// [`ConsentOpError`] naming the field at fault, store errors.
    pub fn add(&self, c: NewConsent) -> Result<ConsentEntry, ConsentOpError> {
        let now = utc_now();
        if c.patient_id.trim().is_empty() {
            return Err(invalid("patient-id", Invalid::Empty));
        }
        let id = match &c.id {
            Some(id) => parse_id("id", id)?,
            None => fresh_id()?,
        };
        let provision = match (c.deny, c.level) {
            (true, None) => Provision::Deny,
            (true, Some(_)) => return Err(invalid("level", Invalid::DenyWithLevel)),
            (false, Some(level)) => Provision::Permit { level },
            (false, None) => {
                return Err(invalid("level", Invalid::PermitWithoutLevel));
            }
        };
        let mut recipients = BTreeSet::new();
        for p in &c.recipient_peers {
            recipients.insert(Recipient::Peer(peer_id("recipient-peer", p)?));
        }
        for i in &c.recipient_institutions {
            recipients.insert(Recipient::Institution(parse_id("recipient-institution", i)?));
        }
        for j in &c.recipient_jurisdictions {
            recipients.insert(Recipient::Jurisdiction(jurisdiction("recipient-jurisdiction", j)?));
        }
        for k in &c.recipient_consortia {
            recipients.insert(Recipient::Consortium(parse_id("recipient-consortium", k)?));
        }
        let mut modalities = BTreeSet::new();
        for m in &c.modalities {
            modalities.insert(m.parse::<Modality>().map_err(|e| invalid("modality", e))?);
        }
        let coverage = match (&c.episode, c.studies.is_empty()) {
            (Some(_), false) => return Err(invalid("episode", Invalid::StudiesAndEpisode)),
            (Some(e), true) => Coverage::Episode(parse_id("episode", e)?),
            (None, false) => Coverage::Studies(
                c.studies
                    .iter()
                    .map(|s| study_uid("study", s))
                    .collect::<Result<_, _>>()?,
            ),
            (None, true) => Coverage::WholeRecord,
        };
        let data_period = match (&c.data_from, &c.data_until) {
            (None, None) => None,
            (from, until) => Some(DataPeriod {
                from: from.as_deref().map(|s| parse_time("data-from", s, false)).transpose()?,
                until: until
                    .as_deref()
                    .map(|s| parse_time("data-until", s, true))
                    .transpose()?,
            }),
        };
        let home = &self.own.record().jurisdiction;
        let (code, text) = match (&c.legal_basis, default_legal_basis(home, c.by)) {
            (Some(code), _) => (code.clone(), c.legal_text.clone().unwrap_or_default()),
            (None, Some((code, text))) => (code.to_string(), c.legal_text.clone().unwrap_or_else(|| text.into())),
            (None, None) => {
                return Err(invalid(
                    "legal-basis",
                    Invalid::NoDefaultLegalBasis { home: home.to_string() },
                ));
            }
        };
        let legal_basis = LegalBasis::new(code, text).map_err(|source| record_err(&id, source))?;
        let valid_from = c
            .from
            .as_deref()
            .map(|s| parse_time("from", s, false))
            .transpose()?
            .unwrap_or(now);
        let valid_until = c.until.as_deref().map(|s| parse_time("until", s, true)).transpose()?;
        if let (Some(until), Some(typed)) = (valid_until, c.until.as_deref())
            && until <= valid_from
        {
            // Said in the user's terms: the option and the date as typed.
            let from = c
                .from
                .as_deref()
                .map_or_else(|| "now".to_string(), |f| format!("--from {f}"));
            return Err(invalid(
                "until",
                Invalid::NotAfter {
                    until: typed.to_string(),
                    from,
                },
            ));
        }
        let draft = ConsentDraft {
            id: id.clone(),
            patient: self.patient_ref(c.patient_id.trim(), c.issuer.trim()),
            consented_by: c.by,
            provision,
            scope: Scope {
                purposes: c.purposes.iter().copied().collect(),
                modalities: if modalities.is_empty() {
                    ModalityScope::All
                } else {
                    ModalityScope::Only(modalities)
                },
                recipients: if recipients.is_empty() {
                    RecipientScope::Any
                } else {
                    RecipientScope::Only(recipients)
                },
                coverage,
                data_period,
            },
            valid_from,
            valid_until,
            withdrawn_at: None,
            legal_basis,
        };
        let record = ConsentRecord::new(draft).map_err(|source| record_err(&id, source))?;
        // The record and its entry in one transaction.
        let entries = self.store.update_consents_logged(
            std::slice::from_ref(&id),
            Some(&self.effects.author()),
            |_, stored| match stored {
                Some(_) => Err(invalid("id", Invalid::Recorded { id: id.to_string() })),
                None => Ok((Some(record.clone()), vec![self.consent_added(&id)])),
            },
        )?;
        self.effects.logged(&entries);
        tracing::info!(consent = %self.consent_ref(&id), "consent recorded");
        // An objection (a deny) may end transfers under way.
        self.effects.end_affected_transfers_after("consent added");
        self.entry(record, now)
    }

    /// Imports FHIR R4 Consent resources, all or nothing: if any file fails,
    /// nothing is stored.
    ///
    /// # Errors
    /// [`ConsentOpError`] naming the file and the element, store errors.
    pub fn import_fhir(&self, req: &FhirImport) -> Result<Vec<ImportedConsent>, ConsentOpError> {
        let issuer = req.issuer.trim();
        let pseudonymise = |p: &FhirPatient<'_>| {
            let by_identifier = || {
                let value = p.identifier_value?;
                if req.issuers.is_empty() {
                    return Some((value, issuer));
                }
                let system = p.identifier_system?;
                let (_, mapped) = req.issuers.iter().find(|(s, _)| s == system)?;
                Some((value, mapped.trim()))
            };
            let by_reference = || {
                let reference = p.reference?;
                let (_, id) = req.patients.iter().find(|(r, _)| r == reference)?;
                Some((id.as_str(), issuer))
            };
            let (id, issuer) = if p.identifier_value.is_some() {
                by_identifier()?
            } else {
                by_reference()?
            };
            let id = id.trim();
            (!id.is_empty()).then(|| self.patient_ref(id, issuer))
        };
        let mut ctx = ImportContext::new(&pseudonymise).level(req.level.unwrap_or(DeidLevel::Identifiable));
        for c in &req.custodians {
            ctx = ctx.custodian(c.clone());
        }
        for (reference, recipient) in &req.recipients {
            ctx = ctx.organization(reference.clone(), parse_recipient("recipient", recipient)?);
        }
        if let Some(by) = req.assume_by {
            ctx = ctx.assume_consented_by(by);
        }
        if !req.default_purposes.is_empty() {
            ctx = ctx.purposes_when_unspecified(req.default_purposes.iter().copied());
        }
        if let Some(o) = &req.utc_offset {
            let offset =
                FixedOffset::from_str(o).map_err(|_| invalid("utc-offset", Invalid::Offset { value: o.clone() }))?;
            ctx = ctx.local_offset(offset);
        }
        let mut out: Vec<ImportedConsent> = Vec::new();
        let mut sources: Vec<(PathBuf, String)> = Vec::new();
        for file in &req.files {
            let text = std::fs::read_to_string(file).map_err(|cause| ConsentOpError::Io {
                path: file.display().to_string(),
                cause,
            })?;
            sources.push((file.clone(), text));
        }
        for (i, text) in req.resources.iter().enumerate() {
            sources.push((PathBuf::from(format!("(resource {})", i + 1)), text.clone()));
        }
        for (file, text) in &sources {
            let path = file.display().to_string();
            let records = fhir::import_consent_str(text, &ctx).map_err(|cause| ConsentOpError::Fhir {
                path: path.clone(),
                cause: Box::new(cause),
            })?;
            for r in records {
                let r = match_scope(&path, r, &req.episodes)?;
                let id = r.id().clone();
                if out.iter().any(|o| o.id == id) {
                    return Err(ConsentOpError::Duplicate {
                        path,
                        id: id.to_string(),
                    });
                }
                out.push(ImportedConsent {
                    file: file.clone(),
                    id,
                    outcome: String::new(),
                    studies: self.studies_of(&r)?,
                    record: r,
                });
            }
        }
        // The outcome is decided against what is stored inside the write
        // transaction, so a concurrent withdrawal is never overwritten.
        let ids: Vec<ConsentId> = out.iter().map(|o| o.record.id().clone()).collect();
        let replace = req.replace;
        // Each record written and its entry (`consent-added`, and
        // `consent-withdrawn` for one imported as withdrawn) in one transaction.
        let entries = self
            .store
            .update_consents_logged(&ids, Some(&self.effects.author()), |i, stored| {
                let o = &mut out[i];
                let err = |e: fn(String, String) -> ConsentOpError| e(o.file.display().to_string(), o.id.to_string());
                let (outcome, write) = match stored {
                    None => ("added", true),
                    Some(old) if old == o.record => ("unchanged", false),
                    Some(old) if old.withdrawn_at().is_some() => {
                        return Err(err(|path, id| ConsentOpError::Withdrawn { path, id }));
                    }
                    Some(_) if replace => ("replaced", true),
                    Some(_) => return Err(err(|path, id| ConsentOpError::Exists { path, id })),
                };
                o.outcome = outcome.into();
                if !write {
                    return Ok((None, Vec::new()));
                }
                let mut events = vec![self.consent_added(o.record.id())];
                if o.record.withdrawn_at().is_some() {
                    events.push(crate::ledger::Event::ConsentWithdrawn {
                        consent: self.consent_ref(o.record.id()),
                    });
                }
                Ok((Some(o.record.clone()), events))
            })?;
        self.effects.logged(&entries);
        let changed = out.iter().filter(|o| o.outcome != "unchanged").count();
        tracing::info!(records = changed, "FHIR consents imported");
        self.effects.end_affected_transfers_after("FHIR consents imported");
        Ok(out)
    }

    /// Every consent on record, or those of one patient.
    ///
    /// # Errors
    /// Store errors.
    pub fn list(&self, patient: Option<(&str, &str)>) -> Result<Vec<ConsentEntry>, ConsentOpError> {
        let now = utc_now();
        let records = match patient {
            Some((id, issuer)) => self
                .store
                .consents_of_patient(self.patient_ref(id.trim(), issuer.trim()).as_bytes())?,
            None => self.store.consents()?,
        };
        records.into_iter().map(|r| self.entry(r, now)).collect()
    }

    /// Withdraws a consent now: every later decision treats it as withdrawn.
    /// An earlier withdrawal is kept.
    ///
    /// # Errors
    /// [`ConsentOpError::Unknown`], store errors.
    pub fn withdraw(&self, id: &str) -> Result<ConsentEntry, ConsentOpError> {
        let now = utc_now();
        let cid: ConsentId = parse_id("id", id)?;
        let mut result = None;
        // The withdrawal and its entry in one transaction.
        let entries = self.store.update_consents_logged(
            std::slice::from_ref(&cid),
            Some(&self.effects.author()),
            |_, stored| {
                let mut record = stored.ok_or_else(|| ConsentOpError::Unknown { id: id.to_string() })?;
                let change = record.withdrawn_at().is_none_or(|w| w > now);
                if change {
                    record.withdraw(now);
                    tracing::info!(consent = %self.consent_ref(&cid), "consent withdrawn");
                }
                result = Some(record.clone());
                let event = crate::ledger::Event::ConsentWithdrawn {
                    consent: self.consent_ref(&cid),
                };
                Ok::<_, ConsentOpError>((change.then_some(record), vec![event]))
            },
        )?;
        self.effects.logged(&entries);
        let record = result.ok_or_else(|| ConsentOpError::Unknown { id: id.to_string() })?;
        self.effects.end_affected_transfers_after("consent withdrawn");
        self.entry(record, now)
    }

    /// What this node knows of `peer` now, and why trust refuses it for
    /// `purpose` (empty when it does not).
    ///
    /// # Errors
    /// Store errors.
    pub fn peer_facts(&self, peer: &str, purpose: Purpose) -> Result<(Option<PeerFacts>, Vec<Reason>), ConsentOpError> {
        let t = crate::clock::now();
        let state = self.trust.state()?;
        let Some(h) = hello::peer_hello(self.store, &state, peer)? else {
            return Ok((
                None,
                vec![reason(
                    "unknown-peer",
                    format!(
                        "peer {peer} has never connected to this node and is not trusted bilaterally: \
                         its institution and jurisdiction are unknown"
                    ),
                )],
            ));
        };
        let accepted = match hello::evaluate(&state, peer, &h, t) {
            Ok(a) => a,
            Err(refusal) => {
                return Ok((
                    None,
                    vec![reason(refusal.code(), format!("peer {peer} is not trusted: {refusal}"))],
                ));
            }
        };
        let mut facts = PeerFacts {
            peer_id: peer.to_string(),
            institution: accepted.trusted.institution.clone(),
            jurisdiction: accepted.trusted.jurisdiction.clone(),
            consortia: Vec::new(),
            via: Vec::new(),
            purposes: Vec::new(),
        };
        let add = |t: &trust::Trusted, facts: &mut PeerFacts| {
            let via = match &t.via {
                Via::Consortium { consortium, serial } => {
                    if !facts.consortia.contains(consortium) {
                        facts.consortia.push(consortium.clone());
                    }
                    format!("consortium {consortium} serial {serial}")
                }
                Via::Bilateral => "bilateral".into(),
            };
            if !facts.via.contains(&via) {
                facts.via.push(via);
            }
            for p in &t.purposes {
                if !facts.purposes.contains(p) {
                    facts.purposes.push(*p);
                }
            }
        };
        add(&accepted.trusted, &mut facts);
        for cert in &accepted.certificates {
            if let TrustDecision::Trust(t) = trust::decide(&state, peer, std::slice::from_ref(cert), t) {
                add(&t, &mut facts);
            }
        }
        facts.purposes.sort();
        let mut refusals = Vec::new();
        if !facts.purposes.contains(&purpose) {
            let list: Vec<&str> = facts.purposes.iter().map(|p| p.as_str()).collect();
            refusals.push(reason(
                "purpose-not-trusted",
                format!(
                    "peer {peer} is trusted for {} only, not for {purpose} ({})",
                    list.join(", "),
                    facts.via.join("; ")
                ),
            ));
        }
        Ok((Some(facts), refusals))
    }

    /// The decision on sending `study_uid` to `peer_id` for `purpose` now:
    /// trust, then [`consent_schema::evaluate`] over the patient's consents
    /// and the site policy. Nothing is sent.
    ///
    /// # Errors
    /// An unknown or locked study, store errors.
    pub fn check(&self, q: &CheckQuery) -> Result<ConsentCheck, ConsentOpError> {
        let now = utc_now();
        let requester = peer_id("peer", &q.peer_id)?;
        let study = self.store.study_ref(&q.study_uid);
        let row = self.store.study_row(&study)?.ok_or_else(|| StoreError::UnknownStudy {
            study: q.study_uid.clone(),
        })?;
        let key = self.store.unwrap_study_key(&study, &row)?;
        let meta = self.store.open_study_meta(&study, &key, &row)?;
        let patient = self.patient_ref(meta.attrs.patient_id.trim(), meta.attrs.issuer_of_patient_id.trim());
        let consents = if meta.attrs.patient_id.trim().is_empty() {
            Vec::new()
        } else {
            self.store.consents_of_patient(patient.as_bytes())?
        };
        let (facts, trust) = self.peer_facts(&q.peer_id, q.purpose)?;
        let study_ref: StudyRef = study_uid("study", &q.study_uid)?;
        let (study_facts, excluded_series) = study_facts(&study_ref, patient, &meta);
        let mut report = ConsentCheck {
            decision: Verdict::Deny,
            study_uid: q.study_uid.clone(),
            purpose: q.purpose,
            peer: facts.clone(),
            trust,
            reasons: Vec::new(),
            approval: Vec::new(),
            grant: None,
            excluded_series,
            consents_on_record: consents.len(),
            at: now,
        };
        let Some(facts) = facts else {
            return Ok(report);
        };
        let of_peer = |certified: &'static str, cause: IdError| {
            invalid(
                "peer",
                Invalid::Certified {
                    peer: q.peer_id.to_string(),
                    certified,
                    cause,
                },
            )
        };
        let institution: InstitutionId = facts.institution.parse().map_err(|e| of_peer("institution", e))?;
        let request = TransferRequest {
            peer: requester,
            institution,
            jurisdiction: facts.jurisdiction.parse().map_err(|e| of_peer("jurisdiction", e))?,
            consortia: facts
                .consortia
                .iter()
                .map(|c| parse_id::<ConsortiumId>("consortium", c))
                .collect::<Result<_, _>>()?,
            purpose: q.purpose,
            role: q.role.unwrap_or(Role::Clinician),
            requested_level: q.level,
            study: study_facts,
        };
        let policy = self.site_policy()?;
        // A study stored before Admission IDs were recorded has an unknown
        // episode: an objection scoped to an episode may cover it, so it is
        // withheld (as evaluate reads an unknown acquisition time).
        if meta.attrs.admission_id.is_none()
            && consents.iter().any(|c| {
                c.provision() == Provision::Deny
                    && matches!(c.scope().coverage, Coverage::Episode(_))
                    && c.status_at(now) == TimeStatus::InForce
            })
        {
            report.reasons.push(reason(
                "episode-unknown",
                "the study's episode of care is unknown (it was stored before medmesh recorded Admission IDs) \
                 and an objection of this patient is scoped to an episode, so the study is withheld",
            ));
            return Ok(report);
        }
        let view = |g: &consent_schema::Grant| GrantView {
            level: g.level(),
            expires_at: g.expires_at(),
            series: g.series().iter().map(ToString::to_string).collect(),
            consents: g.consents().iter().map(ToString::to_string).collect(),
            objects: g.objects().clone(),
        };
        match consent_schema::evaluate(&request, &consents, &policy, now) {
            // A trust refusal is final: no grant is shown for it.
            Decision::Allow(g) if report.trust.is_empty() => {
                report.grant = Some(view(&g));
                report.decision = Verdict::Allow;
            }
            Decision::Deny { reasons } => {
                report.reasons = reasons.iter().map(|r| reason(r.code(), r.to_string())).collect();
            }
            Decision::NeedsApproval { why, grant } if report.trust.is_empty() => {
                report.grant = Some(view(&grant));
                report.approval = why.iter().map(|r| reason(r.code(), r.to_string())).collect();
                report.decision = Verdict::NeedsApproval;
            }
            _ => {}
        }
        Ok(report)
    }
}

fn record_err(id: &ConsentId, cause: ConsentError) -> ConsentOpError {
    ConsentOpError::Record {
        id: id.to_string(),
        cause,
    }
}

/// A FHIR reference (`EpisodeOfCare/17`, `urn:uuid:…`, an absolute URL)
/// rather than an identifier value.
fn is_reference(s: &str) -> bool {
    s.contains('/') || s.starts_with("urn:") || s.starts_with('#')
}

/// Turns the studies and the episode an imported record names into what the
/// store matches: Study Instance UIDs (`urn:oid:1.2.3` → `1.2.3`) and
/// Admission IDs (an identifier value as is, a reference through
/// `episodes`). A reference it cannot match is refused, never dropped: a
/// deny that matches nothing would widen what is allowed.
fn match_scope(path: &str, r: ConsentRecord, episodes: &[(String, String)]) -> Result<ConsentRecord, ConsentOpError> {
    let id = r.id().clone();
    let coverage = match &r.scope().coverage {
        Coverage::WholeRecord => return Ok(r),
        Coverage::Studies(studies) => {
            let mut uids = BTreeSet::new();
            for s in studies {
                let text = s.as_str();
                let uid = text.strip_prefix("urn:oid:").unwrap_or(text);
                let uid = study_uid("study", uid).map_err(|_| ConsentOpError::StudyReference {
                    path: path.to_string(),
                    id: id.to_string(),
                    found: text.to_string(),
                })?;
                uids.insert(uid);
            }
            Coverage::Studies(uids)
        }
        Coverage::Episode(e) if !is_reference(e.as_str()) => return Ok(r),
        Coverage::Episode(e) => {
            let admission = episodes
                .iter()
                .find(|(reference, _)| reference == e.as_str())
                .map(|(_, a)| a.as_str())
                .ok_or_else(|| ConsentOpError::EpisodeReference {
                    path: path.to_string(),
                    id: id.to_string(),
                    found: e.to_string(),
                })?;
            Coverage::Episode(parse_id("episode", admission)?)
        }
    };
    let mut draft = r.into_draft();
    draft.scope.coverage = coverage;
    ConsentRecord::new(draft).map_err(|cause| record_err(&id, cause))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn dates_and_instants() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        assert_eq!(
            parse_time("from", "2026-03-01", false).unwrap(),
            t("2026-03-01T00:00:00Z")
        );
        assert_eq!(
            parse_time("until", "2026-03-01", true).unwrap(),
            t("2026-03-02T00:00:00Z")
        );
        assert_eq!(
            parse_time("from", "2026-03-01T08:00:00+01:00", false).unwrap(),
            t("2026-03-01T07:00:00Z")
        );
        let err = parse_time("until", "01/03/2026", true).unwrap_err().to_string();
        assert!(err.starts_with("until:"), "{err}");
        assert_eq!(acquired_at("20240105", "134501.123"), Some(t("2024-01-05T13:45:01Z")));
        assert_eq!(acquired_at("20240105", ""), Some(t("2024-01-05T00:00:00Z")));
        assert_eq!(acquired_at("2024", "1200"), None);
        assert_eq!(
            acquired_at("20240105", "2500"),
            None,
            "an invalid time is unknown, not guessed"
        );
        assert_eq!(acquired_at("20240105", "12:00"), None);
        assert_eq!(acquired_at("20240105", "123"), None);
    }

    #[test]
    fn study_facts_carry_episode_time_and_valid_series_only() {
        use crate::store::SeriesMeta;
        let mut meta = StudyMeta::default();
        meta.attrs.admission_id = Some(" A-2026-17 ".into());
        meta.attrs.study_date = "20260105".into();
        meta.attrs.study_time = "0830".into();
        for (uid, modality) in [("1.2.1", "CT"), ("1.2.2", ""), ("1.2.3", "ct scan"), ("1.2.4", "MR")] {
            meta.series.insert(
                uid.into(),
                SeriesMeta {
                    modality: modality.into(),
                    ..SeriesMeta::default()
                },
            );
        }
        let study: StudyRef = "1.2".parse().unwrap();
        let (facts, excluded) = study_facts(&study, PatientRef::from_bytes([7; 32]), &meta);
        assert_eq!(facts.episode.as_ref().map(EpisodeId::as_str), Some("A-2026-17"));
        assert_eq!(facts.acquired_at, Some("2026-01-05T08:30:00Z".parse().unwrap()));
        let kept: Vec<&str> = facts.series.iter().map(|s| s.series.as_str()).collect();
        assert_eq!(kept, ["1.2.1", "1.2.4"]);
        assert_eq!(
            excluded,
            ["1.2.2", "1.2.3"],
            "no modality, or not a DICOM code: never sent"
        );
        meta.attrs.admission_id = Some(String::new());
        assert!(
            study_facts(&study, PatientRef::from_bytes([7; 32]), &meta)
                .0
                .episode
                .is_none()
        );
    }

    #[test]
    fn recipients_and_uids() {
        assert!(matches!(
            parse_recipient("recipient", "jurisdiction:FR").unwrap(),
            Recipient::Jurisdiction(_)
        ));
        for bad in ["FR", "country:FR", "peer:not-a-peer", "jurisdiction:UK"] {
            let err = parse_recipient("recipient", bad).unwrap_err().to_string();
            assert!(err.starts_with("recipient:"), "{bad}: {err}");
        }
        assert!(study_uid("study", "1.2.840.113619.2.1").is_ok());
        assert!(study_uid("study", "ImagingStudy/42").is_err());
        assert!(
            study_uid("study", "20260117").is_err(),
            "an accession number is not a UID"
        );
        assert!(study_uid("study", "1..2").is_err());
        assert!(is_reference("EpisodeOfCare/17") && is_reference("urn:uuid:5f0e") && !is_reference("A-2026-17"));
    }

    #[test]
    fn debug_never_shows_patient_ids() {
        let c = NewConsent {
            id: None,
            patient_id: "MRN-SECRET-1".into(),
            issuer: "ISSUER-SECRET".into(),
            by: ConsentedBy::Patient,
            deny: false,
            level: Some(DeidLevel::Identifiable),
            purposes: vec![Purpose::Treatment],
            recipient_peers: vec![],
            recipient_institutions: vec![],
            recipient_jurisdictions: vec![],
            recipient_consortia: vec![],
            modalities: vec![],
            studies: vec![],
            episode: None,
            from: None,
            until: None,
            data_from: None,
            data_until: None,
            legal_basis: None,
            legal_text: None,
        };
        let f = FhirImport {
            patients: vec![("Patient/p-1".into(), "MRN-SECRET-1".into())],
            ..FhirImport::default()
        };
        let l = crate::api::ConsentListRequest {
            patient: Some(("MRN-SECRET-1".into(), "ISSUER-SECRET".into())),
        };
        let s = crate::api::ListRequest {
            patient: Some(("MRN-SECRET-1".into(), "ISSUER-SECRET".into())),
        };
        for text in [format!("{c:?}"), format!("{f:?}"), format!("{l:?}"), format!("{s:?}")] {
            assert!(!text.contains("SECRET"), "{text}");
        }
    }

    #[test]
    fn legal_basis_defaults_by_jurisdiction() {
        assert_eq!(default_legal_basis("DE", ConsentedBy::Patient).unwrap().0, "GDPR-9.2.a");
        assert_eq!(
            default_legal_basis("NO", ConsentedBy::EthicsBoardWaiver).unwrap().0,
            "GDPR-9.2.j"
        );
        assert_eq!(
            default_legal_basis("US", ConsentedBy::LegalGuardian).unwrap().0,
            "HIPAA-164.508"
        );
        assert!(default_legal_basis("JP", ConsentedBy::Patient).is_none());
        for (code, _) in [
            default_legal_basis("FR", ConsentedBy::Patient).unwrap(),
            default_legal_basis("US", ConsentedBy::EthicsBoardWaiver).unwrap(),
        ] {
            assert!(LegalBasis::new(code, "").is_ok(), "{code}");
        }
    }
}
