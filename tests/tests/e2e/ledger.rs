//! The ledger across real nodes on 127.0.0.1: feeds converge, a node that
//! was down catches up, entries tampered with by a peer are refused, a
//! forged fork is detected.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use medmesh_testnet::cluster::{self, Cluster};

use crate::util::*;

/// Each author's head (seq) in `home`'s `log verify`, which must pass.
fn heads(home: &Path) -> BTreeMap<String, u64> {
    let out = run(home, &["log", "verify", "--json"]).expect("run");
    expect_code(&out, 0, "log verify");
    heads_in(&out.stdout)
}

/// Each author's head in a `log verify --json` output.
fn heads_in(stdout: &[u8]) -> BTreeMap<String, u64> {
    json_lines(stdout)
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
fn five_nodes_converge_and_a_node_that_was_down_catches_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut net = Cluster::create(dir.path(), 5).expect("create");
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
    // node-5 stops; node-1 and node-2 write; node-5 catches up after its restart.
    cluster::stop_node(&mut net.nodes[4]);
    consent(&homes[0], "P-10");
    consent(&homes[0], "P-11");
    consent(&homes[1], "P-12");
    *want.get_mut(&net.nodes[0].peer_id).expect("node-1") += 2;
    *want.get_mut(&net.nodes[1].peer_id).expect("node-2") += 1;
    converge(&refs[..4], &want, Duration::from_secs(60));
    cluster::start_node(&mut net.nodes[4]).expect("restart");
    converge(&refs, &want, Duration::from_secs(60));
    net.stop();
}

/// Opens a stopped node's home in this process.
fn open_home(home: &Path) -> medmesh_node::home::Node {
    let pass = medmesh_node::keystore::Passphrase::new(medmesh_testnet::process::passphrase());
    medmesh_node::home::Node::open(home, &pass).expect("open home")
}

/// `home`'s alerts (kind, peer named).
fn alerts(home: &Path) -> Vec<(String, String)> {
    let out = run(home, &["notifications", "--json"]).expect("run");
    expect_code(&out, 0, "notifications");
    json_lines(&out.stdout)
        .into_iter()
        .filter(|(k, _)| k == "notification")
        .map(|(_, n)| {
            (
                n["kind"].as_str().unwrap_or("").to_string(),
                n["author"].as_str().unwrap_or("").to_string(),
            )
        })
        .filter(|(k, _)| k.starts_with("alert-"))
        .collect()
}

/// Starts `net.nodes[i]` with the running `net.nodes[via]` as its bootstrap
/// peer (ports change on restart, so addresses met before are stale).
fn start_via(net: &mut Cluster, i: usize, via: usize) {
    let addr = net.nodes[via].tcp_addr().expect("a running node's address").to_string();
    cluster::configure_loopback(&net.nodes[i].home, &[addr]).expect("configure");
    cluster::start_node(&mut net.nodes[i]).expect("start");
}

