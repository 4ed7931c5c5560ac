//! Import of HL7 FHIR R4 `Consent` resources (JSON) as consent records.
//!
//! Hospitals already hold privacy consent as FHIR `Consent` resources
//! (<https://hl7.org/fhir/R4/consent.html>). [`import_consent`] turns one into one or more
//! [`ConsentRecord`]s, or refuses it with a [`FhirError::Refused`] naming the element path
//! (`Consent.provision.provision[1].data[0]`) and the cause, a [`Refusal`]. Nothing is silently
//! widened: what cannot be mapped faithfully is refused, and the only narrowing the importer
//! applies on its own is to imaging data (medmesh holds nothing else).
//!
//! # Mapping
//!
//! | element | mapping |
//! |---|---|
//! | `status` | only `active` imports. `draft`/`proposed` (not agreed yet), `rejected` (consent refused), `inactive` (ended: withdraw the earlier import with the node's API) and `entered-in-error` are refused |
//! | `scope` | `patient-privacy` or `research` (consentscope); `treatment` and `adr` are not about data sharing and are refused |
//! | `category`, `organization`, `verification`, `source[x]`, `meta`, `text`, `extension`, `contained` | not needed for the decision; ignored |
//! | `implicitRules`, `modifierExtension` (anywhere) | may change the meaning: refused |
//! | `id` | the record id; nested deny records get `<id>/provision[i]`. Required |
//! | `patient` | handed to the context's pseudonymiser ([`FhirPatient`]); the raw identifier is never stored |
//! | `dateTime` | `valid_from` when `provision.period.start` is absent |
//! | `performer` | the patient (the same reference as `patient`, or any `Patient` when `patient` has none) → patient; `RelatedPerson` → legal guardian; absent → [`ImportContext::assume_consented_by`] or refused; anything else refused |
//! | `policyRule`, `policy` | the legal basis: `policyRule` code and text, policy URIs appended; neither → refused (R4 invariant ppc-1). For a root provision without `type`, `policyRule` `OPTIN` (v3-ActCode) means permit and `OPTOUT` deny; any other rule needs an explicit `type` |
//! | `provision.type` | permit or deny; a nested provision must have the opposite type of its parent: a deny inside a permit becomes its own deny record, scoped like its parent except where it says otherwise; a permit inside a deny cannot be represented (deny always beats permit here) and is refused, as is a nested provision of the same type and nesting deeper than one level |
//! | `provision.period` | `valid_from` / `valid_until`; a nested deny uses the intersection with its parent's |
//! | `provision.actor` | role `CST` (custodian) must be this site ([`ImportContext::custodian`]); roles `PRCP`/`IRCP` are recipients: a mapped reference ([`ImportContext::organization`]), else an `Organization` with an identifier value or a display → institution; anything else (Practitioner, Patient, …) and other roles are refused. No recipient actor → any recipient |
//! | `provision.action` | a permit must include `disclose` (a transfer is a disclosure; `access` alone is viewing in place); a deny must include `access`, `use` or `disclose`; absent → all actions |
//! | `provision.securityLabel` | refused (medmesh cannot select data by security label) |
//! | `provision.purpose` | v3 ActReason codes, mapped exactly (see [`crate::purpose`]); absent on a deny → every purpose; absent on a permit → [`ImportContext::purposes_when_unspecified`] if set (a narrowing), else refused |
//! | `provision.class` | `ImagingStudy` (resource-types) or `application/dicom` (BCP 13) keep the rule as is; classes that are not imaging are dropped when an imaging class is present, else refused; DICOM SOP class UIDs are refused (scope by modality instead) |
//! | `provision.code` | each concept needs a DICOM (`DCM`) coding that is a CID 33 modality → the modality list; other codes refused |
//! | `provision.dataPeriod` | the data period (acquisition time of the study) |
//! | `provision.data` | `ImagingStudy` with meaning `instance` or `dependents` → listed studies (the identifier value if present, else the reference); one `EpisodeOfCare` with meaning `related` → that episode; anything else refused |
//!
//! FHIR dates without a time (`2016`, `2016-05`, `2016-05-11`) are read in the context's
//! [`ImportContext::local_offset`] (UTC by default); period ends include the whole day, month or
//! year they name. The de-identification level of imported permits, which FHIR does not carry,
//! comes from [`ImportContext::level`] (identifiable by default; the site policy adds its
//! minimums at decision time).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::{DateTime, FixedOffset, NaiveDate, Offset, TimeZone, Utc};
use serde_json::Value;

use crate::ids::{ConsentId, EpisodeId, IdError, InstitutionId, Modality, PatientRef, StudyRef};
use crate::purpose::{ACT_REASON_SYSTEM, ActReasonError, Purpose};
use crate::record::{
    ConsentDraft, ConsentError, ConsentRecord, ConsentedBy, Coverage, DataPeriod, DeidLevel, LegalBasis, ModalityScope,
    Provision, Recipient, RecipientScope, Scope,
};

/// The largest FHIR resource text accepted by [`import_consent_str`], in bytes (1 MiB).
pub const MAX_FHIR_SIZE: usize = 1024 * 1024;

const CONSENT_SCOPE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/consentscope";
const ACT_CODE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
const PARTICIPATION_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";
const CONSENT_ACTION_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/consentaction";
const RESOURCE_TYPES_SYSTEM: &str = "http://hl7.org/fhir/resource-types";
const MIME_SYSTEM: &str = "urn:ietf:bcp:13";
const DICOM_SYSTEM: &str = "http://dicom.nema.org/resources/ontology/DCM";

/// Why a FHIR resource was not imported.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FhirError {
    /// The text is larger than [`MAX_FHIR_SIZE`].
    #[error("FHIR resource is {size} bytes, more than the {MAX_FHIR_SIZE} bytes allowed")]
    TooLarge {
        /// The text size.
        size: usize,
    },
    /// The text is not JSON.
    #[error("FHIR resource is not well-formed JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// An element cannot be mapped faithfully.
    #[error("{path}: {reason}")]
    Refused {
        /// The element, as a FHIRPath-like path (`Consent.provision.actor[1].reference`).
        path: String,
        /// Why.
        reason: Refusal,
    },
    /// The mapped fields make an impossible record.
    #[error("{path}: the mapped record is impossible: {source}")]
    Record {
        /// The provision the record came from.
        path: String,
        /// What is wrong with it.
        #[source]
        source: ConsentError,
    },
}

