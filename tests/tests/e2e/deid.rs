//! `medmesh study deid` and `medmesh study relink` on real processes: on
//! the home's files and through a running node.

use std::path::Path;
use std::time::Duration;

use dicom_dictionary_std::tags;
use medmesh_testnet::cluster::Cluster;

use crate::util::*;

fn str_of(path: &Path, tag: dicom_object::Tag) -> String {
    let obj = dicom_object::OpenFileOptions::new()
        .open_file(path)
        .expect("a DICOM file");
    obj.element(tag)
        .ok()
        .and_then(|e| e.to_str().ok().map(|s| s.trim_matches(['\0', ' ']).to_string()))
        .unwrap_or_default()
}

/// (written outcomes, refused outcomes, summary) of a `study deid --json` run.
fn outcomes(stdout: &[u8]) -> (Vec<serde_json::Value>, Vec<serde_json::Value>, serde_json::Value) {
    let (mut written, mut refused, mut summary) = (Vec::new(), Vec::new(), serde_json::Value::Null);
    for (kind, data) in json_lines(stdout) {
        match (kind.as_str(), data["outcome"].as_str()) {
            ("file", Some("written")) => written.push(data),
            ("file", Some("refused")) => refused.push(data),
            ("file", other) => panic!("unexpected outcome {other:?}: {data}"),
            ("deid-summary", _) => summary = data,
            _ => {}
        }
    }
    (written, refused, summary)
}

