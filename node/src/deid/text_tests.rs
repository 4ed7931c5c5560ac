//! Free text and links (issue 16, item 6): structured-report content at
//! every depth, observer sequences, Retrieve URL / URI and every UR, UT, LT,
//! ST (and other string) value, the site's host names, short name parts,
//! DA and DT ranges; the SR with a narrative that names everything
//! (`tests/data/deid/sr_phi-narrative.dcm`, made by [`phi_sr`]); a corpus
//! search of every value of every element; a property test.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use dicom_core::header::Header;
use dicom_core::value::{DataSetSequence, PrimitiveValue, Value};
use dicom_core::{DataElement, Length, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use dicom_object::meta::FileMetaTableBuilder;
use proptest::prelude::*;

use super::*;

// ---------------------------------------------------------------------------
// Building objects

type El = DataElement<InMemDicomObject>;

fn s(tag: Tag, vr: VR, v: &str) -> El {
    DataElement::new(tag, vr, PrimitiveValue::from(v))
}

fn sq(tag: Tag, items: Vec<InMemDicomObject>) -> El {
    DataElement::new(tag, VR::SQ, Value::from(DataSetSequence::new(items, Length::UNDEFINED)))
}

fn item(elements: Vec<El>) -> InMemDicomObject {
    InMemDicomObject::from_element_iter(elements)
}

fn code(tag: Tag, value: &str, scheme: &str, meaning: &str) -> El {
    sq(
        tag,
        vec![item(vec![
            s(tags::CODE_VALUE, VR::SH, value),
            s(tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme),
            s(tags::CODE_MEANING, VR::LO, meaning),
        ])],
    )
}

/// A content item: relationship, value type, concept name, then `rest`.
fn content(rel: &str, value_type: &str, concept: (&str, &str, &str), rest: Vec<El>) -> InMemDicomObject {
    let mut e = vec![
        s(tags::RELATIONSHIP_TYPE, VR::CS, rel),
        s(tags::VALUE_TYPE, VR::CS, value_type),
        code(tags::CONCEPT_NAME_CODE_SEQUENCE, concept.0, concept.1, concept.2),
    ];
    e.extend(rest);
    item(e)
}

fn container(rel: &str, concept: (&str, &str, &str), children: Vec<InMemDicomObject>) -> InMemDicomObject {
    content(
        rel,
        "CONTAINER",
        concept,
        vec![
            s(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE"),
            sq(tags::CONTENT_SEQUENCE, children),
        ],
    )
}

fn text_item(v: &str) -> InMemDicomObject {
    content(
        "CONTAINS",
        "TEXT",
        ("121071", "DCM", "Finding"),
        vec![s(tags::TEXT_VALUE, VR::UT, v)],
    )
}

fn part10(obj: InMemDicomObject) -> Vec<u8> {
    let class = str_at(&obj, tags::SOP_CLASS_UID);
    let sop = str_at(&obj, tags::SOP_INSTANCE_UID);
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(class.as_str())
        .media_storage_sop_instance_uid(sop.as_str())
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .implementation_class_uid("1.2.826.0.1.3680043.10.543")
        .implementation_version_name("MEDMESH_TEST")
        .build()
        .unwrap();
    let mut out = Vec::new();
    obj.with_exact_meta(meta).write_all(&mut out).unwrap();
    out
}

fn read(bytes: &[u8]) -> InMemDicomObject {
    crate::dicom::parse_whole(bytes).unwrap().0
}

fn profile(level: DeidLevel, options: &[DeidOption]) -> Profile {
    Profile::new(level, options, Vec::new())
        .unwrap()
        .with_site_names(&[SR_HOST, "KNPACS01"])
}

// ---------------------------------------------------------------------------
// The SR whose narrative names everything

/// The PACS host of the SR's site (configured as a site name in the tests).
pub(super) const SR_HOST: &str = "pacs01.klinikum-nord.example";
const SR_STUDY: &str = "1.2.826.0.1.3680043.10.543.7001";
const SR_PATIENT: &str = "Brandt-Okafor^Li^Jo";
const SR_MRN: &str = "MRN-4471902";
const SR_ADDRESS: &str = "Lindenstrasse 42, 20095 Hamburg";
const SR_PHYSICIAN: &str = "Hartmann^Ulrike^^Dr.";
const SR_FOLLOW_UP: &str = "Follow-up CT of the chest in 3 months.";

/// A Comprehensive SR whose narrative names the patient (a two-character
/// given name among them), the MRN, the address, the birth date, physicians,
/// the institution and the PACS host, and quotes the study's UID, nested
/// three content levels deep; with verifying, author and participant
/// observers and a Retrieve URL naming the study. The source of
/// `tests/data/deid/sr_phi-narrative.dcm`.
pub(super) fn phi_sr() -> Vec<u8> {
    let findings = format!(
        "Li Brandt-Okafor (MRN {SR_MRN}, born 07.12.1963, {SR_ADDRESS}; tel +49 40 5550199) was referred by \
         Dr. Ulrike Hartmann. Prior images on {SR_HOST} (study {SR_STUDY}, accession ACC-2026-77812). \
         A 12 mm nodule in the right upper lobe."
    );
    let discussion = format!(
        "Discussed with Jo BRANDT-OKAFOR and Dr ZIMMERMANN at Klinikum Nord Hamburg on 1963-12-07 (sic); \
         see https://PACS01.Klinikum-Nord.example/viewer?study={SR_STUDY} and AE KNPACS01. Second ID SV-88213377."
    );
    let deep = container(
        "CONTAINS",
        ("121073", "DCM", "Impression"),
        vec![
            text_item(&discussion),
            content(
                "CONTAINS",
                "PNAME",
                ("121008", "DCM", "Person Observer Name"),
                vec![s(tags::PERSON_NAME, VR::PN, "Zimmermann^Bernd")],
            ),
            content(
                "CONTAINS",
                "DATE",
                ("111536", "DCM", "Date of study"),
                vec![s(tags::DATE, VR::DA, "20261130")],
            ),
            content(
                "CONTAINS",
                "TIME",
                ("111537", "DCM", "Time of study"),
                vec![s(tags::TIME, VR::TM, "143000")],
            ),
            content(
                "CONTAINS",
                "DATETIME",
                ("111538", "DCM", "Date and time of study"),
                vec![s(tags::DATE_TIME, VR::DT, "20261130143000")],
            ),
            content(
                "CONTAINS",
                "UIDREF",
                ("121018", "DCM", "Procedure Study Instance UID"),
                vec![s(tags::UID, VR::UI, SR_STUDY)],
            ),
        ],
    );
    let root_children = vec![
        content(
            "HAS OBS CONTEXT",
            "PNAME",
            ("121008", "DCM", "Person Observer Name"),
            vec![s(tags::PERSON_NAME, VR::PN, "Hartmann^Ulrike")],
        ),
        text_item(&findings),
        container(
            "CONTAINS",
            ("121072", "DCM", "Impressions"),
            vec![deep, text_item(SR_FOLLOW_UP)],
        ),
    ];
    let mut o = InMemDicomObject::new_empty();
    for e in [
        s(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"),
        s(tags::SOP_CLASS_UID, VR::UI, uids::COMPREHENSIVE_SR_STORAGE),
        s(tags::SOP_INSTANCE_UID, VR::UI, &format!("{SR_STUDY}.2.1")),
        s(tags::STUDY_INSTANCE_UID, VR::UI, SR_STUDY),
        s(tags::SERIES_INSTANCE_UID, VR::UI, &format!("{SR_STUDY}.2")),
        s(tags::STUDY_DATE, VR::DA, "20261130"),
        s(tags::STUDY_TIME, VR::TM, "143000"),
        s(tags::CONTENT_DATE, VR::DA, "20261130"),
        s(tags::CONTENT_TIME, VR::TM, "150000"),
        s(tags::ACCESSION_NUMBER, VR::SH, "ACC-2026-77812"),
        s(tags::MODALITY, VR::CS, "SR"),
        s(tags::MANUFACTURER, VR::LO, "medmesh test generator"),
        s(tags::INSTITUTION_NAME, VR::LO, "Klinikum Nord Hamburg"),
        s(
            tags::INSTITUTION_ADDRESS,
            VR::ST,
            "Tangstedter Landstrasse 400, 22417 Hamburg",
        ),
        s(tags::REFERRING_PHYSICIAN_NAME, VR::PN, SR_PHYSICIAN),
        s(
            tags::RETRIEVE_URL,
            VR::UR,
            &format!("https://{SR_HOST}/dicom-web/studies/{SR_STUDY}"),
        ),
        s(tags::STUDY_ID, VR::SH, "KNH-S-7001"),
        s(tags::SERIES_NUMBER, VR::IS, "2"),
        s(tags::INSTANCE_NUMBER, VR::IS, "1"),
        s(tags::PATIENT_NAME, VR::PN, SR_PATIENT),
        s(tags::PATIENT_ID, VR::LO, SR_MRN),
        s(tags::ISSUER_OF_PATIENT_ID, VR::LO, "KNH"),
        s(tags::PATIENT_BIRTH_DATE, VR::DA, "19631207"),
        s(tags::PATIENT_SEX, VR::CS, "F"),
        s(tags::PATIENT_ADDRESS, VR::LO, SR_ADDRESS),
        s(tags::PATIENT_TELEPHONE_NUMBERS, VR::SH, "+49 40 5550199"),
        sq(
            tags::OTHER_PATIENT_I_DS_SEQUENCE,
            vec![item(vec![
                s(tags::PATIENT_ID, VR::LO, "SV-88213377"),
                s(tags::TYPE_OF_PATIENT_ID, VR::CS, "TEXT"),
            ])],
        ),
        s(tags::VALUE_TYPE, VR::CS, "CONTAINER"),
        code(
            tags::CONCEPT_NAME_CODE_SEQUENCE,
            "18748-4",
            "LN",
            "Diagnostic Imaging Report",
        ),
        s(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE"),
        s(tags::COMPLETION_FLAG, VR::CS, "COMPLETE"),
        s(tags::VERIFICATION_FLAG, VR::CS, "VERIFIED"),
        sq(
            tags::VERIFYING_OBSERVER_SEQUENCE,
            vec![item(vec![
                s(tags::VERIFYING_OBSERVER_NAME, VR::PN, "Zimmermann^Bernd"),
                s(tags::VERIFYING_ORGANIZATION, VR::LO, "Klinikum Nord Hamburg Radiologie"),
                s(tags::VERIFICATION_DATE_TIME, VR::DT, "20261130150000"),
                code(
                    tags::VERIFYING_OBSERVER_IDENTIFICATION_CODE_SEQUENCE,
                    "ZIMB01",
                    "KNH-STAFF",
                    "Zimmermann, Bernd",
                ),
            ])],
        ),
        sq(
            tags::AUTHOR_OBSERVER_SEQUENCE,
            vec![item(vec![
                s(tags::OBSERVER_TYPE, VR::CS, "PSN"),
                s(tags::PERSON_NAME, VR::PN, "Weber^Anja"),
                s(tags::INSTITUTION_NAME, VR::LO, "Klinikum Nord Hamburg"),
            ])],
        ),
        sq(
            tags::PARTICIPANT_SEQUENCE,
            vec![item(vec![
                s(tags::PARTICIPATION_TYPE, VR::CS, "ENT"),
                s(tags::OBSERVER_TYPE, VR::CS, "PSN"),
                s(tags::PERSON_NAME, VR::PN, "Schulz^Tobias"),
                s(tags::PARTICIPATION_DATE_TIME, VR::DT, "20261130144500"),
            ])],
        ),
        sq(
            tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
            vec![item(vec![
                s(tags::STUDY_INSTANCE_UID, VR::UI, SR_STUDY),
                sq(
                    tags::REFERENCED_SERIES_SEQUENCE,
                    vec![item(vec![
                        s(tags::SERIES_INSTANCE_UID, VR::UI, &format!("{SR_STUDY}.1")),
                        s(tags::RETRIEVE_AE_TITLE, VR::AE, "KNPACS01"),
                        s(
                            tags::RETRIEVE_URL,
                            VR::UR,
                            &format!("https://{SR_HOST}/dicom-web/studies/{SR_STUDY}/series/{SR_STUDY}.1"),
                        ),
                        sq(
                            tags::REFERENCED_SOP_SEQUENCE,
                            vec![item(vec![
                                s(tags::REFERENCED_SOP_CLASS_UID, VR::UI, uids::CT_IMAGE_STORAGE),
                                s(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, &format!("{SR_STUDY}.1.1")),
                            ])],
                        ),
                    ])],
                ),
            ])],
        ),
        sq(tags::CONTENT_SEQUENCE, root_children),
    ] {
        o.put(e);
    }
    part10(o)
}

/// Where the SR is kept for tests that do not link this crate's tests.
fn sr_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/deid/sr_phi-narrative.dcm")
}

#[test]
fn the_phi_sr_file_is_what_its_generator_makes() {
    let made = phi_sr();
    if std::env::var_os("MEDMESH_WRITE_TEST_DATA").is_some_and(|v| v == "1") {
        std::fs::write(sr_file(), &made).unwrap();
    }
    assert_eq!(
        std::fs::read(sr_file()).unwrap(),
        made,
        "tests/data/deid/sr_phi-narrative.dcm differs from phi_sr(); rewrite it with MEDMESH_WRITE_TEST_DATA=1"
    );
}

// ---------------------------------------------------------------------------
// Searching every value

/// Every value of every element of `obj`, at every depth: string values as
/// text, anything else (binary, numbers) as its bytes read as Latin-1, the
/// pixel data excepted. With the element's path.
pub(super) fn all_values(obj: &InMemDicomObject, path: &str, out: &mut Vec<(String, String, bool)>) {
    for e in obj.iter() {
        let here = format!("{path}/{}", e.tag());
        if let Some(items) = e.items() {
            for (i, it) in items.iter().enumerate() {
                all_values(it, &format!("{here}[{i}]"), out);
            }
            continue;
        }
        if e.tag() == tags::PIXEL_DATA {
            continue;
        }
        if super::is_text_vr(e.vr()) {
            if let Ok(vals) = e.to_multi_str() {
                for v in vals.iter() {
                    out.push((here.clone(), v.to_string(), true));
                }
            }
        } else if let Ok(b) = e.to_bytes() {
            out.push((here.clone(), b.iter().map(|&c| char::from(c)).collect(), false));
        }
    }
}

/// Whether `needle` occurs in `hay`, ignoring case. A needle of only digits
/// and separators (an ID, a date) counts when no digit touches it (inside a
/// longer number, such as a new UID, it is chance); a short name part (two
/// characters) only as a word.
pub(super) fn occurs(hay: &str, needle: &str) -> bool {
    let (h, n) = (hay.to_lowercase(), needle.to_lowercase());
    if n.is_empty() {
        return false;
    }
    let numeric = n.chars().all(|c| !c.is_alphabetic());
    let short = n.chars().count() < 3;
    let mut from = 0;
    while let Some(p) = h[from..].find(&n) {
        let (a, b) = (from + p, from + p + n.len());
        from = a + h[a..].chars().next().map_or(1, char::len_utf8);
        let before = h[..a].chars().next_back();
        let after = h[b..].chars().next();
        if numeric && (before.is_some_and(|c| c.is_ascii_digit()) || after.is_some_and(|c| c.is_ascii_digit())) {
            continue;
        }
        if short && (before.is_some_and(char::is_alphanumeric) || after.is_some_and(char::is_alphanumeric)) {
            continue;
        }
        return true;
    }
    false
}

/// Text that the de-identifier itself writes: a needle found in it is not
/// a leak (an already de-identified input named "ANONYMIZED", say).
const WRITTEN_BY_US: &str = "anonymized http://anonymized.invalid medmesh ps3.15 e.1 basic anonymised pseudonymised \
     basic application confidentiality profile clean descriptors option clean structured content option \
     retain longitudinal temporal information modified dates option removed modified unmodified yes dcm";

/// The identifying strings of an input, collected here independently of
/// the code under test: every part of every person name at any depth, the
/// patient's IDs (Other Patient IDs included), address, telephone, birth
/// date, the accession number, the institution, and every original UID.
pub(super) fn identifying_of(obj: &InMemDicomObject) -> Vec<String> {
    #[allow(deprecated)]
    fn walk(obj: &InMemDicomObject, out: &mut Vec<String>) {
        for e in obj.iter() {
            if let Some(items) = e.items() {
                for i in items {
                    walk(i, out);
                }
                continue;
            }
            let Ok(vals) = e.to_multi_str() else { continue };
            for v in vals.iter() {
                let v = v.trim_matches(['\0', ' ']).to_string();
                if v.is_empty() {
                    continue;
                }
                if e.vr() == VR::PN {
                    for group in v.split('=') {
                        out.push(group.to_string());
                        for comp in group.split('^').take(3) {
                            out.push(comp.to_string());
                            out.extend(comp.split([' ', '-', ',']).map(str::to_string));
                        }
                    }
                } else if e.vr() == VR::UI {
                    if v.len() > 8 && !super::is_standard_uid(&v) {
                        out.push(v);
                    }
                } else if [
                    tags::PATIENT_ID,
                    tags::OTHER_PATIENT_I_DS,
                    tags::PATIENT_BIRTH_DATE,
                    tags::PATIENT_ADDRESS,
                    tags::PATIENT_TELEPHONE_NUMBERS,
                    tags::ACCESSION_NUMBER,
                    tags::INSTITUTION_NAME,
                    tags::INSTITUTION_ADDRESS,
                ]
                .contains(&e.tag())
                {
                    out.push(v);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(obj, &mut out);
    let mut out: Vec<String> = out
        .into_iter()
        .map(|v| v.trim().to_string())
        .filter(|v| v.chars().count() >= 2 && !WRITTEN_BY_US.contains(&v.to_lowercase()))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The leaks of `needles` in `out`: (needle, path, value).
pub(super) fn leaks(out: &InMemDicomObject, needles: &[String]) -> Vec<(String, String, String)> {
    let mut values = Vec::new();
    all_values(out, "", &mut values);
    let mut found = Vec::new();
    for n in needles {
        for (path, v, text) in &values {
            // In binary values only what cannot occur by chance.
            if (*text || n.len() >= 6) && occurs(v, n) {
                found.push((n.clone(), path.clone(), v.clone()));
            }
        }
    }
    found
}

// ---------------------------------------------------------------------------
// Unit and table tests

/// An object with patient data, extended by `extra` elements.
fn base(extra: Vec<El>) -> Vec<u8> {
    let mut o = InMemDicomObject::new_empty();
    for e in [
        s(tags::SOP_CLASS_UID, VR::UI, uids::COMPREHENSIVE_SR_STORAGE),
        s(tags::SOP_INSTANCE_UID, VR::UI, "1.2.826.0.1.3680043.10.543.9.1.1"),
        s(tags::STUDY_INSTANCE_UID, VR::UI, "1.2.826.0.1.3680043.10.543.9"),
        s(tags::SERIES_INSTANCE_UID, VR::UI, "1.2.826.0.1.3680043.10.543.9.1"),
        s(tags::MODALITY, VR::CS, "SR"),
        s(tags::PATIENT_NAME, VR::PN, "Wu^Li"),
        s(tags::PATIENT_ID, VR::LO, "MRN-0042-77"),
        s(tags::PATIENT_BIRTH_DATE, VR::DA, "19580214"),
        s(tags::ACCESSION_NUMBER, VR::SH, "ACC-991"),
        s(tags::REFERRING_PHYSICIAN_NAME, VR::PN, "Okonkwo^Chidi"),
    ] {
        o.put(e);
    }
    for e in extra {
        o.put(e);
    }
    part10(o)
}

/// What every text below tries to smuggle out.
const NARRATIVE: &str = "Li WU (mrn-0042-77, born 14.02.1958) of PACS01.Klinikum-Nord.EXAMPLE, \
     dr okonkwo, acc-991, study 1.2.826.0.1.3680043.10.543.9: clinically stable";
const IDENTIFYING: [&str; 9] = [
    "Wu",
    "Li",
    "MRN-0042-77",
    "14.02.1958",
    "pacs01.klinikum-nord.example",
    "Okonkwo",
    "ACC-991",
    "1.2.826.0.1.3680043.10.543.9",
    "19580214",
];

fn no_leak(out: &InMemDicomObject, what: &str) {
    let needles: Vec<String> = IDENTIFYING.iter().map(|s| s.to_string()).collect();
    let l = leaks(out, &needles);
    assert!(l.is_empty(), "{what}: {l:?}");
}

#[test]
fn string_values_the_table_does_not_list_lose_names_ids_hosts_and_uids() {
    // (tag, VR): attributes that Table E.1-1 does not list, one per VR.
    let cases = [
        (tags::PIXEL_DATA_PROVIDER_URL, VR::UR),
        (tags::REFERENCE_LOCATION_DESCRIPTION, VR::UT),
        (tags::DETECTOR_DESCRIPTION, VR::LT),
        (tags::SEGMENT_DESCRIPTION, VR::ST),
        (tags::MANUFACTURER, VR::LO),
        (tags::CODING_SCHEME_EXTERNAL_ID, VR::ST),
        (tags::UNIVERSAL_ENTITY_ID, VR::UT),
    ];
    let t = tables().unwrap();
    for (tag, vr) in cases {
        assert!(t.row(tag).is_none(), "{tag} is in the table: pick another");
        for (level, options) in [
            (DeidLevel::Anonymised, vec![]),
            (DeidLevel::Pseudonymised, vec![DeidOption::CleanStructuredContent]),
            (DeidLevel::Pseudonymised, vec![DeidOption::RetainLongModifiedDates]),
        ] {
            let input = base(vec![s(tag, vr, NARRATIVE)]);
            let keys = DeidKeys::from_secret(&[21u8; 32]);
            let out = read(&deidentify(&input, &profile(level, &options), &keys).unwrap().bytes);
            let what = format!("{tag} {vr:?} {level:?} {options:?}");
            no_leak(&out, &what);
            let v = str_at(&out, tag);
            if vr == VR::UR {
                assert_eq!(v, "http://anonymized.invalid", "{what}");
            } else if vr != VR::LO {
                // What identifies no one stays; the UID becomes its mapping
                // (an LO is cut at 64 characters).
                assert!(v.contains("clinically stable"), "{what}: {v}");
                {
                    assert!(v.contains(&keys.map_uid("1.2.826.0.1.3680043.10.543.9")), "{what}: {v}");
                }
            }
        }
    }
}

#[test]
fn a_kept_link_that_identifies_nothing_stays_as_it_is() {
    let url = "http://snomed.info/sct";
    let input = base(vec![s(tags::PIXEL_DATA_PROVIDER_URL, VR::UR, url)]);
    let keys = DeidKeys::from_secret(&[22u8; 32]);
    let out = read(
        &deidentify(&input, &profile(DeidLevel::Anonymised, &[]), &keys)
            .unwrap()
            .bytes,
    );
    assert_eq!(str_at(&out, tags::PIXEL_DATA_PROVIDER_URL), url);
}

#[test]
fn retrieve_url_and_retrieve_uri_are_removed_at_any_depth() {
    let url = "https://pacs01.klinikum-nord.example/wado/studies/1.2.826.0.1.3680043.10.543.9";
    let input = base(vec![
        s(tags::RETRIEVE_URL, VR::UR, url),
        s(tags::RETRIEVE_URI, VR::UR, url),
        sq(
            tags::REFERENCED_SERIES_SEQUENCE,
            vec![item(vec![
                s(tags::SERIES_INSTANCE_UID, VR::UI, "1.2.826.0.1.3680043.10.543.9.1"),
                s(tags::RETRIEVE_URL, VR::UR, url),
            ])],
        ),
    ]);
    let keys = DeidKeys::from_secret(&[23u8; 32]);
    for level in [DeidLevel::Anonymised, DeidLevel::Pseudonymised] {
        let out = read(&deidentify(&input, &profile(level, &[]), &keys).unwrap().bytes);
        assert!(out.get(tags::RETRIEVE_URL).is_none());
        assert!(out.get(tags::RETRIEVE_URI).is_none());
        no_leak(&out, &format!("{level:?}"));
    }
}

/// An SR whose content tree puts every value type at `depth` (1 = the
/// root's Content Sequence).
fn nested_sr(depth: usize) -> Vec<u8> {
    let leaves = vec![
        text_item(&format!("{NARRATIVE}; nodule 12 mm")),
        content(
            "HAS OBS CONTEXT",
            "PNAME",
            ("121008", "DCM", "Person Observer Name"),
            vec![s(tags::PERSON_NAME, VR::PN, "Okonkwo^Chidi")],
        ),
        content(
            "CONTAINS",
            "DATE",
            ("111536", "DCM", "Date"),
            vec![s(tags::DATE, VR::DA, "20240315")],
        ),
        content(
            "CONTAINS",
            "TIME",
            ("111537", "DCM", "Time"),
            vec![s(tags::TIME, VR::TM, "101112")],
        ),
        content(
            "CONTAINS",
            "DATETIME",
            ("111538", "DCM", "DateTime"),
            vec![s(tags::DATE_TIME, VR::DT, "20240315101112")],
        ),
        content(
            "CONTAINS",
            "UIDREF",
            ("121018", "DCM", "Study UID"),
            vec![s(tags::UID, VR::UI, "1.2.826.0.1.3680043.10.543.9")],
        ),
    ];
    let mut tree = leaves;
    for _ in 1..depth {
        tree = vec![container("CONTAINS", ("121070", "DCM", "Findings"), tree)];
    }
    base(vec![
        s(tags::VALUE_TYPE, VR::CS, "CONTAINER"),
        sq(tags::CONTENT_SEQUENCE, tree),
    ])
}

/// The items at `depth` of an output's content tree.
fn items_at(obj: &InMemDicomObject, depth: usize) -> Vec<InMemDicomObject> {
    let mut level: Vec<InMemDicomObject> = obj.get(tags::CONTENT_SEQUENCE).unwrap().items().unwrap().to_vec();
    for _ in 1..depth {
        level = level
            .iter()
            .filter_map(|i| i.get(tags::CONTENT_SEQUENCE).and_then(|e| e.items()).map(<[_]>::to_vec))
            .flatten()
            .collect();
    }
    level
}

fn value_of(items: &[InMemDicomObject], tag: Tag) -> String {
    items
        .iter()
        .find_map(|i| i.get(tag).map(|_| str_at(i, tag)))
        .unwrap_or_else(|| panic!("no {tag}"))
}

#[test]
fn content_items_at_every_depth_follow_the_table_or_are_cleaned_one_by_one() {
    let keys = DeidKeys::from_secret(&[24u8; 32]);
    let shift = keys.date_shift("", "MRN-0042-77");
    for depth in [1, 3, 5] {
        let input = nested_sr(depth);
        // Basic profile: the content tree is D: every value a dummy, UIDs mapped.
        let out = read(
            &deidentify(&input, &profile(DeidLevel::Anonymised, &[]), &keys)
                .unwrap()
                .bytes,
        );
        no_leak(&out, &format!("basic, depth {depth}"));
        let items = items_at(&out, depth);
        assert_eq!(value_of(&items, tags::TEXT_VALUE), "ANONYMIZED", "depth {depth}");
        assert_eq!(value_of(&items, tags::PERSON_NAME), "ANONYMIZED");
        assert_eq!(value_of(&items, tags::DATE), "19000101");
        assert_eq!(value_of(&items, tags::TIME), "000000");
        assert_eq!(value_of(&items, tags::DATE_TIME), "19000101000000");
        assert_eq!(
            value_of(&items, tags::UID),
            keys.map_uid("1.2.826.0.1.3680043.10.543.9")
        );
        // The structure (value types, concept names) stays.
        assert_eq!(value_of(&items, tags::VALUE_TYPE), "TEXT");
        // Clean Structured Content: each text cleaned, its meaning kept; with
        // modified dates the dates move by the patient's shift.
        let p = profile(
            DeidLevel::Pseudonymised,
            &[DeidOption::CleanStructuredContent, DeidOption::RetainLongModifiedDates],
        );
        let out = read(&deidentify(&input, &p, &keys).unwrap().bytes);
        no_leak(&out, &format!("clean structured content, depth {depth}"));
        let items = items_at(&out, depth);
        let text = value_of(&items, tags::TEXT_VALUE);
        assert!(text.contains("clinically stable; nodule 12 mm"), "{text}");
        assert!(text.contains(&keys.map_uid("1.2.826.0.1.3680043.10.543.9")), "{text}");
        assert_eq!(value_of(&items, tags::PERSON_NAME), "ANONYMIZED");
        assert_eq!(
            value_of(&items, tags::DATE),
            super::shift_value(VR::DA, "20240315", shift)
        );
        assert_eq!(
            value_of(&items, tags::DATE_TIME),
            super::shift_value(VR::DT, "20240315101112", shift)
        );
        assert_ne!(value_of(&items, tags::DATE), "20240315");
    }
}

#[test]
fn observer_sequences_keep_no_name_organization_or_id() {
    let input = base(vec![
        sq(
            tags::VERIFYING_OBSERVER_SEQUENCE,
            vec![item(vec![
                s(tags::VERIFYING_OBSERVER_NAME, VR::PN, "Zimmermann^Bernd"),
                s(tags::VERIFYING_ORGANIZATION, VR::LO, "Klinikum Nord Radiologie"),
                s(tags::VERIFICATION_DATE_TIME, VR::DT, "20240315101112"),
                code(
                    tags::VERIFYING_OBSERVER_IDENTIFICATION_CODE_SEQUENCE,
                    "ZIMB01",
                    "KNH-STAFF",
                    "Zimmermann, Bernd",
                ),
            ])],
        ),
        sq(
            tags::AUTHOR_OBSERVER_SEQUENCE,
            vec![item(vec![
                s(tags::OBSERVER_TYPE, VR::CS, "PSN"),
                s(tags::PERSON_NAME, VR::PN, "Weber^Anja"),
            ])],
        ),
        sq(
            tags::PARTICIPANT_SEQUENCE,
            vec![item(vec![
                s(tags::OBSERVER_TYPE, VR::CS, "PSN"),
                s(tags::PERSON_NAME, VR::PN, "Schulz^Tobias"),
            ])],
        ),
        // A person named in a sequence the table does not list.
        sq(
            tags::CONTENT_TEMPLATE_SEQUENCE,
            vec![item(vec![
                s(tags::MAPPING_RESOURCE, VR::CS, "DCMR"),
                s(tags::TEMPLATE_IDENTIFIER, VR::CS, "2000"),
                s(
                    tags::MAPPING_RESOURCE_NAME,
                    VR::LO,
                    "signed off by Weber and Zimmermann",
                ),
            ])],
        ),
    ]);
    let keys = DeidKeys::from_secret(&[25u8; 32]);
    for (level, options) in [
        (DeidLevel::Anonymised, vec![]),
        (DeidLevel::Pseudonymised, vec![DeidOption::CleanStructuredContent]),
    ] {
        let out = read(&deidentify(&input, &profile(level, &options), &keys).unwrap().bytes);
        let needles: Vec<String> = [
            "Zimmermann",
            "Bernd",
            "Klinikum Nord",
            "ZIMB01",
            "Weber",
            "Anja",
            "Schulz",
            "Tobias",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let l = leaks(&out, &needles);
        assert!(l.is_empty(), "{level:?} {options:?}: {l:?}");
        let v = &out.get(tags::VERIFYING_OBSERVER_SEQUENCE).unwrap().items().unwrap()[0];
        assert_eq!(str_at(v, tags::VERIFYING_OBSERVER_NAME), "ANONYMIZED");
        assert!(out.get(tags::AUTHOR_OBSERVER_SEQUENCE).is_none());
        assert!(out.get(tags::PARTICIPANT_SEQUENCE).is_none());
    }
}

#[test]
fn name_parts_of_two_characters_are_scrubbed_as_words_only() {
    let input = base(vec![s(
        tags::REFERENCE_LOCATION_DESCRIPTION,
        VR::UT,
        "Li Wu seen in clinic; WU, LI follows; lipid and wurst unchanged",
    )]);
    let keys = DeidKeys::from_secret(&[26u8; 32]);
    let out = read(
        &deidentify(&input, &profile(DeidLevel::Anonymised, &[]), &keys)
            .unwrap()
            .bytes,
    );
    assert_eq!(
        str_at(&out, tags::REFERENCE_LOCATION_DESCRIPTION),
        "* seen in clinic; * follows; lipid and wurst unchanged"
    );
}

#[test]
fn da_and_dt_ranges_shift_both_ends_together() {
    let d = -10;
    let cases = [
        (VR::DA, "20240311", "20240301"),
        (VR::DA, "20240311-20240321", "20240301-20240311"),
        (VR::DA, "-20240321", "-20240311"),
        (VR::DA, "20240311-", "20240301-"),
        (VR::DT, "20240311101112", "20240301101112"),
        (VR::DT, "20240311101112-20240321", "20240301101112-20240311"),
        (VR::DT, "20240311-20240321235959.5", "20240301-20240311235959.5"),
        (VR::DT, "-20240321", "-20240311"),
        (VR::DT, "20240311101112-", "20240301101112-"),
        // A UTC offset is not a range.
        (VR::DT, "20240311101112-0500", "20240301101112-0500"),
        (VR::DT, "20240311101112+0100", "20240301101112+0100"),
        (
            VR::DT,
            "20240311101112-0500-20240321000000+0100",
            "20240301101112-0500-20240311000000+0100",
        ),
        // An end that is not a full date cannot be shifted: emptied.
        (VR::DT, "20240311-2025", "20240301-"),
        (VR::DA, "garbage", ""),
    ];
    for (vr, before, after) in cases {
        assert_eq!(super::shift_value(vr, before, d), after, "{vr:?} {before}");
    }
    // Through the walk: ranges in elements the table cleans (modified dates).
    let input = base(vec![
        s(tags::STUDY_DATE, VR::DA, "20240311-20240321"),
        s(tags::ACQUISITION_DATE_TIME, VR::DT, "20240311101112-20240321101112"),
    ]);
    let keys = DeidKeys::from_secret(&[27u8; 32]);
    let shift = keys.date_shift("", "MRN-0042-77");
    let out = read(
        &deidentify(
            &input,
            &profile(DeidLevel::Pseudonymised, &[DeidOption::RetainLongModifiedDates]),
            &keys,
        )
        .unwrap()
        .bytes,
    );
    let da = str_at(&out, tags::STUDY_DATE);
    let dt = str_at(&out, tags::ACQUISITION_DATE_TIME);
    assert_eq!(da, super::shift_value(VR::DA, "20240311-20240321", shift));
    assert_eq!(dt, super::shift_value(VR::DT, "20240311101112-20240321101112", shift));
    for (v, n) in [(&da, 8), (&dt, 14)] {
        let (a, b) = v.split_once('-').unwrap();
        let pa = chrono::NaiveDate::parse_from_str(&a[..8], "%Y%m%d").unwrap();
        let pb = chrono::NaiveDate::parse_from_str(&b[..8], "%Y%m%d").unwrap();
        assert_eq!((pb - pa).num_days(), 10, "{v}: the interval is kept");
        assert_eq!(a.len(), n);
        assert!(!v.contains("202403"), "{v}: an end is not shifted");
    }
}

#[test]
fn identifying_strings_come_from_every_depth_and_every_person_name() {
    let bytes = base(vec![
        sq(
            tags::OTHER_PATIENT_I_DS_SEQUENCE,
            vec![item(vec![s(tags::PATIENT_ID, VR::LO, "SV-88213377")])],
        ),
        sq(
            tags::REQUEST_ATTRIBUTES_SEQUENCE,
            vec![item(vec![
                s(tags::REQUESTED_PROCEDURE_ID, VR::SH, "RP-55123"),
                sq(
                    tags::CONTENT_SEQUENCE,
                    vec![item(vec![s(tags::PERSON_NAME, VR::PN, "Nakamura^Aiko")])],
                ),
            ])],
        ),
    ]);
    let obj = read(&bytes);
    let n = text::identifying_strings(&obj);
    let values: Vec<&str> = n.values().collect();
    for want in [
        "sv-88213377",
        "rp-55123",
        "nakamura",
        "aiko",
        "aiko nakamura",
        "wu",
        "li",
        "okonkwo",
        "14.02.1958",
        "1958-02-14",
        "19580214",
        "acc-991",
    ] {
        assert!(values.contains(&want), "{want} not in {values:?}");
    }
}

#[test]
fn text_matching_folds_case_beyond_ascii_and_never_panics_on_length_changes() {
    let needles = |v: &[&str]| {
        let mut n = text::Needles::default();
        for x in v {
            n.add_value(x);
        }
        n.finish();
        n
    };
    let run = |hay: &str, n: &text::Needles| text::scrub(hay, &[n], None).unwrap_or_else(|| hay.to_string());
    // Lower-casing "İ" changes its byte length.
    assert_eq!(run("İabcΩ", &needles(&["abc"])), "İ*Ω");
    assert_eq!(run("İSTANBUL clinic", &needles(&["İstanbul"])), "* clinic");
    assert_eq!(run("Dr DOE and doe", &needles(&["Doe"])), "Dr * and *");
    assert_eq!(run("ÅSE and Åse", &needles(&["åse"])), "* and *");
    assert_eq!(run("MÜLLER-Lüdenscheidt", &needles(&["Müller"])), "*-Lüdenscheidt");
    // UIDs: only with keys, and the standard's own stay.
    let keys = DeidKeys::from_secret(&[28u8; 32]);
    let none = needles(&[]);
    assert_eq!(
        text::scrub("see 1.2.3.4.5.6 and 1.2.840.10008.5.1.4.1.1.2", &[&none], Some(&keys)).unwrap(),
        format!("see {} and 1.2.840.10008.5.1.4.1.1.2", keys.map_uid("1.2.3.4.5.6"))
    );
    assert_eq!(text::scrub("version 3.6.2, 1.5 mm", &[&none], Some(&keys)), None);
    // A date that looks like a UID token is masked as the date it is.
    assert_eq!(
        text::scrub("born 07.12.1963.", &[&needles(&["07.12.1963"])], Some(&keys)).unwrap(),
        "born *."
    );
    // An IP address of the site goes too.
    assert!(
        !text::scrub("host 10.20.0.15:104", &[&none], Some(&keys))
            .unwrap()
            .contains("10.20.0.15")
    );
}

// ---------------------------------------------------------------------------
// The SR and the corpus: every value of every element searched

/// The corpus files (as the table tests take them) and the SR.
fn corpus_and_sr() -> Vec<PathBuf> {
    let mut files = super::tests::corpus_files();
    files.push(sr_file());
    files
}

#[test]
fn no_identifying_string_of_any_input_survives_in_any_value_of_its_output() {
    // Rules without rectangles declare the kinds of images refused for
    // possible burned-in text clean, so every file is de-identified.
    let clean = MaskRule {
        modality: "*".into(),
        manufacturer: None,
        rows: None,
        columns: None,
        rects: Vec::new(),
    };
    let profiles = [
        Profile::new(DeidLevel::Anonymised, &[], vec![clean.clone()]).unwrap(),
        Profile::new(
            DeidLevel::Pseudonymised,
            &[
                DeidOption::CleanStructuredContent,
                DeidOption::CleanDescriptors,
                DeidOption::RetainLongModifiedDates,
                DeidOption::CleanGraphics,
            ],
            vec![clean],
        )
        .unwrap(),
    ];
    let keys = DeidKeys::from_secret(&[29u8; 32]);
    let mut done = 0;
    let mut sr_done = false;
    for path in corpus_and_sr() {
        let bytes = std::fs::read(&path).unwrap();
        let (Ok(_), Ok((input, _))) = (
            crate::dicom::parse_and_validate(&bytes),
            crate::dicom::parse_whole(&bytes),
        ) else {
            continue;
        };
        if input.get(tags::SOP_CLASS_UID).is_none() {
            continue;
        }
        let needles = identifying_of(&input);
        for p in &profiles {
            let p = p.clone().with_site_names(&[SR_HOST]);
            let out = deidentify(&bytes, &p, &keys).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let obj = read(&out.bytes);
            let l = leaks(&obj, &needles);
            assert!(
                l.is_empty(),
                "{} ({:?} {:?}): identifying strings survive: {l:?}",
                path.display(),
                p.level(),
                p.options()
            );
            if path == sr_file() {
                sr_done = true;
                let host = leaks(&obj, &[SR_HOST.to_string(), "KNPACS01".into()]);
                assert!(host.is_empty(), "the PACS host survives: {host:?}");
            }
        }
        done += 1;
    }
    assert!(sr_done, "the SR was not de-identified");
    assert!(done >= 40, "only {done} files de-identified");
}

#[test]
fn the_sr_keeps_its_clinical_text_under_clean_structured_content() {
    let keys = DeidKeys::from_secret(&[30u8; 32]);
    let p = profile(DeidLevel::Pseudonymised, &[DeidOption::CleanStructuredContent]);
    let out = read(&deidentify(&phi_sr(), &p, &keys).unwrap().bytes);
    let mut values = Vec::new();
    all_values(&out, "", &mut values);
    let texts: Vec<&String> = values.iter().map(|(_, v, _)| v).collect();
    assert!(texts.iter().any(|t| t.as_str() == SR_FOLLOW_UP), "{texts:?}");
    assert!(
        texts
            .iter()
            .any(|t| t.contains("A 12 mm nodule in the right upper lobe."))
    );
    assert!(out.get(tags::RETRIEVE_URL).is_none());
}

// ---------------------------------------------------------------------------
// Property: a random identifying string in a random text element at a
// random depth never survives

/// Text elements the table does not list (so they are kept and cleaned), and
/// Text Value.
const CARRIERS: [(Tag, VR); 7] = [
    (tags::TEXT_VALUE, VR::UT),
    (tags::REFERENCE_LOCATION_DESCRIPTION, VR::UT),
    (tags::DETECTOR_DESCRIPTION, VR::LT),
    (tags::SEGMENT_DESCRIPTION, VR::ST),
    (tags::MANUFACTURER, VR::LO),
    (tags::PIXEL_DATA_PROVIDER_URL, VR::UR),
    (tags::CODE_MEANING, VR::LO),
];

/// How a random string becomes identifying in the object.
#[derive(Debug, Clone, Copy)]
enum Role {
    PatientId,
    FamilyName,
    GivenName,
    Physician,
    Accession,
    OtherId,
    SiteName,
}

fn with_case(s: &str, mask: u64) -> String {
    s.chars()
        .enumerate()
        .map(|(i, c)| {
            if mask >> (i % 64) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
    #[test]
    fn a_random_identifying_string_in_random_text_at_random_depth_never_survives(
        needle in "[QXJ][a-z]{2,9}[0-9]{1,3}",
        role in 0usize..7,
        carrier in 0usize..CARRIERS.len(),
        depth in 0usize..5,
        case_mask in any::<u64>(),
        before in "[a-z ]{0,20}",
        after in "[a-z ]{0,20}",
        csc in any::<bool>(),
        pseudonymised in any::<bool>(),
    ) {
        let role = [Role::PatientId, Role::FamilyName, Role::GivenName, Role::Physician, Role::Accession, Role::OtherId, Role::SiteName][role];
        let (tag, vr) = CARRIERS[carrier];
        let text = format!("{before} {} {after}", with_case(&needle, case_mask));
        // The carrier, `depth` content levels down (0: top level).
        let mut el = s(tag, vr, &text);
        if tag == tags::TEXT_VALUE || tag == tags::CODE_MEANING {
            let mut it = if tag == tags::TEXT_VALUE {
                content("CONTAINS", "TEXT", ("121071", "DCM", "Finding"), vec![el])
            } else {
                content("CONTAINS", "CODE", ("121071", "DCM", "Finding"), vec![sq(tags::CONCEPT_CODE_SEQUENCE, vec![item(vec![
                    s(tags::CODE_VALUE, VR::SH, "X1"),
                    s(tags::CODING_SCHEME_DESIGNATOR, VR::SH, "99LOCAL"),
                    el,
                ])])])
            };
            for _ in 0..depth {
                it = container("CONTAINS", ("121070", "DCM", "Findings"), vec![it]);
            }
            el = sq(tags::CONTENT_SEQUENCE, vec![it]);
        } else {
            for _ in 0..depth {
                el = sq(tags::CONTENT_TEMPLATE_SEQUENCE, vec![item(vec![el])]);
            }
        }
        let mut extra = vec![el];
        match role {
            Role::PatientId => extra.push(s(tags::PATIENT_ID, VR::LO, &needle)),
            Role::FamilyName => extra.push(s(tags::PATIENT_NAME, VR::PN, &format!("{needle}^Anna"))),
            Role::GivenName => extra.push(s(tags::PATIENT_NAME, VR::PN, &format!("Doe^{needle}"))),
            Role::Physician => extra.push(s(tags::REFERRING_PHYSICIAN_NAME, VR::PN, &format!("{needle}^Paul^^Dr"))),
            Role::Accession => extra.push(s(tags::ACCESSION_NUMBER, VR::SH, &needle)),
            Role::OtherId => extra.push(sq(tags::OTHER_PATIENT_I_DS_SEQUENCE, vec![item(vec![s(tags::PATIENT_ID, VR::LO, &needle)])])),
            Role::SiteName => {}
        }
        let input = base(extra);
        let level = if pseudonymised { DeidLevel::Pseudonymised } else { DeidLevel::Anonymised };
        let options = if csc { vec![DeidOption::CleanStructuredContent] } else { vec![] };
        let p = Profile::new(level, &options, Vec::new()).unwrap().with_site_names(&[needle.as_str()]);
        let p = if matches!(role, Role::SiteName) { p } else { Profile::new(level, &options, Vec::new()).unwrap() };
        let keys = DeidKeys::from_secret(&[31u8; 32]);
        let out = deidentify(&input, &p, &keys).unwrap();
        let obj = read(&out.bytes);
        let l = leaks(&obj, std::slice::from_ref(&needle));
        prop_assert!(l.is_empty(), "{:?} in {:?} at depth {}: {:?}", role, tag, depth, l);
        let lower = needle.to_lowercase();
        prop_assert!(!out.bytes.to_ascii_lowercase().windows(lower.len()).any(|w| w == lower.as_bytes()));
    }
}
