//! The decision: consent and site policy applied to one transfer request.
//!
//! [`evaluate`] is pure and deterministic: the same request, the same consents (in any order),
//! the same policy and the same `now` give the same decision, reasons sorted.
//!
//! # Rules
//!
//! 1. A study without series is denied (`no-series`).
//! 2. Only consents of the study's patient count; others are ignored.
//! 3. A consent *covers* the request when its purposes contain the purpose, its recipients match
//!    the peer, its institution, its jurisdiction or one of its consortia (or are `any`), its
//!    coverage contains the study (whole record, listed study, or the study's episode of care),
//!    its data period contains the acquisition time, and its modalities cover at least one
//!    series. A data period with an unknown acquisition time covers nothing for a permit and
//!    everything for a deny (the cautious reading both ways).
//! 4. A consent *applies* when it covers the request and is in force at `now`: not withdrawn
//!    (at or before `now`), not before `valid_from`, not at or after `valid_until`. Withdrawn,
//!    expired and not-yet-valid consents never allow.
//! 5. An ethics-board waiver applies only for purposes in `policy.waiver_purposes`.
//! 6. Deny beats permit: every series covered by an applying deny consent is withheld, whatever
//!    permits it. The series sent are those covered by an applying permit and by no applying deny.
//!    If none remain, the request is denied. Within the series sent, each object is decided
//!    again on its own Modality and SOP Class ([`crate::ObjectScope::admit`], from
//!    [`crate::Grant::objects`]).
//! 7. The permits *relied on* are all applying permits (also one whose series a deny withheld).
//!    Level: the strongest of the requested level, the level of each permit relied on, the
//!    policy minimum for the purpose, the cross-border level when the peer is in another
//!    jurisdiction and no permit relied on names that jurisdiction, peer or institution, and the
//!    waiver level when a waiver is relied on. A requested level weaker than any of these is
//!    denied, naming each rule it falls short of (`level-below-required`): the requester asked
//!    for identifiable data and must not silently receive something else. Without a requested
//!    level, the strongest requirement is used.
//! 8. Expiry: the earliest of `now + policy.max_grant_days`, the end and the (future)
//!    withdrawal of each permit relied on, and the start of each deny consent that will cover the
//!    series granted.
//! 9. Purposes in `policy.approval_required` turn an allow into [`Decision::NeedsApproval`]
//!    carrying the grant; a deny stays a deny.
//! 10. Role rules (`[[policy.role_rule]]`, see [`crate::RoleRule`] and the `policy` module
//!     docs), applied after rules 1 to 6 on the series consent would send: each series is decided
//!     by the first rule matching the request's role, purpose and the series' modality. A `deny`
//!     withholds the series; when none remains the request is denied (`denied-by-role-rule`). An
//!     `allow` adds its `min_level` to the requirements of rule 7 (`LevelRule::RoleRule`) and,
//!     with `approval`, a reason to ask a human (`role-requires-approval`, alongside rule 9's).
//!     Each object of the grant is decided again by the same rules on its own modalities.
//!     Invariant (property-tested): adding role rules never turns a deny into an allow or a
//!     needs-approval, an approval into an allow, never adds a series or lowers the level.
//!
//! # Reasons
//!
//! A denial lists every cause. When no permit applies: `no-consent` if the patient has no permit
//! at all; otherwise one `…-not-covered` reason for each scope part that no permit of the
//! patient covers, one time reason (`consent-withdrawn`, `consent-expired`,
//! `consent-not-yet-valid`) or `waiver-purpose` for each permit that covers the request but does
//! not apply, and, only if none of those explain it, one `consent-scope` per permit naming what
//! it lacks. Applying deny consents add `denied-by-consent`. Role rules add `denied-by-role-rule`
//! (one per deny rule that decides a withheld series) when they withhold every series consent
//! would send, or every series of the study when consent sends none.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use crate::decision::{ApprovalReason, Decision, DenyReason, Grant, LevelRule, ScopePart};
use crate::ids::Modality;
use crate::object::{ObjectRoleRule, ObjectScope};
use crate::policy::{RoleRule, RuleEffect, SitePolicy};
use crate::record::{
    ConsentRecord, ConsentedBy, Coverage, DeidLevel, Provision, Recipient, RecipientScope, TimeStatus,
};
use crate::request::TransferRequest;