#[test]
fn deid_writes_pseudonymised_copies_refuses_burned_in_and_relinks_on_the_holder() {
    let (dir, home) = new_home("Klinikum Nord");
    let out = dir.path().join("export");
    let ct = corpus().join("ct/ct_ge_small_explicit-le.dcm");
    let us = corpus().join("us/us_philips_burned-in-annotation-yes.dcm");
    let args = |level: &str, out: &Path| {
        vec![
            "study".to_string(),
            "deid".into(),
            ct.display().to_string(),
            us.display().to_string(),
            "--out".into(),
            out.display().to_string(),
            "--level".into(),
            level.into(),
            "--option".into(),
            "retain-long-modified-dates".into(),
            "--json".into(),
        ]
    };
    let a: Vec<String> = args("pseudonymised", &out);
    let r = run(&home, &a.iter().map(String::as_str).collect::<Vec<_>>()).expect("run");
    expect_code(&r, 1, "a burned-in image is refused");
    let (written, refused, summary) = outcomes(&r.stdout);
    assert_eq!((written.len(), refused.len()), (1, 1), "{summary}");
    assert_eq!(summary["relinkable"], 1);
    assert_eq!(refused[0]["path"], us.display().to_string());
    assert!(
        refused[0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("Burned In Annotation (0028,0301) is YES"),
        "{}",
        refused[0]
    );
    // The copy: named by new UIDs, no identifier of the input in its bytes.
    let output = Path::new(written[0]["output"].as_str().expect("output"));
    assert!(output.starts_with(&out));
    let name = output.file_name().expect("name").to_string_lossy().to_string();
    assert!(name.starts_with("2.25."), "{name}");
    let bytes = std::fs::read(output).expect("output");
    let (pid, pname) = (str_of(&ct, tags::PATIENT_ID), str_of(&ct, tags::PATIENT_NAME));
    let study = str_of(&ct, tags::STUDY_INSTANCE_UID);
    for needle in [&pid, &pname, &study] {
        assert!(!bytes.windows(needle.len()).any(|w| w == needle.as_bytes()), "{needle}");
    }
    let pseudonym = written[0]["pseudonym"].as_str().expect("pseudonym").to_string();
    assert_eq!(str_of(output, tags::PATIENT_ID), pseudonym);
    assert_eq!(str_of(output, tags::PATIENT_IDENTITY_REMOVED), "YES");
    // The holder re-links it.
    let r = run(&home, &["study", "relink", &pseudonym, "--json"]).expect("run");
    expect_code(&r, 0, "relink");
    let (_, v) = json_lines(&r.stdout)
        .into_iter()
        .find(|(k, _)| k == "relink")
        .expect("relink line");
    assert_eq!(v["patient_id"], pid);
    assert_eq!(v["patient_name"], pname);
    assert_eq!(v["studies"][str_of(output, tags::STUDY_INSTANCE_UID)], study);
    // The same input again gives the same pseudonym and UIDs (site keys).
    let again = dir.path().join("again");
    let a: Vec<String> = args("pseudonymised", &again);
    let r = run(&home, &a.iter().map(String::as_str).collect::<Vec<_>>()).expect("run");
    let (w2, _, _) = outcomes(&r.stdout);
    assert_eq!(w2[0]["pseudonym"], pseudonym);
    assert_eq!(
        std::fs::read(w2[0]["output"].as_str().expect("output")).expect("read"),
        bytes
    );
    // Anonymised: keys of the run only, nothing to re-link.
    let anon = dir.path().join("anon");
    let a: Vec<String> = args("anonymised", &anon);
    let r = run(&home, &a.iter().map(String::as_str).collect::<Vec<_>>()).expect("run");
    let (w3, _, s3) = outcomes(&r.stdout);
    assert_eq!(s3["relinkable"], 0);
    let anon_pseudonym = w3[0]["pseudonym"].as_str().expect("pseudonym");
    assert!(anon_pseudonym.starts_with("ANON-"));
    assert_ne!(
        str_of(
            Path::new(w3[0]["output"].as_str().expect("o")),
            tags::STUDY_INSTANCE_UID
        ),
        str_of(output, tags::STUDY_INSTANCE_UID)
    );
    let r = run(&home, &["study", "relink", anon_pseudonym]).expect("run");
    expect_code(&r, 2, "an anonymised pseudonym");
    assert!(String::from_utf8_lossy(&r.stderr).contains("no re-link record"));
    // A masking rule covering the ultrasound makes it go out, masked.
    let cfg = home.join("config.toml");
    let text = std::fs::read_to_string(&cfg).expect("config");
    std::fs::write(
        &cfg,
        text.replace(
            "mask = []\n",
            "[[deid.mask]]\nmodality = \"US\"\nrects = [[0, 0, 10000, 40]]\n",
        ),
    )
    .expect("config");
    let masked = dir.path().join("masked");
    let a: Vec<String> = args("anonymised", &masked);
    let r = run(&home, &a.iter().map(String::as_str).collect::<Vec<_>>()).expect("run");
    expect_code(&r, 0, "covered by a masking rule");
    let (w4, _, _) = outcomes(&r.stdout);
    let us_out = w4
        .iter()
        .find(|w| w["path"] == us.display().to_string())
        .expect("the ultrasound");
    assert_eq!(us_out["masked"], true);
    assert_eq!(
        str_of(
            Path::new(us_out["output"].as_str().expect("o")),
            tags::BURNED_IN_ANNOTATION
        ),
        "NO"
    );
}

#[test]
fn deid_and_relink_go_through_a_running_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut net = Cluster::create(dir.path(), 1).expect("create");
    net.start().expect("start");
    net.wait_mesh(Duration::from_secs(60)).expect("running");
    let home = net.nodes[0].home.clone();
    let out = dir.path().join("export");
    let ct = corpus().join("ct");
    let r = run(
        &home,
        &[
            "study",
            "deid",
            &ct.display().to_string(),
            "--out",
            &out.display().to_string(),
            "--level",
            "pseudonymised",
            "--json",
        ],
    )
    .expect("run");
    // The CT folder holds two secondary captures that are refused.
    expect_code(&r, 1, "deid through the node");
    let (written, refused, summary) = outcomes(&r.stdout);
    assert!(!written.is_empty() && !refused.is_empty(), "{summary}");
    let pseudonym = written[0]["pseudonym"].as_str().expect("pseudonym");
    let r = run(&home, &["study", "relink", pseudonym, "--json"]).expect("run");
    expect_code(&r, 0, "relink through the node");
    let log = std::fs::read_to_string(home.join("node.log")).unwrap_or_default();
    assert!(log.contains("re-link of a pseudonym requested"), "{log}");
    assert!(!log.contains(&str_of(&ct.join("ct_ge_small_explicit-le.dcm"), tags::PATIENT_ID)));
    net.stop();
}

/// Every value of every element of a DICOM file, at every depth (string
/// values as text, others as Latin-1 bytes; pixel data left out).
fn all_values(obj: &dicom_object::InMemDicomObject, out: &mut Vec<String>) {
    for e in obj.iter() {
        if let Some(items) = e.items() {
            for i in items {
                all_values(i, out);
            }
        } else if e.header().tag != tags::PIXEL_DATA {
            match e.to_multi_str() {
                Ok(v) => out.extend(v.iter().cloned()),
                Err(_) => {
                    if let Ok(b) = e.to_bytes() {
                        out.push(b.iter().map(|&c| char::from(c)).collect());
                    }
                }
            }
        }
    }
}

