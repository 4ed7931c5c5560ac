//! The site's own rules, applied on top of consent by [`crate::evaluate`].
//!
//! `SitePolicy` lives in the node's TOML configuration under `[policy]`. Only
//! `home_jurisdiction` is required; every other field has a default an EU hospital would accept:
//!
//! ```toml
//! [policy]
//! home_jurisdiction = "DE"            # required: where this site is
//! cross_border_level = "anonymised"   # default
//! waiver_purposes = ["research"]      # default
//! waiver_level = "anonymised"         # default
//! approval_required = ["research", "teaching"]  # default
//! max_grant_days = 30                 # default
//!
//! [policy.min_level]                  # default: research and teaching as below
//! research = "pseudonymised"
//! teaching = "anonymised"
//!
//! [[policy.role_rule]]                # default: none
//! role = "researcher"                 # a requesting role (`Role`), or "*"
//! purpose = "research"                # a purpose, or "*" (the default)
//! modality = ["MG"]                   # DICOM modalities (defined terms); omitted = any
//! effect = "deny"                     # "allow" or "deny"
//!
//! [[policy.role_rule]]
//! role = "researcher"
//! effect = "allow"
//! min_level = "anonymised"            # optional, allow only: the weakest level allowed
//! approval = true                     # optional, allow only: a person must approve
//! ```
//!
//! Unknown fields are an error (a misspelt rule must not be silently ignored). Giving
//! `[policy.min_level]` replaces the whole default table, so a site that lists only `quality`
//! drops the research and teaching minimums: write every purpose you want bounded.
//!
//! # Role rules
//!
//! `[[policy.role_rule]]` entries ([`RoleRule`]) make the requesting role (the [`crate::Role`]
//! of a [`crate::TransferRequest`]) part of the decision. They are applied by
//! [`crate::evaluate`] after consent and the rest of the policy, and can only make a decision
//! stricter: they never allow what consent and policy deny, never lower a level, never remove a
//! need for approval (a property test checks this).
//!
//! - **Per series, first match.** Each series of the study is decided by the first rule, in
//!   the order written, whose `role`, `purpose` and `modality` all match the request and that
//!   series' modality (a rule without `modality` matches every series). A series no rule
//!   matches is decided by consent and policy alone, so a policy without rules decides as
//!   before. Deciding per series is the granularity of consent itself (a deny consent withholds
//!   the series of its modalities): a rule `deny MG` withholds the mammography series of a
//!   mixed study and nothing else, and an allow-list (`allow CT`, then `deny *`) sends the CT
//!   series and withholds the rest, which neither an "any series" nor an "all series" reading
//!   of the study would do both.
//! - **`deny`** withholds the series it decides. When no series remains the request is denied
//!   with `denied-by-role-rule`, naming the rule, the role and the purpose.
//! - **`allow`** lets consent and policy decide the series, adding its `min_level` (the
//!   stronger level wins, as with `policy.min_level` and the cross-border level; a requested
//!   weaker level is denied with `level-below-required`) and, with `approval = true`, the need
//!   for a person (`role-requires-approval`, the same path as `policy.approval_required`). An
//!   allow rule without either only stops later rules from matching that series.
//! - **Per object.** Each object of a granted series is decided again on its own modalities
//!   (as consent is, [`crate::ObjectScope::admit`]): an object whose first matching rule denies,
//!   requires a stronger level than the grant's or an approval the decision did not ask for is
//!   left out (`denied-by-role-rule`).
//! - A `deny` rule takes neither `min_level` nor `approval`; `modality` must not be empty and
//!   must hold defined terms of Modality (0008,0060), so a misspelt modality cannot silently
//!   match nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::TimeDelta;
use serde::{Deserialize, Serialize};

use crate::ids::{Jurisdiction, Modality};
use crate::purpose::{Purpose, Role};
use crate::record::DeidLevel;

