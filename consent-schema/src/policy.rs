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
//! ```
//!
//! Unknown fields are an error (a misspelt rule must not be silently ignored). Giving
//! `[policy.min_level]` replaces the whole default table, so a site that lists only `quality`
//! drops the research and teaching minimums: write every purpose you want bounded.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use chrono::TimeDelta;
use serde::{Deserialize, Serialize};

use crate::ids::Jurisdiction;
use crate::purpose::Purpose;
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
