//! SIGKILL during a large import leaves a consistent store (issue 2, point 8).

use std::time::{Duration, Instant};

use medmesh_testnet::{StudySpec, generate};

use crate::util::*;

#[test]
fn sigkill_during_import_then_rerun_gives_a_consistent_store() {
    let (dir, home) = new_home("Klinikum Nord");
    let slices: u32 = 400;
    let total = u64::from(slices);
    let spec = StudySpec {
        seed: 9,
        slices,
        rows: 256,
        cols: 256,
        series: 4,
        ..StudySpec::default()
    };
    let study_dir = dir.path().join("study");
    generate(&spec, &study_dir).expect("generate");
    // Small batches, so the kill lands between and inside commits.
    let config = home.join("config.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(&config, text.replace("batch_files = 256", "batch_files = 8")).expect("config");

    let mut child = medmesh(&home)
        .expect("cmd")
        .args(["study", "import", study_dir.to_str().expect("utf8")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let start = Instant::now();
    let committed = || {
        std::fs::read_dir(home.join("blobs"))
            .map(|d| d.flatten().any(|e| e.file_name() != "tmp"))
            .unwrap_or(false)
    };
    while !committed() && start.elapsed() < Duration::from_secs(60) {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "import finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(
        child.try_wait().expect("wait").is_none(),
        "import finished before it could be killed"
    );
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");

    // The store opens, rolls back the interrupted batch, and is consistent.
    let check = run(&home, &["store", "check", "--deep", "--json"]).expect("run");
    expect_code(&check, 0, "store check after SIGKILL");
    let report = &json_lines(&check.stdout)[0].1;
    let partial = report["instances"].as_u64().expect("instances");
    assert!(
        partial < total,
        "the kill landed mid-import ({partial} of {slices} stored)"
    );

    let out = run(&home, &["study", "import", "--json", study_dir.to_str().expect("utf8")]).expect("run");
    expect_code(&out, 0, "re-run of the import");
    let summary = json_lines(&out.stdout)
        .into_iter()
        .find(|(k, _)| k == "import-summary")
        .expect("summary")
        .1;
    assert_eq!(
        summary["imported"].as_u64().expect("n") + summary["already_stored"].as_u64().expect("n"),
        total
    );
    assert_eq!(
        summary["already_stored"].as_u64().expect("n"),
        partial,
        "nothing imported twice"
    );

    let check = run(&home, &["store", "check", "--deep", "--json"]).expect("run");
    expect_code(&check, 0, "store check after the re-run");
    let report = &json_lines(&check.stdout)[0].1;
    assert_eq!(report["instances"], total);
    assert_eq!(report["blob_files"], total);
    let list = json_lines(&run(&home, &["study", "list", "--json"]).expect("run").stdout);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].1["instances"], total);
    assert_eq!(list[0].1["series"], 4);
}
