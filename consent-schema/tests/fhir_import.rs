//! FHIR R4 Consent import against the published HL7 examples and our own imaging consents.
//!
//! Each published example (`tests/data/fhir/Consent-*.json`, see `SOURCE.md`) has one test
//! that asserts either the exact records or the exact refusal (element path and reason). Most
//! of them are refused: they scope consent to practitioners, security labels, lab orders or
//! emergency treatment, which medmesh cannot represent without widening.

#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

use std::collections::BTreeSet;
use std::path::Path;

use consent_schema::fhir::{FhirError, FhirPatient, ImportContext, Refusal, import_consent, import_consent_str};
use consent_schema::{ConsentRecord, ConsentedBy, PatientRef, Purpose, Recipient};
use serde_json::{Value, json};

fn data(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fhir").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Stands in for the node's keyed hash: a fixed pseudonym per known patient.
fn pseudonymise(p: &FhirPatient<'_>) -> Option<PatientRef> {
    match (p.identifier_value, p.reference) {
        (Some("MRN-0042"), _) | (None, Some("Patient/p-1001")) => Some(PatientRef::from_bytes([0x42; 32])),
        (None, Some("Patient/f001")) => Some(PatientRef::from_bytes([0xf1; 32])),
        (None, Some("Patient/example" | "Patient/72" | "Patient/xcda")) => Some(PatientRef::from_bytes([0xee; 32])),
        _ => None,
    }
}

const P_F001: &str = "f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1f1";
const P_1001: &str = "4242424242424242424242424242424242424242424242424242424242424242";

/// The context of a site whose own organisation is `Organization/f001` (the custodian in the
/// HL7 examples) and whose consent forms are signed by the patient.
fn site() -> ImportContext<'static> {
    ImportContext::new(&pseudonymise)
        .custodian("Organization/f001")
        .custodian("Organization/site")
        .assume_consented_by(ConsentedBy::Patient)
}

fn records(name: &str, ctx: &ImportContext<'_>) -> Vec<Value> {
    let records = import_consent_str(&data(name), ctx).unwrap_or_else(|e| panic!("{name}: {e}"));
    for r in &records {
        // Raw patient identifiers never reach a record.
        let text = r.to_json();
        for raw in ["f001", "p-1001", "MRN-0042"] {
            assert!(
                !text.contains(&format!("Patient/{raw}")) && !text.contains("MRN-0042"),
                "{text}"
            );
        }
        assert_eq!(&ConsentRecord::from_json(&text).unwrap(), r);
    }
    records
        .iter()
        .map(|r| serde_json::from_str(&r.to_json()).unwrap())
        .collect()
}

fn refusal(name: &str, ctx: &ImportContext<'_>) -> (String, String) {
    match import_consent_str(&data(name), ctx) {
        Err(FhirError::Refused { path, reason }) => (path, reason.to_string()),
        other => panic!("{name}: expected a refusal, got {other:?}"),
    }
}

fn assert_refused(name: &str, ctx: &ImportContext<'_>, path: &str, reason: &str) {
    assert_eq!(refusal(name, ctx), (path.to_owned(), reason.to_owned()), "{name}");
}

const NO_PURPOSE: &str = "missing: FHIR reads a permit without purpose as every purpose, which medmesh does not import; name the purposes or configure the purposes to assume";

#[test]
fn example_basic() {
    assert_refused(
        "Consent-consent-example-basic.json",
        &site(),
        "Consent.provision.purpose",
        NO_PURPOSE,
    );
    // A site that reads its purpose-less opt-ins as treatment only (a narrowing).
    let ctx = site().purposes_when_unspecified([Purpose::Treatment]);
    assert_eq!(
        records("Consent-consent-example-basic.json", &ctx),
        vec![json!({
            "version": 1,
            "id": "consent-example-basic",
            "patient": P_F001,
            "consented_by": "patient",
            "provision": {"permit": {"level": "identifiable"}},
            "scope": {"purposes": ["treatment"], "modalities": "all", "recipients": "any", "coverage": "whole-record"},
            "valid_from": "1964-01-01T00:00:00Z",
            // Period.end 2016-01-01 includes that whole day.
            "valid_until": "2016-01-02T00:00:00Z",
            "legal_basis": {"code": "OPTIN", "text": "http://terminology.hl7.org/CodeSystem/v3-ActCode#OPTIN"}
        })]
    );
}

