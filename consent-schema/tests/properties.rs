//! Property tests of `evaluate` and of the record encodings.
//!
//! Consents, requests and policies are drawn from small domains (two patients, two peers,
//! two institutions, DE and US, three modalities, times within a few months of `now`) so that
//! random consents often cover random requests and every rule is exercised.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

use std::collections::BTreeSet;

use chrono::{DateTime, TimeDelta, Utc};
use consent_schema::*;
use proptest::collection::{btree_set, vec};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

/// Failing cases are kept here (relative to the package root, where `cargo test` runs) and
/// replayed first on every run; commit the file when a run adds to it.
const REGRESSIONS: &str = "proptest-regressions/properties.txt";

fn base() -> DateTime<Utc> {
    "2026-01-01T00:00:00Z".parse().expect("valid timestamp")
}

fn now() -> DateTime<Utc> {
    base() + TimeDelta::days(30)
}

fn day(offset: i64) -> DateTime<Utc> {
    base() + TimeDelta::days(offset)
}

fn modality() -> impl Strategy<Value = Modality> {
    prop::sample::select(vec!["CT", "MR", "US"]).prop_map(|m| m.parse().expect("modality"))
}

fn purpose() -> impl Strategy<Value = Purpose> {
    prop::sample::select(Purpose::ALL.to_vec())
}

fn level() -> impl Strategy<Value = DeidLevel> {
    prop::sample::select(vec![
        DeidLevel::Identifiable,
        DeidLevel::Pseudonymised,
        DeidLevel::Anonymised,
    ])
}

fn recipient() -> impl Strategy<Value = Recipient> {
    prop_oneof![
        prop::sample::select(vec!["peer-a", "peer-b"]).prop_map(|p| Recipient::Peer(p.parse().expect("peer"))),
        prop::sample::select(vec!["Charité", "Vivantes"])
            .prop_map(|i| Recipient::Institution(i.parse().expect("institution"))),
        prop::sample::select(vec!["DE", "US"]).prop_map(|j| Recipient::Jurisdiction(j.parse().expect("jurisdiction"))),
        Just(Recipient::Consortium("euro-imaging".parse().expect("consortium"))),
    ]
}

fn scope() -> impl Strategy<Value = Scope> {
    (
        btree_set(purpose(), 1..=5),
        prop_oneof![2 => Just(ModalityScope::All), 1 => btree_set(modality(), 1..=2).prop_map(ModalityScope::Only)],
        prop_oneof![2 => Just(RecipientScope::Any), 1 => btree_set(recipient(), 1..=4).prop_map(RecipientScope::Only)],
        prop_oneof![
            3 => Just(Coverage::WholeRecord),
            1 => btree_set(prop::sample::select(vec!["s-1", "s-2"]), 1..=2)
                .prop_map(|s| Coverage::Studies(s.into_iter().map(|s| s.parse().expect("study")).collect())),
            1 => prop::sample::select(vec!["e-1", "e-2"]).prop_map(|e| Coverage::Episode(e.parse().expect("episode"))),
        ],
        prop_oneof![
            5 => Just(None),
            1 => (-400i64..0, prop::option::of(1i64..400)).prop_map(|(from, len)| Some(DataPeriod {
                from: Some(day(from)),
                until: len.map(|l| day(from + l)),
            })),
        ],
    )
        .prop_map(|(purposes, modalities, recipients, coverage, data_period)| Scope {
            purposes,
            modalities,
            recipients,
            coverage,
            data_period,
        })
}

prop_compose! {
    fn record()(
        id in 0u8..6,
        patient in prop::sample::select(vec![1u8, 1, 1, 2]),
        by in prop::sample::select(vec![ConsentedBy::Patient, ConsentedBy::LegalGuardian, ConsentedBy::EthicsBoardWaiver]),
        deny in prop::bool::weighted(0.2),
        level in level(),
        scope in scope(),
        from in -60i64..40,
        until in prop::option::weighted(0.5, 1i64..120),
        withdrawn in prop::option::weighted(0.15, -60i64..120),
        seconds in 0i64..86_400,
    ) -> ConsentRecord {
        let deny = deny && by != ConsentedBy::EthicsBoardWaiver;
        let valid_from = day(from) + TimeDelta::seconds(seconds);
        ConsentRecord::new(ConsentDraft {
            id: format!("c-{id}").parse().expect("id"),
            patient: PatientRef::from_bytes([patient; 32]),
            consented_by: by,
            provision: if deny { Provision::Deny } else { Provision::Permit { level } },
            scope,
            valid_from,
            valid_until: until.map(|u| valid_from + TimeDelta::days(u)),
            withdrawn_at: withdrawn.map(day),
            legal_basis: LegalBasis::new("GDPR-9.2.j", "consent form\nversion 2").expect("legal basis"),
        })
        .expect("the strategy only builds possible records")
    }
}