/// The site's rules. See the module docs for the TOML form and the defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SitePolicy {
    /// The country this site is in. Required, no default.
    pub home_jurisdiction: Jurisdiction,
    /// Level required for a transfer to a peer in another jurisdiction, unless an applicable
    /// consent names that jurisdiction, that peer or that institution explicitly (naming a
    /// consortium is not enough). Default: `anonymised`.
    #[serde(default = "default_cross_border_level")]
    pub cross_border_level: DeidLevel,
    /// Minimum level per purpose, whatever the consent says. Default: `research =
    /// "pseudonymised"`, `teaching = "anonymised"`; purposes not listed have no minimum.
    #[serde(default = "default_min_level")]
    pub min_level: BTreeMap<Purpose, DeidLevel>,
    /// Purposes for which an ethics-board waiver stands in for consent; for any other purpose
    /// a waiver does not apply. Default: `["research"]`.
    #[serde(default = "default_waiver_purposes")]
    pub waiver_purposes: BTreeSet<Purpose>,
    /// Level required whenever an ethics-board waiver is relied on. Default: `anonymised`.
    #[serde(default = "default_waiver_level")]
    pub waiver_level: DeidLevel,
    /// Purposes whose requests always go to a human (`medmesh approvals`) even when consent
    /// and policy allow them. Default: `["research", "teaching"]`.
    #[serde(default = "default_approval_required")]
    pub approval_required: BTreeSet<Purpose>,
    /// Longest a grant may last, in days; an Allow expires at the latest this long after the
    /// decision (earlier if a consent ends or is withdrawn sooner). 1 to 3650. Default: `30`.
    #[serde(default)]
    pub max_grant_days: GrantDays,
    /// Rules on the requesting role (`[[policy.role_rule]]`), in the order written; the first
    /// that matches a series decides it. Default: none (the role decides nothing).
    #[serde(rename = "role_rule", default, skip_serializing_if = "Vec::is_empty")]
    pub role_rules: Vec<RoleRule>,
}

/// One `[[policy.role_rule]]`: requesting role × purpose × modality → allow or deny, with the
/// weakest level allowed and whether a person must approve. See "Role rules" in the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawRoleRule", into = "RawRoleRule")]
pub struct RoleRule {
    role: OrAny<Role>,
    purpose: OrAny<Purpose>,
    modality: Option<BTreeSet<Modality>>,
    effect: RuleEffect,
}

/// What a matching [`RoleRule`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleEffect {
    /// Consent and policy decide, with the rule's level and approval added.
    Allow {
        /// The weakest level allowed, if the rule sets one.
        min_level: Option<DeidLevel>,
        /// Whether a person must approve.
        approval: bool,
    },
    /// The series the rule matches are withheld.
    Deny,
}

/// A value, or `"*"` for any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OrAny<T> {
    /// `"*"`: matches every value.
    Any,
    /// Matches this value only.
    Only(T),
}

impl<T: PartialEq> OrAny<T> {
    /// Whether `value` matches.
    #[must_use]
    pub fn matches(&self, value: &T) -> bool {
        match self {
            OrAny::Any => true,
            OrAny::Only(v) => v == value,
        }
    }
}

impl<T: fmt::Display> fmt::Display for OrAny<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OrAny::Any => f.write_str("*"),
            OrAny::Only(v) => v.fmt(f),
        }
    }
}

impl<T: std::str::FromStr> std::str::FromStr for OrAny<T> {
    type Err = T::Err;
    fn from_str(s: &str) -> Result<Self, T::Err> {
        if s == "*" {
            Ok(OrAny::Any)
        } else {
            s.parse().map(OrAny::Only)
        }
    }
}

impl RoleRule {
    /// A rule, checked as the TOML form is.
    ///
    /// # Errors
    ///
    /// [`PolicyError::RoleRule`] for an empty modality list, a modality that is not a defined
    /// term, or a `deny` with a level or an approval (see [`RoleRule::effect`]).
    pub fn new(
        role: OrAny<Role>,
        purpose: OrAny<Purpose>,
        modality: Option<BTreeSet<Modality>>,
        effect: RuleEffect,
    ) -> Result<Self, PolicyError> {
        if let Some(set) = &modality {
            if set.is_empty() {
                return Err(PolicyError::RoleRule {
                    cause: RoleRuleCause::EmptyModality,
                });
            }
            if let Some(m) = set.iter().find(|m| !m.is_defined_term()) {
                return Err(PolicyError::RoleRule {
                    cause: RoleRuleCause::UndefinedModality { modality: m.clone() },
                });
            }
        }
        Ok(Self {
            role,
            purpose,
            modality,
            effect,
        })
    }