#[test]
fn example_out() {
    // OPTOUT without a provision type: a deny of every purpose, to anyone.
    assert_eq!(
        records("Consent-consent-example-Out.json", &site()),
        vec![json!({
            "version": 1,
            "id": "consent-example-Out",
            "patient": P_F001,
            "consented_by": "patient",
            "provision": "deny",
            "scope": {
                "purposes": ["treatment", "second-opinion", "research", "teaching", "quality", "public-health"],
                "modalities": "all",
                "recipients": "any",
                "coverage": "whole-record"
            },
            "valid_from": "2015-11-18T00:00:00Z",
            "legal_basis": {"code": "OPTOUT", "text": "http://terminology.hl7.org/CodeSystem/v3-ActCode#OPTOUT"}
        })]
    );
    // Without knowing that Organization/f001 is this site, the custodian actor is refused.
    let ctx = ImportContext::new(&pseudonymise).assume_consented_by(ConsentedBy::Patient);
    assert_refused(
        "Consent-consent-example-Out.json",
        &ctx,
        "Consent.provision.actor[0].reference",
        "the custodian is not this site (configure the site's own references), so the rule is not about data held here",
    );
    // Nor without knowing who consented.
    let ctx = ImportContext::new(&pseudonymise).custodian("Organization/f001");
    assert_refused(
        "Consent-consent-example-Out.json",
        &ctx,
        "Consent.performer",
        "missing: cannot tell who consented (configure whom to assume if the site's forms are always signed by the patient)",
    );
}

#[test]
fn example_emergency() {
    assert_refused(
        "Consent-consent-example-Emergency.json",
        &site(),
        "Consent.provision.purpose[0]",
        "ActReason ETREAT has no exact medmesh purpose: it is a specialisation of TREAT",
    );
}

#[test]
fn example_grantor() {
    assert_refused(
        "Consent-consent-example-grantor.json",
        &site(),
        "Consent.provision.actor[1].reference",
        "a Patient cannot be a recipient: medmesh scopes consent to nodes, institutions, jurisdictions and consortia",
    );
}

#[test]
fn example_not_author() {
    assert_refused(
        "Consent-consent-example-notAuthor.json",
        &site(),
        "Consent.provision.purpose",
        NO_PURPOSE,
    );
}

#[test]
fn example_not_org() {
    assert_refused(
        "Consent-consent-example-notOrg.json",
        &site(),
        "Consent.provision.actor[0].reference",
        "cannot tell which institution Organization/f001 is (no identifier or display; map it in the import context)",
    );
    // Mapped to an institution, it is a deny for that recipient ("access" is denied, which
    // covers transfers).
    let ctx = site().organization(
        "Organization/f001",
        Recipient::Institution("Good Health Clinic".parse().unwrap()),
    );
    assert_eq!(
        records("Consent-consent-example-notOrg.json", &ctx),
        vec![json!({
            "version": 1,
            "id": "consent-example-notOrg",
            "patient": P_F001,
            "consented_by": "patient",
            "provision": "deny",
            "scope": {
                "purposes": ["treatment", "second-opinion", "research", "teaching", "quality", "public-health"],
                "modalities": "all",
                "recipients": {"only": [{"institution": "Good Health Clinic"}]},
                "coverage": "whole-record"
            },
            "valid_from": "2015-11-18T00:00:00Z",
            "legal_basis": {"code": "OPTIN", "text": "http://terminology.hl7.org/CodeSystem/v3-ActCode#OPTIN"}
        })]
    );
}