/// Decides on `request` given the consents on record, the site policy and the current time.
///
/// `consents` may hold consents of any patient, in any order; see the module docs for the rules.
#[must_use]
pub fn evaluate(
    request: &TransferRequest,
    consents: &[ConsentRecord],
    policy: &SitePolicy,
    now: DateTime<Utc>,
) -> Decision {
    if request.study.series.is_empty() {
        return Decision::Deny {
            reasons: vec![DenyReason::NoSeries],
        };
    }
    let assessed: Vec<Assessed<'_>> = consents
        .iter()
        .filter(|c| c.patient() == &request.study.patient)
        .map(|c| Assessed::new(c, request, policy, now))
        .collect();

    let mut reasons = BTreeSet::new();
    let denies: Vec<&Assessed<'_>> = assessed.iter().filter(|a| a.is_deny() && a.applies()).collect();
    let withheld: BTreeSet<usize> = denies.iter().flat_map(|a| a.series.iter().copied()).collect();
    let permits: Vec<&Assessed<'_>> = assessed.iter().filter(|a| !a.is_deny() && a.applies()).collect();
    let permitted: BTreeSet<usize> = permits.iter().flat_map(|a| a.series.iter().copied()).collect();
    let granted: BTreeSet<usize> = permitted.difference(&withheld).copied().collect();

    // Role rules (rule 10): the first rule matching each series.
    let rules = RoleRules::new(request, policy);
    let decided: Vec<Option<(u32, &RoleRule)>> = request
        .study
        .series
        .iter()
        .map(|s| rules.first(Some(&s.modality)))
        .collect();
    let role_denied = |series: &mut dyn Iterator<Item = usize>| -> BTreeSet<DenyReason> {
        series
            .filter_map(|i| match decided[i] {
                Some((rule, r)) if r.effect() == RuleEffect::Deny => Some(rules.denied(rule)),
                _ => None,
            })
            .collect()
    };

    if granted.is_empty() {
        for d in &denies {
            if permits.is_empty() || d.series.iter().any(|s| permitted.contains(s)) {
                reasons.insert(DenyReason::DeniedByConsent {
                    consent: d.record.id().clone(),
                });
            }
        }
        if permits.is_empty() {
            explain_no_permit(request, &assessed, &mut reasons);
        }
        let all = 0..request.study.series.len();
        let by_rules = role_denied(&mut all.clone());
        if all
            .clone()
            .all(|i| matches!(decided[i], Some((_, r)) if r.effect() == RuleEffect::Deny))
        {
            reasons.extend(by_rules);
        }
        return Decision::Deny {
            reasons: reasons.into_iter().collect(),
        };
    }
    let kept: BTreeSet<usize> = granted
        .iter()
        .copied()
        .filter(|&i| !matches!(decided[i], Some((_, r)) if r.effect() == RuleEffect::Deny))
        .collect();
    if kept.is_empty() {
        return Decision::Deny {
            reasons: role_denied(&mut granted.iter().copied()).into_iter().collect(),
        };
    }
    let granted = kept;

    // Every applying permit is relied on, also one whose series a deny withheld: its level and
    // end still bind, so that adding a deny never makes a decision more permissive.
    let relied = permits;

    // Level (rule 7).
    let mut requirements: Vec<(DeidLevel, LevelRule)> = Vec::new();
    for a in &relied {
        if let Some(level) = a.record.required_level() {
            requirements.push((level, LevelRule::Consent(a.record.id().clone())));
        }
        if a.record.consented_by() == ConsentedBy::EthicsBoardWaiver {
            requirements.push((policy.waiver_level, LevelRule::Waiver(a.record.id().clone())));
        }
    }
    if let Some(&level) = policy.min_level.get(&request.purpose) {
        requirements.push((level, LevelRule::PurposeMinimum(request.purpose)));
    }
    if request.jurisdiction != policy.home_jurisdiction && !relied.iter().any(|a| names_recipient(a.record, request)) {
        requirements.push((policy.cross_border_level, LevelRule::CrossBorder(request.jurisdiction)));
    }
    let mut why = BTreeSet::new();
    if policy.approval_required.contains(&request.purpose) {
        why.insert(ApprovalReason::PurposeRequiresApproval {
            purpose: request.purpose,
        });
    }
    for &i in &granted {
        if let Some((rule, r)) = decided[i]
            && let RuleEffect::Allow { min_level, approval } = r.effect()
        {
            if let Some(level) = min_level {
                requirements.push((level, rules.level_rule(rule)));
            }
            if approval {
                why.insert(rules.approval(rule));
            }
        }
    }
    if let Some(requested) = request.requested_level {
        for (required, rule) in &requirements {
            if *required > requested {
                reasons.insert(DenyReason::LevelBelowRequired {
                    requested,
                    required: *required,
                    rule: rule.clone(),
                });
            }
        }
    }
    if !reasons.is_empty() {
        // Only level shortfalls are in `reasons` here.
        return Decision::Deny {
            reasons: reasons.into_iter().collect(),
        };
    }
    let level = requirements
        .iter()
        .map(|(l, _)| *l)
        .chain(request.requested_level)
        .max()
        .unwrap_or(DeidLevel::Identifiable);

    // Expiry (rule 8).
    let mut expires_at = now
        .checked_add_signed(policy.max_grant_days.duration())
        .unwrap_or(DateTime::<Utc>::MAX_UTC);
    for a in &relied {
        for end in [a.record.valid_until(), a.record.withdrawn_at()].into_iter().flatten() {
            expires_at = expires_at.min(end);
        }
    }
    for a in &assessed {
        if a.is_deny()
            && a.misses.is_empty()
            && matches!(a.status, TimeStatus::NotYetValid { .. })
            && a.series.iter().any(|s| granted.contains(s))
        {
            expires_at = expires_at.min(a.record.valid_from());
        }
    }

    // Object-level scope (decided per object at preparation): the modality scopes of the
    // permits relied on, and of every deny in force that applies but for the modality (its
    // modalities may match an object in a series of another modality).
    // Sorted by consent id: the order of the consents never matters.
    let mut permits: Vec<_> = relied
        .iter()
        .map(|a| (a.record.id().clone(), a.record.scope().modalities.clone()))
        .collect();
    permits.sort_by(|a, b| a.0.cmp(&b.0));
    let mut object_denies: Vec<_> = assessed
        .iter()
        .filter(|a| {
            a.is_deny() && a.status == TimeStatus::InForce && a.misses.iter().all(|m| *m == ScopePart::Modality)
        })
        .map(|a| (a.record.id().clone(), a.record.scope().modalities.clone()))
        .collect();
    object_denies.sort_by(|a, b| a.0.cmp(&b.0));
    let objects = ObjectScope {
        permits,
        denies: object_denies,
        role_rules: rules.for_objects(level, !why.is_empty()),
    };
    let grant = Grant {
        objects,
        level,
        expires_at,
        series: granted
            .iter()
            .map(|&i| request.study.series[i].series.clone())
            .collect(),
        consents: relied
            .iter()
            .map(|a| a.record.id().clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
    };
    if why.is_empty() {
        Decision::Allow(grant)
    } else {
        Decision::NeedsApproval {
            why: why.into_iter().collect(),
            grant,
        }
    }
}

/// The role rules that match the request's role and purpose, with their positions (from 1) in
/// `policy.role_rule`, in order.
struct RoleRules<'a> {
    request: &'a TransferRequest,
    rules: Vec<(u32, &'a RoleRule)>,
}

impl<'a> RoleRules<'a> {
    fn new(request: &'a TransferRequest, policy: &'a SitePolicy) -> Self {
        let rules = policy
            .role_rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.matches_request(request.role, request.purpose))
            .map(|(i, r)| (u32::try_from(i).map_or(u32::MAX, |i| i.saturating_add(1)), r))
            .collect();
        Self { request, rules }
    }

    /// The first rule matching a series or object of `modality`.
    fn first(&self, modality: Option<&Modality>) -> Option<(u32, &'a RoleRule)> {
        self.rules.iter().find(|(_, r)| r.matches_modality(modality)).copied()
    }

    fn denied(&self, rule: u32) -> DenyReason {
        DenyReason::DeniedByRoleRule {
            rule,
            role: self.request.role,
            purpose: self.request.purpose,
        }
    }

    fn level_rule(&self, rule: u32) -> LevelRule {
        LevelRule::RoleRule {
            rule,
            role: self.request.role,
            purpose: self.request.purpose,
        }
    }

    fn approval(&self, rule: u32) -> ApprovalReason {
        ApprovalReason::RoleRequiresApproval {
            rule,
            role: self.request.role,
            purpose: self.request.purpose,
        }
    }

    /// The rules as they apply to each object of a grant at `level`, decided with or without a
    /// person's approval.
    fn for_objects(&self, level: DeidLevel, approved: bool) -> Vec<ObjectRoleRule> {
        self.rules
            .iter()
            .map(|&(rule, r)| ObjectRoleRule {
                rule,
                role: self.request.role,
                purpose: self.request.purpose,
                modality: r.modality().cloned(),
                refuses: match r.effect() {
                    RuleEffect::Deny => true,
                    RuleEffect::Allow { min_level, approval } => {
                        min_level.is_some_and(|l| l > level) || (approval && !approved)
                    }
                },
            })
            .collect()
    }
}

