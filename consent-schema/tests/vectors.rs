//! Test vectors of the consent record encodings and of `evaluate` (docs/vectors/consent-v1.json).
//!
//! Fixed records, requests, policy and times give fixed bytes and decisions (no clock, no
//! randomness). The test decodes the file's own bytes, so the file is an interop reference for
//! other implementations, and checks that they re-encode to the same bytes. Regenerate the file
//! after a deliberate format change with:
//!
//! ```sh
//! MEDMESH_WRITE_VECTORS=1 cargo test -p consent-schema --test vectors
//! ```

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use consent_schema::{
    ConsentDraft, ConsentRecord, ConsentedBy, Coverage, DataPeriod, DeidLevel, LegalBasis, ModalityScope, PatientRef,
    Provision, Purpose, Recipient, RecipientScope, Role, Scope, SeriesFacts, SitePolicy, StudyFacts, TransferRequest,
    evaluate,
};
use serde_json::{Value, json};

const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/vectors/consent-v1.json");

const DESCRIPTION: &str = "medmesh consent records, format version 1, and the transfer decision of \
consent_schema::evaluate. records: each record's compact JSON (exact text) and CBOR (lowercase hex); \
both decode to the same record and re-encode to the same bytes. decisions: evaluate(request, the \
named records, the top-level policy, now) serialised as JSON; the policy is SitePolicy::new(DE), \
the defaults. invalid: inputs every decoder must refuse, with a \
substring of medmesh's error message. Patient pseudonym = 32 x 0x11. Checked by \
consent-schema/tests/vectors.rs; regenerate after a deliberate format change with \
MEDMESH_WRITE_VECTORS=1 cargo test -p consent-schema --test vectors";

fn t(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn patient() -> PatientRef {
    PatientRef::from_bytes([0x11; 32])
}

/// The records, by vector name.
fn records() -> Vec<(&'static str, ConsentRecord)> {
    let permit = ConsentRecord::new(ConsentDraft {
        id: "c-permit-fr".parse().unwrap(),
        patient: patient(),
        consented_by: ConsentedBy::Patient,
        provision: Provision::Permit {
            level: DeidLevel::Identifiable,
        },
        scope: Scope {
            purposes: [Purpose::Treatment, Purpose::SecondOpinion].into(),
            modalities: ModalityScope::All,
            recipients: RecipientScope::Only([Recipient::Jurisdiction("FR".parse().unwrap())].into()),
            coverage: Coverage::WholeRecord,
            data_period: None,
        },
        valid_from: t("2026-01-01T00:00:00Z"),
        valid_until: Some(t("2027-01-01T00:00:00Z")),
        withdrawn_at: None,
        legal_basis: LegalBasis::new("GDPR-9.2.h", "treatment and second opinions in France").unwrap(),
    })
    .unwrap();
    let waiver = ConsentRecord::new(ConsentDraft {
        id: "c-waiver-research".parse().unwrap(),
        patient: patient(),
        consented_by: ConsentedBy::EthicsBoardWaiver,
        provision: Provision::Permit {
            level: DeidLevel::Pseudonymised,
        },
        scope: Scope {
            purposes: [Purpose::Research].into(),
            modalities: ModalityScope::Only(["CT".parse().unwrap(), "MR".parse().unwrap()].into()),
            recipients: RecipientScope::Any,
            coverage: Coverage::Studies(["s-100".parse().unwrap(), "s-101".parse().unwrap()].into()),
            data_period: Some(DataPeriod {
                from: Some(t("2020-01-01T00:00:00Z")),
                until: Some(t("2026-01-01T00:00:00Z")),
            }),
        },
        valid_from: t("2026-02-01T00:00:00Z"),
        valid_until: None,
        withdrawn_at: None,
        legal_basis: LegalBasis::new("GDPR-9.2.j", "ethics board waiver EK-2026-017").unwrap(),
    })
    .unwrap();
    let deny = ConsentRecord::new(ConsentDraft {
        id: "c-deny-guardian".parse().unwrap(),
        patient: patient(),
        consented_by: ConsentedBy::LegalGuardian,
        provision: Provision::Deny,
        scope: Scope {
            purposes: [Purpose::Treatment, Purpose::SecondOpinion, Purpose::Research].into(),
            modalities: ModalityScope::All,
            recipients: RecipientScope::Any,
            coverage: Coverage::Episode("ep-7".parse().unwrap()),
            data_period: None,
        },
        valid_from: t("2026-01-15T00:00:00Z"),
        valid_until: None,
        withdrawn_at: Some(t("2026-06-01T09:30:00Z")),
        legal_basis: LegalBasis::new("GDPR-21", "objection by the legal guardian").unwrap(),
    })
    .unwrap();
    vec![
        ("permit-patient-fr", permit),
        ("permit-waiver-research", waiver),
        ("deny-guardian-episode", deny),
    ]
}

fn series(list: &[(&str, &str)]) -> Vec<SeriesFacts> {
    list.iter()
        .map(|(s, m)| SeriesFacts {
            series: s.parse().unwrap(),
            modality: m.parse().unwrap(),
        })
        .collect()
}

fn request(
    jurisdiction: &str,
    purpose: Purpose,
    role: Role,
    requested_level: Option<DeidLevel>,
    study: StudyFacts,
) -> TransferRequest {
    TransferRequest {
        peer: format!("12D3KooWVectorPeer{jurisdiction}").parse().unwrap(),
        institution: format!("Vector Hospital {jurisdiction}").parse().unwrap(),
        jurisdiction: jurisdiction.parse().unwrap(),
        consortia: Default::default(),
        purpose,
        role,
        requested_level,
        study,
    }
}

struct DecisionCase {
    name: &'static str,
    consents: &'static [&'static str],
    request: TransferRequest,
    now: &'static str,
}