/// Why an element of a Consent cannot be mapped ([`FhirError::Refused`]). The variants carry
/// element kinds, codes and resource types as found in the resource, never the patient's
/// reference or identifier, and never a date.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    // The JSON shape, any element.
    /// The element must be a JSON object.
    #[error("expected an object")]
    ExpectedObject,
    /// The element must be a JSON array.
    #[error("expected an array")]
    ExpectedArray,
    /// The element must be a JSON string.
    #[error("expected a string")]
    ExpectedString,
    /// An element R4 does not define at this place (e.g. the STU3 `except`).
    #[error("not an element of an R4 Consent at this place")]
    UnknownElement,
    /// A `modifierExtension`.
    #[error("a modifier extension may change the meaning; not supported")]
    ModifierExtension,
    /// `implicitRules`.
    #[error("implicit rules may change the meaning of the resource; not supported")]
    ImplicitRules,
    /// A required element is absent (the path names it).
    #[error("missing")]
    Missing,
    /// A list that must name something is empty.
    #[error("empty list")]
    EmptyList,
    /// A date that is not a FHIR `dateTime` (the value is not repeated: it may date a visit).
    #[error("is not a FHIR dateTime (YYYY, YYYY-MM, YYYY-MM-DD, or a date-time with its offset)")]
    NotADateTime,
    /// A Period whose end is not after its start.
    #[error("is before the start")]
    EndBeforeStart,
    /// A Period with neither start nor end.
    #[error("neither start nor end")]
    PeriodWithoutBounds,
    /// A value that is not a valid medmesh identifier (consent id, study, episode, institution).
    #[error(transparent)]
    Id(IdError),

    // The resource.
    /// `resourceType` is not `Consent`.
    #[error("a {resource_type} is not a Consent")]
    NotAConsent {
        /// The `resourceType` found.
        resource_type: String,
    },
    /// No `id`.
    #[error("missing; medmesh needs a stable id to update or withdraw the record later")]
    NoId,
    /// `status` `draft` or `proposed`.
    #[error("the consent is not agreed yet; import it once it is active")]
    NotAgreedYet,
    /// `status` `rejected`.
    #[error("the consent was refused; there is nothing to import")]
    RejectedConsent,
    /// `status` `inactive`.
    #[error("the consent has ended; withdraw the record imported earlier instead of importing this one")]
    Ended,
    /// `status` `entered-in-error`.
    #[error("the resource was entered in error")]
    EnteredInError,
    /// A `status` R4 does not define.
    #[error("{status:?} is not an R4 Consent status")]
    UnknownStatus {
        /// The status found.
        status: String,
    },
    /// No `scope`.
    #[error("missing (required in R4)")]
    NoScope,
    /// A consentscope code other than `patient-privacy` and `research`.
    #[error("scope {code} is not about sharing data (medmesh imports patient-privacy and research consents)")]
    NotSharingScope {
        /// The consentscope code found.
        code: String,
    },
    /// A `scope` without a consentscope code.
    #[error("no consentscope code (patient-privacy or research)")]
    NoScopeCode,
    /// No `patient`.
    #[error("missing; a consent must be about one patient")]
    NoPatient,
    /// The pseudonymiser does not know the patient.
    #[error(
        "the site cannot match this patient: give an identifier (identifier.value) it knows, or map the reference to a patient ID"
    )]
    UnknownPatient,

    // Who consented (`performer`).
    /// A `Patient` performer that is not the consent's patient.
    #[error("a Patient other than the consent's patient cannot consent for them")]
    OtherPatient,
    /// A performer of a kind medmesh does not record as a grantor.
    #[error(
        "a {resource_type} as grantor cannot be mapped (medmesh records consent by the patient, a legal guardian or an ethics-board waiver; record waivers through the node)"
    )]
    GrantorKind {
        /// The performer's resource type.
        resource_type: String,
    },
    /// A performer whose resource type cannot be told.
    #[error("cannot tell what kind of resource the grantor is")]
    UnknownGrantorKind,
    /// Performers of different kinds.
    #[error("grantors of different kinds in one consent cannot be mapped")]
    MixedGrantors,
    /// No performer, and no grantor to assume.
    #[error(
        "missing: cannot tell who consented (configure whom to assume if the site's forms are always signed by the patient)"
    )]
    NoPerformer,

    // The legal basis (`policyRule`, `policy`).
    /// A `policyRule` without a coding.
    #[error("no coding; medmesh needs a code for the legal basis")]
    NoPolicyRuleCoding,
    /// Neither `policyRule` nor `policy`.
    #[error("neither policyRule nor policy is present (R4 invariant ppc-1): no legal basis")]
    NoLegalBasis,
    /// The legal basis does not make a valid [`LegalBasis`].
    #[error(transparent)]
    LegalBasis(ConsentError),

    // The provisions.
    /// No `provision`.
    #[error("missing; a Consent without provision has no computable scope for medmesh")]
    NoProvision,
    /// A `provision.type` other than `permit` and `deny`.
    #[error("{given:?} is neither permit nor deny")]
    NotPermitOrDeny {
        /// The type found.
        given: String,
    },
    /// A root provision without `type` whose `policyRule` is neither `OPTIN` nor `OPTOUT`.
    #[error(
        "missing, and the policyRule is neither OPTIN nor OPTOUT, so it does not say whether the rule permits or denies"
    )]
    NoProvisionType,
    /// A nested provision without `type`.
    #[error("missing; a nested provision must say permit or deny")]
    NestedWithoutType,
    /// A nested provision of its parent's type.
    #[error(
        "a nested provision of the same type as its parent has no agreed meaning (a further restriction or an addition); not imported"
    )]
    NestedSameType,
    /// A permit nested in a deny.
    #[error("a permit exception inside a deny cannot be represented: in medmesh a deny always beats a permit")]
    PermitInsideDeny,
    /// Provisions nested two levels deep.
    #[error("provisions nested more than one level deep are not supported")]
    NestedTooDeep,
    /// A nested provision whose period does not overlap its parent's.
    #[error("does not overlap the period of its parent provision, so it never applies")]
    NestedOutsideParent,
    /// No `provision.period.start` and no `dateTime`.
    #[error("no start, and Consent.dateTime is absent: cannot tell from when the consent applies")]
    NoStart,
    /// An `action` concept without a consentaction code.
    #[error("no consentaction code (collect, access, use, disclose, correct)")]
    NoConsentAction,
    /// A permit whose actions do not include `disclose`.
    #[error("permits {} but not disclose; a transfer to another site is a disclosure", .actions.join(", "))]
    PermitWithoutDisclose {
        /// The consentaction codes found.
        actions: Vec<String>,
    },
    /// A deny of none of `access`, `use`, `disclose`.
    #[error("denies {}, which does not concern transfers", .actions.join(", "))]
    DenyNotAboutTransfers {
        /// The consentaction codes found.
        actions: Vec<String>,
    },
    /// A `securityLabel`.
    #[error("medmesh cannot select data by security label; the rule would apply to more or less data than intended")]
    SecurityLabel,
    /// A permit without `purpose`, and no purposes to assume.
    #[error(
        "missing: FHIR reads a permit without purpose as every purpose, which medmesh does not import; name the purposes or configure the purposes to assume"
    )]
    NoPurpose,
    /// A v3 ActReason code that maps to no medmesh purpose exactly.
    #[error(transparent)]
    Purpose(ActReasonError),
    /// A purpose coding of another code system.
    #[error("{} is not a v3 ActReason purpose ({ACT_REASON_SYSTEM})", show_coding(.system.as_deref(), .code.as_deref()))]
    NotActReason {
        /// The coding's system.
        system: Option<String>,
        /// The coding's code.
        code: Option<String>,
    },
    /// A `class` that is a DICOM SOP class.
    #[error("scoping by DICOM SOP class is not supported; scope by modality with provision.code (DICOM CID 33)")]
    SopClass,
    /// `class` codings none of which is imaging.
    #[error("{} is not imaging data; the rule does not concern what medmesh holds", show_coding(.system.as_deref(), .code.as_deref()))]
    NotImaging {
        /// The first class's system.
        system: Option<String>,
        /// The first class's code.
        code: Option<String>,
    },
    /// A `code` concept without a DICOM modality.
    #[error("not a DICOM modality (a DCM code of CID 33); medmesh can scope data by modality only")]
    NotAModality,

    // The actors.
    /// A custodian actor that is not this site.
    #[error(
        "the custodian is not this site (configure the site's own references), so the rule is not about data held here"
    )]
    CustodianNotThisSite,
    /// An actor role that is neither a recipient nor the custodian.
    #[error(
        "role {} is neither a recipient (PRCP, IRCP) nor the custodian (CST); medmesh cannot scope by it",
        .role.as_deref().unwrap_or("(none of v3-ParticipationType)")
    )]
    UnsupportedRole {
        /// The first v3-ParticipationType code, if any.
        role: Option<String>,
    },
    /// A recipient Organization without identifier value or display.
    #[error(
        "cannot tell which institution {} is (no identifier or display; map it in the import context)",
        .reference.as_deref().unwrap_or("the Organization")
    )]
    UnnamedInstitution {
        /// The Organization's reference (`Organization/o7`), if any.
        reference: Option<String>,
    },
    /// A recipient of a kind medmesh cannot scope to.
    #[error(
        "a {resource_type} cannot be a recipient: medmesh scopes consent to nodes, institutions, jurisdictions and consortia"
    )]
    RecipientKind {
        /// The recipient's resource type.
        resource_type: String,
    },
    /// A recipient whose resource type cannot be told.
    #[error("cannot tell what kind of resource the recipient is")]
    UnknownRecipientKind,

    // The data (`provision.data`).
    /// Two `EpisodeOfCare` items.
    #[error("more than one episode of care in one provision")]
    TwoEpisodes,
    /// A data item that is neither an ImagingStudy instance/dependents nor an EpisodeOfCare related.
    #[error(
        "{} with meaning {} cannot be mapped (medmesh scopes data to ImagingStudy instance/dependents or one EpisodeOfCare related)",
        .resource_type.as_deref().unwrap_or("an unknown resource"),
        .meaning.as_deref().unwrap_or("(none)")
    )]
    UnmappableData {
        /// The item's resource type, if it can be told.
        resource_type: Option<String>,
        /// The item's meaning, if any.
        meaning: Option<String>,
    },
    /// Studies and an episode in one provision.
    #[error("mixes studies and an episode of care; medmesh scopes a record to one or the other")]
    StudiesAndEpisode,
}

