//! Table tests for `evaluate`: one row per rule, the empty case included.
//!
//! Every row starts from the same request (treatment, peer `peer-a` of `Charité` in DE, member
//! of `euro-imaging`, study `s-1` of episode `e-1` acquired 2025-06-01 with a CT and an MR
//! series), the default policy of a German site, and `now` = 2026-03-01, and changes what it
//! tests. Expected decisions are written out in full.

use std::collections::BTreeSet;

use chrono::{DateTime, TimeDelta, Utc};

use super::evaluate;
use crate::decision::{ApprovalReason, Decision, DenyReason, Grant, LevelRule, ScopePart};
use crate::ids::{Modality, SeriesRef};
use crate::object::{ObjectFacts, ObjectScope};
use crate::policy::{GrantDays, RoleRule, RuleEffect, SitePolicy};
use crate::purpose::{Purpose, Role};
use crate::record::{
    ConsentDraft, ConsentRecord, ConsentedBy, Coverage, DataPeriod, DeidLevel, LegalBasis, ModalityScope, Provision,
    Recipient, RecipientScope, Scope,
};
use crate::request::{SeriesFacts, StudyFacts, TransferRequest};
use crate::testutil::{patient, t};

use DeidLevel::{Anonymised, Identifiable, Pseudonymised};

const NOW: &str = "2026-03-01T00:00:00Z";

fn now() -> DateTime<Utc> {
    t(NOW)
}

fn request() -> TransferRequest {
    TransferRequest {
        peer: "peer-a".parse().unwrap(),
        institution: "Charité".parse().unwrap(),
        jurisdiction: "DE".parse().unwrap(),
        consortia: ["euro-imaging".parse().unwrap()].into(),
        purpose: Purpose::Treatment,
        role: Role::Clinician,
        requested_level: None,
        study: StudyFacts {
            study: "s-1".parse().unwrap(),
            patient: patient(1),
            episode: Some("e-1".parse().unwrap()),
            acquired_at: Some(t("2025-06-01T10:00:00Z")),
            series: vec![
                SeriesFacts {
                    series: "se-ct".parse().unwrap(),
                    modality: m("CT"),
                },
                SeriesFacts {
                    series: "se-mr".parse().unwrap(),
                    modality: m("MR"),
                },
            ],
        },
    }
}

fn m(s: &str) -> Modality {
    s.parse().unwrap()
}

fn policy() -> SitePolicy {
    SitePolicy::new("DE".parse().unwrap())
}

/// A treatment permit of patient 1 for anyone, every modality, the whole record, from
/// 2026-01-01, identifiable.
fn permit(id: &str) -> ConsentDraft {
    ConsentDraft {
        id: id.parse().unwrap(),
        patient: patient(1),
        consented_by: ConsentedBy::Patient,
        provision: Provision::Permit { level: Identifiable },
        scope: Scope {
            purposes: [Purpose::Treatment].into(),
            modalities: ModalityScope::All,
            recipients: RecipientScope::Any,
            coverage: Coverage::WholeRecord,
            data_period: None,
        },
        valid_from: t("2026-01-01T00:00:00Z"),
        valid_until: None,
        withdrawn_at: None,
        legal_basis: LegalBasis::new("GDPR-9.2.h", "").unwrap(),
    }
}

/// As [`permit`], but a deny.
fn deny(id: &str) -> ConsentDraft {
    ConsentDraft {
        provision: Provision::Deny,
        ..permit(id)
    }
}

fn rec(d: ConsentDraft) -> ConsentRecord {
    ConsentRecord::new(d).unwrap()
}

fn with(d: ConsentDraft, f: impl FnOnce(&mut ConsentDraft)) -> ConsentRecord {
    let mut d = d;
    f(&mut d);
    rec(d)
}

fn only(recipients: impl IntoIterator<Item = Recipient>) -> RecipientScope {
    RecipientScope::Only(recipients.into_iter().collect())
}

fn grant(level: DeidLevel, expires_at: &str, series: &[&str], consents: &[&str]) -> Grant {
    Grant {
        level,
        expires_at: t(expires_at),
        series: series.iter().map(|s| s.parse::<SeriesRef>().unwrap()).collect(),
        consents: consents.iter().map(|c| c.parse().unwrap()).collect(),
        objects: ObjectScope::default(),
    }
}

/// The decision without its object-level scope (decided per object in `object.rs`; see
/// [`objects_of_the_grant_are_decided_on_their_own_modality`]).
fn plain(d: Decision) -> Decision {
    match d {
        Decision::Allow(mut g) => {
            g.objects = ObjectScope::default();
            Decision::Allow(g)
        }
        Decision::NeedsApproval { why, mut grant } => {
            grant.objects = ObjectScope::default();
            Decision::NeedsApproval { why, grant }
        }
        other => other,
    }
}

const IN_30_DAYS: &str = "2026-03-31T00:00:00Z";

fn allow_all(consents: &[&str]) -> Decision {
    Decision::Allow(grant(Identifiable, IN_30_DAYS, &["se-ct", "se-mr"], consents))
}

fn denied(reasons: Vec<DenyReason>) -> Decision {
    Decision::Deny { reasons }
}

fn approval(purpose: Purpose, grant: Grant) -> Decision {
    Decision::NeedsApproval {
        why: vec![ApprovalReason::PurposeRequiresApproval { purpose }],
        grant,
    }
}

struct Case {
    name: &'static str,
    consents: Vec<ConsentRecord>,
    request: TransferRequest,
    policy: SitePolicy,
    expect: Decision,
}

fn case(name: &'static str, consents: Vec<ConsentRecord>, expect: Decision) -> Case {
    Case {
        name,
        consents,
        request: request(),
        policy: policy(),
        expect,
    }
}

impl Case {
    fn request(mut self, f: impl FnOnce(&mut TransferRequest)) -> Self {
        f(&mut self.request);
        self
    }
    fn policy(mut self, f: impl FnOnce(&mut SitePolicy)) -> Self {
        f(&mut self.policy);
        self
    }
}