#[test]
fn example_not_them() {
    assert_refused(
        "Consent-consent-example-notThem.json",
        &site(),
        "Consent.provision.actor[0].reference",
        "a Practitioner cannot be a recipient: medmesh scopes consent to nodes, institutions, jurisdictions and consortia",
    );
}

#[test]
fn example_not_this() {
    assert_refused(
        "Consent-consent-example-notThis.json",
        &site(),
        "Consent.provision.data[0]",
        "Task with meaning related cannot be mapped (medmesh scopes data to ImagingStudy instance/dependents or one EpisodeOfCare related)",
    );
}

#[test]
fn example_not_time() {
    assert_refused(
        "Consent-consent-example-notTime.json",
        &site(),
        "Consent.provision.purpose",
        NO_PURPOSE,
    );
    let ctx = site().purposes_when_unspecified([Purpose::Treatment, Purpose::SecondOpinion]);
    let got = records("Consent-consent-example-notTime.json", &ctx);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["scope"]["purposes"], json!(["treatment", "second-opinion"]));
    assert_eq!(got[0]["valid_from"], "2015-01-01T00:00:00Z");
    assert_eq!(got[0]["valid_until"], "2015-02-02T00:00:00Z");
}

#[test]
fn example_pkb() {
    assert_refused(
        "Consent-consent-example-pkb.json",
        &site(),
        "Consent.provision.actor[0].reference",
        "cannot tell which institution Organization/f001 is (no identifier or display; map it in the import context)",
    );
    let ctx = site().organization(
        "Organization/f001",
        Recipient::Institution("Good Health Clinic".parse().unwrap()),
    );
    assert_refused(
        "Consent-consent-example-pkb.json",
        &ctx,
        "Consent.provision.securityLabel",
        "medmesh cannot select data by security label; the rule would apply to more or less data than intended",
    );
}

#[test]
fn example_signature() {
    assert_refused(
        "Consent-consent-example-signature.json",
        &site(),
        "Consent.provision.actor[0].reference",
        "a Practitioner cannot be a recipient: medmesh scopes consent to nodes, institutions, jurisdictions and consortia",
    );
}

#[test]
fn example_smartonfhir() {
    // The performer is a RelatedPerson: the legal guardian. No purpose: refused.
    assert_refused(
        "Consent-consent-example-smartonfhir.json",
        &site(),
        "Consent.provision.purpose",
        NO_PURPOSE,
    );
    let ctx = site().purposes_when_unspecified([Purpose::Treatment]);
    assert_refused(
        "Consent-consent-example-smartonfhir.json",
        &ctx,
        "Consent.provision.provision[0].type",
        "a nested provision of the same type as its parent has no agreed meaning (a further restriction or an addition); not imported",
    );
}

#[test]
fn synthetic_imaging_research_permit() {
    let ctx = site().level(consent_schema::DeidLevel::Pseudonymised);
    assert_eq!(
        records("synthetic/imaging-research-permit.json", &ctx),
        vec![json!({
            "version": 1,
            "id": "mm-research-7",
            "patient": P_1001,
            "consented_by": "patient",
            "provision": {"permit": {"level": "pseudonymised"}},
            "scope": {
                "purposes": ["research"],
                "modalities": {"only": ["CT", "MR"]},
                "recipients": {"only": [{"institution": "Charité"}]},
                "coverage": "whole-record",
                "data_period": {"from": "2020-01-01T00:00:00Z"}
            },
            "valid_from": "2026-01-01T00:00:00Z",
            "valid_until": "2031-01-01T00:00:00Z",
            "legal_basis": {
                "code": "GDPR-9.2.a",
                "text": "https://medmesh.example/fhir/CodeSystem/legal-basis#GDPR-9.2.a (explicit consent (GDPR Art. 9(2)(a))); policy https://eur-lex.europa.eu/eli/reg/2016/679/oj#d1e2051-1-1"
            }
        })]
    );
}

