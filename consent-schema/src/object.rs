//! The decision per object.
//!
//! [`crate::evaluate`] decides per series: a series is granted when a consent's modality scope
//! covers the series' modality. A series may hold objects of another kind under the same Series
//! Instance UID (a structured report or a secondary capture filed in a CT series, an object whose
//! Modality says CT while its SOP Class is a report). So every object of a granted series is
//! decided again on its own facts, with [`ObjectScope::admit`]:
//!
//! 1. The object's modalities are its own Modality (0008,0060) and the modality its SOP Class
//!    implies ([`implied_modality`]; an SR document is `SR` whatever its Modality says).
//! 2. An object with neither is admitted only when every consent relied on covers every modality
//!    (`modality-unknown` otherwise).
//! 3. Each of its modalities must be covered by a consent relied on (`modality-not-covered`, or
//!    `sop-class-not-covered` when the modality comes from the SOP Class).
//! 4. A deny consent that applies to the transfer but for the modality, and whose modality scope
//!    covers one of the object's modalities, withholds it (`denied-by-consent`): deny beats
//!    permit, per object as per series.
//! 5. The site's role rules (`[[policy.role_rule]]`, [`crate::RoleRule`]) are applied per object
//!    as per series: for each of the object's modalities (or, with none, the unknown modality,
//!    which only a rule without a modality list matches), the first rule that matches the
//!    request's role, purpose and that modality must not deny, must not require a stronger
//!    level than the grant's, and must not require an approval the decision did not ask for
//!    (`denied-by-role-rule` otherwise).

use std::fmt;

use serde::Serialize;

use std::collections::BTreeSet;

use crate::ids::{ConsentId, Modality};
use crate::purpose::{Purpose, Role};
use crate::record::ModalityScope;

/// What the holder knows of one object (from its own store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectFacts {
    /// The object's Modality (0008,0060), if it has a valid one.
    pub modality: Option<Modality>,
    /// The object's SOP Class UID (0008,0016).
    pub sop_class: String,
}

/// The object-level scope of a grant: the modality scopes of the consents relied on and of the
/// deny consents that apply but for the modality. Only [`crate::evaluate`] builds a non-empty one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ObjectScope {
    /// The permits relied on, by consent id.
    pub(crate) permits: Vec<(ConsentId, ModalityScope)>,
    /// The denies in force that apply but for the modality, by consent id.
    pub(crate) denies: Vec<(ConsentId, ModalityScope)>,
    /// The role rules that match the request's role and purpose, in order (empty without rules).
    pub(crate) role_rules: Vec<ObjectRoleRule>,
}

/// A role rule as it applies to the objects of one grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct ObjectRoleRule {
    /// The rule's position in `policy.role_rule`, from 1.
    pub(crate) rule: u32,
    pub(crate) role: Role,
    pub(crate) purpose: Purpose,
    /// The modalities it matches; `None`: every modality, the unknown one included.
    pub(crate) modality: Option<BTreeSet<Modality>>,
    /// Whether an object it decides is left out: it denies, or it requires a stronger level
    /// than the grant's or an approval the decision did not ask for.
    pub(crate) refuses: bool,
}

impl ObjectRoleRule {
    fn matches(&self, modality: Option<&Modality>) -> bool {
        crate::policy::modality_matches(self.modality.as_ref(), modality)
    }
}

/// Why an object of a granted series is left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "code")]
#[non_exhaustive]
pub enum ObjectExclusion {
    /// No consent relied on covers the object's Modality.
    ModalityNotCovered {
        /// The object's Modality.
        modality: Modality,
    },
    /// No consent relied on covers the modality the object's SOP Class implies.
    SopClassNotCovered {
        /// The object's SOP Class UID.
        sop_class: String,
        /// The modality it implies.
        modality: Modality,
    },
    /// The object has no Modality and its SOP Class implies none, and a consent relied on covers
    /// only some modalities.
    ModalityUnknown,
    /// A deny consent covers one of the object's modalities.
    DeniedByConsent {
        /// The deny consent.
        consent: ConsentId,
        /// The modality it covers.
        modality: Modality,
    },
    /// The site's role rule that decides one of the object's modalities leaves it out.
    DeniedByRoleRule {
        /// The rule's position in `policy.role_rule`, from 1.
        rule: u32,
        /// The requesting role.
        role: Role,
        /// The purpose asked for.
        purpose: Purpose,
        /// The modality it decides (`None`: the object has none).
        modality: Option<Modality>,
    },
}

impl ObjectExclusion {
    /// Stable machine code.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            ObjectExclusion::ModalityNotCovered { .. } => "modality-not-covered",
            ObjectExclusion::SopClassNotCovered { .. } => "sop-class-not-covered",
            ObjectExclusion::ModalityUnknown => "modality-unknown",
            ObjectExclusion::DeniedByConsent { .. } => "denied-by-consent",
            ObjectExclusion::DeniedByRoleRule { .. } => "denied-by-role-rule",
        }
    }
}

