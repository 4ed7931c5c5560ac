//! The repository's DICOM corpus through import and export.

use std::collections::{BTreeMap, BTreeSet};

use crate::util::*;

/// Reasons a `valid` file may still be refused: it is a valid DICOM data set
/// but not a storable study object (no SOP Class or Study identity, as in
/// data-set fragments and non-patient objects such as Color Palettes), or it
/// uses an encoding the DICOM parser cannot read. Each is said in the reason.
const NOT_A_STUDY_OBJECT: &[&str] = &[
    "has no SOP Class UID (0008,0016)",
    "has no SOP Instance UID (0008,0018)",
    "has no Study Instance UID (0020,000D)",
    "has no Series Instance UID (0020,000E)",
    "encoded as UN with undefined length",
];

fn import_corpus(home: &std::path::Path) -> BTreeMap<String, serde_json::Value> {
    let out = run(home, &["study", "import", "--json", corpus().to_str().expect("utf8")]).expect("run");
    expect_code(&out, 1, "import of a corpus that holds malformed files");
    let mut by_path = BTreeMap::new();
    for (kind, data) in json_lines(&out.stdout) {
        if kind == "file" {
            let path = data["path"].as_str().expect("path").to_string();
            let rel = path
                .strip_prefix(&format!("{}/", corpus().display()))
                .unwrap_or(&path)
                .to_string();
            by_path.insert(rel, data);
        }
    }
    by_path
}

#[test]
fn every_valid_file_imports_and_exports_byte_identical() {
    let (dir, home) = new_home("Klinikum Nord");
    let outcomes = import_corpus(&home);
    let mut imported_hashes = BTreeSet::new();
    for (path, entry) in manifest() {
        let outcome = outcomes.get(&path).unwrap_or_else(|| panic!("no outcome for {path}"));
        let status = outcome["status"].as_str().expect("status");
        match entry["status"].as_str().expect("manifest status") {
            "malformed" => assert_eq!(status, "rejected", "{path} is malformed but was {status}"),
            _ if path.contains("DICOMDIR") => assert!(status == "skipped" || status == "rejected", "{path}: {status}"),
            "valid" | "valid-no-part10-header" | "edge-case" => {
                if status == "rejected" {
                    let reason = outcome["reason"].as_str().expect("reason");
                    assert!(
                        NOT_A_STUDY_OBJECT.iter().any(|r| reason.contains(r)),
                        "valid file {path} rejected: {reason}"
                    );
                } else {
                    assert_eq!(status, "imported", "{path}");
                    let bytes = std::fs::read(corpus().join(&path)).expect("read");
                    imported_hashes.insert(blake3::hash(&bytes).to_hex().to_string());
                }
            }
            // Non-conformant files: accepted or refused, but always with a status and (if refused) a reason.
            _ => assert!(status != "rejected" || outcome["reason"].as_str().is_some_and(|r| !r.is_empty())),
        }
    }
    // The files known to be valid and storable are a large majority.
    assert!(
        imported_hashes.len() >= 80,
        "only {} files imported",
        imported_hashes.len()
    );

    // Export every study; the exported files are exactly the imported ones.
    let list = run(&home, &["study", "list", "--json"]).expect("run");
    expect_code(&list, 0, "study list");
    let studies: Vec<String> = json_lines(&list.stdout)
        .into_iter()
        .map(|(_, d)| d["study_uid"].as_str().expect("uid").to_string())
        .collect();
    assert!(studies.len() >= 20, "{} studies", studies.len());
    let out_dir = dir.path().join("export");
    let mut exported_hashes = BTreeSet::new();
    let mut all_imported = BTreeSet::new();
    for (path, o) in &outcomes {
        if o["status"] == "imported" {
            all_imported.insert(
                blake3::hash(&std::fs::read(corpus().join(path)).expect("read"))
                    .to_hex()
                    .to_string(),
            );
        }
    }
    for (i, uid) in studies.iter().enumerate() {
        let target = out_dir.join(i.to_string());
        let out = run(
            &home,
            &[
                "study",
                "export",
                uid,
                "--out",
                target.to_str().expect("utf8"),
                "--json",
            ],
        )
        .expect("run");
        expect_code(&out, 0, "export");
        for f in files_under(&target) {
            exported_hashes.insert(blake3::hash(&std::fs::read(&f).expect("read")).to_hex().to_string());
        }
    }
    assert_eq!(
        exported_hashes, all_imported,
        "exported files differ from the imported ones"
    );
    assert!(imported_hashes.is_subset(&exported_hashes));
}

#[test]
fn reimport_stores_nothing_new_and_the_store_stays_consistent() {
    let (_dir, home) = new_home("Klinikum Nord");
    import_corpus(&home);
    let blobs_before = files_under(&home.join("blobs")).len();
    let out = run(&home, &["study", "import", "--json", corpus().to_str().expect("utf8")]).expect("run");
    let summary = json_lines(&out.stdout)
        .into_iter()
        .find(|(k, _)| k == "import-summary")
        .expect("summary")
        .1;
    assert_eq!(summary["imported"], 0);
    assert!(summary["already_stored"].as_u64().expect("n") >= 80);
    assert_eq!(files_under(&home.join("blobs")).len(), blobs_before);
    let check = run(&home, &["store", "check", "--deep", "--json"]).expect("run");
    expect_code(&check, 0, "store check");
    // The first import is in the ledger, one study-imported entry per
    // study; the second, which stored nothing new, added none.
    let imported: Vec<serde_json::Value> = ledger_events(&home, "study-imported")
        .0
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    let studies = run(&home, &["study", "list", "--json"]).expect("run");
    assert_eq!(imported.len(), json_lines(&studies.stdout).len(), "{imported:?}");
    assert!(
        imported
            .iter()
            .all(|e| e["source"] == "files" && e.get("calling_ae").is_none())
    );
    let objects: u64 = imported.iter().map(|e| e["objects"].as_u64().expect("objects")).sum();
    assert!(objects >= 80, "{objects} objects");
}