prop_compose! {
    fn request()(
        peer in prop::sample::select(vec!["peer-a", "peer-b"]),
        institution in prop::sample::select(vec!["Charité", "Vivantes"]),
        jurisdiction in prop::sample::select(vec!["DE", "DE", "US"]),
        in_consortium in any::<bool>(),
        purpose in purpose(),
        requested_level in prop::option::of(level()),
        study in prop::sample::select(vec!["s-1", "s-2"]),
        patient in prop::sample::select(vec![1u8, 1, 1, 1, 2]),
        episode in prop::option::of(prop::sample::select(vec!["e-1", "e-2"])),
        acquired in prop::option::of(-500i64..0),
        modalities in prop_oneof![1 => Just(Vec::new()), 9 => vec(modality(), 1..4)],
    ) -> TransferRequest {
        TransferRequest {
            peer: peer.parse().expect("peer"),
            institution: institution.parse().expect("institution"),
            jurisdiction: jurisdiction.parse().expect("jurisdiction"),
            consortia: if in_consortium { ["euro-imaging".parse().expect("consortium")].into() } else { BTreeSet::new() },
            purpose,
            role: Role::Clinician,
            requested_level,
            study: StudyFacts {
                study: study.parse().expect("study"),
                patient: PatientRef::from_bytes([patient; 32]),
                episode: episode.map(|e| e.parse().expect("episode")),
                acquired_at: acquired.map(day),
                series: modalities
                    .into_iter()
                    .enumerate()
                    .map(|(i, modality)| SeriesFacts { series: format!("se-{i}").parse().expect("series"), modality })
                    .collect(),
            },
        }
    }
}

prop_compose! {
    fn policy()(
        approval in btree_set(purpose(), 0..3),
        days in 1u64..60,
        cross_border_level in level(),
        waiver_purposes in btree_set(purpose(), 0..3),
    ) -> SitePolicy {
        let mut p = SitePolicy::new("DE".parse().expect("jurisdiction"));
        p.approval_required = approval;
        p.max_grant_days = GrantDays::new(days).expect("days in range");
        p.cross_border_level = cross_border_level;
        p.waiver_purposes = waiver_purposes;
        p
    }
}

fn role_rule() -> impl Strategy<Value = RoleRule> {
    (
        prop_oneof![1 => Just(OrAny::Any), 3 => prop::sample::select(Role::ALL.to_vec()).prop_map(OrAny::Only)],
        prop_oneof![1 => Just(OrAny::Any), 2 => purpose().prop_map(OrAny::Only)],
        prop::option::of(btree_set(modality(), 1..=2)),
        prop_oneof![
            1 => Just(RuleEffect::Deny),
            3 => (prop::option::of(level()), any::<bool>())
                .prop_map(|(min_level, approval)| RuleEffect::Allow { min_level, approval }),
        ],
    )
        .prop_map(|(role, purpose, modality, effect)| {
            RoleRule::new(role, purpose, modality, effect).expect("defined modalities, never empty")
        })
}

/// An object of a granted series, as preparation sees it.
fn object() -> impl Strategy<Value = ObjectFacts> {
    (
        prop::option::of(prop::sample::select(vec!["CT", "MR", "US", "SR", "OT"])),
        prop::sample::select(vec![
            "1.2.840.10008.5.1.4.1.1.2",
            "1.2.840.10008.5.1.4.1.1.4",
            "1.2.840.10008.5.1.4.1.1.7",
            "1.2.840.10008.5.1.4.1.1.88.22",
        ]),
    )
        .prop_map(|(m, class)| ObjectFacts {
            modality: m.map(|m| m.parse().expect("modality")),
            sop_class: class.into(),
        })
}

/// Random consents with unique ids (ids are unique per node; the ledger names consents by id).
fn consents(max: usize) -> impl Strategy<Value = Vec<ConsentRecord>> {
    vec(record(), 0..max).prop_map(|records| {
        records
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let draft = ConsentDraft {
                    id: format!("c-{i}").parse().expect("id"),
                    ..r.into_draft()
                };
                ConsentRecord::new(draft).expect("only the id changed")
            })
            .collect()
    })
}

