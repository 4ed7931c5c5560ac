//! Consent records, site policy and the pure transfer decision of medmesh.
//!
//! A medmesh node holds imaging studies and, for each patient, the consents that say who may
//! receive them, for what purpose and at which de-identification level. This crate is the
//! transport-agnostic core of that: the types, their checked encodings (JSON, CBOR, a JSON
//! Schema), an importer for HL7 FHIR R4 `Consent` resources, and [`evaluate`], the one function
//! that decides a [`TransferRequest`]. It does no I/O and reads no clock: `now` is always a
//! parameter, so decisions can be replayed and tested.
//!
//! - [`ConsentRecord`]: one patient's permit or deny, with its [`Scope`] (purposes, modalities,
//!   recipients, studies), validity and legal basis. Built from a [`ConsentDraft`] by
//!   [`ConsentRecord::new`], which refuses impossible records.
//! - [`SitePolicy`]: the site's own rules (`[policy]` in the node's TOML configuration).
//! - [`evaluate`]: request + consents + policy + now → [`Decision`]: [`Decision::Allow`] with a
//!   [`Grant`] (level, expiry, series), [`Decision::Deny`] with every [`DenyReason`], or
//!   [`Decision::NeedsApproval`].
//! - [`fhir::import_consent`]: FHIR R4 `Consent` → records, refusing what it cannot map.
//!
//! # Example
//!
//! ```
//! use consent_schema::*;
//!
//! let t = |s: &str| s.parse::<chrono::DateTime<chrono::Utc>>().unwrap();
//! let patient = PatientRef::from_bytes([1; 32]); // the node's keyed pseudonym
//!
//! let consent = ConsentRecord::new(ConsentDraft {
//!     id: "c-1".parse()?,
//!     patient,
//!     consented_by: ConsentedBy::Patient,
//!     provision: Provision::Permit { level: DeidLevel::Identifiable },
//!     scope: Scope {
//!         purposes: [Purpose::Treatment, Purpose::SecondOpinion].into(),
//!         modalities: ModalityScope::All,
//!         recipients: RecipientScope::Only([Recipient::Jurisdiction("FR".parse()?)].into()),
//!         coverage: Coverage::WholeRecord,
//!         data_period: None,
//!     },
//!     valid_from: t("2026-01-01T00:00:00Z"),
//!     valid_until: None,
//!     withdrawn_at: None,
//!     legal_basis: LegalBasis::new("GDPR-9.2.h", "treatment and second opinions in France")?,
//! })?;
//!
//! let policy = SitePolicy::new("DE".parse()?);
//! let request = TransferRequest {
//!     peer: "12D3KooWExamplePeer".parse()?,
//!     institution: "Hôpital Européen Georges-Pompidou".parse()?,
//!     jurisdiction: "FR".parse()?,
//!     consortia: Default::default(),
//!     purpose: Purpose::SecondOpinion,
//!     role: Role::Radiologist,
//!     requested_level: None,
//!     study: StudyFacts {
//!         study: "s-42".parse()?,
//!         patient,
//!         episode: None,
//!         acquired_at: None,
//!         series: vec![SeriesFacts { series: "se-1".parse()?, modality: "CT".parse()? }],
//!     },
//! };
//!
//! let now = t("2026-03-01T12:00:00Z");
//! let Decision::Allow(grant) = evaluate(&request, &[consent], &policy, now) else {
//!     panic!("expected an allow");
//! };
//! // The consent names France, so the cross-border rule does not force anonymisation.
//! assert_eq!(grant.level(), DeidLevel::Identifiable);
//! assert_eq!(grant.expires_at(), t("2026-03-31T12:00:00Z")); // policy: 30 days at most
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod codec;
mod decision;
mod evaluate;
pub mod fhir;
mod ids;
mod object;
mod policy;
pub mod purpose;
mod record;
mod request;

#[doc(hidden)]
pub mod fuzzing;

#[cfg(test)]
mod testutil;

pub use codec::{CodecError, MAX_NESTING, MAX_RECORD_SIZE};
pub use decision::{ApprovalReason, Decision, DenyReason, Grant, LevelRule, ScopePart};
pub use evaluate::evaluate;
pub use ids::{
    ConsentId, ConsortiumId, EpisodeId, IdError, InstitutionId, Jurisdiction, Modality, PatientRef, PeerId, SeriesRef,
    StudyRef,
};
pub use object::{ObjectExclusion, ObjectFacts, ObjectScope, implied_modality};
pub use policy::{GrantDays, OrAny, PolicyError, RoleRule, RoleRuleCause, RuleEffect, SitePolicy};
pub use purpose::{ActReasonError, Purpose, PurposeError, Role};
pub use record::{
    ConsentDraft, ConsentError, ConsentRecord, ConsentedBy, Coverage, DataPeriod, DeidLevel, FORMAT_VERSION,
    LegalBasis, ModalityScope, Provision, Recipient, RecipientScope, Scope, TimeStatus,
};
pub use request::{SeriesFacts, StudyFacts, TransferRequest};

/// The JSON Schema of [`ConsentRecord`] (its JSON form), as checked in at
/// `schema/consent-record.schema.json`.
#[must_use]
pub fn consent_record_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(ConsentRecord);
    schema.to_value()
}