#[test]
fn malformed_files_are_rejected_with_the_file_and_the_reason() {
    let (_dir, home) = new_home("Klinikum Nord");
    let malformed = corpus().join("malformed");
    let out = run(&home, &["study", "import", malformed.to_str().expect("utf8")]).expect("run");
    expect_code(&out, 1, "import of malformed files");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for (path, entry) in manifest() {
        if entry["status"] == "malformed" && path.starts_with("malformed/") {
            let line = stderr
                .lines()
                .find(|l| l.contains(&path))
                .unwrap_or_else(|| panic!("{path} not reported:\n{stderr}"));
            assert!(line.starts_with("rejected "), "{line}");
            assert!(line.len() > path.len() + 20, "no reason given: {line}");
        }
    }
    // Text that is not DICOM at all.
    let out = run(
        &home,
        &["study", "import", corpus().join("SOURCES.md").to_str().expect("utf8")],
    )
    .expect("run");
    expect_code(&out, 1, "import of a text file");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a DICOM file"));
    // A path that does not exist is an error of the command, exit 2.
    let out = run(&home, &["study", "import", "/nonexistent/medmesh"]).expect("run");
    expect_code(&out, 2, "missing path");
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/medmesh"));
}

#[test]
fn dicomdir_is_skipped_in_a_folder_and_followed_when_named() {
    let (_dir, home) = new_home("Klinikum Nord");
    let dicomdir = corpus().join("dicomdir/pcir/DICOMDIR");
    let out = run(&home, &["study", "import", "--json", dicomdir.to_str().expect("utf8")]).expect("run");
    expect_code(&out, 0, "import of a DICOMDIR");
    let lines = json_lines(&out.stdout);
    let summary = &lines.iter().find(|(k, _)| k == "import-summary").expect("summary").1;
    assert_eq!(summary["skipped"], 1, "the DICOMDIR itself");
    assert!(
        summary["imported"].as_u64().expect("n") >= 10,
        "the files it references: {summary}"
    );

    let (_dir2, home2) = new_home("Klinikum Nord");
    let folder = corpus().join("dicomdir/pcir");
    let out = run(&home2, &["study", "import", "--json", folder.to_str().expect("utf8")]).expect("run");
    let lines = json_lines(&out.stdout);
    let skipped: Vec<_> = lines
        .iter()
        .filter(|(k, d)| k == "file" && d["status"] == "skipped")
        .collect();
    assert!(!skipped.is_empty());
    assert!(
        skipped
            .iter()
            .all(|(_, d)| d["note"].as_str().expect("note").contains("DICOMDIR"))
    );
}

#[test]
fn study_show_and_list_by_patient() {
    let (_dir, home) = new_home("Klinikum Nord");
    let series = corpus().join("series");
    let out = run(&home, &["study", "import", series.to_str().expect("utf8")]).expect("run");
    expect_code(&out, 0, "import of a series");
    let list = json_lines(&run(&home, &["study", "list", "--json"]).expect("run").stdout);
    assert_eq!(list.len(), 1);
    let study = &list[0].1;
    assert_eq!(study["instances"], 3);
    let uid = study["study_uid"].as_str().expect("uid");
    let show = json_lines(&run(&home, &["study", "show", uid, "--json"]).expect("run").stdout);
    let detail = &show[0].1;
    assert_eq!(detail["series"].as_array().expect("series").len(), 1);
    assert_eq!(detail["series"][0]["instances"].as_array().expect("instances").len(), 3);
    let pid = study["patient_id"].as_str().expect("pid");
    let by_patient = json_lines(
        &run(&home, &["study", "list", "--json", "--patient-id", pid])
            .expect("run")
            .stdout,
    );
    assert_eq!(by_patient.len(), 1);
    let none = json_lines(
        &run(&home, &["study", "list", "--json", "--patient-id", "nobody"])
            .expect("run")
            .stdout,
    );
    assert!(none.is_empty());
    let missing = run(&home, &["study", "show", "1.2.3.4"]).expect("run");
    expect_code(&missing, 2, "unknown study");
}

#[test]
fn files_above_the_full_parse_limit_stream_through_and_round_trip() {
    let (dir, home) = new_home("Klinikum Nord");
    // Every file of the folder is larger than this: all take the streaming path
    // (header parsed up to Pixel Data, object sealed from the file in chunks).
    let config = home.join("config.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace("full_parse_limit = 67108864", "full_parse_limit = 4096"),
    )
    .expect("config");
    let folder = corpus().join("transfer-syntax");
    let out = run(&home, &["study", "import", "--json", folder.to_str().expect("utf8")]).expect("run");
    expect_code(&out, 0, "import through the streaming path");
    let mut originals = BTreeSet::new();
    for f in files_under(&folder) {
        originals.insert(blake3::hash(&std::fs::read(&f).expect("read")).to_hex().to_string());
    }
    let mut exported = BTreeSet::new();
    for (i, (_, study)) in json_lines(&run(&home, &["study", "list", "--json"]).expect("run").stdout)
        .into_iter()
        .enumerate()
    {
        let target = dir.path().join(format!("out-{i}"));
        let uid = study["study_uid"].as_str().expect("uid");
        expect_code(
            &run(
                &home,
                &["study", "export", uid, "--out", target.to_str().expect("utf8")],
            )
            .expect("run"),
            0,
            "export",
        );
        for f in files_under(&target) {
            exported.insert(blake3::hash(&std::fs::read(&f).expect("read")).to_hex().to_string());
        }
    }
    assert_eq!(exported, originals);
}
