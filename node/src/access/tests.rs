//! Table tests of `access`: every (role, operation) pair, the purposes of requests, the wire
//! roles, and the table in docs/OPERATIONS.md.
use super::*;

use Operation as O;
use SiteRole as R;

/// Every grant, written out independently of `TABLE`: any pair not listed is denied.
const GRANTED: &[(SiteRole, Operation)] = &[
    (R::SiteAdmin, O::SeeStatus),
    (R::SiteAdmin, O::ManageTrust),
    (R::SiteAdmin, O::ManageGateway),
    (R::SiteAdmin, O::VerifyLedger),
    (R::DataSteward, O::SeeStatus),
    (R::DataSteward, O::RequestStudy),
    (R::DataSteward, O::DecideApproval),
    (R::DataSteward, O::ManageConsents),
    (R::DataSteward, O::ReadLedger),
    (R::Clinician, O::SeeStatus),
    (R::Clinician, O::RequestStudy),
    (R::Clinician, O::ViewStudy),
    (R::Clinician, O::ViewDeidentified),
    (R::Radiologist, O::SeeStatus),
    (R::Radiologist, O::RequestStudy),
    (R::Radiologist, O::ViewStudy),
    (R::Radiologist, O::ViewDeidentified),
    (R::Researcher, O::SeeStatus),
    (R::Researcher, O::RequestStudy),
    (R::Researcher, O::ViewDeidentified),
    (R::PrivacyOfficer, O::SeeStatus),
    (R::PrivacyOfficer, O::ReadLedger),
    (R::PrivacyOfficer, O::VerifyLedger),
    (R::PrivacyOfficer, O::ReadNotifications),
    (R::PrivacyOfficer, O::RelinkPseudonym),
    (R::Auditor, O::SeeStatus),
    (R::Auditor, O::ReadLedger),
    (R::Auditor, O::VerifyLedger),
    (R::Auditor, O::ReadNotifications),
];