const ALL: &[&str] = &["permit-patient-fr", "permit-waiver-research", "deny-guardian-episode"];

fn decision_cases() -> Vec<DecisionCase> {
    let ct_study = |study: &str, episode: Option<&str>| StudyFacts {
        study: study.parse().unwrap(),
        patient: patient(),
        episode: episode.map(|e| e.parse().unwrap()),
        acquired_at: Some(t("2026-02-20T08:15:00Z")),
        series: series(&[("se-1", "CT")]),
    };
    let research_study = StudyFacts {
        study: "s-100".parse().unwrap(),
        patient: patient(),
        episode: None,
        acquired_at: Some(t("2025-05-01T10:00:00Z")),
        series: series(&[("se-1", "CT"), ("se-2", "SR"), ("se-3", "MR")]),
    };
    vec![
        DecisionCase {
            name: "allow-second-opinion-fr",
            consents: ALL,
            request: request(
                "FR",
                Purpose::SecondOpinion,
                Role::Radiologist,
                None,
                ct_study("s-42", None),
            ),
            now: "2026-03-01T12:00:00Z",
        },
        DecisionCase {
            name: "deny-by-guardian-episode",
            consents: ALL,
            request: request(
                "FR",
                Purpose::SecondOpinion,
                Role::Radiologist,
                None,
                ct_study("s-43", Some("ep-7")),
            ),
            now: "2026-03-01T12:00:00Z",
        },
        DecisionCase {
            name: "allow-after-deny-withdrawn",
            consents: ALL,
            request: request(
                "FR",
                Purpose::Treatment,
                Role::Clinician,
                Some(DeidLevel::Identifiable),
                ct_study("s-43", Some("ep-7")),
            ),
            now: "2026-12-20T00:00:00Z",
        },
        DecisionCase {
            name: "deny-level-below-required",
            consents: ALL,
            request: request(
                "US",
                Purpose::Research,
                Role::Researcher,
                Some(DeidLevel::Identifiable),
                research_study.clone(),
            ),
            now: "2026-03-01T12:00:00Z",
        },
        DecisionCase {
            name: "deny-not-covered",
            consents: &["permit-patient-fr"],
            request: request("US", Purpose::Teaching, Role::Educator, None, ct_study("s-42", None)),
            now: "2026-03-01T12:00:00Z",
        },
        DecisionCase {
            name: "needs-approval-research-waiver",
            consents: ALL,
            request: request("DE", Purpose::Research, Role::Researcher, None, research_study),
            now: "2026-03-01T12:00:00Z",
        },
    ]
}

fn site_policy() -> SitePolicy {
    SitePolicy::new("DE".parse().unwrap())
}

