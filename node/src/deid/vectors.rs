//! Test vectors of de-identification (docs/vectors/deid-v1.json,
//! docs/PROTOCOL.md §13): the keys derived from a site secret, UID
//! remapping, pseudonyms, date shifts, the re-link record, and one small
//! object de-identified under fixed keys. The test recomputes every value
//! independently of the code under test where it can (BLAKE3 by hand), then
//! compares the whole file with what this build generates. Run with
//! `MEDMESH_WRITE_VECTORS=1` to rewrite the file after a deliberate change.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;
use dicom_object::meta::FileMetaTableBuilder;
use serde_json::{Value, json};

use super::*;
use crate::store::{RELINK_VERSION, RelinkRecord};

const FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/vectors/deid-v1.json");
const SECRET: [u8; 32] = [0x51; 32];

fn hx(b: &[u8]) -> String {
    hex::encode(b)
}

fn unhex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}

fn input_object() -> Vec<u8> {
    let mut o = InMemDicomObject::new_empty();
    for (tag, vr, v) in [
        (tags::SOP_CLASS_UID, VR::UI, uids::CT_IMAGE_STORAGE),
        (tags::SOP_INSTANCE_UID, VR::UI, "1.2.826.0.1.3680043.99.9.1.1"),
        (tags::STUDY_INSTANCE_UID, VR::UI, "1.2.826.0.1.3680043.99.9"),
        (tags::SERIES_INSTANCE_UID, VR::UI, "1.2.826.0.1.3680043.99.9.1"),
        (tags::STUDY_DATE, VR::DA, "20240315"),
        (tags::ACCESSION_NUMBER, VR::SH, "ACC123"),
        (tags::MODALITY, VR::CS, "CT"),
        (tags::INSTITUTION_NAME, VR::LO, "Vector Hospital"),
        (tags::STUDY_DESCRIPTION, VR::LO, "CT head for Doe"),
        (tags::PATIENT_NAME, VR::PN, "Doe^Jane"),
        (tags::PATIENT_ID, VR::LO, "PID-0001"),
        (tags::ISSUER_OF_PATIENT_ID, VR::LO, "VECTOR"),
        (tags::PATIENT_BIRTH_DATE, VR::DA, "19700101"),
        (tags::PATIENT_SEX, VR::CS, "F"),
    ] {
        o.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
    }
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(uids::CT_IMAGE_STORAGE)
        .media_storage_sop_instance_uid("1.2.826.0.1.3680043.99.9.1.1")
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .implementation_class_uid("1.2.826.0.1.3680043.99")
        .build()
        .unwrap();
    let mut out = Vec::new();
    o.with_exact_meta(meta).write_all(&mut out).unwrap();
    out
}

const UIDS: [&str; 3] = [
    "1.2.826.0.1.3680043.99.9",
    "1.2.826.0.1.3680043.99.9.1",
    "1.2.840.113619.2.55.3.604688119.969.1268071029.320",
];

fn options() -> Vec<DeidOption> {
    vec![DeidOption::RetainLongModifiedDates, DeidOption::CleanDescriptors]
}

fn generate() -> Value {
    let keys = DeidKeys::from_secret(&SECRET);
    let profile = Profile::new(DeidLevel::Pseudonymised, &options(), Vec::new()).unwrap();
    let input = input_object();
    let out = deidentify(&input, &profile, &keys).unwrap();
    let record = RelinkRecord {
        v: RELINK_VERSION,
        patient_id: "PID-0001".into(),
        issuer: "VECTOR".into(),
        patient_name: "Doe^Jane".into(),
        studies: BTreeMap::from([(out.study_uid.1.clone(), out.study_uid.0.clone())]),
    };
    json!({
        "description": "medmesh de-identification, version 1 (docs/PROTOCOL.md section 13): keys derived from a site secret (32 x 0x51), UID remapping (2.25 + UUID version 8 from a keyed BLAKE3), patient pseudonyms, per-patient date shifts, the plaintext of a re-link record, and a small CT object de-identified at the pseudonymised level with the options retain-long-modified-dates and clean-descriptors. Checked by node/src/deid/vectors.rs; rewrite with MEDMESH_WRITE_VECTORS=1 after a deliberate change.",
        "secret": hx(&SECRET),
        "keys": {
            "uid": { "context": "medmesh/v1/deid uid key", "key": hx(&blake3::derive_key("medmesh/v1/deid uid key", &SECRET)) },
            "pseudonym": { "context": "medmesh/v1/deid pseudonym key", "key": hx(&blake3::derive_key("medmesh/v1/deid pseudonym key", &SECRET)) },
            "dates": { "context": "medmesh/v1/deid date shift key", "key": hx(&blake3::derive_key("medmesh/v1/deid date shift key", &SECRET)) },
        },
        "uids": UIDS.iter().map(|u| json!({ "uid": u, "mapped": keys.map_uid(u) })).collect::<Vec<_>>(),
        "pseudonyms": [
            { "prefix": "PSN-", "issuer": "VECTOR", "patient_id": "PID-0001", "pseudonym": keys.pseudonym("PSN-", "VECTOR", "PID-0001") },
            { "prefix": "ANON-", "issuer": "", "patient_id": "12345", "pseudonym": keys.pseudonym("ANON-", "", "12345") },
        ],
        "date_shifts": [
            { "issuer": "VECTOR", "patient_id": "PID-0001", "days": keys.date_shift("VECTOR", "PID-0001"), "date": "20240315", "shifted": shift_value(VR::DA, "20240315", keys.date_shift("VECTOR", "PID-0001")) },
        ],
        "relink_record": { "cbor": hx(&crate::cbor::encode("re-link record", &record).unwrap()) },
        "object": {
            "level": "pseudonymised",
            "options": options().iter().map(|o| o.name()).collect::<Vec<_>>(),
            "input": hx(&input),
            "output": hx(&out.bytes),
        },
    })
}