    /// The role it matches.
    #[must_use]
    pub fn role(&self) -> OrAny<Role> {
        self.role
    }
    /// The purpose it matches.
    #[must_use]
    pub fn purpose(&self) -> OrAny<Purpose> {
        self.purpose
    }
    /// The modalities it matches; `None`: every modality.
    #[must_use]
    pub fn modality(&self) -> Option<&BTreeSet<Modality>> {
        self.modality.as_ref()
    }
    /// What it does.
    #[must_use]
    pub fn effect(&self) -> RuleEffect {
        self.effect
    }

    /// Whether the rule matches a request by `role` for `purpose`, whatever the modality.
    #[must_use]
    pub fn matches_request(&self, role: Role, purpose: Purpose) -> bool {
        self.role.matches(&role) && self.purpose.matches(&purpose)
    }

    /// Whether the rule matches a series (or object) of `modality`; `None` (no modality
    /// known) is matched only by a rule without a modality list.
    #[must_use]
    pub fn matches_modality(&self, modality: Option<&Modality>) -> bool {
        modality_matches(self.modality.as_ref(), modality)
    }
}

/// Whether a rule's modality list (`None`: every modality) matches `modality` (`None`: not
/// known, matched only by a rule without a list).
pub(crate) fn modality_matches(list: Option<&BTreeSet<Modality>>, modality: Option<&Modality>) -> bool {
    match (list, modality) {
        (None, _) => true,
        (Some(set), Some(m)) => set.contains(m),
        (Some(_), None) => false,
    }
}

/// The TOML form of a [`RoleRule`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoleRule {
    #[serde(with = "or_any")]
    role: OrAny<Role>,
    #[serde(with = "or_any", default = "any")]
    purpose: OrAny<Purpose>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    modality: Option<BTreeSet<Modality>>,
    effect: RawEffect,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    min_level: Option<DeidLevel>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    approval: bool,
}

fn any<T>() -> OrAny<T> {
    OrAny::Any
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum RawEffect {
    Allow,
    Deny,
}

impl TryFrom<RawRoleRule> for RoleRule {
    type Error = PolicyError;
    fn try_from(raw: RawRoleRule) -> Result<Self, PolicyError> {
        let effect = match raw.effect {
            RawEffect::Allow => RuleEffect::Allow {
                min_level: raw.min_level,
                approval: raw.approval,
            },
            RawEffect::Deny if raw.min_level.is_some() || raw.approval => {
                return Err(PolicyError::RoleRule {
                    cause: RoleRuleCause::DenyWithAllowFields,
                });
            }
            RawEffect::Deny => RuleEffect::Deny,
        };
        RoleRule::new(raw.role, raw.purpose, raw.modality, effect)
    }
}

impl From<RoleRule> for RawRoleRule {
    fn from(r: RoleRule) -> Self {
        let (effect, min_level, approval) = match r.effect {
            RuleEffect::Allow { min_level, approval } => (RawEffect::Allow, min_level, approval),
            RuleEffect::Deny => (RawEffect::Deny, None, false),
        };
        Self {
            role: r.role,
            purpose: r.purpose,
            modality: r.modality,
            effect,
            min_level,
            approval,
        }
    }
}

/// `OrAny<T>` as text: `"*"` or `T`'s own spelling.
mod or_any {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    use super::OrAny;

    pub(super) fn serialize<T: Display, S: Serializer>(v: &OrAny<T>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub(super) fn deserialize<'de, T, D>(d: D) -> Result<OrAny<T>, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn default_cross_border_level() -> DeidLevel {
    DeidLevel::Anonymised
}
fn default_min_level() -> BTreeMap<Purpose, DeidLevel> {
    [
        (Purpose::Research, DeidLevel::Pseudonymised),
        (Purpose::Teaching, DeidLevel::Anonymised),
    ]
    .into()
}
fn default_waiver_purposes() -> BTreeSet<Purpose> {
    [Purpose::Research].into()
}
fn default_waiver_level() -> DeidLevel {
    DeidLevel::Anonymised
}
fn default_approval_required() -> BTreeSet<Purpose> {
    [Purpose::Research, Purpose::Teaching].into()
}

impl SitePolicy {
    /// The default policy for a site in `home_jurisdiction` (the defaults of the module docs).
    #[must_use]
    pub fn new(home_jurisdiction: Jurisdiction) -> Self {
        Self {
            home_jurisdiction,
            cross_border_level: default_cross_border_level(),
            min_level: default_min_level(),
            waiver_purposes: default_waiver_purposes(),
            waiver_level: default_waiver_level(),
            approval_required: default_approval_required(),
            max_grant_days: GrantDays::default(),
            role_rules: Vec::new(),
        }
    }
}

/// Why a policy value is impossible.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// `max_grant_days` out of range.
    #[error("policy.max_grant_days: {found} is not between 1 and {}", GrantDays::MAX)]
    GrantDays {
        /// The rejected value.
        found: u64,
    },
    /// A `[[policy.role_rule]]` that cannot be applied as written.
    #[error("policy.role_rule: {cause}")]
    RoleRule {
        /// What is wrong with it.
        cause: RoleRuleCause,
    },
}

/// What is wrong with a role rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RoleRuleCause {
    /// `modality = []`: an empty list never means "any" (leave `modality` out for that).
    #[error("modality is an empty list; leave it out to match every modality")]
    EmptyModality,
    /// A modality that is not a defined term of Modality (0008,0060).
    #[error("{modality} is not a defined term of Modality (0008,0060); a misspelt modality would match nothing")]
    UndefinedModality {
        /// The modality given.
        modality: Modality,
    },
    /// `effect = "deny"` with `min_level` or `approval`, which only an allow can carry.
    #[error("a deny rule takes neither min_level nor approval (they apply to what an allow rule lets through)")]
    DenyWithAllowFields,
}