/// One consent of the patient, measured against the request.
struct Assessed<'a> {
    record: &'a ConsentRecord,
    status: TimeStatus,
    /// Scope parts the consent does not cover.
    misses: BTreeSet<ScopePart>,
    /// An ethics-board waiver for a purpose the policy does not accept waivers for.
    waiver_refused: bool,
    /// Indices of the request's series whose modality the consent covers.
    series: BTreeSet<usize>,
}

impl<'a> Assessed<'a> {
    fn new(record: &'a ConsentRecord, request: &TransferRequest, policy: &SitePolicy, now: DateTime<Utc>) -> Self {
        let scope = record.scope();
        let is_deny = record.provision() == Provision::Deny;
        let study = &request.study;
        let series: BTreeSet<usize> = study
            .series
            .iter()
            .enumerate()
            .filter(|(_, s)| scope.modalities.covers(&s.modality))
            .map(|(i, _)| i)
            .collect();
        let mut misses = BTreeSet::new();
        if !scope.purposes.contains(&request.purpose) {
            misses.insert(ScopePart::Purpose);
        }
        let recipient_ok = match &scope.recipients {
            RecipientScope::Any => true,
            RecipientScope::Only(set) => set.iter().any(|r| match r {
                Recipient::Peer(p) => *p == request.peer,
                Recipient::Institution(i) => *i == request.institution,
                Recipient::Jurisdiction(j) => *j == request.jurisdiction,
                Recipient::Consortium(c) => request.consortia.contains(c),
            }),
        };
        if !recipient_ok {
            misses.insert(ScopePart::Recipient);
        }
        let study_ok = match &scope.coverage {
            Coverage::WholeRecord => true,
            Coverage::Studies(set) => set.contains(&study.study),
            Coverage::Episode(e) => study.episode.as_ref() == Some(e),
        };
        if !study_ok {
            misses.insert(ScopePart::Study);
        }
        if let Some(period) = &scope.data_period {
            let ok = match study.acquired_at {
                Some(t) => period.contains(t),
                None => is_deny,
            };
            if !ok {
                misses.insert(ScopePart::DataPeriod);
            }
        }
        if series.is_empty() {
            misses.insert(ScopePart::Modality);
        }
        let waiver_refused = record.consented_by() == ConsentedBy::EthicsBoardWaiver
            && !policy.waiver_purposes.contains(&request.purpose);
        Self {
            record,
            status: record.status_at(now),
            misses,
            waiver_refused,
            series,
        }
    }