fn grant_of(d: &Decision) -> Option<&Grant> {
    match d {
        Decision::Allow(g) | Decision::NeedsApproval { grant: g, .. } => Some(g),
        _ => None,
    }
}

/// `narrow` allows no more than `wide`: same kind (or a deny), fewer series, a level at least as
/// strong, an expiry no later.
fn no_more_permissive(narrow: &Decision, wide: &Decision) -> Result<(), TestCaseError> {
    match (narrow, wide) {
        (Decision::Deny { .. }, _) => Ok(()),
        (Decision::Allow(n), Decision::Allow(w))
        | (Decision::NeedsApproval { grant: n, .. }, Decision::NeedsApproval { grant: w, .. }) => {
            let ws: BTreeSet<_> = w.series().iter().collect();
            prop_assert!(n.series().iter().all(|s| ws.contains(s)), "more series: {n:?} vs {w:?}");
            prop_assert!(n.level() >= w.level(), "weaker level: {n:?} vs {w:?}");
            prop_assert!(n.expires_at() <= w.expires_at(), "later expiry: {n:?} vs {w:?}");
            Ok(())
        }
        _ => Err(TestCaseError::fail(format!(
            "{narrow:?} is more permissive than {wide:?}"
        ))),
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2048,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(REGRESSIONS))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn withdrawn_consents_never_allow(
        consents in consents(6),
        request in request(),
        policy in policy(),
        ago in 0i64..10_000,
    ) {
        let withdrawn: Vec<ConsentRecord> = consents
            .into_iter()
            .map(|mut c| {
                c.withdraw(now() - TimeDelta::minutes(ago));
                c
            })
            .collect();
        let d = evaluate(&request, &withdrawn, &policy, now());
        prop_assert!(matches!(d, Decision::Deny { .. }), "{d:?}");
    }

    #[test]
    fn grants_rely_only_on_consents_in_force(
        consents in consents(8),
        request in request(),
        policy in policy(),
    ) {
        let d = evaluate(&request, &consents, &policy, now());
        if let Some(g) = grant_of(&d) {
            prop_assert!(!g.series().is_empty());
            prop_assert!(g.expires_at() > now());
            for id in g.consents() {
                let c = consents.iter().find(|c| c.id() == id && c.status_at(now()) == TimeStatus::InForce
                    && c.patient() == &request.study.patient && c.required_level().is_some());
                prop_assert!(c.is_some(), "{id} is not an in-force permit of the patient");
            }
        }
    }

    #[test]
    fn adding_a_deny_never_widens(
        consents in consents(6),
        extra in record(),
        request in request(),
        policy in policy(),
    ) {
        let extra = ConsentRecord::new(ConsentDraft {
            id: "c-extra".parse().expect("id"),
            provision: Provision::Deny,
            consented_by: ConsentedBy::Patient,
            ..extra.into_draft()
        }).expect("a deny by the patient is possible");
        let before = evaluate(&request, &consents, &policy, now());
        let mut more = consents.clone();
        more.push(extra);
        let after = evaluate(&request, &more, &policy, now());
        no_more_permissive(&after, &before)?;
    }

    /// The role rules' invariant: adding any rules never turns a deny into an allow or a
    /// needs-approval, never removes a need for approval, never adds a series, never lowers the
    /// level, never lengthens the grant, and never admits an object the decision without rules
    /// would leave out.
    #[test]
    fn role_rules_only_make_decisions_stricter(
        consents in consents(6),
        request in request(),
        role in prop::sample::select(Role::ALL.to_vec()),
        policy in policy(),
        rules in vec(role_rule(), 1..5),
        objects in vec(object(), 0..6),
    ) {
        let request = TransferRequest { role, ..request };
        let before = evaluate(&request, &consents, &policy, now());
        let strict = SitePolicy { role_rules: rules, ..policy.clone() };
        let after = evaluate(&request, &consents, &strict, now());
        let rank = |d: &Decision| match d {
            Decision::Deny { .. } => 0,
            Decision::NeedsApproval { .. } => 1,
            _ => 2,
        };
        prop_assert!(rank(&after) <= rank(&before), "{after:?} is looser than {before:?}");
        if let (Some(a), Some(b)) = (grant_of(&after), grant_of(&before)) {
            let bs: BTreeSet<_> = b.series().iter().collect();
            prop_assert!(a.series().iter().all(|s| bs.contains(s)), "more series: {a:?} vs {b:?}");
            prop_assert!(a.level() >= b.level(), "weaker level: {a:?} vs {b:?}");
            prop_assert!(a.expires_at() <= b.expires_at());
            for o in &objects {
                if a.objects().admit(o).is_ok() {
                    prop_assert!(b.objects().admit(o).is_ok(), "{o:?} admitted only with rules");
                }
            }
        }
        if let (Decision::NeedsApproval { why, .. }, Decision::NeedsApproval { why: after_why, .. }) = (&before, &after) {
            prop_assert!(why.iter().all(|w| after_why.contains(w)), "an approval reason was removed");
        }
        // Rules that match nothing leave the decision as it was.
        let other: Vec<RoleRule> = strict
            .role_rules
            .iter()
            .filter(|r| !r.matches_request(request.role, request.purpose))
            .cloned()
            .collect();
        let unmatched = SitePolicy { role_rules: other, ..policy };
        prop_assert_eq!(evaluate(&request, &consents, &unmatched, now()), before);
    }

    #[test]
    fn level_is_never_weaker_than_a_rule(
        consents in consents(8),
        request in request(),
        policy in policy(),
    ) {
        let d = evaluate(&request, &consents, &policy, now());
        let Some(g) = grant_of(&d) else { return Ok(()) };
        if let Some(requested) = request.requested_level {
            prop_assert!(g.level() >= requested);
        }
        if let Some(min) = policy.min_level.get(&request.purpose) {
            prop_assert!(g.level() >= *min);
        }
        let relied: Vec<&ConsentRecord> = consents.iter().filter(|c| g.consents().contains(c.id())).collect();
        let mut names_recipient = false;
        for c in &relied {
            if let Some(level) = c.required_level() {
                prop_assert!(g.level() >= level, "consent {} requires {level}", c.id());
            }
            if c.consented_by() == ConsentedBy::EthicsBoardWaiver {
                prop_assert!(g.level() >= policy.waiver_level);
            }
            if let RecipientScope::Only(set) = &c.scope().recipients {
                names_recipient |= set.contains(&Recipient::Peer(request.peer.clone()))
                    || set.contains(&Recipient::Institution(request.institution.clone()))
                    || set.contains(&Recipient::Jurisdiction(request.jurisdiction));
            }
        }
        if request.jurisdiction != policy.home_jurisdiction && !names_recipient {
            prop_assert!(g.level() >= policy.cross_border_level);
        }
    }

    #[test]
    fn decisions_are_deterministic_and_order_independent(
        (consents, shuffled) in consents(8).prop_flat_map(|c| (Just(c.clone()), Just(c).prop_shuffle())),
        request in request(),
        policy in policy(),
    ) {
        let d = evaluate(&request, &consents, &policy, now());
        prop_assert_eq!(&d, &evaluate(&request, &consents, &policy, now()));
        prop_assert_eq!(&d, &evaluate(&request, &shuffled, &policy, now()));
        if let Decision::Deny { reasons } = &d {
            prop_assert!(!reasons.is_empty());
            prop_assert!(reasons.windows(2).all(|w| w[0] < w[1]), "reasons not sorted and unique: {reasons:?}");
        }
    }

    #[test]
    fn records_round_trip_json_and_cbor(r in record()) {
        let json = r.to_json();
        prop_assert_eq!(&ConsentRecord::from_json(&json).expect("JSON decodes"), &r);
        prop_assert_eq!(&ConsentRecord::from_json(&r.to_json_pretty()).expect("pretty JSON decodes"), &r);
        let cbor = r.to_cbor();
        prop_assert!(cbor.len() <= MAX_RECORD_SIZE);
        prop_assert_eq!(&ConsentRecord::from_cbor(&cbor).expect("CBOR decodes"), &r);
        // Any truncation of a valid encoding is an error, never a panic or a different record.
        for cut in [1, cbor.len() / 2, cbor.len() - 1] {
            prop_assert!(ConsentRecord::from_cbor(&cbor[..cut]).is_err());
        }
    }

    #[test]
    fn decoders_never_panic(bytes in vec(any::<u8>(), 0..512)) {
        consent_schema::fuzzing::cbor_record(&bytes);
        consent_schema::fuzzing::json_record(&bytes);
        consent_schema::fuzzing::fhir_consent(&bytes);
    }
}