impl FhirError {
    /// The element path, for [`FhirError::Refused`] and [`FhirError::Record`].
    #[must_use]
    pub fn path(&self) -> Option<&str> {
        match self {
            FhirError::Refused { path, .. } | FhirError::Record { path, .. } => Some(path),
            FhirError::TooLarge { .. } | FhirError::Json(_) => None,
        }
    }
}

/// The patient of a Consent, as handed to the pseudonymiser. Use it, then drop it: it holds the
/// raw reference and identifier, which must never be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FhirPatient<'a> {
    /// `Consent.patient.reference` (e.g. `Patient/f001`).
    pub reference: Option<&'a str>,
    /// `Consent.patient.identifier.system`.
    pub identifier_system: Option<&'a str>,
    /// `Consent.patient.identifier.value` (e.g. a medical record number).
    pub identifier_value: Option<&'a str>,
}

/// The pseudonymiser: the node's keyed hash of the patient's identifier, or `None` when it
/// cannot tell who the patient is.
pub type Pseudonymiser<'a> = &'a dyn Fn(&FhirPatient<'_>) -> Option<PatientRef>;

/// What the importer needs to know about the site.
pub struct ImportContext<'a> {
    pseudonymise: Pseudonymiser<'a>,
    local_offset: FixedOffset,
    custodians: BTreeSet<String>,
    organizations: BTreeMap<String, Recipient>,
    level: DeidLevel,
    assume_consented_by: Option<ConsentedBy>,
    purposes_when_unspecified: BTreeSet<Purpose>,
}

impl fmt::Debug for ImportContext<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImportContext")
            .field("local_offset", &self.local_offset)
            .field("custodians", &self.custodians)
            .field("organizations", &self.organizations)
            .field("level", &self.level)
            .field("assume_consented_by", &self.assume_consented_by)
            .field("purposes_when_unspecified", &self.purposes_when_unspecified)
            .finish_non_exhaustive()
    }
}

impl<'a> ImportContext<'a> {
    /// A context with the given pseudonymiser and the defaults: dates in UTC, no custodian
    /// references, no organisation mapping, level identifiable, no assumed grantor, no purposes
    /// for permits that name none.
    #[must_use]
    pub fn new(pseudonymise: Pseudonymiser<'a>) -> Self {
        Self {
            pseudonymise,
            local_offset: Utc.fix(),
            custodians: BTreeSet::new(),
            organizations: BTreeMap::new(),
            level: DeidLevel::Identifiable,
            assume_consented_by: None,
            purposes_when_unspecified: BTreeSet::new(),
        }
    }

    /// The offset in which dates without a time are read.
    #[must_use]
    pub fn local_offset(mut self, offset: FixedOffset) -> Self {
        self.local_offset = offset;
        self
    }

