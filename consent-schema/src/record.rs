//! The consent record: who agreed to what, for which data, for whom, and until when.
//!
//! A [`ConsentRecord`] can only be built through [`ConsentRecord::new`] (or decoded, which calls
//! it), so every record in memory satisfies its invariants: at least one purpose, non-empty
//! `only` lists, `valid_until` after `valid_from`, a well-formed legal basis, and no deny signed by
//! an ethics board. Build one from a [`ConsentDraft`], whose fields are public and unchecked.
//!
//! Scopes are explicit: "every modality" is [`ModalityScope::All`] and "any recipient" is
//! [`RecipientScope::Any`]; an empty list is never taken to mean "all".

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ids::{
    ConsentId, ConsortiumId, EpisodeId, InstitutionId, Jurisdiction, Modality, PatientRef, PeerId, StudyRef,
};
use crate::purpose::Purpose;

/// The format version of [`ConsentRecord`] this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// De-identification level of transferred data, ordered from weakest to strongest protection.
///
/// `Identifiable < Pseudonymised < Anonymised`; "the stronger level wins" means the maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum DeidLevel {
    /// Data as held, with direct identifiers.
    Identifiable,
    /// Direct identifiers replaced by keyed pseudonyms (PS3.15 Annex E with UID and ID remapping).
    Pseudonymised,
    /// Identifiers removed so that the data can no longer be linked to the patient.
    Anonymised,
}

impl DeidLevel {
    /// The spelling used in configuration and on the command line.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            DeidLevel::Identifiable => "identifiable",
            DeidLevel::Pseudonymised => "pseudonymised",
            DeidLevel::Anonymised => "anonymised",
        }
    }
}

impl fmt::Display for DeidLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who gave the consent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ConsentedBy {
    /// The patient.
    Patient,
    /// A legal guardian or other legal representative of the patient.
    LegalGuardian,
    /// An ethics board waived the need for individual consent; the site policy says for which
    /// purposes it accepts waivers (`waiver_purposes`, research by default).
    EthicsBoardWaiver,
}

/// Whether the record permits or forbids what its scope covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Provision {
    /// Transfers in scope are permitted, at the given level or a stronger one.
    Permit {
        /// The weakest de-identification level the consent accepts.
        level: DeidLevel,
    },
    /// Transfers in scope are forbidden; a deny beats any permit.
    Deny,
}

/// Which modalities a consent covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ModalityScope {
    /// Every modality.
    All,
    /// Only series of these modalities (at least one).
    Only(#[schemars(length(min = 1))] BTreeSet<Modality>),
}

impl ModalityScope {
    /// Whether a series of modality `m` is covered.
    #[must_use]
    pub fn covers(&self, m: &Modality) -> bool {
        match self {
            ModalityScope::All => true,
            ModalityScope::Only(set) => set.contains(m),
        }
    }
}

/// A recipient a consent can name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Recipient {
    /// One node, by its peer id.
    Peer(PeerId),
    /// Every node of one institution.
    Institution(InstitutionId),
    /// Every node in one country.
    Jurisdiction(Jurisdiction),
    /// Every member of one consortium.
    Consortium(ConsortiumId),
}

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Recipient::Peer(p) => write!(f, "peer {p}"),
            Recipient::Institution(i) => write!(f, "institution {i}"),
            Recipient::Jurisdiction(j) => write!(f, "jurisdiction {j}"),
            Recipient::Consortium(c) => write!(f, "consortium {c}"),
        }
    }
}

/// Which recipients a consent covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RecipientScope {
    /// Any recipient the site's trust and policy accept.
    Any,
    /// Only these recipients (at least one); a request matches when any entry matches.
    Only(#[schemars(length(min = 1))] BTreeSet<Recipient>),
}

/// Which of the patient's data a consent covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Coverage {
    /// Every study of the patient.
    WholeRecord,
    /// Only these studies (at least one).
    Studies(#[schemars(length(min = 1))] BTreeSet<StudyRef>),
    /// Only studies of this episode of care.
    Episode(EpisodeId),
}