    fn is_deny(&self) -> bool {
        self.record.provision() == Provision::Deny
    }

    fn applies(&self) -> bool {
        self.misses.is_empty() && self.status == TimeStatus::InForce && !self.waiver_refused
    }
}

/// Whether a consent names the peer, its institution or its jurisdiction (not a consortium,
/// not `any`): the explicit agreement that lifts the cross-border level.
fn names_recipient(record: &ConsentRecord, request: &TransferRequest) -> bool {
    match &record.scope().recipients {
        RecipientScope::Any => false,
        RecipientScope::Only(set) => set.iter().any(|r| match r {
            Recipient::Peer(p) => *p == request.peer,
            Recipient::Institution(i) => *i == request.institution,
            Recipient::Jurisdiction(j) => *j == request.jurisdiction,
            Recipient::Consortium(_) => false,
        }),
    }
}

/// Reasons when no permit applies (see "Reasons" in the module docs).
fn explain_no_permit(request: &TransferRequest, assessed: &[Assessed<'_>], reasons: &mut BTreeSet<DenyReason>) {
    let permits: Vec<&Assessed<'_>> = assessed.iter().filter(|a| !a.is_deny()).collect();
    if permits.is_empty() {
        reasons.insert(DenyReason::NoConsent);
        return;
    }
    let before = reasons.len();
    for part in ScopePart::ALL {
        if permits.iter().all(|a| a.misses.contains(&part)) {
            reasons.insert(not_covered(part, request));
        }
    }
    for a in permits.iter().filter(|a| a.misses.is_empty()) {
        let consent = a.record.id().clone();
        match a.status {
            TimeStatus::Withdrawn { at } => {
                reasons.insert(DenyReason::ConsentWithdrawn {
                    consent: consent.clone(),
                    at,
                });
            }
            TimeStatus::Expired { at } => {
                reasons.insert(DenyReason::ConsentExpired {
                    consent: consent.clone(),
                    at,
                });
            }
            TimeStatus::NotYetValid { from } => {
                reasons.insert(DenyReason::ConsentNotYetValid {
                    consent: consent.clone(),
                    from,
                });
            }
            TimeStatus::InForce => {}
        }
        if a.waiver_refused {
            reasons.insert(DenyReason::WaiverPurpose {
                consent,
                purpose: request.purpose,
            });
        }
    }
    if reasons.len() == before {
        for a in &permits {
            reasons.insert(DenyReason::ConsentScope {
                consent: a.record.id().clone(),
                missing: a.misses.clone(),
            });
        }
    }
}

fn not_covered(part: ScopePart, request: &TransferRequest) -> DenyReason {
    let study = &request.study;
    match part {
        ScopePart::Purpose => DenyReason::PurposeNotCovered {
            purpose: request.purpose,
        },
        ScopePart::Recipient => DenyReason::RecipientNotCovered {
            peer: request.peer.clone(),
            institution: request.institution.clone(),
            jurisdiction: request.jurisdiction,
        },
        ScopePart::Study => DenyReason::StudyNotCovered {
            study: study.study.clone(),
        },
        ScopePart::DataPeriod => DenyReason::DataPeriodNotCovered {
            study: study.study.clone(),
        },
        ScopePart::Modality => DenyReason::ModalityNotCovered {
            modalities: study.series.iter().map(|s| s.modality.clone()).collect(),
        },
    }
}

#[cfg(test)]
mod tests;