impl fmt::Display for ObjectExclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectExclusion::ModalityNotCovered { modality } => {
                write!(f, "no consent relied on covers its modality {modality}")
            }
            ObjectExclusion::SopClassNotCovered { sop_class, modality } => write!(
                f,
                "its SOP Class {sop_class} is a {modality} object, a modality no consent relied on covers"
            ),
            ObjectExclusion::ModalityUnknown => f.write_str(
                "it has no Modality and its SOP Class implies none, and the consent covers only some modalities",
            ),
            ObjectExclusion::DeniedByConsent { consent, modality } => {
                write!(f, "consent {consent} objects to modality {modality}")
            }
            ObjectExclusion::DeniedByRoleRule {
                rule,
                role,
                purpose,
                modality,
            } => {
                let what = modality
                    .as_ref()
                    .map_or_else(|| "objects without a modality".to_string(), |m| format!("{m} objects"));
                write!(
                    f,
                    "site policy does not let role {role} receive {what} for {purpose} under this grant (policy.role_rule #{rule})"
                )
            }
        }
    }
}

impl ObjectScope {
    /// Whether an object of a granted series may be sent (see the module docs).
    ///
    /// # Errors
    /// The [`ObjectExclusion`] that leaves it out.
    pub fn admit(&self, object: &ObjectFacts) -> Result<(), ObjectExclusion> {
        let implied = implied_modality(&object.sop_class).and_then(|m| m.parse::<Modality>().ok());
        let mut modalities: Vec<(Modality, bool)> = Vec::new();
        if let Some(m) = &object.modality {
            modalities.push((m.clone(), false));
        }
        if let Some(m) = implied
            && object.modality.as_ref() != Some(&m)
        {
            modalities.push((m, true));
        }
        if modalities.is_empty() {
            if self.permits.iter().all(|(_, p)| *p == ModalityScope::All) {
                return self.role_check(None);
            }
            return Err(ObjectExclusion::ModalityUnknown);
        }
        for (m, from_class) in &modalities {
            if !self.permits.iter().any(|(_, p)| p.covers(m)) {
                return Err(if *from_class {
                    ObjectExclusion::SopClassNotCovered {
                        sop_class: object.sop_class.clone(),
                        modality: m.clone(),
                    }
                } else {
                    ObjectExclusion::ModalityNotCovered { modality: m.clone() }
                });
            }
        }
        for (m, _) in &modalities {
            if let Some((consent, _)) = self.denies.iter().find(|(_, scope)| scope.covers(m)) {
                return Err(ObjectExclusion::DeniedByConsent {
                    consent: consent.clone(),
                    modality: m.clone(),
                });
            }
        }
        for (m, _) in &modalities {
            self.role_check(Some(m))?;
        }
        Ok(())
    }

    /// The first role rule matching `modality` must not leave the object out.
    fn role_check(&self, modality: Option<&Modality>) -> Result<(), ObjectExclusion> {
        match self.role_rules.iter().find(|r| r.matches(modality)) {
            Some(r) if r.refuses => Err(ObjectExclusion::DeniedByRoleRule {
                rule: r.rule,
                role: r.role,
                purpose: r.purpose,
                modality: modality.cloned(),
            }),
            _ => Ok(()),
        }
    }
}