/// The longest a grant may last, in whole days: 1 to 3650 (ten years).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct GrantDays(u16);

impl GrantDays {
    /// The largest value, ten years.
    pub const MAX: u16 = 3650;

    /// Checks a number of days.
    ///
    /// # Errors
    ///
    /// [`PolicyError::GrantDays`] outside 1 to [`GrantDays::MAX`].
    pub fn new(days: u64) -> Result<Self, PolicyError> {
        match u16::try_from(days) {
            Ok(d) if (1..=Self::MAX).contains(&d) => Ok(Self(d)),
            _ => Err(PolicyError::GrantDays { found: days }),
        }
    }

    /// The number of days.
    #[must_use]
    pub fn days(self) -> u16 {
        self.0
    }

    /// The duration.
    #[must_use]
    pub fn duration(self) -> TimeDelta {
        TimeDelta::days(i64::from(self.0))
    }
}

impl Default for GrantDays {
    fn default() -> Self {
        Self(30)
    }
}

impl TryFrom<u64> for GrantDays {
    type Error = PolicyError;
    fn try_from(days: u64) -> Result<Self, PolicyError> {
        Self::new(days)
    }
}

impl From<GrantDays> for u64 {
    fn from(d: GrantDays) -> u64 {
        u64::from(d.0)
    }
}