#[test]
fn every_role_and_operation() {
    let mut wrong = Vec::new();
    for role in SiteRole::ALL {
        for op in Operation::ALL {
            let want = GRANTED.contains(&(role, op));
            if permits(role, op) != want {
                wrong.push(format!("{role} {op}: expected {want}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    assert_eq!(SiteRole::ALL.len() * Operation::ALL.len(), 84);
}

#[test]
fn purposes_a_role_may_request_for() {
    use Purpose::{PublicHealth, Quality, Research, SecondOpinion, Teaching, Treatment};
    let table: [(SiteRole, &[Purpose]); 7] = [
        (R::SiteAdmin, &[]),
        (R::DataSteward, &[Research, Quality, PublicHealth]),
        (R::Clinician, &[Treatment, SecondOpinion]),
        (R::Radiologist, &[Treatment, SecondOpinion, Teaching]),
        (R::Researcher, &[Research]),
        (R::PrivacyOfficer, &[]),
        (R::Auditor, &[]),
    ];
    for (role, purposes) in table {
        assert_eq!(request_purposes(role), purposes, "{role}");
        for p in Purpose::ALL {
            assert_eq!(may_request(role, p), purposes.contains(&p), "{role} {p}");
        }
    }
}

#[test]
fn the_wire_role_of_a_request() {
    let table = [
        (R::SiteAdmin, None),
        (R::DataSteward, Some(Role::DataSteward)),
        (R::Clinician, Some(Role::Clinician)),
        (R::Radiologist, Some(Role::Radiologist)),
        (R::Researcher, Some(Role::Researcher)),
        (R::PrivacyOfficer, None),
        (R::Auditor, None),
    ];
    for (role, wire) in table {
        assert_eq!(role.wire_role(), wire, "{role}");
        // A role that may request has a wire role to carry, and only such a role.
        assert_eq!(wire.is_some(), permits(role, O::RequestStudy), "{role}");
    }
}

#[test]
fn the_rules_a_privacy_officer_signs_off() {
    for role in SiteRole::ALL {
        // Only the privacy officer re-links a pseudonym.
        assert_eq!(permits(role, O::RelinkPseudonym), role == R::PrivacyOfficer, "{role}");
        // Only the data steward decides requests and manages consents.
        assert_eq!(permits(role, O::DecideApproval), role == R::DataSteward, "{role}");
        assert_eq!(permits(role, O::ManageConsents), role == R::DataSteward, "{role}");
        // Only the site admin manages trust and the gateway.
        assert_eq!(permits(role, O::ManageTrust), role == R::SiteAdmin, "{role}");
        assert_eq!(permits(role, O::ManageGateway), role == R::SiteAdmin, "{role}");
        // Nobody who decides requests or keeps trust sees identifiable studies.
        if permits(role, O::ViewStudy) {
            assert!(matches!(role, R::Clinician | R::Radiologist), "{role}");
        }
    }
    // The auditor only reads.
    let auditor: Vec<Operation> = Operation::ALL.into_iter().filter(|o| permits(R::Auditor, *o)).collect();
    assert_eq!(
        auditor,
        [O::SeeStatus, O::ReadLedger, O::VerifyLedger, O::ReadNotifications]
    );
    // The researcher requests research only and sees only de-identified studies.
    assert_eq!(request_purposes(R::Researcher), [Purpose::Research]);
    assert!(!permits(R::Researcher, O::ViewStudy));
    // The site admin sees no patient data and cannot re-link.
    for op in [
        O::ViewStudy,
        O::ViewDeidentified,
        O::RelinkPseudonym,
        O::ReadNotifications,
    ] {
        assert!(!permits(R::SiteAdmin, op), "{op}");
    }
}

#[test]
fn the_table_is_well_formed() {
    let rows: Vec<Operation> = TABLE.iter().map(|(o, _)| *o).collect();
    assert_eq!(rows, Operation::ALL, "one row per operation, in order");
    for (op, cells) in &TABLE {
        for (role, cell) in SiteRole::ALL.into_iter().zip(cells) {
            assert_eq!(SiteRole::ALL[role.column()], role);
            match cell {
                Grant::For(p) => {
                    assert_eq!(*op, O::RequestStudy, "purposes only on requests");
                    assert!(!p.is_empty(), "{role}: an empty list must be No");
                }
                Grant::Yes => assert_ne!(*op, O::RequestStudy, "requests are granted per purpose"),
                Grant::No => {}
            }
        }
    }
}

#[test]
fn names_round_trip() {
    for r in SiteRole::ALL {
        assert_eq!(r.as_str().parse::<SiteRole>(), Ok(r));
        assert_eq!(serde_json::to_string(&r).unwrap(), format!("\"{r}\""));
        assert_eq!(serde_json::from_str::<SiteRole>(&format!("\"{r}\"")).unwrap(), r);
    }
    for o in Operation::ALL {
        assert_eq!(o.as_str().parse::<Operation>(), Ok(o));
        assert_eq!(serde_json::to_string(&o).unwrap(), format!("\"{o}\""));
    }
    assert_eq!(
        "admin".parse::<SiteRole>().unwrap_err().to_string(),
        "unknown site role \"admin\" (expected site-admin, data-steward, clinician, radiologist, researcher, privacy-officer or auditor)"
    );
    assert!("Site-Admin".parse::<SiteRole>().is_err());
    assert!("relink".parse::<Operation>().is_err());
}

/// The table in docs/OPERATIONS.md is the one of the code, between its markers.
#[test]
fn operations_md_has_the_table_of_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/OPERATIONS.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let begin = "<!-- permission table: generated by node/src/access.rs, checked by its tests -->\n";
    let end = "<!-- end of permission table -->";
    let start = doc.find(begin).expect("begin marker in OPERATIONS.md") + begin.len();
    let stop = start + doc[start..].find(end).expect("end marker in OPERATIONS.md");
    let table = markdown_table();
    assert_eq!(
        &doc[start..stop],
        table,
        "docs/OPERATIONS.md differs from access::markdown_table(); paste this between the markers:\n{table}"
    );
}
