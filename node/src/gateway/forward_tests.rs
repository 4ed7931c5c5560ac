#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::*;
use crate::store::ReceivedGrant;

fn route(destination: &str) -> Route {
    Route {
        destination: destination.into(),
        source_peer: None,
        institution: None,
        purpose: None,
        modality: None,
        level: None,
    }
}

fn peer(purpose: Purpose, level: DeidLevel) -> Source {
    Source::Peer {
        peer: "12D3KooWNord".into(),
        institution: "Klinikum Nord".into(),
        purpose,
        level,
    }
}

fn arrival(source: Source, modalities: &[&str]) -> Arrival {
    Arrival {
        source,
        modalities: modalities.iter().map(|m| (*m).to_string()).collect(),
    }
}

fn dest(name: &str, ae: &str) -> DicomPeer {
    DicomPeer {
        name: name.into(),
        ae_title: ae.into(),
        host: "127.0.0.1".into(),
        port: 104,
        tls: false,
        tls_ca: None,
        tls_cert: None,
        tls_key: None,
    }
}

#[test]
fn routes_match_by_every_condition_they_set() {
    let treat_id = peer(Purpose::Treatment, DeidLevel::Identifiable);
    let research_pseudo = peer(Purpose::Research, DeidLevel::Pseudonymised);
    let scp = Source::Scp {
        calling_ae: "CT01".into(),
    };
    let with = |f: &dyn Fn(&mut Route)| {
        let mut r = route("pacs");
        f(&mut r);
        r
    };
    let cases: Vec<(&str, Route, Arrival, bool)> = vec![
        (
            "no condition, peer",
            route("pacs"),
            arrival(treat_id.clone(), &["CT"]),
            true,
        ),
        (
            "no condition, import",
            route("pacs"),
            arrival(Source::Import, &[]),
            true,
        ),
        ("no condition, scp", route("pacs"), arrival(scp.clone(), &["MR"]), true),
        (
            "source peer matches",
            with(&|r| r.source_peer = Some("12D3KooWNord".into())),
            arrival(treat_id.clone(), &[]),
            true,
        ),
        (
            "source peer differs",
            with(&|r| r.source_peer = Some("12D3KooWSued".into())),
            arrival(treat_id.clone(), &[]),
            false,
        ),
        (
            "source peer, import",
            with(&|r| r.source_peer = Some("12D3KooWNord".into())),
            arrival(Source::Import, &[]),
            false,
        ),
        (
            "institution matches",
            with(&|r| r.institution = Some("Klinikum Nord".into())),
            arrival(treat_id.clone(), &[]),
            true,
        ),
        (
            "institution differs",
            with(&|r| r.institution = Some("Klinikum Süd".into())),
            arrival(treat_id.clone(), &[]),
            false,
        ),
        (
            "purpose matches",
            with(&|r| r.purpose = Some("treatment".into())),
            arrival(treat_id.clone(), &[]),
            true,
        ),
        (
            "purpose differs",
            with(&|r| r.purpose = Some("treatment".into())),
            arrival(research_pseudo.clone(), &[]),
            false,
        ),
        (
            "purpose, scp",
            with(&|r| r.purpose = Some("treatment".into())),
            arrival(scp.clone(), &[]),
            false,
        ),
        (
            "modality, any case",
            with(&|r| r.modality = Some("ct".into())),
            arrival(treat_id.clone(), &["MR", "CT"]),
            true,
        ),
        (
            "modality absent",
            with(&|r| r.modality = Some("CT".into())),
            arrival(treat_id.clone(), &["MR"]),
            false,
        ),
        (
            "modality, no modality known",
            with(&|r| r.modality = Some("CT".into())),
            arrival(Source::Import, &[]),
            false,
        ),
        (
            "identified, identifiable copy",
            with(&|r| r.level = Some(RouteLevel::Identified)),
            arrival(treat_id.clone(), &[]),
            true,
        ),
        (
            "identified, own study",
            with(&|r| r.level = Some(RouteLevel::Identified)),
            arrival(Source::Import, &[]),
            true,
        ),
        (
            "identified, pseudonymised copy",
            with(&|r| r.level = Some(RouteLevel::Identified)),
            arrival(research_pseudo.clone(), &[]),
            false,
        ),
        (
            "deidentified, pseudonymised copy",
            with(&|r| r.level = Some(RouteLevel::Deidentified)),
            arrival(research_pseudo.clone(), &[]),
            true,
        ),
        (
            "deidentified, own study",
            with(&|r| r.level = Some(RouteLevel::Deidentified)),
            arrival(scp.clone(), &[]),
            false,
        ),
        (
            "any level",
            with(&|r| r.level = Some(RouteLevel::Any)),
            arrival(research_pseudo.clone(), &[]),
            true,
        ),
        (
            "all conditions hold",
            with(&|r| {
                r.source_peer = Some("12D3KooWNord".into());
                r.institution = Some("Klinikum Nord".into());
                r.purpose = Some("treatment".into());
                r.modality = Some("CT".into());
                r.level = Some(RouteLevel::Identified);
            }),
            arrival(treat_id.clone(), &["CT"]),
            true,
        ),
        (
            "all but one hold",
            with(&|r| {
                r.source_peer = Some("12D3KooWNord".into());
                r.institution = Some("Klinikum Nord".into());
                r.purpose = Some("treatment".into());
                r.modality = Some("CT".into());
                r.level = Some(RouteLevel::Deidentified);
            }),
            arrival(treat_id.clone(), &["CT"]),
            false,
        ),
    ];
    for (what, r, a, want) in cases {
        assert_eq!(route_matches(&r, &a), want, "{what}");
    }
}