    /// A reference (`Organization/f001`) or identifier value that denotes this site, for actors
    /// with role `CST` (custodian).
    #[must_use]
    pub fn custodian(mut self, reference: impl Into<String>) -> Self {
        self.custodians.insert(reference.into());
        self
    }

    /// Maps a recipient actor's reference (`Organization/f001`) or identifier value to a
    /// recipient.
    #[must_use]
    pub fn organization(mut self, reference: impl Into<String>, recipient: Recipient) -> Self {
        self.organizations.insert(reference.into(), recipient);
        self
    }

    /// The level imported permits require (FHIR has no such element).
    #[must_use]
    pub fn level(mut self, level: DeidLevel) -> Self {
        self.level = level;
        self
    }

    /// Who consented when `Consent.performer` is absent (e.g. the site's forms are always signed
    /// by the patient).
    #[must_use]
    pub fn assume_consented_by(mut self, by: ConsentedBy) -> Self {
        self.assume_consented_by = Some(by);
        self
    }

    /// Purposes given to a permit that names none. FHIR reads such a permit as "every
    /// purpose"; importing it for fewer purposes is a narrowing the site chooses.
    #[must_use]
    pub fn purposes_when_unspecified(mut self, purposes: impl IntoIterator<Item = Purpose>) -> Self {
        self.purposes_when_unspecified = purposes.into_iter().collect();
        self
    }
}

/// Imports a Consent from JSON text: checks the size, parses, then [`import_consent`].
///
/// # Errors
///
/// [`FhirError::TooLarge`], [`FhirError::Json`], or as [`import_consent`].
pub fn import_consent_str(text: &str, ctx: &ImportContext<'_>) -> Result<Vec<ConsentRecord>, FhirError> {
    if text.len() > MAX_FHIR_SIZE {
        return Err(FhirError::TooLarge { size: text.len() });
    }
    let value: Value = serde_json::from_str(text).map_err(FhirError::Json)?;
    import_consent(&value, ctx)
}