/// Inputs every decoder must refuse: (name, encoding, input, substring of the error message).
fn invalid(records: &[(&'static str, ConsentRecord)]) -> Vec<(&'static str, &'static str, String, &'static str)> {
    let base = &records[0].1;
    // CBOR with version 2: the record's own map with the `version` value replaced.
    let mut value: ciborium::Value = ciborium::from_reader(base.to_cbor().as_slice()).unwrap();
    for (k, v) in value.as_map_mut().unwrap() {
        if k.as_text() == Some("version") {
            *v = ciborium::Value::Integer(2.into());
        }
    }
    let mut cbor_v2 = Vec::new();
    ciborium::into_writer(&value, &mut cbor_v2).unwrap();
    // JSON with an unknown field, spliced in as text so that the field order stays the record's.
    let json = base.to_json();
    let json_unknown = format!("{{\"extra\":1,{}", json.strip_prefix('{').unwrap());
    vec![
        (
            "cbor-version-2",
            "cbor",
            hex::encode(cbor_v2),
            "consent record format version 2 is not supported",
        ),
        ("json-unknown-field", "json", json_unknown, "unknown field `extra`"),
    ]
}

fn generate() -> Value {
    let records = records();
    let by_name: BTreeMap<&str, &ConsentRecord> = records.iter().map(|(n, r)| (*n, r)).collect();
    let policy = site_policy();
    let decisions: Vec<Value> = decision_cases()
        .into_iter()
        .map(|c| {
            let consents: Vec<ConsentRecord> = c.consents.iter().map(|n| by_name[n].clone()).collect();
            let decision = evaluate(&c.request, &consents, &policy, t(c.now));
            json!({
                "name": c.name,
                "consents": c.consents,
                "request": c.request,
                "now": c.now,
                "decision": decision,
            })
        })
        .collect();
    json!({
        "description": DESCRIPTION,
        "policy": policy,
        "records": records.iter().map(|(name, r)| json!({
            "name": name,
            "json": r.to_json(),
            "cbor": hex::encode(r.to_cbor()),
        })).collect::<Vec<_>>(),
        "decisions": decisions,
        "invalid": invalid(&records).into_iter().map(|(name, encoding, input, error)| json!({
            "name": name,
            "encoding": encoding,
            "input": input,
            "error": error,
        })).collect::<Vec<_>>(),
    })
}

fn decode(encoding: &str, input: &str) -> Result<ConsentRecord, consent_schema::CodecError> {
    match encoding {
        "json" => ConsentRecord::from_json(input),
        "cbor" => ConsentRecord::from_cbor(&hex::decode(input).unwrap()),
        other => panic!("unknown encoding {other}"),
    }
}

#[test]
fn consent_vectors() {
    let generated = generate();
    if std::env::var_os("MEDMESH_WRITE_VECTORS").is_some_and(|v| v == "1") {
        std::fs::write(FILE, serde_json::to_string_pretty(&generated).unwrap() + "\n").unwrap();
    }
    let file: Value = serde_json::from_str(&std::fs::read_to_string(FILE).unwrap()).unwrap();
    let s = |v: &Value| v.as_str().unwrap().to_string();

    // Records: decode the file's JSON and CBOR, compare with the fixed records, re-encode.
    let fixed: BTreeMap<&str, ConsentRecord> = records().into_iter().collect();
    let mut decoded: BTreeMap<String, ConsentRecord> = BTreeMap::new();
    let file_records = file["records"].as_array().unwrap();
    assert_eq!(file_records.len(), fixed.len(), "number of records");
    for v in file_records {
        let name = s(&v["name"]);
        let (json_text, cbor_hex) = (s(&v["json"]), s(&v["cbor"]));
        let from_json = ConsentRecord::from_json(&json_text).unwrap();
        let from_cbor = ConsentRecord::from_cbor(&hex::decode(&cbor_hex).unwrap()).unwrap();
        assert_eq!(
            from_json, from_cbor,
            "{name}: JSON and CBOR decode to different records"
        );
        assert_eq!(
            &from_json,
            fixed.get(name.as_str()).unwrap(),
            "{name} differs from the fixed record"
        );
        assert_eq!(
            from_json.to_json(),
            json_text,
            "{name}: JSON does not re-encode to the same text"
        );
        assert_eq!(
            hex::encode(from_cbor.to_cbor()),
            cbor_hex,
            "{name}: CBOR does not re-encode to the same bytes"
        );
        decoded.insert(name, from_json);
    }

    // Decisions: policy, request and consents from the file, the decision must equal the file's.
    let policy: SitePolicy = serde_json::from_value(file["policy"].clone()).unwrap();
    assert_eq!(policy, site_policy(), "policy differs from the fixed policy");
    let file_decisions = file["decisions"].as_array().unwrap();
    assert_eq!(file_decisions.len(), decision_cases().len(), "number of decisions");
    for v in file_decisions {
        let name = s(&v["name"]);
        let request: TransferRequest = serde_json::from_value(v["request"].clone()).unwrap();
        let consents: Vec<ConsentRecord> = v["consents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| decoded[n.as_str().unwrap()].clone())
            .collect();
        let now = t(v["now"].as_str().unwrap());
        let decision = serde_json::to_value(evaluate(&request, &consents, &policy, now)).unwrap();
        assert_eq!(decision, v["decision"], "{name}: decision differs");
    }

    // Invalid inputs: each must fail with the stored message.
    let file_invalid = file["invalid"].as_array().unwrap();
    assert_eq!(
        file_invalid.len(),
        invalid(&records()).len(),
        "number of invalid vectors"
    );
    for v in file_invalid {
        let name = s(&v["name"]);
        let err = decode(v["encoding"].as_str().unwrap(), v["input"].as_str().unwrap())
            .expect_err(&name)
            .to_string();
        assert!(err.contains(v["error"].as_str().unwrap()), "{name}: {err}");
    }

    // Last, the whole file against what this build generates (description, inputs, order).
    for key in ["description", "policy", "records", "decisions", "invalid"] {
        assert_eq!(
            file[key], generated[key],
            "{key} differs from docs/vectors/consent-v1.json (rewrite it with MEDMESH_WRITE_VECTORS=1 after a deliberate change)"
        );
    }
    assert_eq!(file, generated);
}