#[test]
fn destinations_are_listed_once_in_route_order_and_never_back_to_the_sender() {
    let peers = [dest("pacs", "PACS"), dest("archive", "ARCHIVE")];
    let mut ct = route("archive");
    ct.modality = Some("CT".into());
    let routes = [route("pacs"), ct, route("pacs")];
    let a = arrival(Source::Import, &["CT"]);
    assert_eq!(destinations(&routes, &peers, &a), vec!["pacs", "archive"]);
    let a = arrival(Source::Import, &["MR"]);
    assert_eq!(destinations(&routes, &peers, &a), vec!["pacs"]);
    // The PACS pushed it in: not sent back to the PACS.
    let a = arrival(
        Source::Scp {
            calling_ae: "PACS".into(),
        },
        &["CT"],
    );
    assert_eq!(destinations(&routes, &peers, &a), vec!["archive"]);
    assert!(destinations(&[], &peers, &a).is_empty());
}

fn received(purpose: Purpose, level: DeidLevel, expires: i64, locked: Option<i64>) -> Origin {
    Origin::Received(ReceivedGrant {
        transfer_id: "00".repeat(16),
        peer: "12D3KooWPqT2nMDSiXUSx5D7fasaxhxKigVhcqfkKqrLghCq9jxz".parse().unwrap(),
        institution: "Klinikum Nord".into(),
        purpose,
        level,
        expires,
        grant_hash: String::new(),
        received: 0,
        locked,
        attestation: Vec::new(),
        study_ref: Vec::new(),
    })
}

#[test]
fn the_keep_policy_and_the_grant_decide_whether_a_study_may_be_forwarded() {
    let now = 1_000_000;
    let default = GatewayConfig::default();
    let strict = GatewayConfig {
        keep_levels: vec![DeidLevel::Identifiable],
        keep_purposes: vec![Purpose::Treatment],
        ..GatewayConfig::default()
    };
    let cases: Vec<(&str, Origin, &GatewayConfig, Result<(), ForwardCause>)> = vec![
        ("own study", Origin::Local, &default, Ok(())),
        (
            "treatment, running",
            received(Purpose::Treatment, DeidLevel::Identifiable, now + 10, None),
            &default,
            Ok(()),
        ),
        (
            "second opinion kept by default",
            received(Purpose::SecondOpinion, DeidLevel::Identifiable, now + 10, None),
            &default,
            Ok(()),
        ),
        (
            "locked",
            received(Purpose::Treatment, DeidLevel::Identifiable, now - 10, Some(now - 5)),
            &default,
            Err(ForwardCause::Locked),
        ),
        (
            "expired, not locked yet",
            received(Purpose::Treatment, DeidLevel::Identifiable, now, None),
            &default,
            Err(ForwardCause::Locked),
        ),
        (
            "research not kept by default",
            received(Purpose::Research, DeidLevel::Pseudonymised, now + 10, None),
            &default,
            Err(ForwardCause::PurposeNotKept {
                purpose: Purpose::Research,
            }),
        ),
        (
            "level not kept",
            received(Purpose::Treatment, DeidLevel::Anonymised, now + 10, None),
            &strict,
            Err(ForwardCause::LevelNotKept {
                level: DeidLevel::Anonymised,
            }),
        ),
        (
            "second opinion not kept by a strict site",
            received(Purpose::SecondOpinion, DeidLevel::Identifiable, now + 10, None),
            &strict,
            Err(ForwardCause::PurposeNotKept {
                purpose: Purpose::SecondOpinion,
            }),
        ),
        (
            "locked wins over the purpose",
            received(Purpose::Research, DeidLevel::Identifiable, now + 10, Some(now)),
            &default,
            Err(ForwardCause::Locked),
        ),
    ];
    for (what, origin, config, want) in cases {
        assert_eq!(may_forward(&origin, config, now), want, "{what}");
    }
}

#[test]
fn backoff_doubles_from_min_to_max() {
    let got: Vec<u64> = (0..9).map(|a| backoff(a, 30, 600)).collect();
    assert_eq!(got, vec![30, 30, 60, 120, 240, 480, 600, 600, 600]);
    assert_eq!(backoff(u32::MAX, 30, 3600), 3600);
    assert_eq!(backoff(3, 10, 10), 10);
}

