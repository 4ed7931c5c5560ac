//! Purposes of use and requesting roles, and their HL7 v3 ActReason codes.
//!
//! Purposes are spelled as on the command line (`medmesh request --purpose second-opinion`). Each
//! maps to exactly one code of the HL7 v3 `ActReason` code system
//! (`http://terminology.hl7.org/CodeSystem/v3-ActReason`, the `PurposeOfUse` branch that FHIR R4
//! `Consent.provision.purpose` binds to), except `second-opinion`:
//!
//! | purpose          | ActReason  | ActReason display           | notes |
//! |------------------|------------|-----------------------------|-------|
//! | `treatment`      | `TREAT`    | treatment                   | |
//! | `second-opinion` | —          | —                           | no PurposeOfUse code exists; it is a kind of `TREAT`, but `TREAT` imports as `treatment` only, so `second-opinion` has no code and is never produced by an import |
//! | `research`       | `HRESCH`   | healthcare research         | |
//! | `teaching`       | `TRAIN`    | training                    | "operations on information used in training and education" |
//! | `quality`        | `HQUALIMP` | health quality improvement  | |
//! | `public-health`  | `PUBHLTH`  | public health               | |
//!
//! The mapping is exact in both directions. A code that is more specific than one of ours
//! (`ETREAT`, `BTG`, `ERTREAT`, `COC`, `POPHLTH` below `TREAT`; `CLINTRCH`, `TRANSRCH` below
//! `HRESCH`; `DISASTER`, `THREAT` below `PUBHLTH`) or more general (`HOPERAT`, `PurposeOfUse`)
//! is refused with [`ActReasonError::NotExact`]: turning "emergency treatment" into "treatment"
//! would widen a permit, and turning "healthcare operations" into "quality" would narrow a deny.
//! Any other code is [`ActReasonError::Unknown`].

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The HL7 v3 ActReason code system URI used by FHIR R4.
pub const ACT_REASON_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";

/// Why a transfer is requested, as the CLI spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Purpose {
    /// Care of this patient (`treatment`, ActReason `TREAT`).
    Treatment,
    /// A specialist's second opinion on this patient's images (`second-opinion`, no ActReason code).
    SecondOpinion,
    /// Scientific research (`research`, ActReason `HRESCH`).
    Research,
    /// Teaching and training of staff or students (`teaching`, ActReason `TRAIN`).
    Teaching,
    /// Quality improvement and audit (`quality`, ActReason `HQUALIMP`).
    Quality,
    /// Public health activities (`public-health`, ActReason `PUBHLTH`).
    PublicHealth,
}

/// Why a purpose or role could not be parsed or mapped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PurposeError {
    /// Not one of the purposes the CLI knows.
    #[error(
        "unknown purpose {given:?} (expected treatment, second-opinion, research, teaching, quality or public-health)"
    )]
    Unknown {
        /// The word given.
        given: String,
    },
    /// Not one of the roles the CLI knows.
    #[error(
        "unknown role {given:?} (expected clinician, radiologist, researcher, educator, quality-officer, public-health-officer or data-steward)"
    )]
    UnknownRole {
        /// The word given.
        given: String,
    },
}

/// Why an ActReason code does not map to a [`Purpose`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ActReasonError {
    /// A known code with no exact medmesh purpose (more specific or more general than ours).
    #[error("ActReason {code} has no exact medmesh purpose: it is {relation} {nearest_code}")]
    NotExact {
        /// The code given.
        code: String,
        /// "a specialisation of" or "a generalisation of".
        relation: &'static str,
        /// The ActReason code of the nearest medmesh purpose.
        nearest_code: &'static str,
    },
    /// A code medmesh does not map at all.
    #[error("ActReason {code} is not a purpose medmesh knows")]
    Unknown {
        /// The code given.
        code: String,
    },
}

impl Purpose {
    /// Every purpose, in order.
    pub const ALL: [Purpose; 6] = [
        Purpose::Treatment,
        Purpose::SecondOpinion,
        Purpose::Research,
        Purpose::Teaching,
        Purpose::Quality,
        Purpose::PublicHealth,
    ];