fn run(cases: Vec<Case>) {
    let mut failures = Vec::new();
    for c in cases {
        let got = evaluate(&c.request, &c.consents, &c.policy, now());
        if plain(got.clone()) != c.expect {
            failures.push(format!("{}:\n  expected {:?}\n  got      {:?}", c.name, c.expect, got));
        }
        // Order of consents never matters.
        let mut reversed = c.consents.clone();
        reversed.reverse();
        assert_eq!(
            evaluate(&c.request, &reversed, &c.policy, now()),
            got,
            "{}: order",
            c.name
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn recipient_not_covered() -> DenyReason {
    DenyReason::RecipientNotCovered {
        peer: "peer-a".parse().unwrap(),
        institution: "Charité".parse().unwrap(),
        jurisdiction: "DE".parse().unwrap(),
    }
}

#[test]
fn basics_and_empty_cases() {
    run(vec![
        case("empty consent list", vec![], denied(vec![DenyReason::NoConsent])),
        case("one matching permit", vec![rec(permit("c-1"))], allow_all(&["c-1"])),
        case(
            "consents of other patients are ignored",
            vec![with(permit("c-1"), |d| d.patient = patient(2))],
            denied(vec![DenyReason::NoConsent]),
        ),
        case(
            "a study without series",
            vec![rec(permit("c-1"))],
            denied(vec![DenyReason::NoSeries]),
        )
        .request(|r| r.study.series.clear()),
        case(
            "two permits: both relied on",
            vec![rec(permit("c-2")), rec(permit("c-1"))],
            allow_all(&["c-1", "c-2"]),
        ),
    ]);
}

#[test]
fn scope_parts() {
    run(vec![
        case(
            "purpose not covered",
            vec![rec(permit("c-1"))],
            denied(vec![DenyReason::PurposeNotCovered {
                purpose: Purpose::Quality,
            }]),
        )
        .request(|r| r.purpose = Purpose::Quality),
        case(
            "treatment does not cover second opinion",
            vec![rec(permit("c-1"))],
            denied(vec![DenyReason::PurposeNotCovered {
                purpose: Purpose::SecondOpinion,
            }]),
        )
        .request(|r| r.purpose = Purpose::SecondOpinion),
        case(
            "modality not covered",
            vec![with(permit("c-1"), |d| {
                d.scope.modalities = ModalityScope::Only([m("US")].into())
            })],
            denied(vec![DenyReason::ModalityNotCovered {
                modalities: [m("CT"), m("MR")].into(),
            }]),
        ),
        case(
            "modality partly covered: only those series",
            vec![with(permit("c-1"), |d| {
                d.scope.modalities = ModalityScope::Only([m("CT")].into())
            })],
            Decision::Allow(grant(Identifiable, IN_30_DAYS, &["se-ct"], &["c-1"])),
        ),
        case(
            "recipient peer covered",
            vec![with(permit("c-1"), |d| {
                d.scope.recipients = only([Recipient::Peer("peer-a".parse().unwrap())])
            })],
            allow_all(&["c-1"]),
        ),
        case(
            "recipient peer not covered",
            vec![with(permit("c-1"), |d| {
                d.scope.recipients = only([Recipient::Peer("peer-b".parse().unwrap())])
            })],
            denied(vec![recipient_not_covered()]),
        ),
        case(
            "recipient institution covered",
            vec![with(permit("c-1"), |d| {
                d.scope.recipients = only([Recipient::Institution("Charité".parse().unwrap())])
            })],
            allow_all(&["c-1"]),
        ),
        case(
            "recipient institution not covered",
            vec![with(permit("c-1"), |d| {
                d.scope.recipients = only([Recipient::Institution("Vivantes".parse().unwrap())])
            })],
            denied(vec![recipient_not_covered()]),
        ),
        case(
            "recipient jurisdiction covered",
            vec![with(permit("c-1"), |d| {
                d.scope.recipients = only([Recipient::Jurisdiction("DE".parse().unwrap())])
            })],
            allow_all(&["c-1"]),
        ),
        case(
            "recipient jurisdiction not covered",
            vec![with(permit("c-1"), |d| {
                d.scope.recipients = only([Recipient::Jurisdiction("FR".parse().unwrap())])
            })],
            denied(vec![recipient_not_covered()]),
        ),
        case(
            "recipient consortium covered",
            vec![with(permit("c-1"), |d| {
                d.scope.recipients = only([Recipient::Consortium("euro-imaging".parse().unwrap())])
            })],
            allow_all(&["c-1"]),
        ),
        case(
            "recipient consortium not covered",
            vec![with(permit("c-1"), |d| {
                d.scope.recipients = only([Recipient::Consortium("other".parse().unwrap())])
            })],
            denied(vec![recipient_not_covered()]),
        ),
        case(
            "episode of care covered",
            vec![with(permit("c-1"), |d| {
                d.scope.coverage = Coverage::Episode("e-1".parse().unwrap())
            })],
            allow_all(&["c-1"]),
        ),
        case(
            "another episode of care",
            vec![with(permit("c-1"), |d| {
                d.scope.coverage = Coverage::Episode("e-2".parse().unwrap())
            })],
            denied(vec![DenyReason::StudyNotCovered {
                study: "s-1".parse().unwrap(),
            }]),
        ),
        case(
            "episode unknown for the study",
            vec![with(permit("c-1"), |d| {
                d.scope.coverage = Coverage::Episode("e-1".parse().unwrap())
            })],
            denied(vec![DenyReason::StudyNotCovered {
                study: "s-1".parse().unwrap(),
            }]),
        )
        .request(|r| r.study.episode = None),
        case(
            "given studies include the study",
            vec![with(permit("c-1"), |d| {
                d.scope.coverage = Coverage::Studies(["s-0".parse().unwrap(), "s-1".parse().unwrap()].into())
            })],
            allow_all(&["c-1"]),
        ),
        case(
            "given studies exclude the study",
            vec![with(permit("c-1"), |d| {
                d.scope.coverage = Coverage::Studies(["s-2".parse().unwrap()].into())
            })],
            denied(vec![DenyReason::StudyNotCovered {
                study: "s-1".parse().unwrap(),
            }]),
        ),
        case(
            "data period contains the acquisition time",
            vec![with(permit("c-1"), |d| {
                d.scope.data_period = Some(DataPeriod {
                    from: Some(t("2025-01-01T00:00:00Z")),
                    until: None,
                })
            })],
            allow_all(&["c-1"]),
        ),
        case(
            "data period excludes the acquisition time",
            vec![with(permit("c-1"), |d| {
                d.scope.data_period = Some(DataPeriod {
                    from: None,
                    until: Some(t("2025-01-01T00:00:00Z")),
                })
            })],
            denied(vec![DenyReason::DataPeriodNotCovered {
                study: "s-1".parse().unwrap(),
            }]),
        ),
        case(
            "data period and unknown acquisition time: a permit does not apply",
            vec![with(permit("c-1"), |d| {
                d.scope.data_period = Some(DataPeriod {
                    from: Some(t("2025-01-01T00:00:00Z")),
                    until: None,
                })
            })],
            denied(vec![DenyReason::DataPeriodNotCovered {
                study: "s-1".parse().unwrap(),
            }]),
        )
        .request(|r| r.study.acquired_at = None),
        case(
            "several parts missing: each is named",
            vec![with(permit("c-1"), |d| {
                d.scope.recipients = only([Recipient::Jurisdiction("FR".parse().unwrap())]);
                d.scope.modalities = ModalityScope::Only([m("US")].into());
            })],
            denied(vec![
                recipient_not_covered(),
                DenyReason::ModalityNotCovered {
                    modalities: [m("CT"), m("MR")].into(),
                },
            ]),
        ),
        case(
            "parts covered by different consents, by none together",
            vec![
                with(permit("c-1"), |d| {
                    d.scope.purposes = [Purpose::Quality].into();
                }),
                with(permit("c-2"), |d| {
                    d.scope.purposes = [Purpose::Treatment].into();
                    d.scope.recipients = only([Recipient::Jurisdiction("FR".parse().unwrap())]);
                }),
            ],
            denied(vec![
                DenyReason::ConsentScope {
                    consent: "c-1".parse().unwrap(),
                    missing: [ScopePart::Purpose].into(),
                },
                DenyReason::ConsentScope {
                    consent: "c-2".parse().unwrap(),
                    missing: [ScopePart::Recipient].into(),
                },
            ]),
        ),
    ]);
}

#[test]
fn time() {
    run(vec![
        case(
            "expired",
            vec![with(permit("c-1"), |d| d.valid_until = Some(t("2026-02-01T00:00:00Z")))],
            denied(vec![DenyReason::ConsentExpired {
                consent: "c-1".parse().unwrap(),
                at: t("2026-02-01T00:00:00Z"),
            }]),
        ),
        case(
            "expires exactly now",
            vec![with(permit("c-1"), |d| d.valid_until = Some(now()))],
            denied(vec![DenyReason::ConsentExpired {
                consent: "c-1".parse().unwrap(),
                at: now(),
            }]),
        ),
        case(
            "not yet valid",
            vec![with(permit("c-1"), |d| d.valid_from = t("2026-04-01T00:00:00Z"))],
            denied(vec![DenyReason::ConsentNotYetValid {
                consent: "c-1".parse().unwrap(),
                from: t("2026-04-01T00:00:00Z"),
            }]),
        ),
        case(
            "valid from exactly now",
            vec![with(permit("c-1"), |d| d.valid_from = now())],
            allow_all(&["c-1"]),
        ),
        case(
            "withdrawn before the request",
            vec![with(permit("c-1"), |d| {
                d.withdrawn_at = Some(t("2026-02-15T09:30:00Z"))
            })],
            denied(vec![DenyReason::ConsentWithdrawn {
                consent: "c-1".parse().unwrap(),
                at: t("2026-02-15T09:30:00Z"),
            }]),
        ),
        case(
            "withdrawn after the request: allowed until the withdrawal",
            vec![with(permit("c-1"), |d| {
                d.withdrawn_at = Some(t("2026-03-10T00:00:00Z"))
            })],
            Decision::Allow(grant(
                Identifiable,
                "2026-03-10T00:00:00Z",
                &["se-ct", "se-mr"],
                &["c-1"],
            )),
        ),
        case(
            "withdrawn and expired: withdrawal is named",
            vec![with(permit("c-1"), |d| {
                d.valid_until = Some(t("2026-02-01T00:00:00Z"));
                d.withdrawn_at = Some(t("2026-01-15T00:00:00Z"));
            })],
            denied(vec![DenyReason::ConsentWithdrawn {
                consent: "c-1".parse().unwrap(),
                at: t("2026-01-15T00:00:00Z"),
            }]),
        ),
        case(
            "a withdrawn consent next to a valid one",
            vec![
                with(permit("c-1"), |d| d.withdrawn_at = Some(t("2026-02-01T00:00:00Z"))),
                rec(permit("c-2")),
            ],
            allow_all(&["c-2"]),
        ),
        case(
            "an expired consent and one for another purpose",
            vec![
                with(permit("c-1"), |d| d.valid_until = Some(t("2026-02-01T00:00:00Z"))),
                with(permit("c-2"), |d| d.scope.purposes = [Purpose::Quality].into()),
            ],
            denied(vec![DenyReason::ConsentExpired {
                consent: "c-1".parse().unwrap(),
                at: t("2026-02-01T00:00:00Z"),
            }]),
        ),
    ]);
}

#[test]
fn deny_beats_permit() {
    run(vec![
        case(
            "deny at the same scope",
            vec![rec(permit("c-1")), rec(deny("c-2"))],
            denied(vec![DenyReason::DeniedByConsent {
                consent: "c-2".parse().unwrap(),
            }]),
        ),
        case(
            "deny at a wider scope",
            vec![
                with(permit("c-1"), |d| {
                    d.scope.recipients = only([Recipient::Peer("peer-a".parse().unwrap())])
                }),
                with(deny("c-2"), |d| d.scope.purposes = Purpose::ALL.into()),
            ],
            denied(vec![DenyReason::DeniedByConsent {
                consent: "c-2".parse().unwrap(),
            }]),
        ),
        case(
            "deny of one modality withholds those series only",
            vec![
                rec(permit("c-1")),
                with(deny("c-2"), |d| {
                    d.scope.modalities = ModalityScope::Only([m("MR")].into())
                }),
            ],
            Decision::Allow(grant(Identifiable, IN_30_DAYS, &["se-ct"], &["c-1"])),
        ),
        case(
            "deny for another recipient does not apply",
            vec![
                rec(permit("c-1")),
                with(deny("c-2"), |d| {
                    d.scope.recipients = only([Recipient::Jurisdiction("US".parse().unwrap())])
                }),
            ],
            allow_all(&["c-1"]),
        ),
        case(
            "deny of another patient is ignored",
            vec![rec(permit("c-1")), with(deny("c-2"), |d| d.patient = patient(2))],
            allow_all(&["c-1"]),
        ),
        case(
            "withdrawn deny no longer applies",
            vec![
                rec(permit("c-1")),
                with(deny("c-2"), |d| d.withdrawn_at = Some(t("2026-02-01T00:00:00Z"))),
            ],
            allow_all(&["c-1"]),
        ),
        case(
            "deny that starts later ends the grant",
            vec![
                rec(permit("c-1")),
                with(deny("c-2"), |d| d.valid_from = t("2026-03-10T00:00:00Z")),
            ],
            Decision::Allow(grant(
                Identifiable,
                "2026-03-10T00:00:00Z",
                &["se-ct", "se-mr"],
                &["c-1"],
            )),
        ),
        case(
            "deny only, no permit",
            vec![rec(deny("c-2"))],
            denied(vec![
                DenyReason::NoConsent,
                DenyReason::DeniedByConsent {
                    consent: "c-2".parse().unwrap(),
                },
            ]),
        ),
        case(
            "deny with data period and unknown acquisition time applies",
            vec![
                rec(permit("c-1")),
                with(deny("c-2"), |d| {
                    d.scope.data_period = Some(DataPeriod {
                        from: Some(t("2020-01-01T00:00:00Z")),
                        until: None,
                    })
                }),
            ],
            denied(vec![DenyReason::DeniedByConsent {
                consent: "c-2".parse().unwrap(),
            }]),
        )
        .request(|r| r.study.acquired_at = None),
    ]);
}

#[test]
fn levels() {
    let us = |r: &mut TransferRequest| r.jurisdiction = "US".parse().unwrap();
    run(vec![
        case(
            "the consent's level applies",
            vec![with(permit("c-1"), |d| {
                d.provision = Provision::Permit { level: Pseudonymised }
            })],
            Decision::Allow(grant(Pseudonymised, IN_30_DAYS, &["se-ct", "se-mr"], &["c-1"])),
        ),
        case(
            "the strongest consent level wins",
            vec![
                rec(permit("c-1")),
                with(permit("c-2"), |d| d.provision = Provision::Permit { level: Anonymised }),
            ],
            Decision::Allow(grant(Anonymised, IN_30_DAYS, &["se-ct", "se-mr"], &["c-1", "c-2"])),
        ),
        case(
            "a stronger requested level is granted",
            vec![rec(permit("c-1"))],
            Decision::Allow(grant(Pseudonymised, IN_30_DAYS, &["se-ct", "se-mr"], &["c-1"])),
        )
        .request(|r| r.requested_level = Some(Pseudonymised)),
        case(
            "requested weaker than the consent requires",
            vec![with(permit("c-1"), |d| {
                d.provision = Provision::Permit { level: Pseudonymised }
            })],
            denied(vec![DenyReason::LevelBelowRequired {
                requested: Identifiable,
                required: Pseudonymised,
                rule: LevelRule::Consent("c-1".parse().unwrap()),
            }]),
        )
        .request(|r| r.requested_level = Some(Identifiable)),
        case(
            "cross-border: anonymised when no consent names the jurisdiction",
            vec![rec(permit("c-1"))],
            Decision::Allow(grant(Anonymised, IN_30_DAYS, &["se-ct", "se-mr"], &["c-1"])),
        )
        .request(us),
        case(
            "cross-border: the consent names the jurisdiction",
            vec![with(permit("c-1"), |d| {
                d.scope.recipients = only([Recipient::Jurisdiction("US".parse().unwrap())])
            })],
            allow_all(&["c-1"]),
        )
        .request(us),
        case(
            "cross-border: the consent names the peer",
            vec![with(permit("c-1"), |d| {
                d.scope.recipients = only([Recipient::Peer("peer-a".parse().unwrap())])
            })],
            allow_all(&["c-1"]),
        )
        .request(us),
        case(
            "cross-border: naming the consortium is not enough",
            vec![with(permit("c-1"), |d| {
                d.scope.recipients = only([Recipient::Consortium("euro-imaging".parse().unwrap())])
            })],
            Decision::Allow(grant(Anonymised, IN_30_DAYS, &["se-ct", "se-mr"], &["c-1"])),
        )
        .request(us),
        case(
            "cross-border: identifiable asked explicitly is denied",
            vec![rec(permit("c-1"))],
            denied(vec![DenyReason::LevelBelowRequired {
                requested: Identifiable,
                required: Anonymised,
                rule: LevelRule::CrossBorder("US".parse().unwrap()),
            }]),
        )
        .request(us)
        .request(|r| r.requested_level = Some(Identifiable)),
        case(
            "research needs at least pseudonymisation (and approval)",
            vec![with(permit("c-1"), |d| d.scope.purposes = [Purpose::Research].into())],
            approval(
                Purpose::Research,
                grant(Pseudonymised, IN_30_DAYS, &["se-ct", "se-mr"], &["c-1"]),
            ),
        )
        .request(|r| r.purpose = Purpose::Research),
        case(
            "identifiable data for research is denied with every rule it breaks",
            vec![with(permit("c-1"), |d| d.scope.purposes = [Purpose::Research].into())],
            denied(vec![
                DenyReason::LevelBelowRequired {
                    requested: Identifiable,
                    required: Pseudonymised,
                    rule: LevelRule::PurposeMinimum(Purpose::Research),
                },
                DenyReason::LevelBelowRequired {
                    requested: Identifiable,
                    required: Anonymised,
                    rule: LevelRule::CrossBorder("US".parse().unwrap()),
                },
            ]),
        )
        .request(us)
        .request(|r| {
            r.purpose = Purpose::Research;
            r.requested_level = Some(Identifiable);
        }),
    ]);
}

#[test]
fn waivers() {
    let waiver = |id: &str| {
        with(permit(id), |d| {
            d.consented_by = ConsentedBy::EthicsBoardWaiver;
            d.scope.purposes = Purpose::ALL.into();
        })
    };
    run(vec![
        case(
            "waiver allows research on anonymised data",
            vec![waiver("w-1")],
            approval(
                Purpose::Research,
                grant(Anonymised, IN_30_DAYS, &["se-ct", "se-mr"], &["w-1"]),
            ),
        )
        .request(|r| r.purpose = Purpose::Research),
        case(
            "waiver with pseudonymised data asked explicitly",
            vec![waiver("w-1")],
            denied(vec![DenyReason::LevelBelowRequired {
                requested: Pseudonymised,
                required: Anonymised,
                rule: LevelRule::Waiver("w-1".parse().unwrap()),
            }]),
        )
        .request(|r| {
            r.purpose = Purpose::Research;
            r.requested_level = Some(Pseudonymised);
        }),
        case(
            "waiver does not allow treatment",
            vec![waiver("w-1")],
            denied(vec![DenyReason::WaiverPurpose {
                consent: "w-1".parse().unwrap(),
                purpose: Purpose::Treatment,
            }]),
        ),
        case(
            "waiver accepted for teaching by policy",
            vec![waiver("w-1")],
            Decision::Allow(grant(Anonymised, IN_30_DAYS, &["se-ct", "se-mr"], &["w-1"])),
        )
        .request(|r| r.purpose = Purpose::Teaching)
        .policy(|p| {
            p.waiver_purposes.insert(Purpose::Teaching);
            p.approval_required.clear();
        }),
        case(
            "the patient's own consent plus a waiver: the waiver still binds the level",
            vec![
                with(permit("c-1"), |d| d.scope.purposes = [Purpose::Research].into()),
                waiver("w-1"),
            ],
            approval(
                Purpose::Research,
                grant(Anonymised, IN_30_DAYS, &["se-ct", "se-mr"], &["c-1", "w-1"]),
            ),
        )
        .request(|r| r.purpose = Purpose::Research),
    ]);
}

#[test]
fn approval_and_expiry() {
    run(vec![
        case(
            "teaching goes to a human",
            vec![with(permit("c-1"), |d| d.scope.purposes = [Purpose::Teaching].into())],
            approval(
                Purpose::Teaching,
                grant(Anonymised, IN_30_DAYS, &["se-ct", "se-mr"], &["c-1"]),
            ),
        )
        .request(|r| r.purpose = Purpose::Teaching),
        case(
            "treatment listed for approval",
            vec![rec(permit("c-1"))],
            approval(
                Purpose::Treatment,
                grant(Identifiable, IN_30_DAYS, &["se-ct", "se-mr"], &["c-1"]),
            ),
        )
        .policy(|p| {
            p.approval_required.insert(Purpose::Treatment);
        }),
        case(
            "no approval for a denied request",
            vec![],
            denied(vec![DenyReason::NoConsent]),
        )
        .request(|r| r.purpose = Purpose::Research),
        case(
            "research allowed without approval when the policy says so",
            vec![with(permit("c-1"), |d| d.scope.purposes = [Purpose::Research].into())],
            Decision::Allow(grant(Pseudonymised, IN_30_DAYS, &["se-ct", "se-mr"], &["c-1"])),
        )
        .request(|r| r.purpose = Purpose::Research)
        .policy(|p| p.approval_required.clear()),
        case(
            "maximum grant duration caps a long consent",
            vec![with(permit("c-1"), |d| d.valid_until = Some(t("2030-01-01T00:00:00Z")))],
            Decision::Allow(grant(
                Identifiable,
                "2026-03-08T00:00:00Z",
                &["se-ct", "se-mr"],
                &["c-1"],
            )),
        )
        .policy(|p| p.max_grant_days = GrantDays::new(7).unwrap()),
        case(
            "a consent ending sooner ends the grant",
            vec![with(permit("c-1"), |d| d.valid_until = Some(t("2026-03-05T12:00:00Z")))],
            Decision::Allow(grant(
                Identifiable,
                "2026-03-05T12:00:00Z",
                &["se-ct", "se-mr"],
                &["c-1"],
            )),
        ),
        case(
            "the earliest end of the consents relied on",
            vec![
                with(permit("c-1"), |d| d.valid_until = Some(t("2026-03-20T00:00:00Z"))),
                with(permit("c-2"), |d| d.valid_until = Some(t("2026-03-15T00:00:00Z"))),
            ],
            Decision::Allow(grant(
                Identifiable,
                "2026-03-15T00:00:00Z",
                &["se-ct", "se-mr"],
                &["c-1", "c-2"],
            )),
        ),
    ]);
}

#[test]
fn reasons_have_stable_codes_and_words() {
    let c: crate::ids::ConsentId = "c-17".parse().unwrap();
    let table: Vec<(DenyReason, &str, &str)> = vec![
        (DenyReason::NoSeries, "no-series", "the study has no series to send"),
        (
            DenyReason::NoConsent,
            "no-consent",
            "no consent of this patient that permits a transfer is on record",
        ),
        (
            DenyReason::PurposeNotCovered {
                purpose: Purpose::Research,
            },
            "purpose-not-covered",
            "no consent of this patient covers purpose research",
        ),
        (
            DenyReason::ConsentWithdrawn {
                consent: c.clone(),
                at: t("2026-11-02T00:00:00Z"),
            },
            "consent-withdrawn",
            "consent c-17 was withdrawn on 2026-11-02 00:00 UTC",
        ),
        (
            DenyReason::ModalityNotCovered {
                modalities: [m("MR"), m("US")].into(),
            },
            "modality-not-covered",
            "no consent of this patient covers modality MR, US",
        ),
        (
            DenyReason::LevelBelowRequired {
                requested: Identifiable,
                required: Anonymised,
                rule: LevelRule::CrossBorder("US".parse().unwrap()),
            },
            "level-below-required",
            "identifiable data was requested, but site policy for transfers to US, which no consent names (policy.cross_border_level) requires at least anonymised",
        ),
        (
            DenyReason::ConsentScope {
                consent: c.clone(),
                missing: [ScopePart::Recipient, ScopePart::Modality].into(),
            },
            "consent-scope",
            "consent c-17 does not cover this request's recipient, modality",
        ),
        (
            DenyReason::DeniedByConsent { consent: c },
            "denied-by-consent",
            "consent c-17 forbids this transfer (a deny provision in force)",
        ),
    ];
    for (reason, code, words) in table {
        assert_eq!(reason.code(), code);
        assert_eq!(reason.to_string(), words);
        let json = serde_json::to_value(&reason).unwrap();
        assert_eq!(json["code"], code, "{json}");
        assert_eq!(serde_json::from_value::<DenyReason>(json).unwrap(), reason);
    }
}

#[test]
fn far_future_now_does_not_overflow() {
    let far = DateTime::<Utc>::MAX_UTC - TimeDelta::days(1);
    let d = evaluate(&request(), &[rec(permit("c-1"))], &policy(), far);
    assert_eq!(d.allowed().map(Grant::expires_at), Some(DateTime::<Utc>::MAX_UTC));
    let _: BTreeSet<u8> = BTreeSet::new();
}

/// The grant carries the object-level scope: the consents relied on and the denies that apply
/// but for the modality; each object of a granted series is then decided on its own Modality
/// and SOP Class (an SR or OT object filed in a CT series is left out under a CT-only consent).
#[test]
fn objects_of_the_grant_are_decided_on_their_own_modality() {
    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
    const SC: &str = "1.2.840.10008.5.1.4.1.1.7";
    const SR: &str = "1.2.840.10008.5.1.4.1.1.88.22";
    let obj = |modality: &str, class: &str| ObjectFacts {
        modality: Some(m(modality)),
        sop_class: class.into(),
    };
    let ct_only = |id: &str| {
        let mut d = permit(id);
        d.scope.modalities = ModalityScope::Only([m("CT")].into());
        rec(d)
    };
    let sr_objection = |id: &str| {
        let mut d = deny(id);
        d.scope.modalities = ModalityScope::Only([m("SR")].into());
        rec(d)
    };
    // (name, consents, object, expected: "admit" or the exclusion code)
    let cases: Vec<(&str, Vec<ConsentRecord>, ObjectFacts, &str)> = vec![
        (
            "CT object, CT-only permit",
            vec![ct_only("c-1")],
            obj("CT", CT),
            "admit",
        ),
        (
            "OT object in the CT series",
            vec![ct_only("c-1")],
            obj("OT", SC),
            "modality-not-covered",
        ),
        (
            "SR object in the CT series",
            vec![ct_only("c-1")],
            obj("SR", SR),
            "modality-not-covered",
        ),
        (
            "SR object that says CT",
            vec![ct_only("c-1")],
            obj("CT", SR),
            "sop-class-not-covered",
        ),
        (
            "SR object, every modality",
            vec![rec(permit("c-1"))],
            obj("SR", SR),
            "admit",
        ),
        (
            "SR object, objection to SR (the series is CT)",
            vec![rec(permit("c-1")), sr_objection("c-2")],
            obj("SR", SR),
            "denied-by-consent",
        ),
        (
            "CT object, objection to SR",
            vec![rec(permit("c-1")), sr_objection("c-2")],
            obj("CT", CT),
            "admit",
        ),
    ];
    for (name, consents, object, want) in cases {
        let d = evaluate(&request(), &consents, &policy(), now());
        let g = d.allowed().unwrap_or_else(|| panic!("{name}: {d:?}"));
        let got = match g.objects().admit(&object) {
            Ok(()) => "admit",
            Err(e) => e.code(),
        };
        assert_eq!(got, want, "{name}");
        // Order of consents never matters.
        let mut reversed = consents.clone();
        reversed.reverse();
        assert_eq!(evaluate(&request(), &reversed, &policy(), now()), d, "{name}: order");
    }
}

/// A role rule as the TOML form would give it.
fn rule(role: &str, purpose: &str, modality: Option<&[&str]>, effect: RuleEffect) -> RoleRule {
    RoleRule::new(
        role.parse().unwrap(),
        purpose.parse().unwrap(),
        modality.map(|ms| ms.iter().map(|s| m(s)).collect()),
        effect,
    )
    .unwrap()
}

const ALLOW: RuleEffect = RuleEffect::Allow {
    min_level: None,
    approval: false,
};

fn allow_at(level: DeidLevel) -> RuleEffect {
    RuleEffect::Allow {
        min_level: Some(level),
        approval: false,
    }
}

const NEEDS_PERSON: RuleEffect = RuleEffect::Allow {
    min_level: None,
    approval: true,
};

fn by_rule(rule: u32, role: Role, purpose: Purpose) -> DenyReason {
    DenyReason::DeniedByRoleRule { rule, role, purpose }
}

fn role_level(rule: u32, role: Role, purpose: Purpose) -> LevelRule {
    LevelRule::RoleRule { rule, role, purpose }
}

#[test]
fn role_rules() {
    use Role::{Clinician, Radiologist, Researcher};
    let research_permit = || with(permit("c-1"), |d| d.scope.purposes = [Purpose::Research].into());
    let research = |r: &mut TransferRequest| {
        r.purpose = Purpose::Research;
        r.role = Researcher;
    };
    let no_approval = |p: &mut SitePolicy| p.approval_required.clear();
    let us = |r: &mut TransferRequest| r.jurisdiction = "US".parse().unwrap();
    run(vec![
        // No rules, or none matching: unchanged.
        case("no rules: unchanged", vec![rec(permit("c-1"))], allow_all(&["c-1"])),
        case(
            "a rule for another role does not match",
            vec![rec(permit("c-1"))],
            allow_all(&["c-1"]),
        )
        .policy(|p| p.role_rules = vec![rule("researcher", "*", None, RuleEffect::Deny)]),
        case(
            "a rule for another purpose does not match",
            vec![rec(permit("c-1"))],
            allow_all(&["c-1"]),
        )
        .policy(|p| p.role_rules = vec![rule("clinician", "research", None, RuleEffect::Deny)]),
        // Each effect.
        case(
            "deny: every series withheld",
            vec![rec(permit("c-1"))],
            denied(vec![by_rule(1, Clinician, Purpose::Treatment)]),
        )
        .policy(|p| p.role_rules = vec![rule("clinician", "treatment", None, RuleEffect::Deny)]),
        case(
            "allow without level or approval: as consent and policy decide",
            vec![rec(permit("c-1"))],
            allow_all(&["c-1"]),
        )
        .policy(|p| p.role_rules = vec![rule("clinician", "treatment", None, ALLOW)]),
        case(
            "allow with min_level raises the level",
            vec![rec(permit("c-1"))],
            Decision::Allow(grant(Pseudonymised, IN_30_DAYS, &["se-ct", "se-mr"], &["c-1"])),
        )
        .policy(|p| p.role_rules = vec![rule("clinician", "*", None, allow_at(Pseudonymised))]),
        case(
            "allow with min_level: a weaker requested level is denied, naming the rule",
            vec![rec(permit("c-1"))],
            denied(vec![DenyReason::LevelBelowRequired {
                requested: Identifiable,
                required: Pseudonymised,
                rule: role_level(1, Clinician, Purpose::Treatment),
            }]),
        )
        .request(|r| r.requested_level = Some(Identifiable))
        .policy(|p| p.role_rules = vec![rule("clinician", "*", None, allow_at(Pseudonymised))]),
        case(
            "allow with approval: a person must approve",
            vec![rec(permit("c-1"))],
            Decision::NeedsApproval {
                why: vec![ApprovalReason::RoleRequiresApproval {
                    rule: 1,
                    role: Clinician,
                    purpose: Purpose::Treatment,
                }],
                grant: grant(Identifiable, IN_30_DAYS, &["se-ct", "se-mr"], &["c-1"]),
            },
        )
        .policy(|p| p.role_rules = vec![rule("*", "*", None, NEEDS_PERSON)]),
        case(
            "approval by rule and by purpose: both reasons",
            vec![research_permit()],
            Decision::NeedsApproval {
                why: vec![
                    ApprovalReason::PurposeRequiresApproval {
                        purpose: Purpose::Research,
                    },
                    ApprovalReason::RoleRequiresApproval {
                        rule: 1,
                        role: Researcher,
                        purpose: Purpose::Research,
                    },
                ],
                grant: grant(Pseudonymised, IN_30_DAYS, &["se-ct", "se-mr"], &["c-1"]),
            },
        )
        .request(research)
        .policy(|p| p.role_rules = vec![rule("researcher", "research", None, NEEDS_PERSON)]),
        case(
            "an allow rule never lifts approval_required",
            vec![research_permit()],
            approval(
                Purpose::Research,
                grant(Pseudonymised, IN_30_DAYS, &["se-ct", "se-mr"], &["c-1"]),
            ),
        )
        .request(research)
        .policy(|p| p.role_rules = vec![rule("researcher", "research", None, ALLOW)]),
        case(
            "an allow rule never allows what consent denies",
            vec![],
            denied(vec![DenyReason::NoConsent]),
        )
        .policy(|p| p.role_rules = vec![rule("*", "*", None, ALLOW)]),
        // First match wins.
        case(
            "first match: allow before deny",
            vec![rec(permit("c-1"))],
            allow_all(&["c-1"]),
        )
        .policy(|p| {
            p.role_rules = vec![
                rule("clinician", "treatment", None, ALLOW),
                rule("*", "*", None, RuleEffect::Deny),
            ]
        }),
        case(
            "first match: deny before allow",
            vec![rec(permit("c-1"))],
            denied(vec![by_rule(1, Clinician, Purpose::Treatment)]),
        )
        .policy(|p| {
            p.role_rules = vec![
                rule("*", "*", None, RuleEffect::Deny),
                rule("clinician", "treatment", None, ALLOW),
            ]
        }),
        case(
            "first match: a non-matching rule is skipped, the position counts all rules",
            vec![rec(permit("c-1"))],
            denied(vec![by_rule(2, Clinician, Purpose::Treatment)]),
        )
        .policy(|p| {
            p.role_rules = vec![
                rule("radiologist", "*", None, ALLOW),
                rule("*", "treatment", None, RuleEffect::Deny),
                rule("clinician", "*", None, ALLOW),
            ]
        }),
        case(
            "first match: the earlier level, not the strongest, decides",
            vec![rec(permit("c-1"))],
            Decision::Allow(grant(Pseudonymised, IN_30_DAYS, &["se-ct", "se-mr"], &["c-1"])),
        )
        .policy(|p| {
            p.role_rules = vec![
                rule("clinician", "*", None, allow_at(Pseudonymised)),
                rule("*", "*", None, allow_at(Anonymised)),
            ]
        }),
        // Wildcards.
        case(
            "wildcard role",
            vec![rec(permit("c-1"))],
            denied(vec![by_rule(1, Radiologist, Purpose::Treatment)]),
        )
        .request(|r| r.role = Radiologist)
        .policy(|p| p.role_rules = vec![rule("*", "treatment", None, RuleEffect::Deny)]),
        case(
            "wildcard purpose",
            vec![with(permit("c-1"), |d| d.scope.purposes = [Purpose::Quality].into())],
            denied(vec![by_rule(1, Clinician, Purpose::Quality)]),
        )
        .request(|r| r.purpose = Purpose::Quality)
        .policy(|p| p.role_rules = vec![rule("clinician", "*", None, RuleEffect::Deny)]),
        // Modality, per series.
        case(
            "modality match: only that series is withheld",
            vec![rec(permit("c-1"))],
            Decision::Allow(grant(Identifiable, IN_30_DAYS, &["se-ct"], &["c-1"])),
        )
        .policy(|p| p.role_rules = vec![rule("*", "*", Some(&["MR"]), RuleEffect::Deny)]),
        case(
            "modality no match: unchanged",
            vec![rec(permit("c-1"))],
            allow_all(&["c-1"]),
        )
        .policy(|p| p.role_rules = vec![rule("*", "*", Some(&["MG", "US"]), RuleEffect::Deny)]),
        case(
            "allow-list: allow CT, then deny the rest",
            vec![rec(permit("c-1"))],
            Decision::Allow(grant(Identifiable, IN_30_DAYS, &["se-ct"], &["c-1"])),
        )
        .policy(|p| {
            p.role_rules = vec![
                rule("clinician", "*", Some(&["CT"]), ALLOW),
                rule("clinician", "*", None, RuleEffect::Deny),
            ]
        }),
        case(
            "a level rule for one modality binds the grant when that series is sent",
            vec![rec(permit("c-1"))],
            Decision::Allow(grant(Anonymised, IN_30_DAYS, &["se-ct", "se-mr"], &["c-1"])),
        )
        .policy(|p| p.role_rules = vec![rule("*", "*", Some(&["MR"]), allow_at(Anonymised))]),
        case(
            "a level rule for a series consent withholds does not bind",
            vec![
                rec(permit("c-1")),
                with(deny("c-2"), |d| {
                    d.scope.modalities = ModalityScope::Only([m("MR")].into())
                }),
            ],
            Decision::Allow(grant(Identifiable, IN_30_DAYS, &["se-ct"], &["c-1"])),
        )
        .policy(|p| p.role_rules = vec![rule("*", "*", Some(&["MR"]), allow_at(Anonymised))]),
        case(
            "consent withholds CT, a rule withholds MR: denied by the rule",
            vec![
                rec(permit("c-1")),
                with(deny("c-2"), |d| {
                    d.scope.modalities = ModalityScope::Only([m("CT")].into())
                }),
            ],
            denied(vec![by_rule(1, Clinician, Purpose::Treatment)]),
        )
        .policy(|p| p.role_rules = vec![rule("*", "*", Some(&["MR"]), RuleEffect::Deny)]),
        case(
            "consent denies and the rules withhold every series: both reasons",
            vec![],
            denied(vec![DenyReason::NoConsent, by_rule(1, Clinician, Purpose::Treatment)]),
        )
        .policy(|p| p.role_rules = vec![rule("*", "*", None, RuleEffect::Deny)]),
        case(
            "consent denies and the rules withhold some series: consent's reasons only",
            vec![],
            denied(vec![DenyReason::NoConsent]),
        )
        .policy(|p| p.role_rules = vec![rule("*", "*", Some(&["CT"]), RuleEffect::Deny)]),
        // With the cross-border level and policy.min_level: the stronger wins.
        case(
            "cross-border anonymised beats a pseudonymised rule",
            vec![rec(permit("c-1"))],
            Decision::Allow(grant(Anonymised, IN_30_DAYS, &["se-ct", "se-mr"], &["c-1"])),
        )
        .request(us)
        .policy(|p| p.role_rules = vec![rule("*", "*", None, allow_at(Pseudonymised))]),
        case(
            "an anonymised rule beats the cross-border pseudonymised level",
            vec![rec(permit("c-1"))],
            Decision::Allow(grant(Anonymised, IN_30_DAYS, &["se-ct", "se-mr"], &["c-1"])),
        )
        .request(us)
        .policy(|p| {
            p.cross_border_level = Pseudonymised;
            p.role_rules = vec![rule("*", "*", None, allow_at(Anonymised))];
        }),
        case(
            "an identifiable rule never lowers policy.min_level",
            vec![research_permit()],
            Decision::Allow(grant(Pseudonymised, IN_30_DAYS, &["se-ct", "se-mr"], &["c-1"])),
        )
        .request(research)
        .policy(no_approval)
        .policy(|p| p.role_rules = vec![rule("researcher", "research", None, allow_at(Identifiable))]),
        case(
            "an anonymised rule beats policy.min_level",
            vec![research_permit()],
            Decision::Allow(grant(Anonymised, IN_30_DAYS, &["se-ct", "se-mr"], &["c-1"])),
        )
        .request(research)
        .policy(no_approval)
        .policy(|p| p.role_rules = vec![rule("researcher", "research", None, allow_at(Anonymised))]),
        case(
            "pseudonymised asked: every rule it falls short of is named",
            vec![research_permit()],
            denied(vec![
                DenyReason::LevelBelowRequired {
                    requested: Pseudonymised,
                    required: Anonymised,
                    rule: LevelRule::CrossBorder("US".parse().unwrap()),
                },
                DenyReason::LevelBelowRequired {
                    requested: Pseudonymised,
                    required: Anonymised,
                    rule: role_level(1, Researcher, Purpose::Research),
                },
            ]),
        )
        .request(research)
        .request(us)
        .request(|r| r.requested_level = Some(Pseudonymised))
        .policy(|p| p.role_rules = vec![rule("researcher", "research", None, allow_at(Anonymised))]),
    ]);
}

/// Objects of a granted series are decided again by the role rules on their own modalities.
#[test]
fn role_rules_decide_each_object() {
    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
    const SC: &str = "1.2.840.10008.5.1.4.1.1.7";
    const SR: &str = "1.2.840.10008.5.1.4.1.1.88.22";
    let obj = |modality: Option<&str>, class: &str| ObjectFacts {
        modality: modality.map(m),
        sop_class: class.into(),
    };
    let with_rules = |rules: Vec<RoleRule>| {
        let mut p = policy();
        p.role_rules = rules;
        p
    };
    // (name, rules, object, expected: "admit" or the exclusion code)
    let cases: Vec<(&str, Vec<RoleRule>, ObjectFacts, &str)> = vec![
        ("no rules, SR object", vec![], obj(Some("SR"), SR), "admit"),
        (
            "SR denied, SR object in the CT series",
            vec![rule("*", "*", Some(&["SR"]), RuleEffect::Deny)],
            obj(Some("SR"), SR),
            "denied-by-role-rule",
        ),
        (
            "SR denied, a report whose Modality says CT",
            vec![rule("*", "*", Some(&["SR"]), RuleEffect::Deny)],
            obj(Some("CT"), SR),
            "denied-by-role-rule",
        ),
        (
            "SR denied, a CT object",
            vec![rule("*", "*", Some(&["SR"]), RuleEffect::Deny)],
            obj(Some("CT"), CT),
            "admit",
        ),
        (
            "allow-list CT and MR: an OT object is left out",
            vec![
                rule("*", "*", Some(&["CT", "MR"]), ALLOW),
                rule("*", "*", None, RuleEffect::Deny),
            ],
            obj(Some("OT"), SC),
            "denied-by-role-rule",
        ),
        (
            "allow-list CT and MR: an object without a modality is left out",
            vec![
                rule("*", "*", Some(&["CT", "MR"]), ALLOW),
                rule("*", "*", None, RuleEffect::Deny),
            ],
            obj(None, SC),
            "denied-by-role-rule",
        ),
        (
            "a modality rule does not decide an object without a modality",
            vec![rule("*", "*", Some(&["SR"]), RuleEffect::Deny)],
            obj(None, SC),
            "admit",
        ),
        (
            "SR needs anonymised, the grant is identifiable: left out",
            vec![rule("*", "*", Some(&["SR"]), allow_at(Anonymised))],
            obj(Some("SR"), SR),
            "denied-by-role-rule",
        ),
        (
            "SR needs approval, the decision did not ask: left out",
            vec![rule("*", "*", Some(&["SR"]), NEEDS_PERSON)],
            obj(Some("SR"), SR),
            "denied-by-role-rule",
        ),
    ];
    for (name, rules, object, want) in cases {
        let p = with_rules(rules);
        let d = evaluate(&request(), &[rec(permit("c-1"))], &p, now());
        let g = d.allowed().unwrap_or_else(|| panic!("{name}: {d:?}"));
        let got = match g.objects().admit(&object) {
            Ok(()) => "admit",
            Err(e) => e.code(),
        };
        assert_eq!(got, want, "{name}");
    }
    // With approval asked for by a rule on the series' own modality, an SR object that needs
    // approval too is admitted.
    let p = with_rules(vec![rule("*", "*", None, NEEDS_PERSON)]);
    let d = evaluate(&request(), &[rec(permit("c-1"))], &p, now());
    let Decision::NeedsApproval { grant, .. } = d else {
        panic!("{d:?}")
    };
    assert_eq!(grant.objects().admit(&obj(Some("SR"), SR)), Ok(()));
    // The words of the exclusion name the rule, the role, the purpose and the modality.
    let p = with_rules(vec![rule("*", "*", Some(&["SR"]), RuleEffect::Deny)]);
    let d = evaluate(&request(), &[rec(permit("c-1"))], &p, now());
    let e = d.allowed().unwrap().objects().admit(&obj(Some("SR"), SR)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "site policy does not let role clinician receive SR objects for treatment under this grant (policy.role_rule #1)"
    );
}

#[test]
fn role_rule_reasons_have_stable_codes_and_words() {
    let reason = by_rule(3, Role::Researcher, Purpose::Research);
    assert_eq!(reason.code(), "denied-by-role-rule");
    assert_eq!(
        reason.to_string(),
        "site policy does not let role researcher receive this study for research (policy.role_rule #3)"
    );
    let json = serde_json::to_value(&reason).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"code": "denied-by-role-rule", "rule": 3, "role": "researcher", "purpose": "research"})
    );
    assert_eq!(serde_json::from_value::<DenyReason>(json).unwrap(), reason);
    let why = ApprovalReason::RoleRequiresApproval {
        rule: 1,
        role: Role::DataSteward,
        purpose: Purpose::Research,
    };
    assert_eq!(why.code(), "role-requires-approval");
    assert_eq!(
        why.to_string(),
        "site policy sends research requests by role data-steward to a human (policy.role_rule #1)"
    );
    let level = DenyReason::LevelBelowRequired {
        requested: Pseudonymised,
        required: Anonymised,
        rule: role_level(2, Role::Researcher, Purpose::Research),
    };
    assert_eq!(
        level.to_string(),
        "pseudonymised data was requested, but site policy for research requests by role researcher (policy.role_rule #2) requires at least anonymised"
    );
}