/// A time window on the data itself (when a study was acquired), as FHIR `dataPeriod` says it.
///
/// `from` is inclusive, `until` exclusive; at least one of them is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataPeriod {
    /// Studies acquired at or after this instant; none means no lower bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<DateTime<Utc>>,
    /// Studies acquired before this instant; none means no upper bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
}

impl DataPeriod {
    /// Whether a study acquired at `t` lies in the window.
    #[must_use]
    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.from.is_none_or(|from| from <= t) && self.until.is_none_or(|until| t < until)
    }
}

/// What a consent covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Scope {
    /// Purposes covered (at least one).
    #[schemars(length(min = 1))]
    pub purposes: BTreeSet<Purpose>,
    /// Modalities covered.
    pub modalities: ModalityScope,
    /// Recipients covered.
    pub recipients: RecipientScope,
    /// Studies covered.
    pub coverage: Coverage,
    /// Optional window on the acquisition time of the studies covered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_period: Option<DataPeriod>,
}

/// The legal basis of a consent: a short code plus free text.
///
/// Codes in use: `GDPR-6.1.a` (consent), `GDPR-9.2.a` (explicit consent), `GDPR-9.2.h` (health
/// care), `GDPR-9.2.j` (research with safeguards), `HIPAA-164.506` (treatment, payment,
/// operations), `HIPAA-164.508` (authorisation), `HIPAA-164.512(i)` (research waiver by an IRB or
/// privacy board); FHIR imports carry the `policyRule` code (e.g. `OPTIN`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, try_from = "LegalBasisWire")]
pub struct LegalBasis {
    code: String,
    text: String,
}

/// The legal basis of the consent: a short code plus free text.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "LegalBasis")]
struct LegalBasisWire {
    /// E.g. `GDPR-9.2.j`: 1 to 64 characters of `A-Z a-z 0-9 . _ ( ) / : -`, starting with a
    /// letter or digit.
    #[schemars(regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9._()/:\-]{0,63}$"))]
    code: String,
    /// Free text for people (up to 2000 characters, no control characters except newlines);
    /// may be empty.
    #[schemars(length(max = 2000))]
    text: String,
}

impl TryFrom<LegalBasisWire> for LegalBasis {
    type Error = ConsentError;
    fn try_from(w: LegalBasisWire) -> Result<Self, ConsentError> {
        LegalBasis::new(w.code, w.text)
    }
}

impl LegalBasis {
    /// Builds a legal basis.
    ///
    /// # Errors
    ///
    /// [`ConsentError::LegalBasisCode`] for a malformed code, [`ConsentError::LegalBasisText`]
    /// for text over 2000 characters or with control characters other than newlines.
    pub fn new(code: impl Into<String>, text: impl Into<String>) -> Result<Self, ConsentError> {
        let code = code.into();
        let text = text.into();
        let code_ok = (1..=64).contains(&code.len())
            && code
                .bytes()
                .enumerate()
                .all(|(i, b)| b.is_ascii_alphanumeric() || (i > 0 && b"._()/:-".contains(&b)));
        if !code_ok {
            return Err(ConsentError::LegalBasisCode { found: code });
        }
        if text.chars().count() > 2000 || text.chars().any(|c| c.is_control() && c != '\n') {
            return Err(ConsentError::LegalBasisText);
        }
        Ok(Self { code, text })
    }

