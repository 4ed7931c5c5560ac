//! No patient data in plaintext anywhere on disk (issue 2, point 6).

use std::collections::BTreeSet;

use dicom_dictionary_std::tags;
use medmesh_testnet::{StudySpec, generate, latin1};

use crate::util::*;

/// Identifying values of a DICOM file, read with dicom-object directly (not
/// with medmesh's own parser).
fn identifying_values(path: &std::path::Path) -> Vec<String> {
    let Ok(obj) = dicom_object::open_file(path) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for tag in [
        tags::PATIENT_NAME,
        tags::PATIENT_ID,
        tags::PATIENT_BIRTH_DATE,
        tags::ACCESSION_NUMBER,
        tags::STUDY_INSTANCE_UID,
        tags::SERIES_INSTANCE_UID,
        tags::SOP_INSTANCE_UID,
        tags::INSTITUTION_NAME,
        tags::REFERRING_PHYSICIAN_NAME,
        tags::STUDY_DESCRIPTION,
        tags::SERIES_DESCRIPTION,
    ] {
        if let Some(v) = obj.get(tag).and_then(|e| e.to_str().ok()) {
            out.push(v.trim_matches(|c: char| c == '\0' || c.is_whitespace()).to_string());
        }
    }
    out
}

#[test]
fn no_identifying_value_of_any_imported_file_is_on_disk() {
    let (dir, home) = new_home("Klinikum Nord");
    let gen_dir = dir.path().join("generated");
    let spec = StudySpec {
        seed: 42,
        slices: 4,
        rows: 64,
        cols: 64,
        ..StudySpec::default()
    };
    let generated = generate(&spec, &gen_dir).expect("generate");
    let out = run(
        &home,
        &[
            "study",
            "import",
            "--json",
            corpus().to_str().expect("utf8"),
            gen_dir.to_str().expect("utf8"),
        ],
    )
    .expect("run");
    let mut needles: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut imported = 0;
    for (kind, data) in json_lines(&out.stdout) {
        if kind == "file" && data["status"] == "imported" {
            imported += 1;
            for v in identifying_values(std::path::Path::new(data["path"].as_str().expect("path"))) {
                // Shorter values (sex, "CT") would match ciphertext by chance.
                if v.len() >= 6 {
                    needles.insert(v.as_bytes().to_vec());
                }
            }
        }
    }
    for (_, v) in generated.phi.identifiers() {
        if v.len() >= 6 {
            needles.insert(v.as_bytes().to_vec());
            if let Some(l) = latin1(v) {
                needles.insert(l);
            }
        }
    }
    needles.insert(generated.study_uid.as_bytes().to_vec());
    assert!(imported >= 80, "{imported} files imported");
    assert!(needles.len() >= 100, "{} values to look for", needles.len());
    let files = files_under(&home);
    assert!(files.len() > imported, "blobs, keys, database, config");
    for f in &files {
        let bytes = std::fs::read(f).expect("read");
        for n in &needles {
            assert!(
                !bytes.windows(n.len()).any(|w| w == n.as_slice()),
                "{} holds {:?} in plaintext",
                f.display(),
                String::from_utf8_lossy(n)
            );
        }
    }
}