/// The modality a Storage SOP Class implies (DICOM PS3.4 Annex B and PS3.3's IOD modules), for
/// classes whose objects are of one modality whatever their Modality attribute says; `None` for
/// classes that do not (Secondary Capture, raw data, ...) and unknown ones.
#[must_use]
pub fn implied_modality(sop_class: &str) -> Option<&'static str> {
    const BASE: &str = "1.2.840.10008.5.1.4.1.1.";
    let rest = sop_class.trim().strip_prefix(BASE)?;
    let first = rest.split('.').next().unwrap_or("");
    Some(match (first, rest) {
        (_, "88.59") => "KO",
        ("88", _) => "SR",
        ("104", _) => "DOC",
        ("11", _) => "PR",
        (_, "66.4") => "SEG",
        (_, "66.1" | "66.3") => "REG",
        (_, "481.1") => "RTIMAGE",
        (_, "481.2") => "RTDOSE",
        (_, "481.3") => "RTSTRUCT",
        (_, "481.5" | "481.8") => "RTPLAN",
        (_, "481.4" | "481.6" | "481.7") => "RTRECORD",
        (_, "2" | "2.1" | "2.2") => "CT",
        (_, "4" | "4.1" | "4.4") => "MR",
        (_, "128" | "130" | "128.1") => "PT",
        (_, "20") => "NM",
        (_, "6.1" | "6.2" | "3.1") => "US",
        (_, "1") => "CR",
        (_, "1.1" | "1.1.1") => "DX",
        (_, "1.2" | "1.2.1") => "MG",
        (_, "12.1") => "XA",
        (_, "12.2") => "RF",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
    const SC: &str = "1.2.840.10008.5.1.4.1.1.7";
    const BASIC_SR: &str = "1.2.840.10008.5.1.4.1.1.88.11";
    const KOS: &str = "1.2.840.10008.5.1.4.1.1.88.59";
    const PDF: &str = "1.2.840.10008.5.1.4.1.1.104.1";

    fn m(s: &str) -> Modality {
        s.parse().unwrap()
    }

    fn only(list: &[&str]) -> ModalityScope {
        ModalityScope::Only(list.iter().map(|s| m(s)).collect())
    }

    fn obj(modality: Option<&str>, sop_class: &str) -> ObjectFacts {
        ObjectFacts {
            modality: modality.map(m),
            sop_class: sop_class.into(),
        }
    }

    fn scope(permits: Vec<ModalityScope>, denies: Vec<ModalityScope>) -> ObjectScope {
        ObjectScope {
            permits: permits
                .into_iter()
                .enumerate()
                .map(|(i, s)| (format!("permit-{i}").parse().unwrap(), s))
                .collect(),
            denies: denies
                .into_iter()
                .enumerate()
                .map(|(i, s)| (format!("deny-{i}").parse().unwrap(), s))
                .collect(),
            role_rules: Vec::new(),
        }
    }

    /// Every case: (permits, denies, object, expected code or "admit").
    #[test]
    fn each_object_is_decided_on_its_own_modality_and_sop_class() {
        let ct_only = || vec![only(&["CT"])];
        let all = || vec![ModalityScope::All];
        let cases: Vec<(&str, ObjectScope, ObjectFacts, &str)> = vec![
            (
                "CT image, CT consent",
                scope(ct_only(), vec![]),
                obj(Some("CT"), CT),
                "admit",
            ),
            (
                "SR filed in a CT series",
                scope(ct_only(), vec![]),
                obj(Some("SR"), BASIC_SR),
                "modality-not-covered",
            ),
            (
                "OT secondary capture",
                scope(ct_only(), vec![]),
                obj(Some("OT"), SC),
                "modality-not-covered",
            ),
            (
                "SR that says CT",
                scope(ct_only(), vec![]),
                obj(Some("CT"), BASIC_SR),
                "sop-class-not-covered",
            ),
            (
                "PDF that says CT",
                scope(ct_only(), vec![]),
                obj(Some("CT"), PDF),
                "sop-class-not-covered",
            ),
            (
                "KO that says CT",
                scope(ct_only(), vec![]),
                obj(Some("CT"), KOS),
                "sop-class-not-covered",
            ),
            (
                "SC that says CT",
                scope(ct_only(), vec![]),
                obj(Some("CT"), SC),
                "admit",
            ),
            (
                "no modality, CT consent",
                scope(ct_only(), vec![]),
                obj(None, SC),
                "modality-unknown",
            ),
            ("no modality, all", scope(all(), vec![]), obj(None, SC), "admit"),
            (
                "no modality, class implies CT",
                scope(ct_only(), vec![]),
                obj(None, CT),
                "admit",
            ),
            (
                "SR, CT+SR consent",
                scope(vec![only(&["CT", "SR"])], vec![]),
                obj(Some("SR"), BASIC_SR),
                "admit",
            ),
            (
                "SR, two permits",
                scope(vec![only(&["CT"]), only(&["SR"])], vec![]),
                obj(Some("CT"), BASIC_SR),
                "admit",
            ),
            (
                "SR, all, SR denied",
                scope(all(), vec![only(&["SR"])]),
                obj(Some("CT"), BASIC_SR),
                "denied-by-consent",
            ),
            (
                "CT, all, SR denied",
                scope(all(), vec![only(&["SR"])]),
                obj(Some("CT"), CT),
                "admit",
            ),
            (
                "CT, all, all denied",
                scope(all(), vec![ModalityScope::All]),
                obj(Some("CT"), CT),
                "denied-by-consent",
            ),
            (
                "no permit at all",
                scope(vec![], vec![]),
                obj(Some("CT"), CT),
                "modality-not-covered",
            ),
        ];
        for (name, s, o, want) in cases {
            let got = match s.admit(&o) {
                Ok(()) => "admit",
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    e.code()
                }
            };
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn sop_classes_imply_their_modality() {
        for (class, want) in [
            (CT, Some("CT")),
            ("1.2.840.10008.5.1.4.1.1.2.1", Some("CT")),
            ("1.2.840.10008.5.1.4.1.1.4", Some("MR")),
            (BASIC_SR, Some("SR")),
            ("1.2.840.10008.5.1.4.1.1.88.33", Some("SR")),
            (KOS, Some("KO")),
            (PDF, Some("DOC")),
            ("1.2.840.10008.5.1.4.1.1.11.1", Some("PR")),
            ("1.2.840.10008.5.1.4.1.1.66.4", Some("SEG")),
            ("1.2.840.10008.5.1.4.1.1.481.3", Some("RTSTRUCT")),
            (SC, None),
            ("1.2.840.10008.5.1.4.1.1.7.4", None),
            ("1.2.3.4", None),
            ("", None),
        ] {
            assert_eq!(implied_modality(class), want, "{class}");
            if let Some(w) = want {
                assert!(w.parse::<Modality>().unwrap().is_defined_term(), "{w}");
            }
        }
    }
}