impl fmt::Display for GrantDays {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} days", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Config {
        policy: SitePolicy,
    }

    fn parse(toml_text: &str) -> Result<SitePolicy, toml::de::Error> {
        toml::from_str::<Config>(toml_text).map(|c| c.policy)
    }

    #[test]
    fn minimal_toml_gets_the_documented_defaults() {
        let p = parse("[policy]\nhome_jurisdiction = \"DE\"\n").unwrap();
        assert_eq!(p, SitePolicy::new("DE".parse().unwrap()));
        assert_eq!(p.cross_border_level, DeidLevel::Anonymised);
        assert_eq!(p.min_level[&Purpose::Research], DeidLevel::Pseudonymised);
        assert_eq!(p.max_grant_days.days(), 30);
    }

    #[test]
    fn module_doc_example_parses() {
        let text = "[policy]
home_jurisdiction = \"DE\"
cross_border_level = \"anonymised\"
waiver_purposes = [\"research\"]
waiver_level = \"anonymised\"
approval_required = [\"research\", \"teaching\"]
max_grant_days = 30

[policy.min_level]
research = \"pseudonymised\"
teaching = \"anonymised\"
";
        assert_eq!(parse(text).unwrap(), SitePolicy::new("DE".parse().unwrap()));
    }

    #[test]
    fn role_rules_parse_in_order_with_their_defaults() {
        let text = "[policy]
home_jurisdiction = \"DE\"

[[policy.role_rule]]
role = \"researcher\"
purpose = \"research\"
modality = [\"MG\", \"CT\"]
effect = \"deny\"

[[policy.role_rule]]
role = \"*\"
effect = \"allow\"
min_level = \"pseudonymised\"
approval = true
";
        let p = parse(text).unwrap();
        let m = |s: &str| s.parse::<Modality>().unwrap();
        assert_eq!(
            p.role_rules,
            vec![
                RoleRule::new(
                    OrAny::Only(Role::Researcher),
                    OrAny::Only(Purpose::Research),
                    Some([m("CT"), m("MG")].into()),
                    RuleEffect::Deny
                )
                .unwrap(),
                RoleRule::new(
                    OrAny::Any,
                    OrAny::Any,
                    None,
                    RuleEffect::Allow {
                        min_level: Some(DeidLevel::Pseudonymised),
                        approval: true
                    }
                )
                .unwrap(),
            ]
        );
        // Without rules the policy is as before, and serialises as before (no `role_rule` key).
        let plain = SitePolicy::new("DE".parse().unwrap());
        assert!(!serde_json::to_string(&plain).unwrap().contains("role_rule"));
        // The TOML form round-trips.
        #[derive(Serialize)]
        struct Out<'a> {
            policy: &'a SitePolicy,
        }
        let again = toml::to_string(&Out { policy: &p }).unwrap();
        assert_eq!(parse(&again).unwrap(), p, "{again}");
    }

    #[test]
    fn bad_role_rules_are_refused() {
        for (rule, needle) in [
            ("role = \"doctor\"\neffect = \"deny\"", "doctor"),
            ("role = \"*\"\npurpose = \"marketing\"\neffect = \"deny\"", "marketing"),
            ("role = \"*\"\neffect = \"maybe\"", "maybe"),
            ("role = \"*\"", "effect"),
            ("effect = \"deny\"", "role"),
            ("role = \"*\"\neffect = \"deny\"\nmodality = []", "empty list"),
            ("role = \"*\"\neffect = \"deny\"\nmodality = [\"MAMMO\"]", "MAMMO"),
            ("role = \"*\"\neffect = \"deny\"\nmodality = [\"ct\"]", "ct"),
            (
                "role = \"*\"\neffect = \"deny\"\nmin_level = \"anonymised\"",
                "deny rule",
            ),
            ("role = \"*\"\neffect = \"deny\"\napproval = true", "deny rule"),
            ("role = \"*\"\neffect = \"allow\"\nroles = [\"x\"]", "roles"),
            ("role = \"*\"\neffect = \"allow\"\nmin_level = \"secret\"", "secret"),
        ] {
            let text = format!("[policy]\nhome_jurisdiction = \"DE\"\n\n[[policy.role_rule]]\n{rule}\n");
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(needle), "{rule}: {err}");
        }
    }

    #[test]
    fn bad_policies_are_refused() {
        for (text, needle) in [
            ("[policy]\n", "home_jurisdiction"),
            ("[policy]\nhome_jurisdiction = \"UK\"\n", "GB"),
            (
                "[policy]\nhome_jurisdiction = \"DE\"\nmax_grant_days = 0\n",
                "max_grant_days",
            ),
            (
                "[policy]\nhome_jurisdiction = \"DE\"\nmax_grant_days = 4000\n",
                "max_grant_days",
            ),
            (
                "[policy]\nhome_jurisdiction = \"DE\"\ncross_border = \"anonymised\"\n",
                "cross_border",
            ),
            (
                "[policy]\nhome_jurisdiction = \"DE\"\napproval_required = [\"marketing\"]\n",
                "marketing",
            ),
            (
                "[policy]\nhome_jurisdiction = \"DE\"\ncross_border_level = \"secret\"\n",
                "secret",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}