#[test]
fn synthetic_treatment_with_nested_deny() {
    let ctx = ImportContext::new(&pseudonymise).custodian("Organization/site");
    let common = json!({
        "version": 1,
        "patient": P_1001,
        "consented_by": "legal-guardian",
        "legal_basis": {"code": "OPTIN", "text": "http://terminology.hl7.org/CodeSystem/v3-ActCode#OPTIN"}
    });
    let with = |extra: Value| {
        let mut v = common.clone();
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        v
    };
    assert_eq!(
        records("synthetic/imaging-treatment-with-deny.json", &ctx),
        vec![
            with(json!({
                "id": "mm-treat-3",
                "provision": {"permit": {"level": "identifiable"}},
                "scope": {
                    "purposes": ["treatment"],
                    "modalities": "all",
                    "recipients": "any",
                    "coverage": {"episode": "EpisodeOfCare/stay-2026-17"}
                },
                "valid_from": "2026-02-03T00:00:00Z",
                "valid_until": "2027-01-01T00:00:00Z"
            })),
            // The nested deny keeps its parent's purpose, coverage and period, and narrows
            // recipient and modality.
            with(json!({
                "id": "mm-treat-3/provision[0]",
                "provision": "deny",
                "scope": {
                    "purposes": ["treatment"],
                    "modalities": {"only": ["MR"]},
                    "recipients": {"only": [{"institution": "Vivantes Klinikum Neukölln"}]},
                    "coverage": {"episode": "EpisodeOfCare/stay-2026-17"}
                },
                "valid_from": "2026-02-03T00:00:00Z",
                "valid_until": "2027-01-01T00:00:00Z"
            })),
        ]
    );
}

/// The variants of [`Refusal`], read from its declaration, so that a new cause fails
/// [`synthetic_refusals`] until a case produces it.
fn refusal_variants() -> BTreeSet<String> {
    let src = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/fhir.rs")).unwrap();
    let start = src.find("pub enum Refusal {").unwrap();
    let body = &src[start..start + src[start..].find("\n}\n").unwrap()];
    let variants: BTreeSet<String> = body
        .lines()
        .skip(1)
        .filter_map(|l| l.strip_prefix("    "))
        .filter(|l| l.starts_with(|c: char| c.is_ascii_uppercase()))
        .map(|l| l.chars().take_while(char::is_ascii_alphanumeric).collect())
        .collect();
    assert!(variants.len() > 40, "{variants:?}");
    variants
}

/// The variant's name (`NotAConsent`), from its `Debug` form.
fn variant(r: &Refusal) -> String {
    format!("{r:?}")
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect()
}

