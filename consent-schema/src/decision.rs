//! What [`crate::evaluate`] answers: allow, deny with every reason, or ask a human.
//!
//! Every [`DenyReason`] has a stable machine code ([`DenyReason::code`], also the `code` tag of
//! its serde form) that peers and tools match on, and a `Display` text written for a site admin.
//! Codes are never renamed or reused; new reasons get new codes.

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{ConsentId, InstitutionId, Jurisdiction, Modality, PeerId, SeriesRef, StudyRef};
use crate::purpose::{Purpose, Role};
use crate::record::DeidLevel;

/// The decision on a [`crate::TransferRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "decision")]
#[non_exhaustive]
pub enum Decision {
    /// The transfer may go ahead as the grant says.
    Allow(Grant),
    /// The transfer is refused. `reasons` is never empty, sorted and without duplicates.
    Deny {
        /// Every rule or missing consent that caused the refusal.
        reasons: Vec<DenyReason>,
    },
    /// Consent and policy allow the transfer, but a human must approve it first; once
    /// approved, `grant` is what is allowed (its expiry still counts from the decision, so
    /// the node should evaluate again at approval time).
    NeedsApproval {
        /// Why a human must look. Never empty, sorted.
        why: Vec<ApprovalReason>,
        /// What approval would allow.
        grant: Grant,
    },
}

impl Decision {
    /// The grant if the decision is [`Decision::Allow`].
    #[must_use]
    pub fn allowed(&self) -> Option<&Grant> {
        match self {
            Decision::Allow(g) => Some(g),
            _ => None,
        }
    }

    /// The reasons if the decision is [`Decision::Deny`], else an empty slice.
    #[must_use]
    pub fn deny_reasons(&self) -> &[DenyReason] {
        match self {
            Decision::Deny { reasons } => reasons,
            _ => &[],
        }
    }
}

/// What an allowed transfer may contain. Only [`crate::evaluate`] builds one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Grant {
    pub(crate) level: DeidLevel,
    pub(crate) expires_at: DateTime<Utc>,
    pub(crate) series: Vec<SeriesRef>,
    pub(crate) consents: Vec<ConsentId>,
    /// Decided per object at preparation ([`crate::ObjectScope::admit`]); not part of the
    /// serialized decision.
    #[serde(skip)]
    pub(crate) objects: crate::object::ObjectScope,
}

impl Grant {
    /// The de-identification level to apply: the strongest of the requested level, every
    /// relied-on consent's level and every policy minimum that applies.
    #[must_use]
    pub fn level(&self) -> DeidLevel {
        self.level
    }
    /// When the grant ends: the earliest of the decision time plus the policy's maximum, the
    /// end or withdrawal of any relied-on consent, and the start of a deny consent that would
    /// then cover the transfer.
    #[must_use]
    pub fn expires_at(&self) -> DateTime<Utc> {
        self.expires_at
    }
    /// The series that may be sent, in the order of the request (never empty).
    #[must_use]
    pub fn series(&self) -> &[SeriesRef] {
        &self.series
    }
    /// The consents relied on, sorted (for the ledger).
    #[must_use]
    pub fn consents(&self) -> &[ConsentId] {
        &self.consents
    }
    /// The object-level scope: each object of the granted series is admitted or left out on its
    /// own Modality and SOP Class ([`crate::ObjectScope::admit`]).
    #[must_use]
    pub fn objects(&self) -> &crate::object::ObjectScope {
        &self.objects
    }
}

/// Why a human must approve.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "code")]
#[non_exhaustive]
pub enum ApprovalReason {
    /// The purpose is listed in `approval_required` of the site policy.
    PurposeRequiresApproval {
        /// The purpose.
        purpose: Purpose,
    },
    /// A `[[policy.role_rule]]` with `approval = true` decided a series of the grant.
    RoleRequiresApproval {
        /// The rule's position in `policy.role_rule`, from 1.
        rule: u32,
        /// The requesting role.
        role: Role,
        /// The purpose asked for.
        purpose: Purpose,
    },
}

