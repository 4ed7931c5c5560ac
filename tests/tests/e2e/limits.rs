//! Limits on what a trusted peer can make a running node spend
//! (`[limits]`, docs/OPERATIONS.md "Limits"), between real `medmesh run`
//! processes on 127.0.0.1.

use std::path::Path;
use std::time::Duration;

use medmesh_testnet::cluster::Cluster;
use medmesh_testnet::{StudySpec, generate};

use crate::util::*;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8")
}

/// A requester that floods the holder with requests gets `retry-later`
/// beyond the holder's burst, told how long to wait; the holder records and
/// logs only the requests it took.
#[test]
fn a_request_flood_is_answered_retry_later_and_recorded_only_up_to_the_burst() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut net = Cluster::create(dir.path(), 2).expect("create");
    let cfg = net.nodes[0].home.join("config.toml");
    let text = std::fs::read_to_string(&cfg)
        .expect("config")
        .replace("requests_per_minute = 3000", "requests_per_minute = 1")
        .replace("request_burst = 300", "request_burst = 2");
    std::fs::write(&cfg, text).expect("config");
    net.start().expect("start");
    net.wait_mesh(Duration::from_secs(60)).expect("mesh");
    let (holder, recipient) = (net.nodes[0].home.clone(), net.nodes[1].home.clone());
    let holder_peer = net.nodes[0].peer_id.clone();
    let out = dir.path().join("study");
    let spec = StudySpec {
        seed: 41,
        slices: 2,
        rows: 32,
        cols: 32,
        ..StudySpec::default()
    };
    let study = generate(&spec, &out).expect("generate");
    expect_code(&run(&holder, &["study", "import", s(&out)]).expect("run"), 0, "import");
    // The holder's own ledger entries.
    let own_entries = || {
        let out = run(&holder, &["log", "tail", "--limit", "10000", "--json"]).expect("run");
        json_lines(&out.stdout)
            .iter()
            .filter(|(_, e)| e["author"] == holder_peer.as_str())
            .count()
    };
    let entries_before = own_entries();
    let mut told_to_wait = 0;
    let mut answered = 0;
    for _ in 0..8 {
        let out = run(
            &recipient,
            &[
                "request",
                "--peer",
                &holder_peer,
                "--study",
                &study.study_uid,
                "--purpose",
                "treatment",
                "--json",
            ],
        )
        .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("asks to wait") {
            assert!(!out.status.success());
            // One a minute: the wait is what is left of the minute since the
            // last request taken (60 s, less the seconds this loop took).
            let secs: u64 = err
                .split("asks to wait ")
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no wait in: {err}"));
            assert!(
                (40..=60).contains(&secs),
                "one a minute: the wait is about a minute: {err}"
            );
            told_to_wait += 1;
        } else {
            // Taken: decided (denied: no consent) and recorded.
            assert!(!json_lines(&out.stdout).is_empty(), "{err}");
            answered += 1;
        }
    }
    assert_eq!((answered, told_to_wait), (2, 6));
    let out = run(&holder, &["transfers", "list", "--json"]).expect("run");
    assert_eq!(
        json_lines(&out.stdout).len(),
        2,
        "a record per request taken, none for the others"
    );
    let entries = own_entries();
    assert_eq!(
        entries - entries_before,
        4,
        "requested and denied for each request taken, nothing for the others"
    );
    net.stop();
}
