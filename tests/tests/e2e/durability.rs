//! What a node acknowledged survives a crash (issue 16, item 9): a node
//! killed with SIGKILL while running with `fsync = false` (the testnet's
//! setting) comes back with every study it landed and receipted, every
//! transfer and every ledger entry it gossiped, and signs no second entry
//! under an old seq; a command run on a home while its node starts does not
//! make the node fail to start.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use medmesh_testnet::cluster::{self, Cluster, ClusterNode};
use medmesh_testnet::{StudySpec, generate};

use crate::util::*;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8")
}

/// Each author's head (seq) in `home`'s `log verify`, which must pass.
fn verified_heads(home: &Path) -> BTreeMap<String, u64> {
    let out = run(home, &["log", "verify", "--json"]).expect("run");
    expect_code(&out, 0, &format!("log verify at {}", home.display()));
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

/// `log verify` heads without asserting success (for polling).
fn heads_of(home: &Path) -> BTreeMap<String, u64> {
    let out = run(home, &["log", "verify", "--json"]).expect("run");
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

fn transfer_state(home: &Path, id: &str) -> String {
    let out = run(home, &["transfers", "show", id, "--json"]).expect("run");
    expect_code(&out, 0, "transfers show");
    json_lines(&out.stdout).remove(0).1["state"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn consent_for(home: &Path, patient: &str, issuer: &str, recipient: &str) {
    let out = run(
        home,
        &[
            "consent",
            "add",
            "--patient-id",
            patient,
            "--issuer",
            issuer,
            "--purpose",
            "treatment",
            "--recipient-peer",
            recipient,
            "--level",
            "identifiable",
        ],
    )
    .expect("run");
    expect_code(&out, 0, "consent add");
}

#[test]
fn what_a_node_acknowledged_survives_a_sigkill_with_fsync_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Cluster homes run with `fsync = false`, as the testnet's do.
    let mut net = Cluster::create(dir.path(), 2).expect("create");
    for n in &net.nodes {
        let cfg = std::fs::read_to_string(n.home.join("config.toml")).expect("config");
        assert!(cfg.contains("\nfsync = false\n"), "the test runs with fsync off");
    }
    net.start().expect("start");
    net.wait_mesh(Duration::from_secs(60)).expect("mesh");
    let (holder, recipient) = (net.nodes[0].home.clone(), net.nodes[1].home.clone());
    let (holder_peer, recipient_peer) = (net.nodes[0].peer_id.clone(), net.nodes[1].peer_id.clone());

    // The holder imports a study and consents to node-2; node-2 also imports one of its own.
    let spec = StudySpec {
        seed: 161,
        slices: 8,
        rows: 128,
        cols: 128,
        ..StudySpec::default()
    };
    let g = generate(&spec, &dir.path().join("held")).expect("generate");
    expect_code(
        &run(&holder, &["study", "import", s(&dir.path().join("held"))]).expect("run"),
        0,
        "import at the holder",
    );
    let own = generate(
        &StudySpec {
            seed: 162,
            slices: 4,
            rows: 64,
            cols: 64,
            ..StudySpec::default()
        },
        &dir.path().join("own"),
    )
    .expect("generate");
    expect_code(
        &run(&recipient, &["study", "import", s(&dir.path().join("own"))]).expect("run"),
        0,
        "import at the recipient",
    );
    consent_for(&holder, &g.phi.patient_id, &g.phi.issuer_of_patient_id, &recipient_peer);

    // node-2 requests it: granted, streamed, landed, receipted.
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
            "--json",
            "--wait",
            "--timeout",
            "120",
        ],
    )
    .expect("run");
    expect_code(&out, 0, "request --wait");
    let done = json_lines(&out.stdout).remove(0).1;
    let id = done["id"].as_str().expect("id").to_string();
    wait_for("the holder's receipt", Duration::from_secs(60), || {
        transfer_state(&holder, &id) == "complete"
    });
    // node-2 writes an entry of its own too (a consent for the holder).
    consent_for(
        &recipient,
        &own.phi.patient_id,
        &own.phi.issuer_of_patient_id,
        &holder_peer,
    );
    let state_before = transfer_state(&recipient, &id);
    assert!(matches!(state_before.as_str(), "landed" | "complete"), "{state_before}");
    // Every entry node-2 wrote has reached node-1 (gossiped: it left node-2).
    let head = verified_heads(&recipient)[&recipient_peer];
    assert!(head >= 4, "requested, received, consent-added ...: {head}");
    wait_for("node-2's entries at node-1", Duration::from_secs(60), || {
        heads_of(&holder).get(&recipient_peer) == Some(&head)
    });

    // SIGKILL node-2: no clean shutdown.
    cluster::kill_node(&mut net.nodes[1]);

    // On its files: everything it acknowledged is there, and consistent.
    let check = run(&recipient, &["store", "check", "--json"]).expect("run");
    expect_code(&check, 0, "store check after SIGKILL");
    let out = run(&recipient, &["study", "list", "--json"]).expect("run");
    expect_code(&out, 0, "study list");
    let listed = json_lines(&out.stdout);
    for uid in [&g.study_uid, &own.study_uid] {
        assert!(
            listed.iter().any(|(_, d)| d["study_uid"] == uid.as_str()),
            "study {uid} lost in the crash: {listed:?}"
        );
    }
    assert_eq!(transfer_state(&recipient, &id), state_before, "the transfer's state");
    let after = verified_heads(&recipient);
    assert_eq!(after.get(&recipient_peer), Some(&head), "its own feed after the crash");

    // Restarted, it writes on after its last entry: no second entry under an old seq.
    cluster::configure_loopback(&recipient, &[net.nodes[0].tcp_addr().expect("node-1 runs").to_string()])
        .expect("configure");
    cluster::start_node(&mut net.nodes[1]).expect("restart");
    consent_for(&recipient, "P-AFTER", "DURABILITY", &holder_peer);
    wait_for("node-2's new entry at node-1", Duration::from_secs(60), || {
        heads_of(&holder).get(&recipient_peer).copied().unwrap_or(0) > head
    });
    let at_holder = verified_heads(&holder);
    let at_recipient = verified_heads(&recipient);
    assert_eq!(at_holder[&recipient_peer], head + 1);
    assert_eq!(at_recipient[&recipient_peer], head + 1);
    // The export of the landed study still works (its blobs are there).
    let export = dir.path().join("export");
    let out = run(&recipient, &["study", "export", &g.study_uid, "--out", s(&export)]).expect("run");
    expect_code(&out, 0, "export of the received study after the crash");
    assert_eq!(files_under(&export).len(), g.files.len());
    net.stop();
}

/// A command run on a home while its node starts makes neither fail: the
/// node waits for the command to release the database, and the command
/// waits for the node (or for the database) instead of failing with
/// "Database already open".
#[test]
fn a_command_run_while_the_node_starts_does_not_make_it_fail() {
    let (_dir, home) = new_home("Klinikum Start");
    cluster::configure_loopback(&home, &[]).expect("configure");
    let mut node = ClusterNode::for_home("node-1", &home).expect("node");
    // Another process holds the database (as a long command would).
    let pass = medmesh_node::keystore::Passphrase::new(medmesh_testnet::process::passphrase());
    let held = medmesh_node::home::Node::open(&home, &pass).expect("open the home");
    let (cli_home, node_home) = (home.clone(), home.clone());
    let cli = std::thread::spawn(move || run(&cli_home, &["study", "list", "--json"]).expect("run"));
    let starter = std::thread::spawn(move || {
        let _ = &node_home;
        let r = cluster::start_node(&mut node).map_err(|e| e.to_string());
        (r, node)
    });
    std::thread::sleep(Duration::from_secs(3));
    drop(held);
    let (started, mut node) = starter.join().expect("join");
    let log = std::fs::read_to_string(home.join("node.log")).unwrap_or_default();
    started.unwrap_or_else(|e| panic!("the node failed to start: {e}\n{log}"));
    let out = cli.join().expect("join");
    expect_code(&out, 0, "a command run while the node starts");
    // And through the running node now.
    expect_code(&run(&home, &["study", "list", "--json"]).expect("run"), 0, "study list");
    assert_eq!(cluster::stop_node(&mut node), cluster::Stopped::Exited(Some(0)));
}