    /// The code, e.g. `GDPR-9.2.j`.
    #[must_use]
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The free text.
    #[must_use]
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// Why a consent record is impossible. Each message starts with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConsentError {
    /// No purpose given.
    #[error("scope.purposes: a consent must name at least one purpose")]
    NoPurposes,
    /// `only` with an empty modality list.
    #[error("scope.modalities: `only` needs at least one modality (write `all` for every modality)")]
    NoModalities,
    /// `only` with an empty recipient list.
    #[error("scope.recipients: `only` needs at least one recipient (write `any` for any recipient)")]
    NoRecipients,
    /// `studies` with an empty list.
    #[error("scope.coverage: `studies` needs at least one study (write `whole-record` for all)")]
    NoStudies,
    /// A data period with no bound, or with `until` not after `from`.
    #[error("scope.data_period: needs a bound, and `until` must be after `from`")]
    DataPeriod,
    /// `valid_until` not after `valid_from`.
    #[error("valid_until: {until} is not after valid_from {from}")]
    Validity {
        /// `valid_from`.
        from: DateTime<Utc>,
        /// `valid_until`.
        until: DateTime<Utc>,
    },
    /// An ethics-board waiver that denies.
    #[error("provision: an ethics-board waiver can only permit; record a patient's objection as a deny by the patient")]
    WaiverDeny,
    /// A malformed legal basis code.
    #[error(
        "legal_basis.code: {found:?} is not a legal basis code (1 to 64 characters of A-Z a-z 0-9 . _ ( ) / : -, e.g. GDPR-9.2.j)"
    )]
    LegalBasisCode {
        /// The rejected code.
        found: String,
    },
    /// Legal basis text too long or with control characters.
    #[error("legal_basis.text: at most 2000 characters, no control characters except newlines")]
    LegalBasisText,
    /// A record of a format version this build does not read.
    #[error(
        "version: consent record format version {found} is not supported (this build reads version {FORMAT_VERSION})"
    )]
    UnsupportedVersion {
        /// The version found.
        found: u64,
    },
}

impl ConsentError {
    /// The field at fault, as a dotted path (`scope.purposes`).
    #[must_use]
    pub fn field(&self) -> &'static str {
        match self {
            ConsentError::NoPurposes => "scope.purposes",
            ConsentError::NoModalities => "scope.modalities",
            ConsentError::NoRecipients => "scope.recipients",
            ConsentError::NoStudies => "scope.coverage",
            ConsentError::DataPeriod => "scope.data_period",
            ConsentError::Validity { .. } => "valid_until",
            ConsentError::WaiverDeny => "provision",
            ConsentError::LegalBasisCode { .. } => "legal_basis.code",
            ConsentError::LegalBasisText => "legal_basis.text",
            ConsentError::UnsupportedVersion { .. } => "version",
        }
    }
}

/// The unchecked fields of a consent record; [`ConsentRecord::new`] checks them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentDraft {
    /// Identifier of the record.
    pub id: ConsentId,
    /// The patient's keyed pseudonym.
    pub patient: PatientRef,
    /// Who consented.
    pub consented_by: ConsentedBy,
    /// Permit (with its level) or deny.
    pub provision: Provision,
    /// What is covered.
    pub scope: Scope,
    /// First instant the record applies.
    pub valid_from: DateTime<Utc>,
    /// First instant it no longer applies; none means until withdrawn.
    pub valid_until: Option<DateTime<Utc>>,
    /// When it was withdrawn, if it was.
    pub withdrawn_at: Option<DateTime<Utc>>,
    /// Legal basis.
    pub legal_basis: LegalBasis,
}

/// A checked consent record. See the module docs for its invariants.
///
/// Serialised (JSON, CBOR) with a `version` field ([`FORMAT_VERSION`]); decoding checks the
/// version first, then every invariant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RecordWire", into = "RecordWire")]
pub struct ConsentRecord {
    id: ConsentId,
    patient: PatientRef,
    consented_by: ConsentedBy,
    provision: Provision,
    scope: Scope,
    valid_from: DateTime<Utc>,
    valid_until: Option<DateTime<Utc>>,
    withdrawn_at: Option<DateTime<Utc>>,
    legal_basis: LegalBasis,
}