/// The identifying strings of an input, read with dicom-object: every part
/// of every person name at any depth, the patient's IDs, address, birth
/// date, accession number, institution, and every original UID.
fn identifying(obj: &dicom_object::InMemDicomObject, out: &mut Vec<String>) {
    use dicom_object::mem::InMemElement;
    let text = |e: &InMemElement| -> Vec<String> {
        e.to_multi_str()
            .map(|v| v.iter().map(|s| s.trim_matches(['\0', ' ']).to_string()).collect())
            .unwrap_or_default()
    };
    for e in obj.iter() {
        if let Some(items) = e.items() {
            for i in items {
                identifying(i, out);
            }
            continue;
        }
        let vr = format!("{:?}", e.header().vr);
        for v in text(e) {
            if vr == "PN" {
                for comp in v.split('^').take(3) {
                    out.push(comp.to_string());
                    out.extend(comp.split([' ', '-']).map(str::to_string));
                }
            } else if vr == "UI" {
                if !v.starts_with("1.2.840.10008.") && v.len() > 8 {
                    out.push(v);
                }
            } else if [
                tags::PATIENT_ID,
                tags::PATIENT_BIRTH_DATE,
                tags::PATIENT_ADDRESS,
                tags::ACCESSION_NUMBER,
                tags::INSTITUTION_NAME,
            ]
            .contains(&e.header().tag)
            {
                out.push(v);
            }
        }
    }
}

/// Whether `needle` is in `hay`, ignoring case; an ID of digits only counts
/// when no digit touches it, a two-letter name part only as a word.
fn occurs(hay: &str, needle: &str) -> bool {
    let (h, n) = (hay.to_lowercase(), needle.to_lowercase());
    let numeric = !n.chars().any(char::is_alphabetic);
    let short = n.chars().count() < 3;
    h.match_indices(&n).any(|(a, _)| {
        let (before, after) = (h[..a].chars().next_back(), h[a + n.len()..].chars().next());
        let touches = |f: fn(&char) -> bool| before.as_ref().is_some_and(f) || after.as_ref().is_some_and(f);
        !(numeric && touches(char::is_ascii_digit) || short && touches(|c| c.is_alphanumeric()))
    })
}

#[test]
fn deid_leaves_no_identifying_text_link_or_site_name_in_structured_reports() {
    let (dir, home) = new_home("Klinikum Nord Hamburg");
    let host = "pacs01.klinikum-nord.example";
    let cfg = home.join("config.toml");
    let text = std::fs::read_to_string(&cfg).expect("config");
    assert!(text.contains("site_names = []\n"), "the template lists site_names");
    std::fs::write(
        &cfg,
        text.replace(
            "site_names = []\n",
            &format!("site_names = [\"{host}\", \"KNPACS01\"]\n"),
        ),
    )
    .expect("config");
    let sr = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/deid/sr_phi-narrative.dcm");
    for (level, option, name) in [
        ("anonymised", None, "anon"),
        ("pseudonymised", Some("clean-structured-content"), "csc"),
    ] {
        let out = dir.path().join(name);
        let mut args = vec![
            "study".to_string(),
            "deid".into(),
            sr.display().to_string(),
            corpus().join("sr").display().to_string(),
            "--out".into(),
            out.display().to_string(),
            "--level".into(),
            level.into(),
            "--json".into(),
        ];
        if let Some(o) = option {
            args.extend(["--option".to_string(), o.to_string()]);
        }
        let r = run(&home, &args.iter().map(String::as_str).collect::<Vec<_>>()).expect("run");
        expect_code(&r, 0, "structured reports are de-identified");
        let (written, _, summary) = outcomes(&r.stdout);
        assert_eq!(written.len(), 3, "{summary}");
        for w in &written {
            let input = dicom_object::open_file(w["path"].as_str().expect("path")).expect("input");
            let output = dicom_object::open_file(w["output"].as_str().expect("output")).expect("output");
            let mut needles = vec![host.to_string(), "KNPACS01".to_string()];
            identifying(&input, &mut needles);
            needles.retain(|n| n.chars().count() >= 2 && !"anonymized".contains(&n.to_lowercase()));
            let mut values = Vec::new();
            all_values(&output, &mut values);
            for n in &needles {
                let hit: Vec<&String> = values.iter().filter(|v| occurs(v, n)).collect();
                assert!(hit.is_empty(), "{level}: {n:?} survives in {}: {hit:?}", w["path"]);
            }
            assert!(output.element(tags::RETRIEVE_URL).is_err(), "Retrieve URL removed");
            if w["path"].as_str() == Some(&sr.display().to_string()) {
                let report = values.join("\n");
                let kept = report.contains("A 12 mm nodule in the right upper lobe.");
                assert_eq!(kept, option.is_some(), "{level}: the clinical text {report}");
            }
        }
    }
}