/// Polls `cond` every 300 ms until it holds, at most `timeout`; on timeout,
/// fails showing `state()`.
fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool, state: impl Fn() -> String) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}: {}", state());
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn entries_tampered_with_by_peers_are_refused_and_a_forged_fork_is_detected() {
    use medmesh_node::ledger::{self, Event};
    let dir = tempfile::tempdir().expect("tempdir");
    // node-1 writes; node-2, -3 and -4 serve its entry tampered with; node-5
    // serves a forged one; node-6 is the one they are served to.
    let mut net = Cluster::create(dir.path(), 6).expect("create");
    net.start().expect("start");
    net.wait_mesh(Duration::from_secs(90)).expect("mesh");
    let homes: Vec<_> = net.nodes.iter().map(|n| n.home.clone()).collect();
    let peers: Vec<String> = net.nodes.iter().map(|n| n.peer_id.clone()).collect();
    let author_peer = peers[0].clone();
    cluster::stop_node(&mut net.nodes[5]);
    consent(&homes[0], "P-FORK");
    let seq = heads(&homes[0])[&author_peer];
    for h in &homes[1..5] {
        wait_for(
            "the servers to hold node-1's entry",
            Duration::from_secs(60),
            || heads(h).get(&author_peer) == Some(&seq),
            || format!("{:?}", heads(h)),
        );
    }
    for n in &mut net.nodes[..5] {
        cluster::stop_node(n);
    }

    // The genuine entry, and what each server will hold instead.
    let author = open_home(&homes[0]);
    let key = author.identity().ed25519_public();
    let genuine = author.audit().ledger_range(&key, seq, 1).expect("range").remove(0);
    let opened = ledger::open_entry(&genuine).expect("genuine entry opens");
    let prev: [u8; 32] = opened.entry.prev.clone().try_into().expect("32-byte prev");
    let mut flipped = genuine.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x01;
    let mut changed_body = genuine.clone();
    let at = changed_body
        .windows(4)
        .position(|w| w == b"P-FO" || w == b"cons")
        .unwrap_or(changed_body.len() / 2);
    changed_body[at] ^= 0x20;
    let wrong_prev = ledger::make_entry(
        author.identity(),
        Some((seq - 1, [0x5a; 32])),
        opened.entry.time,
        opened.entry.event.clone(),
    )
    .expect("sign");
    let forged = ledger::make_entry(
        author.identity(),
        Some((seq - 1, prev)),
        opened.entry.time,
        Event::PeerBlocked { peer: "forged".into() },
    )
    .expect("sign");
    drop(author);
    for (i, bytes) in [
        (1, &flipped),
        (2, &changed_body),
        (3, &wrong_prev.bytes),
        (4, &forged.bytes),
    ] {
        let server = open_home(&homes[i]);
        server.store().ledger_tamper(&key, seq, bytes).expect("tamper");
    }

    // node-6 is served the three tampered entries: each refused. A bad
    // signature or changed body is the server's doing: the server is named.
    // An entry signed by the author naming another previous entry is the
    // author's doing: it is kept as evidence against the author.
    cluster::start_node(&mut net.nodes[1]).expect("start");
    for i in [2, 3, 5] {
        start_via(&mut net, i, 1);
    }
    wait_for(
        "node-6 to refuse the entries from node-2, -3 and -4",
        Duration::from_secs(90),
        || {
            let a = alerts(&homes[5]);
            peers[1..3]
                .iter()
                .all(|p| a.iter().any(|(k, who)| k == "alert-refused-entry" && who == p))
                && a.iter()
                    .any(|(k, who)| k == "alert-equivocation" && *who == author_peer)
        },
        || format!("alerts {:?}", alerts(&homes[5])),
    );
    let out = run(&homes[5], &["log", "verify", "--json"]).expect("run");
    assert!(heads_in(&out.stdout).get(&author_peer).is_none_or(|s| *s < seq));
    let equivocations = |home: &Path| -> usize {
        let out = run(home, &["log", "verify", "--json"]).expect("run");
        json_lines(&out.stdout)
            .iter()
            .filter(|(k, f)| k == "feed" && f["author"] == author_peer.as_str())
            .flat_map(|(_, f)| f["problems"].as_array().cloned().unwrap_or_default())
            .filter(|p| p.as_str().is_some_and(|p| p.contains("equivocation")))
            .count()
    };
    assert_eq!(
        equivocations(&homes[5]),
        1,
        "the entry naming another previous one, kept as evidence"
    );

    // node-5 serves a validly signed other entry of that seq: node-6 takes it;
    // when node-1 is back with the genuine one, the equivocation is caught.
    start_via(&mut net, 4, 5);
    wait_for(
        "node-6 to take the forged entry",
        Duration::from_secs(60),
        || {
            let out = run(&homes[5], &["log", "verify", "--json"]).expect("run");
            heads_in(&out.stdout).get(&author_peer) == Some(&seq)
        },
        || "node-6 never held it".into(),
    );
    start_via(&mut net, 0, 5);
    wait_for(
        "node-6 to report the fork",
        Duration::from_secs(60),
        || equivocations(&homes[5]) >= 2,
        || {
            String::from_utf8_lossy(&run(&homes[5], &["log", "verify"]).map(|o| o.stdout).unwrap_or_default())
                .into_owned()
        },
    );
    assert!(
        alerts(&homes[5])
            .iter()
            .any(|(k, who)| k == "alert-equivocation" && *who == author_peer)
    );
    net.stop();
}
