//! The ledger across real nodes on 127.0.0.1: feeds converge, and a node
//! that was down catches up.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use medmesh_testnet::cluster::{self, Cluster};

use crate::util::*;

/// Each author's head (seq) in `home`'s `log verify`, which must pass.
fn heads(home: &Path) -> BTreeMap<String, u64> {
    let out = run(home, &["log", "verify", "--json"]).expect("run");
    expect_code(&out, 0, "log verify");
    json_lines(&out.stdout)
        .into_iter()
        .filter(|(k, _)| k == "feed")
        .map(|(_, f)| {
            (
                f["author"].as_str().unwrap_or("").to_string(),
                f["head_seq"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn consent(home: &Path, patient: &str) {
    let out = run(
        home,
        &[
            "consent",
            "add",
            "--patient-id",
            patient,
            "--issuer",
            "LEDGER-TEST",
            "--purpose",
            "treatment",
            "--recipient-jurisdiction",
            "FR",
            "--level",
            "identifiable",
        ],
    )
    .expect("run");
    expect_code(&out, 0, "consent add");
}

/// Waits until every home in `homes` holds exactly `want`.
fn converge(homes: &[&Path], want: &BTreeMap<String, u64>, timeout: Duration) {
    let start = Instant::now();
    loop {
        let got: Vec<BTreeMap<String, u64>> = homes.iter().map(|h| heads(h)).collect();
        if got.iter().all(|g| g == want) {
            return;
        }
        assert!(start.elapsed() < timeout, "not converged: want {want:?}, got {got:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn feeds_converge_and_a_node_that_was_down_catches_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut net = Cluster::create(dir.path(), 3).expect("create");
    net.start().expect("start");
    net.wait_mesh(Duration::from_secs(60)).expect("mesh");
    let homes: Vec<_> = net.nodes.iter().map(|n| n.home.clone()).collect();
    for (i, h) in homes.iter().enumerate() {
        consent(h, &format!("P-{i}"));
    }
    // Every node's own feed, as it holds it, is what all must converge to.
    let mut want = BTreeMap::new();
    for (n, h) in net.nodes.iter().zip(&homes) {
        want.insert(n.peer_id.clone(), heads(h)[&n.peer_id]);
    }
    let refs: Vec<&Path> = homes.iter().map(|h| h.as_path()).collect();
    converge(&refs, &want, Duration::from_secs(60));
    // node-3 stops; node-1 writes; node-3 catches up after its restart.
    cluster::stop_node(&mut net.nodes[2]);
    consent(&homes[0], "P-10");
    consent(&homes[0], "P-11");
    *want.get_mut(&net.nodes[0].peer_id).expect("node-1") += 2;
    converge(&refs[..2], &want, Duration::from_secs(60));
    cluster::start_node(&mut net.nodes[2]).expect("restart");
    converge(&refs, &want, Duration::from_secs(60));
    net.stop();
}
