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

/// Issue 16 item 8: a study imported through a running node and transferred
/// to another leaves none of its UIDs (study, series, SOP instance, frame of
/// reference) and none of its patient values in either node's log.
#[test]
fn no_uid_or_patient_value_of_an_imported_and_transferred_study_is_logged() {
    use std::time::Duration;

    use medmesh_testnet::cluster::Cluster;

    let dir = tempfile::tempdir().expect("tempdir");
    let mut net = Cluster::create(dir.path(), 2).expect("create");
    net.start().expect("start");
    net.wait_mesh(Duration::from_secs(60)).expect("mesh");
    let (holder, recipient) = (net.nodes[0].home.clone(), net.nodes[1].home.clone());
    let (holder_peer, recipient_peer) = (net.nodes[0].peer_id.clone(), net.nodes[1].peer_id.clone());
    let gen_dir = dir.path().join("generated");
    let spec = StudySpec {
        seed: 1616,
        slices: 3,
        rows: 64,
        cols: 64,
        ..StudySpec::default()
    };
    let g = generate(&spec, &gen_dir).expect("generate");
    let s = |p: &std::path::Path| p.to_str().expect("utf8").to_string();
    expect_code(
        &run(&holder, &["study", "import", &s(&gen_dir)]).expect("run"),
        0,
        "import through the running node",
    );
    let args = [
        "consent",
        "add",
        "--patient-id",
        &g.phi.patient_id,
        "--issuer",
        &g.phi.issuer_of_patient_id,
        "--purpose",
        "treatment",
        "--recipient-peer",
        &recipient_peer,
        "--level",
        "identifiable",
    ];
    expect_code(&run(&holder, &args).expect("run"), 0, "consent add");
    let out = run(
        &recipient,
        &[
            "request",
            "--peer",
            &holder_peer,
            "--study",
            &g.study_uid,
            "--purpose",
            "treatment",
            "--wait",
            "--timeout",
            "120",
        ],
    )
    .expect("run");
    expect_code(&out, 0, "request --wait");
    // The received copy is read once on the recipient (a `study show`).
    expect_code(
        &run(&recipient, &["study", "show", &g.study_uid]).expect("run"),
        0,
        "study show",
    );
    drop(net);

    let mut needles: BTreeSet<String> = BTreeSet::new();
    needles.insert(g.study_uid.clone());
    needles.insert(g.frame_of_reference_uid.clone());
    needles.extend(g.series_uids.iter().cloned());
    needles.extend(g.sop_instance_uids.iter().cloned());
    for (_, v) in g.phi.identifiers() {
        if v.len() >= 6 {
            needles.insert(v.to_string());
        }
    }
    for p in g.files.iter() {
        for v in identifying_values(p) {
            if v.len() >= 6 {
                needles.insert(v);
            }
        }
    }
    let logs: Vec<(std::path::PathBuf, String)> = [&holder, &recipient]
        .iter()
        .map(|h| {
            let p = h.join("node.log");
            let text = std::fs::read_to_string(&p).expect("node.log");
            (p, text)
        })
        .collect();
    assert!(
        logs.iter()
            .all(|(_, t)| t.contains("study received") || t.contains("node running")),
        "the logs were written"
    );
    for (path, text) in &logs {
        for n in &needles {
            assert!(!text.contains(n.as_str()), "{} logs {n:?}", path.display());
        }
    }
}