impl ApprovalReason {
    /// Stable machine code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            ApprovalReason::PurposeRequiresApproval { .. } => "purpose-requires-approval",
            ApprovalReason::RoleRequiresApproval { .. } => "role-requires-approval",
        }
    }
}

impl fmt::Display for ApprovalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApprovalReason::PurposeRequiresApproval { purpose } => write!(
                f,
                "site policy sends every {purpose} request to a human (policy.approval_required)"
            ),
            ApprovalReason::RoleRequiresApproval { rule, role, purpose } => write!(
                f,
                "site policy sends {purpose} requests by role {role} to a human (policy.role_rule #{rule})"
            ),
        }
    }
}

/// A part of a consent's scope a request can fall outside of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ScopePart {
    /// The purpose.
    Purpose,
    /// The recipient (peer, institution, jurisdiction, consortium).
    Recipient,
    /// The study (whole record, listed studies or episode of care).
    Study,
    /// The acquisition time of the study.
    DataPeriod,
    /// The modality of the series.
    Modality,
}

impl ScopePart {
    /// Every part, in order.
    pub const ALL: [ScopePart; 5] = [
        ScopePart::Purpose,
        ScopePart::Recipient,
        ScopePart::Study,
        ScopePart::DataPeriod,
        ScopePart::Modality,
    ];
}

impl fmt::Display for ScopePart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ScopePart::Purpose => "purpose",
            ScopePart::Recipient => "recipient",
            ScopePart::Study => "study",
            ScopePart::DataPeriod => "acquisition time",
            ScopePart::Modality => "modality",
        })
    }
}

/// The rule behind a level requirement.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum LevelRule {
    /// A relied-on consent's own level.
    Consent(ConsentId),
    /// The policy's minimum for the purpose (`policy.min_level`).
    PurposeMinimum(Purpose),
    /// The policy's level for a transfer abroad that no consent names (`policy.cross_border_level`).
    CrossBorder(Jurisdiction),
    /// The policy's level when an ethics-board waiver is relied on (`policy.waiver_level`).
    Waiver(ConsentId),
    /// The `min_level` of a `[[policy.role_rule]]` that decided a series of the grant.
    RoleRule {
        /// The rule's position in `policy.role_rule`, from 1.
        rule: u32,
        /// The requesting role.
        role: Role,
        /// The purpose asked for.
        purpose: Purpose,
    },
}

impl fmt::Display for LevelRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LevelRule::Consent(c) => write!(f, "consent {c}"),
            LevelRule::PurposeMinimum(p) => write!(f, "site policy for {p} (policy.min_level)"),
            LevelRule::CrossBorder(j) => write!(
                f,
                "site policy for transfers to {j}, which no consent names (policy.cross_border_level)"
            ),
            LevelRule::Waiver(c) => {
                write!(f, "site policy for ethics-board waiver {c} (policy.waiver_level)")
            }
            LevelRule::RoleRule { rule, role, purpose } => {
                write!(
                    f,
                    "site policy for {purpose} requests by role {role} (policy.role_rule #{rule})"
                )
            }
        }
    }
}

