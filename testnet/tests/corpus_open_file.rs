//! Pins what `dicom_object::open_file` (dicom-object 0.10.1, default options) does with the
//! committed corpus in `tests/data/corpus/`, so that import validation can rely on it and a
//! dependency upgrade that changes it is noticed.
//!
//! Every `valid` Part 10 file must open, except the ones listed in `EXPECTED` with the error
//! dicom-object gives; every other file (malformed, nonconformant, edge-case, no file meta) must
//! be listed in `EXPECTED`.
#![allow(clippy::unwrap_used)] // in tests a panic is the failure report

use std::path::PathBuf;

/// Non-valid files and the outcome of `open_file`: `None` = opens, `Some(s)` = an error whose
/// chain (`err <- source <- ...`) contains `s`.
const EXPECTED: &[(&str, Option<&str>)] = &[
    // edge cases: legal, and dicom-object reads them
    ("edge-cases/charset_empty-specific-character-set.dcm", None),
    ("edge-cases/mr_small_dataset-trailing-padding.dcm", None),
    // malformed
    (
        "malformed/ct_no-meta_stray-leading-byte.dcm",
        Some("magic code check failed"),
    ),
    (
        "malformed/meta_missing-transfer-syntax.dcm",
        Some("Missing data element `TransferSyntax`"),
    ),
    (
        "malformed/mr_truncated-pixel-data.dcm",
        Some("Could not read 8192 value bytes for element tagged (7FE0,0010)"),
    ),
    (
        "malformed/rtplan_truncated-mid-element.dcm",
        Some("Could not read 50 value bytes for element tagged (300A,012C)"),
    ),
    // malformed, but only inside values or pixel fragments: the data set structure still parses
    ("malformed/mr_enhanced_j2k_file-too-short.dcm", None),
    ("malformed/nm_j2k_sequence-delimiter-inside-fragment.dcm", None),
    ("malformed/rtdose_invalid-vr.dcm", None),
    // nonconformant
    ("dicomdir/pcir/DICOMDIR-nooffset", Some("Premature data set end")),
    ("dicomdir/pcir/DICOMDIR-nopatient", None),
    ("malformed/ct_bad-file-meta.dcm", None),
    ("malformed/ct_j2k_pixel-representation-mismatch.dcm", None),
    ("malformed/ct_jpeg-lossless_hex-hash-uids_un-sequence.dcm", None),
    (
        "malformed/meta_no-group-length.dcm",
        Some("Unexpected data element tagged (0002,0001)"),
    ),
    // no preamble / file meta: open_file needs `DICM`
    (
        "no-meta/rtplan_explicit-be_no-meta.dcm",
        Some("magic code check failed"),
    ),
    (
        "no-meta/rtplan_explicit-le_no-meta.dcm",
        Some("magic code check failed"),
    ),
    ("rt/rtstruct_no-meta.dcm", Some("magic code check failed")),
    ("sc/ot_palette-color_no-meta.dcm", Some("magic code check failed")),
    // VALID, yet refused: a private sequence with VR UN and undefined length is read as a
    // 0xFFFFFFFF-byte UN value instead of an implicit-VR sequence (dicom-object 0.10.1). Worse,
    // dicom-parser reserves and zero-fills the declared length first: this 674-byte file costs
    // about 3.7 GB of memory and 1 s (release) or 35 s (debug) before it fails. Opened only by the
    // ignored test below.
    ("private/private-sq_vr-UN.dcm", Some(UN_SEQUENCE_ERROR)),
];

const UN_SEQUENCE: &str = "private/private-sq_vr-UN.dcm";
const UN_SEQUENCE_ERROR: &str = "Could not read 3758161918 value bytes for element tagged (0008,1115)";

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data/corpus")
}

fn outcome(path: &str) -> Result<(), String> {
    match dicom_object::open_file(corpus().join(path)) {
        Ok(_) => Ok(()),
        Err(err) => {
            let mut chain = err.to_string();
            let mut src = std::error::Error::source(&err);
            while let Some(e) = src {
                chain.push_str(" <- ");
                chain.push_str(&e.to_string());
                src = e.source();
            }
            Err(chain)
        }
    }
}

#[test]
fn open_file_outcomes_match_the_corpus_status() {
    let text = std::fs::read_to_string(corpus().join("manifest.json")).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
    let files = manifest["files"].as_array().unwrap();
    assert!(files.len() > 100, "manifest lists {} files", files.len());

    let mut problems = Vec::new();
    for entry in files {
        let path = entry["path"].as_str().unwrap();
        let status = entry["status"].as_str().unwrap();
        let size = entry["size"].as_u64().unwrap();
        let on_disk = std::fs::metadata(corpus().join(path)).map(|m| m.len());
        if on_disk.as_ref().ok() != Some(&size) {
            problems.push(format!("{path}: size {on_disk:?}, manifest says {size}"));
            continue;
        }
        let expected = EXPECTED.iter().find(|(p, _)| *p == path).map(|(_, e)| *e);
        if path == UN_SEQUENCE {
            continue; // see `un_sequence_file_allocates_its_declared_length`
        }
        let got = outcome(path);
        match (expected, &got) {
            (None, _) if status != "valid" => {
                problems.push(format!("{path}: status {status} but not in EXPECTED; got {got:?}"))
            }
            (None | Some(None), Ok(())) => {}
            (Some(Some(want)), Err(chain)) if chain.contains(want) => {}
            _ => problems.push(format!("{path}: expected {expected:?}, got {got:?}")),
        }
    }
    for (path, _) in EXPECTED {
        if !files.iter().any(|e| e["path"] == *path) {
            problems.push(format!("{path}: in EXPECTED but not in manifest.json"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Slow (35 s in a debug build) and memory-hungry (3.7 GB): run with `--ignored`.
#[test]
#[ignore = "allocates about 3.7 GB; run explicitly"]
fn un_sequence_file_allocates_its_declared_length() {
    let got = outcome(UN_SEQUENCE);
    assert!(
        got.as_ref().is_err_and(|chain| chain.contains(UN_SEQUENCE_ERROR)),
        "{got:?}"
    );
}