#[test]
fn deid_vectors() {
    let generated = generate();
    if std::env::var_os("MEDMESH_WRITE_VECTORS").is_some_and(|v| v == "1") {
        std::fs::write(FILE, serde_json::to_string_pretty(&generated).unwrap() + "\n").unwrap();
    }
    let file: Value = serde_json::from_str(&std::fs::read_to_string(FILE).unwrap()).unwrap();
    let secret: [u8; 32] = unhex(&file["secret"]).try_into().unwrap();
    for name in ["uid", "pseudonym", "dates"] {
        let k = &file["keys"][name];
        assert_eq!(
            unhex(&k["key"]),
            blake3::derive_key(k["context"].as_str().unwrap(), &secret),
            "{name}"
        );
    }
    // UIDs: 2.25 + the first 16 bytes of keyed BLAKE3, version 8 and variant bits set.
    let uid_key: [u8; 32] = unhex(&file["keys"]["uid"]["key"]).try_into().unwrap();
    for v in file["uids"].as_array().unwrap() {
        let h = blake3::keyed_hash(&uid_key, v["uid"].as_str().unwrap().as_bytes());
        let mut b = [0u8; 16];
        b.copy_from_slice(&h.as_bytes()[..16]);
        b[6] = (b[6] & 0x0F) | 0x80;
        b[8] = (b[8] & 0x3F) | 0x80;
        assert_eq!(v["mapped"], format!("2.25.{}", u128::from_be_bytes(b)));
    }
    // Pseudonyms: prefix + the first 20 hex digits (upper case) of keyed BLAKE3(issuer, 0, id).
    let p_key: [u8; 32] = unhex(&file["keys"]["pseudonym"]["key"]).try_into().unwrap();
    for v in file["pseudonyms"].as_array().unwrap() {
        let mut h = blake3::Hasher::new_keyed(&p_key);
        h.update(v["issuer"].as_str().unwrap().as_bytes());
        h.update(&[0]);
        h.update(v["patient_id"].as_str().unwrap().as_bytes());
        let hex = h.finalize().to_hex().to_uppercase();
        assert_eq!(
            v["pseudonym"],
            format!("{}{}", v["prefix"].as_str().unwrap(), &hex[..20])
        );
    }
    // Date shifts: -1 - (first 8 bytes of keyed BLAKE3(issuer, 0, id), LE) mod 3650 days.
    let d_key: [u8; 32] = unhex(&file["keys"]["dates"]["key"]).try_into().unwrap();
    for v in file["date_shifts"].as_array().unwrap() {
        let mut h = blake3::Hasher::new_keyed(&d_key);
        h.update(v["issuer"].as_str().unwrap().as_bytes());
        h.update(&[0]);
        h.update(v["patient_id"].as_str().unwrap().as_bytes());
        let mut b = [0u8; 8];
        b.copy_from_slice(&h.finalize().as_bytes()[..8]);
        let days = -1 - i64::try_from(u64::from_le_bytes(b) % 3650).unwrap();
        assert_eq!(v["days"], days);
        let date = chrono::NaiveDate::parse_from_str(v["date"].as_str().unwrap(), "%Y%m%d").unwrap();
        assert_eq!(
            v["shifted"],
            (date + chrono::Duration::days(days)).format("%Y%m%d").to_string()
        );
    }
    // The re-link record decodes, at its version.
    let r: RelinkRecord =
        crate::cbor::decode("re-link record", &unhex(&file["relink_record"]["cbor"]), 1 << 20).unwrap();
    assert_eq!(r.v, RELINK_VERSION);
    assert_eq!(r.patient_id, "PID-0001");
    // The object: the output is what this build makes from the input, and it
    // holds the pseudonym, remapped UIDs and shifted date, and no identifier.
    let input = unhex(&file["object"]["input"]);
    let output = unhex(&file["object"]["output"]);
    let keys = DeidKeys::from_secret(&secret);
    let profile = Profile::new(DeidLevel::Pseudonymised, &options(), Vec::new()).unwrap();
    assert_eq!(deidentify(&input, &profile, &keys).unwrap().bytes, output);
    let obj = crate::dicom::parse_whole(&output).unwrap().0;
    assert_eq!(str_at(&obj, tags::PATIENT_ID), file["pseudonyms"][0]["pseudonym"]);
    assert_eq!(str_at(&obj, tags::STUDY_INSTANCE_UID), file["uids"][0]["mapped"]);
    assert_eq!(str_at(&obj, tags::STUDY_DATE), file["date_shifts"][0]["shifted"]);
    assert_eq!(str_at(&obj, tags::STUDY_DESCRIPTION), "CT head for *");
    for needle in [
        "Doe",
        "PID-0001",
        "ACC123",
        "Vector Hospital",
        "19700101",
        "1.2.826.0.1.3680043.99.9",
    ] {
        assert!(
            !output.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{needle}"
        );
    }
    assert_eq!(
        file, generated,
        "docs/vectors/deid-v1.json differs from this build's output"
    );
}