/// One reason for a denial. Sorted by variant, then by content.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "code")]
#[non_exhaustive]
pub enum DenyReason {
    /// The study has no series to send.
    NoSeries,
    /// The patient has no permitting consent on record at all.
    NoConsent,
    /// No permitting consent of the patient covers the purpose.
    PurposeNotCovered {
        /// The purpose asked for.
        purpose: Purpose,
    },
    /// No permitting consent of the patient covers the recipient in any of its forms.
    RecipientNotCovered {
        /// The receiving peer.
        peer: PeerId,
        /// Its institution.
        institution: InstitutionId,
        /// Its jurisdiction.
        jurisdiction: Jurisdiction,
    },
    /// No permitting consent of the patient covers the study (record, study list or episode).
    StudyNotCovered {
        /// The study asked for.
        study: StudyRef,
    },
    /// No permitting consent of the patient covers the study's acquisition time (or it is
    /// unknown and every consent has a data period).
    DataPeriodNotCovered {
        /// The study asked for.
        study: StudyRef,
    },
    /// No permitting consent of the patient covers any of the series' modalities.
    ModalityNotCovered {
        /// The modalities of the study.
        modalities: BTreeSet<Modality>,
    },
    /// A consent that would cover the request was withdrawn.
    ConsentWithdrawn {
        /// The consent.
        consent: ConsentId,
        /// When it was withdrawn.
        at: DateTime<Utc>,
    },
    /// A consent that would cover the request has ended.
    ConsentExpired {
        /// The consent.
        consent: ConsentId,
        /// When it ended.
        at: DateTime<Utc>,
    },
    /// A consent that would cover the request is not valid yet.
    ConsentNotYetValid {
        /// The consent.
        consent: ConsentId,
        /// When it starts.
        from: DateTime<Utc>,
    },
    /// An ethics-board waiver would cover the request, but the policy accepts waivers only for
    /// other purposes.
    WaiverPurpose {
        /// The waiver.
        consent: ConsentId,
        /// The purpose asked for.
        purpose: Purpose,
    },
    /// Each scope part is covered by some consent, but no single consent covers them all; this
    /// names what each permitting consent lacks.
    ConsentScope {
        /// The consent.
        consent: ConsentId,
        /// What of the request it does not cover.
        missing: BTreeSet<ScopePart>,
    },
    /// A deny-provision consent in force covers the request.
    DeniedByConsent {
        /// The consent.
        consent: ConsentId,
    },
    /// The requester asked for a weaker level than a rule requires.
    LevelBelowRequired {
        /// The level asked for.
        requested: DeidLevel,
        /// The level the rule requires.
        required: DeidLevel,
        /// The rule.
        rule: LevelRule,
    },
    /// A `[[policy.role_rule]]` with `effect = "deny"` withheld every series consent and
    /// policy would allow (or every series of the study). Names the rule, the requesting role
    /// and the purpose, nothing of the patient.
    DeniedByRoleRule {
        /// The rule's position in `policy.role_rule`, from 1.
        rule: u32,
        /// The requesting role.
        role: Role,
        /// The purpose asked for.
        purpose: Purpose,
    },
}

impl DenyReason {
    /// Stable machine code (the serde `code` tag).
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            DenyReason::NoSeries => "no-series",
            DenyReason::NoConsent => "no-consent",
            DenyReason::PurposeNotCovered { .. } => "purpose-not-covered",
            DenyReason::RecipientNotCovered { .. } => "recipient-not-covered",
            DenyReason::StudyNotCovered { .. } => "study-not-covered",
            DenyReason::DataPeriodNotCovered { .. } => "data-period-not-covered",
            DenyReason::ModalityNotCovered { .. } => "modality-not-covered",
            DenyReason::ConsentWithdrawn { .. } => "consent-withdrawn",
            DenyReason::ConsentExpired { .. } => "consent-expired",
            DenyReason::ConsentNotYetValid { .. } => "consent-not-yet-valid",
            DenyReason::WaiverPurpose { .. } => "waiver-purpose",
            DenyReason::ConsentScope { .. } => "consent-scope",
            DenyReason::DeniedByConsent { .. } => "denied-by-consent",
            DenyReason::LevelBelowRequired { .. } => "level-below-required",
            DenyReason::DeniedByRoleRule { .. } => "denied-by-role-rule",
        }
    }
}

/// `2026-11-02 14:05 UTC`, or with seconds when they are not zero.
fn when(t: &DateTime<Utc>) -> String {
    use chrono::Timelike;
    if t.second() == 0 && t.nanosecond() == 0 {
        t.format("%Y-%m-%d %H:%M UTC").to_string()
    } else {
        t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
    }
}