/// Where a record stands in time at a given instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimeStatus {
    /// It applies.
    InForce,
    /// It applies only from `from` on.
    NotYetValid {
        /// `valid_from`.
        from: DateTime<Utc>,
    },
    /// It stopped applying at `at`.
    Expired {
        /// `valid_until`.
        at: DateTime<Utc>,
    },
    /// It was withdrawn at `at` (this wins over the other states).
    Withdrawn {
        /// `withdrawn_at`.
        at: DateTime<Utc>,
    },
}

impl ConsentRecord {
    /// Checks a draft and turns it into a record.
    ///
    /// # Errors
    ///
    /// A [`ConsentError`] naming the first field at fault: no purposes, an empty `only` list or
    /// study list, a data period without bounds or with `until <= from`, `valid_until <=
    /// valid_from`, or a deny by an ethics-board waiver.
    pub fn new(draft: ConsentDraft) -> Result<Self, ConsentError> {
        let ConsentDraft {
            id,
            patient,
            consented_by,
            provision,
            scope,
            valid_from,
            valid_until,
            withdrawn_at,
            legal_basis,
        } = draft;
        if scope.purposes.is_empty() {
            return Err(ConsentError::NoPurposes);
        }
        if matches!(&scope.modalities, ModalityScope::Only(s) if s.is_empty()) {
            return Err(ConsentError::NoModalities);
        }
        if matches!(&scope.recipients, RecipientScope::Only(s) if s.is_empty()) {
            return Err(ConsentError::NoRecipients);
        }
        if matches!(&scope.coverage, Coverage::Studies(s) if s.is_empty()) {
            return Err(ConsentError::NoStudies);
        }
        if let Some(p) = &scope.data_period {
            let ok = match (p.from, p.until) {
                (None, None) => false,
                (Some(from), Some(until)) => from < until,
                _ => true,
            };
            if !ok {
                return Err(ConsentError::DataPeriod);
            }
        }
        if let Some(until) = valid_until
            && until <= valid_from
        {
            return Err(ConsentError::Validity {
                from: valid_from,
                until,
            });
        }
        if consented_by == ConsentedBy::EthicsBoardWaiver && provision == Provision::Deny {
            return Err(ConsentError::WaiverDeny);
        }
        Ok(Self {
            id,
            patient,
            consented_by,
            provision,
            scope,
            valid_from,
            valid_until,
            withdrawn_at,
            legal_basis,
        })
    }

    /// Records the withdrawal of the consent at `at`; an earlier withdrawal is kept.
    pub fn withdraw(&mut self, at: DateTime<Utc>) {
        self.withdrawn_at = Some(self.withdrawn_at.map_or(at, |w| w.min(at)));
    }

    /// Where the record stands at `now`.
    #[must_use]
    pub fn status_at(&self, now: DateTime<Utc>) -> TimeStatus {
        match (self.withdrawn_at, self.valid_until) {
            (Some(at), _) if at <= now => TimeStatus::Withdrawn { at },
            _ if now < self.valid_from => TimeStatus::NotYetValid { from: self.valid_from },
            (_, Some(at)) if at <= now => TimeStatus::Expired { at },
            _ => TimeStatus::InForce,
        }
    }