    /// The CLI spelling (`second-opinion`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Purpose::Treatment => "treatment",
            Purpose::SecondOpinion => "second-opinion",
            Purpose::Research => "research",
            Purpose::Teaching => "teaching",
            Purpose::Quality => "quality",
            Purpose::PublicHealth => "public-health",
        }
    }

    /// The HL7 v3 ActReason code, if the purpose has one (see the module table).
    #[must_use]
    pub const fn act_reason(self) -> Option<&'static str> {
        match self {
            Purpose::Treatment => Some("TREAT"),
            Purpose::SecondOpinion => None,
            Purpose::Research => Some("HRESCH"),
            Purpose::Teaching => Some("TRAIN"),
            Purpose::Quality => Some("HQUALIMP"),
            Purpose::PublicHealth => Some("PUBHLTH"),
        }
    }

    /// The purpose of an HL7 v3 ActReason code (see the module table).
    ///
    /// # Errors
    ///
    /// [`ActReasonError::NotExact`] for a code more specific or more general than a medmesh
    /// purpose, [`ActReasonError::Unknown`] for any other code.
    pub fn from_act_reason(code: &str) -> Result<Self, ActReasonError> {
        if let Some(p) = Purpose::ALL.into_iter().find(|p| p.act_reason() == Some(code)) {
            return Ok(p);
        }
        const SPECIALISATIONS: [(&str, &str); 9] = [
            ("ETREAT", "TREAT"),
            ("BTG", "TREAT"),
            ("ERTREAT", "TREAT"),
            ("COC", "TREAT"),
            ("POPHLTH", "TREAT"),
            ("CLINTRCH", "HRESCH"),
            ("TRANSRCH", "HRESCH"),
            ("DISASTER", "PUBHLTH"),
            ("THREAT", "PUBHLTH"),
        ];
        if let Some((_, parent)) = SPECIALISATIONS.iter().find(|(c, _)| *c == code) {
            return Err(ActReasonError::NotExact {
                code: code.to_owned(),
                relation: "a specialisation of",
                nearest_code: parent,
            });
        }
        let nearest = match code {
            "HOPERAT" => Some("HQUALIMP"),
            "PurposeOfUse" => Some("TREAT"),
            _ => None,
        };
        match nearest {
            Some(nearest_code) => Err(ActReasonError::NotExact {
                code: code.to_owned(),
                relation: "a generalisation of",
                nearest_code,
            }),
            None => Err(ActReasonError::Unknown { code: code.to_owned() }),
        }
    }
}

impl FromStr for Purpose {
    type Err = PurposeError;
    fn from_str(s: &str) -> Result<Self, PurposeError> {
        Purpose::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| PurposeError::Unknown { given: s.to_owned() })
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The role of the person on whose behalf a peer requests a study, as the CLI spells it.
///
/// The role is recorded in the ledger and shown to the human who approves a request; it changes
/// the decision of [`crate::evaluate`] only through the site's role rules
/// (`[[policy.role_rule]]`, [`crate::RoleRule`]), which can only make it stricter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Role {
    /// A treating physician or nurse (`clinician`).
    Clinician,
    /// A radiologist reading or reviewing the images (`radiologist`).
    Radiologist,
    /// A scientist (`researcher`).
    Researcher,
    /// A teacher (`educator`).
    Educator,
    /// Quality management or audit staff (`quality-officer`).
    QualityOfficer,
    /// Public health authority staff (`public-health-officer`).
    PublicHealthOfficer,
    /// Someone curating data on behalf of a research data platform (`data-steward`).
    DataSteward,
}

impl Role {
    /// Every role, in order.
    pub const ALL: [Role; 7] = [
        Role::Clinician,
        Role::Radiologist,
        Role::Researcher,
        Role::Educator,
        Role::QualityOfficer,
        Role::PublicHealthOfficer,
        Role::DataSteward,
    ];

    /// The CLI spelling (`quality-officer`).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Clinician => "clinician",
            Role::Radiologist => "radiologist",
            Role::Researcher => "researcher",
            Role::Educator => "educator",
            Role::QualityOfficer => "quality-officer",
            Role::PublicHealthOfficer => "public-health-officer",
            Role::DataSteward => "data-steward",
        }
    }
}

impl FromStr for Role {
    type Err = PurposeError;
    fn from_str(s: &str) -> Result<Self, PurposeError> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| PurposeError::UnknownRole { given: s.to_owned() })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_spelling_round_trips_and_matches_serde() {
        for p in Purpose::ALL {
            assert_eq!(p.as_str().parse::<Purpose>(), Ok(p));
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{p}\""));
        }
        for r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
            assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{r}\""));
        }
        assert!(matches!(
            "Research".parse::<Purpose>(),
            Err(PurposeError::Unknown { .. })
        ));
        assert!(matches!(
            "doctor".parse::<Role>(),
            Err(PurposeError::UnknownRole { .. })
        ));
    }

    #[test]
    fn act_reason_table() {
        let table = [
            (Purpose::Treatment, Some("TREAT")),
            (Purpose::SecondOpinion, None),
            (Purpose::Research, Some("HRESCH")),
            (Purpose::Teaching, Some("TRAIN")),
            (Purpose::Quality, Some("HQUALIMP")),
            (Purpose::PublicHealth, Some("PUBHLTH")),
        ];
        for (purpose, code) in table {
            assert_eq!(purpose.act_reason(), code);
            if let Some(code) = code {
                assert_eq!(Purpose::from_act_reason(code), Ok(purpose));
            }
        }
    }

    #[test]
    fn inexact_act_reasons_are_refused() {
        for (code, nearest) in [("ETREAT", "TREAT"), ("CLINTRCH", "HRESCH"), ("HOPERAT", "HQUALIMP")] {
            match Purpose::from_act_reason(code) {
                Err(ActReasonError::NotExact { nearest_code, .. }) => {
                    assert_eq!(nearest_code, nearest)
                }
                other => panic!("{code}: {other:?}"),
            }
        }
        assert_eq!(
            Purpose::from_act_reason("HMARKT"),
            Err(ActReasonError::Unknown { code: "HMARKT".into() })
        );
        assert_eq!(
            Purpose::from_act_reason("ETREAT").unwrap_err().to_string(),
            "ActReason ETREAT has no exact medmesh purpose: it is a specialisation of TREAT"
        );
    }
}
