//! Scope is decided per object, not per series (issue 16, item 3): an OT
//! object filed under a CT series' UID is not sent under a CT-only consent,
//! and the holder's `transfers show` names it (by reference) and why.

use std::collections::BTreeMap;
use std::time::Duration;

use medmesh_testnet::{StudySpec, generate, restyle};

use crate::transfer::{Study, assert_byte_identical, network, request, s, show, wait_state};
use crate::util::*;

/// Secondary Capture Image Storage: implies no modality (its Modality decides).
const SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7";

#[test]
fn an_ot_object_in_a_ct_series_is_left_out_under_a_ct_only_consent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut net = network(dir.path(), str::to_string);
    let (holder, recipient) = (net.nodes[0].home.clone(), net.nodes[1].home.clone());
    let (holder_peer, recipient_peer) = (net.nodes[0].peer_id.clone(), net.nodes[1].peer_id.clone());
    // A CT series (imported first: the series is CT) ...
    let ct_dir = dir.path().join("ct");
    let spec = StudySpec {
        seed: 41,
        slices: 4,
        rows: 64,
        cols: 64,
        ..StudySpec::default()
    };
    let g = generate(&spec, &ct_dir).expect("generate");
    expect_code(
        &run(&holder, &["study", "import", s(&ct_dir)]).expect("run"),
        0,
        "import CT",
    );
    // ... and an OT secondary capture filed under the same Series Instance UID.
    let ot_dir = dir.path().join("ot");
    std::fs::create_dir_all(&ot_dir).expect("mkdir");
    let ot_uid = format!("{}.99", g.sop_instance_uids[0]);
    restyle(&g.files[0], &ot_dir.join("ot.dcm"), "OT", SECONDARY_CAPTURE, &ot_uid).expect("restyle");
    expect_code(
        &run(&holder, &["study", "import", s(&ot_dir)]).expect("run"),
        0,
        "import OT",
    );
    let out = run(&holder, &["study", "show", &g.study_uid, "--json"]).expect("run");
    expect_code(&out, 0, "study show");
    let shown = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(shown.contains("\"CT\""), "the series is CT: {shown}");

    // Consent for CT only.
    expect_code(
        &run(
            &holder,
            &[
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
                "--modality",
                "CT",
            ],
        )
        .expect("run"),
        0,
        "consent add",
    );
    let (code, done) = request(&recipient, &holder_peer, &g.study_uid, true);
    assert_eq!(code, 0, "{done}");
    let id = done["id"].as_str().expect("id").to_string();

    // The recipient holds the CT objects, byte-identical, and nothing else.
    let mut hashes = BTreeMap::new();
    for (f, uid) in g.files.iter().zip(&g.sop_instance_uids) {
        hashes.insert(uid.clone(), blake3::hash(&std::fs::read(f).expect("read")));
    }
    let ct_only = Study {
        uid: g.study_uid.clone(),
        patient: g.phi.patient_id.clone(),
        name: g.phi.patient_name.clone(),
        issuer: g.phi.issuer_of_patient_id.clone(),
        hashes,
        bytes: g.total_bytes,
    };
    assert_byte_identical(&recipient, dir.path(), &ct_only);

    // The holder names the object left out, by reference, and why.
    let held = wait_state(&holder, &id, &["complete"], Duration::from_secs(30));
    assert_eq!(held["objects"], 5, "4 CT objects and the study index: {held}");
    let left = held["left_out"].as_array().expect("left_out");
    assert_eq!(left.len(), 1, "{held}");
    assert_eq!(left[0]["modality"], "OT", "{held}");
    assert_eq!(left[0]["code"], "modality-not-covered", "{held}");
    assert_eq!(left[0]["object"].as_str().map(str::len), Some(16), "{held}");
    let out = run(&holder, &["transfers", "show", &id]).expect("run");
    expect_code(&out, 0, "transfers show");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("left out") && text.contains(left[0]["object"].as_str().expect("ref")),
        "{text}"
    );
    for shown in [text.to_string(), held.to_string()] {
        assert!(
            !shown.contains(&ot_uid),
            "the object is named by reference, not UID: {shown}"
        );
    }
    let got = show(&recipient, &id);
    assert_eq!(got["objects"], 5, "{got}");
    net.stop();
}