    /// The record's identifier.
    #[must_use]
    pub fn id(&self) -> &ConsentId {
        &self.id
    }
    /// The patient's keyed pseudonym.
    #[must_use]
    pub fn patient(&self) -> &PatientRef {
        &self.patient
    }
    /// Who consented.
    #[must_use]
    pub fn consented_by(&self) -> ConsentedBy {
        self.consented_by
    }
    /// Permit (with level) or deny.
    #[must_use]
    pub fn provision(&self) -> Provision {
        self.provision
    }
    /// The level a permit requires; none for a deny.
    #[must_use]
    pub fn required_level(&self) -> Option<DeidLevel> {
        match self.provision {
            Provision::Permit { level } => Some(level),
            Provision::Deny => None,
        }
    }
    /// What the record covers.
    #[must_use]
    pub fn scope(&self) -> &Scope {
        &self.scope
    }
    /// First instant the record applies.
    #[must_use]
    pub fn valid_from(&self) -> DateTime<Utc> {
        self.valid_from
    }
    /// First instant it no longer applies, if bounded.
    #[must_use]
    pub fn valid_until(&self) -> Option<DateTime<Utc>> {
        self.valid_until
    }
    /// When it was withdrawn, if it was.
    #[must_use]
    pub fn withdrawn_at(&self) -> Option<DateTime<Utc>> {
        self.withdrawn_at
    }
    /// The legal basis.
    #[must_use]
    pub fn legal_basis(&self) -> &LegalBasis {
        &self.legal_basis
    }
    /// The unchecked fields, e.g. to change one and check again with [`ConsentRecord::new`].
    #[must_use]
    pub fn into_draft(self) -> ConsentDraft {
        ConsentDraft {
            id: self.id,
            patient: self.patient,
            consented_by: self.consented_by,
            provision: self.provision,
            scope: self.scope,
            valid_from: self.valid_from,
            valid_until: self.valid_until,
            withdrawn_at: self.withdrawn_at,
            legal_basis: self.legal_basis,
        }
    }
}

/// A medmesh consent record, format version 1: one patient's permit or deny of transfers of
/// their imaging studies, with its scope, validity and legal basis. JSON and CBOR carry the
/// same fields. Invariants the schema cannot express: `valid_until` is after `valid_from`, a
/// data period has at least one bound and ends after it starts, and an ethics-board waiver
/// only permits.
#[derive(Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "ConsentRecord", rename = "ConsentRecord")]
pub(crate) struct RecordWire {
    /// Format version; this build reads and writes 1.
    #[schemars(range(min = 1, max = 1))]
    pub(crate) version: u32,
    /// Identifier of the record, unique within the node that holds it.
    id: ConsentId,
    /// Keyed pseudonym of the patient (never a raw identifier).
    patient: PatientRef,
    /// Who consented.
    consented_by: ConsentedBy,
    /// `deny`, or `{"permit": {"level": ...}}` with the weakest de-identification level accepted.
    provision: Provision,
    /// What is covered.
    scope: Scope,
    /// First instant the record applies (RFC 3339).
    valid_from: DateTime<Utc>,
    /// First instant it no longer applies (RFC 3339); absent means until withdrawn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    valid_until: Option<DateTime<Utc>>,
    /// When the consent was withdrawn (RFC 3339), if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    withdrawn_at: Option<DateTime<Utc>>,
    /// Legal basis: code plus free text.
    legal_basis: LegalBasis,
}

impl TryFrom<RecordWire> for ConsentRecord {
    type Error = ConsentError;
    fn try_from(w: RecordWire) -> Result<Self, ConsentError> {
        if w.version != FORMAT_VERSION {
            return Err(ConsentError::UnsupportedVersion {
                found: u64::from(w.version),
            });
        }
        ConsentRecord::new(ConsentDraft {
            id: w.id,
            patient: w.patient,
            consented_by: w.consented_by,
            provision: w.provision,
            scope: w.scope,
            valid_from: w.valid_from,
            valid_until: w.valid_until,
            withdrawn_at: w.withdrawn_at,
            legal_basis: w.legal_basis,
        })
    }
}

impl From<ConsentRecord> for RecordWire {
    fn from(r: ConsentRecord) -> Self {
        RecordWire {
            version: FORMAT_VERSION,
            id: r.id,
            patient: r.patient,
            consented_by: r.consented_by,
            provision: r.provision,
            scope: r.scope,
            valid_from: r.valid_from,
            valid_until: r.valid_until,
            withdrawn_at: r.withdrawn_at,
            legal_basis: r.legal_basis,
        }
    }
}