/// Variations of the research permit, each refused at one element; together they produce
/// every [`Refusal`].
#[test]
fn synthetic_refusals() {
    let base: Value = serde_json::from_str(&data("synthetic/imaging-research-permit.json")).unwrap();
    type Edit = fn(&mut Value);
    let site = site();
    let cases: Vec<(&str, Edit, &str, &str)> = vec![
        (
            "inactive",
            |v| v["status"] = json!("inactive"),
            "Consent.status",
            "the consent has ended; withdraw the record imported earlier instead of importing this one",
        ),
        (
            "draft",
            |v| v["status"] = json!("draft"),
            "Consent.status",
            "the consent is not agreed yet; import it once it is active",
        ),
        (
            "not a Consent",
            |v| v["resourceType"] = json!("Patient"),
            "Consent.resourceType",
            "a Patient is not a Consent",
        ),
        (
            "treatment scope",
            |v| v["scope"]["coding"][0]["code"] = json!("treatment"),
            "Consent.scope",
            "scope treatment is not about sharing data (medmesh imports patient-privacy and research consents)",
        ),
        (
            "STU3 element",
            |v| v["except"] = json!([]),
            "Consent.except",
            "not an element of an R4 Consent at this place",
        ),
        (
            "modifier extension",
            |v| v["provision"]["modifierExtension"] = json!([{"url": "x"}]),
            "Consent.provision.modifierExtension",
            "a modifier extension may change the meaning; not supported",
        ),
        (
            "implicit rules",
            |v| v["implicitRules"] = json!("http://x"),
            "Consent.implicitRules",
            "implicit rules may change the meaning of the resource; not supported",
        ),
        (
            "no id",
            |v| {
                v.as_object_mut().unwrap().remove("id");
            },
            "Consent.id",
            "missing; medmesh needs a stable id to update or withdraw the record later",
        ),
        (
            "unknown patient",
            |v| v["patient"] = json!({"reference": "Patient/unknown"}),
            "Consent.patient",
            "the site cannot match this patient: give an identifier (identifier.value) it knows, or map the reference to a patient ID",
        ),
        (
            "practitioner grantor",
            |v| v["performer"] = json!([{"reference": "Practitioner/dr-x"}]),
            "Consent.performer[0]",
            "a Practitioner as grantor cannot be mapped (medmesh records consent by the patient, a legal guardian or an ethics-board waiver; record waivers through the node)",
        ),
        (
            "no legal basis",
            |v| {
                let o = v.as_object_mut().unwrap();
                o.remove("policy");
                o.remove("policyRule");
            },
            "Consent.policyRule",
            "neither policyRule nor policy is present (R4 invariant ppc-1): no legal basis",
        ),
        (
            "no type and no OPTIN/OPTOUT",
            |v| {
                v["provision"].as_object_mut().unwrap().remove("type");
            },
            "Consent.provision.type",
            "missing, and the policyRule is neither OPTIN nor OPTOUT, so it does not say whether the rule permits or denies",
        ),
        (
            "clinical trial research",
            |v| v["provision"]["purpose"][0]["code"] = json!("CLINTRCH"),
            "Consent.provision.purpose[0]",
            "ActReason CLINTRCH has no exact medmesh purpose: it is a specialisation of HRESCH",
        ),
        (
            "purpose from another system",
            |v| v["provision"]["purpose"][0]["system"] = json!("http://snomed.info/sct"),
            "Consent.provision.purpose[0]",
            "http://snomed.info/sct#HRESCH is not a v3 ActReason purpose (http://terminology.hl7.org/CodeSystem/v3-ActReason)",
        ),
        (
            "access only",
            |v| v["provision"]["action"][0]["coding"][0]["code"] = json!("access"),
            "Consent.provision.action",
            "permits access but not disclose; a transfer to another site is a disclosure",
        ),
        (
            "SOP class",
            |v| {
                v["provision"]["class"] =
                    json!([{"system": "urn:ietf:rfc:3986", "code": "urn:oid:1.2.840.10008.5.1.4.1.1.2"}])
            },
            "Consent.provision.class[0]",
            "scoping by DICOM SOP class is not supported; scope by modality with provision.code (DICOM CID 33)",
        ),
        (
            "not imaging",
            |v| {
                v["provision"]["class"] =
                    json!([{"system": "http://hl7.org/fhir/resource-types", "code": "MedicationRequest"}])
            },
            "Consent.provision.class[0]",
            "http://hl7.org/fhir/resource-types#MedicationRequest is not imaging data; the rule does not concern what medmesh holds",
        ),
        (
            "LOINC code",
            |v| v["provision"]["code"][1] = json!({"coding": [{"system": "http://loinc.org", "code": "18748-4"}]}),
            "Consent.provision.code[1]",
            "not a DICOM modality (a DCM code of CID 33); medmesh can scope data by modality only",
        ),
        (
            "security label",
            |v| v["provision"]["securityLabel"] = json!([{"code": "R"}]),
            "Consent.provision.securityLabel",
            "medmesh cannot select data by security label; the rule would apply to more or less data than intended",
        ),
        (
            "period backwards",
            |v| v["provision"]["period"]["end"] = json!("2025-01-01"),
            "Consent.provision.period.end",
            "is before the start",
        ),
        (
            "bad date",
            |v| v["provision"]["period"]["start"] = json!("01/01/2026"),
            "Consent.provision.period.start",
            "is not a FHIR dateTime (YYYY, YYYY-MM, YYYY-MM-DD, or a date-time with its offset)",
        ),
        (
            "author role",
            |v| v["provision"]["actor"][1]["role"]["coding"][0]["code"] = json!("AUT"),
            "Consent.provision.actor[1].role",
            "role AUT is neither a recipient (PRCP, IRCP) nor the custodian (CST); medmesh cannot scope by it",
        ),
        (
            "permit inside permit",
            |v| v["provision"]["provision"] = json!([{"type": "permit"}]),
            "Consent.provision.provision[0].type",
            "a nested provision of the same type as its parent has no agreed meaning (a further restriction or an addition); not imported",
        ),
        (
            "nested without type",
            |v| v["provision"]["provision"] = json!([{"purpose": []}]),
            "Consent.provision.provision[0].type",
            "missing; a nested provision must say permit or deny",
        ),
        (
            "two levels deep",
            |v| v["provision"]["provision"] = json!([{"type": "deny", "provision": [{"type": "permit"}]}]),
            "Consent.provision.provision[0].provision",
            "provisions nested more than one level deep are not supported",
        ),
        (
            "nested deny of collect",
            |v| v["provision"]["provision"] = json!([{"type": "deny", "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "collect"}]}]}]),
            "Consent.provision.provision[0].action",
            "denies collect, which does not concern transfers",
        ),
        (
            "nested deny outside the period",
            |v| v["provision"]["provision"] = json!([{"type": "deny", "period": {"start": "2035-01-01"}}]),
            "Consent.provision.provision[0].period",
            "does not overlap the period of its parent provision, so it never applies",
        ),
        (
            "studies and episode",
            |v| {
                v["provision"]["data"] = json!([
                {"meaning": "instance", "reference": {"reference": "ImagingStudy/s-1"}},
                {"meaning": "related", "reference": {"reference": "EpisodeOfCare/e-1"}}])
            },
            "Consent.provision.data",
            "mixes studies and an episode of care; medmesh scopes a record to one or the other",
        ),
        (
            "rejected",
            |v| v["status"] = json!("rejected"),
            "Consent.status",
            "the consent was refused; there is nothing to import",
        ),
        (
            "entered in error",
            |v| v["status"] = json!("entered-in-error"),
            "Consent.status",
            "the resource was entered in error",
        ),
        (
            "STU3 status",
            |v| v["status"] = json!("final"),
            "Consent.status",
            "\"final\" is not an R4 Consent status",
        ),
        (
            "no status",
            |v| {
                v.as_object_mut().unwrap().remove("status");
            },
            "Consent.status",
            "missing",
        ),
        (
            "id not a string",
            |v| v["id"] = json!(7),
            "Consent.id",
            "expected a string",
        ),
        (
            "id with a space",
            |v| v["id"] = json!("mm research 7"),
            "Consent.id",
            "consent id contains the character ' ', which is not allowed (printable ASCII without spaces)",
        ),
        (
            "no scope",
            |v| {
                v.as_object_mut().unwrap().remove("scope");
            },
            "Consent.scope",
            "missing (required in R4)",
        ),
        (
            "scope of another system",
            |v| v["scope"]["coding"][0]["system"] = json!("http://snomed.info/sct"),
            "Consent.scope",
            "no consentscope code (patient-privacy or research)",
        ),
        (
            "no patient",
            |v| {
                v.as_object_mut().unwrap().remove("patient");
            },
            "Consent.patient",
            "missing; a consent must be about one patient",
        ),
        (
            "another patient as grantor",
            |v| v["performer"] = json!([{"reference": "Patient/p-2002"}]),
            "Consent.performer[0]",
            "a Patient other than the consent's patient cannot consent for them",
        ),
        (
            "grantor of unknown kind",
            |v| v["performer"] = json!([{"display": "a relative"}]),
            "Consent.performer[0]",
            "cannot tell what kind of resource the grantor is",
        ),
        (
            "patient and guardian",
            |v| v["performer"] = json!([{"reference": "Patient/p-1001"}, {"reference": "RelatedPerson/r-1"}]),
            "Consent.performer[1]",
            "grantors of different kinds in one consent cannot be mapped",
        ),
        (
            "policy rule without coding",
            |v| v["policyRule"] = json!({"text": "GDPR"}),
            "Consent.policyRule",
            "no coding; medmesh needs a code for the legal basis",
        ),
        (
            "policy rule without code",
            |v| v["policyRule"] = json!({"coding": [{"system": "https://medmesh.example/legal"}]}),
            "Consent.policyRule.coding[0].code",
            "missing",
        ),
        (
            "policy rule code with a space",
            |v| v["policyRule"]["coding"][0]["code"] = json!("GDPR 9"),
            "Consent.policyRule",
            "legal_basis.code: \"GDPR 9\" is not a legal basis code (1 to 64 characters of A-Z a-z 0-9 . _ ( ) / : -, e.g. GDPR-9.2.j)",
        ),
        (
            "no provision",
            |v| {
                v.as_object_mut().unwrap().remove("provision");
            },
            "Consent.provision",
            "missing; a Consent without provision has no computable scope for medmesh",
        ),
        (
            "type neither permit nor deny",
            |v| v["provision"]["type"] = json!("allow"),
            "Consent.provision.type",
            "\"allow\" is neither permit nor deny",
        ),
        (
            "permit inside deny",
            |v| {
                v["provision"]["type"] = json!("deny");
                v["provision"]["provision"] = json!([{"type": "permit"}]);
            },
            "Consent.provision.provision[0].type",
            "a permit exception inside a deny cannot be represented: in medmesh a deny always beats a permit",
        ),
        (
            "no start",
            |v| {
                v.as_object_mut().unwrap().remove("dateTime");
                v["provision"]["period"].as_object_mut().unwrap().remove("start");
            },
            "Consent.provision.period",
            "no start, and Consent.dateTime is absent: cannot tell from when the consent applies",
        ),
        (
            "no purpose",
            |v| {
                v["provision"].as_object_mut().unwrap().remove("purpose");
            },
            "Consent.provision.purpose",
            "missing: FHIR reads a permit without purpose as every purpose, which medmesh does not import; name the purposes or configure the purposes to assume",
        ),
        (
            "empty purpose list",
            |v| v["provision"]["purpose"] = json!([]),
            "Consent.provision.purpose",
            "empty list",
        ),
        (
            "action of another system",
            |v| v["provision"]["action"][0]["coding"][0]["system"] = json!("http://snomed.info/sct"),
            "Consent.provision.action[0]",
            "no consentaction code (collect, access, use, disclose, correct)",
        ),
        (
            "empty data period",
            |v| v["provision"]["dataPeriod"] = json!({}),
            "Consent.provision.dataPeriod",
            "neither start nor end",
        ),
        (
            "actor not an object",
            |v| v["provision"]["actor"] = json!(["Organization/site"]),
            "Consent.provision.actor[0]",
            "expected an object",
        ),
        (
            "actor without role",
            |v| {
                v["provision"]["actor"][1].as_object_mut().unwrap().remove("role");
            },
            "Consent.provision.actor[1].role",
            "missing",
        ),
        (
            "another custodian",
            |v| v["provision"]["actor"][0]["reference"] = json!({"reference": "Organization/elsewhere"}),
            "Consent.provision.actor[0].reference",
            "the custodian is not this site (configure the site's own references), so the rule is not about data held here",
        ),
        (
            "unnamed institution",
            |v| v["provision"]["actor"][1]["reference"] = json!({"reference": "Organization/o7"}),
            "Consent.provision.actor[1].reference",
            "cannot tell which institution Organization/o7 is (no identifier or display; map it in the import context)",
        ),
        (
            "practitioner recipient",
            |v| v["provision"]["actor"][1]["reference"] = json!({"reference": "Practitioner/dr-x"}),
            "Consent.provision.actor[1].reference",
            "a Practitioner cannot be a recipient: medmesh scopes consent to nodes, institutions, jurisdictions and consortia",
        ),
        (
            "recipient of unknown kind",
            |v| v["provision"]["actor"][1]["reference"] = json!({"reference": "#contained"}),
            "Consent.provision.actor[1].reference",
            "cannot tell what kind of resource the recipient is",
        ),
        (
            "two episodes",
            |v| {
                v["provision"]["data"] = json!([
                {"meaning": "related", "reference": {"reference": "EpisodeOfCare/e-1"}},
                {"meaning": "related", "reference": {"reference": "EpisodeOfCare/e-2"}}])
            },
            "Consent.provision.data[1]",
            "more than one episode of care in one provision",
        ),
        (
            "observation data",
            |v| {
                v["provision"]["data"] = json!([{"meaning": "instance", "reference": {"reference": "Observation/o-1"}}])
            },
            "Consent.provision.data[0]",
            "Observation with meaning instance cannot be mapped (medmesh scopes data to ImagingStudy instance/dependents or one EpisodeOfCare related)",
        ),
        (
            "wrong JSON type",
            |v| v["provision"]["purpose"] = json!("HRESCH"),
            "Consent.provision.purpose",
            "expected an array",
        ),
    ];
    // Without the site's assumptions: nobody to assume as grantor.
    let bare_cases: Vec<(&str, Edit, &str, &str)> = vec![(
        "no performer",
        |v| {
            v.as_object_mut().unwrap().remove("performer");
        },
        "Consent.performer",
        "missing: cannot tell who consented (configure whom to assume if the site's forms are always signed by the patient)",
    )];
    let bare = ImportContext::new(&pseudonymise).custodian("Organization/site");
    let mut produced = BTreeSet::new();
    let runs = cases
        .into_iter()
        .map(|c| (c, &site))
        .chain(bare_cases.into_iter().map(|c| (c, &bare)));
    for ((name, edit, path, reason), ctx) in runs {
        let mut v = base.clone();
        edit(&mut v);
        match import_consent(&v, ctx) {
            Err(FhirError::Refused { path: p, reason: r }) => {
                assert_eq!((p.as_str(), r.to_string().as_str()), (path, reason), "{name}");
                produced.insert(variant(&r));
            }
            other => panic!("{name}: expected a refusal, got {other:?}"),
        }
    }
    let missing: Vec<_> = refusal_variants().difference(&produced).cloned().collect();
    assert!(missing.is_empty(), "causes no case produces: {missing:?}");
}

#[test]
fn nested_permit_in_deny_is_refused() {
    let mut v: Value = serde_json::from_str(&data("Consent-consent-example-Out.json")).unwrap();
    v["provision"]["provision"] = json!([{"type": "permit", "purpose": [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}]}]);
    match import_consent(&v, &site()) {
        Err(e) => assert_eq!(
            e.to_string(),
            "Consent.provision.provision[0].type: a permit exception inside a deny cannot be represented: in medmesh a deny always beats a permit"
        ),
        Ok(r) => panic!("{r:?}"),
    }
}

#[test]
fn studies_coverage_and_data_size() {
    let mut v: Value = serde_json::from_str(&data("synthetic/imaging-research-permit.json")).unwrap();
    v["provision"]["data"] = json!([
        {"meaning": "instance", "reference": {"reference": "ImagingStudy/s-2"}},
        {"meaning": "dependents", "reference": {"type": "ImagingStudy", "identifier": {"value": "urn:oid:1.2.3.4"}}}
    ]);
    let records = import_consent(&v, &site()).unwrap();
    let json: Value = serde_json::from_str(&records[0].to_json()).unwrap();
    assert_eq!(
        json["scope"]["coverage"],
        json!({"studies": ["ImagingStudy/s-2", "urn:oid:1.2.3.4"]})
    );

    let big = " ".repeat(consent_schema::fhir::MAX_FHIR_SIZE + 1);
    assert!(matches!(
        import_consent_str(&big, &site()),
        Err(FhirError::TooLarge { .. })
    ));
    assert!(matches!(import_consent_str("{", &site()), Err(FhirError::Json(_))));
    assert!(matches!(
        import_consent_str("[]", &site()),
        Err(FhirError::Refused { .. })
    ));
}
