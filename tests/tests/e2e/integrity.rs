//! A changed byte in a stored blob fails export, naming the object.

use crate::util::*;

#[test]
fn a_changed_blob_byte_fails_export_and_writes_nothing_for_it() {
    let (dir, home) = new_home("Klinikum Nord");
    let file = corpus().join("transfer-syntax/mr_small_explicit-le.dcm");
    expect_code(
        &run(&home, &["study", "import", file.to_str().expect("utf8")]).expect("run"),
        0,
        "import",
    );
    let list = json_lines(&run(&home, &["study", "list", "--json"]).expect("run").stdout);
    let uid = list[0].1["study_uid"].as_str().expect("uid").to_string();
    let show = json_lines(&run(&home, &["study", "show", &uid, "--json"]).expect("run").stdout);
    let sop = show[0].1["series"][0]["instances"][0]["sop_instance_uid"]
        .as_str()
        .expect("sop")
        .to_string();

    let blobs: Vec<_> = files_under(&home.join("blobs"))
        .into_iter()
        .filter(|p| !p.starts_with(home.join("blobs/tmp")))
        .collect();
    assert_eq!(blobs.len(), 1);
    for offset in [3usize, 100, 5000] {
        let original = std::fs::read(&blobs[0]).expect("read");
        let mut changed = original.clone();
        changed[offset] ^= 0x01;
        std::fs::write(&blobs[0], &changed).expect("write");
        let out_dir = dir.path().join(format!("out-{offset}"));
        let out = run(
            &home,
            &["study", "export", &uid, "--out", out_dir.to_str().expect("utf8")],
        )
        .expect("run");
        expect_code(&out, 1, "export of a damaged study");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&sop) && stderr.contains("failed verification"),
            "{stderr}"
        );
        assert!(
            files_under(&out_dir).is_empty(),
            "nothing is written for a damaged object"
        );
        std::fs::write(&blobs[0], &original).expect("restore");
    }
    let out_dir = dir.path().join("out-ok");
    let out = run(
        &home,
        &["study", "export", &uid, "--out", out_dir.to_str().expect("utf8")],
    )
    .expect("run");
    expect_code(&out, 0, "export after restoring the blob");
    let exported = files_under(&out_dir);
    assert_eq!(
        std::fs::read(&exported[0]).expect("read"),
        std::fs::read(&file).expect("read")
    );
    // Exporting again into the same folder refuses to overwrite.
    let again = run(
        &home,
        &["study", "export", &uid, "--out", out_dir.to_str().expect("utf8")],
    )
    .expect("run");
    expect_code(&again, 1, "export over existing files");
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
}