#[test]
fn tallies_name_the_cause() {
    assert_eq!(Tally::default().cause(0), None);
    let t = Tally {
        stored: 2,
        refused: 1,
        last_status: 0xA700,
        ..Tally::default()
    };
    assert_eq!(
        t.cause(3),
        Some(ForwardCause::Refused {
            failed: 1,
            objects: 3,
            status: 0xA700
        })
    );
    let t = Tally {
        stored: 2,
        no_context: 1,
        ..Tally::default()
    };
    assert_eq!(t.cause(3), Some(ForwardCause::NoContext { failed: 1, objects: 3 }));
    let t = Tally {
        unreadable: 1,
        refused: 1,
        ..Tally::default()
    };
    assert_eq!(t.cause(2), Some(ForwardCause::StoreRead { failed: 1 }));
}

fn arb_source() -> impl Strategy<Value = Source> {
    let purposes = prop::sample::select(vec![
        Purpose::Treatment,
        Purpose::SecondOpinion,
        Purpose::Research,
        Purpose::Teaching,
    ]);
    let levels = prop::sample::select(vec![
        DeidLevel::Identifiable,
        DeidLevel::Pseudonymised,
        DeidLevel::Anonymised,
    ]);
    prop_oneof![
        (
            prop::sample::select(vec!["A", "B"]),
            prop::sample::select(vec!["X", "Y"]),
            purposes,
            levels
        )
            .prop_map(|(p, i, purpose, level)| Source::Peer {
                peer: p.into(),
                institution: i.into(),
                purpose,
                level,
            }),
        Just(Source::Import),
        prop::sample::select(vec!["CT01", "PACS"]).prop_map(|a| Source::Scp { calling_ae: a.into() }),
    ]
}

fn arb_arrival() -> impl Strategy<Value = Arrival> {
    (
        arb_source(),
        prop::collection::btree_set(prop::sample::select(vec!["CT", "MR", "US"]), 0..3),
    )
        .prop_map(|(source, m)| Arrival {
            source,
            modalities: m.into_iter().map(String::from).collect(),
        })
}

/// One condition set on a route.
#[derive(Debug, Clone)]
enum Cond {
    Peer(&'static str),
    Institution(&'static str),
    Purpose(&'static str),
    Modality(&'static str),
    Level(RouteLevel),
}

impl Cond {
    /// Sets the condition on a route that has none of its kind (a
    /// condition already set stays: replacing one is not adding one).
    fn apply(&self, r: &mut Route) {
        match self {
            Cond::Peer(p) => r.source_peer = r.source_peer.take().or(Some((*p).into())),
            Cond::Institution(i) => r.institution = r.institution.take().or(Some((*i).into())),
            Cond::Purpose(p) => r.purpose = r.purpose.take().or(Some((*p).into())),
            Cond::Modality(m) => r.modality = r.modality.take().or(Some((*m).into())),
            Cond::Level(l) => r.level = r.level.or(Some(*l)),
        }
    }
}

fn arb_condition() -> impl Strategy<Value = Cond> {
    prop_oneof![
        prop::sample::select(vec!["A", "B"]).prop_map(Cond::Peer),
        prop::sample::select(vec!["X", "Y"]).prop_map(Cond::Institution),
        prop::sample::select(vec!["treatment", "research"]).prop_map(Cond::Purpose),
        prop::sample::select(vec!["CT", "mr"]).prop_map(Cond::Modality),
        prop::sample::select(vec![RouteLevel::Identified, RouteLevel::Deidentified, RouteLevel::Any])
            .prop_map(Cond::Level),
    ]
}

proptest! {
    /// A route with no condition matches every arrival; adding a condition
    /// never widens what a route matches.
    #[test]
    fn conditions_only_narrow(a in arb_arrival(), conds in prop::collection::vec(arb_condition(), 0..5)) {
        let mut r = route("pacs");
        prop_assert!(route_matches(&r, &a));
        let mut before = true;
        for c in &conds {
            c.apply(&mut r);
            let now = route_matches(&r, &a);
            prop_assert!(before || !now, "a condition widened the match");
            before = now;
        }
    }

    /// The destinations are the matching routes' destinations, each once.
    #[test]
    fn destinations_are_the_matching_routes(a in arb_arrival(), conds in prop::collection::vec(arb_condition(), 0..4)) {
        let mut routes = vec![route("pacs"), route("archive")];
        for (i, c) in conds.iter().enumerate() {
            c.apply(&mut routes[i % 2]);
        }
        let peers = [dest("pacs", "PACS"), dest("archive", "ARCHIVE")];
        let got = destinations(&routes, &peers, &a);
        for r in &routes {
            let back_to_sender = matches!(&a.source, Source::Scp { calling_ae } if calling_ae == "PACS") && r.destination == "pacs";
            prop_assert_eq!(got.contains(&r.destination.as_str()), route_matches(r, &a) && !back_to_sender);
        }
        let unique: BTreeSet<&str> = got.iter().copied().collect();
        prop_assert_eq!(unique.len(), got.len());
    }

    /// The back-off stays within its bounds and never shrinks.
    #[test]
    fn backoff_is_bounded_and_monotone(attempts in 0u32..200, min in 1u64..1000, extra in 0u64..100_000) {
        let max = min + extra;
        let b = backoff(attempts, min, max);
        prop_assert!(b >= min && b <= max);
        prop_assert!(backoff(attempts + 1, min, max) >= b);
    }
}
