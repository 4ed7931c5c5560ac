//! The README's main command and the scenarios, as tests: `medmesh-testnet
//! demo` and `scenario all` (reduced sizes) must pass every step.

use medmesh_testnet::scenario::Step;

fn failed(steps: &[Step]) -> Vec<&Step> {
    steps.iter().filter(|s| !s.pass).collect()
}

#[test]
fn the_demo_passes_every_step() {
    let dir = tempfile::tempdir().expect("tempdir");
    let steps = medmesh_testnet::scenario::demo::run(dir.path(), &mut |_| {}).expect("the demo runs");
    // The PACS leg is two steps with dcmtk (the modality's C-STORE, the
    // forwarding to Süd's PACS), one saying it was skipped without.
    let dcmtk = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|d| d.join("storescu").is_file() && d.join("storescp").is_file());
    assert!(
        dcmtk || std::env::var("CI").is_err(),
        "dcmtk is missing: run scripts/system-deps.sh"
    );
    assert_eq!(steps.len(), if dcmtk { 19 } else { 18 }, "{steps:#?}");
    assert!(failed(&steps).is_empty(), "failed steps: {:#?}", failed(&steps));
    // It stopped what it started: no node socket answers any more.
    for site in ["nord", "sued", "lumiere"] {
        let socket = dir.path().join(site).join("node.sock");
        assert!(
            std::os::unix::net::UnixStream::connect(&socket).is_err(),
            "{site} still runs"
        );
    }
}

/// Every scenario at the sizes a 2-core CI machine runs (the full sizes run
/// in `bench/`): transfer, ledger, scale (8 nodes), partition, load (30 studies).
#[test]
fn scenario_all_passes_every_step() {
    use medmesh_testnet::scenario::all::{self, AllOptions};
    let dir = tempfile::tempdir().expect("tempdir");
    let runs = all::run(dir.path(), &AllOptions::reduced(), &mut |_, _| {});
    let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, all::NAMES);
    for r in &runs {
        assert!(r.error.is_none(), "{} did not run: {:?}", r.name, r.error);
        assert!(!r.steps.is_empty(), "{} has no steps", r.name);
        assert!(r.pass, "{} failed: {:#?}", r.name, failed(&r.steps));
        assert!(
            !r.figures.is_null() || r.name == "transfer",
            "{} measured nothing",
            r.name
        );
    }
}