impl JsonSchema for ConsentRecord {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ConsentRecord".into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        RecordWire::json_schema(generator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn draft() -> ConsentDraft {
        ConsentDraft {
            id: "c-1".parse().unwrap(),
            patient: PatientRef::from_bytes([7; 32]),
            consented_by: ConsentedBy::Patient,
            provision: Provision::Permit {
                level: DeidLevel::Identifiable,
            },
            scope: Scope {
                purposes: [Purpose::Treatment].into(),
                modalities: ModalityScope::All,
                recipients: RecipientScope::Any,
                coverage: Coverage::WholeRecord,
                data_period: None,
            },
            valid_from: t("2026-01-01T00:00:00Z"),
            valid_until: Some(t("2027-01-01T00:00:00Z")),
            withdrawn_at: None,
            legal_basis: LegalBasis::new("GDPR-9.2.h", "treatment").unwrap(),
        }
    }

    #[test]
    fn impossible_records_are_refused_naming_the_field() {
        type Edit = fn(&mut ConsentDraft);
        let cases: [(Edit, &str); 8] = [
            (|d| d.scope.purposes.clear(), "scope.purposes"),
            (
                |d| d.scope.modalities = ModalityScope::Only(BTreeSet::new()),
                "scope.modalities",
            ),
            (
                |d| d.scope.recipients = RecipientScope::Only(BTreeSet::new()),
                "scope.recipients",
            ),
            (
                |d| d.scope.coverage = Coverage::Studies(BTreeSet::new()),
                "scope.coverage",
            ),
            (
                |d| {
                    d.scope.data_period = Some(DataPeriod {
                        from: None,
                        until: None,
                    })
                },
                "scope.data_period",
            ),
            (|d| d.valid_until = Some(d.valid_from), "valid_until"),
            (|d| d.valid_until = Some(t("2025-01-01T00:00:00Z")), "valid_until"),
            (
                |d| {
                    d.consented_by = ConsentedBy::EthicsBoardWaiver;
                    d.provision = Provision::Deny;
                },
                "provision",
            ),
        ];
        for (edit, field) in cases {
            let mut d = draft();
            edit(&mut d);
            let err = ConsentRecord::new(d).unwrap_err();
            assert_eq!(err.field(), field);
            assert!(err.to_string().starts_with(field), "{err}");
        }
        assert!(ConsentRecord::new(draft()).is_ok());
    }

    #[test]
    fn legal_basis_codes() {
        for ok in ["GDPR-6.1.a", "GDPR-9.2.j", "HIPAA-164.512(i)", "OPTIN"] {
            assert!(LegalBasis::new(ok, "").is_ok(), "{ok}");
        }
        for bad in ["", "-GDPR", "GDPR 6", &"x".repeat(65)] {
            assert!(
                matches!(LegalBasis::new(bad, ""), Err(ConsentError::LegalBasisCode { .. })),
                "{bad}"
            );
        }
        assert_eq!(LegalBasis::new("X", "a\u{7}b"), Err(ConsentError::LegalBasisText));
        assert!(LegalBasis::new("X", "line 1\nline 2").is_ok());
    }

    #[test]
    fn time_status() {
        let mut r = ConsentRecord::new(draft()).unwrap();
        assert_eq!(
            r.status_at(t("2025-12-31T23:59:59Z")),
            TimeStatus::NotYetValid { from: r.valid_from() }
        );
        assert_eq!(r.status_at(t("2026-01-01T00:00:00Z")), TimeStatus::InForce);
        assert_eq!(
            r.status_at(t("2027-01-01T00:00:00Z")),
            TimeStatus::Expired {
                at: t("2027-01-01T00:00:00Z")
            }
        );
        r.withdraw(t("2026-06-01T00:00:00Z"));
        r.withdraw(t("2026-07-01T00:00:00Z"));
        assert_eq!(r.withdrawn_at(), Some(t("2026-06-01T00:00:00Z")));
        assert_eq!(r.status_at(t("2026-05-31T00:00:00Z")), TimeStatus::InForce);
        assert_eq!(
            r.status_at(t("2026-06-01T00:00:00Z")),
            TimeStatus::Withdrawn {
                at: t("2026-06-01T00:00:00Z")
            }
        );
    }
}