/// Imports one FHIR R4 Consent resource: the root provision's record first, then one deny
/// record per nested deny provision, in document order.
///
/// # Errors
///
/// [`FhirError::Refused`] with the element path for anything that cannot be mapped faithfully
/// (see the module table), [`FhirError::Record`] if the mapped record is impossible (e.g. a
/// period that ends before it starts).
pub fn import_consent(resource: &Value, ctx: &ImportContext<'_>) -> Result<Vec<ConsentRecord>, FhirError> {
    let root = At::root(resource)?;
    root.check_keys(&[
        "resourceType",
        "id",
        "meta",
        "implicitRules",
        "language",
        "text",
        "contained",
        "extension",
        "modifierExtension",
        "identifier",
        "status",
        "scope",
        "category",
        "patient",
        "dateTime",
        "performer",
        "organization",
        "sourceAttachment",
        "sourceReference",
        "policy",
        "policyRule",
        "verification",
        "provision",
    ])?;
    match root.string("resourceType")? {
        Some("Consent") => {}
        Some(other) => {
            return Err(root.child("resourceType").refuse(Refusal::NotAConsent {
                resource_type: other.to_owned(),
            }));
        }
        None => return Err(root.child("resourceType").refuse(Refusal::Missing)),
    }
    if root.field("implicitRules").is_some() {
        return Err(root.child("implicitRules").refuse(Refusal::ImplicitRules));
    }
    let id = match root.string("id")? {
        Some(id) => ConsentId::new(id).map_err(|e| root.child("id").refuse(Refusal::Id(e)))?,
        None => {
            return Err(root.child("id").refuse(Refusal::NoId));
        }
    };
    check_status(&root)?;
    check_scope(&root)?;
    let patient = map_patient(&root, ctx)?;
    let date_time = match root.string("dateTime")? {
        Some(s) => Some(
            parse_date(s, Bound::Start, ctx.local_offset)
                .ok_or_else(|| root.child("dateTime").refuse(Refusal::NotADateTime))?,
        ),
        None => None,
    };
    let consented_by = map_performer(&root, ctx)?;
    let (legal_basis, default_kind) = map_legal_basis(&root)?;

    let Some(provision) = root.field("provision") else {
        return Err(root.child("provision").refuse(Refusal::NoProvision));
    };
    let top = map_provision(&provision, ctx, None)?;
    let kind = match (top.kind, default_kind) {
        (Some(k), _) | (None, Some(k)) => k,
        (None, None) => {
            return Err(provision.child("type").refuse(Refusal::NoProvisionType));
        }
    };
    let valid_from = top
        .period_from
        .or(date_time)
        .ok_or_else(|| provision.child("period").refuse(Refusal::NoStart))?;

    let mut records = Vec::new();
    let purposes = match (&top.purposes, kind) {
        (Some(p), _) => p.clone(),
        (None, Kind::Deny) => Purpose::ALL.into(),
        (None, Kind::Permit) if !ctx.purposes_when_unspecified.is_empty() => ctx.purposes_when_unspecified.clone(),
        (None, Kind::Permit) => {
            return Err(provision.child("purpose").refuse(Refusal::NoPurpose));
        }
    };
    check_action(&provision, &top.actions, kind)?;
    let scope = Scope {
        purposes,
        modalities: top.modalities.clone().unwrap_or(ModalityScope::All),
        recipients: top.recipients.clone().unwrap_or(RecipientScope::Any),
        coverage: top.coverage.clone().unwrap_or(Coverage::WholeRecord),
        data_period: top.data_period,
    };
    records.push(build(
        &provision,
        ConsentDraft {
            id: id.clone(),
            patient,
            consented_by,
            provision: match kind {
                Kind::Permit => Provision::Permit { level: ctx.level },
                Kind::Deny => Provision::Deny,
            },
            scope: scope.clone(),
            valid_from,
            valid_until: top.period_until,
            withdrawn_at: None,
            legal_basis: legal_basis.clone(),
        },
    )?);

    for (i, nested) in provision.items("provision")?.into_iter().enumerate() {
        let sub = map_provision(&nested, ctx, Some(kind))?;
        if sub.nested_count > 0 {
            return Err(nested.child("provision").refuse(Refusal::NestedTooDeep));
        }
        // `map_provision` refused anything but a deny nested in a permit.
        check_action(&nested, &sub.actions, Kind::Deny)?;
        let from = match sub.period_from {
            Some(f) => f.max(valid_from),
            None => valid_from,
        };
        let until = match (sub.period_until, top.period_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if until.is_some_and(|u| u <= from) {
            return Err(nested.child("period").refuse(Refusal::NestedOutsideParent));
        }
        let nested_id =
            ConsentId::new(format!("{id}/provision[{i}]")).map_err(|e| root.child("id").refuse(Refusal::Id(e)))?;
        let nested_scope = Scope {
            purposes: sub
                .purposes
                .or_else(|| top.purposes.clone())
                .unwrap_or_else(|| Purpose::ALL.into()),
            modalities: sub.modalities.unwrap_or_else(|| scope.modalities.clone()),
            recipients: sub.recipients.unwrap_or_else(|| scope.recipients.clone()),
            coverage: sub.coverage.unwrap_or_else(|| scope.coverage.clone()),
            data_period: sub.data_period.or(scope.data_period),
        };
        records.push(build(
            &nested,
            ConsentDraft {
                id: nested_id,
                patient,
                consented_by,
                provision: Provision::Deny,
                scope: nested_scope,
                valid_from: from,
                valid_until: until,
                withdrawn_at: None,
                legal_basis: legal_basis.clone(),
            },
        )?);
    }
    Ok(records)
}

fn build(at: &At<'_>, draft: ConsentDraft) -> Result<ConsentRecord, FhirError> {
    ConsentRecord::new(draft).map_err(|source| FhirError::Record {
        path: at.path.clone(),
        source,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Permit,
    Deny,
}

/// The mapped content of one provision; `None` means the element was absent.
struct Mapped {
    kind: Option<Kind>,
    period_from: Option<DateTime<Utc>>,
    period_until: Option<DateTime<Utc>>,
    recipients: Option<RecipientScope>,
    actions: Option<BTreeSet<String>>,
    purposes: Option<BTreeSet<Purpose>>,
    modalities: Option<ModalityScope>,
    data_period: Option<DataPeriod>,
    coverage: Option<Coverage>,
    nested_count: usize,
}

fn map_provision(p: &At<'_>, ctx: &ImportContext<'_>, parent: Option<Kind>) -> Result<Mapped, FhirError> {
    p.check_keys(&[
        "id",
        "extension",
        "modifierExtension",
        "type",
        "period",
        "actor",
        "action",
        "securityLabel",
        "purpose",
        "class",
        "code",
        "dataPeriod",
        "data",
        "provision",
    ])?;
    let kind = match p.string("type")? {
        Some("permit") => Some(Kind::Permit),
        Some("deny") => Some(Kind::Deny),
        Some(other) => {
            return Err(p.child("type").refuse(Refusal::NotPermitOrDeny {
                given: other.to_owned(),
            }));
        }
        None => None,
    };
    if let Some(parent) = parent {
        match (parent, kind) {
            (_, None) => {
                return Err(p.child("type").refuse(Refusal::NestedWithoutType));
            }
            (Kind::Permit, Some(Kind::Permit)) | (Kind::Deny, Some(Kind::Deny)) => {
                return Err(p.child("type").refuse(Refusal::NestedSameType));
            }
            (Kind::Deny, Some(Kind::Permit)) => {
                return Err(p.child("type").refuse(Refusal::PermitInsideDeny));
            }
            (Kind::Permit, Some(Kind::Deny)) => {}
        }
    }
    let (period_from, period_until) = match p.field("period") {
        Some(period) => map_period(&period, ctx)?,
        None => (None, None),
    };
    let recipients = map_actors(p, ctx)?;
    let actions = match p.field("action") {
        Some(_) => {
            let mut set = BTreeSet::new();
            for (i, concept) in p.items("action")?.into_iter().enumerate() {
                let codes = codes_of(&concept, CONSENT_ACTION_SYSTEM)?;
                if codes.is_empty() {
                    return Err(p.child(&format!("action[{i}]")).refuse(Refusal::NoConsentAction));
                }
                set.extend(codes.into_iter().map(str::to_owned));
            }
            Some(set)
        }
        None => None,
    };
    if p.field("securityLabel").is_some() {
        return Err(p.child("securityLabel").refuse(Refusal::SecurityLabel));
    }
    let purposes = match p.field("purpose") {
        Some(_) => {
            let mut set = BTreeSet::new();
            for coding in p.items("purpose")? {
                let system = coding.string("system")?;
                let code = coding.string("code")?;
                match (system, code) {
                    (Some(ACT_REASON_SYSTEM), Some(code)) => {
                        let purpose = Purpose::from_act_reason(code).map_err(|e| coding.refuse(Refusal::Purpose(e)))?;
                        set.insert(purpose);
                    }
                    (system, code) => {
                        return Err(coding.refuse(Refusal::NotActReason {
                            system: system.map(str::to_owned),
                            code: code.map(str::to_owned),
                        }));
                    }
                }
            }
            if set.is_empty() {
                return Err(p.child("purpose").refuse(Refusal::EmptyList));
            }
            Some(set)
        }
        None => None,
    };
    map_class(p)?;
    let modalities = match p.field("code") {
        Some(_) => {
            let mut set = BTreeSet::new();
            for concept in p.items("code")? {
                let mut found = None;
                for code in codes_of(&concept, DICOM_SYSTEM)? {
                    if let Ok(m) = Modality::new(code)
                        && m.is_defined_term()
                    {
                        found = Some(m);
                        break;
                    }
                }
                match found {
                    Some(m) => {
                        set.insert(m);
                    }
                    None => {
                        return Err(concept.refuse(Refusal::NotAModality));
                    }
                }
            }
            if set.is_empty() {
                return Err(p.child("code").refuse(Refusal::EmptyList));
            }
            Some(ModalityScope::Only(set))
        }
        None => None,
    };
    let data_period = match p.field("dataPeriod") {
        Some(dp) => {
            let (from, until) = map_period(&dp, ctx)?;
            if from.is_none() && until.is_none() {
                return Err(dp.refuse(Refusal::PeriodWithoutBounds));
            }
            Some(DataPeriod { from, until })
        }
        None => None,
    };
    let coverage = map_data(p)?;
    let nested_count = p.items("provision")?.len();
    Ok(Mapped {
        kind,
        period_from,
        period_until,
        recipients,
        actions,
        purposes,
        modalities,
        data_period,
        coverage,
        nested_count,
    })
}

fn check_status(root: &At<'_>) -> Result<(), FhirError> {
    let at = root.child("status");
    match root.string("status")? {
        Some("active") => Ok(()),
        Some("draft" | "proposed") => Err(at.refuse(Refusal::NotAgreedYet)),
        Some("rejected") => Err(at.refuse(Refusal::RejectedConsent)),
        Some("inactive") => Err(at.refuse(Refusal::Ended)),
        Some("entered-in-error") => Err(at.refuse(Refusal::EnteredInError)),
        Some(other) => Err(at.refuse(Refusal::UnknownStatus {
            status: other.to_owned(),
        })),
        None => Err(at.refuse(Refusal::Missing)),
    }
}

fn check_scope(root: &At<'_>) -> Result<(), FhirError> {
    let Some(scope) = root.field("scope") else {
        return Err(root.child("scope").refuse(Refusal::NoScope));
    };
    let codes = codes_of(&scope, CONSENT_SCOPE_SYSTEM)?;
    if codes.iter().any(|c| matches!(*c, "patient-privacy" | "research")) {
        return Ok(());
    }
    Err(scope.refuse(match codes.first() {
        Some(code) => Refusal::NotSharingScope {
            code: (*code).to_owned(),
        },
        None => Refusal::NoScopeCode,
    }))
}

fn map_patient(root: &At<'_>, ctx: &ImportContext<'_>) -> Result<PatientRef, FhirError> {
    let Some(patient) = root.field("patient") else {
        return Err(root.child("patient").refuse(Refusal::NoPatient));
    };
    let identifier = patient.field("identifier");
    let handle = FhirPatient {
        reference: patient.string("reference")?,
        identifier_system: match &identifier {
            Some(i) => i.string("system")?,
            None => None,
        },
        identifier_value: match &identifier {
            Some(i) => i.string("value")?,
            None => None,
        },
    };
    (ctx.pseudonymise)(&handle).ok_or_else(|| patient.refuse(Refusal::UnknownPatient))
}

fn map_performer(root: &At<'_>, ctx: &ImportContext<'_>) -> Result<ConsentedBy, FhirError> {
    let performers = root.items("performer")?;
    let patient_ref = root
        .field("patient")
        .map(|p| p.string("reference"))
        .transpose()?
        .flatten();
    let mut found: Option<ConsentedBy> = None;
    for performer in &performers {
        let reference = performer.string("reference")?;
        let kind = reference_type(performer)?;
        let by = match kind.as_deref() {
            Some("Patient") if patient_ref.is_none() || reference == patient_ref => ConsentedBy::Patient,
            Some("Patient") => {
                return Err(performer.refuse(Refusal::OtherPatient));
            }
            Some("RelatedPerson") => ConsentedBy::LegalGuardian,
            Some(other) => {
                return Err(performer.refuse(Refusal::GrantorKind {
                    resource_type: other.to_owned(),
                }));
            }
            None => {
                return Err(performer.refuse(Refusal::UnknownGrantorKind));
            }
        };
        if found.is_some_and(|f| f != by) {
            return Err(performer.refuse(Refusal::MixedGrantors));
        }
        found = Some(by);
    }
    match (found, ctx.assume_consented_by) {
        (Some(by), _) | (None, Some(by)) => Ok(by),
        (None, None) => Err(root.child("performer").refuse(Refusal::NoPerformer)),
    }
}

fn map_legal_basis(root: &At<'_>) -> Result<(LegalBasis, Option<Kind>), FhirError> {
    let mut uris = Vec::new();
    for policy in root.items("policy")? {
        if let Some(uri) = policy.string("uri")? {
            uris.push(uri.to_owned());
        } else if let Some(authority) = policy.string("authority")? {
            uris.push(authority.to_owned());
        }
    }
    let (code, mut text, kind) = match root.field("policyRule") {
        Some(rule) => {
            let codings = rule.items("coding")?;
            let Some(first) = codings.first() else {
                return Err(rule.refuse(Refusal::NoPolicyRuleCoding));
            };
            let system = first.string("system")?;
            let Some(code) = first.string("code")? else {
                return Err(first.child("code").refuse(Refusal::Missing));
            };
            let kind = match (system, code) {
                (Some(ACT_CODE_SYSTEM), "OPTIN") => Some(Kind::Permit),
                (Some(ACT_CODE_SYSTEM), "OPTOUT") => Some(Kind::Deny),
                _ => None,
            };
            let mut text = show_coding(system, Some(code));
            if let Some(display) = first.string("display")?.or(rule.string("text")?) {
                text = format!("{text} ({display})");
            }
            (code.to_owned(), text, kind)
        }
        None if !uris.is_empty() => ("policy".to_owned(), String::new(), None),
        None => {
            return Err(root.child("policyRule").refuse(Refusal::NoLegalBasis));
        }
    };
    for uri in uris {
        if !text.is_empty() {
            text.push_str("; ");
        }
        text.push_str("policy ");
        text.push_str(&uri);
    }
    let basis = LegalBasis::new(code, text).map_err(|e| root.child("policyRule").refuse(Refusal::LegalBasis(e)))?;
    Ok((basis, kind))
}

/// The start (inclusive) and end (exclusive) of a FHIR Period, each optional.
type Bounds = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

fn map_period(period: &At<'_>, ctx: &ImportContext<'_>) -> Result<Bounds, FhirError> {
    period.check_keys(&["id", "extension", "start", "end"])?;
    let read = |key: &str, bound: Bound| -> Result<Option<DateTime<Utc>>, FhirError> {
        match period.string(key)? {
            Some(s) => parse_date(s, bound, ctx.local_offset)
                .map(Some)
                .ok_or_else(|| period.child(key).refuse(Refusal::NotADateTime)),
            None => Ok(None),
        }
    };
    let start = read("start", Bound::Start)?;
    let end = read("end", Bound::End)?;
    if let (Some(s), Some(e)) = (start, end)
        && e <= s
    {
        return Err(period.child("end").refuse(Refusal::EndBeforeStart));
    }
    Ok((start, end))
}

fn map_actors(p: &At<'_>, ctx: &ImportContext<'_>) -> Result<Option<RecipientScope>, FhirError> {
    let mut recipients = BTreeSet::new();
    for actor in p.items("actor")? {
        actor.check_keys(&["id", "extension", "modifierExtension", "role", "reference"])?;
        let Some(role) = actor.field("role") else {
            return Err(actor.child("role").refuse(Refusal::Missing));
        };
        let roles = codes_of(&role, PARTICIPATION_SYSTEM)?;
        let Some(reference) = actor.field("reference") else {
            return Err(actor.child("reference").refuse(Refusal::Missing));
        };
        let keys = reference_keys(&reference)?;
        if roles.contains(&"CST") {
            if keys.iter().any(|k| ctx.custodians.contains(k)) {
                continue;
            }
            return Err(reference.refuse(Refusal::CustodianNotThisSite));
        }
        if !roles.iter().any(|r| matches!(*r, "PRCP" | "IRCP")) {
            return Err(role.refuse(Refusal::UnsupportedRole {
                role: roles.first().map(|r| (*r).to_owned()),
            }));
        }
        if let Some(r) = keys.iter().find_map(|k| ctx.organizations.get(k)) {
            recipients.insert(r.clone());
            continue;
        }
        match reference_type(&reference)?.as_deref() {
            Some("Organization") => {
                let identifier = reference.field("identifier");
                let name = match &identifier {
                    Some(i) => i.string("value")?,
                    None => None,
                }
                .or(reference.string("display")?);
                let Some(name) = name else {
                    return Err(reference.refuse(Refusal::UnnamedInstitution {
                        reference: keys.first().cloned(),
                    }));
                };
                let institution = InstitutionId::new(name).map_err(|e| reference.refuse(Refusal::Id(e)))?;
                recipients.insert(Recipient::Institution(institution));
            }
            Some(other) => {
                return Err(reference.refuse(Refusal::RecipientKind {
                    resource_type: other.to_owned(),
                }));
            }
            None => {
                return Err(reference.refuse(Refusal::UnknownRecipientKind));
            }
        }
    }
    Ok((!recipients.is_empty()).then_some(RecipientScope::Only(recipients)))
}

fn check_action(p: &At<'_>, actions: &Option<BTreeSet<String>>, kind: Kind) -> Result<(), FhirError> {
    let Some(actions) = actions else {
        return Ok(());
    };
    let ok = match kind {
        Kind::Permit => actions.contains("disclose"),
        Kind::Deny => ["access", "use", "disclose"].iter().any(|a| actions.contains(*a)),
    };
    if ok {
        return Ok(());
    }
    let actions = actions.iter().cloned().collect();
    Err(p.child("action").refuse(match kind {
        Kind::Permit => Refusal::PermitWithoutDisclose { actions },
        Kind::Deny => Refusal::DenyNotAboutTransfers { actions },
    }))
}

fn map_class(p: &At<'_>) -> Result<(), FhirError> {
    let classes = p.items("class")?;
    if classes.is_empty() {
        return Ok(());
    }
    let mut imaging = false;
    for class in &classes {
        let system = class.string("system")?;
        let code = class.string("code")?;
        match (system, code) {
            (Some(RESOURCE_TYPES_SYSTEM), Some("ImagingStudy")) | (Some(MIME_SYSTEM), Some("application/dicom")) => {
                imaging = true
            }
            (_, Some(code)) if code.starts_with("urn:oid:1.2.840.10008.5.1.4.") => {
                return Err(class.refuse(Refusal::SopClass));
            }
            _ => {}
        }
    }
    if imaging {
        return Ok(());
    }
    let c = &classes[0];
    Err(c.refuse(Refusal::NotImaging {
        system: c.string("system")?.map(str::to_owned),
        code: c.string("code")?.map(str::to_owned),
    }))
}

fn map_data(p: &At<'_>) -> Result<Option<Coverage>, FhirError> {
    let mut studies = BTreeSet::new();
    let mut episode: Option<EpisodeId> = None;
    for item in p.items("data")? {
        item.check_keys(&["id", "extension", "modifierExtension", "meaning", "reference"])?;
        let meaning = item.string("meaning")?;
        let Some(reference) = item.field("reference") else {
            return Err(item.child("reference").refuse(Refusal::Missing));
        };
        let kind = reference_type(&reference)?;
        let identifier = match reference.field("identifier") {
            Some(i) => i.string("value")?,
            None => None,
        };
        let key = identifier.or(reference.string("reference")?);
        match (kind.as_deref(), meaning, key) {
            (Some("ImagingStudy"), Some("instance" | "dependents"), Some(key)) => {
                studies.insert(StudyRef::new(key).map_err(|e| reference.refuse(Refusal::Id(e)))?);
            }
            (Some("EpisodeOfCare"), Some("related"), Some(key)) => {
                if episode.is_some() {
                    return Err(item.refuse(Refusal::TwoEpisodes));
                }
                episode = Some(EpisodeId::new(key).map_err(|e| reference.refuse(Refusal::Id(e)))?);
            }
            (kind, meaning, _) => {
                return Err(item.refuse(Refusal::UnmappableData {
                    resource_type: kind.map(str::to_owned),
                    meaning: meaning.map(str::to_owned),
                }));
            }
        }
    }
    match (studies.is_empty(), episode) {
        (true, None) => Ok(None),
        (false, None) => Ok(Some(Coverage::Studies(studies))),
        (true, Some(e)) => Ok(Some(Coverage::Episode(e))),
        (false, Some(_)) => Err(p.child("data").refuse(Refusal::StudiesAndEpisode)),
    }
}

/// The resource type of a Reference: `type`, else the type part of a relative reference.
fn reference_type(reference: &At<'_>) -> Result<Option<String>, FhirError> {
    if let Some(t) = reference.string("type")? {
        return Ok(Some(t.to_owned()));
    }
    Ok(reference.string("reference")?.and_then(|r| {
        let parts: Vec<&str> = r.trim_end_matches('/').split('/').collect();
        // `Type/id` or `.../Type/id/_history/n`, e.g. `Organization/f001`.
        let i = parts.iter().position(|p| *p == "_history").unwrap_or(parts.len());
        (i >= 2)
            .then(|| parts[i - 2].to_owned())
            .filter(|t| t.chars().next().is_some_and(|c| c.is_ascii_uppercase()))
    }))
}

/// The strings a Reference can be matched by: its `reference` and its identifier value.
fn reference_keys(reference: &At<'_>) -> Result<Vec<String>, FhirError> {
    let mut keys = Vec::new();
    if let Some(r) = reference.string("reference")? {
        keys.push(r.to_owned());
    }
    if let Some(i) = reference.field("identifier")
        && let Some(v) = i.string("value")?
    {
        keys.push(v.to_owned());
    }
    Ok(keys)
}

/// The codes of a CodeableConcept (or a bare Coding) in `system`.
fn codes_of<'v>(concept: &At<'v>, system: &str) -> Result<Vec<&'v str>, FhirError> {
    let codings = if concept.field("coding").is_some() {
        concept.items("coding")?
    } else {
        vec![concept.clone()]
    };
    let mut codes = Vec::new();
    for coding in codings {
        if coding.string("system")? == Some(system)
            && let Some(code) = coding.string("code")?
        {
            codes.push(code);
        }
    }
    Ok(codes)
}

fn show_coding(system: Option<&str>, code: Option<&str>) -> String {
    format!("{}#{}", system.unwrap_or("(no system)"), code.unwrap_or("(no code)"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bound {
    Start,
    End,
}

/// Parses a FHIR `dateTime` (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`, or a full RFC 3339 date-time).
/// A partial date at `Bound::End` yields the first instant after the period it names.
fn parse_date(s: &str, bound: Bound, offset: FixedOffset) -> Option<DateTime<Utc>> {
    if s.contains('T') {
        return DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&Utc));
    }
    let parts: Vec<&str> = s.split('-').collect();
    let num = |p: &str, len: usize| -> Option<u32> {
        (p.len() == len && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse().ok())
            .flatten()
    };
    let (year, month, day) = match parts.as_slice() {
        [y] => (num(y, 4)?, None, None),
        [y, m] => (num(y, 4)?, Some(num(m, 2)?), None),
        [y, m, d] => (num(y, 4)?, Some(num(m, 2)?), Some(num(d, 2)?)),
        _ => return None,
    };
    let year = i32::try_from(year).ok()?;
    let start = NaiveDate::from_ymd_opt(year, month.unwrap_or(1), day.unwrap_or(1))?;
    let date = match bound {
        Bound::Start => start,
        Bound::End => match (month, day) {
            (_, Some(_)) => start.succ_opt()?,
            (Some(_), None) => start.checked_add_months(chrono::Months::new(1))?,
            (None, None) => start.with_year_plus_one()?,
        },
    };
    let local = date.and_hms_opt(0, 0, 0)?;
    offset
        .from_local_datetime(&local)
        .single()
        .map(|t| t.with_timezone(&Utc))
}

trait NaiveDateExt: Sized {
    fn with_year_plus_one(self) -> Option<Self>;
}

impl NaiveDateExt for NaiveDate {
    fn with_year_plus_one(self) -> Option<Self> {
        self.checked_add_months(chrono::Months::new(12))
    }
}

/// A JSON value with its element path.
#[derive(Clone)]
struct At<'v> {
    value: &'v Value,
    path: String,
}

impl<'v> At<'v> {
    fn root(value: &'v Value) -> Result<Self, FhirError> {
        let at = At {
            value,
            path: "Consent".to_owned(),
        };
        if value.is_object() {
            Ok(at)
        } else {
            Err(at.refuse(Refusal::ExpectedObject))
        }
    }

    fn child(&self, key: &str) -> At<'v> {
        At {
            value: &Value::Null,
            path: format!("{}.{key}", self.path),
        }
    }

    fn refuse(&self, reason: Refusal) -> FhirError {
        FhirError::Refused {
            path: self.path.clone(),
            reason,
        }
    }

    /// The element `key`, if present and not null.
    fn field(&self, key: &str) -> Option<At<'v>> {
        match self.value.get(key) {
            None | Some(Value::Null) => None,
            Some(value) => Some(At {
                value,
                path: format!("{}.{key}", self.path),
            }),
        }
    }

    /// The items of array element `key` (absent: none). Each item must be an object.
    fn items(&self, key: &str) -> Result<Vec<At<'v>>, FhirError> {
        let Some(field) = self.field(key) else {
            return Ok(Vec::new());
        };
        let Some(array) = field.value.as_array() else {
            return Err(field.refuse(Refusal::ExpectedArray));
        };
        array
            .iter()
            .enumerate()
            .map(|(i, value)| {
                let at = At {
                    value,
                    path: format!("{}.{key}[{i}]", self.path),
                };
                if value.is_object() {
                    Ok(at)
                } else {
                    Err(at.refuse(Refusal::ExpectedObject))
                }
            })
            .collect()
    }

    /// The string element `key`, if present.
    fn string(&self, key: &str) -> Result<Option<&'v str>, FhirError> {
        match self.field(key) {
            None => Ok(None),
            Some(at) => match at.value.as_str() {
                Some(s) => Ok(Some(s)),
                None => Err(at.refuse(Refusal::ExpectedString)),
            },
        }
    }

    /// Refuses unknown elements and any modifier extension. Keys starting with `_` carry
    /// extensions of primitive elements and are ignored.
    fn check_keys(&self, known: &[&str]) -> Result<(), FhirError> {
        let Some(object) = self.value.as_object() else {
            return Err(self.refuse(Refusal::ExpectedObject));
        };
        for key in object.keys() {
            if key.starts_with('_') {
                continue;
            }
            if !known.contains(&key.as_str()) {
                return Err(self.child(key).refuse(Refusal::UnknownElement));
            }
        }
        if self.field("modifierExtension").is_some() {
            return Err(self.child("modifierExtension").refuse(Refusal::ModifierExtension));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fhir_dates() {
        let utc = FixedOffset::east_opt(0).unwrap();
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        assert_eq!(parse_date("2016", Bound::Start, utc), Some(t("2016-01-01T00:00:00Z")));
        assert_eq!(parse_date("2016", Bound::End, utc), Some(t("2017-01-01T00:00:00Z")));
        assert_eq!(parse_date("2016-02", Bound::End, utc), Some(t("2016-03-01T00:00:00Z")));
        assert_eq!(
            parse_date("2016-12-31", Bound::End, utc),
            Some(t("2017-01-01T00:00:00Z"))
        );
        assert_eq!(
            parse_date("2016-06-23T17:02:33+10:00", Bound::End, utc),
            Some(t("2016-06-23T07:02:33Z"))
        );
        let cet = FixedOffset::east_opt(3600).unwrap();
        assert_eq!(
            parse_date("2016-05-11", Bound::Start, cet),
            Some(t("2016-05-10T23:00:00Z"))
        );
        for bad in [
            "",
            "16",
            "2016-5",
            "2016-02-30",
            "2016-05-11T10:00",
            "+2016",
            "2016-01-01-01",
        ] {
            assert_eq!(parse_date(bad, Bound::Start, utc), None, "{bad}");
        }
    }

    #[test]
    fn reference_types() {
        for (reference, expected) in [
            (r#"{"reference": "Organization/f001"}"#, Some("Organization")),
            (
                r#"{"reference": "http://x.org/fhir/Practitioner/13/_history/2"}"#,
                Some("Practitioner"),
            ),
            (r##"{"reference": "#contained"}"##, None),
            (r#"{"type": "Organization", "display": "X"}"#, Some("Organization")),
        ] {
            let v: Value = serde_json::from_str(reference).unwrap();
            let at = At {
                value: &v,
                path: "r".into(),
            };
            assert_eq!(reference_type(&at).unwrap().as_deref(), expected, "{reference}");
        }
    }
}