fn join<T: fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    items.into_iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::NoSeries => f.write_str("the study has no series to send"),
            DenyReason::NoConsent => f.write_str("no consent of this patient that permits a transfer is on record"),
            DenyReason::PurposeNotCovered { purpose } => {
                write!(f, "no consent of this patient covers purpose {purpose}")
            }
            DenyReason::RecipientNotCovered {
                peer,
                institution,
                jurisdiction,
            } => write!(
                f,
                "no consent of this patient covers the recipient: neither peer {peer}, institution {institution}, jurisdiction {jurisdiction} nor any of its consortia"
            ),
            DenyReason::StudyNotCovered { study } => write!(
                f,
                "no consent of this patient covers study {study} (neither the whole record, the study itself nor its episode of care)"
            ),
            DenyReason::DataPeriodNotCovered { study } => write!(
                f,
                "no consent of this patient covers the acquisition time of study {study} (or it is unknown)"
            ),
            DenyReason::ModalityNotCovered { modalities } => {
                write!(f, "no consent of this patient covers modality {}", join(modalities))
            }
            DenyReason::ConsentWithdrawn { consent, at } => {
                write!(f, "consent {consent} was withdrawn on {}", when(at))
            }
            DenyReason::ConsentExpired { consent, at } => {
                write!(f, "consent {consent} expired on {}", when(at))
            }
            DenyReason::ConsentNotYetValid { consent, from } => {
                write!(f, "consent {consent} is valid only from {}", when(from))
            }
            DenyReason::WaiverPurpose { consent, purpose } => write!(
                f,
                "consent {consent} is an ethics-board waiver, which this site does not accept for {purpose} (policy.waiver_purposes)"
            ),
            DenyReason::ConsentScope { consent, missing } => {
                write!(f, "consent {consent} does not cover this request's {}", join(missing))
            }
            DenyReason::DeniedByConsent { consent } => {
                write!(f, "consent {consent} forbids this transfer (a deny provision in force)")
            }
            DenyReason::LevelBelowRequired {
                requested,
                required,
                rule,
            } => write!(
                f,
                "{requested} data was requested, but {rule} requires at least {required}"
            ),
            DenyReason::DeniedByRoleRule { rule, role, purpose } => write!(
                f,
                "site policy does not let role {role} receive this study for {purpose} (policy.role_rule #{rule})"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_serialise_with_a_decision_tag() {
        let grant = Grant {
            level: DeidLevel::Pseudonymised,
            expires_at: "2026-03-31T00:00:00Z".parse().unwrap(),
            series: vec!["se-1".parse().unwrap()],
            consents: vec!["c-1".parse().unwrap()],
            objects: crate::object::ObjectScope::default(),
        };
        assert_eq!(
            serde_json::to_value(Decision::Allow(grant.clone())).unwrap(),
            serde_json::json!({
                "decision": "allow",
                "level": "pseudonymised",
                "expires_at": "2026-03-31T00:00:00Z",
                "series": ["se-1"],
                "consents": ["c-1"]
            })
        );
        let pending = Decision::NeedsApproval {
            why: vec![ApprovalReason::PurposeRequiresApproval {
                purpose: Purpose::Research,
            }],
            grant,
        };
        let v = serde_json::to_value(&pending).unwrap();
        assert_eq!(v["decision"], "needs-approval");
        assert_eq!(
            v["why"][0],
            serde_json::json!({"code": "purpose-requires-approval", "purpose": "research"})
        );
        let deny = Decision::Deny {
            reasons: vec![DenyReason::NoConsent],
        };
        assert_eq!(
            serde_json::to_value(&deny).unwrap(),
            serde_json::json!({"decision": "deny", "reasons": [{"code": "no-consent"}]})
        );
        assert_eq!(deny.deny_reasons(), &[DenyReason::NoConsent]);
        assert!(deny.allowed().is_none());
    }
}
